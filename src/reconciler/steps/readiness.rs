//! Step 7: readiness, through the host nginx and the SSH banner.

use std::net::SocketAddr;

use chrono::Utc;

use super::{Pass, PROBE_INTERVAL};
use crate::domain::{ConditionType as C, EventType, Phase, Reason};
use crate::drivers::probe;
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
    /// A guest not ready within `HOSTD_READY_TIMEOUT_SECS` of its start,
    /// after `restarts` restarts: restarted again on the same disk (nothing
    /// of the tenant's is lost) while fewer than `HOSTD_BOOT_RETRIES`, with
    /// the console's last lines in the event; then `Failed` with `BootFailed`
    /// and no more restarts until the owner stops and starts it (or changes
    /// its spec). The new attempt is recorded before the guest is restarted,
    /// so a pass cut short never restarts it twice for one attempt.
    async fn boot_timeout(&mut self, restarts: i32, why: &str) -> Result<Action, ReconcileError> {
        let (id, retries) = (self.id(), self.ctx.config.boot_retries);
        let timeout = self.ctx.config.ready_timeout.as_secs();
        let console = super::super::console::last_lines(self.ctx, id, 5).await;
        let console = match console.is_empty() {
            true => "the console is empty".to_string(),
            false => format!("console: {console}"),
        };
        if restarts >= retries as i32 {
            let msg = format!(
                "the guest did not come up within {timeout} s, {restarts} restart(s) included ({why}); \
                 stop and start the hosting to try again, read its console, or reset its disk"
            );
            // Reported once: the status this pass began with says if it was.
            let first = !self
                .rec
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == C::WebReady && c.reason == Reason::BootFailed);
            self.condition(C::WebReady, false, Reason::BootFailed, &msg);
            self.st.phase = Phase::Failed;
            self.st.message = Some(msg.clone());
            self.write_status().await?;
            self.ctx.release_boot(id);
            if first {
                self.event(
                    EventType::Warning,
                    Reason::BootFailed,
                    &format!("{msg}; {console}"),
                );
            }
            self.ctx.reset_backoff(id);
            return Ok(Action::AwaitChange);
        }
        let n = restarts + 1;
        self.st.boot_restarts = Some(n);
        self.st.provisioning_since = Some(Utc::now());
        let msg = format!(
            "the guest did not come up within {timeout} s ({why}); restarting it on the same disk \
             (restart {n} of {retries}); {console}"
        );
        self.event(EventType::Warning, Reason::BootRestarted, &msg);
        self.write_status().await?;
        let name = crate::reconciler::names::domain_name(id);
        self.vm.destroy(&name).await?;
        self.vm.start(&name).await?;
        self.fault("after_boot_restart").await?;
        Ok(Action::Requeue(PROBE_INTERVAL))
    }

    fn ssh_probe_addr(&self, port: u16) -> SocketAddr {
        let (node, ssh) = self.ctx.nodes.binds(self.node.as_ref());
        let bind = self.ctx.config.ssh_bind;
        let ip = match ssh {
            // The node's own SSH address.
            Some(a) if !a.is_unspecified() => a,
            // Another host: its SSH ports are reached at its address.
            _ if node != crate::domain::NodeAddress::LOOPBACK => node.ip(),
            _ if bind.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            _ => bind,
        };
        SocketAddr::new(ip, port)
    }

    /// Step 7: readiness, through the host nginx and the SSH banner. Ready
    /// writes the final status; not yet ready requeues until the deadline.
    pub async fn readiness(&mut self, (ssh, http): (u16, u16)) -> Result<Action, ReconcileError> {
        // A pool guest has no route (no owner yet): its port forward is probed.
        let url = match self.rec.warm {
            true => format!(
                "http://{}:{http}/",
                self.ctx.nodes.address(self.node.as_ref()).host()
            ),
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
            let msg = match self.rec.warm {
                true => "warm-pool guest answers HTTP and SSH; claimable",
                false => "site answers through nginx and SSH is up",
            };
            self.condition(C::WebReady, true, Reason::Serving, msg);
            let was_ready = self.rec.status.phase == Phase::Ready
                && self.rec.status.observed_generation == self.rec.generation;
            if !was_ready {
                let msg = format!("site and SSH (port {ssh}) are up");
                self.event(EventType::Normal, Reason::Ready, &msg);
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
        if self.st.boot_restarts.is_some() {
            // Still booting (also after a restart of hostd): it holds a place.
            self.ctx.boot_gate.booting(self.id(), self.machine());
        }
        let since = *self.st.provisioning_since.get_or_insert_with(Utc::now);
        let waited = (Utc::now() - since).to_std().unwrap_or_default();
        let timeout = self.ctx.config.ready_timeout;
        if waited > timeout {
            if let Some(restarts) = self.st.boot_restarts {
                // Never ready since it was started: restart it, or give up.
                return self.boot_timeout(restarts, &why).await;
            }
            // It was ready and stopped answering: reported, not restarted.
            self.st.provisioning_since = Some(Utc::now());
            self.write_status().await?;
            return Err(ReconcileError::ReadinessTimeout(timeout, why));
        }
        self.fault("before_status_write").await?;
        self.write_status().await?;
        self.ctx.reset_backoff(self.id());
        Ok(Action::Requeue(PROBE_INTERVAL))
    }
}
