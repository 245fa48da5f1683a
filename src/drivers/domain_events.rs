//! libvirt domain events, for the libvirt driver: one event loop thread per
//! process, and on each connection a lifecycle callback and a
//! metadata-change callback. An event does two things:
//! - it drops the domain's cached marker, so the next listing reads it again
//!   (a definition changed behind hostd's back is seen at the next pass, not
//!   when the cache entry ages out);
//! - it reports the domain's name on a [`DomainChanges`] feed, which the
//!   reconciler drains to queue the hosting at once (a domain destroyed or
//!   undefined by hand is repaired without waiting for the resync). The
//!   events of hostd's own define, start, destroy and undefine calls are
//!   expected ([`Watch::causing`]) and not reported: the reconcile that made
//!   them already knows.
//!
//! While events flow, the driver's domain listing is served from a snapshot
//! of the last full listing in which only the domains events touched are
//! read again; everything is listed again every few minutes all the same,
//! and after any reconnect. A connection whose callbacks could not be
//! registered lists everything each time, with short-lived marker entries.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use virt::connect::Connect;

use super::Marker;

/// Markers by domain name, as the listing read them (see
/// `LibvirtDriver::list_domains`).
#[derive(Default)]
pub(super) struct MarkerCache {
    /// Name → (UUID bytes when read, the marker or `None` for unmarked or
    /// another instance's, when to read it again).
    pub entries: HashMap<String, ([u8; 16], Option<Marker>, std::time::Instant)>,
    /// Whether the current connection delivers events: entries may then be
    /// kept long, since any change to a domain drops its entry.
    pub watched: bool,
    /// Incremented when the connection changes: a listing that read
    /// markers across a reconnect keeps none of them.
    pub epoch: u64,
    /// Incremented by every event.
    pub events: u64,
    /// The domains events touched: name → (the `events` count after the
    /// event, when). A listing keeps no marker it read for a domain touched
    /// since it began (the read may predate the change). Entries older than
    /// [`TOUCHED_FOR`] are pruned by each listing: none lasts that long.
    pub touched: HashMap<String, (u64, std::time::Instant)>,
    /// The last full listing, kept current by events (see `LibvirtDriver::
    /// list_domains`): `None` while the connection delivers no events.
    pub snapshot: Option<Snapshot>,
    /// Domains events touched since the last listing began: a listing
    /// served from the snapshot reads these (and only these) again.
    pub dirty: HashSet<String>,
}

/// Every domain of the connection, as a full listing found it and later
/// reads of the domains events touched left it.
pub(super) struct Snapshot {
    /// The connection epoch it belongs to.
    pub epoch: u64,
    /// When to list everything again all the same: a safety net in case an
    /// event was lost, not the way changes are normally seen.
    pub relist_at: std::time::Instant,
    /// Name → (running, the marker or `None` for unmarked or another
    /// instance's).
    pub domains: HashMap<String, (bool, Option<Marker>)>,
}

/// How long [`MarkerCache::touched`] remembers an event.
const TOUCHED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl MarkerCache {
    /// Records an event on `name` and drops its entry.
    fn touch(&mut self, name: &str) {
        self.entries.remove(name);
        self.dirty.insert(name.to_string());
        self.events += 1;
        let now = std::time::Instant::now();
        self.touched.insert(name.to_string(), (self.events, now));
    }

    /// Forgets events older than any listing can be (called by each listing).
    pub fn prune_touched(&mut self) {
        let now = std::time::Instant::now();
        self.touched
            .retain(|_, (_, at)| now.duration_since(*at) < TOUCHED_FOR);
    }

    /// Whether an event touched `name` after the `events` count `since`.
    pub fn touched_since(&self, name: &str, since: u64) -> bool {
        self.touched.get(name).is_some_and(|(n, _)| *n > since)
    }
}

/// Names of domains that changed since the feed was last drained, and a
/// wake-up for whoever drains it. Names are deduplicated, so a burst of
/// events costs one entry per domain.
#[derive(Default)]
pub struct DomainChanges {
    names: Mutex<HashSet<String>>,
    notify: tokio::sync::Notify,
    /// Changes put on the feed (hostd's own expected events are not).
    received: std::sync::atomic::AtomicU64,
}

