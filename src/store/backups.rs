//! Backups as desired and observed state: the owner's (or the schedule's)
//! request is a Pending row; the reconciler marks it Running, then Completed
//! with size and checksum, or Failed with a message. Restores are requests on
//! the hosting row (a new disk epoch naming the backup).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::hostings::lock_hosting_of;
use super::status::insert_event;
use super::{is_unique_violation, HostingRecord, Result, Store, StoreError};
use crate::domain::*;

/// One backup of a hosting's disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Backup {
    pub id: BackupId,
    pub hosting_id: HostingId,
    pub trigger: BackupTrigger,
    pub state: BackupState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Size of the compressed backup file, bytes (Completed only).
    pub size_bytes: Option<i64>,
    /// SHA-256 of the backup file, hex (Completed only).
    pub sha256: Option<String>,
    /// Why a backup failed, or what a running one is doing.
    pub message: Option<String>,
    /// Whether a sealed copy is in the off-host store (read back and
    /// verified before the backup was marked Completed).
    pub offsite: bool,
    /// Full, or Incremental (Completed only; a pending one is Full until
    /// taken).
    pub kind: BackupKind,
    /// The backup an Incremental one holds the changes since.
    pub parent: Option<BackupId>,
    /// A libvirt checkpoint `hostd-<id>` was made with it.
    #[serde(skip)]
    pub checkpoint: bool,
    /// The sealed copy in the off-host store, if any.
    #[serde(skip)]
    pub remote: Option<RemoteCopy>,
    /// An upload to the store in progress (a Running backup's).
    #[serde(skip)]
    pub upload: Option<(String, String)>,
}

/// How a taken backup relates to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub kind: BackupKind,
    pub parent: Option<BackupId>,
    pub checkpoint: bool,
}

/// A backup's sealed copy in the off-host store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCopy {
    pub key: String,
    pub size: u64,
    /// SHA-256 of the sealed object (hex).
    pub sha256: String,
    /// The fingerprint of the key that sealed it.
    pub key_fingerprint: String,
}

#[derive(sqlx::FromRow)]
pub(super) struct BackupRow {
    id: Uuid,
    hosting_id: Uuid,
    trigger: String,
    state: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    message: Option<String>,
    remote_key: Option<String>,
    remote_size: Option<i64>,
    remote_sha256: Option<String>,
    key_fingerprint: Option<String>,
    upload_id: Option<String>,
    kind: String,
    parent_id: Option<Uuid>,
    checkpoint: bool,
}

impl From<BackupRow> for Backup {
    fn from(r: BackupRow) -> Backup {
        Backup {
            id: BackupId(r.id),
            hosting_id: HostingId(r.hosting_id),
            trigger: BackupTrigger::from_name(&r.trigger).unwrap_or(BackupTrigger::Manual),
            // The check constraint allows only the four names.
            state: BackupState::from_name(&r.state).unwrap_or(BackupState::Failed),
            created_at: r.created_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            message: r.message,
            offsite: r.remote_sha256.is_some(),
            // The check constraint allows only the two names.
            kind: BackupKind::from_name(&r.kind).unwrap_or(BackupKind::Full),
            parent: r.parent_id.map(BackupId),
            checkpoint: r.checkpoint,
            remote: match (
                &r.remote_key,
                r.remote_size,
                &r.remote_sha256,
                &r.key_fingerprint,
            ) {
                (Some(k), Some(n), Some(h), Some(f)) => Some(RemoteCopy {
                    key: k.clone(),
                    size: n.max(0) as u64,
                    sha256: h.clone(),
                    key_fingerprint: f.clone(),
                }),
                _ => None,
            },
            upload: r.remote_key.zip(r.upload_id),
        }
    }
}

pub(super) const COLUMNS: &str = "id, hosting_id, trigger, state, created_at, started_at, \
     completed_at, size_bytes, sha256, message, remote_key, remote_size, remote_sha256, \
     key_fingerprint, upload_id, kind, parent_id, checkpoint";

/// Why a restore request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreRefusal {
    #[error("you have no hosting")]
    NoHosting,
    #[error("the hosting is being deleted")]
    Deleting,
    #[error("your hosting has no backup with that id")]
    NoSuchBackup,
    #[error("backup {0} is {1}, not Completed: only a completed backup can be restored")]
    NotCompleted(BackupId, BackupState),
}

