//! Backups and restores on libvirt's `test:///default` driver, with real
//! files: the test driver's volumes have no files, so each test puts a real
//! qcow2 image (written with `qemu-io`) where the pool keeps the disk. The
//! hosting is stopped, so hostd reads that file directly; a running guest's
//! backup job needs a real hypervisor (crash matrix, `scripts/e2e.sh`). Here
//! it must fail cleanly, which is tested too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::{disk_file, holds, post, stopped_hosting, take_backup as backup, write_disk};
use common::{create_hosting, settle_stopped, TestApp};
use hostd::domain::{HostingId, Phase};
use hostd::drivers::VmDriver;
use hostd::reconciler::names::disk_volume;
use serde_json::{json, Value};

fn backup_file(app: &TestApp, id: HostingId, b: &Value) -> PathBuf {
    app.config
        .state_dir
        .join("backups")
        .join(id.to_string())
        .join(format!("{}.qcow2", b["id"].as_str().unwrap()))
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

async fn reasons(app: &TestApp, id: HostingId) -> Vec<String> {
    let evs = app.store.recent_events(id, 100).await.unwrap();
    evs.iter().rev().map(|e| e.reason.clone()).collect()
}

#[tokio::test]
async fn a_vanished_disk_comes_back_from_the_newest_backup_and_an_older_one_can_be_restored() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "bella", 0x11).await;

    let b1 = backup(&app, &t, id).await;
    assert_eq!(b1["state"], "Completed", "{b1}");
    let f1 = backup_file(&app, id, &b1);
    assert_eq!(
        b1["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&f1).unwrap().len()
    );
    assert_eq!(b1["sha256"].as_str().unwrap(), sha256(&f1));
    assert!(holds(&f1, 0x11), "the backup holds the disk's content");
    // Standalone: no backing file, so a rebuilt base image cannot break it.
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&f1)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&info.stdout).contains("backing file"));
    use std::os::unix::fs::PermissionsExt;
    let dir = f1.parent().unwrap();
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["backups"][0]["sha256"], b1["sha256"]);

    // A second backup while one is pending: refused.
    write_disk(&disk_file(&app, id), 0x22);
    let (s, _) = post(&app, &t, "/api/v1/host/my/backups", None).await;
    assert_eq!(s, 202);
    let (s, e) = post(&app, &t, "/api/v1/host/my/backups", None).await;
    assert_eq!(s, 409, "{e}");
    settle_stopped(&ctl, id).await;
    let (_, list) = app.get_json(&t, "/api/v1/host/my/backups").await;
    let b2 = list[0].clone();
    assert_eq!(b2["state"], "Completed", "{list}");
    assert!(holds(&backup_file(&app, id, &b2), 0x22));

    // The disk vanishes behind hostd's back: restored from the newest backup.
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    std::fs::remove_file(disk_file(&app, id)).unwrap();
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(
        holds(&disk_file(&app, id), 0x22),
        "the newest backup's content"
    );
    assert!(vm(&app).volume_exists(&disk_volume(id)).await.unwrap());
    let evs = app.store.recent_events(id, 100).await.unwrap();
    let restored = evs
        .iter()
        .find(|e| e.reason == "DiskRestored")
        .expect("DiskRestored");
    assert!(
        restored.message.contains(b2["id"].as_str().unwrap()),
        "{restored:?}"
    );
    assert!(!evs.iter().any(|e| e.reason == "DiskLost"));

    // The owner restores the older backup: its content, the previous disk kept.
    let (s, h) = post(
        &app,
        &t,
        "/api/v1/host/my/restore",
        Some(json!({"backup_id": b1["id"]})),
    )
    .await;
    assert_eq!(s, 202, "{h}");
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(
        holds(&disk_file(&app, id), 0x11),
        "the older backup's content"
    );
    let quarantined: Vec<PathBuf> = std::fs::read_dir(app.config.state_dir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(
        holds(&quarantined[0], 0x22),
        "the replaced disk is in quarantine"
    );
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!((rec.disk_epoch, rec.status.disk_epoch), (1, 1));
    let r = reasons(&app, id).await;
    let tail: Vec<&str> = r
        .iter()
        .map(String::as_str)
        .skip_while(|x| *x != "RestoreRequested")
        .collect();
    assert_eq!(
        &tail[..4],
        [
            "RestoreRequested",
            "Restoring",
            "DiskQuarantined",
            "DiskRestored"
        ],
        "{r:?}"
    );
    // Nothing left in staging.
    let staging = app.config.state_dir.join("backup-staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);

    // Deleting the hosting keeps its backups in quarantine, not in backups/.
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        ctl.reconcile_once(id).await.unwrap(),
        hostd::reconciler::Action::Gone
    );
    assert!(!dir.exists());
    let kept = std::fs::read_dir(app.config.state_dir.join("quarantine"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("backups-")
        })
        .count();
    assert_eq!(kept, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_corrupt_backup_is_never_restored_and_the_next_older_one_is() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "corra", 0x31).await;
    let b1 = backup(&app, &t, id).await;
    write_disk(&disk_file(&app, id), 0x32);
    let b2 = backup(&app, &t, id).await;
    assert_eq!(
        (b1["state"].as_str(), b2["state"].as_str()),
        (Some("Completed"), Some("Completed"))
    );
    // Bit rot in the newest backup.
    let f2 = backup_file(&app, id, &b2);
    let mut bytes = std::fs::read(&f2).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&f2, bytes).unwrap();

    // The owner asks for it: refused at the reconciler, the disk untouched.
    let (s, _) = post(
        &app,
        &t,
        "/api/v1/host/my/restore",
        Some(json!({"backup_id": b2["id"]})),
    )
    .await;
    assert_eq!(s, 202);
    settle_stopped(&ctl, id).await;
    assert!(
        holds(&disk_file(&app, id), 0x32),
        "the disk was left as it was"
    );
    assert!(reasons(&app, id)
        .await
        .contains(&"RestoreFailed".to_string()));

    // The disk vanishes: the corrupt one is marked Failed, the older one restored.
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    std::fs::remove_file(disk_file(&app, id)).unwrap();
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(holds(&disk_file(&app, id), 0x31));
    let (_, list) = app.get_json(&t, "/api/v1/host/my/backups").await;
    let state = |b: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == b["id"])
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(&b2), "Failed", "{list}");
    assert_eq!(state(&b1), "Completed");
    app.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_backups_and_the_schedule_takes_them() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.backups.keep = 2;
    config.backups.interval = Some(std::time::Duration::from_secs(1));
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "rita", 0x41).await;
    let mut taken = Vec::new();
    for i in 0..3u8 {
        // The schedule (run by the resync) asks once the interval has passed.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        write_disk(&disk_file(&app, id), 0x50 + i);
        hostd::reconciler::resync::resync(&ctl.ctx, &ctl.queue)
            .await
            .unwrap();
        assert!(
            ctl.queue.is_queued_or_running(id),
            "the due backup queued the hosting"
        );
        settle_stopped(&ctl, id).await;
        let (_, list) = app.get_json(&t, "/api/v1/host/my/backups").await;
        assert_eq!(list[0]["trigger"], "Scheduled", "{list}");
        assert_eq!(list[0]["state"], "Completed", "{list}");
        taken.push(list[0].clone());
    }
    let (_, list) = app.get_json(&t, "/api/v1/host/my/backups").await;
    let ids: Vec<&Value> = list.as_array().unwrap().iter().map(|b| &b["id"]).collect();
    assert_eq!(
        ids,
        [&taken[2]["id"], &taken[1]["id"]],
        "the two newest are kept"
    );
    assert!(
        !backup_file(&app, id, &taken[0]).exists(),
        "the oldest file is deleted"
    );
    assert!(holds(&backup_file(&app, id, &taken[1]), 0x51));
    let dir = backup_file(&app, id, &taken[0])
        .parent()
        .unwrap()
        .to_path_buf();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["backups"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_backup_that_cannot_be_taken_fails_cleanly_and_the_api_validates_restores() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    // Running on the test driver: it has no backup job, so the backup fails.
    let (t, _, id) = create_hosting(&app, "runa").await;
    ctl.reconcile_once(id).await.unwrap();
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    let _guest = common::fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "ok",
    )
    .await;
    assert_eq!(
        common::settle(&ctl, id).await,
        hostd::reconciler::Action::AwaitChange
    );
    let b = backup(&app, &t, id).await;
    assert_eq!(b["state"], "Failed", "{b}");
    assert!(!b["message"].as_str().unwrap().is_empty());
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(
        rec.status.phase,
        Phase::Ready,
        "a failed backup does not fail the hosting"
    );
    let staging = app.config.state_dir.join("backup-staging");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "nothing left in staging");

    // Restores: only a completed backup of one's own hosting.
    let restore = |body: Value| post(&app, &t, "/api/v1/host/my/restore", Some(body));
    assert_eq!(
        restore(json!({"backup_id": b["id"]})).await.0,
        409,
        "a Failed backup"
    );
    assert_eq!(
        restore(json!({"backup_id": uuid::Uuid::new_v4()})).await.0,
        404
    );
    assert_eq!(restore(json!({"backup_id": "../../etc"})).await.0, 422);
    assert_eq!(restore(json!({})).await.0, 422);
    assert_eq!(restore(json!({"backup_id": b["id"], "x": 1})).await.0, 422);
    let (other, _, _) = create_hosting(&app, "otto").await;
    let (s, _) = post(
        &app,
        &other,
        "/api/v1/host/my/restore",
        Some(json!({"backup_id": b["id"]})),
    )
    .await;
    assert_eq!(s, 404, "another tenant's backup is not found");
    let (s, list) = app.get_json(&other, "/api/v1/host/my/backups").await;
    assert_eq!((s, list), (200, json!([])));
    let rec2 = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec2.disk_epoch, 0, "refused restores changed nothing");
    app.stop().await;
}