impl DomainChanges {
    pub(super) fn push(&self, name: String) {
        self.received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name);
        self.notify.notify_one();
    }

    /// Waits until at least one domain changed, then takes every name.
    pub async fn next(&self) -> Vec<String> {
        loop {
            let names: Vec<String> = self
                .names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .collect();
            if !names.is_empty() {
                return names;
            }
            self.notify.notified().await;
        }
    }

    /// How many changes were put on the feed so far.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the callbacks reach: the driver's marker cache and its feed.
pub(super) struct Watch {
    pub markers: Arc<Mutex<MarkerCache>>,
    pub changes: Arc<DomainChanges>,
    /// Events hostd's own calls will cause: (domain name, lifecycle event
    /// type) → how many, and until when they are expected.
    pub expected: Mutex<HashMap<(String, u32), (u32, std::time::Instant)>>,
}

/// How long an expected event is waited for. A call that failed withdraws
/// its expectation; one lost otherwise could hide an event of the same kind
/// on the same domain for this long (the resync still sees the change).
const EXPECT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl Watch {
    /// hostd is about to cause `event` (a `VIR_DOMAIN_EVENT_*` type) on
    /// domain `name`.
    fn expect(&self, name: &str, event: u32) {
        let mut e = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        e.retain(|_, (_, until)| *until > now);
        let slot = e.entry((name.to_string(), event)).or_insert((0, now));
        slot.0 += 1;
        slot.1 = now + EXPECT_FOR;
    }

    /// Runs hostd's own call `f`, which causes `event` on domain `name`
    /// when it succeeds, so that event is not reported as a change.
    pub fn causing<T, E>(
        &self,
        name: &str,
        event: u32,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        self.expect(name, event);
        let r = f();
        if r.is_err() {
            // The event will not come.
            self.take(name, event);
        }
        r
    }

    /// Consumes one expectation of `event` on `name`; whether there was one.
    fn take(&self, name: &str, event: u32) -> bool {
        let mut e = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name.to_string(), event);
        match e.get_mut(&key) {
            Some((n, until)) if *until > std::time::Instant::now() => {
                *n -= 1;
                if *n == 0 {
                    e.remove(&key);
                }
                true
            }
            Some(_) => {
                e.remove(&key);
                false
            }
            None => false,
        }
    }
}

/// Starts libvirt's default event loop on a thread of its own, once per
/// process. It must be registered before a connection is opened for that
/// connection to deliver events. `false` if libvirt refused.
pub(super) fn ensure_event_loop() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::warn!(error = %e, "libvirt event loop unavailable; domain changes are seen at the resync only");
            return false;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        spawned.is_ok()
    })
}

/// Callback ids registered on one connection.
pub(super) struct Registration(Vec<c_int>);

impl Registration {
    /// Registers the callbacks on `conn`; `None` when the connection cannot
    /// deliver events (then nothing stays registered).
    pub fn new(conn: &Connect, watch: &Arc<Watch>) -> Option<Registration> {
        let mut ids = Vec::new();
        let lifecycle: LifecycleCallback = on_lifecycle;
        let metadata: MetadataCallback = on_metadata;
        // SAFETY: libvirt calls each callback with the signature of its event
        // id, so the generic type is only a carrier (what the C macro
        // VIR_DOMAIN_EVENT_CALLBACK does); both are `extern "C"` functions.
        let callbacks: [(u32, virt::sys::virConnectDomainEventGenericCallback); 2] = unsafe {
            [
                (
                    virt::sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                    Some(std::mem::transmute::<LifecycleCallback, GenericCallback>(
                        lifecycle,
                    )),
                ),
                (
                    virt::sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
                    Some(std::mem::transmute::<MetadataCallback, GenericCallback>(
                        metadata,
                    )),
                ),
            ]
        };
        for (event_id, cb) in callbacks {
            let opaque = Box::into_raw(Box::new(watch.clone())) as *mut c_void;
            // SAFETY: `conn` is a live connection; libvirt owns `opaque` from
            // here and gives it back to `free_watch` when the callback is
            // deregistered.
            let id = unsafe {
                virt::sys::virConnectDomainEventRegisterAny(
                    conn.as_ptr(),
                    std::ptr::null_mut(),
                    event_id as c_int,
                    cb,
                    opaque,
                    Some(free_watch),
                )
            };
            if id < 0 {
                // Whether libvirt already freed `opaque` through `freecb` on
                // this path is not documented: leak it (one Arc) rather than
                // risk a double free.
                Registration(ids).release(conn);
                return None;
            }
            ids.push(id);
        }
        Some(Registration(ids))
    }

