//! Test harness: a fresh Postgres database per test, a private nginx on a
//! free 127.0.0.1 port, libvirt's `test:///default` driver with a unique
//! hostd instance name, and the real application built on port 0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod disks;
pub mod reconciler;
pub mod s3;
pub mod web;

use hostd::app::{Application, Mode};
use hostd::config::{Config, DomainType};
use hostd::domain::PortRange;
use hostd::reconciler::Controller;
use hostd::shutdown::Shutdown;
use hostd::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://hostd:hostd@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = admin_url();
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .expect("TEST_DATABASE_URL must point at a running Postgres (scripts/test.sh starts one)");
    let name = format!("hostd_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nginx master serving the routes directory on a free port.
pub struct TestNginx {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub routes_dir: PathBuf,
    pub port: u16,
    /// The HTTPS listener's port, if it has one.
    pub https_port: Option<u16>,
}

impl TestNginx {
    pub fn start() -> TestNginx {
        Self::start_with(None)
    }

    /// With host routing for `sites_domain` (`HOSTD_SITES_DOMAIN`).
    pub fn start_with(sites_domain: Option<&str>) -> TestNginx {
        Self::start_full(sites_domain, None, None)
    }

    /// With an HTTPS listener serving the certificates of `tls_dir` (a
    /// hostd state directory's `tls`).
    /// `panel`: the dashboard's host name and the API address it proxies to.
    pub fn start_full(
        sites_domain: Option<&str>,
        tls_dir: Option<&Path>,
        panel: Option<(&str, &str)>,
    ) -> TestNginx {
        let dir = tempfile::tempdir().unwrap();
        // nginx workers run as www-data (see templates/nginx-main.conf).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let routes_dir = dir.path().join("routes");
        std::fs::create_dir_all(&routes_dir).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let port = free_port();
        let https_port = tls_dir.map(|_| free_port());
        let conf = dir.path().join("nginx.conf");
        let tls = tls_dir.map(|d| d.display().to_string()).unwrap_or_default();
        let https = https_port.map(|p| format!("127.0.0.1:{p}"));
        let text = hostd::app::nginx_main_conf(&hostd::app::NginxLayout {
            listen: &format!("127.0.0.1:{port}"),
            https_listen: https.as_deref(),
            prefix: &dir.path().display().to_string(),
            routes_dir: &routes_dir.display().to_string(),
            tls_dir: &tls,
            sites_domain,
            panel,
            site_log: Some(&dir.path().join("sites.log").display().to_string()),
        });
        std::fs::write(&conf, text).unwrap();
        let st = std::process::Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .status()
            .expect("nginx binary (scripts/install-deps.sh installs it)");
        assert!(st.success(), "nginx failed to start");
        TestNginx {
            dir,
            conf,
            routes_dir,
            port,
            https_port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestNginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nginx")
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "stop"])
            .status();
    }
}

