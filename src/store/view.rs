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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Event, HostingRecord, Result, Store, User};
use crate::domain::{HostingId, UserId};
use crate::shutdown::Shutdown;

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

/// One change named by a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Change {
    User(UserId),
    Hosting(HostingId),
    Revoked(Uuid),
}

/// Parses `<kind>:<uuid>|<epoch seconds>`.
fn parse(payload: &str) -> Option<(Change, Option<f64>)> {
    let (head, ts) = match payload.split_once('|') {
        Some((h, t)) => (h, t.parse().ok()),
        None => (payload, None),
    };
    let (kind, id) = head.split_once(':')?;
    let id = Uuid::parse_str(id).ok()?;
    let c = match kind {
        "u" => Change::User(UserId(id)),
        "h" => Change::Hosting(HostingId(id)),
        "r" => Change::Revoked(id),
        _ => return None,
    };
    Some((c, ts))
}

impl Store {
    /// The read view attached to this store, if any.
    pub fn view(&self) -> Option<&Arc<ReadView>> {
        self.view.get()
    }

    /// Attaches a read view and keeps it current until `stop` (spawns the
    /// listening task). A store has at most one view; later calls return it.
    pub fn start_view(&self, stop: Shutdown) -> Arc<ReadView> {
        let mut started = false;
        let view = self
            .view
            .get_or_init(|| {
                started = true;
                Arc::new(ReadView::default())
            })
            .clone();
        if started {
            tokio::spawn(follow(self.clone(), view.clone(), stop));
        }
        view
    }

    /// Refreshes what the view holds of `changes`: one query per kind for
    /// all of them (users, hostings, their events), however many there are,
    /// so the view keeps up with mass status writes.
    async fn refresh(&self, view: &ReadView, changes: &HashSet<Change>) -> Result<()> {
        let ticket = view.ticket();
        let mut users = Vec::new();
        let mut hostings = Vec::new();
        for c in changes {
            match *c {
                Change::User(id) => users.push(id),
                Change::Hosting(id) => hostings.push(id),
                Change::Revoked(jti) => {
                    let exp: Option<(DateTime<Utc>,)> =
                        sqlx::query_as("select expires_at from revoked_tokens where jti = $1")
                            .bind(jti)
                            .fetch_optional(&self.db)
                            .await?;
                    view.set_revoked(jti, exp.map(|e| e.0));
                }
            }
        }
        for chunk in users.chunks(REFRESH_CHUNK) {
            let mut found: HashMap<UserId, User> = self
                .get_users(chunk)
                .await?
                .into_iter()
                .map(|u| (u.id, u))
                .collect();
            for id in chunk {
                view.set_user(*id, found.remove(id), ticket);
            }
        }
        for chunk in hostings.chunks(REFRESH_CHUNK) {
            let mut recs: HashMap<HostingId, HostingRecord> = self
                .get_records(chunk)
                .await?
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
            let ids: Vec<Uuid> = recs.keys().map(|i| i.0).collect();
            let mut events = self.latest_events(Some(&ids)).await?;
            for id in chunk {
                let entry = recs
                    .remove(id)
                    .map(|rec| (rec, events.remove(&id.0).unwrap_or_default()));
                view.set_hosting(*id, entry, ticket);
            }
        }
        Ok(())
    }

    /// The latest [`EVENTS`] events of each hosting (of `ids`, or all),
    /// newest first.
    async fn latest_events(&self, ids: Option<&[Uuid]>) -> Result<HashMap<Uuid, Vec<Event>>> {
        type Row = (Uuid, DateTime<Utc>, String, String, String);
        let rows = match ids {
            // A few: the index, hosting by hosting.
            Some(ids) => {
                sqlx::query_as::<_, Row>(
                    "select i.id, e.at, e.type, e.reason, e.message \
                     from unnest($2::uuid[]) as i(id) cross join lateral ( \
                       select at, type, reason, message, id as n from events \
                       where hosting_id = i.id order by at desc, id desc limit $1) e \
                     order by i.id, e.at desc, e.n desc",
                )
                .bind(EVENTS)
                .bind(ids)
                .fetch_all(&self.db)
                .await?
            }
            // All: one pass over the table.
            None => {
                sqlx::query_as::<_, Row>(
                    "select hosting_id, at, type, reason, message from ( \
                       select hosting_id, at, type, reason, message, \
                              row_number() over (partition by hosting_id order by at desc, id desc) as n \
                       from events) e where n <= $1 order by hosting_id, n",
                )
                .bind(EVENTS)
                .fetch_all(&self.db)
                .await?
            }
        };
        let mut events: HashMap<Uuid, Vec<Event>> = HashMap::new();
        for (h, at, type_, reason, message) in rows {
            events.entry(h).or_default().push(Event {
                at,
                type_,
                reason,
                message,
            });
        }
        Ok(events)
    }

    /// Read-your-writes: this process changed a user (see the module doc).
    pub(crate) fn touched_user(&self, id: UserId) {
        if let Some(v) = self.view.get() {
            v.mark_user(id);
        }
    }

    /// Read-your-writes for a hosting (its spec, status or events).
    pub(crate) fn touched_hosting(&self, id: HostingId) {
        if let Some(v) = self.view.get() {
            v.mark_hosting(id);
        }
    }

    /// Read-your-writes for a revocation: it holds here at once.
    pub(crate) fn touched_revocation(&self, jti: Uuid, expires_at: DateTime<Utc>) {
        if let Some(v) = self.view.get() {
            v.set_revoked(jti, Some(expires_at));
        }
    }

