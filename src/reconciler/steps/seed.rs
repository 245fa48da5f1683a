//! Step 3 and 5b: the cloud-init seed volume, and a new seed applied live to
//! the running guest through the guest agent (a warm-pool claim, new keys).

use chrono::Utc;

use super::Pass;
use super::AGENT_WAIT;
use crate::domain::{EventType, Reason};
use crate::drivers::seed::build_iso;
use crate::drivers::{ObservedDomain, VolumeSource};
use crate::images::ImageEntry;
use crate::reconciler::agent::{CallKind, Poll, AGENT_COOLDOWN};
use crate::reconciler::names::{domain_name, seed_volume};
use crate::reconciler::render::{Hashes, Inputs};
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
    /// Step 3: the cloud-init seed volume, rebuilt when missing or outdated.
    /// Returns the observed domain for the next step.
    pub async fn seed(
        &mut self,
        inputs: &Inputs<'_>,
        want: &Hashes,
    ) -> Result<Option<ObservedDomain>, ReconcileError> {
        let id = self.id();
        let observed = self.vm.get_domain(&domain_name(id)).await?;
        let have_seed = observed
            .as_ref()
            .map(|o| Hashes::split(&o.marker.spec_hash).1);
        let seed_missing = !self.vm.volume_exists(&seed_volume(id)).await?;
        if !seed_missing && have_seed == Some(want.seed.as_str()) {
            return Ok(observed);
        }
        let iso = build_iso(&self.ctx.render.seed(inputs));
        let vm = &self.vm;
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
            self.event(EventType::Normal, Reason::SeedUpdated, msg);
        }
        self.fault("after_seed_upload").await?;
        Ok(observed)
    }

    /// Step 5b: a seed the running guest has not applied (a warm-pool claim,
    /// or new SSH keys) is applied live: the guest agent runs
    /// `hostd-boot --live`, which re-reads the seed disk (rewritten in place
    /// by the seed step) exactly as at boot. The call runs off the workers
    /// (`reconciler::agent`): the first pass submits it and ends
    /// (`Ok(false)`), the pass after its end reads the outcome. For a claim
    /// this is the personalisation; if the agent fails, the guest is
    /// restarted instead and applies the owner's seed as it boots, so a
    /// claim always completes. For other seed changes a failure leaves them
    /// for the next boot, as on images without the agent, and starts the
    /// hosting's agent cooldown. `Ok(true)`: nothing (more) to do.
    pub async fn live_seed(
        &mut self,
        want: &Hashes,
        image: &ImageEntry,
    ) -> Result<bool, ReconcileError> {
        let applied = self.st.applied_seed.as_deref();
        if applied == Some(want.seed.as_str()) {
            return Ok(true);
        }
        let claim = self.rec.claim_pending();
        let clone = self.clone_pending();
        if !image.guest_agent || (applied.is_none() && !claim) {
            return Ok(true);
        }
        if clone.is_some() {
            return self.personalise_clone(want).await;
        }
        let id = self.id();
        let cooling = self.ctx.memory.with(id, |m| {
            m.agent_cooldown_until
                .filter(|t| *t > tokio::time::Instant::now())
                .is_some()
        });
        if cooling && !claim {
            // Its agent failed lately: the change applies at the next boot.
            return Ok(true);
        }
        let name = domain_name(id);
        let kind = match claim {
            true => CallKind::Claim,
            false => CallKind::Tenant,
        };
        let run = match self
            .ctx
            .agent
            .poll(self.ctx, self.vm.clone(), id, &want.seed, kind)
        {
            Poll::Pending => return Ok(false),
            Poll::Done(run) => run,
        };
        match run {
            Ok(ran) => {
                let took = ran.took;
                self.st.applied_seed = Some(want.seed.clone());
                self.fault("after_seed_apply").await?;
                self.write_status().await?;
                let ms = took.as_millis();
                if claim {
                    self.ctx.metrics.warm_pool_claims.inc();
                    let msg = format!(
                        "warm-pool guest personalised in {ms} ms: hostname, SSH keys, welcome page"
                    );
                    self.event(EventType::Normal, Reason::Personalised, &msg);
                } else {
                    let msg = format!("the new seed was applied to the running guest in {ms} ms");
                    self.event(EventType::Normal, Reason::SeedApplied, &msg);
                }
            }
            Err(e) if claim => {
                self.vm.destroy(&name).await?;
                self.vm.start(&name).await?;
                self.ctx.metrics.warm_pool_claim_fallbacks.inc();
                self.st.applied_seed = Some(want.seed.clone());
                self.st.provisioning_since = Some(Utc::now());
                self.st.boot_restarts = Some(0);
                self.write_status().await?;
                let msg = format!("{e}; restarted the guest, which applies your seed as it boots");
                self.event(EventType::Warning, Reason::PersonaliseFallback, &msg);
            }
            Err(e) => {
                let until = tokio::time::Instant::now() + AGENT_COOLDOWN;
                self.ctx
                    .memory
                    .with(id, |m| m.agent_cooldown_until = Some(until));
                self.st.applied_seed = None;
                self.write_status().await?;
                let msg = format!("{e}; the new seed applies at the next boot");
                self.event(EventType::Warning, Reason::SeedApplyFailed, &msg);
            }
        }
        Ok(true)
    }

    /// Step 5b for a clone: its identity reset and its seed applied through
    /// the agent (`agent::CLONE_RESET`, then `hostd-boot --live`), off the
    /// workers like a claim. If that fails, the clone is given up: the guest
    /// boots cold on a disk made anew from the image (see `steps::clone`).
    async fn personalise_clone(&mut self, want: &Hashes) -> Result<bool, ReconcileError> {
        let id = self.id();
        let run =
            match self
                .ctx
                .agent
                .poll(self.ctx, self.vm.clone(), id, &want.seed, CallKind::Clone)
            {
                Poll::Pending => return Ok(false),
                Poll::Done(run) => run,
            };
        match run {
            Ok(ran) => {
                self.st.applied_seed = Some(want.seed.clone());
                self.fault("after_clone_personalise").await?;
                self.write_status().await?;
                self.ctx.metrics.clones.inc();
                let steps = crate::reconciler::agent::step_times(&ran.output);
                let in_guest: u64 = steps.iter().map(|(_, ms)| ms).sum();
                let steps: Vec<String> = steps.iter().map(|(n, ms)| format!("{n} {ms}")).collect();
                let msg = format!(
                    "clone personalised in {} ms: new SSH host keys and machine-id, kernel RNG \
                     reseeded, clock set; hostname, SSH keys, welcome page (in the guest, ms: {}; \
                     the agent and the shell's start: {} ms)",
                    ran.took.as_millis(),
                    steps.join(", "),
                    (ran.took.as_millis() as u64).saturating_sub(in_guest)
                );
                self.event(EventType::Normal, Reason::Personalised, &msg);
            }
            Err(e) => {
                self.uncloned(&format!("personalising the clone failed: {e}"))
                    .await?;
                let name = domain_name(id);
                self.vm.start(&name).await?;
                self.st.applied_seed = Some(want.seed.clone());
                self.st.provisioning_since = Some(Utc::now());
                self.st.boot_restarts = Some(0);
                self.write_status().await?;
                let msg = format!("domain {name} started");
                self.event(EventType::Normal, Reason::Started, &msg);
            }
        }
        Ok(true)
    }

    /// Ends a pass whose guest-agent call runs: the status so far is
    /// written, and the hosting waits for the call's end (or [`AGENT_WAIT`]).
    pub async fn agent_pending(&mut self) -> Result<Action, ReconcileError> {
        self.write_status().await?;
        Ok(Action::Requeue(AGENT_WAIT))
    }
}
