//! Prometheus metrics (crate `prometheus-client`): one registry per process,
//! filled by the reconciler (if it runs here) and encoded by `/metrics` on the
//! API listener or on `HOSTD_METRICS_LISTEN`.

use std::sync::atomic::{AtomicBool, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set of series broken down by a reason or outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A CamelCase reason, e.g. `LibvirtUnavailable`.
    pub reason: String,
}

/// Label set of the rate-limit counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule, e.g. `login_account`.
    pub rule: String,
}

/// Label set of the hostings-by-phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The phase name, e.g. `Ready`.
    pub phase: String,
}

/// Label set of per-node series (as many as the operator's nodes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's name, e.g. `local`.
    pub node: String,
}

/// Label set of the per-hosting series (`HOSTD_METRICS_PER_HOSTING` only:
/// one series per hosting).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostingLabel {
    /// The hosting's id.
    pub hosting: String,
}

/// The per-hosting series, filled by the statistics sampler when
/// `HOSTD_METRICS_PER_HOSTING` is on (empty otherwise).
#[derive(Default)]
pub struct PerHosting {
    pub cpu_seconds: Family<HostingLabel, Counter<f64, AtomicU64>>,
    pub memory_bytes: Family<HostingLabel, Gauge>,
    pub disk_read_bytes: Family<HostingLabel, Counter>,
    pub disk_write_bytes: Family<HostingLabel, Counter>,
    pub http_requests: Family<HostingLabel, Counter>,
    pub http_bytes: Family<HostingLabel, Counter>,
}

impl PerHosting {
    /// Drops the series of a hosting that is gone.
    pub fn remove(&self, hosting: &str) {
        let l = HostingLabel {
            hosting: hosting.to_string(),
        };
        self.cpu_seconds.remove(&l);
        self.memory_bytes.remove(&l);
        self.disk_read_bytes.remove(&l);
        self.disk_write_bytes.remove(&l);
        self.http_requests.remove(&l);
        self.http_bytes.remove(&l);
    }
}

