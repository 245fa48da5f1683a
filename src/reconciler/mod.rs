//! The reconciler: the only writer of reality. A level-triggered control loop
//! that compares desired Hostings (Postgres) with actual libvirt domains,
//! volumes and nginx routes, and converges them one idempotent step at a time.
//!
//! Wake-ups: Postgres `LISTEN` on every desired-state change, a periodic full
//! resync (which also repairs drift and collects orphans), and requeues.
//! Only the holder of the leader lease acts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::config::Config;
use crate::domain::HostingId;
use crate::drivers::{ProxyDriver, RouteSpec, VmDriver};
use crate::images::Catalog;
use crate::store::{ReconcilerStats, Store};
use crate::telemetry::Metrics;

pub mod backup;
pub mod console;
pub mod controller;
pub mod names;
pub mod pool;
pub mod queue;
pub mod reconcile;
pub mod records;
pub mod render;
pub mod resync;
pub mod steps;

pub use controller::Controller;
pub use reconcile::{Action, ReconcileError};

/// Everything a reconcile needs: the store, the drivers, config and metrics.
pub struct Context {
    /// Desired state, status and events.
    pub store: Store,
    /// The hypervisor.
    pub vm: Arc<dyn VmDriver>,
    /// The host nginx.
    pub proxy: Arc<dyn ProxyDriver>,
    /// Validated settings (fault injection included).
    pub config: Config,
    /// This installation's id (in every marker it writes).
    pub installation: uuid::Uuid,
    /// The image catalogue (names → boot files).
    pub catalog: Catalog,
    /// Renders domain XML and seeds; computes desired-state hashes.
    pub render: render::Renderer,
    /// Prometheus metrics of this process.
    pub metrics: Arc<Metrics>,
    /// HTTP client of the readiness probe (no proxy, no redirects).
    pub http: reqwest::Client,
    /// The resync's copy of desired state.
    pub records: tokio::sync::Mutex<records::RecordCache>,
    /// Serializes admission decisions and holds what they are made from
    /// (see `steps::Pass::schedule`).
    pub(crate) scheduler: tokio::sync::Mutex<Ledger>,
    /// Backups allowed to run at once (`HOSTD_BACKUP_CONCURRENCY`).
    pub(crate) backup_slots: Arc<tokio::sync::Semaphore>,
    /// Per-hosting error backoff state (reset on success).
    backoff: Mutex<HashMap<HostingId, (ExponentialBackoff, u32)>>,
    /// When a graceful shutdown was requested, per hosting.
    pub(crate) shutdowns: Mutex<HashMap<HostingId, Instant>>,
    /// Console log size last copied to the store, and when (see `console`).
    pub(crate) console_seen: Mutex<HashMap<HostingId, (u64, Instant)>>,
    /// The controller's queue, so that a driver finishing work in the
    /// background (a route batch) can wake the hosting it was for.
    pub(crate) queue: std::sync::OnceLock<Arc<queue::WorkQueue>>,
    /// What to record once a submitted route is served: a repair (Warning)
    /// or a plain "routed", decided when the change was submitted.
    pub(crate) route_notes: Mutex<HashMap<HostingId, (crate::domain::Reason, String)>>,
}

impl Context {
    /// A waker for `id`: queues it now, if a controller runs this context.
    pub(crate) fn waker(&self, id: HostingId) -> Box<dyn FnOnce() + Send> {
        let q = self.queue.get().cloned();
        Box::new(move || {
            if let Some(q) = q {
                q.add_now(id);
            }
        })
    }

