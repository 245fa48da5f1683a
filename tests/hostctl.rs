//! hostctl as a script uses it: `apply -f` creates and then patches, `get -w`
//! follows the hosting to Ready, `get -o yaml|json|wide`, `describe`,
//! `delete --wait`, `HOSTCTL_TOKEN`, and the exit codes (real API and
//! reconciler on the test driver, a stand-in guest on the forwarded ports).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{eventually, fake_guest, TestApp};

fn hostctl(app: &TestApp, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hostctl"));
    c.arg("--api")
        .arg(format!("http://{}", app.addr))
        .args(args)
        .env_remove("HOSTCTL_TOKEN")
        .env("HOSTCTL_TOKEN_FILE", "/nonexistent/hostctl-token");
    if let Some(t) = token {
        c.env("HOSTCTL_TOKEN", t);
    }
    c.output().expect("run hostctl")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const DOC: &str = "apiVersion: hostd.dev/v1\nkind: Hosting\nmetadata:\n  name: site\nspec:\n  memory_mib: MEM\n  running: true\n";

// Multi-threaded: hostctl runs as a blocking child process while the API
// serves it from another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_watch_describe_delete() {
    let app = TestApp::running().await;
    let (t, _) = app.user("ctl_user").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosting.yaml");
    let f = file.to_str().unwrap();

    // Not logged in: exit 2, nothing created.
    let o = hostctl(&app, None, &["get"]);
    assert_eq!(o.status.code(), Some(2));

    std::fs::write(&file, DOC.replace("MEM", "512")).unwrap();
    let o = hostctl(&app, Some(&t), &["apply", "-f", f]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(out(&o).contains("hosting created"), "{}", out(&o));

    let store = app.store.clone();
    let user = store
        .find_user_for_login("ctl_user")
        .await
        .unwrap()
        .unwrap()
        .0
        .id;
    let rec = eventually(Duration::from_secs(20), || async {
        store
            .get_record_by_user(user)
            .await
            .unwrap()
            .filter(|r| r.status.http_port.is_some())
    })
    .await
    .unwrap();
    let _guest = fake_guest(
        rec.status.ssh_port.unwrap(),
        rec.status.http_port.unwrap(),
        "ok",
    )
    .await;
    // get -w follows it to Ready.
    let o = hostctl(&app, Some(&t), &["get", "-w", "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let w = out(&o);
    assert!(w.contains("[######] Ready"), "{w}");
    assert!(w.lines().count() >= 2, "progress lines: {w}");

    // A changed file patches only what differs; an unchanged one changes nothing.
    std::fs::write(&file, DOC.replace("MEM", "1024")).unwrap();
    let o = hostctl(&app, Some(&t), &["apply", "-f", f]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(
        out(&o).contains("hosting patched: memory_mib"),
        "{}",
        out(&o)
    );
    let r = store.get_record(rec.id).await.unwrap().unwrap();
    assert_eq!((r.spec.memory_mib.get(), r.generation), (1024, 2));
    let o = hostctl(&app, Some(&t), &["apply", "-f", f]);
    assert!(out(&o).contains("hosting unchanged"), "{}", out(&o));
    assert_eq!(
        store.get_record(rec.id).await.unwrap().unwrap().generation,
        2
    );

    // Output formats.
    let o = hostctl(&app, Some(&t), &["get", "-o", "yaml"]);
    let y: serde_json::Value = serde_norway::from_str(&out(&o)).unwrap();
    assert_eq!(y["spec"]["memory_mib"], 1024);
    let o = hostctl(&app, Some(&t), &["get", "-o", "json"]);
    let j: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(j["id"], rec.id.to_string());
    let o = hostctl(&app, Some(&t), &["get", "-o", "wide"]);
    assert!(
        out(&o).starts_with("ID") && out(&o).contains("1024Mi"),
        "{}",
        out(&o)
    );
    let o = hostctl(&app, Some(&t), &["describe"]);
    let d = out(&o);
    for want in [
        "Conditions:",
        "WebReady",
        "Events (newest first):",
        "PortsAllocated",
    ] {
        assert!(d.contains(want), "{want}: {d}");
    }

    // Refused documents: exit 2, nothing changes.
    std::fs::write(&file, "apiVersion: v1\nkind: Pod\nspec: {}\n").unwrap();
    assert_eq!(
        hostctl(&app, Some(&t), &["apply", "-f", f]).status.code(),
        Some(2)
    );
    std::fs::write(&file, DOC.replace("MEM", "\"lots\"")).unwrap();
    let o = hostctl(&app, Some(&t), &["apply", "-f", f]);
    assert_eq!(o.status.code(), Some(1), "the API's 422: {o:?}");
    assert!(out(&o).contains("validation_failed"), "{}", out(&o));
    assert_eq!(
        store.get_record(rec.id).await.unwrap().unwrap().generation,
        2
    );

    let o = hostctl(&app, Some(&t), &["delete", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(out(&o).contains("deleted"));
    assert!(store.get_record(rec.id).await.unwrap().is_none());
    app.stop().await;
}

/// hostctl with a private HOME and nothing from the environment: the config
/// file is all it knows (`stdin` answers a password prompt).
fn hostctl_home(home: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_hostctl"));
    c.args(args)
        .env("HOME", home)
        .env_remove("HOSTCTL_TOKEN")
        .env_remove("HOSTCTL_TOKEN_FILE")
        .env_remove("HOSTCTL_CONFIG")
        .env_remove("HOSTD_API")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("run hostctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_server_and_token_in_a_private_config_file() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::api().await;
    app.user("ctl_cfg").await;
    let home = tempfile::tempdir().unwrap();
    let api = format!("http://{}", app.addr);

    // A wrong password: exit 1, nothing written.
    let o = hostctl_home(
        home.path(),
        &["--api", &api, "login", "ctl_cfg"],
        "wrong password\n",
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let cfg = home.path().join(".config/hostd/config.yaml");
    assert!(!cfg.exists());

    let o = hostctl_home(
        home.path(),
        &["--api", &api, "login", "ctl_cfg"],
        "correct horse\n",
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(cfg.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(&format!("server: {api}")), "{text}");
    assert!(text.contains("token: "), "{text}");

    // No --api, no environment: the config file's server and token.
    let o = hostctl_home(home.path(), &["get"], "");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(out(&o).contains("you have no hosting"), "{}", out(&o));
    let o = hostctl_home(home.path(), &["create"], "");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = hostctl_home(home.path(), &["console"], "");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no console output copied yet"));

    // Logout revokes the token and removes it from the file (the server stays).
    let o = hostctl_home(home.path(), &["logout"], "");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains("token"), "{text}");
    let o = hostctl_home(home.path(), &["get"], "");
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    // A config file that is not YAML of that shape: exit 2 with its name.
    std::fs::write(&cfg, "server: [unclosed").unwrap();
    let o = hostctl_home(home.path(), &["get"], "");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.yaml"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_add_ls_rm() {
    let app = TestApp::api().await;
    let (t, _, _) = common::create_hosting(&app, "dom_user").await;
    let o = hostctl(&app, Some(&t), &["domain", "add", "Shop.Example.ORG"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let text = out(&o);
    assert!(
        text.contains("_hostd-challenge.shop.example.org  TXT  \"hostd-"),
        "{text}"
    );
    let o = hostctl(&app, Some(&t), &["domain", "ls"]);
    assert!(
        out(&o).contains("shop.example.org") && out(&o).contains("PendingVerification"),
        "{}",
        out(&o)
    );
    // Refused input: the API's message, exit 1.
    let o = hostctl(&app, Some(&t), &["domain", "add", "10.0.0.1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("IP address"), "{o:?}");
    let o = hostctl(&app, Some(&t), &["domain", "rm", "shop.example.org"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = hostctl(&app, Some(&t), &["domain", "ls"]);
    assert!(!out(&o).contains("shop.example.org"), "{}", out(&o));
    let o = hostctl(&app, Some(&t), &["domain", "rm", "shop.example.org"]);
    assert_eq!(o.status.code(), Some(1));
}

/// `hostctl usage`: the totals of the caller's records in hours, the
/// charges at the prices set; `-o json` is the API's answer; a malformed
/// time is the API's 400 (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_prints_hours_and_charges() {
    let app = TestApp::api().await;
    let (t, uid) = app.user("meter_user").await;
    let admin = app.admin("meter_admin").await;
    // 2 vCPUs for 90 minutes and 10 GiB of disk for 3 hours, written as
    // the reconciler's status writes would.
    sqlx::query(
        "insert into usage (hosting_id, owner_id, kind, quantity, period) values \
         (gen_random_uuid(), $1, 'vcpu', 2, tstzrange('2026-11-02T10:00:00Z', '2026-11-02T11:30:00Z')), \
         (gen_random_uuid(), $1, 'disk_gib', 10, tstzrange('2026-11-02T10:00:00Z', '2026-11-02T13:00:00Z'))",
    )
    .bind(uid.parse::<uuid::Uuid>().unwrap())
    .execute(&app.store.db())
    .await
    .unwrap();
    let r = app
        .client
        .post(app.url("/api/v1/admin/rates"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"kind": "vcpu", "price": 0.5, "currency": "EUR", "from": "2026-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let range = [
        "--from",
        "2026-11-01T00:00:00Z",
        "--to",
        "2026-12-01T00:00:00Z",
    ];
    let o = hostctl(&app, Some(&t), &[&["usage"][..], &range].concat());
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let text = out(&o);
    for want in [
        "vCPU:    3.000 vCPU-hours",
        "Disk:    30.000 GiB-hours",
        "Charges: 1.50 EUR",
        "Records: 2",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    let o = hostctl(
        &app,
        Some(&t),
        &[&["usage", "-o", "json"][..], &range].concat(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["totals"]["vcpu_seconds"], 10800.0);
    let o = hostctl(&app, Some(&t), &["usage", "--from", "last week"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(out(&o).contains("RFC 3339"), "{}", out(&o));
    app.stop().await;
}

/// `hostctl top`: the newest sample in rates; before any, says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_prints_the_newest_sample() {
    let app = TestApp::api().await;
    let (t, _, id) = common::create_hosting(&app, "top_user").await;
    let o = hostctl(&app, Some(&t), &["top"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(out(&o).contains("no statistics yet"), "{}", out(&o));
    let s = hostd::store::samples::Sample {
        hosting: id,
        at: chrono::Utc::now() - chrono::Duration::seconds(20),
        seconds: 15.0,
        cpu_ns: Some(7_500_000_000),
        memory_bytes: Some(300 << 20),
        disk_read: Some(0),
        disk_write: Some(15 << 20),
        disk_alloc_bytes: Some(2 << 30),
        net_rx: None,
        net_tx: None,
        http: Some(hostd::store::samples::HttpCounts {
            requests: 30,
            bytes: 30 << 10,
            s2xx: 29,
            s3xx: 0,
            s4xx: 0,
            s5xx: 1,
        }),
    };
    app.store.insert_samples(&[s]).await.unwrap();
    let o = hostctl(&app, Some(&t), &["top"]);
    let text = out(&o);
    for want in [
        "CPU       50.0 %",
        "MEMORY    300.0 MiB",
        "write 1.0 MiB/s",
        "REQUESTS  2.0/s, 2.0 KiB/s sent; 2xx 29 3xx 0 4xx 0 5xx 1",
        "NETWORK   in -/s",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    app.stop().await;
}
