//! The live views (Server-Sent Events): the hosting's status
//! (`/ui/hosting/events`) and its backups (`/ui/backups/events`), both
//! through [`follow`], and the bounds on how many a user and the process
//! hold open.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::pages::live_status;
use super::session::{WebError, WebUser};
use super::{SESSION_EVERY, SSE_PER_USER, SSE_TICK, SSE_TOTAL};
use crate::api::AppState;
use crate::domain::UserId;

/// The dashboard's shared state: open live views, per user, oldest first.
#[derive(Default)]
pub struct WebState {
    pub(super) streams: Mutex<HashMap<UserId, VecDeque<Arc<AtomicBool>>>>,
}

/// One open live view, counted until dropped; `replaced` is set when the
/// user opened more than [`SSE_PER_USER`] and this is the oldest.
pub(super) struct StreamSlot {
    pub(super) web: Arc<WebState>,
    pub(super) user: UserId,
    pub(super) replaced: Arc<AtomicBool>,
}

impl WebState {
    /// A slot for a new live view of `user`. Past [`SSE_PER_USER`], the
    /// user's oldest view is told to end (a browser does not say when it
    /// leaves a page: its stream is noticed gone only at the next write, so
    /// refusing the newest would leave a user who clicks quickly through
    /// pages without live updates). `None` past [`SSE_TOTAL`] in all.
    pub(super) fn open(self: &Arc<Self>, user: UserId) -> Option<StreamSlot> {
        let mut m = self.streams.lock().unwrap();
        let total: usize = m.values().map(VecDeque::len).sum();
        let mine = m.entry(user).or_default();
        if mine.len() >= SSE_PER_USER {
            if let Some(oldest) = mine.pop_front() {
                oldest.store(true, Ordering::Relaxed);
            }
        } else if total >= SSE_TOTAL {
            if mine.is_empty() {
                m.remove(&user);
            }
            return None;
        }
        let replaced = Arc::new(AtomicBool::new(false));
        m.entry(user).or_default().push_back(replaced.clone());
        Some(StreamSlot {
            web: self.clone(),
            user,
            replaced,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.web.streams.lock().unwrap();
        if let Some(q) = m.get_mut(&self.user) {
            q.retain(|f| !Arc::ptr_eq(f, &self.replaced));
            if q.is_empty() {
                m.remove(&self.user);
            }
        }
    }
}

/// What one look at the data found.
pub(super) enum Look {
    /// The view as JSON (sent when it differs from the last one sent).
    Json(String),
    /// The thing followed is gone: a `gone` event ends the stream.
    Gone,
    /// Not readable this time (Postgres away): look again next tick.
    Retry,
}

/// A Server-Sent Events stream for the signed-in user: `look` runs every
/// `tick`; each new answer goes out as an `event` event, `gone` ends the
/// stream, and `ended` when the session ends (checked every
/// [`SESSION_EVERY`] ticks), `replaced` when a newer view of the same user
/// took its slot. Bounded per user and in all by [`WebState`].
pub(super) fn follow<F, Fut>(
    st: AppState,
    u: WebUser,
    event: &'static str,
    tick: Duration,
    look: F,
) -> Result<Response, WebError>
where
    F: Fn(AppState, UserId) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Look> + Send,
{
    let web = st.web.clone();
    let slot = web.open(u.user.id).ok_or_else(|| {
        WebError::Page(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live views open".into(),
        )
    })?;
    struct Loop<F> {
        st: AppState,
        sid: Vec<u8>,
        user: UserId,
        last: Option<String>,
        first: bool,
        done: bool,
        ticks: u32,
        look: Arc<F>,
        _slot: StreamSlot,
    }
    let init = Loop {
        st,
        sid: u.sid,
        user: u.user.id,
        last: None,
        first: true,
        done: false,
        ticks: 0,
        look: Arc::new(look),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(init, move |mut l| async move {
        if l.done {
            return None;
        }
        loop {
            if !l.first {
                tokio::time::sleep(tick).await;
            }
            l.first = false;
            // A newer view of this user took the slot: `replaced` tells the
            // page to stop (not to reconnect and take another one's).
            if l._slot.replaced.load(Ordering::Relaxed) {
                l.done = true;
                let ev = SseEvent::default().event("replaced").data("replaced");
                return Some((Ok::<_, std::convert::Infallible>(ev), l));
            }
            // The session is looked at every SESSION_EVERY ticks (a logout
            // ends the stream within seconds).
            l.ticks += 1;
            if l.ticks % SESSION_EVERY == 1 {
                match l.st.store.session_user(&l.sid).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        l.done = true;
                        let ev = SseEvent::default().event("ended").data("session ended");
                        return Some((Ok::<_, std::convert::Infallible>(ev), l));
                    }
                    Err(_) => continue,
                }
            }
            match (l.look)(l.st.clone(), l.user).await {
                Look::Retry => continue,
                Look::Gone => {
                    l.done = true;
                    let ev = SseEvent::default().event("gone").data("gone");
                    return Some((Ok(ev), l));
                }
                Look::Json(json) => {
                    if l.last.as_deref() != Some(json.as_str()) {
                        l.last = Some(json.clone());
                        return Some((Ok(SseEvent::default().event(event).data(json)), l));
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `GET /ui/hosting/events`: one `status` event (JSON of [`LiveStatus`])
/// whenever what the hosting page shows changes, `gone` when the hosting
/// no longer exists, `ended` when the session does.
///
/// [`LiveStatus`]: super::LiveStatus
pub(super) async fn hosting_events(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    follow(st, u, "status", SSE_TICK, |st, user| async move {
        // The read view when it vouches for the hosting (no query);
        // Postgres otherwise.
        let cached =
            st.store
                .view()
                .and_then(|v| v.live())
                .and_then(|live| match live.hosting(user) {
                    crate::store::view::Cached::Hit(h) => Some(h),
                    _ => None,
                });
        let (rec, evs) = match cached {
            Some(h) => (h.rec.clone(), h.events.clone()),
            None => {
                let rec = match st.store.get_record_by_user(user).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Look::Gone,
                    Err(_) => return Look::Retry,
                };
                let Ok(evs) = st.store.recent_events(rec.id, 20).await else {
                    return Look::Retry;
                };
                (rec, evs)
            }
        };
        Look::Json(serde_json::to_string(&live_status(&st, &rec, &evs)).expect("status serializes"))
    })
}

/// `GET /ui/backups/events`: one `backups` event (JSON of
/// [`BackupsLive`](super::backups::BackupsLive)) whenever the backups list
/// changes (state, what a running one is doing, its elapsed seconds).
pub(super) async fn backups_events(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    follow(st, u, "backups", BACKUPS_TICK, |st, user| async move {
        match super::backups::backups_live(&st, user).await {
            Ok(Some(b)) => Look::Json(serde_json::to_string(&b).expect("backups serialize")),
            Ok(None) => Look::Gone,
            Err(_) => Look::Retry,
        }
    })
}

/// How often the backups view looks (a query each time).
const BACKUPS_TICK: Duration = Duration::from_secs(1);
