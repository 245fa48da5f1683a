//! The periodic full resync: one query for all desired state, one libvirt
//! listing of domains, one of volumes, one scan of the routes directory. Every
//! hosting whose observed state differs from its desired state is queued; a
//! converged hosting costs no query at all. Orphans (owned by no hosting) are
//! removed here.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;

use super::metrics::Metrics;
use super::queue::WorkQueue;
use super::reconcile::{
    desired_hashes, disk_volume, domain_name, marker_hash, seed_volume, volume_owner,
    ReconcileError,
};
use super::Context;
use crate::domain::{HostingId, Phase};
use crate::drivers::RouteSpec;
use crate::store::HostingRecord;

/// What one resync pass found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResyncStats {
    /// Hostings compared.
    pub hostings: usize,
    /// Hostings queued because observed state differed from desired state.
    pub queued: usize,
    /// Orphaned or stray resources removed.
    pub orphans_removed: usize,
}

/// Runs one resync pass.
pub async fn resync(ctx: &Context, queue: &WorkQueue) -> Result<ResyncStats, ReconcileError> {
    // Observe reality first, then read desired state: anything created for a
    // hosting after this point belongs to a row the query below will see, so
    // nothing in use can be mistaken for an orphan.
    let domains = ctx.vm.list_domains().await?;
    let volumes = ctx.vm.list_volumes().await?;
    let (routes, stray) = ctx.proxy.list_routes().await?;
    let records = ctx.store.list_records().await?;

    let by_id: HashMap<HostingId, &HostingRecord> = records.iter().map(|r| (r.id, r)).collect();
    let dom_by_name: HashMap<&str, _> = domains.iter().map(|d| (d.name.as_str(), d)).collect();
    let vol_set: HashSet<&str> = volumes.iter().map(|s| s.as_str()).collect();
    let route_map: HashMap<HostingId, &str> =
        routes.iter().map(|(i, c)| (*i, c.as_str())).collect();

    let mut queued = 0usize;
    let mut orphans = 0usize;
    for rec in &records {
        if queue.is_queued_or_running(rec.id) {
            continue;
        }
        if let Some(why) = drift(ctx, rec, &dom_by_name, &vol_set, &route_map) {
            tracing::debug!(hosting = %rec.id, why, "resync: not converged");
            queue.add_now(rec.id);
            queued += 1;
        }
    }

    // Orphans: marked domains, volumes and routes whose hosting no longer exists.
    for d in &domains {
        if !by_id.contains_key(&d.marker.hosting_id) {
            tracing::warn!(domain = %d.name, hosting = %d.marker.hosting_id, "removing orphaned domain");
            ctx.vm.destroy(&d.name).await?;
            ctx.vm.undefine(&d.name).await?;
            Metrics::inc(&ctx.metrics.repairs);
            orphans += 1;
        }
    }
    for v in &volumes {
        if let Some(owner) = volume_owner(v) {
            if !by_id.contains_key(&owner) {
                tracing::warn!(volume = %v, "removing orphaned volume");
                ctx.vm.delete_volume(v).await?;
                Metrics::inc(&ctx.metrics.repairs);
                orphans += 1;
            }
        }
    }
    for (id, _) in &routes {
        if !by_id.contains_key(id) {
            tracing::warn!(hosting = %id, "removing orphaned route file");
            ctx.proxy.apply(*id, None).await?;
            Metrics::inc(&ctx.metrics.repairs);
            orphans += 1;
        }
    }
    for name in &stray {
        tracing::warn!(file = %name, "removing stray file from the routes directory");
        ctx.proxy.remove_stray(name).await?;
        Metrics::inc(&ctx.metrics.repairs);
        orphans += 1;
    }

    Metrics::inc(&ctx.metrics.resyncs);
    let now = chrono::Utc::now().timestamp_millis();
    ctx.metrics.heartbeat_ms.store(now, Relaxed);
    ctx.metrics.queue_depth.store(queue.depth() as u64, Relaxed);
    let holder = format!("{}:{}", hostname(), std::process::id());
    if let Err(e) = ctx
        .store
        .heartbeat(&ctx.config.instance, &holder, &ctx.metrics.snapshot())
        .await
    {
        tracing::warn!(error = %e, "cannot write the reconciler heartbeat");
    }
    tracing::debug!(
        hostings = records.len(),
        queued,
        orphans,
        "resync pass done"
    );
    Ok(ResyncStats {
        hostings: records.len(),
        queued,
        orphans_removed: orphans,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Why a hosting's observed state differs from its desired state (`None`:
/// converged, nothing to do).
fn drift(
    ctx: &Context,
    rec: &HostingRecord,
    domains: &HashMap<&str, &crate::drivers::ObservedDomain>,
    volumes: &HashSet<&str>,
    routes: &HashMap<HostingId, &str>,
) -> Option<&'static str> {
    if rec.deletion_requested_at.is_some() {
        return Some("deletion requested");
    }
    if rec.status.observed_generation != rec.generation {
        return Some("generation not observed yet");
    }
    if !matches!(rec.status.phase, Phase::Ready | Phase::Stopped) {
        return Some("not Ready/Stopped");
    }
    let (Some(ssh), Some(http)) = (rec.status.ssh_port, rec.status.http_port) else {
        return Some("no ports");
    };
    let Some(image) = rec.status.image_pin.as_ref() else {
        return Some("no pinned image");
    };
    let Some(dom) = domains.get(domain_name(rec.id).as_str()) else {
        return Some("domain missing");
    };
    let (d, s) = desired_hashes(ctx, rec, image, ssh, http);
    if dom.marker.spec_hash != marker_hash(&d, &s) {
        return Some("domain definition outdated");
    }
    if dom.running != rec.spec.running {
        return Some("power state differs");
    }
    if !volumes.contains(disk_volume(rec.id).as_str())
        || !volumes.contains(seed_volume(rec.id).as_str())
    {
        return Some("volume missing");
    }
    let want = ctx.proxy.render(&RouteSpec {
        hosting_id: rec.id,
        user_id: rec.user_id,
        http_port: rec.spec.running.then_some(http),
    });
    if routes.get(&rec.id).copied() != Some(want.as_str()) {
        return Some("route differs");
    }
    None
}
