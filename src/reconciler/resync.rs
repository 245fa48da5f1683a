//! The periodic full resync: one query for all desired state, one libvirt
//! listing of domains, one of volumes, one scan of the routes directory. Every
//! hosting whose observed state differs from its desired state is queued; a
//! converged hosting costs no query at all. Orphans (owned by no hosting) are
//! removed here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::names::{disk_volume, domain_name, seed_volume, volume_owner};
use super::nodes::Health;
use super::queue::WorkQueue;
use super::records::{Cached, Derived};
use super::render::Inputs;
use super::{Context, ReconcileError};
use crate::domain::{HostingId, NodeName, Phase};
use crate::drivers::{ObservedDomain, VmDriver};
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

/// Reality, as one resync pass lists it.
struct Observed {
    /// Each ready node's domains and volumes.
    nodes: Vec<NodeListing>,
    routes: Vec<(HostingId, String)>,
    /// Files in the routes directory that are not hostd routes.
    stray: Vec<String>,
}

/// Runs one resync pass.
pub async fn resync(ctx: &Context, queue: &WorkQueue) -> Result<ResyncStats, ReconcileError> {
    // Observe reality first, then read desired state: anything created for a
    // hosting after this point belongs to a row the query below will see, so
    // nothing in use can be mistaken for an orphan.
    let (routes, stray) = ctx.proxy.list_routes().await?;
    ctx.nodes.load(&ctx.store).await?;
    let seen = Observed {
        nodes: list_nodes(ctx).await?,
        routes,
        stray,
    };
    let records = ctx.records.lock().await.current(&ctx.store).await?;
    let mut queued = queue_drifted(ctx, queue, &records, &seen);
    queued += queue_backups(ctx, queue).await?;
    let orphans = collect_orphans(ctx, &records, &seen).await?;
    if let Err(e) = super::clone_templates::maintain(ctx).await {
        tracing::warn!(error = %e, "templates for clones: maintenance failed");
    }
    if let Err(e) = super::warm_pool::maintain(ctx).await {
        tracing::warn!(error = %e, "warm pool: cannot converge its size; will retry");
    }
    guest_isolation(ctx).await;
    publish(ctx, queue, &records).await;
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

/// One ready node's domains and volumes.
struct NodeListing {
    node: NodeName,
    vm: Arc<dyn VmDriver>,
    domains: Vec<ObservedDomain>,
    volumes: Vec<String>,
}

/// Lists the domains and volumes of every ready node. A node that fails
/// to answer is left out of this pass (its heartbeat decides its health);
/// with one node, its error is the pass's, as before there were nodes.
async fn list_nodes(ctx: &Context) -> Result<Vec<NodeListing>, ReconcileError> {
    let all = ctx.nodes.all();
    let ready: Vec<_> = all.iter().filter(|n| n.health == Health::Ready).collect();
    let lists = ready.iter().map(|n| async move {
        let domains = n.driver.list_domains().await?;
        let volumes = n.driver.list_volumes().await?;
        Ok::<_, crate::drivers::DriverError>((domains, volumes))
    });
    let lists = futures_util::future::join_all(lists).await;
    let mut out = Vec::new();
    for (n, l) in ready.into_iter().zip(lists) {
        match l {
            Ok((domains, volumes)) => out.push(NodeListing {
                node: n.name().clone(),
                vm: n.driver.clone(),
                domains,
                volumes,
            }),
            Err(e) if all.len() == 1 => return Err(e.into()),
            Err(e) => tracing::warn!(node = %n.name(), error = %e, "resync: cannot list the node"),
        }
    }
    Ok(out)
}

/// Queues every hosting whose observed state differs from its desired state.
fn queue_drifted(
    ctx: &Context,
    queue: &WorkQueue,
    records: &[Arc<Cached>],
    seen: &Observed,
) -> usize {
    let listed: HashMap<&NodeName, (HashMap<&str, &ObservedDomain>, HashSet<&str>)> = seen
        .nodes
        .iter()
        .map(|l| {
            let domains = l.domains.iter().map(|d| (d.name.as_str(), d)).collect();
            let volumes = l.volumes.iter().map(|s| s.as_str()).collect();
            (&l.node, (domains, volumes))
        })
        .collect();
    let routes: HashMap<HostingId, &str> =
        seen.routes.iter().map(|(i, c)| (*i, c.as_str())).collect();
    let implicit = ctx.nodes.implicit();
    let mut queued = 0;
    for rec in records {
        if queue.is_queued_or_running(rec.id) {
            continue;
        }
        // A hosting on a node not listed in this pass (down, unreachable)
        // is left to that node's heartbeat.
        let Some((domains, volumes)) = listed.get(rec.node.as_ref().unwrap_or(implicit)) else {
            continue;
        };
        if let Some(why) = drift(ctx, rec, domains, volumes, &routes) {
            tracing::debug!(hosting = %rec.id, why, "resync: not converged");
            queue.add_now(rec.id);
            queued += 1;
        }
    }
    queued
}

/// Schedules backups that are due and queues every hosting with a backup
/// to take (requested, scheduled, or interrupted by a crash).
async fn queue_backups(ctx: &Context, queue: &WorkQueue) -> Result<usize, ReconcileError> {
    let ids = ctx
        .store
        .schedule_backups(ctx.config.backups.interval)
        .await?;
    let mut queued = 0;
    for id in ids {
        if !queue.is_queued_or_running(id) {
            queue.add_now(id);
            queued += 1;
        }
    }
    Ok(queued)
}

/// Collects what no hosting owns any more: domains of this installation
/// whose hosting row is gone (the definition only), their volumes (deleted
/// when the hosting's deletion completed here, a tombstone; otherwise moved
/// to quarantine, never deleted), routes and stray files. Domains of another
/// installation are left alone and counted. Returns how many were collected.
async fn collect_orphans(
    ctx: &Context,
    records: &[Arc<Cached>],
    seen: &Observed,
) -> Result<usize, ReconcileError> {
    let all: HashSet<HostingId> = records.iter().map(|r| r.id).collect();
    let implicit = ctx.nodes.implicit();
    let ours = Some(ctx.installation);
    let foreign = (seen.nodes.iter())
        .flat_map(|l| l.domains.iter())
        .filter(|d| d.marker.installation.is_some_and(|i| Some(i) != ours));
    let foreign: Vec<&ObservedDomain> = foreign.collect();
    let before = ctx.metrics.foreign_domains.set(foreign.len() as i64);
    if before != foreign.len() as i64 {
        for d in &foreign {
            tracing::warn!(domain = %d.name, installation = ?d.marker.installation,
                "a domain of this instance name belongs to another hostd installation: leaving it alone");
        }
    }
    let mut orphans = 0;
    for l in &seen.nodes {
        // What is placed on this node, or moving to it; a domain or volume
        // of a hosting placed elsewhere is no less an orphan here (it must
        // never run twice).
        let ids: HashSet<HostingId> = (records.iter())
            .filter(|r| {
                r.node.as_ref().unwrap_or(implicit) == &l.node
                    || r.move_to.as_ref() == Some(&l.node)
            })
            .map(|r| r.id)
            .collect();
        orphans += collect_node_orphans(ctx, l, &ids).await?;
    }
    let ids = all;
    for (id, _) in seen.routes.iter().filter(|(id, _)| !ids.contains(id)) {
        tracing::warn!(hosting = %id, "removing the route entry of a hosting that no longer exists");
        ctx.proxy.apply(*id, None).await?;
        orphans += 1;
    }
    for name in &seen.stray {
        tracing::warn!(file = %name, "removing stray file from the routes directory");
        ctx.proxy.remove_stray(name).await?;
        orphans += 1;
    }
    ctx.metrics.repairs.inc_by(orphans as u64);
    expire_quarantine(ctx).await;
    Ok(orphans)
}

/// One node's orphans: domains of this installation and volumes whose
/// hosting is not placed on that node (see [`collect_orphans`]).
async fn collect_node_orphans(
    ctx: &Context,
    l: &NodeListing,
    ids: &HashSet<HostingId>,
) -> Result<usize, ReconcileError> {
    let ours = Some(ctx.installation);
    let mut orphans = 0;
    // Template domains are `clone_templates`' (a build's, or a crashed one's
    // that its maintenance removes).
    let gone = |d: &&ObservedDomain| {
        d.marker.installation == ours
            && !ids.contains(&d.marker.hosting_id)
            && !d.name.starts_with("hostd-tpl-")
    };
    for d in l.domains.iter().filter(gone) {
        tracing::warn!(node = %l.node, domain = %d.name, hosting = %d.marker.hosting_id, "removing orphaned domain (its disk is kept)");
        l.vm.destroy(&d.name).await?;
        l.vm.undefine(&d.name).await?;
        orphans += 1;
    }
    for v in &l.volumes {
        let Some(owner) = volume_owner(v).filter(|o| !ids.contains(o)) else {
            continue;
        };
        if ctx.store.has_tombstone(owner).await? {
            tracing::warn!(node = %l.node, volume = %v, "removing a leftover volume of a deleted hosting");
            l.vm.delete_volume(v).await?;
        } else {
            match ctx.quarantine_volume(&*l.vm, v).await? {
                Some(to) => tracing::warn!(node = %l.node, volume = %v, to = %to.display(),
                    "a volume without a hosting was moved to quarantine, not deleted"),
                None => continue,
            }
        }
        orphans += 1;
    }
    Ok(orphans)
}

/// Re-asserts the guest isolation table (real guests only): a table removed
/// by `nft flush ruleset` (what restarting the nftables service does), or one
/// that misses the user of a guest process started since, is put back at
/// once, with a warning and `hostd_guest_isolation_restored`.
async fn guest_isolation(ctx: &Context) {
    if !ctx.config.real_guests() {
        return;
    }
    let iso = crate::drivers::isolation::Isolation::new(ctx.config.guest_egress.clone());
    let Err(why) = iso.check().await else {
        ctx.metrics.isolation_missing.set(0);
        return;
    };
    match iso.ensure().await {
        Ok(detail) => {
            ctx.metrics.isolation_restored.inc();
            ctx.metrics.isolation_missing.set(0);
            tracing::warn!(%why, %detail, "guest isolation was not in force: put it back");
        }
        Err(e) => {
            ctx.metrics.isolation_missing.set(1);
            tracing::error!(%why, error = %e, "guest isolation is NOT in force and cannot be put back")
        }
    }
}

/// Deletes quarantined entries whose time of quarantine (in their names,
/// not their files' ages) is older than `HOSTD_QUARANTINE_DAYS`.
async fn expire_quarantine(ctx: &Context) {
    let q = ctx.quarantine.clone();
    let _ = tokio::task::spawn_blocking(move || q.expire(chrono::Utc::now())).await;
    ctx.account_quarantine().await;
}

/// Updates the metrics and writes the leader's heartbeat.
async fn publish(ctx: &Context, queue: &WorkQueue, records: &[Arc<Cached>]) {
    let m = &ctx.metrics;
    m.resyncs.inc();
    m.last_resync_timestamp.set(chrono::Utc::now().timestamp());
    m.queue_depth.set(queue.depth() as i64);
    let mut phases: Vec<(Phase, i64)> = Vec::new();
    for r in records {
        match phases.iter_mut().find(|(p, _)| *p == r.status.phase) {
            Some(e) => e.1 += 1,
            None => phases.push((r.status.phase, 1)),
        }
    }
    m.set_phases(&phases);
    alert_gauges(ctx).await;
    let holder = format!("{}:{}", hostname(), std::process::id());
    let mut stats = ctx.stats();
    // What this process sees of the host, for an API process that cannot
    // (the container deployment: `health/detailed` shows these).
    let (libvirt, nginx, isolation) = tokio::join!(
        crate::checks::libvirt(&*ctx.vm),
        crate::checks::nginx(&*ctx.proxy),
        crate::checks::guest_isolation(&ctx.config),
    );
    stats.host_checks = Some(serde_json::json!({
        "libvirt": libvirt.json(), "nginx": nginx.json(), "guest_isolation": isolation.json(),
    }));
    if let Err(e) = ctx
        .store
        .heartbeat(&ctx.config.instance, &holder, &stats)
        .await
    {
        tracing::warn!(error = %e, "cannot write the reconciler heartbeat");
    }
}

/// The gauges the operator's alert rules watch (`deploy/prometheus/`):
/// nodes, disk space, overdue backups, the first certificate to expire.
async fn alert_gauges(ctx: &Context) {
    let m = &ctx.metrics;
    let nodes: Vec<(String, bool)> = (ctx.nodes.all().iter())
        .map(|n| {
            (
                n.name().to_string(),
                n.health == super::nodes::Health::Ready,
            )
        })
        .collect();
    m.set_nodes_ready(&nodes);
    let dir = ctx.config.state_dir.clone();
    match tokio::task::spawn_blocking(move || super::space::free_bytes(&dir)).await {
        Ok(Ok(free)) => {
            m.state_disk_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        _ => tracing::warn!("cannot read the state directory's free space"),
    }
    let reserve = ctx.config.disk_reserve_bytes;
    m.disk_reserve_bytes
        .set(i64::try_from(reserve).unwrap_or(i64::MAX));
    match ctx.store.alert_facts(ctx.config.backups.interval).await {
        Ok(f) => {
            m.backups_overdue.set(f.backups_overdue);
            let t = f.earliest_certificate_expiry.map_or(0, |t| t.timestamp());
            m.certificate_earliest_expiry.set(t);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read what the alert rules watch"),
    }
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
    rec: &Cached,
    domains: &HashMap<&str, &ObservedDomain>,
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
    let (Some(_), Some(_), Some(_)) = (
        rec.status.ssh_port,
        rec.status.http_port,
        rec.status.image_pin.as_ref(),
    ) else {
        return Some("no ports or no pinned image");
    };
    let want = rec.derived(ctx.render.epoch(), |r| desired(ctx, r));
    let Some(dom) = domains.get(want.domain.as_str()) else {
        return Some("domain missing");
    };
    if Some(&dom.marker.spec_hash) != want.marker.as_ref() {
        return Some("domain definition outdated");
    }
    if dom.running != rec.spec.running {
        return Some("power state differs");
    }
    if !volumes.contains(want.disk_volume.as_str()) || !volumes.contains(want.seed_volume.as_str())
    {
        return Some("volume missing");
    }
    if rec.warm {
        // A pool guest has no route until it is claimed.
        return routes
            .contains_key(&rec.id)
            .then_some("pool guest has a route");
    }
    if routes.get(&rec.id).copied() != want.route.as_deref() {
        return Some("route differs");
    }
    None
}

/// What a hosting's observed state must match, from its record.
fn desired(ctx: &Context, rec: &HostingRecord) -> Derived {
    let ports = rec.status.ssh_port.zip(rec.status.http_port);
    let marker = ports.zip(rec.status.image_pin.as_ref()).map(|(p, image)| {
        let inputs = Inputs::of(rec, image, p).at(ctx.nodes.binds(rec.node.as_ref()));
        ctx.render.hashes(&inputs).marker()
    });
    let route = ports.filter(|_| !rec.warm).map(|(_, http)| {
        ctx.proxy
            .render(&ctx.route_spec(rec, rec.spec.running.then_some(http)))
    });
    Derived {
        domain: domain_name(rec.id),
        disk_volume: disk_volume(rec.id),
        seed_volume: seed_volume(rec.id),
        marker,
        route,
    }
}
