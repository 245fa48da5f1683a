//! The libvirt VM driver (crate `virt`). One connection, opened lazily, shared
//! by every call and reopened when it breaks. libvirt connections are
//! thread-safe and `virt::Connect` is a reference-counted handle, so the lock
//! only guards taking a handle: calls run concurrently, each on
//! `spawn_blocking`. hostd only ever touches domains whose `<metadata>`
//! carries its marker for this instance and installation. Each connection
//! also delivers domain events (`domain_events`).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::domain_events::{self, DomainChanges, MarkerCache, Registration, Snapshot, Watch};
use super::{DriverError, DriverResult, Marker, ObservedDomain, VmDriver, VolumeSource};
use crate::domain::HostingId;
use crate::templates::MARKER_NS;

/// The libvirt-backed [`VmDriver`].
pub struct LibvirtDriver {
    uri: String,
    owner: Owner,
    pool: String,
    pool_dir: std::path::PathBuf,
    conn: Arc<Mutex<Option<Live>>>,
    /// Markers [`VmDriver::list_domains`] read, by domain name, and the
    /// domain-change feed; the event callbacks of every connection reach both.
    watch: Arc<Watch>,
}

/// The open connection and the event callbacks registered on it.
struct Live {
    conn: Connect,
    events: Option<Registration>,
}

impl Live {
    /// Deregisters the callbacks (they hold a reference on the connection,
    /// which would otherwise never close) and drops this handle.
    fn release(self) {
        if let Some(r) = self.events {
            r.release(&self.conn);
        }
    }
}

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

/// Whose domains this driver may touch: its instance's, written by its
/// installation (or by a hostd from before installation ids: adoptable).
#[derive(Debug, Clone)]
struct Owner {
    instance: String,
    installation: uuid::Uuid,
}

impl Owner {
    fn may_touch(&self, m: &Marker) -> bool {
        m.instance == self.instance && m.installation.is_none_or(|i| i == self.installation)
    }
}

fn is(e: &virt::error::Error, n: ErrorNumber) -> bool {
    e.code().is_known_and(|c| c == n)
}

fn lv(e: virt::error::Error) -> DriverError {
    DriverError::Libvirt(e.to_string())
}

/// Parses the marker element (`<hosting instance=… id=… generation=… spec-hash=…/>`).
pub fn parse_marker(xml: &str) -> Option<Marker> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                if e.local_name().as_ref() != b"hosting" {
                    continue;
                }
                let mut m = (None, None, None, None);
                let mut installation = None;
                for a in e.attributes().flatten() {
                    let v = a.unescape_value().ok()?.to_string();
                    match a.key.local_name().as_ref() {
                        b"instance" => m.0 = Some(v),
                        b"id" => m.1 = uuid::Uuid::parse_str(&v).ok(),
                        b"generation" => m.2 = v.parse().ok(),
                        b"spec-hash" => m.3 = Some(v),
                        b"installation" => installation = uuid::Uuid::parse_str(&v).ok(),
                        _ => {}
                    }
                }
                return Some(Marker {
                    instance: m.0?,
                    installation,
                    hosting_id: HostingId(m.1?),
                    generation: m.2?,
                    spec_hash: m.3?,
                });
            }
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

impl LibvirtDriver {
    pub fn new(
        uri: &str,
        instance: &str,
        installation: uuid::Uuid,
        state_dir: &std::path::Path,
    ) -> Self {
        // libvirt's default handler prints every error (even expected ones,
        // like a domain without our metadata) to stderr; we report errors ourselves.
        virt::error::clear_error_callback();
        Self {
            uri: uri.to_string(),
            owner: Owner {
                instance: instance.to_string(),
                installation,
            },
            pool: format!("hostd-{instance}"),
            pool_dir: state_dir.join("pools").join(instance),
            conn: Arc::new(Mutex::new(None)),
            watch: Arc::new(Watch {
                markers: Default::default(),
                changes: Default::default(),
                expected: Default::default(),
            }),
        }
    }

