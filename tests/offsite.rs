//! Off-host backups against a real S3 server (moto, `common::s3`), with the
//! reconciler on libvirt's `test:///default` and real qcow2 disk files
//! (`common::disks`): backups are sealed before they leave, read back before
//! they count, restored from the store when the local copy is gone; a
//! tampered copy is never restored; the store going away fails backups with
//! a reason and leaves the site alone; an upload a crash interrupted is
//! aborted, not left behind.

mod common;

use common::disks::{disk_file, holds, post, stopped_hosting, take_backup as backup, write_disk};
use common::s3::Moto;
use common::{settle_stopped, TestApp};
use hostd::domain::{BackupId, HostingId, Phase};
use serde_json::{json, Value};

const BUCKET: &str = "hostd-backups";

async fn app_with_store(moto: &Moto, local_keep: u32) -> (TestApp, std::path::PathBuf) {
    let db = common::fresh_database().await;
    let state = tempfile::tempdir().unwrap();
    let nginx = common::TestNginx::start();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    let key_file = state.path().join("keys/backup.key");
    let mut policy = moto.policy(BUCKET, "site1", &key_file);
    policy.local_keep = local_keep;
    config.backups.offsite = Some(policy);
    let app = TestApp::spawn_with(config, hostd::app::Mode::All, false, Some(nginx), state).await;
    (app, key_file)
}

fn local_file(app: &TestApp, id: HostingId, b: &Value) -> std::path::PathBuf {
    app.config
        .state_dir
        .join("backups")
        .join(id.to_string())
        .join(format!("{}.qcow2", b["id"].as_str().unwrap()))
}

async fn events(app: &TestApp, id: HostingId) -> Vec<hostd::store::Event> {
    app.store.recent_events(id, 100).await.unwrap()
}

