//! Listing this instance's domains: from the snapshot the last full listing
//! left (corrected by domain events) or in full, with each domain's marker
//! cached; and looking one domain up, checking it is ours.

use std::sync::Mutex;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use super::{is, lv, parse_marker, LibvirtDriver, Owner};
use crate::drivers::domain_events::{MarkerCache, Snapshot};
use crate::drivers::{DriverError, DriverResult, Marker, ObservedDomain};
use crate::templates::MARKER_NS;

/// How long a domain's marker read by a listing is used before it is read
/// again, when the connection delivers no events (spread from half to one
/// and a half times this, so that re-reads do not come all at once).
///
/// A listing costs two calls (active and inactive domains, which also tell
/// the power state) and a metadata read only for domains that are new, were
/// redefined, or whose entry aged out. With events, any change to a domain
/// (defined, undefined, started, stopped, metadata changed) drops its entry,
/// so a definition changed behind hostd's back is seen at the next listing;
/// entries then live [`MARKER_MAX_AGE_WATCHED`], a safety net only. Without
/// events such a change is seen within 1.5 × [`MARKER_MAX_AGE`] at most.
/// Everything that acts on a domain looks its marker up afresh; only the
/// listing uses the cache.
const MARKER_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(120);

/// Marker lifetime while the connection delivers events (see [`MARKER_MAX_AGE`]).
const MARKER_MAX_AGE_WATCHED: std::time::Duration = std::time::Duration::from_secs(1800);

/// How often, on average, a connection that delivers events lists every
/// domain again instead of serving the listing from its snapshot (jittered
/// ±50%). Events keep the snapshot current; this bounds the damage of an
/// event that was lost.
const RELIST_WATCHED: std::time::Duration = std::time::Duration::from_secs(600);

impl LibvirtDriver {
    /// A listing served from the snapshot the last full listing left, when
    /// the connection delivers events and the snapshot is current: only the
    /// domains events touched since the last listing are read again (one
    /// lookup each), so an idle listing costs no libvirt call at all.
    /// `None`: list everything instead.
    pub(super) fn list_from_snapshot(
        c: &Connect,
        markers: &Mutex<MarkerCache>,
        owner: &Owner,
    ) -> DriverResult<Option<Vec<ObservedDomain>>> {
        let now = std::time::Instant::now();
        let (dirty, epoch) = {
            let mut cache = markers.lock().unwrap_or_else(|p| p.into_inner());
            let current = cache
                .snapshot
                .as_ref()
                .is_some_and(|s| s.epoch == cache.epoch && s.relist_at > now);
            if !cache.watched || !current {
                return Ok(None);
            }
            // Many touched domains (past 64, and a quarter of all): reading
            // each (three calls, each a round trip to libvirtd) costs more
            // than listing everything (two calls, and metadata only where
            // it changed).
            let size = cache.snapshot.as_ref().map_or(0, |s| s.domains.len());
            let n = cache.dirty.len();
            if n > 64 && n * 4 > size {
                return Ok(None);
            }
            (std::mem::take(&mut cache.dirty), cache.epoch)
        };
        // Read without the lock (an event callback waits on it). A domain
        // touched again meanwhile is dirty again: read at the next listing.
        let mut fresh = Vec::with_capacity(dirty.len());
        let mut failed = None;
        for name in &dirty {
            let found = match c.lookup_domain_by_name(name) {
                Ok(d) => match d.is_active() {
                    Ok(running) => Some((running, Self::read_marker(&d, owner))),
                    Err(e) if is(&e, ErrorNumber::NoDomain) => None,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                },
                Err(e) if is(&e, ErrorNumber::NoDomain) => None,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            fresh.push((name.clone(), found));
        }
        let mut cache = markers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = failed {
            cache.dirty.extend(dirty);
            return Err(lv(e));
        }
        let Some(snap) = cache.snapshot.as_mut().filter(|s| s.epoch == epoch) else {
            // Reconnected meanwhile: the snapshot is gone.
            return Ok(None);
        };
        for (name, found) in fresh {
            match found {
                Some(d) => snap.domains.insert(name, d),
                None => snap.domains.remove(&name),
            };
        }
        Ok(Some(marked(&snap.domains)))
    }

    /// Lists every domain (two calls: active and inactive, which also tell
    /// the power state), reading the markers the cache lacks; leaves a
    /// snapshot for the next listings when the connection delivers events.
    pub(super) fn list_all(
        c: &Connect,
        markers: &Mutex<MarkerCache>,
        owner: &Owner,
    ) -> DriverResult<Vec<ObservedDomain>> {
        // Events from here on mark their domains for the next listing.
        markers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dirty
            .clear();
        let active = c
            .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(lv)?;
        let inactive = c
            .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_INACTIVE)
            .map_err(lv)?;
        let now = std::time::Instant::now();
        // What the cache knows, taken under the lock; the markers it does
        // not know are read without it (an event callback waits on it).
        let mut seen = std::collections::HashSet::new();
        let mut listed = Vec::new();
        let (watched, epoch, events) = {
            let cache = markers.lock().unwrap_or_else(|p| p.into_inner());
            let all = active.iter().map(|d| (d, true));
            for (d, running) in all.chain(inactive.iter().map(|d| (d, false))) {
                let Ok(name) = d.name() else { continue };
                // Started or stopped between the two calls: listed twice.
                if !seen.insert(name.clone()) {
                    continue;
                }
                // The raw 16 bytes: formatting the string form costs more
                // than the rest of the listing.
                let uuid = d.uuid().map(|u| *u.as_bytes()).unwrap_or_default();
                let cached = match cache.entries.get(&name) {
                    Some((u, m, until)) if *u == uuid && *until > now => Some(m.clone()),
                    _ => None,
                };
                listed.push((d, name, running, uuid, cached));
            }
            (cache.watched, cache.epoch, cache.events)
        };
        let mut read = Vec::new();
        let mut all = std::collections::HashMap::with_capacity(listed.len());
        for (d, name, running, uuid, cached) in listed {
            let marker = match cached {
                Some(m) => m,
                None => {
                    let m = Self::read_marker(d, owner);
                    read.push((name.clone(), uuid, m.clone()));
                    m
                }
            };
            all.insert(name, (running, marker));
        }
        let mut cache = markers.lock().unwrap_or_else(|p| p.into_inner());
        // A marker read before an event on its domain (or across a
        // reconnect) may be stale: it is not kept.
        if cache.epoch == epoch {
            let max_age = if watched {
                MARKER_MAX_AGE_WATCHED
            } else {
                MARKER_MAX_AGE
            };
            for (name, uuid, m) in read {
                if cache.touched_since(&name, events) {
                    continue;
                }
                let age = max_age.mul_f64(rand::random::<f64>() + 0.5);
                cache.entries.insert(name, (uuid, m, now + age));
            }
        }
        cache.entries.retain(|name, _| seen.contains(name));
        cache.prune_touched();
        let out = marked(&all);
        // The next listings are served from this one, corrected by events
        // (a domain touched during this listing is dirty: read again then).
        cache.snapshot = (watched && cache.epoch == epoch).then(|| Snapshot {
            epoch,
            relist_at: now + RELIST_WATCHED.mul_f64(rand::random::<f64>() + 0.5),
            domains: all,
        });
        Ok(out)
    }

