//! Moving a domain to another node: libvirt's migration with the writable
//! disks copied (`VIR_MIGRATE_NON_SHARED_DISK`: QEMU mirrors the whole disk
//! chain into a volume libvirt creates in the target's pool of the same
//! name), the definition persisted there from hostd's own XML for that node
//! and removed here. Managed (not peer-to-peer): hostd holds both
//! connections, so a hostd that dies mid-way makes libvirt cancel the job
//! and the guest keeps running here. The migration stream and the disk
//! copy go to the target's address (never a name libvirt would resolve).

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
        address: IpAddr,
        timeout: Duration,
    ) -> DriverResult<()> {
        let (tconn, turi, twatch) = (target.conn.clone(), target.uri.clone(), target.watch.clone());
        let (name, owner, xml) = (name.to_string(), self.owner.clone(), xml.to_string());
        let host = match address {
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        let r = self
            .with_conn(move |c| {
                let d = Self::lookup_ours(c, &name, &owner)?
                    .ok_or_else(|| DriverError::Other(format!("no domain {name} to migrate")))?;
                let dconn = Self::handle(&tconn, &turi, &twatch)?;
                // A stopped guest is started paused (it never runs) so that
                // QEMU can copy its disk, and stopped again there.
                let was_running = d.is_active().map_err(lv)?;
                if !was_running {
                    d.create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
                        .map_err(lv)?;
                }
                let params = MigrateParameters {
                    dest_xml: Some(xml),
                    uri: Some(format!("tcp://{host}")),
                    listen_address: Some(address.to_string()),
                    migrate_disks: vec!["vda".to_string()],
                    ..Default::default()
                };
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
        crate::drivers::VmDriver::expire_listing(self);
        crate::drivers::VmDriver::expire_listing(target);
        r
    }
}
