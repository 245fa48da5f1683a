//! Builds the seed disk (ISO 9660, volume id `cidata`, with `genisoimage`):
//! a cloud-init NoCloud seed (`user-data`, `meta-data`, `network-config`) for
//! images that run cloud-init, and the same settings as plain files under
//! `hostd/` for hostd's own image, whose boot unit applies them in well under
//! a second instead of cloud-init's two Python stages.

use std::path::Path;

use super::{DriverError, DriverResult};

/// The files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: String,
    /// One key per line, read by the guest at every boot.
    pub authorized_keys: String,
    /// Plain files under `hostd/` (name, content), applied at every boot by
    /// hostd's image (`hostname`, `sshd.conf`, `nftables.conf`, `index.html`).
    pub plain: Vec<(&'static str, String)>,
}

/// Builds the ISO image bytes.
pub async fn build_iso(files: &SeedFiles) -> DriverResult<Vec<u8>> {
    let tmp = tempfile::Builder::new().prefix("hostd-seed-").tempdir()?;
    let dir = tmp.path();
    let write = |name: &str, content: &str| std::fs::write(dir.join(name), content);
    write("user-data", &files.user_data)?;
    write("meta-data", &files.meta_data)?;
    write("network-config", &files.network_config)?;
    write("authorized_keys", &files.authorized_keys)?;
    std::fs::create_dir(dir.join("hostd"))?;
    for (name, content) in &files.plain {
        write(&format!("hostd/{name}"), content)?;
    }
    let iso = dir.join("seed.iso");
    let out = tokio::process::Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args([
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            "-graft-points",
            "user-data",
            "meta-data",
            "network-config",
            "authorized_keys",
            "hostd/=hostd",
        ])
        .current_dir(dir)
        .output()
        .await
        .map_err(|e| DriverError::Other(format!("cannot run genisoimage: {e}")))?;
    if !out.status.success() {
        return Err(DriverError::Other(format!(
            "genisoimage failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // The directory is removed when `tmp` drops, on every path.
    Ok(std::fs::read(&iso)?)
}

/// Whether genisoimage is installed (for `hostd doctor`).
pub fn available() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("genisoimage").exists()))
        .unwrap_or(false)
}
