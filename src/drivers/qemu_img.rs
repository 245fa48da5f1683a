//! `qemu-img`, for what libvirt does not do: compressing a disk image into a
//! backup file. Runs as a child process (never blocks the runtime) and is
//! killed if the caller's future is dropped.

use std::path::Path;

use super::{DriverError, DriverResult};

/// Writes `from` (any qcow2 chain) as one standalone qcow2 file `to` with
/// zstd-compressed clusters. qemu reads such a file as a normal disk (new
/// writes are stored uncompressed), so a restore needs no decompression.
pub async fn compress(from: &Path, to: &Path) -> DriverResult<()> {
    let out = tokio::process::Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
        ])
        .arg(from)
        .arg(to)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DriverError::Other(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(DriverError::Other(format!(
            "qemu-img convert failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
