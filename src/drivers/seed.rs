//! Builds the cloud-init NoCloud seed (ISO 9660, volume id `cidata`) from the
//! rendered `user-data`, `meta-data` and `network-config`, with `genisoimage`.

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
}

/// Builds the ISO image bytes.
pub async fn build_iso(files: &SeedFiles) -> DriverResult<Vec<u8>> {
    let dir = tempfile_dir()?;
    let write = |name: &str, content: &str| std::fs::write(dir.join(name), content);
    write("user-data", &files.user_data)?;
    write("meta-data", &files.meta_data)?;
    write("network-config", &files.network_config)?;
    write("authorized_keys", &files.authorized_keys)?;
    let iso = dir.join("seed.iso");
    let out = tokio::process::Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args([
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            "user-data",
            "meta-data",
            "network-config",
            "authorized_keys",
        ])
        .current_dir(&dir)
        .output()
        .await
        .map_err(|e| DriverError::Other(format!("cannot run genisoimage: {e}")))?;
    let result = if out.status.success() {
        std::fs::read(&iso).map_err(DriverError::from)
    } else {
        Err(DriverError::Other(format!(
            "genisoimage failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> DriverResult<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hostd-seed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Whether genisoimage is installed (for `hostd doctor`).
pub fn available() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("genisoimage").exists()))
        .unwrap_or(false)
}
