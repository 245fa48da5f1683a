//! Per-hosting statistics: every `HOSTD_STATS_SECS` the leader samples
//! each node's running guests through libvirt (CPU time, memory, disk
//! bytes and allocation, network bytes where libvirt counts them) and the
//! host nginx's site log (requests, bytes sent, status classes), turns the
//! counters into the round's amounts, and writes one row per hosting in one
//! statement (`store/samples.rs`). The bytes nginx sent for a site are its
//! egress usage (`usage`, hourly rows). Once an hour, old samples are
//! downsampled. With `HOSTD_METRICS_PER_HOSTING`, the same numbers feed
//! per-hosting series on `/metrics`.
//!
//! A node that does not answer is skipped for the round (its guests get a
//! gap); a guest restarted since the last round has counters that went
//! back: the round counts what it used since it started.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Context, ReconcileError};
use crate::domain::HostingId;
use crate::drivers::nginx::site_log::SiteLog;
use crate::drivers::{DomainStats, DriverError};
use crate::shutdown::Shutdown;
use crate::store::samples::{HttpCounts, Sample};
use crate::telemetry::metrics::HostingLabel;

/// How often samples are downsampled.
const DOWNSAMPLE_EVERY: Duration = Duration::from_secs(3600);

/// What the sampler remembers between rounds.
#[derive(Default)]
pub struct Sampler {
    /// Each guest's counters at the last round, and when.
    prev: Mutex<HashMap<HostingId, (DateTime<Utc>, DomainStats)>>,
    /// The site log, read on from where the last round stopped.
    site_log: Mutex<Option<SiteLog>>,
    last_downsample: Mutex<Option<Instant>>,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Hostings given a sample.
    pub hostings: usize,
    /// Nodes skipped (not answering).
    pub nodes_skipped: usize,
}

/// Samples every interval until `stop` (nothing when statistics are off).
pub async fn run(ctx: std::sync::Arc<Context>, stop: Shutdown) {
    let Some(every) = ctx.config.stats.interval else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sample(&ctx).await {
            tracing::warn!(error = %e, "statistics round failed; next round in {every:?}");
        }
    }
}

