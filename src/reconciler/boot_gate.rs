//! The boot gate: at most `HOSTD_BOOT_CONCURRENCY` guests booting at once on
//! each machine (nodes at loopback addresses are this machine and share
//! its cores; a node elsewhere, known by its address, has a queue of its
//! own). Under TCG eight boots sharing two cores took about 300 s each
//! (and some never came up), while two at a time took about 25 s each: a
//! queue serves the first users in seconds and the last sooner than a
//! free-for-all serves anyone. First come, first served; tenants before
//! warm-pool guests. A guest holds its place from the moment hostd starts it
//! until it is Ready, fails to boot, stops or is deleted.
//!
//! The gate is the leader's memory. After a restart it learns which guests
//! are still booting as their passes find them running and not yet ready
//! ([`BootGate::booting`]); until then it may let a few more start.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::HostingId;

/// A waiter that has not asked again for this long is forgotten (its
/// hosting was stopped or deleted, or its pass moved on).
const WAITER_TTL: Duration = Duration::from_secs(60);

/// The answer to a hosting that wants to start its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Start it (it holds a place until released).
    Go,
    /// Wait: `place` of `waiting` in the queue, `booting` guests booting.
    Wait {
        place: usize,
        waiting: usize,
        booting: usize,
    },
}

/// The machine a guest boots on: `None` for this one (a node at a loopback
/// address), else its node's address.
pub type Machine = Option<std::net::IpAddr>;

/// One machine's queue.
#[derive(Default)]
struct Queue {
    booting: HashSet<HostingId>,
    /// Waiting hostings: (warm-pool guest, first asked), last asked.
    waiting: HashMap<HostingId, ((bool, Instant), Instant)>,
}

/// See the module documentation.
pub struct BootGate {
    limit: usize,
    inner: Mutex<HashMap<Machine, Queue>>,
}

impl BootGate {
    /// A gate letting `limit` guests boot at once (`0`: no limit).
    pub fn new(limit: usize) -> BootGate {
        BootGate {
            limit,
            inner: Default::default(),
        }
    }

