//! Incremental backups as chains, on libvirt's `test:///default` driver with
//! real files. The test driver has no backup jobs, so an incremental is made
//! the way libvirt's job leaves one (a qcow2 holding the changed clusters
//! over the live disk) and compressed by hostd's own `compress_incremental`;
//! restores, verification and retention then run as in production. Real
//! incrementals of a running guest are in `scripts/e2e.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::{disk_file, run, stopped_hosting, take_backup, write_disk};
use common::reconciler::vm;
use common::{settle_stopped, TestApp};
use hostd::domain::{BackupId, BackupKind, BackupState, HostingId, Phase};
use hostd::drivers::qemu_img;
use hostd::reconciler::names::disk_volume;
use hostd::store::Lineage;
use serde_json::Value;

fn file(app: &TestApp, id: HostingId, b: BackupId) -> PathBuf {
    app.config
        .state_dir
        .join("backups")
        .join(id.to_string())
        .join(format!("{b}.qcow2"))
}

fn bid(b: &Value) -> BackupId {
    BackupId(b["id"].as_str().unwrap().parse().unwrap())
}

/// Whether `path` reads `byte` in the 64 KiB cluster `n`.
fn cluster(path: &Path, n: u64, byte: u8) -> bool {
    run(Command::new("qemu-io")
        .args(["-r", "-c", &format!("read -P {byte} {}k 64k", n * 64)])
        .arg(path))
}

/// Turns backup `b` (a full one just taken) into an incremental since
/// `parent`, as libvirt's job and hostd would have left it: `writes` are
/// qemu-io commands applied over the hosting's disk in an overlay (libvirt's
/// target holds exactly the changed clusters), then compressed by hostd.
async fn make_incremental(
    app: &TestApp,
    id: HostingId,
    b: BackupId,
    parent: BackupId,
    writes: &[&str],
) {
    let dir = app.config.state_dir.join("backup-staging");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{b}-libvirt.qcow2"));
    let _ = std::fs::remove_file(&src);
    assert!(run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(disk_file(app, id))
        .arg(&src)));
    for w in writes {
        assert!(run(Command::new("qemu-io").args(["-c", w]).arg(&src)));
    }
    let to = file(app, id, b);
    let _ = std::fs::remove_file(&to);
    let scratch = dir.join(format!("{b}-scratch.qcow2"));
    qemu_img::compress_incremental(&src, &to, &format!("{parent}.qcow2"), &scratch)
        .await
        .unwrap();
    std::fs::remove_file(&src).unwrap();
    use sha2::Digest;
    let bytes = std::fs::read(&to).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let lineage = Lineage {
        kind: BackupKind::Incremental,
        parent: Some(parent),
        checkpoint: false,
    };
    app.store
        .backup_completed(b, bytes.len() as u64, &sha, None, &lineage)
        .await
        .unwrap();
}

async fn state(app: &TestApp, id: HostingId, b: BackupId) -> Option<BackupState> {
    app.store.get_backup(id, b).await.unwrap().map(|x| x.state)
}

