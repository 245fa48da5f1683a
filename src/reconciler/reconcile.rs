//! One reconcile of one hosting: read desired state, observe actual state,
//! take the next steps, write status. Level-triggered and idempotent: every
//! step checks before it acts, so a pass interrupted anywhere (error, crash)
//! is completed or undone by the next one. Deletion is convergence to absent.

use std::time::Duration;

use tracing::Instrument;

use super::names::{console_log, disk_volume, domain_name, seed_volume};
use super::render::Inputs;
use super::steps::Pass;
use super::{Action, Context, ReconcileError};
use crate::domain::{set_condition, ConditionType, EventType, HostingId, Phase};
use crate::drivers::DriverError;
use crate::store::HostingRecord;

/// Reconciles one hosting, inside a span carrying its id and generation.
pub async fn reconcile(ctx: &Context, id: HostingId) -> Result<Action, ReconcileError> {
    let Some(rec) = ctx.store.get_record(id).await? else {
        ctx.forget(id);
        return Ok(Action::Gone);
    };
    ctx.nodes.load(&ctx.store).await?;
    let node = rec.node.as_ref().map(|n| n.as_str()).unwrap_or("");
    let span = tracing::info_span!("reconcile", hosting = %id, generation = rec.generation, node);
    async move {
        let vm = match ctx.node_driver(&rec) {
            // A fenced node's leftovers are collected when it returns.
            Err(away) if away.fenced && rec.deletion_requested_at.is_some() => {
                return finalize(ctx, &rec, None).await;
            }
            Err(away) => return node_away(ctx, &rec, away).await,
            Ok(vm) => vm,
        };
        if rec.deletion_requested_at.is_some() {
            finalize(ctx, &rec, Some(vm)).await
        } else {
            apply(ctx, rec, vm).await
        }
    }
    .instrument(span)
    .await
}

/// Converges an existing hosting towards its spec; the pass's events are
/// written when it ends, whether it succeeded or not.
async fn apply(
    ctx: &Context,
    rec: HostingRecord,
    vm: std::sync::Arc<dyn crate::drivers::VmDriver>,
) -> Result<Action, ReconcileError> {
    let mut pass = Pass::new(ctx, &rec, vm);
    pass.node_back();
    let result = converge(&mut pass).await;
    let action = pass.finish(result).await?;
    if action != Action::AwaitChange {
        return Ok(action);
    }
    if rec.claim_pending() {
        // A claim just completed: refill the pool now, not at the next resync.
        super::warm_pool::maintain(ctx).await?;
    }
    // Converged: now the hosting's pending backup, if any.
    Ok(super::backup::pending(ctx, rec.id).await?.unwrap_or(action))
}

/// The steps, in order.
async fn converge(pass: &mut Pass<'_>) -> Result<Action, ReconcileError> {
    let (ctx, rec) = (pass.ctx, pass.rec);
    if let Some(wait) = pass.schedule().await? {
        return Ok(wait);
    }
    let ports = pass.ports().await?;
    pass.begin().await?;
    let Some(image) = pass.disk().await? else {
        return Ok(Action::AwaitChange);
    };
    pass.meter_disk();
    if let Some(action) = pass.move_node(&image, ports).await? {
        return Ok(action);
    }
    let inputs = Inputs::of(rec, &image, ports).at(ctx.nodes.binds(pass.node.as_ref()));
    let want = ctx.render.hashes(&inputs);
    let observed = pass.seed(&inputs, &want).await?;
    let def = pass.definition(&inputs, &want, observed).await?;
    super::console::capture(ctx, rec.id).await;
    if !rec.spec.running {
        return pass.stop(&def).await;
    }
    if !pass.power(&def, &inputs, &want).await? {
        return Ok(Action::Requeue(super::steps::BOOT_WAIT));
    }
    if !pass.live_seed(&want, &image).await? {
        // The route's batch (validation and reload) runs while the agent
        // works, not after it: a clone or claimed guest is Ready that much
        // sooner. Until its seed is applied the guest serves only the
        // generic page it was made with (nothing of anyone's), and Ready
        // still waits for the agent's call.
        if !rec.warm {
            pass.route(Some(ports.1)).await?;
        }
        return pass.agent_pending().await;
    }
    if !rec.warm {
        if !pass.route(Some(ports.1)).await? {
            return pass.route_pending().await;
        }
    } else if ctx.proxy.read_route(rec.id).await?.is_some() {
        // A pool guest is served by no route until it is claimed.
        ctx.proxy.apply(rec.id, None).await?;
    }
    pass.readiness(ports).await
}

