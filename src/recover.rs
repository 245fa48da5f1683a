//! `hostd recover`: brings every hosting back after the host lost its
//! disks (its state directory, pools, libvirt definitions), from Postgres —
//! which the operator keeps with their own backup tooling — and the
//! backups, off-host ones included. The reconciler does the work (a disk
//! that existed and is gone is restored from the newest backup that
//! verifies, then defined, started and routed as always); this command
//! wakes every hosting and shows the progress until each is served again,
//! is found lost, or the time is up. Running it again is harmless: it only
//! wakes and watches.
//!
//! The status in Postgres predates the loss (it says Ready), so "served"
//! is judged from the host itself: the domain runs, the disk volume exists,
//! and the site answers through the host nginx.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::domain::{has_true, ConditionType, Phase};
use crate::drivers::libvirt::LibvirtDriver;
use crate::drivers::VmDriver;
use crate::reconciler::names::{disk_volume, domain_name};
use crate::store::{HostingRecord, Store};

/// Whether `r`'s guest runs on its disk and its site answers here.
async fn on_the_host(
    vm: &LibvirtDriver,
    http: &reqwest::Client,
    config: &Config,
    r: &HostingRecord,
) -> bool {
    let running = matches!(vm.get_domain(&domain_name(r.id)).await, Ok(Some(d)) if d.running);
    let disk = vm.volume_exists(&disk_volume(r.id)).await.unwrap_or(false);
    let url = format!("{}/{}/", config.probe_url, r.user_id);
    running && disk && crate::drivers::probe::http_ok(http, &url).await.is_ok()
}

/// How one hosting stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Working(String),
    Served,
    Stopped,
    Lost(String),
}

/// Runs the recovery watch; the process's exit code (0: every hosting is
/// served or stopped as asked; 1: some are lost or still working at the
/// end; 2: it could not start).
pub async fn run(config: Config, timeout: Duration) -> i32 {
    let store = match Store::connect(&config.database_url, 2).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hostd recover: database: {e}");
            return 2;
        }
    };
    match store.last_heartbeat(&config.instance).await {
        Ok(Some((holder, age, _))) if age < config.resync.as_secs_f64() * 3.0 + 10.0 => {
            println!("reconciler {holder} is running; it restores, this command watches")
        }
        _ => {
            eprintln!(
                "hostd recover: no running reconciler for instance {}: start hostd \
                 (./scripts/start.sh, or `hostd all` / `hostd reconciler`) first",
                config.instance
            );
            return 2;
        }
    }
    match &config.backups.offsite {
        Some(o) => println!("backups: on this host, and off-host at {}", o.url()),
        None => println!("backups: on this host only (HOSTD_BACKUP_S3_URL is not set)"),
    }
    let installation = match store.installation_id().await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("hostd recover: database: {e}");
            return 2;
        }
    };
    let vm = LibvirtDriver::new(
        &config.libvirt_uri,
        &config.instance,
        installation,
        &config.state_dir,
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let t0 = Instant::now();
    let mut last: HashMap<crate::domain::HostingId, Outcome> = HashMap::new();
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut since: HashMap<crate::domain::HostingId, chrono::DateTime<chrono::Utc>> =
        HashMap::new();
    let mut woken = false;
    loop {
        let records = match store.list_records().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("hostd recover: database: {e}");
                return 2;
            }
        };
        let records: Vec<_> = records
            .into_iter()
            .filter(|r| !r.warm && r.deletion_requested_at.is_none())
            .collect();
        if !woken {
            println!("{} hostings to check", records.len());
            for r in &records {
                if let Err(e) = store.wake(r.id).await {
                    eprintln!("hostd recover: waking {}: {e}", r.id);
                }
            }
            woken = true;
        }
        let mut working = 0;
        for r in &records {
            let s = &r.status;
            let converged = s.observed_generation == r.generation;
            let outcome = if has_true(&s.conditions, ConditionType::DiskLost) {
                Outcome::Lost(s.message.clone().unwrap_or_else(|| "disk lost".into()))
            } else if converged
                && s.phase == Phase::Ready
                && on_the_host(&vm, &http, &config, r).await
            {
                Outcome::Served
            } else if converged
                && s.phase == Phase::Stopped
                && !r.spec.running
                && vm.volume_exists(&disk_volume(r.id)).await.unwrap_or(false)
            {
                Outcome::Stopped
            } else {
                working += 1;
                Outcome::Working(s.phase.to_string())
            };
            // Every event since the recovery began, in order: the restore's
            // steps (which backup, from where) as they happen.
            let events = store.recent_events(r.id, 50).await.unwrap_or_default();
            let seen = since.entry(r.id).or_insert(started);
            let mut fresh: Vec<_> = events.iter().filter(|e| e.at > *seen).collect();
            fresh.reverse();
            for e in fresh {
                println!(
                    "[{:>7.1} s] {}: {} {}",
                    t0.elapsed().as_secs_f64(),
                    r.username.as_str(),
                    e.reason,
                    e.message
                );
                *seen = e.at;
            }
            if last.get(&r.id) != Some(&outcome) {
                let what = match &outcome {
                    Outcome::Working(phase) => format!("working ({phase})"),
                    Outcome::Served => "served again".into(),
                    Outcome::Stopped => "stopped (as its owner asked)".into(),
                    Outcome::Lost(m) => format!("LOST: {m}"),
                };
                println!(
                    "[{:>7.1} s] {} ({}): {what}",
                    t0.elapsed().as_secs_f64(),
                    r.username.as_str(),
                    r.id
                );
                last.insert(r.id, outcome);
            }
        }
        let lost = last
            .values()
            .filter(|o| matches!(o, Outcome::Lost(_)))
            .count();
        if working == 0 {
            let ok = records.len() - lost;
            println!(
                "recovered {ok} of {} hostings in {:.1} s{}",
                records.len(),
                t0.elapsed().as_secs_f64(),
                match lost {
                    0 => String::new(),
                    n => format!("; {n} lost (no backup could be restored: the owner decides, see the dashboard)"),
                }
            );
            return i32::from(lost > 0);
        }
        if t0.elapsed() > timeout {
            println!(
                "still working on {working} hostings after {:.0} s; run `hostd recover` again to keep watching",
                timeout.as_secs_f64()
            );
            return 1;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
