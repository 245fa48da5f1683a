//! The backup and restore steps: a pending backup taken at the end of a
//! converged pass, retention, the manifest, and a restore that replaces the
//! disk in the disk step (the previous one goes to quarantine). The files
//! and their layout are in `reconciler::backup`.

use std::time::{Duration, Instant};

use super::Pass;
use crate::domain::{remove_condition, BackupId, BackupState, ConditionType as C, EventType};
use crate::domain::{BackupKind, Phase, Reason};
use crate::drivers::libvirt::CHECKPOINT_PREFIX;
use crate::drivers::{qemu_img, Checkpoints, DriverError};
use crate::reconciler::backup::{
    blocking, commit_file, digest, BackupFiles, Manifest, ManifestEntry,
};
use crate::reconciler::names::{disk_volume, domain_name};
use crate::reconciler::space;
use crate::reconciler::{Action, ReconcileError};
use crate::store::{Backup, Lineage, RemoteCopy};

/// What a restore found about a backup.
enum Verified {
    /// The backup and the ones it needs, the Full one first, every file
    /// present and matching its checksum.
    Good(Vec<Backup>),
    Bad(String),
}

/// A backup taken: its file's checksum and size, its copy off-host, and
/// what it is.
struct Taken {
    sha256: String,
    size: u64,
    remote: Option<RemoteCopy>,
    lineage: Lineage,
}

/// The libvirt checkpoint made with backup `b`.
fn checkpoint_name(b: BackupId) -> String {
    format!("{CHECKPOINT_PREFIX}{b}")
}

