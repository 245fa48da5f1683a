//! Guest-agent calls never hold the reconcile workers: tenants whose agents
//! answer late (here: every call delayed 8 s by the `before_agent_call`
//! fault point, standing for an agent that reports "still running") cannot
//! delay another tenant's new hosting. Real Postgres, nginx, the libvirt test
//! driver and the running reconciler loop with 4 workers; guests are
//! stand-in servers on the forwarded ports.

mod common;

use std::time::{Duration, Instant};

use common::reconciler::{wait_ports, wait_ready};
use common::{create_hosting as create, fake_guest, TestApp};
use hostd::app::Mode;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGn5mGkWqfI3bf4Pq0+8fOxaYDXLNQq2Z0S1Zb6pH9hd late@test";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_guest_agents_do_not_hold_the_workers() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.concurrency = 4;
    config.faults = hostd::faults::Faults::parse("before_agent_call:delay:8000").unwrap();
    // The image runs the guest agent (as build-image.sh declares it).
    std::fs::write(
        state.path().join("images/debian-12/manifest.json"),
        r#"{"name": "debian-12", "guest_agent": true}"#,
    )
    .unwrap();
    let app = TestApp::spawn_with(config, Mode::All, true, Some(nginx), state).await;

    // Eight tenants, Ready.
    let mut hostile = vec![];
    let mut guests = vec![];
    for i in 0..8 {
        let (t, _, id) = create(&app, &format!("hostile{i}")).await;
        let rec = wait_ports(&app, id).await;
        let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
        guests.push(fake_guest(s, h, "ok").await);
        wait_ready(&app, id).await;
        hostile.push((t, id));
    }
    // Each changes its keys: a live seed change, i.e. an agent call each,
    // all of which answer late.
    let asked = Instant::now();
    for (t, _) in &hostile {
        let r = app
            .client
            .patch(app.url("/api/v1/host/my"))
            .bearer_auth(t)
            .json(&serde_json::json!({"ssh_public_keys": [KEY]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Meanwhile a new tenant's hosting is created and served.
    let t0 = Instant::now();
    let (_, _, id) = create(&app, "newcomer").await;
    let rec = wait_ports(&app, id).await;
    let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
    guests.push(fake_guest(s, h, "ok").await);
    wait_ready(&app, id).await;
    let ready_after = t0.elapsed();
    // ... before any of the late calls ended (each takes 8 s).
    let ctl = app.controller.clone().unwrap();
    let mut pending = 0;
    for (_, hid) in &hostile {
        let evs = app.store.recent_events(*hid, 50).await.unwrap();
        if !evs.iter().any(|e| e.reason == "SeedApplyFailed") {
            pending += 1;
        }
    }
    eprintln!(
        "agent: new hosting Ready {:.2} s after it was created, with {pending} late agent calls pending ({:.1} s after they were asked for); at most {} calls ran at once",
        ready_after.as_secs_f64(),
        asked.elapsed().as_secs_f64(),
        ctl.ctx.agent.peak.load(std::sync::atomic::Ordering::SeqCst),
    );
    assert!(
        asked.elapsed() < Duration::from_secs(8) && pending == 8,
        "the new hosting waited for the late agents ({pending} still pending after {:?})",
        asked.elapsed()
    );
    // The late calls end by themselves: the changes wait for the next boot,
    // no more than 4 calls ran at once, and each hosting's memory of the call
    // is gone once read.
    for (_, hid) in &hostile {
        common::eventually(Duration::from_secs(60), || async {
            let evs = app.store.recent_events(*hid, 50).await.unwrap();
            evs.iter()
                .any(|e| e.reason == "SeedApplyFailed")
                .then_some(())
        })
        .await
        .expect("the late call was never reported");
        assert!(!ctl.ctx.agent.knows(*hid));
    }
    assert!(ctl.ctx.agent.peak.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    drop(guests);
    app.stop().await;
}
