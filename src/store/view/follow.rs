//! Keeping the read view current: the listening connection, the relist
//! after a break, batched refreshes of what notifications name, and the
//! marks a write through this process leaves on what it changed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::{HostingId, UserId};
use crate::shutdown::Shutdown;
use crate::store::{Event, HostingRecord, Result, Store, User};

use super::{
    Inner, ReadView, ViewHosting, BATCH_MAX, BATCH_WINDOW, CHANNEL, EVENTS, REFRESH_CHUNK,
};

/// One change named by a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Change {
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
                            .fetch_optional(&self.pool())
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
                .fetch_all(&self.pool())
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
                .fetch_all(&self.pool())
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
                .fetch_all(&self.pool())
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
