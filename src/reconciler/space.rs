//! Free disk space on the host, checked before hostd writes a tenant's bytes
//! (a backup's staging copy and compressed file, a restore's copy) so that
//! no operation a tenant can trigger fills the filesystem that every guest's
//! disk, and perhaps Postgres, live on. `HOSTD_DISK_RESERVE_GIB` is left
//! free; an operation that would cross it is refused with a clear message
//! and writes nothing. New disks are thin overlays: admission keeps the
//! reserve out of the pool's free space instead (`capacity::budget`).

use std::path::Path;

/// Free bytes (for an unprivileged writer) of the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether writing `need` bytes leaves `reserve` free, given `free`: the
/// refusal's message otherwise.
pub fn fits(what: &str, need: u64, free: u64, reserve: u64) -> Result<(), String> {
    if free.saturating_sub(need) >= reserve && need <= free {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(format!(
        "not enough free disk space for {what}: it needs up to {:.2} GiB, {:.2} GiB are free and \
         {:.2} GiB are kept free for the host (HOSTD_DISK_RESERVE_GIB)",
        gib(need),
        gib(free),
        gib(reserve)
    ))
}

/// [`fits`] for the filesystem holding `path`.
pub fn check(path: &Path, what: &str, need: u64, reserve: u64) -> Result<(), String> {
    let free = free_bytes(path).map_err(|e| format!("cannot read free space: {e}"))?;
    fits(what, need, free, reserve)
}

/// Bytes a file (or a qcow2 image with its backing chain) holds on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_may_not_cross_the_reserve() {
        const G: u64 = 1 << 30;
        assert!(fits("a backup", G, 10 * G, 2 * G).is_ok());
        assert!(fits("a backup", 8 * G, 10 * G, 2 * G).is_ok());
        let e = fits("a backup", 9 * G, 10 * G, 2 * G).unwrap_err();
        assert!(
            e.contains("HOSTD_DISK_RESERVE_GIB") && e.contains("9.00 GiB"),
            "{e}"
        );
        assert!(fits("a backup", 11 * G, 10 * G, 0).is_err());
        assert!(free_bytes(Path::new("/")).unwrap() > 0);
    }
}