    /// Deregisters the callbacks (best effort: on a dead connection this
    /// fails and the connection's teardown frees them).
    pub fn release(self, conn: &Connect) {
        for id in self.0 {
            // SAFETY: `conn` is the connection `id` was registered on.
            unsafe { virt::sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
        }
    }
}

type GenericCallback =
    unsafe extern "C" fn(virt::sys::virConnectPtr, virt::sys::virDomainPtr, *mut c_void);
type LifecycleCallback = unsafe extern "C" fn(
    virt::sys::virConnectPtr,
    virt::sys::virDomainPtr,
    c_int,
    c_int,
    *mut c_void,
) -> c_int;
type MetadataCallback = unsafe extern "C" fn(
    virt::sys::virConnectPtr,
    virt::sys::virDomainPtr,
    c_int,
    *const c_char,
    *mut c_void,
);

/// Runs on the event loop thread: drops the cached marker and reports the
/// name, unless hostd expected this lifecycle `event`. Cheap and
/// non-blocking beyond mutexes held for map updates.
///
/// # Safety
/// `dom` is the event's domain and `opaque` the `Arc<Watch>` registered with
/// the callback.
unsafe fn changed(dom: virt::sys::virDomainPtr, opaque: *mut c_void, event: Option<u32>) {
    let watch = &*(opaque as *const Arc<Watch>);
    // The name is owned by the domain object, valid for the call.
    let name = virt::sys::virDomainGetName(dom);
    if name.is_null() {
        return;
    }
    let name = CStr::from_ptr(name).to_string_lossy().into_owned();
    {
        let mut cache = watch.markers.lock().unwrap_or_else(|p| p.into_inner());
        cache.touch(&name);
    }
    if event.is_some_and(|e| watch.take(&name, e)) {
        return;
    }
    watch.changes.push(name);
}

unsafe extern "C" fn on_lifecycle(
    _conn: virt::sys::virConnectPtr,
    dom: virt::sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    changed(dom, opaque, u32::try_from(event).ok());
    0
}

unsafe extern "C" fn on_metadata(
    _conn: virt::sys::virConnectPtr,
    dom: virt::sys::virDomainPtr,
    _kind: c_int,
    _nsuri: *const c_char,
    opaque: *mut c_void,
) {
    changed(dom, opaque, None);
}

unsafe extern "C" fn free_watch(opaque: *mut c_void) {
    drop(Box::from_raw(opaque as *mut Arc<Watch>));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> Watch {
        Watch {
            markers: Default::default(),
            changes: Default::default(),
            expected: Default::default(),
        }
    }

    #[test]
    fn an_expected_event_is_consumed_once_and_a_failed_call_expects_none() {
        let w = watch();
        let stopped = virt::sys::VIR_DOMAIN_EVENT_STOPPED;
        let started = virt::sys::VIR_DOMAIN_EVENT_STARTED;
        w.causing("a", stopped, || Ok::<_, ()>(())).unwrap();
        w.causing("a", stopped, || Ok::<_, ()>(())).unwrap();
        assert!(!w.take("a", started), "another event type");
        assert!(!w.take("b", stopped), "another domain");
        assert!(w.take("a", stopped));
        assert!(w.take("a", stopped));
        assert!(!w.take("a", stopped), "two calls, two events");
        w.causing("a", started, || Err::<(), _>(())).unwrap_err();
        assert!(!w.take("a", started), "a failed call causes nothing");
    }
}
