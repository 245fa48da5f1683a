//! The API's in-process read view: users, their hostings (with status and
//! the latest events) and live token revocations, kept current by
//! Postgres `LISTEN hostd_view` (triggers in the `read_view` migration), so
//! authentication, `GET /host/my` and `/auth/me` need no database round
//! trip. Like the kube-apiserver's watch cache: an initial list, then
//! changes; on a broken or re-established connection, a relist.
//!
//! Consistency:
//! - Writes still go to Postgres first. A write made through this process's
//!   [`Store`] marks what it changed *stale* before it returns: readers of
//!   a stale entry go to Postgres ([`Cached::Unknown`]) until a refresh that
//!   began after the write has replaced it (the write also queues that
//!   refresh). So this process always reads its own writes (a logout, a
//!   password change, a create, the reconciler's status), at the cost of
//!   one database read per request in the moment between.
//! - Changes made elsewhere (the reconciler's status, another API process,
//!   SQL by an operator) arrive with the notification: the lag is measured
//!   from the trigger's clock to the applied change and reported by
//!   [`ReadView::stats`] (`health/detailed` for admins).
//! - While the view is not live (before the first list, after the listening
//!   connection broke, until the relist), [`ReadView::live`] is `None` and
//!   callers read Postgres as before: the view never serves what it cannot
//!   vouch for.
//!
//! Map: the view and its reads here; [`follow`] keeps it current (LISTEN,
//! relist, refresh) and holds the writes' marks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Event, HostingRecord, User};
use crate::domain::{HostingId, UserId};

mod follow;

use follow::Change;

/// The channel the triggers notify on.
pub const CHANNEL: &str = "hostd_view";
/// Events kept per hosting (what `GET /host/my` shows).
pub const EVENTS: i64 = 20;
/// How long the view collects changes after the first before refreshing.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Most changes one refresh takes.
const BATCH_MAX: usize = 5000;
/// Most ids one refresh query names.
const REFRESH_CHUNK: usize = 500;
/// Lags kept for the percentiles in [`ViewStats`].
const LAG_SAMPLES: usize = 4096;

/// A hosting as the view holds it.
pub struct ViewHosting {
    pub rec: HostingRecord,
    /// The latest [`EVENTS`] events, newest first.
    pub events: Vec<Event>,
    /// The API's serialized answer, made once per version of this entry.
    pub body: OnceLock<bytes::Bytes>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, Arc<User>>,
    /// Non-pool hostings by owner (one per user).
    hostings: HashMap<UserId, Arc<ViewHosting>>,
    /// Owner of each hosting in `hostings`.
    owner: HashMap<HostingId, UserId>,
    /// Revoked token ids and when the token would have expired anyway.
    revoked: HashMap<Uuid, DateTime<Utc>>,
    /// Users, and hostings, this process wrote since they were last
    /// refreshed: the ticket of the write (see [`ReadView::ticket`]).
    stale_users: HashMap<UserId, u64>,
    stale_hostings: HashMap<HostingId, u64>,
    /// The ticket of the refresh each entry was last replaced by.
    user_version: HashMap<UserId, u64>,
    hosting_version: HashMap<HostingId, u64>,
}

/// What the view knows of something.
pub enum Cached<T> {
    /// Current (as of the last notification).
    Hit(T),
    /// Known not to exist.
    Absent,
    /// This process changed it and the view has not caught up: ask Postgres.
    Unknown,
}

/// Counters of the view's health.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewStats {
    pub live: bool,
    pub relists: u64,
    pub changes_applied: u64,
    pub users: usize,
    pub hostings: usize,
    /// Notification lag (trigger clock → applied here), milliseconds, over
    /// the last changes.
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub lag_ms_max: Option<f64>,
}

/// The view. Cheap to share (`Arc`).
pub struct ReadView {
    inner: RwLock<Inner>,
    live: AtomicBool,
    relists: AtomicU64,
    applied: AtomicU64,
    /// Orders writes and refreshes (see [`Inner::stale_users`]).
    tickets: AtomicU64,
    lags: std::sync::Mutex<VecDeque<f64>>,
    /// Extra delay before applying notifications, milliseconds (tests only:
    /// it stands for a slow network or a busy process, so a test can show
    /// what does not depend on the view hearing in time).
    delay_ms: AtomicU64,
    /// Refreshes this process's writes asked for.
    refresh_tx: tokio::sync::mpsc::UnboundedSender<Change>,
    refresh_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Change>>>,
}