/// The process's metrics. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run (successful or not).
    pub reconciles: Counter,
    /// Domains reported changed by libvirt events (a burst of events on one
    /// domain between two drains counts once).
    pub domain_events: Counter,
    /// Wall time of each reconcile, in seconds.
    pub reconcile_duration: Histogram,
    /// Failed reconciles by reason.
    pub failures: Family<ReasonLabel, Counter>,
    /// Drift repairs and orphan removals.
    pub repairs: Counter,
    /// Full resync passes.
    pub resyncs: Counter,
    /// Hostings queued or being reconciled.
    pub queue_depth: Gauge,
    /// Hostings by phase, as of the last resync.
    pub hostings: Family<PhaseLabel, Gauge>,
    /// Duration of the last resync pass, in seconds.
    pub last_resync_seconds: Gauge<f64, AtomicU64>,
    /// Unix time of the last completed resync pass.
    pub last_resync_timestamp: Gauge,
    /// 1 while this process holds the reconciler leader lease.
    pub is_leader: Gauge,
    /// Domains of this instance name written by another installation (left alone).
    pub foreign_domains: Gauge,
    /// Backups completed.
    pub backups_completed: Counter,
    /// Backups failed.
    pub backups_failed: Counter,
    /// Wall time of each completed backup (copy, compression, checksum), seconds.
    pub backup_duration: Histogram,
    /// Size of the last completed backup file, bytes.
    pub last_backup_bytes: Gauge,
    /// Disks replaced by a backup (requested restores and vanished disks).
    pub restores: Counter,
    /// Times the resync found the guest isolation table missing or stale
    /// and put it back.
    pub isolation_restored: Counter,
    /// Warm-pool guests not being deleted, at the last pool check.
    pub warm_pool_guests: Gauge,
    /// Of those, Ready and claimable.
    pub warm_pool_ready: Gauge,
    /// Hostings given a warm-pool guest (personalised live or by restart).
    pub warm_pool_claims: Counter,
    /// Claims whose live personalisation failed, so the guest was restarted.
    pub warm_pool_claim_fallbacks: Counter,
    /// Guests started as clones of a template, and personalised.
    pub clones: Counter,
    /// Clones given up for a cold boot (template gone, start or agent failed).
    pub clone_fallbacks: Counter,
    /// Failed logins (wrong password or unknown account).
    pub login_failures: Counter,
    /// Requests refused by a rate limit, by rule.
    pub rate_limited: Family<RuleLabel, Counter>,
    /// Password changes.
    pub password_changes: Counter,
    /// Tokens revoked by logout.
    pub revocations: Counter,
    /// Dependency checks run by `health/detailed` (cached answers not counted).
    pub health_checks: Counter,
    /// 1 for a node whose heartbeat answers, 0 for one that does not (as of
    /// the last resync).
    pub node_ready: Family<NodeLabel, Gauge>,
    /// 1 when the resync found the guest isolation table missing and could
    /// not put it back (real guests only), else 0.
    pub isolation_missing: Gauge,
    /// Free bytes of the filesystem holding hostd's state directory.
    pub state_disk_free_bytes: Gauge,
    /// `HOSTD_DISK_RESERVE_GIB` in bytes.
    pub disk_reserve_bytes: Gauge,
    /// Hostings whose newest completed backup (or, without one, creation)
    /// is older than twice `HOSTD_BACKUP_INTERVAL_HOURS`.
    pub backups_overdue: Gauge,
    /// Unix time at which the first of the served certificates expires
    /// (0: none issued).
    pub certificate_earliest_expiry: Gauge,
    /// Per-hosting series (`HOSTD_METRICS_PER_HOSTING`).
    pub per_hosting: PerHosting,
    /// Statistics samples taken (rounds), and hostings in the last one.
    pub stats_rounds: Counter,
    pub stats_hostings: Gauge,
    /// Whether a reconciler runs in this process at all.
    pub enabled: AtomicBool,
    /// Sum of `failures` over every reason (for the heartbeat's counters).
    failures_sum: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            reconciles: Counter::default(),
            domain_events: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.5, 14)),
            failures: Family::default(),
            repairs: Counter::default(),
            resyncs: Counter::default(),
            queue_depth: Gauge::default(),
            hostings: Family::default(),
            last_resync_seconds: Gauge::default(),
            last_resync_timestamp: Gauge::default(),
            is_leader: Gauge::default(),
            foreign_domains: Gauge::default(),
            backups_completed: Counter::default(),
            backups_failed: Counter::default(),
            backup_duration: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            last_backup_bytes: Gauge::default(),
            restores: Counter::default(),
            isolation_restored: Counter::default(),
            warm_pool_guests: Gauge::default(),
            warm_pool_ready: Gauge::default(),
            warm_pool_claims: Counter::default(),
            warm_pool_claim_fallbacks: Counter::default(),
            clones: Counter::default(),
            clone_fallbacks: Counter::default(),
            login_failures: Counter::default(),
            rate_limited: Family::default(),
            password_changes: Counter::default(),
            revocations: Counter::default(),
            health_checks: Counter::default(),
            node_ready: Family::default(),
            isolation_missing: Gauge::default(),
            state_disk_free_bytes: Gauge::default(),
            disk_reserve_bytes: Gauge::default(),
            backups_overdue: Gauge::default(),
            certificate_earliest_expiry: Gauge::default(),
            per_hosting: PerHosting::default(),
            stats_rounds: Counter::default(),
            stats_hostings: Gauge::default(),
            enabled: AtomicBool::new(false),
            failures_sum: AtomicU64::new(0),
        };
        let r = &mut m.registry;
        macro_rules! register {
            ($($name:literal, $help:literal, $metric:expr;)+) => {
                $(r.register($name, $help, $metric.clone());)+
            };
        }
        register! {
            "hostd_reconciles", "Reconciles run", m.reconciles;
            "hostd_domain_events", "Domain changes reported by libvirt events", m.domain_events;
            "hostd_reconcile_duration_seconds", "Wall time of one reconcile", m.reconcile_duration;
            "hostd_reconcile_failures", "Failed reconciles by reason", m.failures;
            "hostd_repairs", "Drift repairs and orphan removals", m.repairs;
            "hostd_resyncs", "Full resync passes", m.resyncs;
            "hostd_queue_depth", "Hostings queued or being reconciled", m.queue_depth;
            "hostd_hostings", "Hostings by phase at the last resync", m.hostings;
            "hostd_last_resync_duration_seconds", "Duration of the last resync", m.last_resync_seconds;
            "hostd_last_resync_timestamp_seconds", "Unix time of the last resync", m.last_resync_timestamp;
            "hostd_reconciler_leader", "1 if this process holds the leader lease", m.is_leader;
            "hostd_foreign_domains", "Domains of another installation, left alone", m.foreign_domains;
            "hostd_backups_completed", "Backups completed", m.backups_completed;
            "hostd_backups_failed", "Backups failed", m.backups_failed;
            "hostd_backup_duration_seconds", "Wall time of one backup", m.backup_duration;
            "hostd_last_backup_bytes", "Size of the last backup file", m.last_backup_bytes;
            "hostd_restores", "Disks replaced by a backup", m.restores;
            "hostd_guest_isolation_restored", "Times the guest isolation table was found missing or stale and put back", m.isolation_restored;
            "hostd_warm_pool_guests", "Warm-pool guests (not being deleted)", m.warm_pool_guests;
            "hostd_warm_pool_ready", "Warm-pool guests Ready to be claimed", m.warm_pool_ready;
            "hostd_warm_pool_claims", "Hostings given a warm-pool guest", m.warm_pool_claims;
            "hostd_warm_pool_claim_fallbacks", "Claims personalised by a restart (guest agent failed)", m.warm_pool_claim_fallbacks;
            "hostd_clones", "Guests started as clones of a template and personalised", m.clones;
            "hostd_clone_fallbacks", "Clones given up for a cold boot (template gone, start or guest agent failed)", m.clone_fallbacks;
            "hostd_login_failures", "Failed logins", m.login_failures;
            "hostd_rate_limited", "Requests refused by a rate limit, by rule", m.rate_limited;
            "hostd_password_changes", "Password changes", m.password_changes;
            "hostd_token_revocations", "Tokens revoked by logout", m.revocations;
            "hostd_health_checks", "Dependency checks run by health/detailed", m.health_checks;
            "hostd_node_ready", "1 if the node's heartbeat answers, 0 if not (last resync)", m.node_ready;
            "hostd_guest_isolation_missing", "1 if the guest isolation table is missing and could not be put back (real guests only)", m.isolation_missing;
            "hostd_state_disk_free_bytes", "Free bytes of the filesystem holding the state directory", m.state_disk_free_bytes;
            "hostd_disk_reserve_bytes", "Bytes kept free for the host (HOSTD_DISK_RESERVE_GIB)", m.disk_reserve_bytes;
            "hostd_backups_overdue", "Hostings whose newest completed backup is older than twice the backup interval", m.backups_overdue;
            "hostd_certificate_earliest_expiry_timestamp_seconds", "Unix time at which the first served certificate expires (0: none)", m.certificate_earliest_expiry;
            "hostd_stats_rounds", "Per-hosting statistics rounds sampled", m.stats_rounds;
            "hostd_stats_hostings", "Hostings sampled in the last statistics round", m.stats_hostings;
            "hostd_hosting_cpu_seconds", "CPU time a hosting's guest used (HOSTD_METRICS_PER_HOSTING)", m.per_hosting.cpu_seconds;
            "hostd_hosting_memory_bytes", "Memory a hosting's guest holds on the host (HOSTD_METRICS_PER_HOSTING)", m.per_hosting.memory_bytes;
            "hostd_hosting_disk_read_bytes", "Bytes a hosting's guest read from its disk (HOSTD_METRICS_PER_HOSTING)", m.per_hosting.disk_read_bytes;
            "hostd_hosting_disk_write_bytes", "Bytes a hosting's guest wrote to its disk (HOSTD_METRICS_PER_HOSTING)", m.per_hosting.disk_write_bytes;
            "hostd_hosting_http_requests", "Requests the host nginx passed to a hosting's site (HOSTD_METRICS_PER_HOSTING)", m.per_hosting.http_requests;
            "hostd_hosting_http_bytes", "Bytes the host nginx sent for a hosting's site (HOSTD_METRICS_PER_HOSTING)", m.per_hosting.http_bytes;
        }
        m
    }
}