#[tokio::test]
async fn backups_are_sealed_off_host_and_restored_from_there_when_the_local_copy_is_gone() {
    let moto = Moto::start(BUCKET).await;
    let (app, key_file) = app_with_store(&moto, 0).await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "offa", 0x61).await;

    let b1 = backup(&app, &t, id).await;
    assert_eq!(b1["state"], "Completed", "{b1}");
    assert_eq!(b1["offsite"], true);
    let installation = app.store.installation_id().await.unwrap();
    let dir = format!("site1/{installation}/{id}");
    let object = format!("{dir}/{}.qcow2.sealed", b1["id"].as_str().unwrap());
    let mut keys = moto.keys(BUCKET).await;
    keys.sort();
    assert_eq!(keys, vec![object.clone(), format!("{dir}/manifest.json")]);
    // Read through hostd's own store client (moto refuses some unsigned reads).
    let o = ctl.ctx.offsite.as_ref().expect("a store");
    let get = |k: String| async move {
        o.store
            .get_small(k.strip_prefix("site1/").unwrap())
            .await
            .unwrap()
            .expect("present")
    };
    // Sealed: our header, none of the qcow2 file the backup is.
    let sealed = get(object.clone()).await;
    assert_eq!(&sealed[..8], b"HOSTDBK1");
    assert!(
        !sealed.windows(4).any(|w| w == b"QFI\xfb"),
        "the store holds a readable qcow2"
    );
    let key = hostd::seal::Key::load_or_create(&key_file).unwrap();
    let manifest: Value =
        serde_json::from_slice(&get(format!("{dir}/manifest.json")).await).unwrap();
    assert_eq!(manifest["key_fingerprint"], key.fingerprint());
    assert_eq!(manifest["backups"][0]["id"], b1["id"]);
    assert_eq!(manifest["backups"][0]["sha256"], b1["sha256"]);
    use sha2::Digest;
    assert_eq!(
        manifest["backups"][0]["sealed_sha256"],
        hex::encode(sha2::Sha256::digest(&sealed))
    );
    assert_eq!(moto.open_uploads(BUCKET).await, 0);
    // HOSTD_BACKUP_LOCAL_KEEP=0: no copy stays on the host.
    assert!(!local_file(&app, id, &b1).exists());

    // The site changes; the owner restores: the copy comes from the store.
    write_disk(&disk_file(&app, id), 0x62);
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
        holds(&disk_file(&app, id), 0x61),
        "the backup's content is back"
    );
    let evs = events(&app, id).await;
    assert!(
        evs.iter().any(|e| e
            .message
            .contains("fetched its sealed copy from the off-host store")),
        "{evs:?}"
    );
    assert!(evs.iter().any(|e| e.reason == "DiskRestored"));

    // More backups than HOSTD_BACKUP_KEEP: retention applies to the store,
    // which holds exactly the completed backups' objects.
    // (b1 stays: the restore names it, and retention never drops that one.)
    for _ in 0..=app.config.backups.keep {
        assert_eq!(backup(&app, &t, id).await["state"], "Completed");
    }
    let (_, list) = app.get_json(&t, "/api/v1/host/my/backups").await;
    let completed: std::collections::BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "Completed")
        .map(|b| format!("{dir}/{}.qcow2.sealed", b["id"].as_str().unwrap()))
        .collect();
    assert!(
        completed.len() < 2 + app.config.backups.keep as usize,
        "some backups expired"
    );
    let sealed_left: std::collections::BTreeSet<String> = moto
        .keys(BUCKET)
        .await
        .into_iter()
        .filter(|k| k.ends_with(".sealed"))
        .collect();
    assert_eq!(
        sealed_left, completed,
        "the store holds the completed backups, no more"
    );

    // The hosting is deleted: its objects go too.
    let r = app
        .client
        .delete(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for _ in 0..10 {
        if ctl.reconcile_once(id).await.unwrap() == hostd::reconciler::Action::Gone {
            break;
        }
    }
    assert!(moto.keys(BUCKET).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_tampered_copy_is_never_restored_and_a_store_outage_fails_backups_cleanly() {
    let mut moto = Moto::start(BUCKET).await;
    let (app, _) = app_with_store(&moto, 0).await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "offb", 0x71).await;
    let b1 = backup(&app, &t, id).await;
    assert_eq!(b1["state"], "Completed", "{b1}");
    let installation = app.store.installation_id().await.unwrap();
    let object = format!(
        "site1/{installation}/{id}/{}.qcow2.sealed",
        b1["id"].as_str().unwrap()
    );

    // The store's copy is changed behind hostd's back: never restored.
    let o = ctl.ctx.offsite.as_ref().expect("a store");
    let rel = object.strip_prefix("site1/").unwrap();
    let mut bytes = o.store.get_small(rel).await.unwrap().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    o.store.put_small(rel, bytes).await.unwrap();
    write_disk(&disk_file(&app, id), 0x72);
    let (s, _) = post(
        &app,
        &t,
        "/api/v1/host/my/restore",
        Some(json!({"backup_id": b1["id"]})),
    )
    .await;
    assert_eq!(s, 202);
    settle_stopped(&ctl, id).await;
    assert!(
        holds(&disk_file(&app, id), 0x72),
        "the disk was left as it was"
    );
    let evs = events(&app, id).await;
    let failed = evs
        .iter()
        .find(|e| e.reason == "RestoreFailed")
        .expect("RestoreFailed");
    assert!(
        failed.message.contains("does not match its checksum"),
        "{failed:?}"
    );

    // The store goes away: the backup fails with the reason, the hosting is
    // untouched, nothing is left locally.
    moto.down();
    let b2 = backup(&app, &t, id).await;
    assert_eq!(b2["state"], "Failed", "{b2}");
    assert!(
        b2["message"].as_str().unwrap().contains("backup store"),
        "{b2}"
    );
    assert!(!local_file(&app, id, &b2).exists());
    let rec = app.store.get_record(id).await.unwrap().unwrap();
    assert_eq!(rec.status.phase, Phase::Stopped);
    assert!(holds(&disk_file(&app, id), 0x72));
    // A restore while the store is away does not condemn the backup: the
    // pass fails and is retried; the backup stays Completed.
    let (s, _) = post(
        &app,
        &t,
        "/api/v1/host/my/restore",
        Some(json!({"backup_id": b1["id"]})),
    )
    .await;
    assert_eq!(s, 202);
    assert!(ctl.reconcile_once(id).await.is_err());
    let still = app
        .store
        .get_backup(
            id,
            BackupId(uuid::Uuid::parse_str(b1["id"].as_str().unwrap()).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.state, hostd::domain::BackupState::Completed);
    // Back (empty, as moto keeps nothing): the owner gives up on the
    // restore by asking for a new backup after it; backups work again.
    moto.up(BUCKET).await;
    settle_stopped(&ctl, id).await;
    let b3 = backup(&app, &t, id).await;
    assert_eq!(b3["state"], "Completed", "{b3}");
    assert_eq!(b3["offsite"], true);
    app.stop().await;
}

#[tokio::test]
async fn an_upload_a_crash_interrupted_is_aborted_not_left_behind() {
    let moto = Moto::start(BUCKET).await;
    let (app, _) = app_with_store(&moto, 1).await;
    let ctl = app.controller.clone().unwrap();
    let (t, id) = stopped_hosting(&app, "offc", 0x31).await;
    // A backup a crash stopped mid-upload: Running, its upload begun and
    // recorded, a part sent.
    let (s, b) = post(&app, &t, "/api/v1/host/my/backups", None).await;
    assert_eq!(s, 202);
    let bid = BackupId(uuid::Uuid::parse_str(b["id"].as_str().unwrap()).unwrap());
    app.store.backup_started(bid).await.unwrap();
    let o = ctl.ctx.offsite.as_ref().expect("a store");
    let key = o.object(id, bid);
    let upload = o.store.begin_upload(&key).await.unwrap();
    app.store
        .backup_upload_started(bid, &key, &upload)
        .await
        .unwrap();
    assert_eq!(moto.open_uploads(BUCKET).await, 1);
    // The reconciler retakes it: the old upload is aborted, the backup done.
    settle_stopped(&ctl, id).await;
    assert_eq!(
        moto.open_uploads(BUCKET).await,
        0,
        "an upload was left open"
    );
    let done = app.store.get_backup(id, bid).await.unwrap().unwrap();
    assert_eq!(done.state, hostd::domain::BackupState::Completed);
    assert!(done.remote.is_some() && done.upload.is_none());
    // HOSTD_BACKUP_LOCAL_KEEP=1: the newest stays on the host too.
    assert!(app
        .config
        .state_dir
        .join(format!("backups/{id}/{bid}.qcow2"))
        .exists());
    let evs = events(&app, id).await;
    assert!(evs.iter().any(|e| e.reason == "BackupResumed"), "{evs:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_lost_key_file_stops_start_up_instead_of_making_a_new_key() {
    let moto = Moto::start(BUCKET).await;
    let (app, key_file) = app_with_store(&moto, 1).await;
    let (t, id) = stopped_hosting(&app, "offd", 0x21).await;
    assert_eq!(backup(&app, &t, id).await["state"], "Completed");
    let fingerprint = hostd::seal::Key::load_or_create(&key_file)
        .unwrap()
        .fingerprint();
    let config = app.config.clone();
    // The host is lost (its state directory, where this test keeps the key,
    // goes with the app); the new one was set up without the operator's
    // copy of the key.
    app.stop().await;
    let _ = std::fs::remove_file(&key_file);
    let err =
        match hostd::app::Application::build(config.clone(), hostd::app::Mode::Reconciler).await {
            Ok(_) => panic!("started without the key the backups need"),
            Err(e) => e.to_string(),
        };
    assert!(
        err.contains("does not exist") && err.contains(&fingerprint),
        "{err}"
    );
    assert!(!key_file.exists(), "no new key was made");
}