    /// A handle on the shared connection, (re)opened when there is none or it
    /// died. The lock is held only for this, never across a libvirt call
    /// (registering the event callbacks on a new connection is local to
    /// this process for `test:///`, one round trip for libvirtd).
    fn handle(conn: &Mutex<Option<Live>>, uri: &str, watch: &Arc<Watch>) -> DriverResult<Connect> {
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
    async fn with_conn<T, F>(&self, f: F) -> DriverResult<T>
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

    /// A listing served from the snapshot the last full listing left, when
    /// the connection delivers events and the snapshot is current: only the
    /// domains events touched since the last listing are read again (one
    /// lookup each), so an idle listing costs no libvirt call at all.
    /// `None`: list everything instead.
    fn list_from_snapshot(
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
    fn list_all(
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

    fn observe(dom: &Domain, owner: &Owner) -> Option<ObservedDomain> {
        Some(ObservedDomain {
            marker: Self::read_marker(dom, owner)?,
            name: dom.name().ok()?,
            running: dom.is_active().unwrap_or(false),
        })
    }

    /// Looks up a domain and checks it is ours; `Ok(None)` when absent.
    fn lookup_ours(c: &Connect, name: &str, owner: &Owner) -> DriverResult<Option<Domain>> {
        match c.lookup_domain_by_name(name) {
            Ok(d) => match Self::observe(&d, owner) {
                Some(o) if owner.may_touch(&o.marker) => Ok(Some(d)),
                _ => Err(DriverError::NotOurs(name.to_string())),
            },
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(lv(e)),
        }
    }

    /// Runs `op` on one of our domains if it is running; absent or stopped
    /// (also when it stopped meanwhile: `OperationInvalid`) is success.
    /// `event`: the lifecycle event `op` causes at once, if any.
    async fn if_running<F>(&self, name: &str, event: Option<u32>, op: F) -> DriverResult<()>
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

    fn pool(c: &Connect, name: &str) -> DriverResult<StoragePool> {
        c.lookup_storage_pool_by_name(name).map_err(lv)
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

#[async_trait]
impl VmDriver for LibvirtDriver {
    async fn ping(&self) -> DriverResult<String> {
        let uri = self.uri.clone();
        self.with_conn(move |c| {
            let v = c.hyp_version().unwrap_or(0);
            let lib = c.lib_version().unwrap_or(0);
            Ok(format!(
                "{uri}: libvirt {}.{}.{}, hypervisor {}.{}.{}",
                lib / 1_000_000,
                lib / 1000 % 1000,
                lib % 1000,
                v / 1_000_000,
                v / 1000 % 1000,
                v % 1000
            ))
        })
        .await
    }

    async fn resources(&self) -> DriverResult<super::HostResources> {
        let pool = self.pool.clone();
        self.with_conn(move |c| {
            let node = c.node_info().map_err(lv)?;
            let p = Self::pool(c, &pool)?;
            let _ = p.refresh(0);
            let info = p.info().map_err(lv)?;
            Ok(super::HostResources {
                memory_mib: node.memory / 1024,
                cpus: node.cpus,
                disk_available_bytes: info.available,
            })
        })
        .await
    }

    fn pool_name(&self) -> &str {
        &self.pool
    }

    async fn ensure_pool(&self) -> DriverResult<()> {
        let what = "storage pool directory";
        super::ownership::claim(&self.pool_dir, self.owner.installation, what)?;
        let name = self.pool.clone();
        let dir = self.pool_dir.clone();
        self.with_conn(move |c| {
            let pool = match c.lookup_storage_pool_by_name(&name) {
                Ok(p) => {
                    // Same name, other directory: another hostd's pool.
                    let xml = p.xml_desc(0).map_err(lv)?;
                    let path = pool_path(&xml).unwrap_or_default();
                    if std::path::Path::new(&path) != dir {
                        return Err(DriverError::Foreign(format!(
                            "the libvirt storage pool {name} holds {path}, not this hostd's {}: it belongs to \
                             another hostd with the same HOSTD_INSTANCE; give this one its own HOSTD_INSTANCE",
                            dir.display()
                        )));
                    }
                    p
                }
                Err(e) if is(&e, ErrorNumber::NoStoragePool) => {
                    let xml = format!(
                        "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>",
                        xml_escape(&name),
                        xml_escape(&dir.to_string_lossy())
                    );
                    let p = c.define_storage_pool_xml(&xml, 0).map_err(lv)?;
                    let _ = p.set_autostart(true);
                    p
                }
                Err(e) => return Err(lv(e)),
            };
            if !pool.is_active().map_err(lv)? {
                pool.create(0).map_err(lv)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_domains(&self) -> DriverResult<Vec<ObservedDomain>> {
        let owner = self.owner.clone();
        let markers = self.watch.markers.clone();
        self.with_conn(move |c| {
            if let Some(out) = Self::list_from_snapshot(c, &markers, &owner)? {
                return Ok(out);
            }
            Self::list_all(c, &markers, &owner)
        })
        .await
    }

    fn expire_listing(&self) {
        let mut cache = self.watch.markers.lock().unwrap_or_else(|p| p.into_inner());
        cache.snapshot = None;
    }

    fn domain_changes(&self) -> Option<Arc<DomainChanges>> {
        domain_events::ensure_event_loop().then(|| self.watch.changes.clone())
    }

    async fn get_domain(&self, name: &str) -> DriverResult<Option<ObservedDomain>> {
        let (name, owner) = (name.to_string(), self.owner.clone());
        self.with_conn(move |c| match c.lookup_domain_by_name(&name) {
            Ok(d) => match Self::observe(&d, &owner) {
                Some(o) if !owner.may_touch(&o.marker) => Err(DriverError::NotOurs(name.clone())),
                o => Ok(o),
            },
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(lv(e)),
        })
        .await
    }

    async fn list_volumes(&self) -> DriverResult<Vec<String>> {
        let pool = self.pool.clone();
        self.with_conn(move |c| {
            let p = Self::pool(c, &pool)?;
            let _ = p.refresh(0);
            // The ownership marker file is not a volume.
            Ok(volume_names(&p)?
                .into_iter()
                .filter(|n| n != super::ownership::MARKER_FILE)
                .collect())
        })
        .await
    }

    async fn volume_exists(&self, name: &str) -> DriverResult<bool> {
        let (pool, name) = (self.pool.clone(), name.to_string());
        self.with_conn(move |c| {
            let p = Self::pool(c, &pool)?;
            match p.lookup_storage_vol_by_name(&name) {
                Ok(_) => Ok(true),
                Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(false),
                Err(e) => Err(lv(e)),
            }
        })
        .await
    }

    async fn create_volume(&self, name: &str, source: VolumeSource) -> DriverResult<bool> {
        let (pool, name) = (self.pool.clone(), name.to_string());
        self.with_conn(move |c| {
            let p = Self::pool(c, &pool)?;
            match p.lookup_storage_vol_by_name(&name) {
                Ok(_) => return Ok(false),
                Err(e) if is(&e, ErrorNumber::NoStorageVolume) => {}
                Err(e) => return Err(lv(e)),
            }
            match source {
                VolumeSource::Overlay { backing, backing_format, capacity_gib } => {
                    let xml = format!(
                        "<volume><name>{}</name><capacity unit='GiB'>{}</capacity><allocation>0</allocation><target><format type='qcow2'/></target>\
                         <backingStore><path>{}</path><format type='{}'/></backingStore></volume>",
                        xml_escape(&name),
                        capacity_gib,
                        xml_escape(&backing.to_string_lossy()),
                        xml_escape(&backing_format)
                    );
                    StorageVol::create_xml(&p, &xml, 0).map_err(lv)?;
                }
                VolumeSource::Bytes(bytes) => {
                    let xml = format!(
                        "<volume><name>{}</name><capacity unit='bytes'>{}</capacity><allocation>0</allocation><target><format type='raw'/></target></volume>",
                        xml_escape(&name),
                        raw_volume_size(bytes.len())
                    );
                    let vol = StorageVol::create_xml(&p, &xml, 0).map_err(lv)?;
                    write_volume_file(&vol, &bytes)?;
                }
            }
            Ok(true)
        })
        .await
    }

    async fn replace_volume_bytes(&self, name: &str, bytes: Vec<u8>) -> DriverResult<()> {
        let (pool, name) = (self.pool.clone(), name.to_string());
        self.with_conn(move |c| {
            let p = Self::pool(c, &pool)?;
            let vol = p.lookup_storage_vol_by_name(&name).map_err(lv)?;
            write_volume_file(&vol, &bytes)?;
            let _ = p.refresh(0);
            Ok(())
        })
        .await
    }

    async fn quarantine_volume(
        &self,
        name: &str,
        dir: &std::path::Path,
    ) -> DriverResult<Option<std::path::PathBuf>> {
        let (pool, name, dir) = (self.pool.clone(), name.to_string(), dir.to_path_buf());
        self.with_conn(move |c| {
            let p = Self::pool(c, &pool)?;
            let vol = match p.lookup_storage_vol_by_name(&name) {
                Ok(v) => v,
                Err(e) if is(&e, ErrorNumber::NoStorageVolume) => return Ok(None),
                Err(e) => return Err(lv(e)),
            };
            let from = std::path::PathBuf::from(vol.path().map_err(lv)?);
            if !from.exists() {
                // A simulated hypervisor's volume has no file: nothing to keep,
                // and nothing is deleted either.
                return Ok(None);
            }
            super::private_dir(&dir)?;
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            let to = dir.join(format!("{stamp}-{name}"));
            std::fs::rename(&from, &to)?;
            let _ = p.refresh(0);
            forget_volume(&p, &name);
            Ok(Some(to))
        })
        .await
    }

    async fn disk_image(
        &self,
        domain: &str,
        volume: &str,
        staging: &std::path::Path,
    ) -> DriverResult<std::path::PathBuf> {
        let (pool, owner) = (self.pool.clone(), self.owner.clone());
        let (domain, volume) = (domain.to_string(), volume.to_string());
        let staging = staging.to_path_buf();
        self.with_conn(move |c| {
            let dom = Self::lookup_ours(c, &domain, &owner)?;
            if let Some(d) = dom.filter(|d| d.is_active().unwrap_or(false)) {
                backup_job(&d, &staging)?;
                return Ok(staging);
            }
            let p = Self::pool(c, &pool)?;
            let vol = p.lookup_storage_vol_by_name(&volume).map_err(lv)?;
            let path = std::path::PathBuf::from(vol.path().map_err(lv)?);
            if !path.exists() {
                return Err(DriverError::Other(format!(
                    "volume {volume} has no file to back up (a simulated hypervisor)"
                )));
            }
            Ok(path)
        })
        .await
    }

    async fn restore_volume(&self, name: &str, from: &std::path::Path) -> DriverResult<()> {
        let (pool, name, from) = (self.pool.clone(), name.to_string(), from.to_path_buf());
        self.with_conn(move |c| {
            use std::os::unix::fs::PermissionsExt;
            let p = Self::pool(c, &pool)?;
            // Create the volume through libvirt (so a simulated pool knows it
            // too), then put the image file in its place.
            let xml = format!(
                "<volume><name>{}</name><capacity unit='bytes'>0</capacity><target><format type='raw'/></target></volume>",
                xml_escape(&name)
            );
            let vol = StorageVol::create_xml(&p, &xml, 0).map_err(lv)?;
            let path = std::path::PathBuf::from(vol.path().map_err(lv)?);
            std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&from, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            let _ = p.refresh(0);
            Ok(())
        })
        .await
    }

    async fn delete_volume(&self, name: &str) -> DriverResult<()> {
        let (pool, name) = (self.pool.clone(), name.to_string());
        self.with_conn(move |c| {
            let p = Self::pool(c, &pool)?;
            match p.lookup_storage_vol_by_name(&name) {
                Ok(v) => match v.delete(0) {
                    Ok(()) => Ok(()),
                    Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(()),
                    Err(e) => Err(lv(e)),
                },
                Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(()),
                Err(e) => Err(lv(e)),
            }
        })
        .await
    }

    async fn define(&self, xml: &str) -> DriverResult<()> {
        let marker = parse_marker(xml)
            .ok_or_else(|| DriverError::Other("domain XML without hostd marker".into()))?;
        if marker.installation != Some(self.owner.installation) || !self.owner.may_touch(&marker) {
            return Err(DriverError::Other(
                "domain XML marker names another instance or installation".into(),
            ));
        }
        let (xml, owner) = (xml.to_string(), self.owner.clone());
        let watch = self.watch.clone();
        self.with_conn(move |c| {
            // Redefining is only allowed over a domain that is already ours.
            let name = xml_name(&xml)
                .ok_or_else(|| DriverError::Other("domain XML without <name>".into()))?;
            Self::lookup_ours(c, &name, &owner)?;
            let defined = virt::sys::VIR_DOMAIN_EVENT_DEFINED;
            watch
                .causing(&name, defined, || c.define_domain_xml(&xml))
                .map_err(lv)?;
            watch
                .markers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entries
                .remove(&name);
            Ok(())
        })
        .await
    }

    async fn start(&self, name: &str) -> DriverResult<()> {
        let (name, owner) = (name.to_string(), self.owner.clone());
        let watch = self.watch.clone();
        self.with_conn(move |c| {
            let d = Self::lookup_ours(c, &name, &owner)?
                .ok_or_else(|| DriverError::Libvirt(format!("domain {name} is not defined")))?;
            if d.is_active().map_err(lv)? {
                return Ok(());
            }
            let started = virt::sys::VIR_DOMAIN_EVENT_STARTED;
            match watch.causing(&name, started, || d.create()) {
                Ok(()) => Ok(()),
                Err(e)
                    if is(&e, ErrorNumber::OperationInvalid) && d.is_active().unwrap_or(false) =>
                {
                    Ok(())
                }
                Err(e) => Err(lv(e)),
            }
        })
        .await
    }

    async fn shutdown(&self, name: &str) -> DriverResult<()> {
        // The guest stops later, by itself: its STOPPED event is reported,
        // which wakes the hosting as soon as it is down.
        self.if_running(name, None, |d| d.shutdown()).await
    }

    async fn destroy(&self, name: &str) -> DriverResult<()> {
        let stopped = virt::sys::VIR_DOMAIN_EVENT_STOPPED;
        self.if_running(name, Some(stopped), |d| d.destroy()).await
    }

    async fn guest_exec(
        &self,
        name: &str,
        path: &str,
        args: &[&str],
        timeout: std::time::Duration,
    ) -> DriverResult<String> {
        let (name, owner) = (name.to_string(), self.owner.clone());
        let path = path.to_string();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.with_conn(move |c| {
            let d = Self::lookup_ours(c, &name, &owner)?
                .ok_or_else(|| DriverError::GuestAgent(format!("no domain {name}")))?;
            agent_exec(&d, &path, &args, timeout)
        })
        .await
    }

    async fn undefine(&self, name: &str) -> DriverResult<()> {
        let (name, owner) = (name.to_string(), self.owner.clone());
        let watch = self.watch.clone();
        self.with_conn(move |c| {
            watch
                .markers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entries
                .remove(&name);
            let Some(d) = Self::lookup_ours(c, &name, &owner)? else {
                return Ok(());
            };
            if d.is_active().unwrap_or(false) {
                let stopped = virt::sys::VIR_DOMAIN_EVENT_STOPPED;
                let _ = watch.causing(&name, stopped, || d.destroy());
            }
            let undefined = virt::sys::VIR_DOMAIN_EVENT_UNDEFINED;
            match watch.causing(&name, undefined, || d.undefine()) {
                Ok(()) => Ok(()),
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(()),
                Err(e) => Err(lv(e)),
            }
        })
        .await
    }
}

/// One guest-agent command; its `return` value. The answer comes from the
/// guest (a tenant's root can replace the agent), so it is parsed as
/// untrusted JSON and only the fields used here are read.
fn agent_call(d: &Domain, cmd: &serde_json::Value) -> DriverResult<serde_json::Value> {
    let out = d
        .qemu_agent_command(&cmd.to_string(), 5, 0)
        .map_err(|e| DriverError::GuestAgent(e.to_string()))?;
    let mut v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| DriverError::GuestAgent(format!("unparsable answer: {e}")))?;
    Ok(v["return"].take())
}

/// `guest-exec` and its `guest-exec-status` polls (see `VmDriver::guest_exec`).
fn agent_exec(
    d: &Domain,
    path: &str,
    args: &[String],
    timeout: std::time::Duration,
) -> DriverResult<String> {
    use base64::Engine;
    let started = std::time::Instant::now();
    let cmd = serde_json::json!({"execute": "guest-exec",
        "arguments": {"path": path, "arg": args, "capture-output": true}});
    let pid = agent_call(d, &cmd)?["pid"]
        .as_i64()
        .ok_or_else(|| DriverError::GuestAgent("guest-exec returned no pid".into()))?;
    let status = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
    loop {
        let st = agent_call(d, &status)?;
        if st["exited"].as_bool() == Some(true) {
            let text = |k: &str| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(st[k].as_str().unwrap_or(""))
                    .unwrap_or_default();
                let s = String::from_utf8_lossy(&b).into_owned();
                s.chars().take(2000).collect::<String>()
            };
            return match st["exitcode"].as_i64() {
                Some(0) => Ok(text("out-data")),
                code => Err(DriverError::GuestAgent(format!(
                    "{path} exited with {code:?}: {}",
                    text("err-data").trim()
                ))),
            };
        }
        if started.elapsed() > timeout {
            return Err(DriverError::GuestAgent(format!(
                "{path} still running after {timeout:?}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// After a volume's file was moved away: a real pool's refresh has dropped
/// the volume; a simulated pool still lists it, so it is deleted there
/// (deleting a real volume whose file is gone only fails, harmlessly).
fn forget_volume(p: &StoragePool, name: &str) {
    if let Ok(v) = p.lookup_storage_vol_by_name(name) {
        let _ = v.delete(0);
    }
}

/// Runs a push-mode libvirt backup job of the domain's disk into `target`
/// (a full, standalone qcow2; the guest keeps running) and waits for it.
fn backup_job(d: &Domain, target: &std::path::Path) -> DriverResult<()> {
    use std::time::{Duration, Instant};
    use virt::sys;
    let none = sys::VIR_DOMAIN_JOB_NONE as i32;
    let job = |d: &Domain| d.job_info().map(|j| j.r#type).map_err(lv);
    if job(d)? != none {
        // A job an earlier hostd started (it crashed meanwhile): start over.
        // SAFETY: the pointer is a live domain handle owned by `d`.
        unsafe { sys::virDomainAbortJob(d.as_ptr()) };
        let since = Instant::now();
        while job(d)? != none {
            if since.elapsed() > Duration::from_secs(60) {
                return Err(DriverError::Libvirt(
                    "an earlier job on the domain did not end within 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    match std::fs::remove_file(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let xml = format!(
        "<domainbackup mode='push'><disks>\
         <disk name='{}' type='file'><target file='{}'/><driver type='qcow2'/></disk>\
         <disk name='{}' backup='no'/></disks></domainbackup>",
        crate::templates::DISK_DEV,
        xml_escape(&target.to_string_lossy()),
        crate::templates::SEED_DEV,
    );
    let xml = std::ffi::CString::new(xml)
        .map_err(|_| DriverError::Other("backup target path contains NUL".into()))?;
    // SAFETY: a live domain handle and a NUL-terminated string that outlive
    // the call; a null checkpoint XML is allowed (no checkpoint).
    let r = unsafe { sys::virDomainBackupBegin(d.as_ptr(), xml.as_ptr(), std::ptr::null(), 0) };
    if r < 0 {
        return Err(lv(virt::error::Error::last_error()));
    }
    while job(d)? != none {
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = d
        .job_stats(sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
        .map_err(lv)?;
    if done.r#type != sys::VIR_DOMAIN_JOB_COMPLETED as i32 {
        return Err(DriverError::Libvirt(format!(
            "the backup job did not complete (job type {}): {}",
            done.r#type,
            done.error_message.as_deref().unwrap_or("no message")
        )));
    }
    Ok(())
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

/// Writes a raw volume's bytes at its path in the directory pool, in place:
/// a running guest's QEMU keeps the file it opened at boot, so only an
/// in-place write reaches it (the guest re-reads the seed at its next boot,
/// even one from inside, or live through the guest agent). A write cut short
/// is redone by the next pass: the domain marker still names the old seed.
fn write_volume_file(vol: &StorageVol, bytes: &[u8]) -> DriverResult<()> {
    use std::io::Write;
    let path = std::path::PathBuf::from(vol.path().map_err(lv)?);
    let dir = path
        .parent()
        .ok_or_else(|| DriverError::Other("volume path has no parent".into()))?;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    f.write_all(bytes)?;
    // Zeros (sparse) up to a fixed size: a running guest's disk keeps the
    // size it had at boot, and a rewritten seed must fit it to be read live.
    f.set_len(bytes.len() as u64)?;
    f.set_len(raw_volume_size(bytes.len()))?;
    f.sync_all()?;
    Ok(())
}

extern "C" {
    /// The C library's `free`, for strings libvirt allocates for the caller.
    fn free(p: *mut std::ffi::c_void);
}

/// Every volume name in a pool, in one call that returns names only (no
/// volume objects: a fifth of the cost at thousands of volumes). Not the
/// virt crate's `list_volumes()`, which caps at 1,024 names (volumes of
/// hostings beyond the 512th then looked missing): the buffer is sized from
/// the pool's count and grown if the pool grew in between.
fn volume_names(p: &virt::storage_pool::StoragePool) -> DriverResult<Vec<String>> {
    let mut room = p.num_of_volumes().map_err(lv)? as usize + 16;
    loop {
        let mut names: Vec<*mut std::ffi::c_char> = vec![std::ptr::null_mut(); room];
        // SAFETY: `names` holds `room` pointers; libvirt fills at most that
        // many with strings allocated for the caller, freed below.
        let got = unsafe {
            virt::sys::virStoragePoolListVolumes(p.as_ptr(), names.as_mut_ptr(), room as i32)
        };
        if got < 0 {
            return Err(lv(virt::error::Error::last_error()));
        }
        let got = got as usize;
        let mut out = Vec::with_capacity(got);
        for &n in &names[..got] {
            // SAFETY: a NUL-terminated string from libvirt, freed once.
            unsafe {
                out.push(std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned());
                free(n.cast());
            }
        }
        if got < room {
            return Ok(out);
        }
        room *= 2;
    }
}

/// Raw (seed) volumes are sized in steps of 4 MiB, which holds any seed hostd
/// writes (keys are limited in number and size); zeros after the ISO's end
/// are ignored by the guest.
fn raw_volume_size(len: usize) -> u64 {
    const STEP: u64 = 4 << 20;
    (len as u64).div_ceil(STEP).max(1) * STEP
}

/// The `<target><path>` of a storage pool's XML.
fn pool_path(xml: &str) -> Option<String> {
    let target = &xml[xml.find("<target>")?..];
    let start = target.find("<path>")? + 6;
    let end = target[start..].find("</path>")? + start;
    Some(target[start..end].trim().to_string())
}

fn xml_name(xml: &str) -> Option<String> {
    let start = xml.find("<name>")? + 6;
    let end = xml[start..].find("</name>")? + start;
    Some(xml[start..end].trim().to_string())
}

/// Escapes text for XML attribute or element content.
fn xml_escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let id = uuid::Uuid::new_v4();
        let xml = format!("<hosting xmlns=\"{MARKER_NS}\" instance=\"t\" id=\"{id}\" generation=\"3\" spec-hash=\"abc\"/>");
        let m = parse_marker(&xml).unwrap();
        assert_eq!(m.hosting_id.0, id);
        assert_eq!(m.generation, 3);
        assert!(parse_marker("<hosting instance='t'/>").is_none());
        assert!(parse_marker("<other/>").is_none());
    }
}
