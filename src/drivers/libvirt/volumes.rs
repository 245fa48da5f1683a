//! The storage pool and its volumes: the pool's directory and definition,
//! overlays and seed volumes, in-place seed rewrites, restore and quarantine
//! moves. Each function runs on a blocking thread with the shared connection.

use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::{is, lv, xml_escape};
use crate::drivers::{DriverError, DriverResult, VolumeSource};
use virt::error::ErrorNumber;

/// The storage pool named `name`.
pub(super) fn pool(c: &Connect, name: &str) -> DriverResult<StoragePool> {
    c.lookup_storage_pool_by_name(name).map_err(lv)
}

/// Defines and starts this hostd's directory pool; refuses a pool of the
/// same name over another directory (another hostd's).
pub(super) fn ensure_storage_pool(
    c: &Connect,
    name: &str,
    dir: &std::path::Path,
) -> DriverResult<()> {
    let pool = match c.lookup_storage_pool_by_name(name) {
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
                xml_escape(name),
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
}

/// The pool's volume names (the ownership marker file is not a volume).
pub(super) fn list(c: &Connect, pool_name: &str) -> DriverResult<Vec<String>> {
    let p = pool(c, pool_name)?;
    let _ = p.refresh(0);
    Ok(volume_names(&p)?
        .into_iter()
        .filter(|n| n != crate::drivers::ownership::MARKER_FILE)
        .collect())
}

/// Whether the volume exists.
pub(super) fn exists(c: &Connect, pool_name: &str, name: &str) -> DriverResult<bool> {
    match pool(c, pool_name)?.lookup_storage_vol_by_name(name) {
        Ok(_) => Ok(true),
        Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(false),
        Err(e) => Err(lv(e)),
    }
}

/// Creates the volume unless it exists (`false` then).
pub(super) fn create(
    c: &Connect,
    pool_name: &str,
    name: &str,
    source: VolumeSource,
) -> DriverResult<bool> {
    let p = pool(c, pool_name)?;
    match p.lookup_storage_vol_by_name(name) {
        Ok(_) => return Ok(false),
        Err(e) if is(&e, ErrorNumber::NoStorageVolume) => {}
        Err(e) => return Err(lv(e)),
    }
    match source {
        VolumeSource::Overlay {
            backing,
            backing_format,
            capacity_gib,
        } => {
            let xml = format!(
                "<volume><name>{}</name><capacity unit='GiB'>{}</capacity><allocation>0</allocation><target><format type='qcow2'/></target>\
                 <backingStore><path>{}</path><format type='{}'/></backingStore></volume>",
                xml_escape(name),
                capacity_gib,
                xml_escape(&backing.to_string_lossy()),
                xml_escape(&backing_format)
            );
            StorageVol::create_xml(&p, &xml, 0).map_err(lv)?;
        }
        VolumeSource::Bytes(bytes) => {
            let xml = format!(
                "<volume><name>{}</name><capacity unit='bytes'>{}</capacity><allocation>0</allocation><target><format type='raw'/></target></volume>",
                xml_escape(name),
                raw_volume_size(bytes.len())
            );
            let vol = StorageVol::create_xml(&p, &xml, 0).map_err(lv)?;
            write_volume_file(&vol, &bytes)?;
        }
    }
    Ok(true)
}

/// Rewrites a raw volume's bytes in place (see [`write_volume_file`]).
pub(super) fn replace_bytes(
    c: &Connect,
    pool_name: &str,
    name: &str,
    bytes: &[u8],
) -> DriverResult<()> {
    let p = pool(c, pool_name)?;
    let vol = p.lookup_storage_vol_by_name(name).map_err(lv)?;
    write_volume_file(&vol, bytes)?;
    let _ = p.refresh(0);
    Ok(())
}

/// Moves the volume's file to `to` (kept, not deleted; never over an
/// existing file); `None` when there is no volume or no file.
pub(super) fn quarantine(
    c: &Connect,
    pool_name: &str,
    name: &str,
    to: &std::path::Path,
) -> DriverResult<Option<std::path::PathBuf>> {
    let p = pool(c, pool_name)?;
    let vol = match p.lookup_storage_vol_by_name(name) {
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
    if to.symlink_metadata().is_ok() {
        return Err(DriverError::Other(format!(
            "quarantine target {} exists: not replacing it",
            to.display()
        )));
    }
    std::fs::rename(&from, to)?;
    let _ = p.refresh(0);
    forget_volume(&p, name);
    Ok(Some(to.to_path_buf()))
}

/// The file of a stopped guest's disk volume (what a backup copies).
pub(super) fn file_of(
    c: &Connect,
    pool_name: &str,
    volume: &str,
) -> DriverResult<std::path::PathBuf> {
    let vol = pool(c, pool_name)?
        .lookup_storage_vol_by_name(volume)
        .map_err(lv)?;
    let path = std::path::PathBuf::from(vol.path().map_err(lv)?);
    if !path.exists() {
        return Err(DriverError::Other(format!(
            "volume {volume} has no file to back up (a simulated hypervisor)"
        )));
    }
    Ok(path)
}

/// Creates the volume through libvirt (so a simulated pool knows it too),
/// then puts the image file `from` in its place.
pub(super) fn restore(
    c: &Connect,
    pool_name: &str,
    name: &str,
    from: &std::path::Path,
) -> DriverResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = pool(c, pool_name)?;
    let xml = format!(
        "<volume><name>{}</name><capacity unit='bytes'>0</capacity><target><format type='raw'/></target></volume>",
        xml_escape(name)
    );
    let vol = StorageVol::create_xml(&p, &xml, 0).map_err(lv)?;
    let path = std::path::PathBuf::from(vol.path().map_err(lv)?);
    std::fs::set_permissions(from, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(from, &path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let _ = p.refresh(0);
    Ok(())
}

/// Deletes the volume; an absent one is success.
pub(super) fn delete(c: &Connect, pool_name: &str, name: &str) -> DriverResult<()> {
    match pool(c, pool_name)?.lookup_storage_vol_by_name(name) {
        Ok(v) => match v.delete(0) {
            Ok(()) => Ok(()),
            Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(()),
            Err(e) => Err(lv(e)),
        },
        Err(e) if is(&e, ErrorNumber::NoStorageVolume) => Ok(()),
        Err(e) => Err(lv(e)),
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
