//! Backup jobs: a push-mode libvirt backup of a running guest's disk into a
//! standalone qcow2 (the guest keeps running).

use virt::domain::Domain;

use super::{lv, xml_escape};
use crate::drivers::{DriverError, DriverResult};

/// Runs a push-mode libvirt backup job of the domain's disk into `target`
/// (a full, standalone qcow2; the guest keeps running) and waits for it.
pub(super) fn backup_job(d: &Domain, target: &std::path::Path) -> DriverResult<()> {
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
