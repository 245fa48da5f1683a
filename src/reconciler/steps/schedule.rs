//! Step 0, scheduling: admission of a new hosting (or one being started
//! again) against the host's capacity, oldest first and tenants before the
//! warm pool; and the [`Ledger`] the decisions are made from.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Pass;
use crate::domain::{ConditionType as C, EventType, HostingId, NodeName, Phase, Reason};
use crate::reconciler::nodes::{Health, NodeHandle};
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
    /// Step 0: scheduling. A new hosting is placed on a node and admitted
    /// only if it fits there, oldest first; a stopped one being started
    /// again is admitted on its own node. The decision is made under the
    /// scheduler lock, so the next one sees it; the placement and the new
    /// hosting's ports are then written outside it (the ledger keeps it
    /// admitted meanwhile), so admissions are not serialised behind the
    /// database. One that does not fit waits with `Scheduled=False`:
    /// `Some(requeue)`.
    pub async fn schedule(&mut self) -> Result<Option<Action>, ReconcileError> {
        // Not placed: new, or evacuated from a fenced node (it keeps its
        // ports, so its URLs and SSH port do not change).
        let unplaced = self.node.is_none();
        let new = self.st.ssh_port.is_none() || unplaced;
        let starting = self.rec.spec.running
            && (self.rec.status.phase == Phase::Stopped || crate::capacity::waiting(self.rec));
        if !new && !starting {
            return Ok(None);
        }
        let verdict = {
            let mut ledger = self.ctx.scheduler.lock().await;
            // A cordon, fence or new node applies to decisions made from
            // at most LEDGER_TTL after it was written.
            if ledger.nodes_stale() {
                self.ctx.nodes.refresh(&self.ctx.store).await?;
                ledger.nodes_read();
            }
            let nodes = match &self.node {
                Some(n) => self.ctx.nodes.get(n).into_iter().collect(),
                None => self.ctx.nodes.all(),
            };
            ledger.refresh(&self.ctx.store, &nodes).await?;
            let policy = &self.ctx.config.capacity;
            let me = (self.id(), self.rec.created_at);
            let verdict = place(&ledger, &nodes, self.rec, me, policy, new);
            let node = verdict.as_ref().ok().map(|(n, _)| n.clone());
            ledger.decided(
                self.rec,
                node.clone().or(self.node.clone()),
                verdict.is_ok(),
            );
            if verdict.is_ok() && new {
                ledger.admitting(self.id());
            }
            verdict
        };
        match verdict {
            Ok((node, detail)) => {
                if new {
                    let written = self.placed(&node, &detail).await;
                    // An evacuated hosting's ports are recorded already.
                    let ports = match written {
                        Ok(()) => self.ports().await,
                        Err(e) => Err(e),
                    };
                    let recorded = self.st.ssh_port.is_some();
                    let mut ledger = self.ctx.scheduler.lock().await;
                    ledger.admitted(self.id(), recorded);
                    drop(ledger);
                    ports?;
                }
                let msg = match self.ctx.nodes.count() {
                    1 => "the host has room for this hosting".to_string(),
                    _ => format!("node {node} has room for this hosting"),
                };
                self.condition(C::Scheduled, true, Reason::Admitted, &msg);
                if !new {
                    self.write_status().await?;
                }
                // A new hosting's condition is written with its disk step's
                // status, later in this pass (a pass cut short before that
                // is decided again: the ports say it was admitted).
                Ok(None)
            }
            Err((_, msg)) if self.rec.warm => {
                // A pool guest never waits for room: it is dropped.
                tracing::info!(message = %msg, "warm pool: no room for this pool guest; dropping it");
                self.ctx.store.drop_warm_guest(self.id()).await?;
                Ok(Some(Action::AwaitChange))
            }
            Err((reason, mut msg)) => {
                // Tenants come first: a warm-pool guest makes room.
                if self.ctx.store.evict_warm_guest().await? {
                    msg.push_str("; a warm-pool guest is being removed to make room");
                }
                let first = !crate::capacity::waiting(self.rec);
                self.condition(C::Scheduled, false, reason, &msg);
                self.st.message = Some(msg.clone());
                if self.st.phase != Phase::Stopped {
                    self.st.phase = Phase::Pending;
                }
                self.write_status().await?;
                if first {
                    self.event(EventType::Warning, reason, &msg);
                }
                self.ctx.reset_backoff(self.id());
                Ok(Some(Action::Requeue(Duration::from_secs(5))))
            }
        }
    }

    /// Writes a new hosting's placement (once: a decision made by an
    /// earlier pass wins) and makes this pass act on that node.
    async fn placed(&mut self, node: &NodeName, detail: &str) -> Result<(), ReconcileError> {
        if self.node.as_ref() == Some(node) {
            return Ok(());
        }
        let bound = self.ctx.store.place(self.id(), node).await?;
        let Some(vm) = self.ctx.nodes.driver(Some(&bound)) else {
            return Err(ReconcileError::Driver(crate::drivers::DriverError::Other(
                format!("node {bound} is not connected"),
            )));
        };
        if self.ctx.nodes.count() > 1 {
            let msg = format!("placed on node {bound}: {detail}");
            self.event(EventType::Normal, Reason::Placed, &msg);
        }
        self.node = Some(bound);
        self.vm = vm;
        self.fault("after_node_placed").await
    }
}