/// A config for tests: fast bcrypt, test libvirt driver, unique instance.
pub fn test_config(db: &str, state: &std::path::Path, nginx: Option<&TestNginx>) -> Config {
    let instance = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let img = state.join("images/debian-12");
    std::fs::create_dir_all(&img).unwrap();
    for f in ["disk.qcow2", "vmlinuz", "initrd.img"] {
        std::fs::write(img.join(f), b"test driver: never booted").unwrap();
    }
    Config {
        database_url: db.to_string(),
        listen: "127.0.0.1:0".parse().unwrap(),
        jwt_secret: b"0123456789abcdef0123456789abcdef-test".to_vec(),
        jwt_ttl: Duration::from_secs(3600),
        bcrypt_cost: 4,
        libvirt_uri: "test:///default".into(),
        state_dir: state.to_path_buf(),
        nginx_routes_dir: nginx
            .map(|n| n.routes_dir.clone())
            .unwrap_or_else(|| state.join("routes")),
        nginx_conf: nginx
            .map(|n| n.conf.clone())
            .unwrap_or_else(|| state.join("nginx.conf")),
        nginx_bin: "/usr/sbin/nginx".into(),
        sites: hostd::domain::SiteAddress {
            public_url: "http://localhost".into(),
            sites_domain: None,
        },
        probe_url: nginx
            .map(|n| format!("http://127.0.0.1:{}", n.port))
            .unwrap_or_else(|| "http://127.0.0.1:9".into()),
        ssh_ports: PortRange {
            start: 10000,
            end: 20000,
        },
        http_ports: PortRange {
            start: 20001,
            end: 30000,
        },
        ssh_bind: "127.0.0.1".parse().unwrap(),
        domain_type: DomainType::Qemu,
        domain_type_reason: "tests".into(),
        instance,
        node_name: hostd::domain::NodeName::parse("local").unwrap(),
        node_down: Duration::from_secs(10),
        // Sampled by the tests that look at statistics (`stats::sample`).
        stats: hostd::config::StatsSettings {
            interval: None,
            site_log: nginx.map(|n| n.dir.path().join("sites.log")),
            per_hosting_metrics: false,
        },
        resync: Duration::from_secs(1),
        concurrency: 32,
        ready_timeout: Duration::from_secs(300),
        boot_retries: 3,
        boot_concurrency: 0,
        backoff_max: Duration::from_secs(5),
        images_file: state.join("images/catalog.yaml"),
        faults: Default::default(),
        metrics_listen: None,
        quota: Default::default(),
        allow_unisolated_guests: false,
        guest_egress: Default::default(),
        trusted_proxies: vec![],
        guest_limits: Default::default(),
        warm_pool: 0,
        clone_templates: true,
        secure_cookies: false,
        tls: hostd::config::TlsPolicy {
            acme: None,
            wildcard: None,
            dir: state.join("tls"),
            dns_resolver: None,
            max_domains: 5,
            panel_host: None,
        },
        quarantine: Duration::from_secs(7 * 86400),
        disk_reserve_bytes: 0,
        backups: hostd::config::BackupPolicy {
            interval: None,
            keep: 7,
            full_every: 7,
            quota_bytes: None,
            concurrency: 1,
            offsite: None,
        },
        redis_url: "redis://127.0.0.1:6379".into(),
        // Generous: tests register and act quickly from one address; the
        // abuse tests narrow these.
        limits: hostd::config::RateLimits {
            login_max_failures: 5,
            login_slow_after: 20,
            login_max_failures_per_address: 1000,
            login_window: Duration::from_secs(60),
            register_per_hour: 10_000,
            host_ops_per_min: 10_000,
            disk_replaces_per_hour: 10_000,
            bcrypt_concurrency: 2,
        },
        // The test driver reports a 3 GiB, 16-CPU host: room for hundreds of
        // stand-in guests unless a test narrows it.
        capacity: hostd::config::CapacityPolicy {
            reserved_mib: 0,
            memory_overcommit: 1000.0,
            cpu_overcommit: 1000.0,
            reserved_disk_bytes: 0,
        },
    }
}

