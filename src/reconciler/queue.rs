//! The work queue: keyed by hosting id, deduplicated, delayed items, and never
//! two reconciles of one hosting at once (an item queued while its hosting is
//! being reconciled waits until that reconcile ends).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::time::Instant;

use crate::domain::HostingId;

#[derive(Default)]
struct State {
    /// Queued items and when they become due (earliest wins).
    scheduled: HashMap<HostingId, Instant>,
    /// Items being reconciled now.
    in_flight: HashSet<HostingId>,
    /// Items re-queued while in flight: due time to apply once done.
    deferred: HashMap<HostingId, Instant>,
}

/// A deduplicating delayed work queue.
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: tokio::sync::Notify,
}

impl WorkQueue {
    /// Queues `id` to run at `at` (or earlier, if already queued earlier).
    pub fn add_at(&self, id: HostingId, at: Instant) {
        let mut s = self.state.lock().unwrap();
        let slot = if s.in_flight.contains(&id) {
            &mut s.deferred
        } else {
            &mut s.scheduled
        };
        let e = slot.entry(id).or_insert(at);
        if at < *e {
            *e = at;
        }
        drop(s);
        self.notify.notify_one();
    }

    pub fn add_now(&self, id: HostingId) {
        self.add_at(id, Instant::now());
    }

    /// Takes one due item (marking it in flight), or returns when the next is due.
    pub fn try_take(&self) -> Result<HostingId, Option<Instant>> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let mut next: Option<(HostingId, Instant)> = None;
        for (id, at) in &s.scheduled {
            if next.map(|(_, n)| *at < n).unwrap_or(true) {
                next = Some((*id, *at));
            }
        }
        match next {
            Some((id, at)) if at <= now => {
                s.scheduled.remove(&id);
                s.in_flight.insert(id);
                Ok(id)
            }
            Some((_, at)) => Err(Some(at)),
            None => Err(None),
        }
    }

    /// Marks `id` finished; a deferred re-queue becomes scheduled.
    pub fn done(&self, id: HostingId) {
        let mut s = self.state.lock().unwrap();
        s.in_flight.remove(&id);
        if let Some(at) = s.deferred.remove(&id) {
            let e = s.scheduled.entry(id).or_insert(at);
            if at < *e {
                *e = at;
            }
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Queued plus in-flight items.
    pub fn depth(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.scheduled.len() + s.in_flight.len()
    }

    pub fn is_queued_or_running(&self, id: HostingId) -> bool {
        let s = self.state.lock().unwrap();
        s.scheduled.contains_key(&id) || s.in_flight.contains(&id)
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dedups_and_serializes() {
        let q = WorkQueue::default();
        let id = HostingId(uuid::Uuid::new_v4());
        q.add_now(id);
        q.add_now(id);
        assert_eq!(q.depth(), 1);
        assert_eq!(q.try_take(), Ok(id));
        // Re-queued while in flight: not taken again until done.
        q.add_now(id);
        assert!(q.try_take().is_err());
        q.done(id);
        assert_eq!(q.try_take(), Ok(id));
        q.done(id);
        q.add_at(id, Instant::now() + Duration::from_secs(60));
        assert!(matches!(q.try_take(), Err(Some(_))));
    }
}
