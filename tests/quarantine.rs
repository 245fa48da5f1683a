//! Quarantine keeps a tenant's data for `HOSTD_QUARANTINE_DAYS` from the
//! moment it was quarantined, whatever the file's age: the real libvirt
//! storage pool on `qemu:///system` (volumes there are files; no guest is
//! started), the real resync, real Postgres.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::TestApp;
use hostd::app::Mode;
use hostd::domain::HostingId;
use hostd::drivers::VolumeSource;
use hostd::reconciler::names::disk_volume;

/// Sets a file's modification time `days` in the past.
fn age(path: &Path, days: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(days * 86400))
        .unwrap();
}

/// A disk whose hosting row is gone (a database restored from before it was
/// created), not written for 8 days: the resync moves it to quarantine and
/// the same resync's expiry keeps it (it once deleted it within seconds, by
/// the file's age). A second disk of the same hosting quarantined later
/// replaces the first (one per hosting), and neither takes the other's name.
#[tokio::test]
async fn a_quarantined_disk_is_kept_for_the_period_whatever_its_files_age() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), None);
    config.libvirt_uri = "qemu:///system".into();
    config.allow_unisolated_guests = true;
    let instance = config.instance.clone();
    let _pool = common::SystemPoolGuard(instance.clone());
    let app = TestApp::spawn_with(config, Mode::All, false, None, state).await;
    let ctl = app.controller.clone().unwrap();
    let vm = ctl.ctx.vm.clone();

    let id = HostingId(uuid::Uuid::new_v4());
    let name = disk_volume(id);
    let bytes = b"the tenant's only copy".to_vec();
    assert!(vm
        .create_volume(&name, VolumeSource::Bytes(bytes.clone()))
        .await
        .unwrap());
    let pool_dir = app.state.path().join("pools").join(&instance);
    age(&pool_dir.join(&name), 8);

    let q = hostd::reconciler::queue::WorkQueue::default();
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    let kept: Vec<_> = ctl.ctx.quarantine.entries();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let first = kept[0].path.clone();
    assert!(first.to_string_lossy().ends_with(&name), "{first:?}");
    assert_eq!(std::fs::read(&first).unwrap()[..bytes.len()], bytes[..]);
    // Another resync: still there (the period runs from the quarantine).
    hostd::reconciler::resync::resync(&ctl.ctx, &q)
        .await
        .unwrap();
    assert!(first.exists(), "the quarantined disk was deleted");

    // The same hosting's disk turns up again and is quarantined in the same
    // second: it gets its own name and replaces the older one.
    vm.create_volume(&name, VolumeSource::Bytes(b"newer".to_vec()))
        .await
        .unwrap();
    let second = ctl
        .ctx
        .quarantine_volume(&*ctl.ctx.vm, &name)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first, second);
    assert!(
        !first.exists(),
        "more than one quarantined disk per hosting"
    );
    assert!(std::fs::read(&second).unwrap().starts_with(b"newer"));

    app.stop().await;
}
