//! The reconciler: the only writer of reality. A level-triggered control loop
//! that compares desired Hostings (Postgres) with actual libvirt domains,
//! volumes and nginx routes, and converges them one idempotent step at a time.
//!
//! Wake-ups: Postgres `LISTEN` on every desired-state change, a periodic full
//! resync (which also repairs drift and collects orphans), and requeues.
//! Only the holder of the leader lease acts.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::Config;
use crate::domain::HostingId;
use crate::drivers::{ProxyDriver, RouteSpec, VmDriver};
use crate::images::Catalog;
use crate::store::{ReconcilerStats, Store};
use crate::telemetry::Metrics;

pub mod action;
pub mod agent;
pub mod backup;
pub mod boot_gate;
pub mod clone_templates;
pub mod console;
pub mod controller;
pub mod drain;
pub mod fenced;
pub mod fenced_proxy;
pub mod memory;
pub mod names;
pub mod nodes;
pub mod offsite;
pub mod quarantine;
pub mod queue;
pub mod reconcile;
pub mod records;
pub mod render;
pub mod resync;
pub mod space;
pub mod stats;
pub mod steps;
pub mod tls;
pub mod warm_pool;

pub use action::{Action, ReconcileError};
pub use controller::Controller;
pub use steps::schedule::Ledger;

/// Everything a reconcile needs: the store, the drivers, config and metrics.
pub struct Context {
    /// Desired state, status and events.
    pub store: Store,
    /// The implicit node's hypervisor (`HOSTD_LIBVIRT_URI`): templates and
    /// host checks. A hosting's own node's driver comes from [`Context::nodes`].
    pub vm: Arc<dyn VmDriver>,
    /// Every node: connections, heartbeats, addresses (see `nodes`).
    pub nodes: nodes::Nodes,
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
    /// At most `HOSTD_BOOT_CONCURRENCY` guests booting at once (see `boot_gate`).
    pub boot_gate: boot_gate::BootGate,
    /// Templates for clones (see `clone_templates`).
    pub templates: clone_templates::Templates,
    /// Guest-agent calls, run off the workers (see `agent`).
    pub agent: agent::AgentCalls,
    /// Where replaced and orphaned disks and deleted hostings' backups are
    /// kept (`HOSTD_QUARANTINE_DAYS`).
    pub quarantine: quarantine::Quarantine,
    /// What is remembered of each hosting between passes (backoff, a
    /// shutdown asked for, the console copied, a route's note).
    pub memory: memory::Memory,
    /// HTTPS: certificate files, the ACME client, the DNS resolver.
    pub tls: tls::Tls,
    /// The off-host backup store and key (`HOSTD_BACKUP_S3_URL`), if set.
    pub offsite: Option<offsite::Offsite>,
    /// The controller's queue, so that a driver finishing work in the
    /// background (a route batch) can wake the hosting it was for.
    pub(crate) queue: std::sync::OnceLock<Arc<queue::WorkQueue>>,
    /// Per-hosting statistics between rounds (see `stats`).
    pub sampler: stats::Sampler,
}

/// Why a hosting's node cannot be used now.
#[derive(Debug, Clone)]
pub struct NodeAway {
    pub node: crate::domain::NodeName,
    /// Silent for `HOSTD_NODE_DOWN_SECS` or more (else: briefly unreachable).
    pub down: bool,
    /// Declared dead by an operator (`hostd node fence`).
    pub fenced: bool,
    pub message: String,
}