/// A hosting whose node is not usable now: nothing is done to it. While
/// the node has been silent for less than `HOSTD_NODE_DOWN_SECS` it waits
/// quietly; after that it is `Unknown` with `NodeReachable=False` (its
/// guest may still run: nobody can tell). Nothing is recreated elsewhere;
/// the node's return queues it again.
async fn node_away(
    ctx: &Context,
    rec: &HostingRecord,
    away: super::NodeAway,
) -> Result<Action, ReconcileError> {
    let super::NodeAway {
        node,
        down,
        message,
        ..
    } = away;
    if !down {
        return Ok(Action::Requeue(super::nodes::heartbeat_interval(
            ctx.config.node_down,
        )));
    }
    let mut st = rec.status.clone();
    let msg = format!("node {node} is down: {message}");
    let was = st
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::NodeReachable && !c.is_true());
    set_condition(
        &mut st.conditions,
        ConditionType::NodeReachable,
        false,
        crate::domain::Reason::NodeDown,
        &msg,
    );
    st.phase = Phase::Unknown;
    st.message = Some(msg.clone());
    if !was || rec.status.phase != Phase::Unknown {
        let event = crate::store::NewEvent {
            type_: EventType::Warning,
            reason: crate::domain::Reason::NodeDown,
            message: format!("{msg}; its guest may still run there. Nothing is recreated elsewhere by itself: the hosting returns with the node, or an operator evacuates the node"),
        };
        ctx.store
            .write_status_with_events(rec.id, &st, &[event])
            .await?;
    }
    ctx.release_boot(rec.id);
    Ok(Action::Requeue(Duration::from_secs(30)))
}

/// The finalizer: route → reload → domain → volumes → ports → row. Every step
/// is idempotent, so it works whatever state apply left behind.
async fn finalize(
    ctx: &Context,
    rec: &HostingRecord,
    vm: Option<std::sync::Arc<dyn crate::drivers::VmDriver>>,
) -> Result<Action, ReconcileError> {
    let id = rec.id;
    let name = domain_name(id);
    let mut st = rec.status.clone();
    if rec.status.phase != Phase::Deleting {
        st.phase = Phase::Deleting;
        st.message = Some("cleaning up".into());
        ctx.store.write_status(id, &st).await?;
    }
    let faults = &ctx.config.faults;
    ctx.proxy.apply(id, None).await?;
    faults.hit("after_route_remove").await?;
    if let Some(vm) = vm {
        vm.destroy(&name).await?;
        if st.meter.vcpus.is_some() || st.meter.memory_mib.is_some() {
            // The guest no longer runs: its vCPUs and memory stop counting
            // now, not when the row goes.
            st.meter.vcpus = None;
            st.meter.memory_mib = None;
            ctx.store.write_status(id, &st).await?;
        }
        faults.hit("after_domain_destroy").await?;
        vm.undefine(&name).await?;
        faults.hit("after_domain_undefine").await?;
        vm.delete_volume(&disk_volume(id)).await?;
        vm.delete_volume(&seed_volume(id)).await?;
        faults.hit("after_volume_delete").await?;
    } else {
        tracing::warn!("the hosting's node is fenced: its domain and volumes there are removed when the node returns");
    }
    quarantine_backups(ctx, id)?;
    super::steps::offsite::delete_offsite(ctx, id).await?;
    ctx.store.release_ports(id).await?;
    faults.hit("after_release_ports").await?;
    ctx.store.delete_hosting(id).await?;
    ctx.scheduler.lock().await.released(id);
    let _ = std::fs::remove_file(ctx.render.console_dir().join(console_log(id)));
    ctx.forget(id);
    tracing::info!("hosting deleted; all resources released");
    Ok(Action::Gone)
}

/// A deleted hosting's backups are kept in quarantine (for
/// `HOSTD_QUARANTINE_DAYS`), not deleted: an operator can still restore a
/// hosting deleted by mistake.
fn quarantine_backups(ctx: &Context, id: HostingId) -> Result<(), ReconcileError> {
    let files = super::backup::BackupFiles::new(&ctx.config.state_dir);
    files.discard_staging(id);
    let dir = files.dir(id);
    if dir.exists() {
        let q = &ctx.quarantine;
        let to = q
            .target(&format!("backups-{id}"), chrono::Utc::now())
            .map_err(DriverError::from)?;
        std::fs::rename(&dir, &to).map_err(DriverError::from)?;
        q.bound(&to);
        tracing::info!(to = %to.display(), "the hosting's backups were moved to quarantine");
    }
    Ok(())
}

/// The error policy: record the error on the hosting (condition + Warning
/// event), mark it Failed after repeated failures, and return the backoff delay.
pub async fn on_error(ctx: &Context, id: HostingId, err: &ReconcileError) -> Duration {
    let (delay, failures) = ctx.error_policy(id);
    tracing::warn!(hosting = %id, error = %err, failures, retry_in = ?delay, "reconcile failed");
    let msg = format!(
        "{err} (attempt {failures}, retrying in {:.1}s)",
        delay.as_secs_f64()
    );
    if let Ok(Some(rec)) = ctx.store.get_record(id).await {
        let mut st = rec.status.clone();
        let reason = err.reason();
        set_condition(
            &mut st.conditions,
            ConditionType::Reconciled,
            false,
            reason,
            &err.to_string(),
        );
        st.message = Some(msg.clone());
        if failures >= 5 && rec.deletion_requested_at.is_none() {
            st.phase = Phase::Failed;
        }
        let event = crate::store::NewEvent {
            type_: EventType::Warning,
            reason,
            message: msg,
        };
        let _ = ctx.store.write_status_with_events(id, &st, &[event]).await;
    }
    delay
}
