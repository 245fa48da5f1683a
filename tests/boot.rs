//! A guest that never becomes ready is restarted on the same disk,
//! `HOSTD_BOOT_RETRIES` times, each restart an event with the console's last
//! lines, then the hosting is `Failed` with `BootFailed` and left alone; one
//! that answers after a restart becomes Ready with its disk intact; a pass
//! cut short right after a restart (fault point `after_boot_restart`) does
//! not restart it twice. Real Postgres and nginx, libvirt's test driver;
//! "answers" means a stand-in server on the guest's forwarded ports.

mod common;

use std::time::Duration;

use common::{create_hosting as create, fake_guest, TestApp};
use hostd::app::Mode;
use hostd::domain::{ConditionType, HostingId, Phase, Reason};
use hostd::reconciler::names::{console_log, disk_volume};
use hostd::reconciler::Action;

/// An app whose guests must be ready within 1 s of their start.
async fn app(faults: &str) -> TestApp {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.ready_timeout = Duration::from_secs(1);
    config.boot_retries = 2;
    config.faults = hostd::faults::Faults::parse(faults).unwrap();
    TestApp::spawn_with(config, Mode::All, false, Some(nginx), state).await
}

async fn reasons(app: &TestApp, id: HostingId, reason: &str) -> usize {
    let evs = app.store.recent_events(id, 200).await.unwrap();
    evs.iter().filter(|e| e.reason == reason).count()
}