    /// Loads everything the view holds, in four queries.
    async fn relist(&self, view: &ReadView) -> Result<()> {
        let ticket = view.ticket();
        let users = self.list_users().await?;
        let records = self.list_records().await?;
        let mut events = self.latest_events(None).await?;
        let revoked: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as("select jti, expires_at from revoked_tokens where expires_at > now()")
                .fetch_all(&self.db)
                .await?;
        let mut inner = Inner::default();
        for u in users {
            inner.users.insert(u.id, Arc::new(u));
        }
        for rec in records.into_iter().filter(|r| !r.warm) {
            let ev = events.remove(&rec.id.0).unwrap_or_default();
            inner.owner.insert(rec.id, rec.user_id);
            let user = rec.user_id;
            let h = ViewHosting {
                rec,
                events: ev,
                body: OnceLock::new(),
            };
            inner.hostings.insert(user, Arc::new(h));
        }
        inner.revoked = revoked.into_iter().collect();
        let mut cur = view.inner.write().unwrap();
        // Writes made after the list began stay stale (their refreshes are
        // queued); every entry is now at this ticket.
        inner.stale_users = std::mem::take(&mut cur.stale_users);
        inner.stale_users.retain(|_, w| *w > ticket);
        inner.stale_hostings = std::mem::take(&mut cur.stale_hostings);
        inner.stale_hostings.retain(|_, w| *w > ticket);
        inner.user_version = inner.users.keys().map(|k| (*k, ticket)).collect();
        inner.hosting_version = inner.owner.keys().map(|k| (*k, ticket)).collect();
        *cur = inner;
        drop(cur);
        view.relists.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Opens the listening connection.
async fn connect(store: &Store) -> std::result::Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut l = sqlx::postgres::PgListener::connect(store.url()).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}

/// What the forwarding task passes on: a notification's change and when
/// it was sent, or `None` once the connection was lost.
type Notified = Option<(Change, Option<f64>)>;

/// Reads notifications into a channel until the connection is lost.
/// `PgListener::try_recv` must never be cancelled: cancelled while it
/// reconnects, it would drop its report of the lost connection (and with it
/// the notifications missed meanwhile), so it runs here alone and the
/// follower waits on the channel, which it may stop waiting on freely.
async fn forward(mut listener: sqlx::postgres::PgListener, tx: mpsc::UnboundedSender<Notified>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(c) = parse(n.payload()) {
                    if tx.send(Some(c)).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {
                let _ = tx.send(None);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "read view: LISTEN connection broke");
                let _ = tx.send(None);
                return;
            }
        }
    }
}

/// LISTEN, list, then apply changes; on any break, leave live mode,
/// reconnect and relist.
async fn follow(store: Store, view: Arc<ReadView>, stop: Shutdown) {
    let mut local = view
        .refresh_rx
        .lock()
        .unwrap()
        .take()
        .expect("one follower per view");
    loop {
        view.live.store(false, Ordering::Release);
        let listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = connect(&store) => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "read view: LISTEN failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let (tx, mut notified) = mpsc::unbounded_channel();
        let forwarder = AbortOnDrop(tokio::spawn(forward(listener, tx)));
        // Listening before listing: a change committed during the list is
        // both in the list and queued as a notification (applied twice,
        // which is harmless), never in neither.
        if let Err(e) = store.relist(&view).await {
            tracing::warn!(error = %e, "read view: list failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        view.live.store(true, Ordering::Release);
        tracing::debug!("read view live");
        loop {
            // The first change, from this process or a notification; then,
            // for a moment, everything else from both, deduplicated, to be
            // refreshed together: under a burst of writes (thousands of
            // hostings converging) a refresh takes hundreds of changes per
            // query instead of a few.
            let mut batch = HashSet::new();
            let mut sent = Vec::new();
            let mut lost = false;
            let mut take = |n: Notified, batch: &mut HashSet<Change>| match n {
                Some((c, at)) => {
                    batch.insert(c);
                    sent.push(at);
                    false
                }
                None => true,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                n = notified.recv() => {
                    let delay = view.delay_ms.load(Ordering::Relaxed);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    lost |= take(n.flatten(), &mut batch);
                }
                Some(c) = local.recv() => {
                    batch.insert(c);
                }
            }
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while !lost && batch.len() < BATCH_MAX {
                while let Ok(c) = local.try_recv() {
                    batch.insert(c);
                }
                match tokio::time::timeout_at(deadline, notified.recv()).await {
                    Ok(n) => lost |= take(n.flatten(), &mut batch),
                    Err(_) => break,
                }
            }
            if let Err(e) = store.refresh(&view, &batch).await {
                tracing::warn!(error = %e, "read view: refresh failed; relisting");
                break;
            }
            for at in sent {
                view.record_lag(at);
            }
            if lost {
                // The connection was lost (notifications may be missing): relist.
                break;
            }
        }
        drop(forwarder);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse(&format!("u:{id}|1795901370.25")),
            Some((Change::User(UserId(id)), Some(1795901370.25)))
        );
        assert_eq!(
            parse(&format!("h:{id}")),
            Some((Change::Hosting(HostingId(id)), None))
        );
        assert_eq!(parse(&format!("r:{id}|x")).unwrap().0, Change::Revoked(id));
        assert_eq!(parse("x:1|2"), None);
        assert_eq!(parse("u:not-a-uuid"), None);
    }
}
