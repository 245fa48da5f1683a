//! The reconciler's memory of each hosting between passes: everything it
//! keeps in process rather than in Postgres, in one map under one lock, so
//! that forgetting a hosting is one call ([`Memory::forget`]) and nothing is
//! left behind. None of it is desired state: a restart loses it and the
//! next passes rebuild what matters (backoff starts again, a shutdown is
//! asked again, the console is copied again).

use std::collections::HashMap;
use std::sync::Mutex;

use backon::ExponentialBackoff;
use tokio::time::Instant;

use crate::domain::{HostingId, Reason};

/// What the reconciler remembers of one hosting.
#[derive(Default)]
pub struct Remembered {
    /// Error backoff and consecutive failures (cleared on success).
    pub backoff: Option<(ExponentialBackoff, u32)>,
    /// When a graceful shutdown was asked for.
    pub shutdown_asked: Option<Instant>,
    /// Console log size last copied to the store, and when (see `console`).
    pub console_seen: Option<(u64, Instant)>,
    /// What to record once a submitted route is served: a repair (Warning)
    /// or a plain "routed", decided when the change was submitted.
    pub route_note: Option<(Reason, String)>,
    /// Until when a tenant's live seed changes wait for the next boot (its
    /// guest agent failed).
    pub agent_cooldown_until: Option<Instant>,
}

impl Remembered {
    fn is_empty(&self) -> bool {
        self.backoff.is_none()
            && self.shutdown_asked.is_none()
            && self.console_seen.is_none()
            && self.route_note.is_none()
            && self.agent_cooldown_until.is_none()
    }
}

/// Per-hosting memory (see the module documentation).
#[derive(Default)]
pub struct Memory {
    map: Mutex<HashMap<HostingId, Remembered>>,
}

impl Memory {
    /// Runs `f` on what is remembered of `id` (an empty entry if nothing);
    /// an entry left empty is dropped.
    pub fn with<T>(&self, id: HostingId, f: impl FnOnce(&mut Remembered) -> T) -> T {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(id).or_default();
        let out = f(entry);
        if entry.is_empty() {
            map.remove(&id);
        }
        out
    }

    /// Forgets everything about `id` (a hosting that is gone).
    pub fn forget(&self, id: HostingId) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Whether anything is remembered of `id`.
    pub fn knows(&self, id: HostingId) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    /// How many hostings something is remembered of.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is remembered at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
