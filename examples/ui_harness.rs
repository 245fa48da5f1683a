//! A live hostd for the browser test and the OpenAPI fuzzing
//! (`tests/browser/test_dashboard.py`, `scripts/schemathesis.sh`): API and
//! running reconciler on a fresh Postgres database, a real nginx, libvirt's
//! `test:///default`, and stand-in guests answering on every port of two
//! small forwarded-port ranges (the test driver boots nothing), so hostings
//! really go Provisioning → Ready → Stopped → … through the reconciler.
//!
//! Prints one JSON line (`url`, `sites_url`, `admin_user`,
//! `admin_password`, `pool_dir`) when ready, then serves until stdin closes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use hostd::app::Mode;
use hostd::domain::PortRange;

/// A run of `n` free ports on 127.0.0.1 starting somewhere in `lo..hi`.
fn free_run(lo: u16, hi: u16, n: u16) -> u16 {
    use rand::Rng;
    'next: for _ in 0..200 {
        let base = rand::thread_rng().gen_range(lo..hi - n);
        for p in base..base + n {
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                continue 'next;
            }
        }
        return base;
    }
    panic!("no run of {n} free ports in {lo}..{hi}");
}

#[tokio::main]
async fn main() {
    let n: u16 = std::env::var("HARNESS_PORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let db = common::fresh_database().await;
    let nginx = common::TestNginx::start();
    let state = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&db, state.path(), Some(&nginx));
    let ssh = free_run(10000, 20000, n);
    let http = free_run(20001, 30000, n);
    config.ssh_ports = PortRange {
        start: ssh,
        end: ssh + n - 1,
    };
    config.http_ports = PortRange {
        start: http,
        end: http + n - 1,
    };
    config.resync = Duration::from_secs(5);
    config.sites.public_url = nginx.url("").trim_end_matches('/').to_string();
    let mut guests = Vec::new();
    for i in 0..n {
        guests.push(
            common::fake_guest(
                ssh + i,
                http + i,
                "<!doctype html><title>Welcome</title><h1>Welcome to your hosting</h1>",
            )
            .await,
        );
    }
    let sites_url = config.sites.public_url.clone();
    // Where the test driver's pool keeps disks (its volumes have no files:
    // the browser test writes a real qcow2 there to back up and restore).
    let pool_dir = state.path().join("pools").join(&config.instance);
    let app = common::TestApp::spawn_with(config, Mode::All, true, Some(nginx), state).await;
    app.admin("admin").await;
    println!(
        "{}",
        serde_json::json!({
            "url": format!("http://{}", app.addr),
            "sites_url": sites_url,
            "admin_user": "admin",
            "admin_password": "correct horse",
            "pool_dir": pool_dir,
        })
    );
    // Serve until the driver closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    app.stop().await;
    drop(guests);
}
