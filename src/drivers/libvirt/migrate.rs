//! Moving a domain to another node: libvirt's migration with the writable
//! disks copied (`VIR_MIGRATE_NON_SHARED_DISK`: QEMU mirrors the whole disk
//! chain into a volume libvirt creates in the target's pool of the same
//! name), the definition persisted there from hostd's own XML for that node
//! and removed here. Managed (not peer-to-peer): hostd holds both
//! connections, so a hostd that dies mid-way makes libvirt cancel the job
//! and the guest keeps running here. The migration stream and the disk
//! copy go through UNIX sockets in a directory both nodes see (nodes on one
//! machine: guest isolation refuses QEMU's TCP connections to local
//! addresses, and QEMU runs as the guests' user), or to the target's
//! address (never a name libvirt would resolve). Between two nodes of
//! libvirt's test driver (tests), which has no migration, the move is
//! simulated with the same end state.

use std::net::IpAddr;
use std::time::Duration;

use virt::domain::MigrateParameters;
use virt::sys;

use super::{lv, LibvirtDriver};
use crate::drivers::{DriverError, DriverResult};

impl LibvirtDriver {
    /// See [`crate::drivers::VmDriver::migrate`].
    pub(super) async fn migrate_to(
        &self,
        name: &str,
        target: &LibvirtDriver,
        xml: &str,
        via: &crate::drivers::MigrationVia,
        timeout: Duration,
    ) -> DriverResult<()> {
        let (tconn, turi, twatch) = (
            target.conn.clone(),
            target.uri.clone(),
            target.watch.clone(),
        );
        let (name, owner, xml) = (name.to_string(), self.owner.clone(), xml.to_string());
        // Either a directory for this domain's sockets, or the address.
        let (sockets, tcp) = match via {
            crate::drivers::MigrationVia::Unix(dir) => (Some(dir.join(&name)), None),
            crate::drivers::MigrationVia::Tcp(address) => (None, Some(*address)),
        };
        let cleanup = sockets.clone();
        let r = self
            .with_conn(move |c| {
                let d = Self::lookup_ours(c, &name, &owner)?
                    .ok_or_else(|| DriverError::Other(format!("no domain {name} to migrate")))?;
                let dconn = Self::handle(&tconn, &turi, &twatch)?;
                // What libvirt generated when the domain was defined must
                // be the same there (the guest sees it): its MAC address.
                let live = d.xml_desc(0).map_err(lv)?;
                let xml = with_mac_of(&xml, &live);
                // A stopped guest is started paused (it never runs) so that
                // QEMU can copy its disk, and stopped again there.
                let was_running = d.is_active().map_err(lv)?;
                if !was_running {
                    d.create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
                        .map_err(lv)?;
                }
                let mut params = MigrateParameters {
                    // The live definition there and the persistent one (by
                    // default libvirt persists the source's, with this
                    // node's addresses).
                    persist_xml: Some(xml.clone()),
                    dest_xml: Some(xml),
                    migrate_disks: vec!["vda".to_string()],
                    ..Default::default()
                };
                if let Some(dir) = &sockets {
                    // The target's QEMU creates the sockets, the
                    // source's connects: both run as QEMU's user.
                    let _ = std::fs::remove_dir_all(dir);
                    super::clone::qemu_writable(dir, super::clone::qemu_label(&dconn))?;
                    let at = |f: &str| format!("unix://{}", dir.join(f).display());
                    params.uri = Some(at("memory.sock"));
                    params.disks_uri = Some(at("disk.sock"));
                } else if let Some(address) = tcp {
                    let host = match address {
                        IpAddr::V6(a) => format!("[{a}]"),
                        IpAddr::V4(a) => a.to_string(),
                    };
                    params.uri = Some(format!("tcp://{host}"));
                    params.listen_address = Some(address.to_string());
                }
                let mut flags = sys::VIR_MIGRATE_PERSIST_DEST
                    | sys::VIR_MIGRATE_UNDEFINE_SOURCE
                    | sys::VIR_MIGRATE_NON_SHARED_DISK;
                flags |= match was_running {
                    true => sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_AUTO_CONVERGE,
                    false => sys::VIR_MIGRATE_PAUSED,
                };
                // The job is aborted (the guest stays here) if it outlasts
                // `timeout`.
                let (done, wait) = std::sync::mpsc::channel::<()>();
                let watched = d.clone();
                let watchdog = std::thread::spawn(move || {
                    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        wait.recv_timeout(timeout)
                    {
                        // SAFETY: a live domain handle owned by this thread.
                        unsafe { sys::virDomainAbortJob(watched.as_ptr()) };
                        return true;
                    }
                    false
                });
                let r = d.migrate3(&dconn, params, flags);
                drop(done);
                let aborted = watchdog.join().unwrap_or(false);
                match r {
                    Ok(there) => {
                        if !was_running {
                            there.destroy().map_err(lv)?;
                        }
                        Ok(())
                    }
                    Err(e) => {
                        if !was_running {
                            let _ = d.destroy();
                        }
                        Err(match aborted {
                            true => DriverError::Other(format!(
                                "migration aborted after {} s: {e}",
                                timeout.as_secs()
                            )),
                            false => lv(e),
                        })
                    }
                }
            })
            .await;
        if let Some(dir) = cleanup {
            let _ = std::fs::remove_dir_all(dir);
        }
        crate::drivers::VmDriver::expire_listing(self);
        crate::drivers::VmDriver::expire_listing(target);
        r
    }
}

