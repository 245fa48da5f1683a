//! Step 6: the nginx route (to the guest, or the 503 page when stopped),
//! submitted to the batcher and not waited for; hand edits are repaired.

use super::{Pass, ROUTE_WAIT};
use crate::domain::{has_true, ConditionType as C, EventType, Phase, Reason};
use crate::drivers::RouteOutcome;
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
    /// Step 6: the nginx route (to the guest, or the 503 page when stopped);
    /// repairs hand edits with an event. A change is submitted to the nginx
    /// batcher and not waited for (`Ok(false)`): the reconcile ends with
    /// [`Pass::route_pending`], the worker moves on, and the batch (one
    /// validation and one reload for every change pending) wakes the
    /// hosting when it is done. `Ok(true)`: nginx serves the wanted route.
    pub async fn route(&mut self, http: Option<u16>) -> Result<bool, ReconcileError> {
        let rec = self.rec;
        let spec = self.ctx.route_spec_on(rec, self.node.as_ref(), http);
        let proxy = &self.ctx.proxy;
        let want = proxy.render(&spec);
        match proxy.outcome(rec.id, Some(&want)) {
            // In a batch: the batch's end wakes this hosting.
            Some(RouteOutcome::Pending) => return Ok(false),
            Some(RouteOutcome::Failed(e)) => {
                // Reported once; the next pass submits it again.
                proxy.forget(rec.id);
                self.ctx.memory.with(rec.id, |m| m.route_note.take());
                return Err(e.into());
            }
            Some(RouteOutcome::Applied) => {
                // Consumed: later passes compare the file again (drift).
                proxy.forget(rec.id);
                let note = self.ctx.memory.with(rec.id, |m| m.route_note.take());
                if let Some((reason, msg)) = note {
                    self.fault("after_route_write").await?;
                    if reason == Reason::RouteRepaired {
                        self.repair(reason, &msg);
                    } else {
                        self.event(EventType::Normal, reason, &msg);
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
                        self.ctx.memory.with(rec.id, |m| m.route_note = Some(note));
                    }
                    proxy.submit(rec.id, Some(spec), self.ctx.waker(rec.id));
                    return Ok(false);
                }
            }
        }
        let (reason, msg) = match http {
            Some(p) => (
                Reason::Configured,
                format!(
                    "/{}/ proxied to {}:{p}",
                    rec.user_id,
                    self.ctx.nodes.address(self.node.as_ref()).host()
                ),
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
        // stopped page), or for another set of host names (a custom domain
        // verified or removed since, HSTS turned on or off), is a
        // transition, not a hand edit.
        let without_hosts = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with("host:") && !l.starts_with("hsts:"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let ours = |h: &str| {
            [rec.status.http_port, None].into_iter().any(|p| {
                without_hosts(&proxy.render(&self.ctx.route_spec_on(rec, self.node.as_ref(), p)))
                    == without_hosts(h)
            })
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
}