/// Chooses where a hosting runs: among `nodes` (its own node only, once it
/// is placed), those that are ready, schedulable and have room for it
/// (see [`crate::capacity::admit`]); of those, the one with the most room
/// left afterwards (memory and vCPUs, as fractions of the node's budget),
/// plus a small random term so that equal nodes share a burst. The error
/// is the reason and message of the refusal.
pub(crate) fn place(
    ledger: &Ledger,
    nodes: &[NodeHandle],
    rec: &crate::store::HostingRecord,
    me: (HostingId, chrono::DateTime<chrono::Utc>),
    policy: &crate::config::CapacityPolicy,
    new: bool,
) -> Result<(NodeName, String), (Reason, String)> {
    use rand::Rng;
    let mut best: Option<(f64, NodeName, String)> = None;
    let mut refusals: Vec<(NodeName, Reason, String)> = Vec::new();
    let mut rng = rand::thread_rng();
    for n in nodes {
        let name = n.name();
        let host = match ledger.host(name) {
            Some(h) if n.placeable() || (!new && n.health == Health::Ready) => h,
            _ => {
                let why = match (n.health, n.row.schedulable) {
                    (Health::Ready, false) => "cordoned",
                    (Health::Ready, true) => "its resources are not known yet",
                    _ => "not ready",
                };
                refusals.push((name.clone(), Reason::NoNodeFits, why.to_string()));
                continue;
            }
        };
        let usage = ledger.usage(name, me);
        match crate::capacity::admit(&usage, rec, &host, policy, new) {
            Ok(()) => {
                let b = crate::capacity::budget(&host, policy);
                let mem = u64::from(rec.spec.memory_mib.get());
                let cpu = u64::from(rec.spec.vcpus.get());
                let taken_mem = (usage.memory_mib + usage.queued_memory_mib).max(0) as u64;
                let taken_cpu = (usage.vcpus + usage.queued_vcpus).max(0) as u64;
                let free_mem = b.memory_mib.saturating_sub(taken_mem + mem);
                let free_cpu = b.vcpus.saturating_sub(taken_cpu + cpu);
                let score = free_mem as f64 / b.memory_mib.max(1) as f64
                    + 0.5 * free_cpu as f64 / b.vcpus.max(1) as f64
                    + rng.gen_range(0.0..0.05);
                let detail = format!(
                    "{free_mem} of {} MiB and {free_cpu} of {} vCPUs left there",
                    b.memory_mib, b.vcpus
                );
                if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                    best = Some((score, name.clone(), detail));
                }
            }
            Err((reason, msg)) => refusals.push((name.clone(), reason, msg)),
        }
    }
    if let Some((_, name, detail)) = best {
        return Ok((name, detail));
    }
    match refusals.as_slice() {
        [] => Err((
            Reason::NoNodeFits,
            "waiting for a node: none is known yet".to_string(),
        )),
        // One node: its own words (what a one-machine install always said).
        [(_, reason, msg)] if nodes.len() == 1 && *reason != Reason::NoNodeFits => {
            Err((*reason, msg.clone()))
        }
        all => {
            let same = all.iter().all(|(_, r, _)| *r == all[0].1);
            let reason = if same { all[0].1 } else { Reason::NoNodeFits };
            let each: Vec<String> = all.iter().map(|(n, _, m)| format!("{n}: {m}")).collect();
            Err((
                reason,
                format!("no node has room for it ({})", each.join("; ")),
            ))
        }
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
    /// Each ready node's resources (capacity overrides applied).
    hosts: HashMap<NodeName, crate::drivers::HostResources>,
    read_at: Option<Instant>,
    /// When the nodes table (cordons, fences, new nodes) was last read.
    nodes_read_at: Option<Instant>,
    /// Admitted here, ports not yet recorded: the database does not show
    /// them as holding room yet, so a refresh keeps them admitted.
    admitting: std::collections::HashSet<HostingId>,
}

