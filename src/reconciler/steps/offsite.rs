//! Off-host backups as steps of a backup and a restore: a finished backup
//! file is sealed (`crate::seal`), uploaded in parts (the upload's id
//! recorded first, so a crash leaves nothing behind: the retake aborts it),
//! read back and compared, and the hosting's manifest in the store rewritten
//! and read back — only then is the backup Completed. A restore whose local
//! file is missing or damaged fetches the sealed copy, checks it and opens
//! it. After retention, objects no completed backup names are deleted and
//! local copies past `HOSTD_BACKUP_LOCAL_KEEP` go.

use std::path::Path;

use super::Pass;
use crate::domain::{BackupId, HostingId};
use crate::drivers::DriverError;
use crate::reconciler::backup::{blocking, commit_file, digest, BackupFiles};
use crate::reconciler::offsite::Offsite;
use crate::reconciler::ReconcileError;
use crate::seal::{open_file, seal_file};
use crate::store::{Backup, Lineage, RemoteCopy};

/// The hosting's manifest in the store: enough to find, check and open
/// every completed backup with the key, without the database.
#[derive(serde::Serialize)]
struct RemoteManifest<'a> {
    hosting_id: HostingId,
    format: &'static str,
    key_fingerprint: String,
    image_pin: Option<&'a crate::images::ImageEntry>,
    backups: Vec<RemoteEntry>,
}

#[derive(serde::Serialize)]
struct RemoteEntry {
    id: BackupId,
    object: String,
    trigger: crate::domain::BackupTrigger,
    kind: crate::domain::BackupKind,
    /// An incremental's parent: its object is opened first, and this one's
    /// qcow2 names the parent's file `<parent>.qcow2` as its backing file.
    parent: Option<BackupId>,
    created_at: chrono::DateTime<chrono::Utc>,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The backup file (a qcow2) before sealing.
    size_bytes: Option<i64>,
    sha256: Option<String>,
    /// The sealed object.
    sealed_size: u64,
    sealed_sha256: String,
}

fn store_err(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Driver(DriverError::Store(e.to_string()))
}

