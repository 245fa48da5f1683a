//! The steps of converging one hosting, in order: ports, disk, seed,
//! definition, power, route, readiness (and stop, when it should not run);
//! the backup and restore steps are in `backup.rs`.
//! Each step looks before it acts, changes one kind of resource, records what
//! it did as an event, and ends at its fault point, so a pass cut short
//! anywhere is finished by the next one.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;

use super::names::{disk_volume, domain_name, seed_volume};
use super::render::{Hashes, Inputs};
use super::{Action, Context, ReconcileError};
use crate::domain::{
    has_true, remove_condition, set_condition, ConditionType as C, EventType, HostingId, Phase,
    Reason,
};
use crate::drivers::seed::build_iso;
use crate::drivers::{probe, DriverError, ObservedDomain, RouteOutcome, VolumeSource};
use crate::images::ImageEntry;
use crate::store::{HostingRecord, NewEvent, Status};

/// How soon a booting guest is probed again. Each look costs a few local
/// calls; a long interval would add half of itself to every POST → Ready.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a hosting whose route is in a batch waits before it looks again
/// by itself; the batch's end normally wakes it long before.
pub const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// One pass over one hosting: its desired record, the status being built, and
/// what earlier steps found.
pub struct Pass<'a> {
    pub ctx: &'a Context,
    pub rec: &'a HostingRecord,
    /// The status this pass will write.
    pub st: Status,
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
    pub fn new(ctx: &'a Context, rec: &'a HostingRecord) -> Pass<'a> {
        let st = rec.status.clone();
        Pass {
            ctx,
            rec,
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
    pub async fn event(
        &self,
        t: EventType,
        reason: Reason,
        msg: &str,
    ) -> Result<(), ReconcileError> {
        match t {
            EventType::Normal => tracing::info!(%reason, message = msg, "event"),
            EventType::Warning => tracing::warn!(%reason, message = msg, "event"),
        }
        self.events.lock().unwrap().push(NewEvent {
            type_: t,
            reason,
            message: msg.to_string(),
        });
        Ok(())
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

    /// Records a drift repair: a Warning event and the repairs counter.
    async fn repair(&self, reason: Reason, msg: &str) -> Result<(), ReconcileError> {
        self.ctx.metrics.repairs.inc();
        self.event(EventType::Warning, reason, msg).await
    }

    /// Sets one of the status's conditions.
    fn condition(&mut self, type_: C, status: bool, reason: Reason, msg: &str) {
        set_condition(&mut self.st.conditions, type_, status, reason, msg);
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

    /// Step 0: scheduling. A new hosting is admitted only if it fits the
    /// host, oldest first; so is a stopped one being started again. The
    /// decision is made under the scheduler lock, so the next one sees it;
    /// the new hosting's ports are then allocated outside it (the ledger
    /// keeps it admitted meanwhile), so admissions are not serialised behind
    /// the database. One that does not fit waits with `Scheduled=False`:
    /// `Some(requeue)`.
    pub async fn schedule(&mut self) -> Result<Option<Action>, ReconcileError> {
        let new = self.st.ssh_port.is_none();
        let starting = self.rec.spec.running
            && (self.rec.status.phase == Phase::Stopped || crate::capacity::waiting(self.rec));
        if !new && !starting {
            return Ok(None);
        }
        let verdict = {
            let mut ledger = self.ctx.scheduler.lock().await;
            let host = ledger.refresh(&self.ctx.store, &*self.ctx.vm).await?;
            let usage = ledger.usage((self.id(), self.rec.created_at));
            let policy = &self.ctx.config.capacity;
            let verdict = crate::capacity::admit(&usage, self.rec, &host, policy, new);
            ledger.decided(self.rec, verdict.is_ok());
            if verdict.is_ok() && new {
                ledger.admitting(self.id());
            }
            verdict
        };
        match verdict {
            Ok(()) => {
                if new {
                    let ports = self.ports().await;
                    let recorded = self.st.ssh_port.is_some();
                    let mut ledger = self.ctx.scheduler.lock().await;
                    ledger.admitted(self.id(), recorded);
                    drop(ledger);
                    ports?;
                }
                let msg = "the host has room for this hosting";
                self.condition(C::Scheduled, true, Reason::Admitted, msg);
                if !new {
                    self.write_status().await?;
                }
                // A new hosting's condition is written with its disk step's
                // status, later in this pass (a pass cut short before that
                // is decided again: the ports say it was admitted).
                Ok(None)
            }
            Err((_, msg)) if self.rec.pool => {
                // A pool guest never waits for room: it is dropped.
                tracing::info!(message = %msg, "warm pool: no room for this pool guest; dropping it");
                self.ctx.store.drop_pool_guest(self.id()).await?;
                Ok(Some(Action::AwaitChange))
            }
            Err((reason, mut msg)) => {
                // Tenants come first: a warm-pool guest makes room.
                if self.ctx.store.evict_pool_guest().await? {
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
                    self.event(EventType::Warning, reason, &msg).await?;
                }
                self.ctx.reset_backoff(self.id());
                Ok(Some(Action::Requeue(Duration::from_secs(5))))
            }
        }
    }

    /// Step 1: the SSH and HTTP ports (allocated and recorded in one transaction).
    pub async fn ports(&mut self) -> Result<(u16, u16), ReconcileError> {
        if let (Some(s), Some(h)) = (self.st.ssh_port, self.st.http_port) {
            return Ok((s, h));
        }
        let cfg = &self.ctx.config;
        let (s, h) = self
            .ctx
            .store
            .allocate_ports(self.id(), cfg.ssh_ports, cfg.http_ports)
            .await?;
        // Recorded (in the allocation's transaction) from here on.
        (self.st.ssh_port, self.st.http_port) = (Some(s), Some(h));
        let msg = format!("SSH port {s}, HTTP port {h}");
        self.event(EventType::Normal, Reason::PortsAllocated, &msg)
            .await?;
        self.fault("after_port_allocation").await?;
        Ok((s, h))
    }

    /// Marks a new hosting as Provisioning.
    pub async fn begin(&mut self) -> Result<(), ReconcileError> {
        if self.st.phase != Phase::Pending {
            return Ok(());
        }
        self.st.phase = Phase::Provisioning;
        let cfg = &self.ctx.config;
        let msg = format!(
            "provisioning a {} VM ({})",
            cfg.domain_type.as_str(),
            cfg.domain_type_reason
        );
        self.event(EventType::Normal, Reason::Provisioning, &msg)
            .await
    }

    /// Step 2: the image version (pinned when the disk is first created, so a
    /// rebuilt image never changes the kernel under an existing disk) and the
    /// disk volume. A newer desired disk epoch replaces the disk: by the
    /// backup it names (a restore) or by an empty one (a reset); the old disk
    /// is quarantined. A disk that vanished is restored from the newest
    /// backup that verifies, and never silently recreated empty: without a
    /// backup the hosting goes `Failed` with `DiskLost` until its owner
    /// decides. `None`: stop here and wait for the owner.
    pub async fn disk(&mut self) -> Result<Option<ImageEntry>, ReconcileError> {
        let spec = &self.rec.spec;
        let image = match &self.st.image_pin {
            Some(pin) => {
                pin.check(&spec.image)?;
                pin.clone()
            }
            None => self.ctx.catalog.pin(&spec.image)?,
        };
        let name = disk_volume(self.id());
        let mut exists = self.ctx.vm.volume_exists(&name).await?;
        let new_epoch = self.st.disk_created && self.st.disk_epoch < self.rec.disk_epoch;
        let mut reset = false;
        if new_epoch {
            match self.rec.restore_from {
                Some(b) => {
                    exists = self.restore_requested(b, exists).await? || exists;
                }
                None => {
                    self.replace_disk(exists).await?;
                    reset = true;
                }
            }
        } else if !exists && self.st.disk_created {
            if !self.restore_latest().await? {
                self.disk_lost().await?;
                return Ok(None);
            }
            exists = true;
        }
        if !exists && self.st.disk_created && !reset {
            // A requested restore that could not be used, and no disk either.
            self.disk_lost().await?;
            return Ok(None);
        }
        let source = VolumeSource::Overlay {
            backing: image.disk.clone(),
            backing_format: image.format.clone(),
            capacity_gib: spec.disk_gib,
        };
        if !exists || reset {
            self.ctx.vm.create_volume(&name, source).await?;
            let msg = format!(
                "{} GiB disk from image {}",
                spec.disk_gib,
                spec.image.as_str()
            );
            let reason = if reset {
                Reason::DiskReset
            } else {
                Reason::DiskCreated
            };
            self.event(EventType::Normal, reason, &msg).await?;
            self.fault("after_disk_create").await?;
        }
        if !self.st.disk_created || self.st.image_pin.is_none() || reset {
            self.st.disk_created = true;
            self.st.disk_epoch = self.rec.disk_epoch;
            self.st.image_pin = Some(image.clone());
            remove_condition(&mut self.st.conditions, C::DiskLost);
            self.write_status().await?;
        }
        Ok(Some(image))
    }

    /// Records a vanished disk: `Failed`, `DiskLost`, a Warning event once.
    async fn disk_lost(&mut self) -> Result<(), ReconcileError> {
        let first = !has_true(&self.st.conditions, C::DiskLost);
        let msg = "the disk volume vanished and there is no backup to restore it from; \
                   POST /api/v1/host/my/reset gives the hosting a fresh, empty disk";
        self.condition(C::DiskLost, true, Reason::DiskMissing, msg);
        self.fail_pending_backup("the hosting has no disk (DiskLost)")
            .await?;
        self.st.phase = Phase::Failed;
        self.st.message = Some(msg.into());
        self.write_status().await?;
        if first {
            self.ctx.metrics.repairs.inc();
            self.event(EventType::Warning, Reason::DiskLost, msg)
                .await?;
        }
        Ok(())
    }

    /// Before a consented reset: stops the guest and moves the old disk (if
    /// any) to quarantine instead of deleting it.
    async fn replace_disk(&mut self, exists: bool) -> Result<(), ReconcileError> {
        self.ctx.vm.destroy(&domain_name(self.id())).await?;
        if exists {
            let name = disk_volume(self.id());
            let dir = self.ctx.config.state_dir.join("quarantine");
            if self.ctx.vm.quarantine_volume(&name, &dir).await?.is_none() {
                // A simulated volume has no file to keep.
                self.ctx.vm.delete_volume(&name).await?;
            }
        }
        Ok(())
    }

    /// Step 3: the cloud-init seed volume, rebuilt when missing or outdated.
    /// Returns the observed domain for the next step.
    pub async fn seed(
        &mut self,
        inputs: &Inputs<'_>,
        want: &Hashes,
    ) -> Result<Option<ObservedDomain>, ReconcileError> {
        let id = self.id();
        let observed = self.ctx.vm.get_domain(&domain_name(id)).await?;
        let have_seed = observed
            .as_ref()
            .map(|o| Hashes::split(&o.marker.spec_hash).1);
        let seed_missing = !self.ctx.vm.volume_exists(&seed_volume(id)).await?;
        if !seed_missing && have_seed == Some(want.seed.as_str()) {
            return Ok(observed);
        }
        let iso = build_iso(&self.ctx.render.seed(inputs));
        let vm = &self.ctx.vm;
        if !vm
            .create_volume(&seed_volume(id), VolumeSource::Bytes(iso.clone()))
            .await?
        {
            vm.replace_volume_bytes(&seed_volume(id), iso).await?;
        }
        if observed.is_some() && have_seed != Some(want.seed.as_str()) {
            let msg = match inputs.image.guest_agent {
                true => "seed regenerated; applying it to the running guest",
                false => {
                    "cloud-init seed regenerated; SSH key changes take effect at the next boot"
                }
            };
            self.event(EventType::Normal, Reason::SeedUpdated, msg)
                .await?;
        }
        self.fault("after_seed_upload").await?;
        Ok(observed)
    }

    /// Step 4: the domain definition, (re)defined when its marker hash differs.
    pub async fn definition(
        &mut self,
        inputs: &Inputs<'_>,
        want: &Hashes,
        observed: Option<ObservedDomain>,
    ) -> Result<Definition, ReconcileError> {
        let name = domain_name(self.id());
        let marker = want.marker();
        let mut restart = false;
        if observed
            .as_ref()
            .map(|o| o.marker.spec_hash != marker)
            .unwrap_or(true)
        {
            std::fs::create_dir_all(self.ctx.render.console_dir()).map_err(DriverError::from)?;
            let xml = self
                .ctx
                .render
                .domain_xml(inputs, self.rec.generation, &marker);
            self.ctx.vm.define(&xml).await?;
            match &observed {
                None if self.st.vm_name.is_some() => {
                    let msg = "the domain was missing and was redefined on the existing disk";
                    self.repair(Reason::DomainRecreated, msg).await?
                }
                None => {
                    let msg = format!("domain {name} defined");
                    self.event(EventType::Normal, Reason::Defined, &msg).await?
                }
                Some(o) => {
                    restart = o.running && Hashes::split(&o.marker.spec_hash).0 != want.domain;
                    let msg = format!(
                        "domain {name} redefined for generation {}",
                        self.rec.generation
                    );
                    self.event(EventType::Normal, Reason::Redefined, &msg)
                        .await?;
                }
            }
            self.fault("after_define").await?;
        }
        self.st.vm_name = Some(name);
        Ok(Definition { observed, restart })
    }

    /// Step 5: power. Restarts for a definition change, starts a stopped domain.
    pub async fn power(&mut self, def: &Definition, seed: &str) -> Result<(), ReconcileError> {
        let name = domain_name(self.id());
        self.ctx.shutdowns.lock().unwrap().remove(&self.id());
        let running_now = def.observed.as_ref().is_some_and(|o| o.running);
        if def.restart {
            let msg = "memory/vCPU change: restarting the VM";
            self.condition(C::RestartRequired, true, Reason::SpecChanged, msg);
            self.st.phase = Phase::Updating;
            self.write_status().await?;
            self.ctx.vm.destroy(&name).await?;
            let msg = "restarting the VM to apply the new memory/vCPU settings";
            self.event(EventType::Normal, Reason::Restarting, msg)
                .await?;
        }
        if !running_now || def.restart {
            self.ctx.vm.start(&name).await?;
            let was_ready = matches!(self.rec.status.phase, Phase::Ready);
            if def.observed.is_some() && !def.restart && was_ready && !self.disk_replaced {
                let msg = "the VM was found shut off while it should run; started it";
                self.repair(Reason::DomainStarted, msg).await?;
            } else {
                let msg = format!("domain {name} started");
                self.event(EventType::Normal, Reason::Started, &msg).await?;
            }
            if self.st.provisioning_since.is_none() || def.restart {
                self.st.provisioning_since = Some(Utc::now());
            }
            // The guest applies the seed on disk as it boots.
            self.st.applied_seed = Some(seed.to_string());
            self.fault("after_start").await?;
        }
        remove_condition(&mut self.st.conditions, C::RestartRequired);
        let msg = format!("domain {name} is running");
        self.condition(C::VMRunning, true, Reason::Running, &msg);
        Ok(())
    }

    /// Step 5b: a seed the running guest has not applied (a warm-pool claim,
    /// or new SSH keys) is applied live: the guest agent runs
    /// `hostd-boot --live`, which re-reads the seed disk (rewritten in place
    /// by the seed step) exactly as at boot. For a claim this is the
    /// personalisation; if the agent fails, the guest is restarted instead
    /// and applies the owner's seed as it boots, so a claim always
    /// completes. For other seed changes a failure leaves them for the next
    /// boot, as on images without the agent.
    pub async fn live_seed(
        &mut self,
        want: &Hashes,
        image: &ImageEntry,
    ) -> Result<(), ReconcileError> {
        let applied = self.st.applied_seed.as_deref();
        if applied == Some(want.seed.as_str()) {
            return Ok(());
        }
        let claim = self.rec.claim_pending();
        if !image.guest_agent || (applied.is_none() && !claim) {
            return Ok(());
        }
        let name = domain_name(self.id());
        // The agent may take up to its timeout: what was done shows first.
        self.flush_events().await?;
        let started = std::time::Instant::now();
        let timeout = Duration::from_secs(30);
        let run = self
            .ctx
            .vm
            .guest_exec(&name, "/usr/local/sbin/hostd-boot", &["--live"], timeout)
            .await;
        match run {
            Ok(_) => {
                self.st.applied_seed = Some(want.seed.clone());
                self.fault("after_seed_apply").await?;
                self.write_status().await?;
                let ms = started.elapsed().as_millis();
                if claim {
                    self.ctx.metrics.pool_claims.inc();
                    let msg = format!(
                        "warm-pool guest personalised in {ms} ms: hostname, SSH keys, welcome page"
                    );
                    self.event(EventType::Normal, Reason::Personalised, &msg)
                        .await?;
                } else {
                    let msg = format!("the new seed was applied to the running guest in {ms} ms");
                    self.event(EventType::Normal, Reason::SeedApplied, &msg)
                        .await?;
                }
            }
            Err(e) if claim => {
                self.ctx.vm.destroy(&name).await?;
                self.ctx.vm.start(&name).await?;
                self.ctx.metrics.pool_claim_fallbacks.inc();
                self.st.applied_seed = Some(want.seed.clone());
                self.st.provisioning_since = Some(Utc::now());
                self.write_status().await?;
                let msg = format!("{e}; restarted the guest, which applies your seed as it boots");
                self.event(EventType::Warning, Reason::PersonaliseFallback, &msg)
                    .await?;
            }
            Err(e) => {
                self.st.applied_seed = None;
                self.write_status().await?;
                let msg = format!("{e}; the new seed applies at the next boot");
                self.event(EventType::Warning, Reason::SeedApplyFailed, &msg)
                    .await?;
            }
        }
        Ok(())
    }

    /// Step 6: the nginx route (to the guest, or the 503 page when stopped);
    /// repairs hand edits with an event. A change is submitted to the nginx
    /// batcher and not waited for (`Ok(false)`): the reconcile ends with
    /// [`Pass::route_pending`], the worker moves on, and the batch (one
    /// validation and one reload for every change pending) wakes the
    /// hosting when it is done. `Ok(true)`: nginx serves the wanted route.
    pub async fn route(&mut self, http: Option<u16>) -> Result<bool, ReconcileError> {
        let rec = self.rec;
        let spec = self.ctx.route_spec(rec, http);
        let proxy = &self.ctx.proxy;
        let want = proxy.render(&spec);
        match proxy.outcome(rec.id, Some(&want)) {
            // In a batch: the batch's end wakes this hosting.
            Some(RouteOutcome::Pending) => return Ok(false),
            Some(RouteOutcome::Failed(e)) => {
                // Reported once; the next pass submits it again.
                proxy.forget(rec.id);
                self.ctx.route_notes.lock().unwrap().remove(&rec.id);
                return Err(e.into());
            }
            Some(RouteOutcome::Applied) => {
                // Consumed: later passes compare the file again (drift).
                proxy.forget(rec.id);
                let note = self.ctx.route_notes.lock().unwrap().remove(&rec.id);
                if let Some((reason, msg)) = note {
                    self.fault("after_route_write").await?;
                    if reason == Reason::RouteRepaired {
                        self.repair(reason, &msg).await?;
                    } else {
                        self.event(EventType::Normal, reason, &msg).await?;
                    }
                }
            }
            None => {
                let have = proxy.read_route(rec.id).await?;
                let current = have.as_deref() == Some(want.as_str());
                if !current || proxy.reload_pending() {
                    // Content right but not yet served: the batcher retries the reload.
                    let note = (!current).then(|| self.route_note(have.as_deref()));
                    self.fault("before_route_write").await?;
                    if let Some(note) = note {
                        self.ctx.route_notes.lock().unwrap().insert(rec.id, note);
                    }
                    proxy.submit(rec.id, Some(spec), self.ctx.waker(rec.id));
                    return Ok(false);
                }
            }
        }
        let (reason, msg) = match http {
            Some(p) => (
                Reason::Configured,
                format!("/{}/ proxied to 127.0.0.1:{p}", rec.user_id),
            ),
            None => (
                Reason::Stopped,
                "route answers 503 while the VM is stopped".into(),
            ),
        };
        self.condition(C::RouteConfigured, true, reason, &msg);
        Ok(true)
    }

    /// Ends a pass whose route is in a batch: the status so far is written,
    /// and the hosting waits for the batch's wake-up (or [`ROUTE_WAIT`]).
    pub async fn route_pending(&mut self) -> Result<Action, ReconcileError> {
        self.write_status().await?;
        Ok(Action::Requeue(ROUTE_WAIT))
    }

    /// What to record once a new route for this hosting is served, given the
    /// file found before: a repair when a configured route had been edited
    /// by hand or removed, otherwise "routed".
    fn route_note(&self, have: Option<&str>) -> (Reason, String) {
        let rec = self.rec;
        let proxy = &self.ctx.proxy;
        let was_configured = has_true(&rec.status.conditions, C::RouteConfigured);
        // A file hostd itself wrote for the other state (serving ↔ the
        // stopped page) is a transition, not a hand edit.
        let ours = |h: &str| {
            [rec.status.http_port, None]
                .into_iter()
                .any(|p| proxy.render(&self.ctx.route_spec(rec, p)) == h)
        };
        match have {
            Some(h) if was_configured && !ours(h) => (
                Reason::RouteRepaired,
                "the route entry had been changed by hand; rewrote it".into(),
            ),
            None if was_configured && rec.status.phase == Phase::Ready => (
                Reason::RouteRepaired,
                "the route entry was missing; rewrote it".into(),
            ),
            _ => (Reason::RouteConfigured, format!("/{}/ routed", rec.user_id)),
        }
    }

    fn ssh_probe_addr(&self, port: u16) -> SocketAddr {
        let bind = self.ctx.config.ssh_bind;
        let ip = if bind.is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            bind
        };
        SocketAddr::new(ip, port)
    }

    /// Step 7: readiness, through the host nginx and the SSH banner. Ready
    /// writes the final status; not yet ready requeues until the deadline.
    pub async fn readiness(&mut self, (ssh, http): (u16, u16)) -> Result<Action, ReconcileError> {
        // A pool guest has no route (no owner yet): its port forward is probed.
        let url = match self.rec.pool {
            true => format!("http://127.0.0.1:{http}/"),
            false => format!("{}/{}/", self.ctx.config.probe_url, self.rec.user_id),
        };
        // SSH only once the site answers: every probe of a port whose
        // service is not up yet still costs the booting guest work.
        let web = probe::http_ok(&self.ctx.http, &url).await;
        let banner = match &web {
            Ok(_) => probe::ssh_banner(self.ssh_probe_addr(ssh)).await,
            Err(_) => Err("not probed before the site answers".to_string()),
        };
        if web.is_ok() && banner.is_ok() {
            let msg = match self.rec.pool {
                true => "warm-pool guest answers HTTP and SSH; claimable",
                false => "site answers through nginx and SSH is up",
            };
            self.condition(C::WebReady, true, Reason::Serving, msg);
            let was_ready = self.rec.status.phase == Phase::Ready
                && self.rec.status.observed_generation == self.rec.generation;
            if !was_ready {
                let msg = format!("site and SSH (port {ssh}) are up");
                self.event(EventType::Normal, Reason::Ready, &msg).await?;
            }
            self.converged(Phase::Ready).await?;
            return Ok(Action::AwaitChange);
        }
        let why = [web.err(), banner.err()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        let msg = format!("waiting for the guest: {why}");
        self.condition(C::WebReady, false, Reason::Booting, &msg);
        if self.st.phase != Phase::Updating {
            self.st.phase = Phase::Provisioning;
        }
        self.st.message = Some("waiting for the guest to boot".into());
        let since = *self.st.provisioning_since.get_or_insert_with(Utc::now);
        let waited = (Utc::now() - since).to_std().unwrap_or_default();
        let timeout = self.ctx.config.ready_timeout;
        if waited > timeout {
            self.st.provisioning_since = Some(Utc::now());
            self.write_status().await?;
            return Err(ReconcileError::ReadinessTimeout(timeout, why));
        }
        self.fault("before_status_write").await?;
        self.write_status().await?;
        self.ctx.reset_backoff(self.id());
        Ok(Action::Requeue(PROBE_INTERVAL))
    }

    /// Writes the final status of a converged pass.
    async fn converged(&mut self, phase: Phase) -> Result<(), ReconcileError> {
        remove_condition(&mut self.st.conditions, C::Reconciled);
        self.st.phase = phase;
        self.st.observed_generation = self.rec.generation;
        self.st.message = None;
        self.st.provisioning_since = None;
        self.fault("before_status_write").await?;
        self.write_status().await?;
        self.ctx.reset_backoff(self.id());
        Ok(())
    }

    /// Desired `running: false`: the 503 route, then a graceful shutdown
    /// (forced after 60 s).
    pub async fn stop(&mut self, def: &Definition) -> Result<Action, ReconcileError> {
        if !self.route(None).await? {
            return self.route_pending().await;
        }
        let running_now = def.observed.as_ref().is_some_and(|o| o.running);
        if running_now && self.shutting_down().await? {
            let msg = "waiting for the guest to shut down";
            self.condition(C::VMRunning, true, Reason::ShuttingDown, msg);
            self.write_status().await?;
            return Ok(Action::Requeue(Duration::from_secs(2)));
        }
        self.ctx.shutdowns.lock().unwrap().remove(&self.id());
        let msg = "the VM is stopped as requested";
        self.condition(C::VMRunning, false, Reason::Stopped, msg);
        self.condition(C::WebReady, false, Reason::Stopped, "the VM is stopped");
        if self.rec.status.phase != Phase::Stopped {
            self.event(EventType::Normal, Reason::Stopped, "the VM is stopped")
                .await?;
        }
        self.converged(Phase::Stopped).await?;
        self.ctx.scheduler.lock().await.released(self.id());
        Ok(Action::AwaitChange)
    }

    /// Asks a running guest to shut down, forcing it off after 60 s; whether
    /// it is still running.
    async fn shutting_down(&mut self) -> Result<bool, ReconcileError> {
        let (id, name) = (self.id(), domain_name(self.id()));
        let asked = self.ctx.shutdowns.lock().unwrap().get(&id).copied();
        match asked {
            None => {
                self.ctx.vm.shutdown(&name).await?;
                let now = tokio::time::Instant::now();
                self.ctx.shutdowns.lock().unwrap().insert(id, now);
                self.event(
                    EventType::Normal,
                    Reason::Stopping,
                    "asked the guest to shut down",
                )
                .await?;
            }
            Some(t) if t.elapsed() > Duration::from_secs(60) => {
                self.ctx.vm.destroy(&name).await?;
                let msg = "the guest did not shut down within 60 s; powered it off";
                self.event(EventType::Warning, Reason::ForcedOff, msg)
                    .await?;
            }
            Some(_) => {}
        }
        Ok(self
            .ctx
            .vm
            .get_domain(&name)
            .await?
            .is_some_and(|d| d.running))
    }
}
