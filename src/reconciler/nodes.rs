//! Nodes: one libvirt connection per hypervisor host, their heartbeats, and
//! where each hosting runs.
//!
//! The nodes table is desired state (the operator adds, cordons and removes
//! nodes); [`Nodes::refresh`] opens a driver per node and drops those of
//! removed ones. [`Nodes::heartbeat`] pings every node (with libvirt's
//! keepalive on remote connections) and records what it found:
//!
//! ```text
//!   ping ok ───────────────────────────────▶ Ready
//!   ping fails, last good one < DOWN_SECS ─▶ Unreachable (its hostings wait, quietly)
//!   ping fails, last good one ≥ DOWN_SECS ─▶ Down (NodeReady=False; its hostings Unknown)
//! ```
//!
//! Nothing on a node that is not Ready is touched, and nothing of it is
//! recreated elsewhere by itself: its disks are local, so only an operator
//! (evacuation from backups) may decide that. When a node's state changes,
//! its hostings are queued: when it returns, drift repair resumes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::{NodeAddress, NodeName};
use crate::drivers::{HostResources, VmDriver};
use crate::store::{Node, Store};

/// How long one heartbeat may take per node before it counts as failed.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the nodes are pinged (and the table read again).
pub fn heartbeat_interval(down_after: Duration) -> Duration {
    (down_after / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// What the reconciler knows of a node right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The last heartbeat answered.
    Ready,
    /// Not answering, for less than `HOSTD_NODE_DOWN_SECS` (or not tried yet).
    Unreachable,
    /// Silent for `HOSTD_NODE_DOWN_SECS` or more.
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "Ready",
            Health::Unreachable => "Unreachable",
            Health::Down => "Down",
        }
    }
}

/// One node: its row, its driver and its health.
#[derive(Clone)]
pub struct NodeHandle {
    pub row: Node,
    pub driver: Arc<dyn VmDriver>,
    pub health: Health,
    /// What the last good heartbeat read (capacity overrides applied).
    pub resources: Option<HostResources>,
    last_ok: Option<Instant>,
    since: Instant,
    /// The storage pool was made ready on this connection.
    pool_ready: bool,
}

impl NodeHandle {
    pub fn name(&self) -> &NodeName {
        &self.row.name
    }

    pub fn address(&self) -> NodeAddress {
        self.row.address
    }

    /// New hostings may be placed here now.
    pub fn placeable(&self) -> bool {
        self.health == Health::Ready
            && self.row.schedulable
            && self.row.fenced_at.is_none()
            && self.resources.is_some()
    }
}

/// Makes the driver of a node added by the operator.
pub type DriverFactory = Box<dyn Fn(&Node) -> Arc<dyn VmDriver> + Send + Sync>;

/// Every node, by name.
pub struct Nodes {
    implicit: NodeName,
    implicit_uri: String,
    loaded: tokio::sync::Mutex<bool>,
    /// `load` has run (read on every reconcile without taking the lock).
    ready: std::sync::atomic::AtomicBool,
    local: Arc<dyn VmDriver>,
    factory: DriverFactory,
    down_after: Duration,
    nodes: RwLock<HashMap<NodeName, NodeHandle>>,
}

impl Nodes {
    /// The implicit node (`implicit`, reached by `local`) and, once
    /// refreshed, those of the table; others' drivers come from `factory`.
    pub fn new(
        implicit: NodeName,
        implicit_uri: &str,
        local: Arc<dyn VmDriver>,
        factory: DriverFactory,
        down_after: Duration,
    ) -> Nodes {
        Nodes {
            implicit,
            implicit_uri: implicit_uri.to_string(),
            loaded: Default::default(),
            ready: Default::default(),
            local,
            factory,
            down_after,
            nodes: Default::default(),
        }
    }

    /// The implicit node's name (`HOSTD_NODE_NAME`).
    pub fn implicit(&self) -> &NodeName {
        &self.implicit
    }

    /// One node, if it is known.
    pub fn get(&self, name: &NodeName) -> Option<NodeHandle> {
        self.nodes.read().unwrap().get(name).cloned()
    }

    /// How many nodes are known.
    pub fn count(&self) -> usize {
        self.nodes.read().unwrap().len()
    }

