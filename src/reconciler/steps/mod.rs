//! The steps of converging one hosting, in order, one file each:
//! [`schedule`], ports and [`disk`], a move to another node ([`moves`]), [`seed`], definition and [`power`]
//! (a new hosting's first start as a [`clone`] of a template)
//! (and stop, when it should not run), [`route`], [`readiness`]; [`backup`]
//! and restore. This file holds the [`Pass`] they share: its status, its
//! events and its fault points.
//! Each step looks before it acts, changes one kind of resource, records what
//! it did as an event, and ends at its fault point, so a pass cut short
//! anywhere is finished by the next one.

use std::time::Duration;

use super::{Context, ReconcileError};
use crate::domain::{
    remove_condition, set_condition, ConditionType as C, EventType, HostingId, Phase, Reason,
};
use crate::drivers::ObservedDomain;
use crate::store::{HostingRecord, NewEvent, ObservedStatus};

pub mod backup;
pub mod clone;
pub mod disk;
pub mod moves;
pub mod offsite;
pub mod power;
pub mod readiness;
pub mod route;
pub mod schedule;
pub mod seed;

/// How soon a booting guest is probed again. Each look costs a few local
/// calls; a long interval would add half of itself to every POST → Ready.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How often a hosting queued at the boot gate asks again.
pub const BOOT_WAIT: Duration = Duration::from_secs(1);

/// How long a hosting whose guest-agent call runs waits before it looks
/// again by itself; the call's end normally wakes it long before.
pub const AGENT_WAIT: Duration = Duration::from_secs(5);

/// How long a hosting whose route is in a batch waits before it looks again
/// by itself; the batch's end normally wakes it long before.
pub const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// One pass over one hosting: its desired record, the status being built, and
/// what earlier steps found.
pub struct Pass<'a> {
    pub ctx: &'a Context,
    pub rec: &'a HostingRecord,
    /// The hypervisor of the hosting's node (the implicit node's until the
    /// schedule step places a new hosting).
    pub vm: std::sync::Arc<dyn crate::drivers::VmDriver>,
    /// The node it is placed on (set by the schedule step for a new one).
    pub node: Option<crate::domain::NodeName>,
    /// The status this pass will write.
    pub st: ObservedStatus,
    /// The disk step replaced the disk (a restore): the guest was stopped on
    /// purpose, so starting it again is no drift repair.
    pub disk_replaced: bool,
    /// Events recorded by the steps and not written yet: they travel with
    /// the pass's next status write, and whatever is left is written when
    /// the pass ends ([`Pass::flush_events`]), whether it succeeded or not.
    events: std::sync::Mutex<Vec<NewEvent>>,
}

/// What the definition step found and did.
pub struct Definition {
    /// The domain as observed before this pass (None: it did not exist).
    pub observed: Option<ObservedDomain>,
    /// A running domain's definition changed in a way that needs a restart.
    pub restart: bool,
}