/// Runs passes for `secs` seconds (what the controller's requeues would do).
async fn passes(app: &TestApp, id: HostingId, secs: u64) -> Action {
    let ctl = app.controller.clone().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut last = Action::AwaitChange;
    while std::time::Instant::now() < until {
        last = ctl
            .reconcile_once(id)
            .await
            .unwrap_or(Action::Requeue(Duration::ZERO));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn a_guest_that_never_answers_is_restarted_then_failed() {
    let app = app("").await;
    let (_, _, id) = create(&app, "silent").await;
    // What the guest printed: its last lines go into the events.
    let console = app.config.state_dir.join("console").join(console_log(id));
    std::fs::create_dir_all(console.parent().unwrap()).unwrap();
    std::fs::write(&console, "Booting\nsystemd[1]: nginx.service: Failed\n").unwrap();
    let last = passes(&app, id, 6).await;
    assert_eq!(last, Action::AwaitChange, "a failed boot is left alone");
    assert_eq!(reasons(&app, id, "BootRestarted").await, 2);
    assert_eq!(reasons(&app, id, "BootFailed").await, 1);
    let evs = app.store.recent_events(id, 200).await.unwrap();
    let restart = evs.iter().find(|e| e.reason == "BootRestarted").unwrap();
    assert!(
        restart.message.contains("nginx.service: Failed"),
        "{}",
        restart.message
    );
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Failed);
    let web = rec
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::WebReady)
        .unwrap();
    assert_eq!(web.reason, Reason::BootFailed);
    assert!(rec.status.message.unwrap().contains("stop and start"));
    // No loop: more passes restart nothing.
    passes(&app, id, 2).await;
    assert_eq!(reasons(&app, id, "BootRestarted").await, 2);
    // The owner stops and starts it: a fresh set of attempts.
    let t = app.login("silent", "correct horse").await;
    for running in [false, true] {
        let r = app
            .client
            .patch(app.url("/api/v1/host/my"))
            .bearer_auth(&t)
            .json(&serde_json::json!({ "running": running }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        common::settle_stopped(app.controller.as_ref().unwrap(), id).await;
    }
    passes(&app, id, 2).await;
    assert!(
        reasons(&app, id, "BootRestarted").await >= 3,
        "no new attempt after a start"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_guest_that_answers_after_a_restart_is_ready_with_its_disk() {
    let app = app("").await;
    let ctl = app.controller.clone().unwrap();
    let (_, _, id) = create(&app, "late").await;
    let mut guest = None;
    for _ in 0..100 {
        let _ = ctl.reconcile_once(id).await;
        if reasons(&app, id, "BootRestarted").await == 1 && guest.is_none() {
            let rec = app.store.get_record(id).await.unwrap().unwrap();
            let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
            guest = Some(fake_guest(s, h, "late but fine").await);
        }
        let rec = app.store.get_record(id).await.unwrap().unwrap();
        if rec.status.phase == Phase::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Ready, "{:?}", rec.status);
    assert_eq!(rec.status.boot_restarts, None);
    assert_eq!(reasons(&app, id, "BootRestarted").await, 1);
    assert_eq!(
        reasons(&app, id, "DiskCreated").await,
        1,
        "the disk was kept"
    );
    assert!(ctl.ctx.vm.volume_exists(&disk_volume(id)).await.unwrap());
    drop(guest);
    app.stop().await;
}

/// A pass that fails right after restarting the guest has already recorded
/// the attempt: the next pass waits for the new boot instead of restarting
/// it again.
#[tokio::test]
async fn a_pass_cut_short_after_a_restart_does_not_restart_twice() {
    let app = app("after_boot_restart:error").await;
    let ctl = app.controller.clone().unwrap();
    let (_, _, id) = create(&app, "cut").await;
    let mut failed_passes = 0;
    for _ in 0..40 {
        if ctl.reconcile_once(id).await.is_err() {
            failed_passes += 1;
        }
        if reasons(&app, id, "BootRestarted").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed_passes, 1, "the fault point was reached once");
    // Within the new boot's deadline: no second restart.
    for _ in 0..5 {
        let _ = ctl.reconcile_once(id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reasons(&app, id, "BootRestarted").await, 1);
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.boot_restarts, Some(1));
    app.stop().await;
}

/// At most `HOSTD_BOOT_CONCURRENCY` guests boot at once: the next hosting
/// waits `Provisioning` with `VMRunning=False`, `BootQueued` and its place,
/// and starts when a booting guest is Ready.
#[tokio::test]
async fn the_boot_gate_queues_boots_past_its_limit() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.boot_concurrency = 2;
    let app = TestApp::spawn_with(config, Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let mut ids = vec![];
    for i in 0..4 {
        let (_, _, id) = create(&app, &format!("queue{i}")).await;
        ids.push(id);
    }
    for id in &ids {
        common::settle(&ctl, *id).await;
    }
    // The third asks again, now that the fourth waits behind it.
    common::settle(&ctl, ids[2]).await;
    let running = |id: HostingId| {
        let vm = ctl.ctx.vm.clone();
        async move {
            let name = hostd::reconciler::names::domain_name(id);
            vm.get_domain(&name)
                .await
                .unwrap()
                .is_some_and(|d| d.running)
        }
    };
    assert!(running(ids[0]).await && running(ids[1]).await);
    for (id, place) in [(ids[2], 1), (ids[3], 2)] {
        assert!(!running(id).await, "a third guest booted");
        let rec = app.store.get_record(id).await.unwrap().unwrap();
        assert_eq!(rec.status.phase, Phase::Provisioning);
        let c = rec
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::VMRunning)
            .unwrap();
        assert_eq!(c.reason, Reason::BootQueued);
        assert!(
            c.message.contains(&format!("place {place} of 2")),
            "{}",
            c.message
        );
    }
    // The first guest answers: Ready, and the first in the queue boots.
    let rec = app.store.get_record(ids[0]).await.unwrap().unwrap();
    let (s, h) = (rec.status.ssh_port.unwrap(), rec.status.http_port.unwrap());
    let _guest = fake_guest(s, h, "ok").await;
    assert_eq!(common::settle(&ctl, ids[0]).await, Action::AwaitChange);
    common::settle(&ctl, ids[3]).await;
    assert!(
        !running(ids[3]).await,
        "the second in the queue jumped ahead"
    );
    common::settle(&ctl, ids[2]).await;
    assert!(running(ids[2]).await, "the first in the queue did not boot");
    assert_eq!(ctl.ctx.boot_gate.counts(), (2, 1));
    app.stop().await;
}