    /// Every known node, by name.
    pub fn all(&self) -> Vec<NodeHandle> {
        let mut v: Vec<_> = self.nodes.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.row.name.cmp(&b.row.name));
        v
    }

    /// The driver of `node` (the implicit node's for a hosting not placed
    /// yet: nothing of it exists anywhere else), or `None` for a node
    /// unknown here (removed, or the table not read yet).
    pub fn driver(&self, node: Option<&NodeName>) -> Option<Arc<dyn VmDriver>> {
        match node {
            None => Some(self.local.clone()),
            Some(n) if *n == self.implicit => Some(self.local.clone()),
            Some(n) => self.get(n).map(|h| h.driver),
        }
    }

    /// Where the host reaches `node`'s forwarded ports.
    pub fn address(&self, node: Option<&NodeName>) -> NodeAddress {
        node.and_then(|n| self.get(n))
            .map_or(NodeAddress::LOOPBACK, |h| h.address())
    }

    /// Where the guests of `node` forward their ports: its address (HTTP)
    /// and its SSH address (`None`: `HOSTD_SSH_BIND`).
    pub fn binds(&self, node: Option<&NodeName>) -> (NodeAddress, Option<std::net::IpAddr>) {
        match node.and_then(|n| self.get(n)) {
            Some(h) => (h.address(), h.row.ssh_address),
            None => (NodeAddress::LOOPBACK, None),
        }
    }

    /// Records the implicit node, reads the table and pings every node:
    /// what a leader does as its term starts. Later calls do nothing.
    pub async fn load(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut loaded = self.loaded.lock().await;
        if *loaded {
            return Ok(());
        }
        let uri = crate::domain::NodeUri::parse(&self.implicit_uri)?;
        store.ensure_implicit_node(&self.implicit, &uri).await?;
        self.refresh(store).await?;
        self.heartbeat(store).await;
        *loaded = true;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Reads the nodes table again: opens drivers for new nodes (and for a
    /// changed URI), drops removed ones.
    pub async fn refresh(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        let rows = store.list_nodes().await?;
        let mut map = self.nodes.write().unwrap();
        map.retain(|name, _| rows.iter().any(|r| &r.name == name));
        for row in rows {
            let same_uri = map.get(&row.name).map(|h| h.row.uri == row.uri);
            match same_uri {
                Some(true) => {
                    let h = map.get_mut(&row.name).expect("present");
                    // The observed columns are this process's to know.
                    let (ready, message) = (h.row.ready, h.row.message.take());
                    h.row = Node {
                        ready,
                        message,
                        ..row
                    };
                }
                _ => {
                    let driver = if row.name == self.implicit {
                        self.local.clone()
                    } else {
                        (self.factory)(&row)
                    };
                    let handle = NodeHandle {
                        driver,
                        health: Health::Unreachable,
                        resources: None,
                        last_ok: None,
                        since: Instant::now(),
                        pool_ready: false,
                        row,
                    };
                    map.insert(handle.row.name.clone(), handle);
                }
            }
        }
        Ok(())
    }

    /// Pings every node at once, updates their health and records it in the
    /// table. Returns the nodes whose health changed (their hostings are
    /// to be looked at again).
    pub async fn heartbeat(&self, store: &Store) -> Vec<(NodeName, Health)> {
        let handles = self.all();
        let pings = handles.iter().map(|h| async move {
            let r = tokio::time::timeout(PING_TIMEOUT, async {
                if !h.pool_ready {
                    h.driver.ensure_storage_pool().await?;
                }
                h.driver.ping().await?;
                h.driver.resources().await
            })
            .await;
            match r {
                Ok(Ok(res)) => Ok(res),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} s", PING_TIMEOUT.as_secs())),
            }
        });
        let results = futures_util::future::join_all(pings).await;
        let now = Instant::now();
        let mut changed = Vec::new();
        for (h, r) in handles.iter().zip(results) {
            let (health, resources, message) = match &r {
                Ok(res) => (Health::Ready, Some(apply_overrides(&h.row, *res)), None),
                Err(e) => {
                    let silent = now - h.last_ok.unwrap_or(h.since);
                    let health = if silent >= self.down_after {
                        Health::Down
                    } else {
                        Health::Unreachable
                    };
                    let msg = format!(
                        "libvirt at {} does not answer ({e}); silent for {} s",
                        h.row.uri,
                        silent.as_secs()
                    );
                    (health, None, Some(msg))
                }
            };
            {
                let mut map = self.nodes.write().unwrap();
                if let Some(m) = map.get_mut(h.name()) {
                    if health != m.health {
                        changed.push((m.row.name.clone(), health));
                        match health {
                            Health::Ready => tracing::info!(node = %m.row.name, "node is ready"),
                            Health::Down => {
                                tracing::error!(node = %m.row.name, message = message.as_deref().unwrap_or(""), "node is DOWN: its hostings are Unknown until it returns or is evacuated")
                            }
                            Health::Unreachable => {
                                tracing::warn!(node = %m.row.name, message = message.as_deref().unwrap_or(""), "node does not answer")
                            }
                        }
                    }
                    m.health = health;
                    m.row.ready = health == Health::Ready;
                    m.row.health = health.as_str().to_string();
                    m.row.message = message.clone();
                    if r.is_ok() {
                        m.last_ok = Some(now);
                        m.pool_ready = true;
                        m.resources = resources;
                    } else {
                        // A new connection prepares the pool again.
                        m.pool_ready = false;
                    }
                }
            }
            let raw = r.as_ref().ok();
            if let Err(e) = store
                .node_heartbeat(h.name(), health.as_str(), message.as_deref(), raw)
                .await
            {
                tracing::warn!(node = %h.name(), error = %e, "cannot record the node's heartbeat");
            }
        }
        changed
    }
}

/// A node's resources with the operator's capacity overrides applied.
pub fn apply_overrides(row: &Node, mut r: HostResources) -> HostResources {
    if let Some(m) = row.memory_mib {
        r.memory_mib = m;
    }
    if let Some(v) = row.vcpus {
        r.cpus = v;
    }
    r
}