impl Store {
    /// Records the owner's request for a backup of their hosting (Pending).
    /// `Conflict` while another backup of it is Pending or Running.
    pub async fn request_backup(&self, user: UserId) -> Result<Backup> {
        let mut tx = self.pool().begin().await?;
        let (hosting, deleting) = lock_hosting_of(&mut tx, user)
            .await?
            .ok_or(StoreError::NotFound)?;
        if deleting.is_some() {
            return Err(StoreError::Conflict("a deletion of this hosting"));
        }
        let q = format!(
            "insert into backups (id, hosting_id, trigger) values ($1, $2, 'Manual') returning {COLUMNS}"
        );
        let row: BackupRow = sqlx::query_as(&q)
            .bind(Uuid::new_v4())
            .bind(hosting)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match is_unique_violation(&e) {
                Some(_) => StoreError::Conflict("a pending or running backup of this hosting"),
                None => e.into(),
            })?;
        let msg = format!("the owner asked for backup {}", row.id);
        let (t, r) = (EventType::Normal, Reason::BackupRequested);
        insert_event(&mut tx, HostingId(hosting), t, r, &msg).await?;
        tx.commit().await?;
        self.touched_hosting(HostingId(hosting));
        Ok(row.into())
    }

    /// Every backup of a hosting, newest first.
    pub async fn list_backups(&self, hosting: HostingId) -> Result<Vec<Backup>> {
        self.backups_where("true order by created_at desc, id", hosting)
            .await
    }

    /// The hosting's backups matching `tail` (a condition and an order).
    pub(super) async fn backups_where(
        &self,
        tail: &str,
        hosting: HostingId,
    ) -> Result<Vec<Backup>> {
        let q = format!("select {COLUMNS} from backups where hosting_id = $1 and {tail}");
        let rows: Vec<BackupRow> = sqlx::query_as(&q)
            .bind(hosting.0)
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(Backup::from).collect())
    }

    /// One backup of a hosting.
    pub async fn get_backup(&self, hosting: HostingId, id: BackupId) -> Result<Option<Backup>> {
        let q = format!("select {COLUMNS} from backups where hosting_id = $1 and id = $2");
        let row: Option<BackupRow> = sqlx::query_as(&q)
            .bind(hosting.0)
            .bind(id.0)
            .fetch_optional(&self.pool())
            .await?;
        Ok(row.map(Backup::from))
    }

    /// The hosting's backup to work on: the Running one (interrupted) or the
    /// oldest Pending one.
    pub async fn next_backup(&self, hosting: HostingId) -> Result<Option<Backup>> {
        let q = format!(
            "select {COLUMNS} from backups where hosting_id = $1 and state in ('Pending', 'Running') \
             order by state = 'Running' desc, created_at limit 1"
        );
        let row: Option<BackupRow> = sqlx::query_as(&q)
            .bind(hosting.0)
            .fetch_optional(&self.pool())
            .await?;
        Ok(row.map(Backup::from))
    }

    /// Marks a backup Running.
    pub async fn backup_started(&self, id: BackupId) -> Result<()> {
        sqlx::query(
            "update backups set state = 'Running', started_at = now(), message = null where id = $1",
        )
        .bind(id.0)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Says what a Running backup is doing now (the dashboard shows it live).
    pub async fn backup_progress(&self, id: BackupId, doing: &str) -> Result<()> {
        sqlx::query("update backups set message = $2 where id = $1 and state = 'Running'")
            .bind(id.0)
            .bind(doing)
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    /// The keys completed off-host backups were sealed with: (fingerprint,
    /// how many backups).
    pub async fn offsite_key_fingerprints(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "select key_fingerprint, count(*) from backups where state = 'Completed' \
             and key_fingerprint is not null group by 1 order by 2 desc",
        )
        .fetch_all(&self.pool())
        .await?)
    }

    /// Records an upload of a Running backup to the off-host store before
    /// any part is sent: the object's key and the upload's id.
    pub async fn backup_upload_started(&self, id: BackupId, key: &str, upload: &str) -> Result<()> {
        sqlx::query(
            "update backups set remote_key = $2, upload_id = $3, remote_size = null, \
             remote_sha256 = null, key_fingerprint = null where id = $1",
        )
        .bind(id.0)
        .bind(key)
        .bind(upload)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Forgets a backup's upload (aborted, or finished).
    pub async fn backup_upload_ended(&self, id: BackupId) -> Result<()> {
        sqlx::query("update backups set upload_id = null where id = $1")
            .bind(id.0)
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    /// Marks a backup Completed with its file's size and checksum, what it
    /// is (`lineage`), and its sealed copy in the off-host store if any.
    pub async fn backup_completed(
        &self,
        id: BackupId,
        size: u64,
        sha256: &str,
        remote: Option<&RemoteCopy>,
        lineage: &Lineage,
    ) -> Result<()> {
        sqlx::query(
            "update backups set state = 'Completed', completed_at = now(), size_bytes = $2, \
             sha256 = $3, message = null, upload_id = null, remote_key = $4, remote_size = $5, \
             remote_sha256 = $6, key_fingerprint = $7, kind = $8, parent_id = $9, \
             checkpoint = $10 where id = $1",
        )
        .bind(id.0)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(sha256)
        .bind(remote.map(|r| r.key.as_str()))
        .bind(remote.map(|r| i64::try_from(r.size).unwrap_or(i64::MAX)))
        .bind(remote.map(|r| r.sha256.as_str()))
        .bind(remote.map(|r| r.key_fingerprint.as_str()))
        .bind(lineage.kind.as_str())
        .bind(lineage.parent.map(|p| p.0))
        .bind(lineage.checkpoint)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Marks a backup Failed, saying why. A failed backup needs no parent
    /// (and starts no chain: its checkpoint no longer counts).
    pub async fn backup_failed(&self, id: BackupId, message: &str) -> Result<()> {
        sqlx::query(
            "update backups set state = 'Failed', completed_at = now(), message = $2, \
             upload_id = null, parent_id = null, checkpoint = false where id = $1",
        )
        .bind(id.0)
        .bind(message)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Completed backups of a hosting, newest first (restore candidates).
    pub async fn completed_backups(&self, hosting: HostingId) -> Result<Vec<Backup>> {
        let tail = "state = 'Completed' order by completed_at desc, id";
        self.backups_where(tail, hosting).await
    }

    /// The schedule: a Pending backup for every hosting with a disk whose
    /// newest backup (or, without one, whose creation) is older than
    /// `interval` and that has none Pending or Running. Returns every hosting
    /// with a Pending or Running backup, so the caller queues them (also
    /// those a crash interrupted).
    pub async fn schedule_backups(
        &self,
        interval: Option<std::time::Duration>,
    ) -> Result<Vec<HostingId>> {
        if let Some(interval) = interval {
            let secs = interval.as_secs_f64();
            sqlx::query(
                "insert into backups (id, hosting_id, trigger) \
                 select gen_random_uuid(), h.id, 'Scheduled' from hostings h \
                 join hosting_status s on s.hosting_id = h.id \
                 where h.deletion_requested_at is null and not h.warm_pool and s.disk_created \
                   and s.phase in ('Ready', 'Stopped') \
                   and coalesce((select max(created_at) from backups b where b.hosting_id = h.id), \
                                h.created_at) < now() - make_interval(secs => $1) \
                 on conflict do nothing",
            )
            .bind(secs)
            .execute(&self.pool())
            .await?;
        }
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "select distinct hosting_id from backups where state in ('Pending', 'Running')",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(|(i,)| HostingId(i)).collect())
    }

    /// Records the owner's request to replace the disk with a completed
    /// backup of theirs: a new desired disk epoch naming the backup.
    pub async fn request_restore(
        &self,
        user: UserId,
        backup: BackupId,
    ) -> Result<Result<HostingRecord, RestoreRefusal>> {
        let mut tx = self.pool().begin().await?;
        let Some((hosting, deleting)) = lock_hosting_of(&mut tx, user).await? else {
            return Ok(Err(RestoreRefusal::NoHosting));
        };
        if deleting.is_some() {
            return Ok(Err(RestoreRefusal::Deleting));
        }
        let state: Option<(String,)> =
            sqlx::query_as("select state from backups where id = $1 and hosting_id = $2")
                .bind(backup.0)
                .bind(hosting)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state,)) = state else {
            return Ok(Err(RestoreRefusal::NoSuchBackup));
        };
        let state = BackupState::from_name(&state).unwrap_or(BackupState::Failed);
        if state != BackupState::Completed {
            return Ok(Err(RestoreRefusal::NotCompleted(backup, state)));
        }
        sqlx::query(
            "update hostings set disk_epoch = disk_epoch + 1, generation = generation + 1, \
             restore_backup_id = $2 where id = $1",
        )
        .bind(hosting)
        .bind(backup.0)
        .execute(&mut *tx)
        .await?;
        let msg = format!("the owner asked to restore backup {backup}");
        let (t, r) = (EventType::Normal, Reason::RestoreRequested);
        insert_event(&mut tx, HostingId(hosting), t, r, &msg).await?;
        tx.commit().await?;
        Ok(Ok(self.must_get(HostingId(hosting)).await?))
    }
}