fn vm(app: &TestApp) -> std::sync::Arc<dyn VmDriver> {
    app.controller.as_ref().unwrap().ctx.vm.clone()
}

/// A backup that would leave less than `HOSTD_DISK_RESERVE_GIB` free is
/// refused before anything is written: `Failed`, with a message that says
/// why. A new hosting that would take the reserve waits (`InsufficientDisk`)
/// instead of getting a disk.
#[tokio::test]
async fn nothing_a_tenant_asks_for_crosses_the_disk_reserve() {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    // More than this filesystem has free: nothing more may be written (the
    // test driver's simulated pool keeps its own figures for admission).
    let free = rustix::fs::statvfs(state.path()).unwrap();
    config.disk_reserve_bytes = free.f_bavail * free.f_frsize + (1 << 30);
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let (t, id) = stopped_hosting(&app, "reserve", 7).await;
    let b = backup(&app, &t, id).await;
    assert_eq!(b["state"], "Failed", "{b}");
    let err = b["message"].as_str().unwrap_or_default();
    assert!(err.contains("HOSTD_DISK_RESERVE_GIB"), "{b}");
    assert!(!backup_file(&app, id, &b).exists());
    let dir = app.config.state_dir.join("backups").join(id.to_string());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().ends_with(".json")),
        "{left:?}"
    );
    app.stop().await;

    // Admission: a new disk may not take the pool's reserve.
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.capacity.reserved_disk_bytes = u64::MAX / 2;
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    let (_, _, id) = create_hosting(&app, "nodisk").await;
    let ctl = app.controller.clone().unwrap();
    ctl.reconcile_once(id).await.unwrap();
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Pending, "{:?}", rec.status);
    let sched = rec
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == hostd::domain::ConditionType::Scheduled)
        .expect("Scheduled condition");
    assert_eq!(
        sched.reason,
        hostd::domain::Reason::InsufficientDisk,
        "{sched:?}"
    );
    assert!(!app
        .controller
        .as_ref()
        .unwrap()
        .ctx
        .vm
        .volume_exists(&disk_volume(id))
        .await
        .unwrap());
    app.stop().await;
}