impl<'a> Pass<'a> {
    pub fn new(
        ctx: &'a Context,
        rec: &'a HostingRecord,
        vm: std::sync::Arc<dyn crate::drivers::VmDriver>,
    ) -> Pass<'a> {
        let st = rec.status.clone();
        Pass {
            ctx,
            rec,
            vm,
            node: rec.node.clone(),
            st,
            disk_replaced: false,
            events: Default::default(),
        }
    }

    fn id(&self) -> HostingId {
        self.rec.id
    }

    /// Records an event (and logs it). It is written with the pass's next
    /// status write, or when the pass ends.
    pub fn event(&self, t: EventType, reason: Reason, msg: &str) {
        match t {
            EventType::Normal => tracing::info!(%reason, message = msg, "event"),
            EventType::Warning => tracing::warn!(%reason, message = msg, "event"),
        }
        self.events.lock().unwrap().push(NewEvent {
            type_: t,
            reason,
            message: msg.to_string(),
        });
    }

    /// Writes the events recorded and not written yet. Called when the pass
    /// ends, and before a step that may take long (a backup, a restore, the
    /// guest agent), so that what was done so far shows meanwhile.
    pub async fn flush_events(&self) -> Result<(), ReconcileError> {
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        if let Err(e) = self.ctx.store.add_events(self.id(), &events).await {
            self.unwritten(events);
            return Err(e.into());
        }
        Ok(())
    }

    /// Ends the pass: writes the events not written yet, then returns the
    /// pass's result (its error first, if both failed).
    pub async fn finish<T>(&self, result: Result<T, ReconcileError>) -> Result<T, ReconcileError> {
        let flushed = self.flush_events().await;
        let value = result?;
        flushed?;
        Ok(value)
    }

    /// Puts events whose write failed back in front of those recorded since.
    fn unwritten(&self, mut events: Vec<NewEvent>) {
        let mut pending = self.events.lock().unwrap();
        events.append(&mut pending);
        *pending = events;
    }

    /// Its node answers: a `NodeReachable=False` left from while it was down
    /// goes, with an event (the steps then repair whatever drifted).
    pub fn node_back(&mut self) {
        let was_down =
            (self.st.conditions.iter()).any(|c| c.type_ == C::NodeReachable && !c.is_true());
        if !was_down {
            return;
        }
        remove_condition(&mut self.st.conditions, C::NodeReachable);
        if self.st.phase == Phase::Unknown {
            self.st.phase = Phase::Provisioning;
        }
        if self.node.is_none() {
            // Evacuated from a fenced node (its `Evacuated` event says so).
            return;
        }
        let node = self
            .node
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let msg = format!("node {node} answers again; checking the hosting against its spec");
        self.event(EventType::Normal, Reason::NodeBack, &msg);
    }

    /// Records a drift repair: a Warning event and the repairs counter.
    fn repair(&self, reason: Reason, msg: &str) {
        self.ctx.metrics.repairs.inc();
        self.event(EventType::Warning, reason, msg)
    }

    /// Sets one of the status's conditions.
    fn condition(&mut self, type_: C, status: bool, reason: Reason, msg: &str) {
        set_condition(&mut self.st.conditions, type_, status, reason, msg);
    }

    /// The machine this hosting's node is on, for the boot gate (`None`:
    /// this one, a node at a loopback address).
    pub(super) fn machine(&self) -> crate::reconciler::boot_gate::Machine {
        let ip = self.ctx.nodes.address(self.node.as_ref()).ip();
        (!ip.is_loopback()).then_some(ip)
    }

    /// Records what the hosting is now seen to use (`running`: its guest
    /// runs with the spec's size, or does not run): the next status write opens and closes its usage spans
    /// to match, in its transaction. A pool guest is nobody's: unmetered.
    pub(super) fn meter(&mut self, running: bool) {
        let spec = &self.rec.spec;
        let metered = !self.rec.warm;
        let size =
            (metered && running).then(|| (spec.vcpus.get() as i32, spec.memory_mib.get() as i32));
        self.st.meter = crate::store::Meter {
            vcpus: size.map(|s| s.0),
            memory_mib: size.map(|s| s.1),
            disk_gib: self.st.meter.disk_gib,
        };
    }

    /// Records that the hosting's disk exists, of the spec's size (its
    /// vCPUs and memory stay as last seen until the power step looks).
    pub(super) fn meter_disk(&mut self) {
        let metered = !self.rec.warm;
        self.st.meter.disk_gib = metered.then(|| self.rec.spec.disk_gib.get() as i32);
    }

    /// [`Pass::meter`], written at once when it changed: a guest just
    /// started (or resized, or stopped) is billed from now, not from the
    /// pass's last status write.
    pub(super) async fn metered(&mut self, running: bool) -> Result<(), ReconcileError> {
        let before = self.st.meter;
        self.meter(running);
        if self.st.meter != before {
            self.write_status().await?;
        }
        Ok(())
    }

    pub(super) async fn fault(&self, point: &'static str) -> Result<(), ReconcileError> {
        Ok(self.ctx.config.faults.hit(point).await?)
    }

    /// Writes the status built so far, with the events not written yet.
    pub(super) async fn write_status(&self) -> Result<(), ReconcileError> {
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        let store = &self.ctx.store;
        if let Err(e) = store
            .write_status_with_events(self.id(), &self.st, &events)
            .await
        {
            self.unwritten(events);
            return Err(e.into());
        }
        Ok(())
    }

    /// Writes the final status of a converged pass.
    async fn converged(&mut self, phase: Phase) -> Result<(), ReconcileError> {
        remove_condition(&mut self.st.conditions, C::Reconciled);
        self.st.phase = phase;
        self.st.observed_generation = self.rec.generation;
        self.st.message = None;
        self.st.provisioning_since = None;
        // Ready (or stopped as asked): a later silence is no failed boot,
        // and its place at the boot gate is free.
        self.st.boot_restarts = None;
        self.ctx.release_boot(self.id());
        self.fault("before_status_write").await?;
        self.write_status().await?;
        self.ctx.reset_backoff(self.id());
        Ok(())
    }
}
