//! Reconciler counters and heartbeat, shared with the API (`/metrics`,
//! `/api/v1/health/detailed`) and persisted by the leader to Postgres.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Process-wide reconciler metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub errors: AtomicU64,
    pub repairs: AtomicU64,
    pub resyncs: AtomicU64,
    pub queue_depth: AtomicU64,
    pub last_pass_ms: AtomicU64,
    /// Unix time (ms) of the last completed resync pass.
    pub heartbeat_ms: AtomicI64,
    pub is_leader: AtomicBool,
    /// Whether a reconciler runs in this process at all.
    pub enabled: AtomicBool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct Snapshot {
    pub reconciles: u64,
    pub errors: u64,
    pub repairs: u64,
    pub resyncs: u64,
    pub queue_depth: u64,
    pub last_pass_ms: u64,
    pub is_leader: bool,
}

impl Metrics {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            reconciles: self.reconciles.load(Relaxed),
            errors: self.errors.load(Relaxed),
            repairs: self.repairs.load(Relaxed),
            resyncs: self.resyncs.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            last_pass_ms: self.last_pass_ms.load(Relaxed),
            is_leader: self.is_leader.load(Relaxed),
        }
    }
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}