/// Backups and quarantined data count against the tenant (issue 22): `GET
/// /host/my` shows them against the quota (default `HOSTD_BACKUP_KEEP` ×
/// the disk); with a quota of one and a half backups, a second backup
/// pushes the oldest out, and with a quota the newest backup already fills,
/// the next backup fails with the figures instead of growing the host's use.
#[tokio::test]
async fn backups_and_quarantine_count_against_the_tenants_quota() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "quota", 0x41).await;
    let b1 = backup(&app, &t, id).await;
    assert_eq!(b1["state"], "Completed", "{b1}");
    let size = b1["size_bytes"].as_u64().unwrap();
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(h["storage"]["backup_bytes"], size, "{h}");
    assert_eq!(h["storage"]["quarantine_bytes"], 0, "{h}");
    assert_eq!(h["storage"]["quota_bytes"], 7u64 * 10 * (1 << 30), "{h}");
    // A restore puts the replaced disk in quarantine: it counts too.
    let (s, _) = post(
        &app,
        &t,
        "/api/v1/host/my/restore",
        Some(json!({"backup_id": b1["id"]})),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    let held: u64 = ctl
        .ctx
        .quarantine
        .bytes_by_hosting()
        .iter()
        .map(|(_, b)| b)
        .sum();
    assert!(held > 0);
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(h["storage"]["quarantine_bytes"], held, "{h}");
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert!(page.status().is_success() || page.status().is_redirection());
    app.stop().await;

    // A quota of one and a half such backups: the second pushes the first out.
    let quota = size + size / 2;
    let app = with_quota(quota).await;
    let (t, id) = stopped_hosting(&app, "quota", 0x41).await;
    let b1 = backup(&app, &t, id).await;
    assert_eq!(
        b1["size_bytes"].as_u64(),
        Some(size),
        "same content, same size"
    );
    let b2 = backup(&app, &t, id).await;
    assert_eq!(b2["state"], "Completed", "{b2}");
    let (_, list) = app.get_json(&t, "/api/v1/host/my/backups").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b2["id"].as_str().unwrap()], "the oldest went");
    assert!(!backup_file(&app, id, &b1).exists());
    let (_, h) = app.get_json(&t, "/api/v1/host/my").await;
    assert_eq!(h["storage"]["backup_bytes"], size, "{h}");
    assert_eq!(h["storage"]["quota_bytes"], quota, "{h}");
    let evs = app.store.recent_events(id, 50).await.unwrap();
    assert!(
        evs.iter()
            .any(|e| e.reason == "BackupsExpired" && e.message.contains("quota")),
        "{evs:?}"
    );
    app.stop().await;

    // A quota the newest backup fills: the next backup fails and says why.
    let app = with_quota(size).await;
    let (t, id) = stopped_hosting(&app, "quota", 0x41).await;
    let b1 = backup(&app, &t, id).await;
    assert_eq!(b1["state"], "Completed", "{b1}");
    let b2 = backup(&app, &t, id).await;
    assert_eq!(b2["state"], "Failed", "{b2}");
    assert!(
        b2["message"]
            .as_str()
            .unwrap()
            .contains("backup quota reached"),
        "{b2}"
    );
    assert!(
        backup_file(&app, id, &b1).exists(),
        "the newest backup is kept"
    );
    assert!(!backup_file(&app, id, &b2).exists());
    app.stop().await;
}

async fn with_quota(bytes: u64) -> TestApp {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    config.backups.quota_bytes = Some(bytes);
    TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await
}
