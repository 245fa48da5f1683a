//! The dependency checks, one list shared by `GET /api/v1/health/detailed`
//! and `hostd doctor`, so that the two can never disagree about what is
//! healthy: Postgres, libvirt, nginx, the guest isolation table, Redis and
//! `qemu-img`. Each check is timed and ends as ok, degraded (working with
//! less: Redis) or error.

use std::future::Future;
use std::time::Instant;

use serde_json::json;

use crate::config::Config;
use crate::drivers::{ProxyDriver, VmDriver};
use crate::store::Store;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Working, with less (Redis down: rate limits per process).
    Degraded,
    Error,
}

impl Outcome {
    /// The status string of the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Degraded => "degraded",
            Outcome::Error => "error",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its name: the key in `health/detailed`'s `checks`, the label in `doctor`.
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub latency_ms: f64,
}

impl Check {
    /// Times `f` and records its result (`Err` is `on_error`).
    async fn timed<E: std::fmt::Display>(
        name: &'static str,
        on_error: Outcome,
        f: impl Future<Output = Result<String, E>>,
    ) -> Check {
        let t = Instant::now();
        let r = f.await;
        let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
        let (outcome, detail) = match r {
            Ok(d) => (Outcome::Ok, d),
            Err(e) => (on_error, e.to_string()),
        };
        Check {
            name,
            outcome,
            detail,
            latency_ms,
        }
    }

    /// The check as `health/detailed` shows it.
    pub fn json(&self) -> serde_json::Value {
        json!({"status": self.outcome.as_str(), "latency_ms": self.latency_ms, "detail": self.detail})
    }

    /// The check as `hostd doctor` prints it.
    pub fn line(&self) -> String {
        let tag = match self.outcome {
            Outcome::Ok => " ok ",
            Outcome::Degraded => "WARN",
            Outcome::Error => "FAIL",
        };
        format!("[{tag}] {}: {}", self.name.replace('_', " "), self.detail)
    }
}

/// Postgres: reachable and migrated (its installation id).
pub async fn database(store: &Store) -> Check {
    Check::timed("database", Outcome::Error, async {
        store
            .installation_id()
            .await
            .map(|i| format!("postgres reachable; installation {i}"))
            .map_err(|e| format!("{e} (reachable and migrated? run `hostd migrate`)"))
    })
    .await
}

/// libvirt: the connection answers (versions).
pub async fn libvirt(vm: &dyn VmDriver) -> Check {
    Check::timed("libvirt", Outcome::Error, vm.ping()).await
}

/// nginx: the configuration validates.
pub async fn nginx(proxy: &dyn ProxyDriver) -> Check {
    Check::timed("nginx", Outcome::Error, proxy.health()).await
}

/// The nftables table that keeps guests off host addresses, for real
/// guests; not needed on a simulated hypervisor. hostd installs it when its
/// reconciler starts, so a check made before that reports it missing.
pub async fn guest_isolation(config: &Config) -> Check {
    Check::timed("guest_isolation", Outcome::Error, async {
        if !config.real_guests() {
            return Ok("not needed: simulated hypervisor".to_string());
        }
        let iso = crate::drivers::isolation::Isolation::new(config.guest_egress.clone());
        iso.check().await.map_err(|e| {
            format!("NOT in force: {e} (hostd installs it when its reconciler starts)")
        })
    })
    .await
}

/// Redis: down is degraded, not an error (limits fall back to per-process
/// memory, revocations to Postgres).
pub async fn redis<E: std::fmt::Display>(ping: impl Future<Output = Result<String, E>>) -> Check {
    let mut c = Check::timed("redis", Outcome::Degraded, ping).await;
    if c.outcome != Outcome::Ok {
        c.detail = format!(
            "{}; rate limits are per process, revocations checked in postgres",
            c.detail
        );
    }
    c
}

/// `qemu-img`, which compresses backups.
pub async fn qemu_img() -> Check {
    Check::timed("qemu-img", Outcome::Error, async {
        let out = tokio::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .await
            .map_err(|e| format!("cannot run qemu-img: {e} (needed to compress backups)"))?;
        let v = String::from_utf8_lossy(&out.stdout);
        match out.status.success() {
            true => Ok(v.lines().next().unwrap_or("qemu-img").to_string()),
            false => Err("qemu-img --version failed (needed to compress backups)".to_string()),
        }
    })
    .await
}