impl Pass<'_> {
    fn offsite(&self) -> Option<&Offsite> {
        self.ctx.offsite.as_ref()
    }

    /// Sends finished backup `b` (its file `file`, `size` bytes with SHA-256
    /// `sha`) to the store: sealed, uploaded, read back, listed in the
    /// manifest (read back too). Its copy there.
    pub(crate) async fn send_offsite(
        &self,
        o: &Offsite,
        b: &Backup,
        lineage: &Lineage,
        file: &Path,
        files: &BackupFiles,
    ) -> Result<RemoteCopy, ReconcileError> {
        let id = self.rec.id;
        self.ctx
            .store
            .backup_progress(b.id, "encrypting the copy")
            .await?;
        let sealed = files.sealed(id, b.id);
        let (key, from, to) = (o.key.clone(), file.to_path_buf(), sealed.clone());
        let (size, sha) =
            blocking(move || seal_file(&key, &from, &to).map_err(std::io::Error::other)).await?;
        self.fault("after_backup_seal").await?;
        let object = o.object(id, b.id);
        self.ctx
            .store
            .backup_progress(b.id, "uploading to the off-host store")
            .await?;
        let upload = o.store.begin_upload(&object).await?;
        self.ctx
            .store
            .backup_upload_started(b.id, &object, &upload)
            .await?;
        if let Err(e) = o.store.upload_parts(&object, &upload, &sealed).await {
            // Best effort here; the retake or the next backup aborts it too.
            let _ = o.store.abort_upload(&object, &upload).await;
            let _ = std::fs::remove_file(&sealed);
            return Err(e.into());
        }
        self.fault("after_backup_upload").await?;
        self.ctx
            .store
            .backup_progress(b.id, "reading it back from the store")
            .await?;
        let back = o.store.read_back(&object).await?;
        let _ = std::fs::remove_file(&sealed);
        if back.as_ref() != Some(&(size, sha.clone())) {
            return Err(store_err(format!(
                "the store returned other bytes for {object} than were sent ({back:?} != ({size}, {sha}))"
            )));
        }
        let remote = RemoteCopy {
            key: object,
            size,
            sha256: sha,
            key_fingerprint: o.key.fingerprint(),
        };
        let mut this = b.clone();
        this.completed_at = Some(chrono::Utc::now());
        (this.kind, this.parent) = (lineage.kind, lineage.parent);
        self.write_remote_manifest(o, Some((&this, &remote)))
            .await?;
        self.fault("after_backup_manifest").await?;
        Ok(remote)
    }

    /// Rewrites the hosting's manifest in the store from its completed
    /// backups (and `extra`, one about to be marked Completed), and reads
    /// it back.
    async fn write_remote_manifest(
        &self,
        o: &Offsite,
        extra: Option<(&Backup, &RemoteCopy)>,
    ) -> Result<(), ReconcileError> {
        let id = self.rec.id;
        let completed = self.ctx.store.completed_backups(id).await?;
        let with_remote = completed
            .iter()
            .filter_map(|b| b.remote.clone().map(|r| (b.clone(), r)))
            .chain(extra.map(|(b, r)| (b.clone(), r.clone())));
        let manifest = RemoteManifest {
            hosting_id: id,
            format: "each object: a qcow2 backup sealed by hostd (AES-256-GCM STREAM, \
                     1 MiB chunks, header HOSTDBK1 + key fingerprint + nonce prefix); a Full one \
                     standalone, an Incremental one backed by its parent's file <parent>.qcow2",
            key_fingerprint: o.key.fingerprint(),
            image_pin: self.st.image_pin.as_ref(),
            backups: with_remote
                .map(|(b, r)| RemoteEntry {
                    id: b.id,
                    object: r.key,
                    trigger: b.trigger,
                    kind: b.kind,
                    parent: b.parent,
                    created_at: b.created_at,
                    completed_at: b.completed_at,
                    size_bytes: b.size_bytes,
                    sha256: b.sha256,
                    sealed_size: r.size,
                    sealed_sha256: r.sha256,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let key = o.manifest(id);
        o.store.put_small(&key, json.clone()).await?;
        if o.store.get_small(&key).await?.as_deref() != Some(json.as_slice()) {
            return Err(store_err(format!(
                "the manifest {key} did not read back as written"
            )));
        }
        Ok(())
    }

    /// Aborts the store upload an interrupted backup left, if any.
    pub(crate) async fn abort_offsite(&self, b: &Backup) -> Result<(), ReconcileError> {
        if let (Some(o), Some((key, upload))) = (self.offsite(), &b.upload) {
            o.store.abort_upload(key, upload).await?;
            self.ctx.store.backup_upload_ended(b.id).await?;
        }
        let _ = std::fs::remove_file(
            BackupFiles::new(&self.ctx.config.state_dir).sealed(self.rec.id, b.id),
        );
        Ok(())
    }

    /// Brings backup `b` back from the store into its local file. `Ok(Err)`
    /// says why the store's copy cannot be used; a store that does not
    /// answer is an error (the pass is retried: a network outage must not
    /// mark good backups unusable).
    pub(crate) async fn fetch_offsite(
        &self,
        b: &Backup,
    ) -> Result<Result<(), String>, ReconcileError> {
        let (Some(o), Some(remote)) = (self.offsite(), b.remote.as_ref()) else {
            return Ok(Err("there is no off-host copy".into()));
        };
        if remote.key_fingerprint != o.key.fingerprint() {
            return Ok(Err(format!(
                "its off-host copy was sealed with another key (fingerprint {}, this installation's is {})",
                remote.key_fingerprint,
                o.key.fingerprint()
            )));
        }
        let id = self.rec.id;
        let files = BackupFiles::new(&self.ctx.config.state_dir);
        files.prepare(id).map_err(DriverError::from)?;
        let (dl, partial, file) = (
            files.sealed(id, b.id),
            files.partial(id, b.id),
            files.file(id, b.id),
        );
        if o.store.download(&remote.key, &dl).await?.is_none() {
            return Ok(Err("its off-host copy is missing from the store".into()));
        }
        let (key, want_sealed, want) = (o.key.clone(), remote.sha256.clone(), b.sha256.clone());
        blocking(move || {
            let r = (|| {
                if digest(&dl)?.0 != want_sealed {
                    return Ok(Err(
                        "its off-host copy does not match its checksum".to_string()
                    ));
                }
                if let Err(e) = open_file(&key, &dl, &partial) {
                    return Ok(Err(format!("its off-host copy cannot be opened: {e}")));
                }
                if Some(digest(&partial)?.0) != want {
                    return Ok(Err(
                        "its off-host copy opened to other bytes than were backed up".to_string(),
                    ));
                }
                commit_file(&partial, &file)?;
                Ok(Ok(()))
            })();
            let _ = std::fs::remove_file(&dl);
            let _ = std::fs::remove_file(&partial);
            r
        })
        .await
        .map_err(Into::into)
    }

    /// After retention: the manifest rewritten, objects no completed backup
    /// names deleted (what an expiry or a crash left), local copies past
    /// `HOSTD_BACKUP_LOCAL_KEEP` removed (only those with a copy off-host).
    pub(crate) async fn tidy_offsite(&self) -> Result<(), ReconcileError> {
        let Some(o) = self.offsite() else {
            return Ok(());
        };
        let id = self.rec.id;
        self.write_remote_manifest(o, None).await?;
        let completed = self.ctx.store.completed_backups(id).await?;
        let keep: std::collections::HashSet<String> = completed
            .iter()
            .filter_map(|b| b.remote.as_ref().map(|r| r.key.clone()))
            .chain(std::iter::once(o.manifest(id)))
            .collect();
        let running = self.ctx.store.next_backup(id).await?;
        for key in o.store.list(&o.dir(id)).await? {
            let busy = running.as_ref().is_some_and(|b| key == o.object(id, b.id));
            if !keep.contains(&key) && !busy {
                o.store.delete(&key).await?;
            }
        }
        let files = BackupFiles::new(&self.ctx.config.state_dir);
        for b in completed
            .iter()
            .filter(|b| b.remote.is_some())
            .skip(o.local_keep as usize)
        {
            let _ = std::fs::remove_file(files.file(id, b.id));
        }
        Ok(())
    }
}

/// A deleted hosting's objects and manifest go from the store (the tenant
/// asked for the deletion; the local copies wait in quarantine).
pub(crate) async fn delete_offsite(
    ctx: &crate::reconciler::Context,
    id: HostingId,
) -> Result<(), ReconcileError> {
    let Some(o) = ctx.offsite.as_ref() else {
        return Ok(());
    };
    for key in o.store.list(&o.dir(id)).await? {
        o.store.delete(&key).await?;
    }
    Ok(())
}
