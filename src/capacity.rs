//! Host capacity: how much memory, CPU and disk the hostings hold, and
//! whether one more fits. Shared by the reconciler's scheduling step (which
//! admits hostings, oldest first) and `/api/v1/health/detailed` (which shows
//! the totals). Pure functions over store records and driver readings.

use serde::Serialize;

use crate::config::CapacityPolicy;
use crate::domain::HostingId;
use crate::domain::{ConditionType, Reason};
use crate::drivers::HostResources;
use crate::store::{CapacityRow, CapacityUsage, HostingRecord};

const GIB: u64 = 1 << 30;

/// What guests may take in all, after the reserve and overcommit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    pub memory_mib: u64,
    pub vcpus: u64,
    /// The pool's free space now, less the disk reserve (disks are thin:
    /// they grow as guests write).
    pub disk_available_gib: u64,
}

/// Memory and vCPUs held by running hostings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub memory_mib: u64,
    pub vcpus: u64,
}

/// The capacity section of `health/detailed`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub host: HostResources,
    pub budget: Budget,
    pub allocated: Usage,
    /// Hostings waiting for room (condition `Scheduled=False`).
    pub waiting: usize,
}

/// The budget the policy leaves guests on this host.
pub fn budget(host: &HostResources, policy: &CapacityPolicy) -> Budget {
    let mem = host.memory_mib.saturating_sub(policy.reserved_mib) as f64;
    Budget {
        memory_mib: (mem * policy.memory_overcommit) as u64,
        vcpus: (host.cpus as f64 * policy.cpu_overcommit) as u64,
        disk_available_gib: host
            .disk_available_bytes
            .saturating_sub(policy.reserved_disk_bytes)
            / GIB,
    }
}

/// Whether a hosting waits for room (its `Scheduled` condition is False).
pub fn waiting(rec: &HostingRecord) -> bool {
    rec.status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::Scheduled && !c.is_true())
}

/// Whether `rec` may run now, given what the others hold and what older
/// waiting hostings want (`usage`, from [`crate::store::Store::capacity_usage`]).
/// Older hostings keep their place in the queue: their needs count as taken,
/// so a younger hosting never overtakes one that has waited longer. `new` is
/// true for a first admission, which also needs its disk. The error is the
/// reason and a message for the user.
pub fn admit(
    usage: &CapacityUsage,
    rec: &HostingRecord,
    host: &HostResources,
    policy: &CapacityPolicy,
    new: bool,
) -> Result<(), (Reason, String)> {
    let b = budget(host, policy);
    let (mem, cpu) = (
        u64::from(rec.spec.memory_mib.get()),
        u64::from(rec.spec.vcpus.get()),
    );
    let taken_mem = (usage.memory_mib + usage.queued_memory_mib).max(0) as u64;
    let taken_cpu = (usage.vcpus + usage.queued_vcpus).max(0) as u64;
    if taken_mem + mem > b.memory_mib {
        let msg = format!(
            "waiting for memory: {mem} MiB needed, {taken_mem} MiB of {} MiB taken or promised to older hostings",
            b.memory_mib
        );
        return Err((Reason::InsufficientMemory, msg));
    }
    if taken_cpu + cpu > b.vcpus {
        let msg = format!(
            "waiting for CPU: {cpu} vCPUs needed, {taken_cpu} of {} taken or promised to older hostings",
            b.vcpus
        );
        return Err((Reason::InsufficientCpu, msg));
    }
    // Disks are thin overlays: a new one must fit the pool's free space now.
    if new && u64::from(rec.spec.disk_gib.get()) > b.disk_available_gib {
        let msg = format!(
            "waiting for disk: {} GiB needed, {} GiB free in the storage pool",
            rec.spec.disk_gib, b.disk_available_gib
        );
        return Err((Reason::InsufficientDisk, msg));
    }
    Ok(())
}

/// What every hosting but `me` holds and (for `me`, created at the given
/// time) what older hostings waiting to run want: the sums
/// [`crate::store::Store::capacity_usage`] makes in SQL, over rows the
/// reconciler keeps in memory between admissions.
pub fn usage<'a>(
    rows: impl IntoIterator<Item = &'a CapacityRow>,
    me: Option<(HostingId, chrono::DateTime<chrono::Utc>)>,
) -> CapacityUsage {
    let (id, older_than) = me.map_or((None, chrono::DateTime::UNIX_EPOCH), |(i, c)| (Some(i), c));
    let mut u = CapacityUsage::default();
    for r in rows.into_iter().filter(|r| Some(r.id) != id) {
        let holds = r.wants_to_run && r.admitted && !r.waiting;
        if holds {
            u.memory_mib += r.memory_mib;
            u.vcpus += r.vcpus;
        } else if r.wants_to_run && r.created_at < older_than {
            u.queued_memory_mib += r.memory_mib;
            u.queued_vcpus += r.vcpus;
        }
        u.waiting += r.waiting as i64;
    }
    u
}

/// The capacity section of `health/detailed`.
pub fn report(usage: &CapacityUsage, host: HostResources, policy: &CapacityPolicy) -> Report {
    Report {
        host,
        budget: budget(&host, policy),
        allocated: Usage {
            memory_mib: usage.memory_mib.max(0) as u64,
            vcpus: usage.vcpus.max(0) as u64,
        },
        waiting: usage.waiting.max(0) as usize,
    }
}
