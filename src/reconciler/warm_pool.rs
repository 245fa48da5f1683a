//! The warm pool's size is desired state too: `HOSTD_WARM_POOL` guests of the
//! default hosting size, booted and idle, so a new hosting of that size is
//! served by a guest that only needs personalising (seconds) instead of a
//! cold boot (tens of seconds under TCG). Pool guests are hosting rows owned
//! by the internal pool account (`store::warm_pool`); this module only converges
//! their number. Booting, repairing and deleting them are the ordinary steps.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Context, ReconcileError};
use crate::domain::HostingSpec;
use crate::store::WarmPoolCounts;

/// Converges the pool towards `HOSTD_WARM_POOL` guests: adds a row when
/// none is booting, the host has room for one more guest of the class and
/// nobody waits for room; removes extras (those not yet Ready first). Idempotent; called by
/// every resync and after a claim. Returns the counts before any change.
pub async fn maintain(ctx: &Context) -> Result<WarmPoolCounts, ReconcileError> {
    let class = HostingSpec::default();
    let counts = ctx.store.warm_pool_counts(&class).await?;
    let mut want = i64::from(ctx.config.warm_pool);
    if want > 0 && !live_personalisation(ctx, &class) {
        want = 0;
    }
    // A template for clones is on its way: the pool's guests will be its
    // clones (seconds each) instead of cold boots competing with it.
    let waiting_for_template = ctx.templates.pending(ctx);
    ctx.metrics.warm_pool_guests.set(counts.total);
    ctx.metrics.warm_pool_ready.set(counts.ready);
    if counts.total > want {
        let n = ctx
            .store
            .shrink_warm_pool(&class, counts.total - want)
            .await?;
        tracing::info!(removed = n, want, "warm pool: shrinking");
    } else if counts.total < want
        && !waiting_for_template
        && counts.total == counts.ready
        && room_for(ctx, &class).await? > 0
    {
        // One pool guest boots at a time: a boot under TCG takes a whole
        // core for tens of seconds, and tenants' claims and boots come
        // first. The next is added once this one is Ready.
        let id = ctx.store.add_warm_guest(&class).await?;
        tracing::info!(pool_guest = %id, have = counts.total, want, "warm pool: adding a guest");
    }
    Ok(counts)
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
