//! The reconciler: the only writer of reality. A level-triggered control loop
//! that compares desired Hostings (Postgres) with actual libvirt domains,
//! volumes and nginx routes, and converges them one idempotent step at a time.
//!
//! Wake-ups: Postgres `LISTEN` on every desired-state change, a periodic full
//! resync (which also repairs drift and collects orphans), and requeues.
//! Only the holder of the leader lease acts.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::config::Config;
use crate::domain::HostingId;
use crate::drivers::{ProxyDriver, VmDriver};
use crate::images::Catalog;
use crate::store::{lease::Lease, Store};

pub mod faults;
pub mod metrics;
pub mod queue;
pub mod reconcile;
pub mod resync;

pub use reconcile::{Action, ReconcileError};

/// A tiny cancellation token (the one piece of tokio-util we need).
pub mod tokio_util_shim {
    use std::sync::Arc;
    use tokio::sync::watch;

    /// Cooperative shutdown signal, cloneable.
    #[derive(Clone)]
    pub struct CancellationToken {
        tx: Arc<watch::Sender<bool>>,
        rx: watch::Receiver<bool>,
    }

    impl Default for CancellationToken {
        fn default() -> Self {
            let (tx, rx) = watch::channel(false);
            Self {
                tx: Arc::new(tx),
                rx,
            }
        }
    }

    impl CancellationToken {
        pub fn cancel(&self) {
            let _ = self.tx.send(true);
        }
        pub fn is_cancelled(&self) -> bool {
            *self.rx.borrow()
        }
        pub async fn cancelled(&self) {
            let mut rx = self.rx.clone();
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

pub use tokio_util_shim::CancellationToken as Shutdown;

/// Everything a reconcile needs: the store, the drivers, config and metrics.
pub struct Context {
    pub store: Store,
    pub vm: Arc<dyn VmDriver>,
    pub proxy: Arc<dyn ProxyDriver>,
    pub config: Config,
    pub catalog: Catalog,
    pub faults: faults::Faults,
    pub metrics: Arc<metrics::Metrics>,
    pub http: reqwest::Client,
    /// Per-hosting error backoff state (reset on success).
    backoff: Mutex<HashMap<HostingId, (ExponentialBackoff, u32)>>,
    /// When a graceful shutdown was requested, per hosting.
    pub(crate) shutdowns: Mutex<HashMap<HostingId, Instant>>,
}

impl Context {
    pub fn new(
        store: Store,
        vm: Arc<dyn VmDriver>,
        proxy: Arc<dyn ProxyDriver>,
        config: Config,
        metrics: Arc<metrics::Metrics>,
    ) -> Result<Arc<Context>, crate::images::ImageError> {
        let catalog = Catalog::load(&config.images_file, &config.state_dir)?;
        let faults = faults::Faults::parse(&config.faults).unwrap_or_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        Ok(Arc::new(Context {
            store,
            vm,
            proxy,
            config,
            catalog,
            faults,
            metrics,
            http,
            backoff: Mutex::new(HashMap::new()),
            shutdowns: Mutex::new(HashMap::new()),
        }))
    }

    /// The error policy: next delay for this hosting (exponential with jitter,
    /// capped), and how many consecutive failures it has had.
    pub fn error_policy(&self, id: HostingId) -> (Duration, u32) {
        let mut map = self.backoff.lock().unwrap();
        let entry = map.entry(id).or_insert_with(|| {
            let b = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_factor(2.0)
                .with_max_delay(self.config.backoff_max)
                .with_jitter()
                .without_max_times()
                .build();
            (b, 0)
        });
        entry.1 += 1;
        let d = entry
            .0
            .next()
            .unwrap_or(self.config.backoff_max)
            .min(self.config.backoff_max);
        (d, entry.1)
    }

    /// Resets backoff after a successful reconcile.
    pub fn reset_backoff(&self, id: HostingId) {
        self.backoff.lock().unwrap().remove(&id);
    }

    pub fn failures(&self, id: HostingId) -> u32 {
        self.backoff
            .lock()
            .unwrap()
            .get(&id)
            .map(|e| e.1)
            .unwrap_or(0)
    }
}

/// The controller: queue, workers, wake-up sources and the leader lease.
pub struct Controller {
    pub ctx: Arc<Context>,
    pub queue: Arc<queue::WorkQueue>,
}

impl Controller {
    pub fn new(ctx: Arc<Context>) -> Controller {
        Controller {
            ctx,
            queue: Arc::new(queue::WorkQueue::default()),
        }
    }

    /// Runs one reconcile of `id` and applies its outcome to the queue (requeue,
    /// backoff). Exposed so tests can drive the reconciler one step at a time.
    pub async fn reconcile_once(&self, id: HostingId) -> Result<Action, ReconcileError> {
        let r = reconcile::reconcile(&self.ctx, id).await;
        Metrics::inc(&self.ctx.metrics.reconciles);
        match &r {
            Ok(Action::Requeue(d)) => self.queue.add_at(id, Instant::now() + *d),
            Ok(Action::AwaitChange) | Ok(Action::Gone) => {}
            Err(e) => {
                Metrics::inc(&self.ctx.metrics.errors);
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
                    tracing::info!(instance = %ctx.config.instance, "acquired the reconciler leader lease");
                    ctx.metrics.is_leader.store(true, Relaxed);
                    self.clone().lead(&mut lease, &shutdown).await;
                    ctx.metrics.is_leader.store(false, Relaxed);
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
        if let Err(e) = ctx.vm.ensure_pool().await {
            tracing::error!(error = %e, "cannot prepare the storage pool; will retry");
        }
        let stop = Shutdown::default();
        let listener = tokio::spawn(listen(ctx.clone(), self.queue.clone(), stop.clone()));
        let workers = tokio::spawn(self.clone().work(stop.clone()));
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
                    ctx.metrics.last_pass_ms.store(started.elapsed().as_millis() as u64, Relaxed);
                    next_resync = Instant::now() + ctx.config.resync;
                }
                _ = lease_check.tick() => {
                    if !lease.check().await.unwrap_or(false) {
                        break;
                    }
                }
            }
        }
        stop.cancel();
        let _ = listener.await;
        let _ = workers.await;
    }

    /// Works the queue with bounded concurrency until `stop`.
    async fn work(self: Arc<Self>, stop: Shutdown) {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.ctx.config.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if stop.is_cancelled() {
                break;
            }
            self.ctx
                .metrics
                .queue_depth
                .store(self.queue.depth() as u64, Relaxed);
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

use metrics::Metrics;

/// Listens for desired-state changes and queues the changed hosting at once.
/// Reconnects with a delay when Postgres goes away; a resync after reconnecting
/// catches anything missed meanwhile.
async fn listen(ctx: Arc<Context>, queue: Arc<queue::WorkQueue>, stop: Shutdown) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(ctx.store.url()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
            }
        };
        if let Err(e) = listener.listen(crate::store::NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
        }
        // Changes made before LISTEN took effect sent notifications nobody
        // heard: look at every hosting once now that we are listening.
        if let Ok(records) = ctx.store.list_records().await {
            for r in records {
                queue.add_now(r.id);
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        if let Ok(id) = uuid::Uuid::parse_str(n.payload()) {
                            queue.add_now(HostingId(id));
                        }
                    }
                    Ok(None) => {
                        // Connection was lost and re-established: resync everything.
                        if let Ok(records) = ctx.store.list_records().await {
                            for r in records { queue.add_now(r.id); }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection broke; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
