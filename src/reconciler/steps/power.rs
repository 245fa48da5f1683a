//! Steps 4 and 5: the domain definition and its power state: defined or
//! redefined when its marker hash differs, started, restarted for a new
//! size, or shut down gracefully when it should not run.

use std::time::Duration;

use chrono::Utc;

use super::{Definition, Pass};
use crate::domain::{remove_condition, ConditionType as C, EventType, Phase, Reason};
use crate::drivers::{DriverError, ObservedDomain};
use crate::reconciler::boot_gate::Turn;
use crate::reconciler::names::domain_name;
use crate::reconciler::render::{Hashes, Inputs};
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
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
            self.vm.define(&xml).await?;
            match &observed {
                None if self.st.vm_name.is_some() => {
                    let msg = "the domain was missing and was redefined on the existing disk";
                    self.repair(Reason::DomainRecreated, msg)
                }
                None => {
                    let msg = format!("domain {name} defined");
                    self.event(EventType::Normal, Reason::Defined, &msg)
                }
                Some(o) => {
                    restart = o.running && Hashes::split(&o.marker.spec_hash).0 != want.domain;
                    let msg = format!(
                        "domain {name} redefined for generation {}",
                        self.rec.generation
                    );
                    self.event(EventType::Normal, Reason::Redefined, &msg);
                }
            }
            self.fault("after_define").await?;
        }
        self.st.vm_name = Some(name);
        Ok(Definition { observed, restart })
    }

    /// Step 5: power. Restarts for a definition change, starts a stopped
    /// domain, each once the boot gate gives it a place (`Ok(false)`:
    /// queued, the status says its place).
    pub async fn power(
        &mut self,
        def: &Definition,
        inputs: &Inputs<'_>,
        want: &Hashes,
    ) -> Result<bool, ReconcileError> {
        let name = domain_name(self.id());
        let seed = want.seed.as_str();
        self.ctx.memory.with(self.id(), |m| m.shutdown_asked = None);
        let running_now = def.observed.as_ref().is_some_and(|o| o.running);
        if !running_now && !def.restart {
            // A clone's first start loads memory instead of booting: it
            // takes no place at the boot gate.
            if let Some(hash) = self.clone_pending() {
                if self.start_clone(&hash, inputs, want).await? {
                    let msg = format!("domain {name} is running");
                    self.condition(C::VMRunning, true, Reason::Running, &msg);
                    self.metered(true).await?;
                    return Ok(true);
                }
            }
        }
        if (!running_now || def.restart) && !self.boot_turn().await? {
            return Ok(false);
        }
        if def.restart {
            let msg = "memory/vCPU change: restarting the VM";
            self.condition(C::RestartRequired, true, Reason::SpecChanged, msg);
            self.st.phase = Phase::Updating;
            self.write_status().await?;
            self.vm.destroy(&name).await?;
            self.fault("after_restart_destroy").await?;
            let msg = "restarting the VM to apply the new memory/vCPU settings";
            self.event(EventType::Normal, Reason::Restarting, msg);
        }
        if !running_now || def.restart {
            if self.clone_pending().is_some() {
                // A clone restarted before its identity reset (resized in
                // those seconds): booting its disk would keep the template's
                // SSH host keys and machine-id, so it boots a fresh one.
                self.uncloned("the clone was restarted before its personalisation")
                    .await?;
            }
            self.vm.start(&name).await?;
            let was_ready = matches!(self.rec.status.phase, Phase::Ready);
            if def.observed.is_some() && !def.restart && was_ready && !self.disk_replaced {
                let msg = "the VM was found shut off while it should run; started it";
                self.repair(Reason::DomainStarted, msg);
            } else {
                let msg = format!("domain {name} started");
                self.event(EventType::Normal, Reason::Started, &msg);
            }
            if self.st.provisioning_since.is_none() || def.restart {
                self.st.provisioning_since = Some(Utc::now());
            }
            // A fresh start: its boot gets HOSTD_BOOT_RETRIES restarts.
            self.st.boot_restarts = Some(0);
            // The guest applies the seed on disk as it boots.
            self.st.applied_seed = Some(seed.to_string());
            self.fault("after_start").await?;
        }
        remove_condition(&mut self.st.conditions, C::RestartRequired);
        let msg = format!("domain {name} is running");
        self.condition(C::VMRunning, true, Reason::Running, &msg);
        self.metered(true).await?;
        Ok(true)
    }

    /// Asks the boot gate for a place to start the guest; `false`: queued
    /// (written to the status: its place, how many boot).
    async fn boot_turn(&mut self) -> Result<bool, ReconcileError> {
        let gate = &self.ctx.boot_gate;
        let Turn::Wait {
            place,
            waiting,
            booting,
        } = gate.enter(self.id(), self.rec.warm, self.machine())
        else {
            return Ok(true);
        };
        let msg = format!(
            "queued to boot: place {place} of {waiting}; {booting} guest(s) booting, at most {} at once \
             on a machine (HOSTD_BOOT_CONCURRENCY)",
            gate.limit()
        );
        let first = !self
            .rec
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == C::VMRunning && c.reason == Reason::BootQueued);
        self.condition(C::VMRunning, false, Reason::BootQueued, &msg);
        if self.st.phase != Phase::Updating {
            self.st.phase = Phase::Provisioning;
        }
        self.st.message = Some(msg.clone());
        if first {
            self.event(EventType::Normal, Reason::BootQueued, &msg);
        }
        self.write_status().await?;
        Ok(false)
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
        self.ctx.memory.with(self.id(), |m| m.shutdown_asked = None);
        self.ctx.release_boot(self.id());
        self.meter(false);
        let msg = "the VM is stopped as requested";
        self.condition(C::VMRunning, false, Reason::Stopped, msg);
        self.condition(C::WebReady, false, Reason::Stopped, "the VM is stopped");
        if self.rec.status.phase != Phase::Stopped {
            self.event(EventType::Normal, Reason::Stopped, "the VM is stopped");
        }
        self.converged(Phase::Stopped).await?;
        self.ctx.scheduler.lock().await.released(self.id());
        Ok(Action::AwaitChange)
    }

    /// Asks a running guest to shut down, forcing it off after 60 s; whether
    /// it is still running.
    async fn shutting_down(&mut self) -> Result<bool, ReconcileError> {
        let (id, name) = (self.id(), domain_name(self.id()));
        let asked = self.ctx.memory.with(id, |m| m.shutdown_asked);
        match asked {
            None => {
                self.vm.shutdown(&name).await?;
                let now = tokio::time::Instant::now();
                self.ctx.memory.with(id, |m| m.shutdown_asked = Some(now));
                self.event(
                    EventType::Normal,
                    Reason::Stopping,
                    "asked the guest to shut down",
                );
            }
            Some(t) if t.elapsed() > Duration::from_secs(60) => {
                self.vm.destroy(&name).await?;
                let msg = "the guest did not shut down within 60 s; powered it off";
                self.event(EventType::Warning, Reason::ForcedOff, msg);
            }
            Some(_) => {}
        }
        Ok(self.vm.get_domain(&name).await?.is_some_and(|d| d.running))
    }
}
