//! The crash matrix: for every fault point of the create and the delete path,
//! a real `hostd reconciler` process is aborted at that point (like `kill -9`)
//! and restarted without the fault; then the invariants are checked: the
//! hosting converges, nothing leaks, a disk that existed survives, and the API
//! (a separate `hostd api` process) never answered 5xx meanwhile.
//!
//! Real libvirt (`qemu:///system`) keeps state across the restart; guests are
//! the `tiny` test image (busybox: DHCP, HTTP, SSH banner) so each boots in
//! seconds. Needs root, libvirtd and the images from scripts/build-image.sh:
//! `scripts/test.sh` provides them and runs this with `--ignored`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostd::drivers::libvirt::LibvirtDriver;
use hostd::drivers::VmDriver;
use serde_json::{json, Value};

const CREATE_POINTS: &[&str] = &[
    "after_port_allocation",
    "after_disk_create",
    "after_seed_upload",
    "after_define",
    "after_start",
    "before_route_write",
    "after_route_write",
    "before_status_write",
];
const DELETE_POINTS: &[&str] = &[
    "after_route_remove",
    "after_domain_destroy",
    "after_domain_undefine",
    "after_volume_delete",
    "after_release_ports",
];

struct Env {
    db: String,
    nginx: common::TestNginx,
    work: tempfile::TempDir,
    state: PathBuf,
    instance: String,
    api_port: u16,
    client: reqwest::Client,
}

impl Env {
    fn envs(&self) -> Vec<(String, String)> {
        let v = |k: &str, v: String| (k.to_string(), v);
        vec![
            v("DATABASE_URL", self.db.clone()),
            v(
                "HOSTD_JWT_SECRET",
                "crash-matrix-secret-crash-matrix-secret".into(),
            ),
            v("HOSTD_LISTEN", format!("127.0.0.1:{}", self.api_port)),
            v("HOSTD_LIBVIRT_URI", "qemu:///system".into()),
            v("HOSTD_STATE_DIR", self.state.display().to_string()),
            v(
                "HOSTD_NGINX_ROUTES_DIR",
                self.nginx.routes_dir.display().to_string(),
            ),
            v("HOSTD_NGINX_CONF", self.nginx.conf.display().to_string()),
            v(
                "HOSTD_PROBE_URL",
                format!("http://127.0.0.1:{}", self.nginx.port),
            ),
            v("HOSTD_INSTANCE", self.instance.clone()),
            v(
                "HOSTD_IMAGES_FILE",
                self.work.path().join("catalog.yaml").display().to_string(),
            ),
            v("HOSTD_BCRYPT_COST", "4".into()),
            v("HOSTD_RESYNC_SECS", "3".into()),
            v("HOSTD_BACKOFF_MAX_SECS", "5".into()),
            v("RUST_LOG", "warn".into()),
        ]
    }

    fn spawn(&self, what: &str, faults: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join(format!("{what}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_hostd"))
            .arg(what)
            .envs(self.envs())
            .env("HOSTD_FAULTS", faults)
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .expect("spawn hostd")
    }

    fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1{p}", self.api_port)
    }

    async fn user(&self, name: &str) -> String {
        let r = self
            .client
            .post(self.url("/auth/register"))
            .json(&json!({"email": format!("{name}@example.com"), "username": name, "password": "correct horse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let t: Value = self
            .client
            .post(self.url("/auth/login"))
            .form(&[("username", name), ("password", "correct horse")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t["access_token"].as_str().unwrap().to_string()
    }

    async fn my(&self, token: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url("/host/my"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn wait_phase(&self, token: &str, phase: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let (s, v) = self.my(token).await;
            if s == 200 && v["status"]["phase"] == phase {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    async fn wait_gone(&self, token: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.my(token).await.0 == 404 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    fn disk_inode(&self, id: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let p = self
            .state
            .join("pools")
            .join(&self.instance)
            .join(format!("hostd-{id}-disk.qcow2"));
        std::fs::metadata(p).ok().map(|m| m.ino())
    }

    /// Every managed domain, volume, route file and port row belongs to a live
    /// hosting, and nothing exists twice. Returns the leaks found.
    async fn leaks(&self, store: &hostd::store::Store, vm: &LibvirtDriver) -> Vec<String> {
        let live: HashSet<String> = store
            .list_records()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id.to_string())
            .collect();
        let mut leaks = vec![];
        let mut seen = HashSet::new();
        for d in vm.list_domains().await.unwrap() {
            if !live.contains(&d.marker.hosting_id.to_string()) {
                leaks.push(format!("domain {}", d.name));
            }
            if !seen.insert(d.marker.hosting_id) {
                leaks.push(format!("second domain for {}", d.marker.hosting_id));
            }
        }
        for v in vm.list_volumes().await.unwrap() {
            match hostd::reconciler::reconcile::volume_owner(&v) {
                Some(o) if live.contains(&o.to_string()) => {}
                _ => leaks.push(format!("volume {v}")),
            }
        }
        for e in std::fs::read_dir(&self.nginx.routes_dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            if !live.contains(name.trim_end_matches(".conf")) {
                leaks.push(format!("route {name}"));
            }
        }
        let mut by_hosting = std::collections::HashMap::<String, usize>::new();
        for (port, _, h) in store.list_ports().await.unwrap() {
            if !live.contains(&h.to_string()) {
                leaks.push(format!("port {port}"));
            }
            *by_hosting.entry(h.to_string()).or_default() += 1;
        }
        for (h, n) in by_hosting {
            if n != 2 {
                leaks.push(format!("hosting {h} holds {n} ports"));
            }
        }
        leaks
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    if wait_exit(&mut child, Duration::from_secs(15)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

struct Row {
    point: &'static str,
    path: &'static str,
    crashed: bool,
    converged: bool,
    secs: f64,
    leaks: Vec<String>,
    disk_kept: Option<bool>,
}

#[tokio::test]
#[ignore = "needs root, qemu:///system and the tiny image; run by scripts/test.sh"]
async fn crash_at_every_fault_point_then_converge() {
    let state =
        PathBuf::from(std::env::var("HOSTD_STATE_DIR").unwrap_or_else(|_| "/var/lib/hostd".into()));
    let tiny = state.join("images/tiny");
    for f in ["disk.qcow2", "vmlinuz", "initrd.img"] {
        assert!(
            tiny.join(f).exists(),
            "{} missing: run scripts/build-image.sh",
            tiny.join(f).display()
        );
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("catalog.yaml"),
        format!(
            "images:\n  tiny:\n    disk: {t}/disk.qcow2\n    format: qcow2\n    kernel: {t}/vmlinuz\n    initrd: {t}/initrd.img\n    cmdline: \"console=ttyS0 quiet\"\n",
            t = tiny.display()
        ),
    )
    .unwrap();
    let env = Env {
        db: common::fresh_database().await,
        nginx: common::TestNginx::start(),
        work,
        state: state.clone(),
        instance: format!("crash-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        api_port: common::free_port(),
        client: reqwest::Client::new(),
    };
    let api = env.spawn("api", "");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.client.get(env.url("/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "hostd api did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let store = hostd::store::Store::connect(&env.db, 2).await.unwrap();
    let vm = LibvirtDriver::new("qemu:///system", &env.instance, &state);

    // The API must keep answering (no 5xx) whatever the reconciler does.
    let stop_poll = Arc::new(AtomicBool::new(false));
    let five_xx = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let poller = {
        let (c, url, stop_poll, five_xx, polls) = (
            env.client.clone(),
            env.url("/health"),
            stop_poll.clone(),
            five_xx.clone(),
            polls.clone(),
        );
        let token = env.user("poller").await;
        let my = env.url("/host/my");
        tokio::spawn(async move {
            while !stop_poll.load(Relaxed) {
                for r in [
                    c.get(&url).send().await,
                    c.get(&my).bearer_auth(&token).send().await,
                ] {
                    polls.fetch_add(1, Relaxed);
                    if r.map(|r| r.status().is_server_error()).unwrap_or(true) {
                        five_xx.fetch_add(1, Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut rows = vec![];
    let converge_timeout = Duration::from_secs(180);
    for (i, point) in CREATE_POINTS.iter().enumerate() {
        let token = env.user(&format!("create{i}")).await;
        let mut rec = env.spawn("reconciler", &format!("{point}:crash"));
        let r = env
            .client
            .post(env.url("/host"))
            .bearer_auth(&token)
            .json(&json!({"image": "tiny", "memory_mib": 256}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let crashed = wait_exit(&mut rec, Duration::from_secs(120))
            .map(|s| !s.success())
            .unwrap_or(false);
        if !crashed {
            stop(rec);
        }
        let inode_before = env.disk_inode(&id);
        let t = Instant::now();
        let rec = env.spawn("reconciler", "");
        let converged = env
            .wait_phase(&token, "Ready", converge_timeout)
            .await
            .is_some();
        let secs = t.elapsed().as_secs_f64();
        let disk_kept = inode_before.map(|b| env.disk_inode(&id) == Some(b));
        let leaks = env.leaks(&store, &vm).await;
        // Clean up this case through the normal path.
        env.client
            .delete(env.url("/host/my"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(
            env.wait_gone(&token, converge_timeout).await,
            "cleanup of {point} did not finish"
        );
        stop(rec);
        rows.push(Row {
            point,
            path: "create",
            crashed,
            converged,
            secs,
            leaks,
            disk_kept,
        });
    }
    for (i, point) in DELETE_POINTS.iter().enumerate() {
        let token = env.user(&format!("delete{i}")).await;
        let rec = env.spawn("reconciler", "");
        env.client
            .post(env.url("/host"))
            .bearer_auth(&token)
            .json(&json!({"image": "tiny", "memory_mib": 256}))
            .send()
            .await
            .unwrap();
        let ready = env.wait_phase(&token, "Ready", converge_timeout).await;
        stop(rec);
        assert!(
            ready.is_some(),
            "setup for {point}: hosting never became Ready"
        );
        let mut rec = env.spawn("reconciler", &format!("{point}:crash"));
        env.client
            .delete(env.url("/host/my"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let crashed = wait_exit(&mut rec, Duration::from_secs(120))
            .map(|s| !s.success())
            .unwrap_or(false);
        if !crashed {
            stop(rec);
        }
        let t = Instant::now();
        let rec = env.spawn("reconciler", "");
        let converged = env.wait_gone(&token, converge_timeout).await;
        let secs = t.elapsed().as_secs_f64();
        // Give the resync a pass to collect anything left, then look.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let leaks = env.leaks(&store, &vm).await;
        stop(rec);
        rows.push(Row {
            point,
            path: "delete",
            crashed,
            converged,
            secs,
            leaks,
            disk_kept: None,
        });
    }
    stop_poll.store(true, Relaxed);
    let _ = poller.await;
    stop(api);
    cleanup_pool(&env.instance, &state);

    println!("\n| fault point | path | crashed there | converged | time to converge | disk kept | leaks |");
    println!("|---|---|---|---|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} s | {} | {} |",
            r.point,
            r.path,
            if r.crashed { "yes" } else { "NO" },
            if r.converged { "yes" } else { "NO" },
            r.secs,
            match r.disk_kept {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            if r.leaks.is_empty() {
                "none".to_string()
            } else {
                r.leaks.join(", ")
            }
        );
    }
    println!(
        "API polls during the matrix: {}, 5xx or errors: {}",
        polls.load(Relaxed),
        five_xx.load(Relaxed)
    );
    for r in &rows {
        assert!(
            r.crashed,
            "{} ({}): the fault point was never reached",
            r.point, r.path
        );
        assert!(r.converged, "{} ({}): did not converge", r.point, r.path);
        assert!(
            r.leaks.is_empty(),
            "{} ({}): leaks {:?}",
            r.point,
            r.path,
            r.leaks
        );
        assert_ne!(
            r.disk_kept,
            Some(false),
            "{} ({}): the disk volume was replaced",
            r.point,
            r.path
        );
    }
    assert_eq!(
        five_xx.load(Relaxed),
        0,
        "the API answered 5xx (or failed) while the reconciler crashed"
    );
}

/// Removes this run's (by then empty) storage pool.
fn cleanup_pool(instance: &str, state: &Path) {
    let pool = format!("hostd-{instance}");
    for args in [vec!["pool-destroy", &pool], vec!["pool-undefine", &pool]] {
        let _ = Command::new("virsh")
            .arg("-c")
            .arg("qemu:///system")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(state.join("pools").join(instance));
}
