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
use std::time::{Duration, Instant};

use sha2::Digest;

use super::names::{disk_volume, domain_name};
use super::steps::Pass;
use super::{Action, ReconcileError};
use crate::domain::{remove_condition, BackupId, BackupState, ConditionType as C, EventType};
use crate::domain::{HostingId, Phase, Reason};
use crate::drivers::{qemu_img, DriverError};
use crate::store::Backup;

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

    fn partial(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.dir(id).join(format!(".{b}.partial"))
    }

    fn staging(&self, id: HostingId, b: BackupId) -> PathBuf {
        self.staging.join(format!("{id}-{b}.qcow2"))
    }

    fn restore_staging(&self, id: HostingId) -> PathBuf {
        self.staging.join(format!("{id}-restore.qcow2"))
    }

    /// Creates the directories with their modes.
    fn prepare(&self, id: HostingId) -> std::io::Result<()> {
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
    fn discard(&self, id: HostingId, b: BackupId) {
        for p in [self.staging(id, b), self.partial(id, b), self.file(id, b)] {
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
struct Manifest<'a> {
    hosting_id: HostingId,
    format: &'static str,
    /// The image the disk was created from (its kernel boots the disk).
    image_pin: Option<&'a crate::images::ImageEntry>,
    backups: Vec<ManifestEntry>,
}

#[derive(serde::Serialize)]
struct ManifestEntry {
    id: BackupId,
    file: String,
    trigger: crate::domain::BackupTrigger,
    created_at: chrono::DateTime<chrono::Utc>,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
}

/// SHA-256 (hex) and size of a file.
fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, DriverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DriverError::Other(format!("file task panicked: {e}")))?
        .map_err(DriverError::from)
}

/// Renames `from` to `to` durably (file and directory synced).
fn commit_file(from: &Path, to: &Path) -> std::io::Result<()> {
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
    let pass = Pass::new(ctx, &rec);
    let result = pass.backup(b).await;
    pass.finish(result).await
}

/// What a restore found about a backup.
enum Verified {
    Good(Backup),
    Bad(String),
}

