//! Reconciler tests of disks: a vanished disk is never recreated silently, orphaned disks are kept, a second installation never touches the first one's objects.
//! Real Postgres, a real nginx binary on a private port, libvirt's
//! `test:///default` driver; guests are played by stand-in servers on the
//! forwarded ports.

mod common;

use common::reconciler::*;
use common::{create_hosting as create, settle_stopped, TestApp};
use hostd::domain::{ConditionType, Phase};
use hostd::reconciler::names::{disk_volume, domain_name, seed_volume};
use hostd::reconciler::Action;

#[tokio::test]
async fn a_vanished_disk_is_never_recreated_silently_and_a_reset_needs_consent() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, _, id) = create(&app, "lena").await;
    ctl.reconcile_once(id).await.unwrap();
    app.client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&serde_json::json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    // Someone deletes the disk volume behind hostd's back.
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    hostd::reconciler::resync::resync(&ctl.ctx, &ctl.queue)
        .await
        .unwrap();
    assert!(
        ctl.queue.is_queued_or_running(id),
        "resync noticed the missing disk"
    );
    for _ in 0..3 {
        assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
    }
    let has_disk = || async {
        vm(&app)
            .list_volumes()
            .await
            .unwrap()
            .contains(&disk_volume(id))
    };
    assert!(!has_disk().await, "no empty disk was made in its place");
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Failed);
    let lost = rec
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::DiskLost)
        .expect("DiskLost condition");
    assert!(lost.is_true() && lost.message.contains("/api/v1/host/my/reset"));
    let evs = app.store.recent_events(id, 50).await.unwrap();
    let warnings: Vec<_> = evs.iter().filter(|e| e.reason == "DiskLost").collect();
    assert_eq!(warnings.len(), 1, "one Warning, not one per pass: {evs:?}");
    assert_eq!(warnings[0].type_, "Warning");

    // The owner consents: a fresh disk, the condition goes, the hosting converges.
    let r = app
        .client
        .post(app.url("/api/v1/host/my/reset"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(has_disk().await, "a fresh disk after the reset");
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert!(rec
        .status
        .conditions
        .iter()
        .all(|c| c.type_ != ConditionType::DiskLost));
    assert_eq!(rec.status.disk_epoch, 1);
    let evs = app.store.recent_events(id, 50).await.unwrap();
    assert!(evs.iter().any(|e| e.reason == "DiskReset"), "{evs:?}");
    app.stop().await;
}

/// A disk whose hosting row is gone without a completed deletion (a restored
/// or wrong database) is never deleted: the resync leaves it (here, on the
/// simulated hypervisor, where volumes have no file to move) or quarantines
/// it (real pools); only a tombstoned hosting's leftovers are deleted.
#[tokio::test]
async fn disks_without_a_hosting_are_kept_unless_the_deletion_completed() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id, _g) = ready_manual(&app, &ctl, "rosa").await;
    for sql in [
        "delete from port_allocations where hosting_id = $1",
        "delete from hostings where id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.0)
            .execute(&app.store.db())
            .await
            .unwrap();
    }
    let q = hostd::reconciler::queue::WorkQueue::default();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(
        vols.contains(&disk_volume(id)),
        "the disk is kept: {vols:?}"
    );
    assert!(
        vm(&app)
            .get_domain(&domain_name(id))
            .await
            .unwrap()
            .is_none(),
        "the definition goes"
    );
    // A completed deletion leaves a tombstone: then leftovers go at once.
    sqlx::query("insert into hosting_tombstones (hosting_id) values ($1)")
        .bind(id.0)
        .execute(&app.store.db())
        .await
        .unwrap();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(
        !vols.contains(&disk_volume(id)),
        "tombstoned leftovers are deleted"
    );
    app.stop().await;
}

/// A second hostd with a fresh database and the same instance name, against
/// the same libvirt and state directory (a staging install, or DATABASE_URL
/// pointing at the wrong database), refuses to start its reconciler, naming
/// both installations; so does one with its own directories but the same
/// instance name (the libvirt pool is the first one's). Nothing of the first
/// is touched.
#[tokio::test]
async fn a_second_installation_never_touches_the_first_ones_objects() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (_t, id, _g) = ready_manual(&app, &ctl, "first_one").await;
    let ours = app.store.installation_id().await.unwrap();

    let mut second = app.config.clone();
    second.database_url = common::fresh_database().await;
    second.listen = "127.0.0.1:0".parse().unwrap();
    let err = hostd::app::Application::build(second.clone(), hostd::app::Mode::All)
        .await
        .err()
        .expect("the second reconciler must refuse to start");
    let msg = err.to_string();
    assert!(msg.contains(&ours.to_string()), "names the owner: {msg}");
    let theirs = hostd::store::Store::connect(&second.database_url, 1)
        .await
        .unwrap()
        .installation_id()
        .await
        .unwrap();
    assert!(msg.contains(&theirs.to_string()), "names itself: {msg}");

    // Its own state and routes directories, the same instance name: the
    // libvirt pool of that name holds the first one's directory.
    let other_state = tempfile::tempdir().unwrap();
    let mut third = second.clone();
    third.state_dir = other_state.path().to_path_buf();
    third.nginx_routes_dir = other_state.path().join("routes");
    third.database_url = common::fresh_database().await;
    let err = hostd::app::Application::build(third, hostd::app::Mode::All)
        .await
        .err()
        .expect("a same-named pool in another directory is refused");
    assert!(err.to_string().contains("HOSTD_INSTANCE"), "{err}");

    // An API-only second process is harmless and may start.
    let api = hostd::app::Application::build(second, hostd::app::Mode::Api).await;
    assert!(api.is_ok());

    let vols = vm(&app).list_volumes().await.unwrap();
    assert!(vols.contains(&disk_volume(id)) && vols.contains(&seed_volume(id)));
    assert!(vm(&app)
        .get_domain(&domain_name(id))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        common::route_entries(&app.nginx.as_ref().unwrap().routes_dir).len(),
        1
    );
    assert_eq!(ctl.reconcile_once(id).await.unwrap(), Action::AwaitChange);
    app.stop().await;
}