/// A running hostd (API, optionally with the reconciler loop) on a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Store,
    pub config: Config,
    pub controller: Option<Arc<Controller>>,
    pub shutdown: Shutdown,
    pub client: reqwest::Client,
    pub state: tempfile::TempDir,
    pub nginx: Option<TestNginx>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// API only: nothing reconciles.
    pub async fn api() -> TestApp {
        Self::spawn(Mode::Api, false, None).await
    }

    /// API + reconciler objects, but the loop is not running: tests drive it.
    pub async fn manual() -> TestApp {
        Self::spawn(Mode::All, false, Some(TestNginx::start())).await
    }

    /// API + running reconciler loop.
    pub async fn running() -> TestApp {
        Self::spawn(Mode::All, true, Some(TestNginx::start())).await
    }

    pub async fn spawn(mode: Mode, run_loop: bool, nginx: Option<TestNginx>) -> TestApp {
        let db = fresh_database().await;
        let state = tempfile::tempdir().unwrap();
        let config = test_config(&db, state.path(), nginx.as_ref());
        Self::spawn_with(config, mode, run_loop, nginx, state).await
    }

    pub async fn spawn_with(
        config: Config,
        mode: Mode,
        run_loop: bool,
        nginx: Option<TestNginx>,
        state: tempfile::TempDir,
    ) -> TestApp {
        let app = Application::build(config.clone(), if run_loop { mode } else { Mode::Api })
            .await
            .expect("app builds");
        let addr = app.addr().unwrap();
        let store = app.state().store.clone();
        let shutdown = Shutdown::default();
        let controller = if run_loop {
            app.controller()
        } else if mode == Mode::All {
            let st = app.state();
            let ctx = hostd::reconciler::Context::new(
                st.store.clone(),
                st.vm.clone(),
                st.proxy.clone(),
                config.clone(),
                st.store.installation_id().await.unwrap(),
                st.metrics.clone(),
            )
            .unwrap();
            ctx.vm.ensure_storage_pool().await.unwrap();
            Some(Arc::new(Controller::new(ctx)))
        } else {
            None
        };
        let sd = shutdown.clone();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(sd).await.unwrap();
        });
        TestApp {
            addr,
            store,
            config,
            controller,
            shutdown,
            client: reqwest::Client::new(),
            state,
            nginx,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }

    /// Stops the app and hands back its state directory, for a next
    /// process on the same database and state (a restart).
    #[allow(dead_code)]
    pub async fn stop_keeping_state(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        self.state
    }

    /// Registers an admin and logs in; returns its token.
    pub async fn admin(&self, name: &str) -> String {
        let (_, _) = self.user(name).await;
        self.store
            .set_role(
                &hostd::domain::Username::parse(name).unwrap(),
                hostd::domain::Role::Admin,
            )
            .await
            .unwrap();
        self.login(name, "correct horse").await
    }

    /// Logs in; the token.
    pub async fn login(&self, name: &str, password: &str) -> String {
        let r = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .form(&[("username", name), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let t: serde_json::Value = r.json().await.unwrap();
        t["access_token"].as_str().unwrap().to_string()
    }

    /// Registers and logs in a user; returns (token, user id).
    pub async fn user(&self, name: &str) -> (String, String) {
        let r = self
            .client
            .post(self.url("/api/v1/auth/register"))
            .json(&serde_json::json!({"email": format!("{name}@example.com"), "username": name, "password": "correct horse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let u: serde_json::Value = r.json().await.unwrap();
        let r = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .form(&[("username", name), ("password", "correct horse")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let t: serde_json::Value = r.json().await.unwrap();
        (
            t["access_token"].as_str().unwrap().to_string(),
            u["id"].as_str().unwrap().to_string(),
        )
    }

    /// `/metrics` as an admin (token `admin`) sees it.
    #[allow(dead_code)]
    pub async fn scrape(&self, admin: &str) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub async fn get_json(&self, token: &str, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// A stand-in for a guest: answers HTTP on `http_port` with `body`, and an
/// SSH banner on `ssh_port`. Dropping the handle stops both.
pub struct FakeGuest {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn fake_guest(ssh_port: u16, http_port: u16, body: &str) -> FakeGuest {
    fake_guest_with_headers(ssh_port, http_port, body, &[]).await
}

/// A stand-in guest whose HTTP answers also carry `headers` (a hostile
/// upstream, for the edge-hardening tests).
pub async fn fake_guest_with_headers(
    ssh_port: u16,
    http_port: u16,
    body: &str,
    headers: &[&str],
) -> FakeGuest {
    fake_guest_on([127, 0, 0, 1].into(), ssh_port, http_port, body, headers).await
}

/// A stand-in guest answering at `ip` (a node's address other than
/// 127.0.0.1).
pub async fn fake_guest_on(
    ip: std::net::IpAddr,
    ssh_port: u16,
    http_port: u16,
    body: &str,
    headers: &[&str],
) -> FakeGuest {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let http = tokio::net::TcpListener::bind((ip, http_port))
        .await
        .expect("bind stand-in http");
    let ssh = tokio::net::TcpListener::bind((ip, ssh_port))
        .await
        .expect("bind stand-in ssh");
    let body = body.to_string();
    let t1 = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = http.accept().await else {
                return;
            };
            let (body, extra) = (body.clone(), extra.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{}", body.len(), body);
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let t2 = serve_ssh_banner(ssh);
    FakeGuest {
        tasks: vec![t1, t2],
    }
}

/// A stand-in guest's SSH side alone: a banner on `port` (readiness needs
/// it), for tests that serve the HTTP side themselves. Stops when aborted.
pub async fn stand_in_ssh(port: u16) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind stand-in ssh");
    serve_ssh_banner(l)
}

fn serve_ssh_banner(ssh: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = ssh.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2 stand-in\r\n").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    })
}

/// Polls `f` until it returns Some or the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The route entries of a routes directory's map file (`routes.map`):
/// hosting id → its entry, header line included. Parsed here independently
/// of the driver, as an operator reading the file would.
pub fn route_entries(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("routes.map")).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.split_inclusive('\n') {
        if let Some(id) = line.strip_prefix("# hosting ") {
            current = Some(id.trim().to_string());
        }
        if let Some(id) = &current {
            out.entry(id.clone())
                .or_insert_with(String::new)
                .push_str(line);
        }
    }
    out
}

/// One hosting's route entry, if the map file has it.
pub fn route_entry(dir: &std::path::Path, id: impl std::fmt::Display) -> Option<String> {
    route_entries(dir).remove(&id.to_string())
}

/// Edits the map file behind hostd's back: sets (or with `None` removes)
/// one hosting's entry, keeping the others.
pub fn tamper_route(dir: &std::path::Path, id: impl std::fmt::Display, entry: Option<&str>) {
    let mut all = route_entries(dir);
    match entry {
        Some(e) => all.insert(id.to_string(), e.to_string()),
        None => all.remove(&id.to_string()),
    };
    let text: String = all.into_values().collect();
    std::fs::write(dir.join("routes.map"), text).unwrap();
}

/// Registers a user and requests a default hosting; (token, user id, hosting id).
pub async fn create_hosting(
    app: &TestApp,
    name: &str,
) -> (String, String, hostd::domain::HostingId) {
    let (t, uid) = app.user(name).await;
    let r = app
        .client
        .post(app.url("/api/v1/host"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let h: serde_json::Value = r.json().await.unwrap();
    (
        t,
        uid,
        hostd::domain::HostingId(uuid::Uuid::parse_str(h["id"].as_str().unwrap()).unwrap()),
    )
}

/// Drives reconciles of a hosting until one reports converged (10 at most); its phase.
pub async fn settle_stopped(
    ctl: &hostd::reconciler::Controller,
    id: hostd::domain::HostingId,
) -> hostd::domain::Phase {
    for _ in 0..40 {
        match ctl.reconcile_once(id).await.unwrap() {
            hostd::reconciler::Action::AwaitChange => break,
            // A route batch is being applied: give it a moment.
            hostd::reconciler::Action::Requeue(d) if d == hostd::reconciler::steps::ROUTE_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => {}
        }
    }
    ctl.ctx
        .store
        .get_record(id)
        .await
        .unwrap()
        .unwrap()
        .status
        .phase
}

/// Drives reconciles of one hosting until it reports converged (or 20 tries).
pub async fn settle(
    ctl: &hostd::reconciler::Controller,
    id: hostd::domain::HostingId,
) -> hostd::reconciler::Action {
    use hostd::reconciler::steps::{AGENT_WAIT, PROBE_INTERVAL, ROUTE_WAIT};
    let mut a = ctl.reconcile_once(id).await.unwrap();
    for _ in 0..40 {
        // Waiting for the guest, a route batch or a guest-agent call.
        let waiting = [PROBE_INTERVAL, ROUTE_WAIT, AGENT_WAIT]
            .iter()
            .any(|d| a == hostd::reconciler::Action::Requeue(*d));
        if !waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        a = ctl.reconcile_once(id).await.unwrap();
    }
    a
}

/// Removes a test's storage pool (`hostd-<instance>`) from the system
/// libvirt when dropped, also when the test fails.
pub struct SystemPoolGuard(pub String);

impl Drop for SystemPoolGuard {
    fn drop(&mut self) {
        let pool = format!("hostd-{}", self.0);
        for args in [["pool-destroy", &pool], ["pool-undefine", &pool]] {
            let _ = std::process::Command::new("virsh")
                .args(["-c", "qemu:///system"])
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// A libvirt test-driver hypervisor with `cpus` CPUs and `mib` memory,
/// described in a file in `dir`: its `test:///<file>` URI (each connection
/// to it is a hypervisor of its own).
pub fn node_xml(dir: &std::path::Path, name: &str, cpus: u32, mib: u64) -> String {
    let path = dir.join(format!("{name}.xml"));
    let xml = format!(
        "<node><cpu><mhz>2000</mhz><model>i686</model><nodes>1</nodes><sockets>1</sockets>\
         <cores>{cpus}</cores><threads>1</threads></cpu><memory>{}</memory></node>",
        mib * 1024
    );
    std::fs::write(&path, xml).unwrap();
    format!("test://{}", path.display())
}
