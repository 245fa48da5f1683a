//! The libvirt VM driver (crate `virt`). One connection, opened lazily, shared
//! by every call and reopened when it breaks. libvirt connections are
//! thread-safe and `virt::Connect` is a reference-counted handle, so the lock
//! only guards taking a handle: calls run concurrently, each on
//! `spawn_blocking`. hostd only ever touches domains whose `<metadata>`
//! carries its marker for this instance and installation. Each connection
//! also delivers domain events (`domain_events`).//!
//! Map: [`connection`] (the shared connection and `spawn_blocking`),
//! [`listing`] (domains and their markers), [`volumes`] (the storage pool,
//! volumes, quarantine), [`backup`] (backup jobs), [`agent`] (the guest agent),
//! [`clone`] (templates and clones from a memory snapshot), [`migrate`]
//! (moving a domain to another node), [`stats`] (a running domain's
//! counters).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use virt::error::ErrorNumber;

use super::domain_events::{self, DomainChanges, Watch};
use super::VolumeSource;
use super::{
    Checkpoints, DiskImage, DomainStats, DriverError, DriverResult, Marker, ObservedDomain,
    VmDriver,
};
use crate::domain::HostingId;

mod agent;
mod backup;
mod clone;
pub use backup::CHECKPOINT_PREFIX;
mod connection;
mod listing;
mod migrate;
mod stats;
mod volumes;

use connection::Live;

/// The libvirt-backed [`VmDriver`].
pub struct LibvirtDriver {
    uri: String,
    owner: Owner,
    storage_pool: String,
    pool_dir: std::path::PathBuf,
    conn: Arc<Mutex<Option<Live>>>,
    /// Markers [`VmDriver::list_domains`] read, by domain name, and the
    /// domain-change feed; the event callbacks of every connection reach both.
    watch: Arc<Watch>,
}

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

