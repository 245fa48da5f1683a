//! Step 7: readiness, through the host nginx and the SSH banner.

use std::net::SocketAddr;

use chrono::Utc;

use super::{Pass, PROBE_INTERVAL};
use crate::domain::{ConditionType as C, EventType, Phase, Reason};
use crate::drivers::probe;
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
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
        let url = match self.rec.warm {
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
}