impl Pass<'_> {
    fn files(&self) -> BackupFiles {
        BackupFiles::new(&self.ctx.config.state_dir)
    }

    /// Takes backup `b` (an interrupted one again from the start), then
    /// applies retention. `Some(requeue)` when every backup slot is busy.
    async fn backup(&self, b: Backup) -> Result<Option<Action>, ReconcileError> {
        let id = self.rec.id;
        let Ok(_slot) = self.ctx.backup_slots.clone().try_acquire_owned() else {
            return Ok(Some(Action::Requeue(Duration::from_secs(5))));
        };
        let files = self.files();
        if b.state == BackupState::Running {
            files.discard(id, b.id);
            let msg = format!("backup {} was interrupted; taking it again", b.id);
            self.event(EventType::Warning, Reason::BackupResumed, &msg)
                .await?;
        } else {
            self.ctx.store.backup_started(b.id).await?;
            let msg = format!("taking backup {} ({})", b.id, b.trigger);
            self.event(EventType::Normal, Reason::BackupStarted, &msg)
                .await?;
        }
        self.flush_events().await?;
        self.fault("after_backup_start").await?;
        let t0 = Instant::now();
        match self.take(&b, &files).await {
            Ok((sha, size)) => {
                self.ctx.store.backup_completed(b.id, size, &sha).await?;
                self.ctx.metrics.backup_completed(size, t0.elapsed());
                let msg = format!(
                    "backup {} completed: {:.1} MiB in {:.1} s",
                    b.id,
                    size as f64 / 1048576.0,
                    t0.elapsed().as_secs_f64()
                );
                self.event(EventType::Normal, Reason::BackupCompleted, &msg)
                    .await?;
            }
            Err(ReconcileError::Driver(e)) => {
                files.discard(id, b.id);
                let msg = format!("backup {} failed: {e}", b.id);
                self.ctx.store.backup_failed(b.id, &e.to_string()).await?;
                self.ctx.metrics.backup_failed();
                self.event(EventType::Warning, Reason::BackupFailed, &msg)
                    .await?;
            }
            Err(e) => return Err(e),
        }
        self.expire().await?;
        Ok(None)
    }

    /// Copies, compresses and checksums one backup; its file is in place
    /// when this returns.
    async fn take(&self, b: &Backup, files: &BackupFiles) -> Result<(String, u64), ReconcileError> {
        let id = self.rec.id;
        files.prepare(id).map_err(DriverError::from)?;
        let staging = files.staging(id, b.id);
        let image = self
            .ctx
            .vm
            .disk_image(&domain_name(id), &disk_volume(id), &staging)
            .await?;
        self.fault("after_backup_copy").await?;
        let partial = files.partial(id, b.id);
        qemu_img::compress(&image, &partial).await?;
        let _ = std::fs::remove_file(&staging);
        let (final_, p) = (files.file(id, b.id), partial.clone());
        let sum = blocking(move || {
            let sum = digest(&p)?;
            commit_file(&p, &final_)?;
            Ok(sum)
        })
        .await?;
        self.fault("after_backup_file").await?;
        Ok(sum)
    }

    /// Deletes backups past `HOSTD_BACKUP_KEEP` and rewrites the manifest.
    async fn expire(&self) -> Result<(), ReconcileError> {
        let id = self.rec.id;
        let keep = self.ctx.config.backups.keep;
        let expired = self.ctx.store.expire_backups(id, keep).await?;
        let files = self.files();
        for b in &expired {
            let _ = std::fs::remove_file(files.file(id, b.id));
        }
        if !expired.is_empty() {
            let ids: Vec<String> = expired.iter().map(|b| b.id.to_string()).collect();
            let msg = format!("deleted backups past the {keep} kept: {}", ids.join(", "));
            self.event(EventType::Normal, Reason::BackupsExpired, &msg)
                .await?;
        }
        self.write_manifest().await
    }

    /// Rewrites `manifest.json` from the completed backups in the database.
    async fn write_manifest(&self) -> Result<(), ReconcileError> {
        let id = self.rec.id;
        let files = self.files();
        let completed = self.ctx.store.completed_backups(id).await?;
        let manifest = Manifest {
            hosting_id: id,
            format: "qcow2, standalone (no backing file), zstd-compressed clusters",
            image_pin: self.st.image_pin.as_ref(),
            backups: completed
                .into_iter()
                .map(|b| ManifestEntry {
                    id: b.id,
                    file: format!("{}.qcow2", b.id),
                    trigger: b.trigger,
                    created_at: b.created_at,
                    completed_at: b.completed_at,
                    size_bytes: b.size_bytes,
                    sha256: b.sha256,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let dir = files.dir(id);
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(".manifest.json.tmp");
            std::fs::write(&tmp, json)?;
            commit_file(&tmp, &dir.join("manifest.json"))
        })
        .await?;
        Ok(())
    }

    /// Checks a backup before it replaces a disk: Completed in the
    /// database, its file present with the recorded checksum.
    async fn verify(&self, b: BackupId) -> Result<Verified, ReconcileError> {
        let Some(backup) = self.ctx.store.get_backup(self.rec.id, b).await? else {
            return Ok(Verified::Bad(format!("backup {b} no longer exists")));
        };
        if backup.state != BackupState::Completed {
            return Ok(Verified::Bad(format!("backup {b} is {}", backup.state)));
        }
        let path = self.files().file(self.rec.id, b);
        let sum = blocking(move || digest(&path)).await;
        match sum {
            Ok((sha, _)) if Some(&sha) == backup.sha256.as_ref() => Ok(Verified::Good(backup)),
            Ok(_) => Ok(Verified::Bad(format!(
                "backup {b}'s file does not match its checksum"
            ))),
            Err(e) => Ok(Verified::Bad(format!(
                "backup {b}'s file cannot be read: {e}"
            ))),
        }
    }

    /// The owner's restore of backup `b`: `true` when the disk now holds it;
    /// `false` when the backup cannot be used (the request is then consumed
    /// with a Warning and the disk left as it was).
    pub async fn restore_requested(
        &mut self,
        b: BackupId,
        exists: bool,
    ) -> Result<bool, ReconcileError> {
        match self.verify(b).await? {
            Verified::Good(backup) => {
                self.restore(&backup, exists).await?;
                Ok(true)
            }
            Verified::Bad(why) => {
                let msg = format!("cannot restore: {why}; the disk was left as it was");
                self.event(EventType::Warning, Reason::RestoreFailed, &msg)
                    .await?;
                self.st.disk_epoch = self.rec.disk_epoch;
                self.write_status().await?;
                Ok(false)
            }
        }
    }

    /// A vanished disk: restores the newest backup that verifies (marking
    /// the ones that do not as Failed); `false` when there is none.
    pub async fn restore_latest(&mut self) -> Result<bool, ReconcileError> {
        for b in self.ctx.store.completed_backups(self.rec.id).await? {
            match self.verify(b.id).await? {
                Verified::Good(backup) => {
                    self.restore(&backup, false).await?;
                    return Ok(true);
                }
                Verified::Bad(why) => {
                    self.ctx.store.backup_failed(b.id, &why).await?;
                    let msg = format!("{why}: it cannot be restored");
                    self.event(EventType::Warning, Reason::RestoreFailed, &msg)
                        .await?;
                }
            }
        }
        Ok(false)
    }

    /// Replaces the disk by a verified backup: the guest is stopped, the
    /// backup copied next to the pool, the old disk (if any) quarantined,
    /// the copy moved in. Redone from the start if interrupted; the backup
    /// file is never touched.
    async fn restore(&mut self, b: &Backup, exists: bool) -> Result<(), ReconcileError> {
        let id = self.rec.id;
        let taken = b.completed_at.unwrap_or(b.created_at).to_rfc3339();
        let msg = format!(
            "restoring backup {} (taken {taken}): stopping the guest",
            b.id
        );
        self.event(EventType::Normal, Reason::Restoring, &msg)
            .await?;
        self.st.phase = Phase::Updating;
        self.st.message = Some(format!("restoring backup {}", b.id));
        self.write_status().await?;
        let files = self.files();
        files.prepare(id).map_err(DriverError::from)?;
        let (from, to) = (files.file(id, b.id), files.restore_staging(id));
        blocking(move || {
            std::fs::copy(&from, &to)?;
            std::fs::File::open(&to)?.sync_all()
        })
        .await?;
        self.ctx.vm.destroy(&domain_name(id)).await?;
        let name = disk_volume(id);
        if exists {
            let dir = self.ctx.config.state_dir.join("quarantine");
            match self.ctx.vm.quarantine_volume(&name, &dir).await? {
                Some(to) => {
                    let msg = format!("the previous disk was moved to {}", to.display());
                    self.event(EventType::Normal, Reason::DiskQuarantined, &msg)
                        .await?;
                }
                None => self.ctx.vm.delete_volume(&name).await?,
            }
        }
        self.fault("after_restore_quarantine").await?;
        self.ctx
            .vm
            .restore_volume(&name, &files.restore_staging(id))
            .await?;
        let msg = format!("the disk was restored from backup {} (taken {taken})", b.id);
        self.event(EventType::Normal, Reason::DiskRestored, &msg)
            .await?;
        self.ctx.metrics.restores.inc();
        self.fault("after_restore_disk").await?;
        self.st.disk_created = true;
        self.st.disk_epoch = self.rec.disk_epoch;
        remove_condition(&mut self.st.conditions, C::DiskLost);
        self.write_status().await?;
        self.disk_replaced = true;
        Ok(())
    }

    /// Fails the hosting's pending backup: there is no disk to back up.
    pub async fn fail_pending_backup(&self, why: &str) -> Result<(), ReconcileError> {
        if let Some(b) = self.ctx.store.next_backup(self.rec.id).await? {
            self.ctx.store.backup_failed(b.id, why).await?;
            self.files().discard(self.rec.id, b.id);
        }
        Ok(())
    }
}