impl Metrics {
    /// Counts a failed reconcile under its reason.
    pub fn failure(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
        self.failures_sum
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a request refused by rate-limit rule `rule`.
    pub fn rate_limited(&self, rule: &str) {
        self.rate_limited
            .get_or_create(&RuleLabel {
                rule: rule.to_string(),
            })
            .inc();
    }

    /// Records a completed backup.
    pub fn backup_completed(&self, bytes: u64, took: std::time::Duration) {
        self.backups_completed.inc();
        self.backup_duration.observe(took.as_secs_f64());
        self.last_backup_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Records a failed backup.
    pub fn backup_failed(&self) {
        self.backups_failed.inc();
    }

    /// Sum of failures over every reason.
    pub fn failures_total(&self) -> u64 {
        self.failures_sum.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces the hostings-by-phase gauge with `counts`.
    pub fn set_phases(&self, counts: &[(crate::domain::Phase, i64)]) {
        for p in crate::domain::Phase::ALL {
            let n = counts.iter().find(|(q, _)| q == p).map_or(0, |c| c.1);
            self.hostings
                .get_or_create(&PhaseLabel {
                    phase: p.as_str().to_string(),
                })
                .set(n);
        }
    }

    /// Sets each node's readiness (nodes not listed are left out: a removed
    /// node's series keeps its last value until the process restarts).
    pub fn set_nodes_ready(&self, nodes: &[(String, bool)]) {
        for (name, ready) in nodes {
            self.node_ready
                .get_or_create(&NodeLabel { node: name.clone() })
                .set(i64::from(*ready));
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_labelled_series_and_histogram() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.reconcile_duration.observe(0.02);
        m.failure("LibvirtUnavailable");
        m.set_phases(&[(crate::domain::Phase::Ready, 3)]);
        let text = m.encode();
        assert!(text.contains("hostd_reconciles_total 1"), "{text}");
        assert!(text.contains("hostd_reconcile_duration_seconds_bucket"));
        assert!(text.contains("hostd_reconcile_failures_total{reason=\"LibvirtUnavailable\"} 1"));
        assert!(text.contains("hostd_hostings{phase=\"Ready\"} 3"));
        assert!(text.contains("hostd_hostings{phase=\"Failed\"} 0"));
        assert_eq!(m.failures_total(), 1);
    }
}