impl LibvirtDriver {
    /// libvirt's test driver (a hypervisor simulated in this process, for
    /// tests) has no migration. Between two test-driver nodes a move is
    /// simulated with the end state [`LibvirtDriver::migrate_to`] leaves:
    /// the disk volume (same name and size) in the target's pool, the
    /// domain defined there from `xml` with this domain's MAC and running
    /// if it ran here, and the domain removed here (its volumes stay, as
    /// after a real migration). Never used with a real hypervisor.
    pub(super) async fn migrate_simulated(
        &self,
        name: &str,
        target: &LibvirtDriver,
        xml: &str,
    ) -> DriverResult<()> {
        let (tconn, turi, twatch, tpool) = (
            target.conn.clone(),
            target.uri.clone(),
            target.watch.clone(),
            target.storage_pool.clone(),
        );
        let (name, owner, xml, pool) = (
            name.to_string(),
            self.owner.clone(),
            xml.to_string(),
            self.storage_pool.clone(),
        );
        let r = self
            .with_conn(move |c| {
                let d = Self::lookup_ours(c, &name, &owner)?
                    .ok_or_else(|| DriverError::Other(format!("no domain {name} to migrate")))?;
                let live = d.xml_desc(0).map_err(lv)?;
                let xml = with_mac_of(&xml, &live);
                let running = d.is_active().map_err(lv)?;
                let dconn = Self::handle(&tconn, &turi, &twatch)?;
                if let Some(disk) = first_volume(&live) {
                    let vol = super::volumes::pool(c, &pool)?
                        .lookup_storage_vol_by_name(&disk)
                        .map_err(lv)?;
                    let capacity = vol.info().map_err(lv)?.capacity;
                    let there = super::volumes::pool(&dconn, &tpool)?;
                    if there.lookup_storage_vol_by_name(&disk).is_err() {
                        let vxml = format!(
                            "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
                             <target><format type='qcow2'/></target></volume>",
                            super::xml_escape(&disk)
                        );
                        virt::storage_vol::StorageVol::create_xml(&there, &vxml, 0).map_err(lv)?;
                    }
                }
                let moved = dconn.define_domain_xml(&xml).map_err(lv)?;
                if running {
                    d.destroy().map_err(lv)?;
                    moved.create().map_err(lv)?;
                }
                d.undefine().map_err(lv)?;
                Ok(())
            })
            .await;
        crate::drivers::VmDriver::expire_listing(self);
        crate::drivers::VmDriver::expire_listing(target);
        r
    }
}

/// The volume of a domain's first disk (`<source pool=… volume=…/>`).
fn first_volume(xml: &str) -> Option<String> {
    let rest = xml.split("<source pool='").nth(1)?;
    let vol = rest.split_once("volume='")?.1.split('\'').next()?;
    Some(vol.to_string())
}

/// `xml` with the MAC address of `live`'s network interface (hostd's
/// domains have one, and hostd's XML names none: libvirt generates it).
fn with_mac_of(xml: &str, live: &str) -> String {
    let mac = live
        .split("<mac address='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .filter(|m| m.len() == 17 && m.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'));
    match (mac, xml.contains("<mac ")) {
        (Some(mac), false) => xml.replacen(
            "<interface type='user'>",
            &format!("<interface type='user'>\n      <mac address='{mac}'/>"),
            1,
        ),
        _ => xml.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{first_volume, with_mac_of};

    #[test]
    fn the_first_disks_volume_is_found() {
        let xml = "<disk type='volume' device='disk'>\n<driver name='qemu'/>\n<source pool='hostd-x' volume='h-1-disk.qcow2'/>\n</disk><disk><source pool='hostd-x' volume='seed'/>";
        assert_eq!(first_volume(xml).as_deref(), Some("h-1-disk.qcow2"));
        assert_eq!(first_volume("<domain/>"), None);
    }

    #[test]
    fn the_target_xml_gets_the_running_domains_mac() {
        let ours = "<devices>\n    <interface type='user'>\n      <backend type='passt'/>\n    </interface>";
        let live = "<interface type='user'>\n      <mac address='52:54:00:1c:a6:4d'/>\n      <source dev='x'/>";
        let out = with_mac_of(ours, live);
        assert!(
            out.contains(
                "<interface type='user'>\n      <mac address='52:54:00:1c:a6:4d'/>\n      <backend"
            ),
            "{out}"
        );
        // Nothing to take, or one there already: unchanged.
        assert_eq!(with_mac_of(ours, "<domain/>"), ours);
        assert_eq!(with_mac_of(&out, "<mac address='52:54:00:00:00:01'/>"), out);
        assert_eq!(with_mac_of(ours, "<mac address='x'/><interface"), ours);
    }
}
