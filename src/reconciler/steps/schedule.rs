//! Step 0, scheduling: admission of a new hosting (or one being started
//! again) against the host's capacity, oldest first and tenants before the
//! warm pool; and the [`Ledger`] the decisions are made from.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Pass;
use crate::domain::{ConditionType as C, EventType, HostingId, Phase, Reason};
use crate::drivers::VmDriver;
use crate::reconciler::{Action, ReconcileError};

impl Pass<'_> {
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
    host: Option<crate::drivers::HostResources>,
    read_at: Option<Instant>,
    /// Admitted here, ports not yet recorded: the database does not show
    /// them as holding room yet, so a refresh keeps them admitted.
    admitting: std::collections::HashSet<HostingId>,
}

impl Ledger {
    /// Reads the rows and the host's resources again if they are older
    /// than [`LEDGER_TTL`]; returns the host's resources.
    pub(crate) async fn refresh(
        &mut self,
        store: &crate::store::Store,
        vm: &dyn VmDriver,
    ) -> Result<crate::drivers::HostResources, ReconcileError> {
        if let (Some(host), Some(t)) = (self.host, self.read_at) {
            if t.elapsed() < LEDGER_TTL {
                return Ok(host);
            }
        }
        let rows = store.capacity_rows().await?;
        let host = vm.resources().await?;
        self.rows = rows.into_iter().map(|r| (r.id, r)).collect();
        for id in &self.admitting {
            if let Some(r) = self.rows.get_mut(id) {
                (r.admitted, r.waiting) = (true, false);
            }
        }
        self.host = Some(host);
        self.read_at = Some(Instant::now());
        Ok(host)
    }

    /// What the others hold and older waiting hostings want, for `me`.
    pub(crate) fn usage(
        &self,
        me: (HostingId, chrono::DateTime<chrono::Utc>),
    ) -> crate::store::CapacityUsage {
        crate::capacity::usage(self.rows.values(), Some(me))
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
    pub(crate) fn decided(&mut self, rec: &crate::store::HostingRecord, admitted: bool) {
        let row = crate::store::CapacityRow {
            id: rec.id,
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
