//! Tampering with a service under a running hostd: Postgres restarted. It
//! disturbs every other test on the machine, so it is `#[ignore]`d and run
//! alone by `scripts/test.sh` (`--ignored --test-threads=1`). The libvirtd
//! outage test lives in `tests/crash_matrix.rs` (`libvirtd_outage`), beside
//! the real-guest harness it needs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, fake_guest, TestApp};
use hostd::domain::Phase;
use serde_json::json;

fn pg_restart() {
    let ver = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .max()
        .unwrap();
    let st = Command::new("pg_ctlcluster")
        .args([&ver, "main", "restart"])
        .status()
        .unwrap();
    assert!(st.success(), "pg_ctlcluster restart failed");
}

#[tokio::test]
#[ignore = "restarts the machine's Postgres; run alone by scripts/test.sh"]
async fn postgres_restart_under_hostd() {
    let app = TestApp::running().await;
    let (t, uid) = app.user("petra").await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let store = app.store.clone();
    let user = hostd::domain::UserId(uuid::Uuid::parse_str(&uid).unwrap());
    let rec = eventually(Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            store
                .get_record_by_user(user)
                .await
                .unwrap()
                .filter(|r| r.status.http_port.is_some())
        }
    })
    .await
    .unwrap();
    let id = rec.id;
    let _g = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "ok",
    )
    .await;
    let ready = |phase: Phase| {
        let store = store.clone();
        async move {
            eventually(Duration::from_secs(60), || async {
                store
                    .get_record(id)
                    .await
                    .ok()?
                    .filter(|r| r.status.phase == phase)
                    .map(|_| ())
            })
            .await
        }
    };
    assert!(ready(Phase::Ready).await.is_some());

    pg_restart();
    // During and after the restart the API answers (503 while the database is
    // away is acceptable, a hang or a crash is not).
    let api_back = eventually(Duration::from_secs(30), || async {
        let r = app
            .client
            .get(app.url("/api/v1/host/my"))
            .bearer_auth(&t)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(
        api_back.is_some(),
        "API did not recover after the Postgres restart"
    );
    // The reconciler reconnects (lease, LISTEN, pool) and acts on a new change.
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        ready(Phase::Stopped).await.is_some(),
        "reconciler did not act after the Postgres restart"
    );
    // The old term may still have done that work: its lease connection died
    // with Postgres and is noticed at the next 2-second check, after which the
    // lease is taken again on a new connection.
    let m = &app.controller.as_ref().unwrap().ctx.metrics;
    let leader = eventually(Duration::from_secs(15), || async {
        (m.is_leader.get() == 1).then_some(())
    })
    .await;
    assert!(leader.is_some(), "leader lease not re-acquired");
    // The phase is written before its event: wait for the event itself.
    let store = app.store.clone();
    let evs = eventually(Duration::from_secs(10), || async {
        let evs = store.recent_events(id, 100).await.ok()?;
        evs.iter().any(|e| e.reason == "Stopped").then_some(evs)
    })
    .await
    .expect("a Stopped event");
    assert_eq!(
        evs.iter().filter(|e| e.reason == "Stopped").count(),
        1,
        "no duplicate work: {evs:?}"
    );
    assert!(
        !evs.iter().any(|e| e.reason == "RouteRepaired"),
        "stopping is not a hand edit of the route: {evs:?}"
    );
    assert_eq!(
        evs.iter().filter(|e| e.reason == "Defined").count(),
        1,
        "no duplicate work: {evs:?}"
    );
    app.stop().await;
}
