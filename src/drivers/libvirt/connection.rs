//! The shared libvirt connection: opened lazily, reopened when it dies,
//! with the domain-event callbacks registered on each one. Every libvirt call
//! runs on `spawn_blocking` through [`LibvirtDriver::with_conn`].

use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use super::{is, lv, LibvirtDriver};
use crate::drivers::domain_events::{self, Registration, Watch};
use crate::drivers::{DriverError, DriverResult};

/// The open connection and the event callbacks registered on it.
pub(super) struct Live {
    conn: Connect,
    events: Option<Registration>,
}

impl Live {
    /// Deregisters the callbacks (they hold a reference on the connection,
    /// which would otherwise never close) and drops this handle.
    pub(super) fn release(self) {
        if let Some(r) = self.events {
            r.release(&self.conn);
        }
    }
}

impl LibvirtDriver {
    /// A handle on the shared connection, (re)opened when there is none or it
    /// died. The lock is held only for this, never across a libvirt call
    /// (registering the event callbacks on a new connection is local to
    /// this process for `test:///`, one round trip for libvirtd).
    pub(super) fn handle(
        conn: &Mutex<Option<Live>>,
        uri: &str,
        watch: &Arc<Watch>,
    ) -> DriverResult<Connect> {
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = guard.as_ref() {
            if l.conn.is_alive().unwrap_or(false) {
                return Ok(l.conn.clone());
            }
        }
        // Dropping the old handle only releases our reference: calls still
        // running on it keep theirs.
        if let Some(old) = guard.take() {
            old.release();
        }
        let events = domain_events::ensure_event_loop();
        let c = Connect::open(Some(uri)).map_err(|e| DriverError::Connection(e.to_string()))?;
        if events {
            // A peer that stops answering (a dead node, a cut network) fails
            // calls after ~15 s instead of hanging them; needs the event loop.
            // Local test drivers have no keepalive: ignored.
            let _ = c.set_keep_alive(5, 3);
        }
        let events = events.then(|| Registration::new(&c, watch)).flatten();
        {
            // Changes made while no connection watched are unknown: read
            // every marker again.
            let mut cache = watch.markers.lock().unwrap_or_else(|p| p.into_inner());
            cache.entries.clear();
            cache.snapshot = None;
            cache.dirty.clear();
            cache.watched = events.is_some();
            cache.epoch += 1;
        }
        if events.is_none() {
            tracing::warn!(uri, "libvirt connection delivers no domain events; changes made behind hostd's back are seen at the resync");
        }
        *guard = Some(Live {
            conn: c.clone(),
            events,
        });
        Ok(c)
    }

    /// Runs `f` with the shared connection on a blocking thread. A connection
    /// that turns out to be dead is dropped, so the next call reconnects.
    pub(super) async fn with_conn<T, F>(&self, f: F) -> DriverResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> DriverResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let uri = self.uri.clone();
        let watch = self.watch.clone();
        tokio::task::spawn_blocking(move || {
            let c = Self::handle(&conn, &uri, &watch)?;
            let r = f(&c);
            if matches!(r, Err(DriverError::Libvirt(_))) && !c.is_alive().unwrap_or(false) {
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                // Unless another call has replaced it with a live one meanwhile.
                if guard
                    .as_ref()
                    .is_some_and(|g| !g.conn.is_alive().unwrap_or(false))
                {
                    if let Some(old) = guard.take() {
                        old.release();
                    }
                }
            }
            r
        })
        .await
        .map_err(|e| DriverError::Other(format!("libvirt task panicked: {e}")))?
    }

    /// Runs `op` on one of our domains if it is running; absent or stopped
    /// (also when it stopped meanwhile: `OperationInvalid`) is success.
    /// `event`: the lifecycle event `op` causes at once, if any.
    pub(super) async fn if_running<F>(
        &self,
        name: &str,
        event: Option<u32>,
        op: F,
    ) -> DriverResult<()>
    where
        F: FnOnce(&Domain) -> Result<(), virt::error::Error> + Send + 'static,
    {
        let (name, owner) = (name.to_string(), self.owner.clone());
        let watch = self.watch.clone();
        self.with_conn(move |c| {
            let Some(d) = Self::lookup_ours(c, &name, &owner)? else {
                return Ok(());
            };
            if !d.is_active().map_err(lv)? {
                return Ok(());
            }
            let r = match event {
                Some(e) => watch.causing(&name, e, || op(&d)),
                None => op(&d),
            };
            match r {
                Err(e) if !is(&e, ErrorNumber::OperationInvalid) => Err(lv(e)),
                _ => Ok(()),
            }
        })
        .await
    }
}

impl Drop for LibvirtDriver {
    /// Deregisters the event callbacks (see [`Live::release`]).
    fn drop(&mut self) {
        let live = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(live) = live {
            live.release();
        }
    }
}