    /// The marker of a domain of this instance (`None`: unmarked, or
    /// another instance's).
    fn read_marker(dom: &Domain, owner: &Owner) -> Option<Marker> {
        // The persistent definition is what hostd last defined; a running
        // domain's live definition keeps the marker it was started with until
        // it restarts (e.g. after a seed-only change, which needs no restart).
        let kind = virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
        let meta = dom
            .metadata(kind, Some(MARKER_NS), virt::sys::VIR_DOMAIN_AFFECT_CONFIG)
            .or_else(|_| dom.metadata(kind, Some(MARKER_NS), 0))
            .ok()?;
        parse_marker(&meta).filter(|m| m.instance == owner.instance)
    }

    pub(super) fn observe(dom: &Domain, owner: &Owner) -> Option<ObservedDomain> {
        Some(ObservedDomain {
            marker: Self::read_marker(dom, owner)?,
            name: dom.name().ok()?,
            running: dom.is_active().unwrap_or(false),
        })
    }

    /// Looks up a domain and checks it is ours; `Ok(None)` when absent.
    pub(super) fn lookup_ours(
        c: &Connect,
        name: &str,
        owner: &Owner,
    ) -> DriverResult<Option<Domain>> {
        match c.lookup_domain_by_name(name) {
            Ok(d) => match Self::observe(&d, owner) {
                Some(o) if owner.may_touch(&o.marker) => Ok(Some(d)),
                _ => Err(DriverError::NotOurs(name.to_string())),
            },
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(lv(e)),
        }
    }
}

/// The domains of a listing that carry this instance's marker.
fn marked(
    domains: &std::collections::HashMap<String, (bool, Option<Marker>)>,
) -> Vec<ObservedDomain> {
    domains
        .iter()
        .filter_map(|(name, (running, m))| {
            m.as_ref().map(|m| ObservedDomain {
                name: name.clone(),
                marker: m.clone(),
                running: *running,
            })
        })
        .collect()
}