    pub fn new(
        store: Store,
        vm: Arc<dyn VmDriver>,
        proxy: Arc<dyn ProxyDriver>,
        config: Config,
        installation: uuid::Uuid,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Context>, crate::images::ImageError> {
        let catalog = Catalog::load(&config.images_file, &config.state_dir)?;
        let render = render::Renderer::new(&config, vm.pool_name(), installation);
        let slots = config.backups.concurrency as usize;
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
            installation,
            catalog,
            render,
            metrics,
            http,
            records: Default::default(),
            scheduler: tokio::sync::Mutex::new(Ledger::default()),
            backup_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            backoff: Mutex::new(HashMap::new()),
            shutdowns: Mutex::new(HashMap::new()),
            console_seen: Mutex::new(HashMap::new()),
            queue: std::sync::OnceLock::new(),
            route_notes: Mutex::new(HashMap::new()),
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

    /// The route a hosting should have: to its guest on `http`, or the 503
    /// page (`None`); on its own host name too when host routing is on.
    pub fn route_spec(&self, rec: &crate::store::HostingRecord, http: Option<u16>) -> RouteSpec {
        RouteSpec {
            hosting_id: rec.id,
            user_id: rec.user_id,
            http_port: http,
            vhost: self.config.sites.vhost(&rec.username),
        }
    }

    /// The leader's counters, as stored with its heartbeat.
    pub fn stats(&self) -> ReconcilerStats {
        let m = &self.metrics;
        ReconcilerStats {
            reconciles: m.reconciles.get(),
            errors: m.failures_total(),
            repairs: m.repairs.get(),
            resyncs: m.resyncs.get(),
            queue_depth: m.queue_depth.get().max(0) as u64,
            last_pass_ms: (m.last_resync_seconds.get() * 1000.0) as u64,
            is_leader: m.is_leader.get() == 1,
        }
    }

    /// Consecutive failures of one hosting (0 after a success).
    pub fn failures(&self, id: HostingId) -> u32 {
        self.backoff
            .lock()
            .unwrap()
            .get(&id)
            .map(|e| e.1)
            .unwrap_or(0)
    }
}

/// How long the admission ledger's rows are used before they are read again.
pub const LEDGER_TTL: Duration = Duration::from_secs(1);

/// Every hosting's part in capacity decisions, as of the last read (at most
/// [`LEDGER_TTL`] ago) plus the admissions and refusals made here since.
/// Admitting from it costs no query, where summing in SQL for each one made
/// mass creation quadratic. Only an admission makes a hosting hold room,
/// and admissions are made here alone (one leader, under the scheduler
/// lock), so rows older than the TTL can only overstate what is held (a
/// hosting deleted or stopped by hand in the database): a stale ledger
/// makes a hosting wait longer, never overcommits the host. Stops and
/// deletions done here update it at once. A resize of a running hosting is the
/// exception: it is seen within the TTL.
/// The host's resources are read with the rows: its memory and CPUs do not
/// change, and the pool's free space shrinks little in a second (new disks
/// are thin overlays).
#[derive(Debug, Default)]
pub struct Ledger {
    rows: HashMap<HostingId, crate::store::CapacityRow>,
    host: Option<crate::drivers::HostResources>,
    read_at: Option<Instant>,
    /// Admitted here, ports not yet recorded: the database does not show
    /// them as holding room yet, so a refresh keeps them admitted.
    admitting: std::collections::HashSet<HostingId>,
}

impl Ledger {
    /// Reads the rows and the host's resources again if they are older
    /// than [`LEDGER_TTL`]; returns the host's resources.
    pub(crate) async fn refresh(
        &mut self,
        store: &crate::store::Store,
        vm: &dyn VmDriver,
    ) -> Result<crate::drivers::HostResources, ReconcileError> {
        if let (Some(host), Some(t)) = (self.host, self.read_at) {
            if t.elapsed() < LEDGER_TTL {
                return Ok(host);
            }
        }
        let rows = store.capacity_rows().await?;
        let host = vm.resources().await?;
        self.rows = rows.into_iter().map(|r| (r.id, r)).collect();
        for id in &self.admitting {
            if let Some(r) = self.rows.get_mut(id) {
                (r.admitted, r.waiting) = (true, false);
            }
        }
        self.host = Some(host);
        self.read_at = Some(Instant::now());
        Ok(host)
    }

    /// What the others hold and older waiting hostings want, for `me`.
    pub(crate) fn usage(
        &self,
        me: (HostingId, chrono::DateTime<chrono::Utc>),
    ) -> crate::store::CapacityUsage {
        crate::capacity::usage(self.rows.values(), Some(me))
    }

    /// A hosting stopped or was deleted here: it holds nothing now (and
    /// waits for nothing), so the next admission may use its room at once.
    pub(crate) fn released(&mut self, id: HostingId) {
        self.rows.remove(&id);
    }

    /// A new hosting admitted by [`Ledger::decided`] gets its ports (outside
    /// the scheduler lock): until they are recorded, a refresh must not
    /// forget that it holds room.
    pub(crate) fn admitting(&mut self, id: HostingId) {
        self.admitting.insert(id);
    }

    /// The ports of a hosting being admitted are recorded (`true`: it holds
    /// room, as the database now says) or could not be (it holds nothing
    /// until it is decided again).
    pub(crate) fn admitted(&mut self, id: HostingId, recorded: bool) {
        self.admitting.remove(&id);
        if !recorded {
            self.rows.remove(&id);
        }
    }

    /// Records a decision made for `rec`: admitted (it holds room now) or
    /// told to wait.
    pub(crate) fn decided(&mut self, rec: &crate::store::HostingRecord, admitted: bool) {
        let row = crate::store::CapacityRow {
            id: rec.id,
            memory_mib: rec.spec.memory_mib as i64,
            vcpus: rec.spec.vcpus as i64,
            created_at: rec.created_at,
            admitted: admitted || rec.status.ssh_port.is_some(),
            waiting: !admitted,
            wants_to_run: rec.spec.running && rec.deletion_requested_at.is_none(),
        };
        self.rows.insert(rec.id, row);
    }
}