/// Why a reconciler context cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Image(#[from] crate::images::ImageError),
    #[error("off-host backups: {0}")]
    Offsite(String),
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
    ) -> Result<Arc<Context>, ContextError> {
        // Its own pool slot: fenced by the leader term once it leads,
        // while the API's statements stay on the shared pool; every
        // hypervisor's changes and the host nginx's are fenced by the same
        // term.
        let store = store.detached();
        let vm = fenced::Fenced::wrap(vm, store.clone());
        let proxy = fenced_proxy::FencedProxy::wrap(proxy, store.clone());
        let catalog = Catalog::load(&config.images_file, &config.state_dir)?;
        let offsite = match &config.backups.offsite {
            Some(p) => Some(offsite::Offsite::new(p, installation).map_err(ContextError::Offsite)?),
            None => None,
        };
        let render = render::Renderer::new(&config, vm.storage_pool_name(), installation);
        let slots = config.backups.concurrency as usize;
        let http = reqwest::Client::builder()
            .no_proxy()
            // The host nginx leaves the readiness probe out of the site log
            // (statistics, egress usage) when it comes from 127.0.0.1.
            .user_agent(crate::drivers::probe::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        let boot_gate = boot_gate::BootGate::new(config.boot_concurrency);
        let quarantine = quarantine::Quarantine::new(&config.state_dir, config.quarantine);
        let tls = tls::Tls::new(&config);
        let templates = clone_templates::Templates::new(&config.state_dir, &config.instance);
        let factory: nodes::DriverFactory = {
            let (instance, state) = (config.instance.clone(), config.state_dir.clone());
            let store = store.clone();
            Box::new(move |n: &crate::store::Node| -> Arc<dyn VmDriver> {
                let driver = Arc::new(crate::drivers::libvirt::LibvirtDriver::for_node(
                    n.uri.as_str(),
                    n.name.as_str(),
                    &instance,
                    installation,
                    &state,
                ));
                fenced::Fenced::wrap(driver, store.clone())
            })
        };
        let nodes = nodes::Nodes::new(
            config.node_name.clone(),
            &config.libvirt_uri,
            vm.clone(),
            factory,
            config.node_down,
        );
        Ok(Arc::new(Context {
            nodes,
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
            boot_gate,
            templates,
            agent: Default::default(),
            quarantine,
            memory: Default::default(),
            tls,
            offsite,
            queue: std::sync::OnceLock::new(),
            sampler: Default::default(),
        }))
    }

    /// The driver of `rec`'s node, if that node is usable now (a hosting not
    /// placed yet: the implicit node's, which placement replaces).
    pub fn node_driver(
        &self,
        rec: &crate::store::HostingRecord,
    ) -> Result<Arc<dyn VmDriver>, NodeAway> {
        let Some(name) = rec.node.as_ref() else {
            return Ok(self.vm.clone());
        };
        let Some(h) = self.nodes.get(name) else {
            return Err(NodeAway {
                node: name.clone(),
                down: false,
                fenced: false,
                message: "not connected yet".into(),
            });
        };
        match h.health {
            nodes::Health::Ready => Ok(h.driver),
            health => Err(NodeAway {
                node: name.clone(),
                down: health == nodes::Health::Down,
                fenced: h.row.fenced_at.is_some(),
                message: h
                    .row
                    .message
                    .clone()
                    .unwrap_or_else(|| "its libvirt does not answer".into()),
            }),
        }
    }

    /// The error policy: next delay for this hosting (exponential with jitter,
    /// capped), and how many consecutive failures it has had.
    pub fn error_policy(&self, id: HostingId) -> (Duration, u32) {
        let max = self.config.backoff_max;
        self.memory.with(id, |m| {
            let entry = m.backoff.get_or_insert_with(|| {
                let b = ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(500))
                    .with_factor(2.0)
                    .with_max_delay(max)
                    .with_jitter()
                    .without_max_times()
                    .build();
                (b, 0)
            });
            entry.1 += 1;
            let d = entry.0.next().unwrap_or(max).min(max);
            (d, entry.1)
        })
    }

    /// Resets backoff after a successful reconcile.
    pub fn reset_backoff(&self, id: HostingId) {
        self.memory.with(id, |m| m.backoff = None);
    }

    /// Moves volume `name` to quarantine (a simulated volume without a file
    /// is deleted instead: there is nothing to keep) and drops the hosting's
    /// older quarantined entry of that kind. Where it went, if anywhere.
    pub async fn quarantine_volume(
        &self,
        vm: &dyn VmDriver,
        name: &str,
    ) -> Result<Option<std::path::PathBuf>, ReconcileError> {
        let to = self
            .quarantine
            .target(name, chrono::Utc::now())
            .map_err(crate::drivers::DriverError::from)?;
        match vm.quarantine_volume(name, &to).await? {
            Some(to) => {
                let q = self.quarantine.clone();
                let kept = to.clone();
                let _ = tokio::task::spawn_blocking(move || q.bound(&kept)).await;
                self.account_quarantine().await;
                Ok(Some(to))
            }
            None => Ok(None),
        }
    }

    /// Records what each hosting's quarantined entries hold (their backup
    /// quota counts it; the API shows it). A failure is logged: the next
    /// resync writes it again.
    pub async fn account_quarantine(&self) {
        let q = self.quarantine.clone();
        let Ok(bytes) = tokio::task::spawn_blocking(move || q.bytes_by_hosting()).await else {
            return;
        };
        if let Err(e) = self.store.set_quarantine_bytes(&bytes).await {
            tracing::warn!(error = %e, "cannot record the quarantine's size per hosting");
        }
    }

    /// Gives `id`'s place in the boot gate back (ready, failed, stopped,
    /// gone) and wakes whoever the place now awaits.
    pub fn release_boot(&self, id: HostingId) {
        let next = self.boot_gate.release(id);
        if let Some(q) = self.queue.get() {
            for n in next {
                q.add_now(n);
            }
        }
    }

    /// Forgets a hosting that is gone: everything remembered of it here,
    /// by the renderer and by the nginx driver. The one place that does it,
    /// for the finalizer and for a hosting found gone.
    pub fn forget(&self, id: HostingId) {
        self.memory.forget(id);
        self.agent.forget(id);
        self.release_boot(id);
        self.render.forget(id);
        self.proxy.forget(id);
    }

    /// The route a hosting should have: to its guest on `http`, or the 503
    /// page (`None`); on its own host name too when host routing is on.
    pub fn route_spec(&self, rec: &crate::store::HostingRecord, http: Option<u16>) -> RouteSpec {
        self.route_spec_on(rec, rec.node.as_ref(), http)
    }

    /// [`Context::route_spec`] for a hosting on `node` (placed by the pass
    /// that asks, so not in its record yet).
    pub fn route_spec_on(
        &self,
        rec: &crate::store::HostingRecord,
        node: Option<&crate::domain::NodeName>,
        http: Option<u16>,
    ) -> RouteSpec {
        RouteSpec {
            hosting_id: rec.id,
            user_id: rec.user_id,
            http_port: http,
            upstream_host: self.nodes.address(node),
            hosts: (self.config.sites.vhost(&rec.username).into_iter())
                .chain(rec.domains.iter().map(|d| d.to_string()))
                .collect(),
            hsts: rec.spec.hsts,
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
            host_checks: None,
        }
    }

    /// Consecutive failures of one hosting (0 after a success).
    pub fn failures(&self, id: HostingId) -> u32 {
        self.memory
            .with(id, |m| m.backoff.as_ref().map(|e| e.1))
            .unwrap_or(0)
    }
}
