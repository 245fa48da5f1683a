//! Backup jobs: a push-mode libvirt backup of a running guest's disk into a
//! qcow2 (the guest keeps running), full or incremental, and the checkpoints
//! (libvirt's names for the dirty bitmaps in the disk's qcow2) that make
//! incrementals possible. Only checkpoints named `hostd-…` are touched.

use virt::domain::Domain;
use virt::sys;

use super::{lv, xml_escape};
use crate::drivers::{Checkpoints, DriverError, DriverResult};

/// The prefix of hostd's checkpoint names.
pub const CHECKPOINT_PREFIX: &str = "hostd-";

/// Names of the domain's checkpoints that hostd made.
pub(super) fn checkpoints(d: &Domain) -> DriverResult<Vec<String>> {
    let mut list: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: a live domain handle; libvirt allocates the array and its
    // elements, which are freed below.
    let n = unsafe { sys::virDomainListAllCheckpoints(d.as_ptr(), &mut list, 0) };
    if n < 0 {
        return Err(lv(virt::error::Error::last_error()));
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: `list` holds `n` valid checkpoint pointers.
        unsafe {
            let c = *list.add(i);
            let name = sys::virDomainCheckpointGetName(c);
            if !name.is_null() {
                names.push(
                    std::ffi::CStr::from_ptr(name)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            sys::virDomainCheckpointFree(c);
        }
    }
    // SAFETY: the array itself was allocated by libvirt with malloc.
    unsafe { libc::free(list as *mut libc::c_void) };
    names.retain(|n| n.starts_with(CHECKPOINT_PREFIX));
    Ok(names)
}

/// Deletes one checkpoint: with its bitmap (libvirt merges what it tracked
/// into its parent's), or only libvirt's record of it (`metadata_only`: the
/// disk it named was replaced, so its bitmap is not there). Absent is fine.
pub(super) fn delete_checkpoint(d: &Domain, name: &str, metadata_only: bool) -> DriverResult<()> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| DriverError::Other("checkpoint name contains NUL".into()))?;
    // SAFETY: a live domain handle and a NUL-terminated name.
    let c = unsafe { sys::virDomainCheckpointLookupByName(d.as_ptr(), cname.as_ptr(), 0) };
    if c.is_null() {
        return Ok(());
    }
    let flags = if metadata_only {
        sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    } else {
        0
    };
    // SAFETY: `c` is a valid checkpoint handle, freed right after.
    let r = unsafe {
        let r = sys::virDomainCheckpointDelete(c, flags);
        sys::virDomainCheckpointFree(c);
        r
    };
    if r < 0 {
        return Err(lv(virt::error::Error::last_error()));
    }
    Ok(())
}

/// Forgets every hostd checkpoint of the domain (metadata only): its disk
/// was replaced, so the next backup is a full one.
pub(super) fn forget_checkpoints(d: &Domain) -> DriverResult<()> {
    for name in checkpoints(d)? {
        delete_checkpoint(d, &name, true)?;
    }
    Ok(())
}

/// Backs up a running domain's disk into `target`: an incremental since
/// `want.since` when that checkpoint exists and libvirt accepts it, else a
/// full copy; either way creating checkpoint `want.create`. Every other
/// hostd checkpoint is deleted first (what a crashed or failed job left, and
/// older ones nothing will start from). Returns the checkpoint the copy is
/// incremental from, if any.
pub(super) fn backup_with_checkpoint(
    d: &Domain,
    target: &std::path::Path,
    want: &Checkpoints,
) -> DriverResult<Option<String>> {
    let mut since = want.since.clone();
    for name in checkpoints(d)? {
        if Some(&name) != since.as_ref() && delete_checkpoint(d, &name, false).is_err() {
            // Its bitmap is not in the disk (replaced behind libvirt's
            // back): only the record is left to delete.
            delete_checkpoint(d, &name, true)?;
        }
    }
    if since
        .as_ref()
        .is_some_and(|s| !checkpoints(d).unwrap_or_default().contains(s))
    {
        since = None;
    }
    match backup_job(d, target, since.as_deref(), Some(&want.create)) {
        Ok(()) => Ok(since),
        Err(e) if since.is_some() => {
            // The checkpoint is known but its bitmap is not usable (the disk
            // was replaced behind libvirt's back, or the bitmap is damaged):
            // forget them all and copy everything.
            tracing::warn!(error = %e, "incremental backup refused; taking a full one");
            let _ = forget_checkpoints(d);
            backup_job(d, target, None, Some(&want.create))?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs a push-mode libvirt backup job of the domain's disk into `target`
/// (the guest keeps running) and waits for it: every cluster, or with
/// `since` only those written after that checkpoint (the target's other
/// clusters are unallocated, over a backing file libvirt names: the live
/// disk). With `create`, a checkpoint of that name is made as the job starts.
pub(super) fn backup_job(
    d: &Domain,
    target: &std::path::Path,
    since: Option<&str>,
    create: Option<&str>,
) -> DriverResult<()> {
    use std::time::{Duration, Instant};
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
    let incremental = since
        .map(|s| format!("<incremental>{}</incremental>", xml_escape(s)))
        .unwrap_or_default();
    let xml = format!(
        "<domainbackup mode='push'>{incremental}<disks>\
         <disk name='{}' type='file'><target file='{}'/><driver type='qcow2'/></disk>\
         <disk name='{}' backup='no'/></disks></domainbackup>",
        crate::templates::DISK_DEV,
        xml_escape(&target.to_string_lossy()),
        crate::templates::SEED_DEV,
    );
    let nul = |_| DriverError::Other("backup XML contains NUL".into());
    let xml = std::ffi::CString::new(xml).map_err(nul)?;
    let checkpoint = create
        .map(|c| {
            std::ffi::CString::new(format!(
                "<domaincheckpoint><name>{}</name><disks>\
                 <disk name='{}' checkpoint='bitmap'/><disk name='{}' checkpoint='no'/>\
                 </disks></domaincheckpoint>",
                xml_escape(c),
                crate::templates::DISK_DEV,
                crate::templates::SEED_DEV,
            ))
            .map_err(nul)
        })
        .transpose()?;
    let checkpoint_ptr = checkpoint.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: a live domain handle and NUL-terminated strings that outlive
    // the call; a null checkpoint XML is allowed (no checkpoint).
    let r = unsafe { sys::virDomainBackupBegin(d.as_ptr(), xml.as_ptr(), checkpoint_ptr, 0) };
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
