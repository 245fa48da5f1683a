//! Real disk files for tests on libvirt's `test:///default` driver (whose
//! volumes have none): a qcow2 image written with `qemu-io` where the pool
//! keeps a hosting's disk, and checks of what an image holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use hostd::domain::{HostingId, Phase};
use hostd::reconciler::names::disk_volume;
use serde_json::{json, Value};

use super::{create_hosting, settle_stopped, TestApp};

/// The file behind a hosting's disk volume in the test pool.
pub fn disk_file(app: &TestApp, id: HostingId) -> PathBuf {
    app.config
        .state_dir
        .join("pools")
        .join(&app.config.instance)
        .join(disk_volume(id))
}

pub fn run(cmd: &mut Command) -> bool {
    let out = cmd
        .output()
        .expect("runs (qemu-utils is installed by scripts)");
    out.status.success()
        && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
}

/// Makes `path` a 64 MiB qcow2 disk whose first 64 KiB hold `byte`.
pub fn write_disk(path: &Path, byte: u8) {
    let _ = std::fs::remove_file(path);
    assert!(run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")));
    assert!(run(Command::new("qemu-io")
        .args(["-c", &format!("write -P {byte} 0 64k")])
        .arg(path)));
}

/// Whether the image at `path` holds `byte` in its first 64 KiB.
pub fn holds(path: &Path, byte: u8) -> bool {
    run(Command::new("qemu-io")
        .args(["-r", "-c", &format!("read -P {byte} 0 64k")])
        .arg(path))
}

/// A stopped hosting whose disk file holds `byte`.
pub async fn stopped_hosting(app: &TestApp, name: &str, byte: u8) -> (String, HostingId) {
    let ctl = app.controller.clone().unwrap();
    let (t, _, id) = create_hosting(app, name).await;
    ctl.reconcile_once(id).await.unwrap();
    let r = app
        .client
        .patch(app.url("/api/v1/host/my"))
        .bearer_auth(&t)
        .json(&json!({"running": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(settle_stopped(&ctl, id).await, Phase::Stopped);
    write_disk(&disk_file(app, id), byte);
    (t, id)
}

/// POSTs JSON (or nothing) with a bearer token: (status, body).
pub async fn post(app: &TestApp, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app.client.post(app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Requests a backup and drives the reconciler until it is done; the
/// backup as the API lists it then.
pub async fn take_backup(app: &TestApp, t: &str, id: HostingId) -> Value {
    let (s, b) = post(app, t, "/api/v1/host/my/backups", None).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["state"], "Pending");
    settle_stopped(app.controller.as_ref().unwrap(), id).await;
    let (s, list) = app.get_json(t, "/api/v1/host/my/backups").await;
    assert_eq!(s, 200);
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == b["id"])
        .cloned()
        .expect("listed")
}
