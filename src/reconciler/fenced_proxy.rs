//! Fencing for the host nginx: a [`ProxyDriver`] whose route, map and
//! stray-file changes need a current leader term, as [`super::fenced`]
//! does for the hypervisors. Without it a deposed reconciler that has not
//! noticed yet (its lease check runs every 2 s) could rewrite a route the
//! new leader has just written, pointing a site at a guest that moved.
//!
//! `submit` cannot wait (it is called inside a pass and returns at once),
//! so submissions go through one queue, in order: each time the queue is
//! taken the term is checked once, and every change taken is then handed to
//! nginx's batcher, or refused with [`DriverError::Deposed`] (its outcome
//! `Failed`, its waker called). Until then its outcome is `Pending`. One
//! queue keeps two changes of one hosting in the order they were made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::fenced::term_check;
use crate::domain::HostingId;
use crate::drivers::{DriverError, DriverResult, ProxyDriver, RouteOutcome, RouteSpec};
use crate::store::Store;

/// A change waiting for the term check: its content (`None`: removal) and
/// whether it was refused (and why).
type Held = HashMap<HostingId, (Option<String>, Option<Refusal>)>;

#[derive(Debug, Clone)]
enum Refusal {
    Deposed,
    Unconfirmed(String),
}

impl Refusal {
    fn error(&self) -> DriverError {
        match self {
            Refusal::Deposed => DriverError::Deposed,
            Refusal::Unconfirmed(m) => DriverError::Connection(m.clone()),
        }
    }
}

/// A queued change: the hosting, the route, its rendered content (what
/// `outcome` compares) and the waker.
type Submission = (
    HostingId,
    Option<RouteSpec>,
    Option<String>,
    Box<dyn FnOnce() + Send>,
);

/// The host nginx, its changes fenced by the term of a store.
pub struct FencedProxy {
    inner: Arc<dyn ProxyDriver>,
    store: Store,
    held: Arc<Mutex<Held>>,
    queue: mpsc::UnboundedSender<Submission>,
}

impl FencedProxy {
    /// `inner`, fenced by the term of `store`'s connections (the
    /// reconciler's store). Spawns the queue's task (on the caller's runtime).
    pub fn wrap(inner: Arc<dyn ProxyDriver>, store: Store) -> Arc<dyn ProxyDriver> {
        let (queue, rx) = mpsc::unbounded_channel();
        let held: Arc<Mutex<Held>> = Default::default();
        tokio::spawn(run(rx, inner.clone(), store.clone(), held.clone()));
        Arc::new(FencedProxy {
            inner,
            store,
            held,
            queue,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes what is queued, checks the term once, hands it on or refuses it.
async fn run(
    mut rx: mpsc::UnboundedReceiver<Submission>,
    inner: Arc<dyn ProxyDriver>,
    store: Store,
    held: Arc<Mutex<Held>>,
) {
    while let Some(first) = rx.recv().await {
        let mut taken = vec![first];
        while let Ok(more) = rx.try_recv() {
            taken.push(more);
        }
        let verdict = term_check(&store).await;
        for (id, route, content, done) in taken {
            match &verdict {
                Ok(()) => {
                    inner.submit(id, route, done);
                    let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                    // Unless a newer change of this hosting waits behind it.
                    if h.get(&id)
                        .is_some_and(|(c, r)| *c == content && r.is_none())
                    {
                        h.remove(&id);
                    }
                }
                Err(e) => {
                    let refusal = match e {
                        DriverError::Deposed => Refusal::Deposed,
                        other => Refusal::Unconfirmed(other.to_string()),
                    };
                    tracing::warn!(hosting = %id, error = %e, "a route change was not made: this reconciler's term is not current");
                    let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                    if h.get(&id)
                        .is_some_and(|(c, r)| *c == content && r.is_none())
                    {
                        h.insert(id, (content, Some(refusal)));
                    }
                    drop(h);
                    done();
                }
            }
        }
    }
}

#[async_trait]
impl ProxyDriver for FencedProxy {
    fn render(&self, route: &RouteSpec) -> String {
        self.inner.render(route)
    }
    async fn list_routes(&self) -> DriverResult<(Vec<(HostingId, String)>, Vec<String>)> {
        self.inner.list_routes().await
    }
    fn reload_pending(&self) -> bool {
        self.inner.reload_pending()
    }
    async fn read_route(&self, id: HostingId) -> DriverResult<Option<String>> {
        self.inner.read_route(id).await
    }
    async fn apply(&self, id: HostingId, route: Option<RouteSpec>) -> DriverResult<()> {
        term_check(&self.store).await?;
        self.inner.apply(id, route).await
    }
    fn submit(&self, id: HostingId, route: Option<RouteSpec>, done: Box<dyn FnOnce() + Send>) {
        let content = route.as_ref().map(|r| self.inner.render(r));
        self.held().insert(id, (content.clone(), None));
        if let Err(mpsc::error::SendError((id, _, _, done))) =
            self.queue.send((id, route, content, done))
        {
            // The queue's task is gone (the runtime is shutting down).
            let mut h = self.held();
            if let Some(e) = h.get_mut(&id) {
                e.1 = Some(Refusal::Unconfirmed("shutting down".into()));
            }
            drop(h);
            done();
        }
    }
    fn outcome(&self, id: HostingId, content: Option<&str>) -> Option<RouteOutcome> {
        if let Some((c, refusal)) = self.held().get(&id) {
            if c.as_deref() == content {
                return Some(match refusal {
                    None => RouteOutcome::Pending,
                    Some(r) => RouteOutcome::Failed(r.error()),
                });
            }
        }
        self.inner.outcome(id, content)
    }
    fn forget(&self, id: HostingId) {
        self.held().remove(&id);
        self.inner.forget(id)
    }
    async fn remove_stray(&self, file_name: &str) -> DriverResult<()> {
        term_check(&self.store).await?;
        self.inner.remove_stray(file_name).await
    }
    async fn health(&self) -> DriverResult<String> {
        self.inner.health().await
    }
    async fn apply_tls_map(&self, content: &str) -> DriverResult<bool> {
        term_check(&self.store).await?;
        self.inner.apply_tls_map(content).await
    }
}