/// One round: samples, writes, downsamples when due.
pub async fn sample(ctx: &Context) -> Result<Round, ReconcileError> {
    let now = Utc::now();
    let mut round = Round::default();
    let records = ctx.records.lock().await.current(&ctx.store).await?;
    let by_port: HashMap<u16, HostingId> = records
        .iter()
        .filter_map(|r| r.status.http_port.map(|p| (p, r.id)))
        .collect();
    let tenant: HashMap<HostingId, bool> = records.iter().map(|r| (r.id, !r.warm)).collect();

    // libvirt, node by node.
    let mut seen: HashMap<HostingId, DomainStats> = HashMap::new();
    for node in ctx.nodes.all() {
        let listed = match node.driver.list_domains().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(node = %node.name(), error = %e, "statistics: node skipped");
                round.nodes_skipped += 1;
                continue;
            }
        };
        let ids: HashMap<String, HostingId> = listed
            .into_iter()
            .filter(|d| d.running && tenant.contains_key(&d.marker.hosting_id))
            .map(|d| (d.name, d.marker.hosting_id))
            .collect();
        let names: Vec<String> = ids.keys().cloned().collect();
        match node.driver.domain_stats(names).await {
            Ok(stats) => {
                for (name, s) in stats {
                    if let Some(id) = ids.get(&name) {
                        seen.insert(*id, s);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(node = %node.name(), error = %e, "statistics: node skipped");
                round.nodes_skipped += 1;
            }
        }
    }

    // The host nginx: counts per upstream, by its port.
    let http = read_site_log(ctx).await?;
    let mut by_hosting: HashMap<HostingId, HttpCounts> = HashMap::new();
    for (upstream, c) in http.unwrap_or_default() {
        let port = upstream.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        if let Some(id) = port.and_then(|p: u16| by_port.get(&p)) {
            let e = by_hosting.entry(*id).or_default();
            e.requests += c.requests;
            e.bytes += c.bytes;
            e.s2xx += c.s2xx;
            e.s3xx += c.s3xx;
            e.s4xx += c.s4xx;
            e.s5xx += c.s5xx;
        }
    }
    let logging = ctx.config.stats.site_log.is_some();

    let interval = ctx
        .config
        .stats
        .interval
        .unwrap_or(Duration::from_secs(15))
        .as_secs_f32();
    let samples = {
        let mut samples = vec![];
        let mut prev = ctx.sampler.prev.lock().unwrap();
        let mut ids: Vec<HostingId> = seen.keys().chain(by_hosting.keys()).copied().collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            if !tenant.get(&id).copied().unwrap_or(false) {
                continue;
            }
            let cur = seen.get(&id);
            let before = prev.get(&id).copied();
            let (seconds, delta) = match (cur, before) {
                (Some(c), Some((at, p))) => {
                    let secs = (now - at).num_milliseconds() as f32 / 1000.0;
                    (secs.max(0.001), Some(Delta::between(&p, c)))
                }
                _ => (interval, None),
            };
            let httpc = by_hosting
                .get(&id)
                .copied()
                .or(logging.then(HttpCounts::default));
            samples.push(Sample {
                hosting: id,
                at: now,
                seconds,
                cpu_ns: delta.map(|d| d.cpu_ns),
                memory_bytes: cur.map(|c| c.memory_bytes as i64),
                disk_read: delta.and_then(|d| d.disk_read),
                disk_write: delta.and_then(|d| d.disk_write),
                disk_alloc_bytes: cur.and_then(|c| c.disk_allocation_bytes.map(|b| b as i64)),
                net_rx: delta.and_then(|d| d.net_rx),
                net_tx: delta.and_then(|d| d.net_tx),
                http: httpc,
            });
            if ctx.config.stats.per_hosting_metrics {
                per_hosting_metrics(ctx, id, cur, delta, httpc);
            }
        }
        // Guests not running now are forgotten (a restart starts afresh).
        let gone: Vec<HostingId> = prev
            .keys()
            .filter(|id| !seen.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            prev.remove(&id);
            if !tenant.contains_key(&id) {
                ctx.metrics.per_hosting.remove(&id.to_string());
            }
        }
        for (id, s) in &seen {
            prev.insert(*id, (now, *s));
        }
        samples
    };

    round.hostings = samples.len();
    ctx.store.insert_samples(&samples).await?;
    let egress: Vec<(uuid::Uuid, i64)> = samples
        .iter()
        .filter_map(|s| s.http.map(|h| (s.hosting.0, h.bytes)))
        .collect();
    ctx.store.add_egress(&egress, now).await?;
    ctx.metrics.stats_rounds.inc();
    ctx.metrics.stats_hostings.set(round.hostings as i64);

    let due = {
        let mut last = ctx.sampler.last_downsample.lock().unwrap();
        let due = last.is_none_or(|t| t.elapsed() >= DOWNSAMPLE_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if due {
        let moved = ctx.store.downsample(now).await?;
        tracing::debug!(moved, "statistics downsampled");
    }
    Ok(round)
}

/// What a guest used between two rounds.
#[derive(Debug, Clone, Copy)]
struct Delta {
    cpu_ns: i64,
    disk_read: Option<i64>,
    disk_write: Option<i64>,
    net_rx: Option<i64>,
    net_tx: Option<i64>,
}

impl Delta {
    /// `cur - prev`, or `cur` where a counter went back (a restart).
    fn between(prev: &DomainStats, cur: &DomainStats) -> Delta {
        let d = |p: u64, c: u64| if c >= p { c - p } else { c } as i64;
        let o = |p: Option<u64>, c: Option<u64>| match (p, c) {
            (Some(p), Some(c)) => Some(d(p, c)),
            (None, Some(c)) => Some(c as i64),
            _ => None,
        };
        Delta {
            cpu_ns: d(prev.cpu_time_ns, cur.cpu_time_ns),
            disk_read: o(prev.disk_read_bytes, cur.disk_read_bytes),
            disk_write: o(prev.disk_write_bytes, cur.disk_write_bytes),
            net_rx: o(prev.net_rx_bytes, cur.net_rx_bytes),
            net_tx: o(prev.net_tx_bytes, cur.net_tx_bytes),
        }
    }
}

/// Reads the site log off the workers; `None` when none is configured.
async fn read_site_log(
    ctx: &Context,
) -> Result<Option<HashMap<String, HttpCounts>>, ReconcileError> {
    let Some(path) = ctx.config.stats.site_log.clone() else {
        return Ok(None);
    };
    let log = ctx
        .sampler
        .site_log
        .lock()
        .unwrap()
        .take()
        .unwrap_or_else(|| SiteLog::new(path));
    let (log, counts) = tokio::task::spawn_blocking(move || {
        let mut log = log;
        let counts = log.read_new();
        (log, counts)
    })
    .await
    .map_err(|e| DriverError::Io(std::io::Error::other(e)))?;
    *ctx.sampler.site_log.lock().unwrap() = Some(log);
    Ok(Some(counts.map_err(DriverError::from)?))
}

fn per_hosting_metrics(
    ctx: &Context,
    id: HostingId,
    cur: Option<&DomainStats>,
    delta: Option<Delta>,
    http: Option<HttpCounts>,
) {
    let m = &ctx.metrics.per_hosting;
    let l = HostingLabel {
        hosting: id.to_string(),
    };
    if let Some(c) = cur {
        m.memory_bytes.get_or_create(&l).set(c.memory_bytes as i64);
    }
    if let Some(d) = delta {
        m.cpu_seconds
            .get_or_create(&l)
            .inc_by(d.cpu_ns as f64 / 1e9);
        m.disk_read_bytes
            .get_or_create(&l)
            .inc_by(d.disk_read.unwrap_or(0) as u64);
        m.disk_write_bytes
            .get_or_create(&l)
            .inc_by(d.disk_write.unwrap_or(0) as u64);
    }
    if let Some(h) = http {
        m.http_requests.get_or_create(&l).inc_by(h.requests as u64);
        m.http_bytes.get_or_create(&l).inc_by(h.bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_that_went_back_count_from_the_restart() {
        let p = DomainStats {
            cpu_time_ns: 5_000,
            disk_read_bytes: Some(100),
            ..Default::default()
        };
        let c = DomainStats {
            cpu_time_ns: 7_000,
            disk_read_bytes: Some(40),
            net_tx_bytes: Some(9),
            ..Default::default()
        };
        let d = Delta::between(&p, &c);
        assert_eq!(
            (d.cpu_ns, d.disk_read, d.net_tx, d.net_rx),
            (2_000, Some(40), Some(9), None)
        );
    }
}