impl Pass<'_> {
    fn files(&self) -> BackupFiles {
        BackupFiles::new(&self.ctx.config.state_dir)
    }

    /// Takes backup `b` (an interrupted one again from the start), then
    /// applies retention. `Some(requeue)` when every backup slot is busy.
    pub(crate) async fn backup(&self, b: Backup) -> Result<Option<Action>, ReconcileError> {
        let id = self.rec.id;
        let Ok(_slot) = self.ctx.backup_slots.clone().try_acquire_owned() else {
            return Ok(Some(Action::Requeue(Duration::from_secs(5))));
        };
        let files = self.files();
        if b.state == BackupState::Running {
            files.discard(id, b.id);
            self.abort_offsite(&b).await?;
            let msg = format!("backup {} was interrupted; taking it again", b.id);
            self.event(EventType::Warning, Reason::BackupResumed, &msg);
        } else {
            self.ctx.store.backup_started(b.id).await?;
            let msg = format!("taking backup {} ({})", b.id, b.trigger);
            self.event(EventType::Normal, Reason::BackupStarted, &msg);
        }
        self.flush_events().await?;
        self.fault("after_backup_start").await?;
        let t0 = Instant::now();
        let taken = match self.within_quota().await {
            Ok(()) => self.take(&b, &files).await,
            Err(e) => Err(e),
        };
        match taken {
            Ok(t) => {
                self.ctx
                    .store
                    .backup_completed(b.id, t.size, &t.sha256, t.remote.as_ref(), &t.lineage)
                    .await?;
                self.ctx.metrics.backup_completed(t.size, t0.elapsed());
                let what = match t.lineage.parent {
                    Some(p) => format!("incremental since backup {p}"),
                    None => "full".to_string(),
                };
                let msg = format!(
                    "backup {} completed ({what}): {:.1} MiB in {:.1} s",
                    b.id,
                    t.size as f64 / 1048576.0,
                    t0.elapsed().as_secs_f64()
                );
                self.event(EventType::Normal, Reason::BackupCompleted, &msg);
            }
            Err(e @ (ReconcileError::Driver(_) | ReconcileError::NoSpace(_))) => {
                files.discard(id, b.id);
                let msg = format!("backup {} failed: {e}", b.id);
                self.ctx.store.backup_failed(b.id, &e.to_string()).await?;
                self.ctx.metrics.backup_failed();
                self.event(EventType::Warning, Reason::BackupFailed, &msg);
            }
            Err(e) => return Err(e),
        }
        self.expire().await?;
        Ok(None)
    }

    /// The checkpoints backup `b` asks for: its own, and, while the chain
    /// of the newest backup made with a checkpoint is shorter than
    /// `HOSTD_BACKUP_FULL_EVERY`, that backup's to be incremental from.
    async fn plan(&self, b: &Backup) -> Result<(Checkpoints, Option<BackupId>), ReconcileError> {
        let full_every = self.ctx.config.backups.full_every as usize;
        let base = match self.ctx.store.checkpoint_base(self.rec.id).await? {
            Some((base, len)) if len < full_every => Some(base.id),
            _ => None,
        };
        let want = Checkpoints {
            create: checkpoint_name(b.id),
            since: base.map(checkpoint_name),
        };
        Ok((want, base))
    }

    /// Copies, compresses and checksums one backup (all of the disk, or
    /// what changed since the previous one), and sends it off-host when a
    /// store is set; its file is in place when this returns, with its copy
    /// in the store.
    async fn take(&self, b: &Backup, files: &BackupFiles) -> Result<Taken, ReconcileError> {
        let id = self.rec.id;
        files.prepare(id).map_err(DriverError::from)?;
        let staging = files.staging(id, b.id);
        // A standalone copy of the disk (its base image's data included),
        // then its compressed file: at most twice what both hold.
        let config = &self.ctx.config;
        let pool_file = crate::drivers::libvirt::pool_dir(&config.state_dir, &config.instance)
            .join(disk_volume(id));
        let base = self.st.image_pin.as_ref().map(|p| p.disk.clone());
        let need = 2 * (space::allocated(&pool_file) + base.map_or(0, |b| space::allocated(&b)));
        let reserve = self.ctx.config.disk_reserve_bytes;
        space::check(&files.dir(id), "this backup", need, reserve)
            .map_err(ReconcileError::NoSpace)?;
        let (want, parent) = self.plan(b).await?;
        self.ctx
            .store
            .backup_progress(b.id, "copying the disk")
            .await?;
        let image = self
            .vm
            .disk_image(&domain_name(id), &disk_volume(id), &staging, &want)
            .await?;
        self.fault("after_backup_copy").await?;
        let lineage = Lineage {
            kind: match image.since {
                Some(_) => BackupKind::Incremental,
                None => BackupKind::Full,
            },
            parent: image.since.as_ref().and(parent),
            checkpoint: image.checkpoint,
        };
        let partial = files.partial(id, b.id);
        self.ctx
            .store
            .backup_progress(b.id, "compressing the copy")
            .await?;
        match lineage.parent {
            Some(p) => {
                let parent_file = format!("{p}.qcow2");
                let scratch = files.scratch(id, b.id);
                qemu_img::compress_incremental(&image.path, &partial, &parent_file, &scratch)
                    .await?
            }
            None => qemu_img::compress(&image.path, &partial).await?,
        }
        let _ = std::fs::remove_file(&staging);
        self.ctx
            .store
            .backup_progress(b.id, "checksumming the file")
            .await?;
        let (final_, p) = (files.file(id, b.id), partial.clone());
        let sum = blocking(move || {
            let sum = digest(&p)?;
            commit_file(&p, &final_)?;
            Ok(sum)
        })
        .await?;
        self.fault("after_backup_file").await?;
        let remote = match &self.ctx.offsite {
            Some(o) => Some(
                self.send_offsite(o, b, &lineage, &files.file(id, b.id), files)
                    .await?,
            ),
            None => None,
        };
        Ok(Taken {
            sha256: sum.0,
            size: sum.1,
            remote,
            lineage,
        })
    }

    /// The hosting's backup quota (`HOSTD_BACKUP_QUOTA_GIB`), in bytes.
    fn quota(&self) -> u64 {
        self.ctx
            .config
            .backups
            .quota_bytes(self.rec.spec.disk_gib.get())
    }

    /// Before a backup: the oldest backups go while the hosting's backups
    /// and quarantined data exceed its quota; if what is left (the newest
    /// backup, the quarantine) still fills it, the backup is refused with
    /// the figures (it fails, and the next one is tried on schedule).
    async fn within_quota(&self) -> Result<(), ReconcileError> {
        let quota = self.quota();
        let used = self.rec.storage;
        let trimmed = self.trim_to_quota(used.quarantine_bytes, quota).await?;
        let freed: u64 = trimmed
            .iter()
            .filter_map(|b| b.size_bytes)
            .map(|s| s as u64)
            .sum();
        let left = used.total().saturating_sub(freed);
        if left >= quota {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(ReconcileError::NoSpace(format!(
                "backup quota reached: backups {:.2} GiB and quarantined data {:.2} GiB of {:.2} GiB \
                 (HOSTD_BACKUP_QUOTA_GIB); quarantined data is deleted {} days after it was put there",
                gib(used.backup_bytes.saturating_sub(freed)),
                gib(used.quarantine_bytes),
                gib(quota),
                self.ctx.config.quarantine.as_secs() / 86400,
            )));
        }
        Ok(())
    }

    /// Deletes the oldest backups (never the newest) while backups plus
    /// `other` bytes exceed `quota`; their files go too.
    async fn trim_to_quota(&self, other: u64, quota: u64) -> Result<Vec<Backup>, ReconcileError> {
        let id = self.rec.id;
        let trimmed = self
            .ctx
            .store
            .trim_backups_to_quota(id, other, quota)
            .await?;
        let files = self.files();
        for b in &trimmed {
            let _ = std::fs::remove_file(files.file(id, b.id));
        }
        if !trimmed.is_empty() {
            let ids: Vec<String> = trimmed.iter().map(|b| b.id.to_string()).collect();
            let msg = format!(
                "deleted the oldest backups to stay within the backup quota of {:.2} GiB: {}",
                quota as f64 / (1u64 << 30) as f64,
                ids.join(", ")
            );
            self.event(EventType::Normal, Reason::BackupsExpired, &msg);
        }
        Ok(trimmed)
    }

    /// Deletes backups past `HOSTD_BACKUP_KEEP`, then the oldest while over
    /// the backup quota, and rewrites the manifest.
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
            self.event(EventType::Normal, Reason::BackupsExpired, &msg);
        }
        self.trim_to_quota(self.rec.storage.quarantine_bytes, self.quota())
            .await?;
        self.write_manifest().await?;
        // The store may be away (a backup just failed for it): what tidying
        // leaves (stale manifest, expired objects) is done by the next one.
        if let Err(e) = self.tidy_offsite().await {
            tracing::warn!(hosting = %self.rec.id, error = %e, "off-host store not tidied");
        }
        Ok(())
    }

    /// Rewrites `manifest.json` from the completed backups in the database.
    async fn write_manifest(&self) -> Result<(), ReconcileError> {
        let id = self.rec.id;
        let files = self.files();
        let completed = self.ctx.store.completed_backups(id).await?;
        let manifest = Manifest {
            hosting_id: id,
            format: "qcow2, zstd-compressed clusters; a Full backup standalone, an Incremental \
                     one holding the clusters written since its parent, whose file \
                     (<parent>.qcow2, here) is its backing file",
            image_pin: self.st.image_pin.as_ref(),
            backups: completed
                .into_iter()
                .map(|b| ManifestEntry {
                    id: b.id,
                    file: format!("{}.qcow2", b.id),
                    trigger: b.trigger,
                    kind: b.kind,
                    parent: b.parent,
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

    /// Checks a backup and the backups it needs (its chain) before they
    /// replace a disk: each Completed, the first a Full one, each file
    /// present with its recorded checksum (fetched from the off-host store
    /// when the local copy is missing or damaged).
    async fn verify(&self, b: BackupId) -> Result<Verified, ReconcileError> {
        let chain = self.ctx.store.backup_chain(self.rec.id, b).await?;
        if chain.is_empty() {
            return Ok(Verified::Bad(format!("backup {b} no longer exists")));
        }
        let needs = |l: &Backup, why: String| {
            if l.id == b {
                why
            } else {
                format!("backup {b} needs backup {}, but {why}", l.id)
            }
        };
        for link in &chain {
            if link.state != BackupState::Completed {
                let why = format!("backup {} is {}", link.id, link.state);
                return Ok(Verified::Bad(needs(link, why)));
            }
        }
        if chain[0].kind != BackupKind::Full {
            let why = "the backup it was taken after is gone".to_string();
            return Ok(Verified::Bad(needs(&chain[0], why)));
        }
        for link in &chain {
            if let Err(why) = self.verify_file(link).await? {
                return Ok(Verified::Bad(needs(link, why)));
            }
        }
        Ok(Verified::Good(chain))
    }

    /// Checks one backup's file against its checksum; a missing or damaged
    /// local copy is fetched from the store when the backup is also there.
    async fn verify_file(&self, backup: &Backup) -> Result<Result<(), String>, ReconcileError> {
        let b = backup.id;
        let path = self.files().file(self.rec.id, b);
        let sum = blocking(move || digest(&path)).await;
        let local = match sum {
            Ok((sha, _)) if Some(&sha) == backup.sha256.as_ref() => return Ok(Ok(())),
            Ok(_) => format!("backup {b}'s file does not match its checksum"),
            Err(e) => format!("backup {b}'s file cannot be read: {e}"),
        };
        // The local copy is a cache when the backup is also off-host.
        if backup.remote.is_none() {
            return Ok(Err(local));
        }
        match self.fetch_offsite(backup).await? {
            Ok(()) => {
                let msg = format!("{local}: fetched its sealed copy from the off-host store");
                self.event(EventType::Normal, Reason::Restoring, &msg);
                Ok(Ok(()))
            }
            Err(why) => Ok(Err(format!("{local}, and {why}"))),
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
            Verified::Good(chain) => {
                self.restore(&chain, exists).await?;
                Ok(true)
            }
            Verified::Bad(why) => {
                let msg = format!("cannot restore: {why}; the disk was left as it was");
                self.event(EventType::Warning, Reason::RestoreFailed, &msg);
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
                Verified::Good(chain) => {
                    self.restore(&chain, false).await?;
                    return Ok(true);
                }
                Verified::Bad(why) => {
                    self.ctx.store.backup_failed(b.id, &why).await?;
                    let msg = format!("{why}: it cannot be restored");
                    self.event(EventType::Warning, Reason::RestoreFailed, &msg);
                }
            }
        }
        Ok(false)
    }

    /// Replaces the disk by a verified backup (`chain`: it, after the ones
    /// it needs): the guest is stopped, the backup copied next to the pool
    /// (a chain written out as one image), the old disk (if any)
    /// quarantined, the copy moved in, the guest's checkpoints forgotten
    /// (the next backup is a full one). Redone from the start if
    /// interrupted; backup files are never touched.
    async fn restore(&mut self, chain: &[Backup], exists: bool) -> Result<(), ReconcileError> {
        let id = self.rec.id;
        let b = chain.last().expect("a verified chain is not empty");
        let taken = b.completed_at.unwrap_or(b.created_at).to_rfc3339();
        let what = match chain.len() {
            1 => String::new(),
            2 => format!(" with the full backup {} it needs", chain[0].id),
            n => format!(" with the {} backups it needs", n - 1),
        };
        let msg = format!(
            "restoring backup {} (taken {taken}){what}: stopping the guest",
            b.id
        );
        self.event(EventType::Normal, Reason::Restoring, &msg);
        self.st.phase = Phase::Updating;
        self.st.message = Some(format!("restoring backup {}", b.id));
        self.write_status().await?;
        let files = self.files();
        files.prepare(id).map_err(DriverError::from)?;
        let (from, to) = (files.file(id, b.id), files.restore_staging(id));
        // The copy must leave the reserve free; until it can, the restore
        // waits (the pass fails with `InsufficientDisk` and is retried).
        let reserve = self.ctx.config.disk_reserve_bytes;
        let need = match chain.len() {
            1 => std::fs::metadata(&from).map(|m| m.len()).unwrap_or(0),
            _ => qemu_img::flattened_size(&from).await?,
        };
        space::check(&files.dir(id), "this restore", need, reserve)
            .map_err(ReconcileError::NoSpace)?;
        if chain.len() == 1 {
            blocking(move || {
                std::fs::copy(&from, &to)?;
                std::fs::File::open(&to)?.sync_all()
            })
            .await?;
        } else {
            let _ = std::fs::remove_file(&to);
            qemu_img::flatten(&from, &to).await?;
            blocking(move || std::fs::File::open(&to)?.sync_all()).await?;
        }
        self.vm.destroy(&domain_name(id)).await?;
        self.vm.forget_checkpoints(&domain_name(id)).await?;
        let name = disk_volume(id);
        if exists {
            match self.ctx.quarantine_volume(&*self.vm, &name).await? {
                Some(to) => {
                    let msg = format!("the previous disk was moved to {}", to.display());
                    self.event(EventType::Normal, Reason::DiskQuarantined, &msg);
                }
                None => self.vm.delete_volume(&name).await?,
            }
        }
        self.fault("after_restore_quarantine").await?;
        self.vm
            .restore_volume(&name, &files.restore_staging(id))
            .await?;
        let msg = format!("the disk was restored from backup {} (taken {taken})", b.id);
        self.event(EventType::Normal, Reason::DiskRestored, &msg);
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