/// The directory of instance `instance`'s storage pool (its volumes' files).
pub fn pool_dir(state_dir: &std::path::Path, instance: &str) -> std::path::PathBuf {
    state_dir.join("pools").join(instance)
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
    /// The driver of the implicit node (`HOSTD_LIBVIRT_URI`).
    pub fn new(
        uri: &str,
        instance: &str,
        installation: uuid::Uuid,
        state_dir: &std::path::Path,
    ) -> Self {
        Self::with_pool_dir(uri, instance, installation, pool_dir(state_dir, instance))
    }

    /// The driver of node `node` (one added with `hostd node add`): its
    /// storage pool has a directory of its own, so two nodes on one machine
    /// (or sharing a filesystem) never list each other's volumes.
    pub fn for_node(
        uri: &str,
        node: &str,
        instance: &str,
        installation: uuid::Uuid,
        state_dir: &std::path::Path,
    ) -> Self {
        let dir = state_dir.join("pools").join(format!("{instance}@{node}"));
        Self::with_pool_dir(uri, instance, installation, dir)
    }

    fn with_pool_dir(
        uri: &str,
        instance: &str,
        installation: uuid::Uuid,
        pool_dir: std::path::PathBuf,
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
            storage_pool: format!("hostd-{instance}"),
            pool_dir,
            conn: Arc::new(Mutex::new(None)),
            watch: Arc::new(Watch {
                markers: Default::default(),
                changes: Default::default(),
                expected: Default::default(),
            }),
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
        let pool = self.storage_pool.clone();
        self.with_conn(move |c| {
            let node = c.node_info().map_err(lv)?;
            let p = volumes::pool(c, &pool)?;
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

    fn storage_pool_name(&self) -> &str {
        &self.storage_pool
    }

    async fn ensure_storage_pool(&self) -> DriverResult<()> {
        let what = "storage pool directory";
        super::ownership::claim(&self.pool_dir, self.owner.installation, what)?;
        let (name, dir) = (self.storage_pool.clone(), self.pool_dir.clone());
        self.with_conn(move |c| volumes::ensure_storage_pool(c, &name, &dir))
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

    async fn domain_stats(&self, names: Vec<String>) -> DriverResult<Vec<(String, DomainStats)>> {
        self.with_conn(move |c| stats::read(c, &names)).await
    }

    async fn list_volumes(&self) -> DriverResult<Vec<String>> {
        let pool = self.storage_pool.clone();
        self.with_conn(move |c| volumes::list(c, &pool)).await
    }

    async fn volume_exists(&self, name: &str) -> DriverResult<bool> {
        let (pool, name) = (self.storage_pool.clone(), name.to_string());
        self.with_conn(move |c| volumes::exists(c, &pool, &name))
            .await
    }

    async fn create_volume(&self, name: &str, source: VolumeSource) -> DriverResult<bool> {
        let (pool, name) = (self.storage_pool.clone(), name.to_string());
        self.with_conn(move |c| volumes::create(c, &pool, &name, source))
            .await
    }

    async fn replace_volume_bytes(&self, name: &str, bytes: Vec<u8>) -> DriverResult<()> {
        let (pool, name) = (self.storage_pool.clone(), name.to_string());
        self.with_conn(move |c| volumes::replace_bytes(c, &pool, &name, &bytes))
            .await
    }

    async fn quarantine_volume(
        &self,
        name: &str,
        dir: &std::path::Path,
    ) -> DriverResult<Option<std::path::PathBuf>> {
        let (pool, name, dir) = (
            self.storage_pool.clone(),
            name.to_string(),
            dir.to_path_buf(),
        );
        self.with_conn(move |c| volumes::quarantine(c, &pool, &name, &dir))
            .await
    }

    async fn disk_image(
        &self,
        domain: &str,
        volume: &str,
        staging: &std::path::Path,
        checkpoints: &Checkpoints,
    ) -> DriverResult<DiskImage> {
        let (pool, owner) = (self.storage_pool.clone(), self.owner.clone());
        let (domain, volume) = (domain.to_string(), volume.to_string());
        let (staging, want) = (staging.to_path_buf(), checkpoints.clone());
        self.with_conn(move |c| {
            let dom = Self::lookup_ours(c, &domain, &owner)?;
            if let Some(d) = dom.filter(|d| d.is_active().unwrap_or(false)) {
                let since = backup::backup_with_checkpoint(&d, &staging, &want)?;
                return Ok(DiskImage {
                    path: staging,
                    since,
                    checkpoint: true,
                });
            }
            Ok(DiskImage {
                path: volumes::file_of(c, &pool, &volume)?,
                since: None,
                checkpoint: false,
            })
        })
        .await
    }

    async fn forget_checkpoints(&self, domain: &str) -> DriverResult<()> {
        let (domain, owner) = (domain.to_string(), self.owner.clone());
        self.with_conn(move |c| match Self::lookup_ours(c, &domain, &owner)? {
            Some(d) => backup::forget_checkpoints(&d),
            None => Ok(()),
        })
        .await
    }

    async fn restore_volume(&self, name: &str, from: &std::path::Path) -> DriverResult<()> {
        let (pool, name, from) = (
            self.storage_pool.clone(),
            name.to_string(),
            from.to_path_buf(),
        );
        self.with_conn(move |c| volumes::restore(c, &pool, &name, &from))
            .await
    }

    async fn delete_volume(&self, name: &str) -> DriverResult<()> {
        let (pool, name) = (self.storage_pool.clone(), name.to_string());
        self.with_conn(move |c| volumes::delete(c, &pool, &name))
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
            agent::agent_exec(&d, &path, &args, timeout)
        })
        .await
    }

    fn clones_supported(&self) -> bool {
        !self.uri.starts_with("test:")
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn migrate(
        &self,
        name: &str,
        target: &dyn VmDriver,
        xml: &str,
        via: &crate::drivers::MigrationVia,
        timeout: std::time::Duration,
    ) -> DriverResult<()> {
        let Some(t) = target
            .as_any()
            .and_then(|a| a.downcast_ref::<LibvirtDriver>())
        else {
            return Err(DriverError::Other(
                "the target node is not a libvirt hypervisor".into(),
            ));
        };
        match (self.uri.starts_with("test:"), t.uri.starts_with("test:")) {
            (false, false) => self.migrate_to(name, t, xml, via, timeout).await,
            (true, true) => self.migrate_simulated(name, t, xml).await,
            _ => Err(DriverError::Other(
                "a guest cannot move between libvirt's test driver and a real hypervisor".into(),
            )),
        }
    }

    async fn volume_path(&self, name: &str) -> DriverResult<std::path::PathBuf> {
        let (pool, name) = (self.storage_pool.clone(), name.to_string());
        self.with_conn(move |c| {
            let vol = volumes::pool(c, &pool)?
                .lookup_storage_vol_by_name(&name)
                .map_err(lv)?;
            Ok(std::path::PathBuf::from(vol.path().map_err(lv)?))
        })
        .await
    }

    async fn capture_template(
        &self,
        name: &str,
        xml: &str,
        memory: &std::path::Path,
        boot_timeout: std::time::Duration,
    ) -> DriverResult<super::Captured> {
        parse_marker(xml)
            .filter(|m| m.installation == Some(self.owner.installation) && self.owner.may_touch(m))
            .ok_or_else(|| DriverError::Other("template XML without this hostd's marker".into()))?;
        let dir = memory
            .parent()
            .ok_or_else(|| DriverError::Other("memory file without a directory".into()))?;
        let (name, xml, owner) = (name.to_string(), xml.to_string(), self.owner.clone());
        let (memory, dir) = (memory.to_path_buf(), dir.to_path_buf());
        self.with_conn(move |c| {
            let label = clone::qemu_label(c);
            clone::qemu_writable(&dir, label)?;
            let r = clone::capture(c, &xml, &name, &owner, &memory, boot_timeout);
            clone::seal(&memory, label)?;
            r
        })
        .await
    }

    async fn remove_template_domain(&self, name: &str) -> DriverResult<()> {
        let (name, owner) = (name.to_string(), self.owner.clone());
        self.with_conn(move |c| clone::remove(c, &name, &owner))
            .await
    }

    async fn restore_clone(
        &self,
        name: &str,
        xml: &str,
        timeout: std::time::Duration,
    ) -> DriverResult<()> {
        if xml_name(xml).as_deref() != Some(name) {
            return Err(DriverError::Other("clone XML names another domain".into()));
        }
        let (name, xml, owner) = (name.to_string(), xml.to_string(), self.owner.clone());
        let watch = self.watch.clone();
        self.with_conn(move |c| {
            let started = virt::sys::VIR_DOMAIN_EVENT_STARTED;
            watch.causing(&name, started, || {
                clone::restore(c, &name, &owner, &xml, timeout).map(|_| ())
            })
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
            // Checkpoints' records go with it (a driver without
            // checkpoints refuses the flag: then plainly).
            let flags = virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
            let undefine = || match d.undefine_flags(flags) {
                Err(e) if is(&e, ErrorNumber::InvalidArg) => d.undefine(),
                r => r,
            };
            match watch.causing(&name, undefined, undefine) {
                Ok(()) => Ok(()),
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(()),
                Err(e) => Err(lv(e)),
            }
        })
        .await
    }
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
    use crate::templates::MARKER_NS;

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
