//! Backups and restores of a hosting's disk, as steps of its reconcile.
//!
//! A backup runs at the end of a converged pass: libvirt's backup job copies
//! the running guest's disk (or the stopped guest's volume is read as is),
//! `qemu-img` compresses it into `$HOSTD_STATE_DIR/backups/<hosting>/<backup>.qcow2`,
//! its SHA-256 goes into the database and the directory's `manifest.json`.
//! A restore replaces the disk (the previous one goes to quarantine) in the
//! disk step: asked for by the owner, or on its own when the disk vanished
//! and a verified backup exists. Every step is redone from the start after a
//! crash; the database row says where a backup stands, the files follow it.

use std::path::{Path, PathBuf};

use sha2::Digest;

use super::steps::Pass;
use super::{Action, ReconcileError};
use crate::domain::BackupId;
use crate::domain::HostingId;
use crate::drivers::DriverError;

/// Where backup files live. Backups are readable by root only; the staging
/// directory (where libvirt's job writes, as the qemu user) is not listable.
#[derive(Debug, Clone)]
pub struct BackupFiles {
    root: PathBuf,
    staging: PathBuf,
}

impl BackupFiles {
    pub fn new(state_dir: &Path) -> BackupFiles {
        BackupFiles {
            root: state_dir.join("backups"),
            staging: state_dir.join("backup-staging"),
        }
    }

    /// The directory of one hosting's backups.
    pub fn dir(&self, id: HostingId) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// A completed backup's file.
    pub fn file(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.dir(id).join(format!("{b}.qcow2"))
    }

    pub(crate) fn partial(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.dir(id).join(format!(".{b}.partial"))
    }

    pub(crate) fn staging(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.staging.join(format!("{id}-{b}.qcow2"))
    }

    /// An empty image the size of the disk (compressing an incremental).
    pub(crate) fn scratch(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.staging.join(format!("{id}-{b}.empty.qcow2"))
    }

    /// A backup's sealed copy, on its way to or from the off-host store.
    pub(crate) fn sealed(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.staging.join(format!("{id}-{b}.sealed"))
    }

    pub(crate) fn restore_staging(&self, id: HostingId) -> PathBuf {
        self.staging.join(format!("{id}-restore.qcow2"))
    }

    /// Creates the directories with their modes.
    pub(crate) fn prepare(&self, id: HostingId) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for (dir, mode) in [
            (&self.root, 0o700),
            (&self.dir(id), 0o700),
            (&self.staging, 0o711),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// Removes what an unfinished backup may have left.
    pub(crate) fn discard(&self, id: HostingId, b: BackupId) {
        for p in [
            self.staging(id, b),
            self.partial(id, b),
            self.file(id, b),
            self.sealed(id, b),
            self.scratch(id, b),
        ] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Removes the staging files of a hosting (it is being deleted).
    pub fn discard_staging(&self, id: HostingId) {
        let prefix = format!("{id}-");
        if let Ok(entries) = std::fs::read_dir(&self.staging) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// `manifest.json` of a hosting's backup directory: enough to find, check
/// and restore every completed backup by hand, without the database.
#[derive(serde::Serialize)]
pub(crate) struct Manifest<'a> {
    pub(crate) hosting_id: HostingId,
    pub(crate) format: &'static str,
    /// The image the disk was created from (its kernel boots the disk).
    pub(crate) image_pin: Option<&'a crate::images::ImageEntry>,
    pub(crate) backups: Vec<ManifestEntry>,
}

#[derive(serde::Serialize)]
pub(crate) struct ManifestEntry {
    pub(crate) id: BackupId,
    pub(crate) file: String,
    pub(crate) trigger: crate::domain::BackupTrigger,
    pub(crate) kind: crate::domain::BackupKind,
    /// An incremental's parent (its file is this one's backing file).
    pub(crate) parent: Option<BackupId>,
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
    pub(crate) completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) size_bytes: Option<i64>,
    pub(crate) sha256: Option<String>,
}

/// SHA-256 (hex) and size of a file.
pub(crate) fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Other(format!("file task panicked: {e}")))?
        .map_err(DriverError::from)
}

/// Renames `from` to `to` durably (file and directory synced).
pub(crate) fn commit_file(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::File::open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// After a converged pass: the hosting's next backup, if it has one (only
/// then is its record read again, for the status the pass just wrote).
pub async fn pending(
    ctx: &super::Context,
    id: HostingId,
) -> Result<Option<Action>, ReconcileError> {
    let Some(b) = ctx.store.next_backup(id).await? else {
        return Ok(None);
    };
    let Some(rec) = ctx.store.get_record(id).await? else {
        return Ok(None);
    };
    let Ok(vm) = ctx.node_driver(&rec) else {
        return Ok(None);
    };
    let pass = Pass::new(ctx, &rec, vm);
    let result = pass.backup(b).await;
    pass.finish(result).await
}