impl Ledger {
    /// Reads the rows and the resources of `nodes` again if they are older
    /// than [`LEDGER_TTL`] (or a node's are missing).
    pub(crate) async fn refresh(
        &mut self,
        store: &crate::store::Store,
        nodes: &[NodeHandle],
    ) -> Result<(), ReconcileError> {
        let fresh = self.read_at.is_some_and(|t| t.elapsed() < LEDGER_TTL);
        let ready: Vec<&NodeHandle> = nodes.iter().filter(|n| n.health == Health::Ready).collect();
        if fresh && ready.iter().all(|n| self.hosts.contains_key(n.name())) {
            return Ok(());
        }
        let rows = store.capacity_rows().await?;
        let reads = ready.iter().map(|n| n.driver.resources());
        let reads = futures_util::future::join_all(reads).await;
        for (n, r) in ready.iter().zip(reads) {
            match r {
                Ok(r) => {
                    let r = crate::reconciler::nodes::apply_overrides(&n.row, r);
                    self.hosts.insert(n.name().clone(), r);
                }
                // One node: its error is the pass's (as before nodes).
                Err(e) if nodes.len() == 1 => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(node = %n.name(), error = %e, "cannot read the node's resources")
                }
            }
        }
        self.rows = rows.into_iter().map(|r| (r.id, r)).collect();
        for id in &self.admitting {
            if let Some(r) = self.rows.get_mut(id) {
                (r.admitted, r.waiting) = (true, false);
            }
        }
        self.read_at = Some(Instant::now());
        Ok(())
    }

    /// Whether the nodes table was read more than [`LEDGER_TTL`] ago.
    pub(crate) fn nodes_stale(&self) -> bool {
        self.nodes_read_at.is_none_or(|t| t.elapsed() >= LEDGER_TTL)
    }

    /// The nodes table was just read.
    pub(crate) fn nodes_read(&mut self) {
        self.nodes_read_at = Some(Instant::now());
    }

    /// A node's resources as last read.
    pub(crate) fn host(&self, node: &NodeName) -> Option<crate::drivers::HostResources> {
        self.hosts.get(node).copied()
    }

    /// What the others hold on `node` and older waiting hostings want
    /// there, for `me`. Older hostings not placed yet count against every
    /// node: a younger one never overtakes them.
    pub(crate) fn usage(
        &self,
        node: &NodeName,
        me: (HostingId, chrono::DateTime<chrono::Utc>),
    ) -> crate::store::CapacityUsage {
        let rows = (self.rows.values()).filter(|r| r.node.as_ref().is_none_or(|n| n == node));
        crate::capacity::usage(rows, Some(me))
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
    pub(crate) fn decided(
        &mut self,
        rec: &crate::store::HostingRecord,
        node: Option<NodeName>,
        admitted: bool,
    ) {
        let row = crate::store::CapacityRow {
            id: rec.id,
            node,
            memory_mib: i64::from(rec.spec.memory_mib.get()),
            vcpus: i64::from(rec.spec.vcpus.get()),
            created_at: rec.created_at,
            admitted: admitted || rec.status.ssh_port.is_some(),
            waiting: !admitted,
            wants_to_run: rec.spec.running && rec.deletion_requested_at.is_none(),
        };
        self.rows.insert(rec.id, row);
    }
}