impl Default for ReadView {
    fn default() -> Self {
        let (refresh_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ReadView {
            inner: Default::default(),
            live: AtomicBool::new(false),
            relists: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            lags: Default::default(),
            refresh_tx,
            refresh_rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl std::fmt::Debug for ReadView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A live view, borrowed for one read.
pub struct Live<'a>(&'a ReadView);

impl Live<'_> {
    /// The user.
    pub fn user(&self, id: UserId) -> Cached<Arc<User>> {
        let i = self.0.inner.read().unwrap();
        if i.stale_users.contains_key(&id) {
            return Cached::Unknown;
        }
        match i.users.get(&id) {
            Some(u) => Cached::Hit(u.clone()),
            None => Cached::Absent,
        }
    }

    /// The user's hosting.
    pub fn hosting(&self, user: UserId) -> Cached<Arc<ViewHosting>> {
        let i = self.0.inner.read().unwrap();
        // A user this process changed may have just been given a hosting
        // (a create, a claim): its hosting is not known yet either.
        if i.stale_users.contains_key(&user) {
            return Cached::Unknown;
        }
        match i.hostings.get(&user) {
            Some(h) if i.stale_hostings.contains_key(&h.rec.id) => Cached::Unknown,
            Some(h) => Cached::Hit(h.clone()),
            None => Cached::Absent,
        }
    }

    /// Whether the token was revoked.
    pub fn is_revoked(&self, jti: Uuid) -> bool {
        self.0.inner.read().unwrap().revoked.contains_key(&jti)
    }
}

impl ReadView {
    /// The view, if it is live.
    pub fn live(&self) -> Option<Live<'_>> {
        self.live.load(Ordering::Acquire).then_some(Live(self))
    }

    /// Delays applying notifications by `d` (tests only; see `delay_ms`).
    #[doc(hidden)]
    pub fn delay_notifications(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ViewStats {
        let (users, hostings) = {
            let i = self.inner.read().unwrap();
            (i.users.len(), i.hostings.len())
        };
        let mut lags: Vec<f64> = self.lags.lock().unwrap().iter().copied().collect();
        lags.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            (!lags.is_empty()).then(|| lags[((lags.len() - 1) as f64 * p).round() as usize])
        };
        ViewStats {
            live: self.live.load(Ordering::Acquire),
            relists: self.relists.load(Ordering::Relaxed),
            changes_applied: self.applied.load(Ordering::Relaxed),
            users,
            hostings,
            lag_ms_p50: pct(0.5),
            lag_ms_p99: pct(0.99),
            lag_ms_max: lags.last().copied(),
        }
    }

    /// The next ticket (a write's, or a refresh's taken before it reads).
    fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Marks a user this process just changed; queues its refresh.
    fn mark_user(&self, id: UserId) {
        let t = self.ticket();
        self.inner.write().unwrap().stale_users.insert(id, t);
        let _ = self.refresh_tx.send(Change::User(id));
    }

    /// Marks a hosting this process just changed; queues its refresh.
    fn mark_hosting(&self, id: HostingId) {
        let t = self.ticket();
        self.inner.write().unwrap().stale_hostings.insert(id, t);
        let _ = self.refresh_tx.send(Change::Hosting(id));
    }

    /// Applies a refresh that took `ticket` before reading Postgres: newer
    /// than what the entry holds, and clears the stale mark of any write
    /// made before it began.
    fn set_user(&self, id: UserId, user: Option<User>, ticket: u64) {
        let mut i = self.inner.write().unwrap();
        if i.user_version.get(&id).is_some_and(|v| *v > ticket) {
            return;
        }
        i.user_version.insert(id, ticket);
        match user {
            Some(u) => {
                i.users.insert(id, Arc::new(u));
            }
            None => {
                i.users.remove(&id);
            }
        }
        if i.stale_users.get(&id).is_some_and(|w| *w < ticket) {
            i.stale_users.remove(&id);
        }
    }

    fn set_hosting(&self, id: HostingId, entry: Option<(HostingRecord, Vec<Event>)>, ticket: u64) {
        let mut i = self.inner.write().unwrap();
        if i.hosting_version.get(&id).is_some_and(|v| *v > ticket) {
            return;
        }
        i.hosting_version.insert(id, ticket);
        if let Some(old) = i.owner.remove(&id) {
            i.hostings.remove(&old);
        }
        match entry {
            Some((rec, events)) if !rec.warm => {
                i.owner.insert(id, rec.user_id);
                let user = rec.user_id;
                let h = ViewHosting {
                    rec,
                    events,
                    body: OnceLock::new(),
                };
                i.hostings.insert(user, Arc::new(h));
            }
            Some(_) => {}
            None => {
                i.hosting_version.remove(&id);
            }
        }
        if i.stale_hostings.get(&id).is_some_and(|w| *w < ticket) {
            i.stale_hostings.remove(&id);
        }
    }

    fn set_revoked(&self, jti: Uuid, expires: Option<DateTime<Utc>>) {
        let mut i = self.inner.write().unwrap();
        let now = Utc::now();
        i.revoked.retain(|_, exp| *exp > now);
        if let Some(exp) = expires {
            i.revoked.insert(jti, exp);
        }
    }

    fn record_lag(&self, sent: Option<f64>) {
        self.applied.fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = sent {
            let now = Utc::now().timestamp_micros() as f64 / 1e6;
            let mut l = self.lags.lock().unwrap();
            if l.len() == LAG_SAMPLES {
                l.pop_front();
            }
            l.push_back(((now - sent) * 1000.0).max(0.0));
        }
    }
}