#[tokio::test]
async fn a_chain_of_incrementals_restores_and_a_broken_link_falls_back_to_the_full() {
    let app = TestApp::manual().await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "chain", 0x41).await;
    let disk = disk_file(&app, id);
    let b1 = bid(&take_backup(&app, &t, id).await);
    assert_eq!(
        app.store.get_backup(id, b1).await.unwrap().unwrap().kind,
        BackupKind::Full,
        "a stopped guest's backup is full"
    );
    // b2: cluster 0 zeroed by the guest (it must not read through to b1's
    // 0x41), cluster 1 written; b3: cluster 2 written.
    let b2 = bid(&take_backup(&app, &t, id).await);
    make_incremental(
        &app,
        id,
        b2,
        b1,
        &["write -z 0 64k", "write -P 0x42 64k 64k"],
    )
    .await;
    let b3 = bid(&take_backup(&app, &t, id).await);
    make_incremental(&app, id, b3, b2, &["write -P 0x43 128k 64k"]).await;
    let f3 = file(&app, id, b3);
    assert!(
        std::fs::metadata(&f3).unwrap().len() < 512 * 1024,
        "an incremental holds only what changed"
    );
    let chain = app.store.backup_chain(id, b3).await.unwrap();
    let ids: Vec<BackupId> = chain.iter().map(|b| b.id).collect();
    assert_eq!(ids, [b1, b2, b3], "the chain, the full one first");

    // Retention keeps what the newest needs, whatever HOSTD_BACKUP_KEEP says.
    assert!(app.store.expire_backups(id, 1).await.unwrap().is_empty());
    assert!(trims_nothing(&app, id).await);

    // The disk vanishes: the newest backup comes back through its chain.
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    let _ = std::fs::remove_file(&disk);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(cluster(&disk, 0, 0), "the zeroed cluster reads as zeros");
    assert!(cluster(&disk, 1, 0x42) && cluster(&disk, 2, 0x43));
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&info.stdout).contains("backing file"),
        "the restored disk is standalone"
    );
    let evs = app.store.recent_events(id, 100).await.unwrap();
    assert!(
        evs.iter().any(|e| e.reason == "Restoring"
            && e.message.contains(&format!("restoring backup {b3}"))
            && e.message.contains("with the 2 backups it needs")),
        "{evs:?}"
    );
    assert!(
        holds_files(&app, id, &[b1, b2, b3]),
        "backup files untouched"
    );

    // A damaged link: the backups after it cannot be restored; the full
    // one before it is.
    let f2 = file(&app, id, b2);
    let mut bytes = std::fs::read(&f2).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&f2, bytes).unwrap();
    vm(&app).delete_volume(&disk_volume(id)).await.unwrap();
    let _ = std::fs::remove_file(&disk);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    assert!(cluster(&disk, 0, 0x41), "the full backup's content");
    assert_eq!(state(&app, id, b3).await, Some(BackupState::Failed));
    assert_eq!(state(&app, id, b2).await, Some(BackupState::Failed));
    assert_eq!(state(&app, id, b1).await, Some(BackupState::Completed));
    let failed = app.store.get_backup(id, b3).await.unwrap().unwrap();
    assert!(
        failed
            .message
            .as_deref()
            .unwrap_or("")
            .contains(&format!("needs backup {b2}")),
        "{failed:?}"
    );

    // A new full backup: the old chain expires as a whole.
    write_disk(&disk, 0x44);
    let b4 = bid(&take_backup(&app, &t, id).await);
    let gone = app.store.expire_backups(id, 1).await.unwrap();
    assert_eq!(gone.iter().map(|b| b.id).collect::<Vec<_>>(), [b1]);
    assert_eq!(state(&app, id, b4).await, Some(BackupState::Completed));
    app.stop().await;
}

/// Whether a quota of one byte deletes nothing (the newest chain stays).
async fn trims_nothing(app: &TestApp, id: HostingId) -> bool {
    let gone = app.store.trim_backups_to_quota(id, 0, 1).await.unwrap();
    gone.is_empty()
}

fn holds_files(app: &TestApp, id: HostingId, bs: &[BackupId]) -> bool {
    bs.iter().all(|b| file(app, id, *b).exists())
}

#[tokio::test]
async fn the_quota_deletes_whole_chains_never_the_newest() {
    let app = TestApp::manual().await;
    let (t, id) = stopped_hosting(&app, "quota", 0x51).await;
    let a = bid(&take_backup(&app, &t, id).await);
    let a1 = bid(&take_backup(&app, &t, id).await);
    make_incremental(&app, id, a1, a, &["write -P 0x52 64k 64k"]).await;
    let b = bid(&take_backup(&app, &t, id).await);
    let b1 = bid(&take_backup(&app, &t, id).await);
    make_incremental(&app, id, b1, b, &["write -P 0x53 64k 64k"]).await;
    let size = |x: BackupId| std::fs::metadata(file(&app, id, x)).unwrap().len();
    let newest_chain = size(b) + size(b1);
    // Room for the newest chain only: the older chain goes whole.
    let gone = app
        .store
        .trim_backups_to_quota(id, 0, newest_chain + 1)
        .await
        .unwrap();
    let mut ids: Vec<BackupId> = gone.iter().map(|x| x.id).collect();
    ids.sort_by_key(|x| x.0);
    let mut want = vec![a, a1];
    want.sort_by_key(|x| x.0);
    assert_eq!(ids, want);
    // No room even for it: the newest chain stays all the same.
    assert!(trims_nothing(&app, id).await);
    assert_eq!(state(&app, id, b).await, Some(BackupState::Completed));
    // A parent cannot be deleted under a kept incremental (the database
    // refuses, whatever the caller's bug).
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&app.config.database_url)
        .await
        .unwrap();
    let r = sqlx::query("delete from backups where id = $1")
        .bind(b.0)
        .execute(&mut db)
        .await;
    assert!(r.is_err(), "deleting a needed parent was allowed");
    app.stop().await;
}
