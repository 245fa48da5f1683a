//! The warm pool's size is desired state too: `HOSTD_WARM_POOL` guests of the
//! default hosting size on each node that takes new hostings, booted and idle, so a new hosting of that size is
//! served by a guest that only needs personalising (seconds) instead of a
//! cold boot (tens of seconds under TCG). Pool guests are hosting rows owned
//! by the internal pool account (`store::warm_pool`); this module only converges
//! their number. Booting, repairing and deleting them are the ordinary steps.

use std::sync::atomic::{AtomicBool, Ordering};

use super::nodes::{Health, NodeHandle};
use super::{Context, ReconcileError};
use crate::domain::{HostingId, HostingSpec};
use crate::store::WarmPoolCounts;

/// Converges each node's pool towards `HOSTD_WARM_POOL` guests: on a node
/// that takes new hostings, adds a row bound to it when no pool guest is
/// booting anywhere, the node has room for one more guest of the class and
/// nobody waits for room; removes extras (those not yet Ready first), and
/// every pool guest of a node that is cordoned or fenced (a node that does
/// not answer keeps its own until it does). Idempotent; called by every
/// resync and after a claim. Returns the counts (all nodes) before any
/// change.
pub async fn maintain(ctx: &Context) -> Result<WarmPoolCounts, ReconcileError> {
    let class = HostingSpec::default();
    // The nodes and their health (what a leader reads as its term starts).
    ctx.nodes.load(&ctx.store).await?;
    let by_node = ctx.store.warm_pool_counts_by_node(&class).await?;
    let counts = WarmPoolCounts::sum(by_node.values());
    let mut want = i64::from(ctx.config.warm_pool);
    if want > 0 && !live_personalisation(ctx, &class) {
        want = 0;
    }
    // A template for clones is on its way: the pool's guests will be its
    // clones (seconds each) instead of cold boots competing with it.
    let waiting_for_template = ctx.templates.pending(ctx);
    ctx.metrics.warm_pool_guests.set(counts.total);
    ctx.metrics.warm_pool_ready.set(counts.ready);
    // One pool guest boots at a time (on any node: nodes on one machine
    // share its cores): a boot under TCG takes a whole core for tens of
    // seconds, and tenants' claims and boots come first. The next is added
    // once this one is Ready.
    let mut booting = by_node.iter().any(|(n, c)| {
        c.total > c.ready
            && n.as_ref()
                .is_none_or(|n| ctx.nodes.get(n).is_some_and(|h| h.health == Health::Ready))
    });
    for node in ctx.nodes.all() {
        let have = by_node
            .get(&Some(node.name().clone()))
            .copied()
            .unwrap_or_default();
        let cordoned = !node.row.schedulable || node.row.fenced_at.is_some();
        let want_here = match (cordoned, node.placeable()) {
            // Cordoned (or draining) or fenced: claims do not take its guests.
            (true, _) => 0,
            (false, true) => want,
            // Not answering, or its resources not read yet: left as they
            // are until it does.
            (false, false) => have.total,
        };
        if have.total > want_here {
            let n = (ctx.store)
                .shrink_warm_pool(&class, node.name(), have.total - want_here)
                .await?;
            tracing::info!(node = %node.name(), removed = n, want = want_here, "warm pool: shrinking");
        } else if have.total < want_here
            && !booting
            && !waiting_for_template
            && room_on(ctx, &node, &class).await? > 0
        {
            let id = ctx.store.add_warm_guest(&class, node.name()).await?;
            tracing::info!(node = %node.name(), pool_guest = %id, have = have.total, want, "warm pool: adding a guest");
            booting = true;
        }
    }
    Ok(counts)
}

/// How many more guests of `class` fit on `node` now (the scheduler's
/// ledger); none while a hosting waits for room anywhere (tenants come
/// first: the scheduler also evicts pool guests for them).
async fn room_on(
    ctx: &Context,
    node: &NodeHandle,
    class: &HostingSpec,
) -> Result<i64, ReconcileError> {
    if ctx.store.capacity_usage(None).await?.waiting > 0 {
        return Ok(0);
    }
    let mut ledger = ctx.scheduler.lock().await;
    ledger
        .refresh(&ctx.store, std::slice::from_ref(node))
        .await?;
    let Some(host) = ledger.host(node.name()) else {
        return Ok(0);
    };
    let usage = ledger.usage(
        node.name(),
        (HostingId(uuid::Uuid::nil()), chrono::Utc::now()),
    );
    drop(ledger);
    let b = crate::capacity::budget(&host, &ctx.config.capacity);
    let taken_mem = (usage.memory_mib + usage.queued_memory_mib).max(0) as u64;
    let taken_cpu = (usage.vcpus + usage.queued_vcpus).max(0) as u64;
    let mem = b.memory_mib.saturating_sub(taken_mem) / u64::from(class.memory_mib.get());
    let cpu = b.vcpus.saturating_sub(taken_cpu) / u64::from(class.vcpus.get());
    let disk = b.disk_available_gib / u64::from(class.disk_gib.get());
    Ok(mem.min(cpu).min(disk) as i64)
}

/// Whether the class's image can be personalised while running (guest agent
/// and `hostd-boot --live`); without that a claim would cost a full boot, so
/// no pool is kept. Warned about once per process.
fn live_personalisation(ctx: &Context, class: &HostingSpec) -> bool {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let ok = ctx
        .catalog
        .pin(&class.image)
        .map(|e| e.guest_agent)
        .unwrap_or(false);
    if !ok && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            image = class.image.as_str(),
            "HOSTD_WARM_POOL is set but the image has no guest agent (rebuild it with \
             scripts/build-image.sh, or set guest_agent in the catalogue): no warm pool"
        );
    }
    ok
}

/// What guests may take on every node new hostings may be placed on (read
/// now with one node; from the last heartbeats with several).
async fn total_budget(ctx: &Context) -> Result<crate::capacity::Budget, ReconcileError> {
    let policy = &ctx.config.capacity;
    let nodes = ctx.nodes.all();
    if nodes.len() <= 1 {
        let mut host = ctx.vm.resources().await?;
        if let Some(n) = nodes.first() {
            host = super::nodes::apply_overrides(&n.row, host);
        }
        return Ok(crate::capacity::budget(&host, policy));
    }
    let mut total = crate::capacity::Budget {
        memory_mib: 0,
        vcpus: 0,
        disk_available_gib: 0,
    };
    for r in nodes
        .iter()
        .filter(|n| n.placeable())
        .filter_map(|n| n.resources)
    {
        let b = crate::capacity::budget(&r, policy);
        total.memory_mib += b.memory_mib;
        total.vcpus += b.vcpus;
        total.disk_available_gib = total.disk_available_gib.max(b.disk_available_gib);
    }
    Ok(total)
}

/// How many more guests of `class` fit now; none while a hosting waits for
/// room (tenants come first: the scheduler also evicts pool guests for them).
pub(super) async fn room_for(ctx: &Context, class: &HostingSpec) -> Result<i64, ReconcileError> {
    let usage = ctx.store.capacity_usage(None).await?;
    if usage.waiting > 0 {
        return Ok(0);
    }
    let b = total_budget(ctx).await?;
    let mem = b.memory_mib.saturating_sub(usage.memory_mib.max(0) as u64)
        / u64::from(class.memory_mib.get());
    let cpu = b.vcpus.saturating_sub(usage.vcpus.max(0) as u64) / u64::from(class.vcpus.get());
    let disk = b.disk_available_gib / u64::from(class.disk_gib.get());
    Ok(mem.min(cpu).min(disk) as i64)
}
