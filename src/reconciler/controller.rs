//! The control loop: the work queue and its workers, the wake-up sources
//! (LISTEN/NOTIFY, periodic resync, requeues) and the leader lease. Only the
//! lease holder acts.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{queue, reconcile, resync, Action, Context, ReconcileError};
use crate::domain::HostingId;
use crate::shutdown::Shutdown;
use crate::store::lease::Lease;

/// The controller: queue, workers, wake-up sources and the leader lease.
pub struct Controller {
    pub ctx: Arc<Context>,
    pub queue: Arc<queue::WorkQueue>,
    /// Woken when Postgres refused a write because this leader's term is
    /// over: the term ends at once instead of at the next lease check.
    deposed: tokio::sync::Notify,
}

impl Controller {
    pub fn new(ctx: Arc<Context>) -> Controller {
        let queue = Arc::new(queue::WorkQueue::default());
        let _ = ctx.queue.set(queue.clone());
        Controller {
            ctx,
            queue,
            deposed: tokio::sync::Notify::new(),
        }
    }

    /// Runs one reconcile of `id` and applies its outcome to the queue (requeue,
    /// backoff). Exposed so tests can drive the reconciler one step at a time.
    pub async fn reconcile_once(&self, id: HostingId) -> Result<Action, ReconcileError> {
        let started = std::time::Instant::now();
        let r = reconcile::reconcile(&self.ctx, id).await;
        let m = &self.ctx.metrics;
        m.reconciles.inc();
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Ok(Action::Requeue(d)) => self.queue.add_at(id, Instant::now() + *d),
            Ok(Action::AwaitChange) | Ok(Action::Gone) => {}
            Err(ReconcileError::Store(crate::store::StoreError::Fenced))
            | Err(ReconcileError::Driver(crate::drivers::DriverError::Deposed)) => {
                tracing::warn!(hosting = %id, "write refused: this leader's term is over");
                self.deposed.notify_one();
            }
            Err(e) => {
                m.failure(e.reason().as_str());
                let delay = reconcile::on_error(&self.ctx, id, e).await;
                self.queue.add_at(id, Instant::now() + delay);
            }
        }
        r
    }

    /// Runs the control loop until `shutdown`: acquires the leader lease, then
    /// listens, resyncs and works the queue while the lease is held.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let ctx = &self.ctx;
        ctx.metrics.enabled.store(true, Relaxed);
        let mut lease = Lease::new(&ctx.config.instance);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match lease.try_acquire(&ctx.store).await {
                Ok(true) => {
                    let epoch = lease.epoch().unwrap_or_default();
                    if let Err(e) = ctx.store.fence(&ctx.config.instance, epoch) {
                        tracing::error!(error = %e, "cannot open the leader term's connections");
                        lease.release().await;
                        continue;
                    }
                    tracing::info!(instance = %ctx.config.instance, epoch, "acquired the reconciler leader lease");
                    ctx.metrics.is_leader.set(1);
                    self.clone().lead(&mut lease, &shutdown).await;
                    ctx.metrics.is_leader.set(0);
                    if !shutdown.is_cancelled() {
                        tracing::warn!("lost the reconciler leader lease; standing by");
                    }
                }
                Ok(false) => tracing::debug!("another reconciler holds the lease; standing by"),
                Err(e) => tracing::warn!(error = %e, "cannot reach Postgres for the leader lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        lease.release().await;
        tracing::info!("reconciler stopped");
    }

    /// Acts as leader until the lease is lost or shutdown.
    async fn lead(self: Arc<Self>, lease: &mut Lease, shutdown: &Shutdown) {
        let ctx = self.ctx.clone();
        if let Err(e) = ctx.vm.ensure_storage_pool().await {
            tracing::error!(error = %e, "cannot prepare the storage pool; will retry");
        }
        // The nodes are known (and pinged once) before any hosting is looked at.
        if let Err(e) = ctx.nodes.load(&ctx.store).await {
            tracing::error!(error = %e, "cannot read the nodes; will retry");
        }
        // Stops this term's tasks (lease lost) as well as on process shutdown.
        let stop = shutdown.child_token();
        let listener = tokio::spawn(listen(ctx.clone(), self.queue.clone(), stop.clone()));
        let watcher = tokio::spawn(watch_domains(ctx.clone(), self.queue.clone(), stop.clone()));
        let workers = tokio::spawn(self.clone().work(stop.clone()));
        let tls = tokio::spawn(super::tls::run(ctx.clone(), stop.clone()));
        let heartbeats = tokio::spawn(heartbeats(ctx.clone(), self.queue.clone(), stop.clone()));
        let stats = tokio::spawn(super::stats::run(ctx.clone(), stop.clone()));
        let mut next_resync = Instant::now();
        let mut lease_check = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_resync) => {
                    let started = std::time::Instant::now();
                    match resync::resync(&ctx, &self.queue).await {
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "resync failed; will retry"),
                    }
                    ctx.metrics.last_resync_seconds.set(started.elapsed().as_secs_f64());
                    next_resync = Instant::now() + ctx.config.resync;
                }
                _ = lease_check.tick() => {
                    if !lease.check().await.unwrap_or(false) {
                        break;
                    }
                }
                _ = self.deposed.notified() => {
                    lease.release().await;
                    break;
                }
            }
        }
        stop.cancel();
        let _ = listener.await;
        let _ = watcher.await;
        let _ = workers.await;
        let _ = tls.await;
        let _ = heartbeats.await;
        let _ = stats.await;
    }

    /// Works the queue with bounded concurrency until `stop`.
    async fn work(self: Arc<Self>, stop: Shutdown) {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.ctx.config.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if stop.is_cancelled() {
                break;
            }
            self.ctx.metrics.queue_depth.set(self.queue.depth() as i64);
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => p.expect("semaphore open"),
                _ = stop.cancelled() => break,
            };
            match self.queue.try_take() {
                Ok(id) => {
                    let me = self.clone();
                    tasks.spawn(async move {
                        let _ = me.reconcile_once(id).await;
                        me.queue.done(id);
                        drop(permit);
                    });
                }
                Err(next) => {
                    drop(permit);
                    let wait = next
                        .map(|n| n.saturating_duration_since(Instant::now()))
                        .unwrap_or(Duration::from_secs(3600));
                    tokio::select! {
                        _ = self.queue.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        // Cooperative shutdown: let in-flight reconciles finish their step.
        while tasks.join_next().await.is_some() {}
    }
}

/// Queues every hosting once: after (re)establishing LISTEN, when any
/// notification may have been missed.
async fn queue_all(ctx: &Context, queue: &queue::WorkQueue) {
    if let Ok(records) = ctx.store.list_records().await {
        for r in records {
            queue.add_now(r.id);
        }
    }
}

/// Opens a listening connection; `None` (after a pause) when Postgres is away.
async fn connect_listener(ctx: &Context) -> Option<sqlx::postgres::PgListener> {
    let result = async {
        let mut l = sqlx::postgres::PgListener::connect(ctx.store.url()).await?;
        l.listen(crate::store::NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    }
    .await;
    match result {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            None
        }
    }
}

/// Listens for desired-state changes and queues the changed hosting at once.
/// Reconnects when Postgres goes away, and then looks at every hosting, since
/// notifications sent meanwhile were lost.
async fn listen(ctx: Arc<Context>, queue: Arc<queue::WorkQueue>, stop: Shutdown) {
    loop {
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = connect_listener(&ctx) => match l { Some(l) => l, None => continue },
        };
        queue_all(&ctx, &queue).await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        if let Ok(id) = uuid::Uuid::parse_str(n.payload()) {
                            queue.add_now(HostingId(id));
                        }
                    }
                    // The connection was lost and re-established.
                    Ok(None) => queue_all(&ctx, &queue).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection broke; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// Reads the nodes table and pings every node, every
/// [`super::nodes::heartbeat_interval`]; a node whose health changed has its
/// hostings queued (marked `Unknown` when it went down, repaired when it
/// returns).
async fn heartbeats(ctx: Arc<Context>, queue: Arc<queue::WorkQueue>, stop: Shutdown) {
    let every = super::nodes::heartbeat_interval(ctx.config.node_down);
    // Domain events of the other nodes (the implicit node's are watched by
    // `watch_domains`), one task each, for the nodes known so far.
    let mut watched = std::collections::HashSet::new();
    let mut watchers = tokio::task::JoinSet::new();
    loop {
        for n in ctx.nodes.all() {
            if n.name() == ctx.nodes.implicit() || !watched.insert(n.name().clone()) {
                continue;
            }
            if let Some(changes) = n.driver.domain_changes() {
                let (queue, stop) = (queue.clone(), stop.clone());
                watchers.spawn(watch_changes(changes, queue, stop));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = ctx.nodes.load(&ctx.store).await {
            tracing::warn!(error = %e, "cannot read the nodes; will retry");
            continue;
        }
        if let Err(e) = ctx.nodes.refresh(&ctx.store).await {
            tracing::warn!(error = %e, "cannot read the nodes; will retry");
            continue;
        }
        for (node, health) in ctx.nodes.heartbeat(&ctx.store).await {
            match ctx.store.hostings_on(&node).await {
                Ok(ids) => {
                    tracing::info!(%node, ?health, hostings = ids.len(), "node health changed; looking at its hostings");
                    for id in ids {
                        queue.add_now(id);
                    }
                }
                Err(e) => tracing::warn!(%node, error = %e, "cannot list the node's hostings"),
            }
        }
        if let Err(e) = super::drain::tick(&ctx, &queue).await {
            tracing::warn!(error = %e, "drain: cannot look at the draining nodes; will retry");
        }
    }
}

/// Queues the hosting of every domain the hypervisor reports as changed
/// (see `drivers::domain_events`): a domain destroyed, undefined or
/// redefined behind hostd's back is repaired at once instead of at the next
/// resync. Changes hostd made itself queue their hosting once more, which a
/// converged hosting answers with a no-op pass. Names that are no hosting's
/// domain are ignored; a hosting of another instance (same hypervisor)
/// finds no row here and is `Gone` at once.
async fn watch_domains(ctx: Arc<Context>, queue: Arc<queue::WorkQueue>, stop: Shutdown) {
    let Some(changes) = ctx.vm.domain_changes() else {
        return;
    };
    loop {
        let names = tokio::select! {
            _ = stop.cancelled() => return,
            n = changes.next() => n,
        };
        ctx.metrics.domain_events.inc_by(names.len() as u64);
        for name in names {
            if let Some(id) = super::names::domain_owner(&name) {
                queue.add_now(id);
            }
        }
    }
}

/// [`watch_domains`] for another node's driver.
async fn watch_changes(
    changes: Arc<crate::drivers::domain_events::DomainChanges>,
    queue: Arc<queue::WorkQueue>,
    stop: Shutdown,
) {
    loop {
        let names = tokio::select! {
            _ = stop.cancelled() => return,
            n = changes.next() => n,
        };
        for name in names {
            if let Some(id) = super::names::domain_owner(&name) {
                queue.add_now(id);
            }
        }
    }
}
