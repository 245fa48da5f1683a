//! The live status stream (`/ui/hosting/events`, Server-Sent Events) and the
//! bounds on how many a user and the process hold open.

use std::collections::HashMap;
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

/// The dashboard's shared state: open live views.
#[derive(Default)]
pub struct WebState {
    pub(super) streams: Mutex<HashMap<UserId, usize>>,
}

/// One open live view, counted until dropped.
pub(super) struct StreamSlot {
    pub(super) web: Arc<WebState>,
    pub(super) user: UserId,
}

impl WebState {
    pub(super) fn open(self: &Arc<Self>, user: UserId) -> Option<StreamSlot> {
        let mut m = self.streams.lock().unwrap();
        let total: usize = m.values().sum();
        let mine = m.entry(user).or_default();
        if *mine >= SSE_PER_USER || total >= SSE_TOTAL {
            return None;
        }
        *mine += 1;
        Some(StreamSlot {
            web: self.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.web.streams.lock().unwrap();
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// `GET /ui/hosting/events`: Server-Sent Events, one `status` event (JSON
/// of [`LiveStatus`]) whenever what the page shows changes, `gone` when
/// the hosting no longer exists, `ended` when the session does.
pub(super) async fn hosting_events(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    let web = st.web.clone();
    let slot = web.open(u.user.id).ok_or_else(|| {
        WebError::Page(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live views open".into(),
        )
    })?;
    struct Loop {
        st: AppState,
        sid: Vec<u8>,
        user: UserId,
        last: Option<String>,
        first: bool,
        done: bool,
        ticks: u32,
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
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(init, |mut l| async move {
        if l.done {
            return None;
        }
        loop {
            if !l.first {
                tokio::time::sleep(SSE_TICK).await;
            }
            l.first = false;
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
            // The read view when it vouches for the hosting (no query);
            // Postgres otherwise.
            let cached = l.st.store.view().and_then(|v| v.live()).and_then(|live| {
                match live.hosting(l.user) {
                    crate::store::view::Cached::Hit(h) => Some(h),
                    _ => None,
                }
            });
            let (rec, evs) = match cached {
                Some(h) => (h.rec.clone(), h.events.clone()),
                None => {
                    let rec = match l.st.store.get_record_by_user(l.user).await {
                        Ok(r) => r,
                        Err(_) => continue,
                    };
                    let Some(rec) = rec else {
                        l.done = true;
                        let ev = SseEvent::default().event("gone").data("no hosting");
                        return Some((Ok(ev), l));
                    };
                    let Ok(evs) = l.st.store.recent_events(rec.id, 20).await else {
                        continue;
                    };
                    (rec, evs)
                }
            };
            let json =
                serde_json::to_string(&live_status(&l.st, &rec, &evs)).expect("status serializes");
            if l.last.as_deref() != Some(json.as_str()) {
                l.last = Some(json.clone());
                return Some((Ok(SseEvent::default().event("status").data(json)), l));
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