    /// How many guests may boot at once (`0`: no limit).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Asks for a place to start `id`'s guest on `machine`.
    pub fn enter(&self, id: HostingId, warm: bool, machine: Machine) -> Turn {
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A hosting is in one machine's queue (it moved: the other's place ends).
        for (_, q) in all.iter_mut().filter(|(m, _)| **m != machine) {
            q.waiting.remove(&id);
            q.booting.remove(&id);
        }
        let g = all.entry(machine).or_default();
        if g.booting.contains(&id) {
            return Turn::Go;
        }
        let now = Instant::now();
        g.waiting
            .retain(|w, (_, seen)| *w == id || now.duration_since(*seen) < WAITER_TTL);
        let first = g.waiting.get(&id).map_or((warm, now), |(k, _)| *k);
        g.waiting.insert(id, (first, now));
        let mut queue: Vec<((bool, Instant), HostingId)> =
            g.waiting.iter().map(|(h, (k, _))| (*k, *h)).collect();
        queue.sort();
        let place = queue.iter().position(|(_, h)| *h == id).expect("queued") + 1;
        let free = match self.limit {
            0 => usize::MAX,
            n => n.saturating_sub(g.booting.len()),
        };
        if place <= free {
            g.waiting.remove(&id);
            g.booting.insert(id);
            return Turn::Go;
        }
        Turn::Wait {
            place,
            waiting: queue.len(),
            booting: g.booting.len(),
        }
    }

    /// Records that `id`'s guest is booting on `machine` (found running and
    /// not yet ready, e.g. after a restart of hostd).
    pub fn booting(&self, id: HostingId, machine: Machine) {
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let g = all.entry(machine).or_default();
        g.waiting.remove(&id);
        g.booting.insert(id);
    }

    /// `id`'s guest is ready, failed to boot, stopped or is gone: its place
    /// (or its wait) ends.
    ///
    /// Returns the waiting hostings that a free place now awaits (first in
    /// line first), for the caller to wake at once instead of at their next
    /// poll: a place never stands empty for a requeue interval.
    pub fn release(&self, id: HostingId) -> Vec<HostingId> {
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for q in all.values_mut() {
            q.waiting.remove(&id);
        }
        let Some(g) = all.values_mut().find(|q| q.booting.contains(&id)) else {
            return vec![];
        };
        g.booting.remove(&id);
        let free = match self.limit {
            0 => return vec![],
            n => n.saturating_sub(g.booting.len()),
        };
        let mut queue: Vec<((bool, Instant), HostingId)> =
            g.waiting.iter().map(|(h, (k, _))| (*k, *h)).collect();
        queue.sort();
        queue.into_iter().take(free).map(|(_, h)| h).collect()
    }

    /// Guests booting and hostings waiting, on all machines.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (all.values()).fold((0, 0), |(b, w), q| {
            (b + q.booting.len(), w + q.waiting.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_place_names_the_first_in_line_to_wake() {
        let gate = BootGate::new(1);
        let (a, b, pool, c) = (id(), id(), id(), id());
        assert!(matches!(gate.enter(a, false, None), Turn::Go));
        assert!(matches!(gate.enter(pool, true, None), Turn::Wait { .. }));
        assert!(matches!(gate.enter(b, false, None), Turn::Wait { .. }));
        assert!(matches!(gate.enter(c, false, None), Turn::Wait { .. }));
        // A waiter leaving frees no place: nobody to wake.
        assert!(gate.release(c).is_empty());
        assert_eq!(gate.release(a), vec![b], "tenants before the pool");
        assert!(matches!(gate.enter(b, false, None), Turn::Go));
        assert_eq!(gate.release(b), vec![pool]);
    }

    fn id() -> HostingId {
        HostingId(uuid::Uuid::new_v4())
    }

    #[tokio::test]
    async fn first_come_first_served_tenants_before_the_warm_pool() {
        let gate = BootGate::new(2);
        let (a, b, pool, c) = (id(), id(), id(), id());
        assert_eq!(gate.enter(a, false, None), Turn::Go);
        let w = gate.enter(pool, true, None);
        assert_eq!(w, Turn::Go, "a free place is taken at once");
        // Full: the next ones wait, tenants ahead of pool guests.
        let pool2 = id();
        assert!(matches!(
            gate.enter(pool2, true, None),
            Turn::Wait { place: 1, .. }
        ));
        assert!(matches!(
            gate.enter(b, false, None),
            Turn::Wait {
                place: 1,
                waiting: 2,
                booting: 2
            }
        ));
        assert!(matches!(
            gate.enter(c, false, None),
            Turn::Wait { place: 2, .. }
        ));
        assert!(matches!(
            gate.enter(pool2, true, None),
            Turn::Wait { place: 3, .. }
        ));
        // Asking again keeps one's place.
        assert!(matches!(
            gate.enter(b, false, None),
            Turn::Wait { place: 1, .. }
        ));
        gate.release(a);
        // c may not jump ahead of b.
        assert!(matches!(
            gate.enter(c, false, None),
            Turn::Wait { place: 2, .. }
        ));
        assert_eq!(gate.enter(b, false, None), Turn::Go);
        assert_eq!(
            gate.enter(b, false, None),
            Turn::Go,
            "a booting guest keeps its place"
        );
        assert_eq!(gate.counts(), (2, 2));
        gate.release(pool);
        assert_eq!(gate.enter(c, false, None), Turn::Go);
        assert!(matches!(
            gate.enter(pool2, true, None),
            Turn::Wait { place: 1, .. }
        ));
    }

    #[tokio::test]
    async fn each_machine_has_its_own_places() {
        let gate = BootGate::new(1);
        let other: Machine = Some([192, 0, 2, 7].into());
        let (a, b, c, d) = (id(), id(), id(), id());
        assert_eq!(gate.enter(a, false, None), Turn::Go);
        assert_eq!(
            gate.enter(b, false, other),
            Turn::Go,
            "another machine's place"
        );
        assert!(matches!(
            gate.enter(c, false, None),
            Turn::Wait {
                place: 1,
                booting: 1,
                ..
            }
        ));
        assert!(matches!(
            gate.enter(d, false, other),
            Turn::Wait {
                place: 1,
                booting: 1,
                ..
            }
        ));
        assert_eq!(gate.counts(), (2, 2));
        // A place freed on one machine wakes that machine's first in line.
        assert_eq!(gate.release(b), vec![d]);
        assert_eq!(gate.enter(d, false, other), Turn::Go);
        // A hosting that moved waits on its new machine only.
        assert!(matches!(
            gate.enter(c, false, other),
            Turn::Wait {
                place: 1,
                waiting: 1,
                booting: 1
            }
        ));
        assert_eq!(gate.counts(), (2, 1));
        assert!(gate.release(a).is_empty(), "nobody waits here any more");
    }

    #[tokio::test]
    async fn no_limit_lets_all_boot() {
        let gate = BootGate::new(0);
        for _ in 0..50 {
            assert_eq!(gate.enter(id(), false, None), Turn::Go);
        }
    }
}
