//! Desired state: hostings (spec, generation, deletion request) and the
//! records the reconciler reads (desired spec joined with observed status).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::status::insert_event;
use super::{is_unique_violation, Result, Store, StoreError};
use crate::domain::*;

/// Observed status of a hosting, written by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedStatus {
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub observed_generation: i64,
    pub ssh_port: Option<u16>,
    pub http_port: Option<u16>,
    pub vm_name: Option<String>,
    pub message: Option<String>,
    /// Whether a disk volume was ever created (so a missing one means data loss).
    pub disk_created: bool,
    /// The image version (resolved paths) the disk was created from.
    pub image_pin: Option<crate::images::ImageEntry>,
    /// When the current provisioning attempt started (readiness deadline).
    pub provisioning_since: Option<DateTime<Utc>>,
    /// The disk epoch of the disk that exists (see `HostingRecord::disk_epoch`).
    pub disk_epoch: i32,
    pub last_reconciled_at: Option<DateTime<Utc>>,
    /// The seed hash the running guest has applied (at boot, or live through
    /// the guest agent); `None` when unknown.
    pub applied_seed: Option<String>,
    /// Restarts of a guest that has not been ready since hostd started it
    /// (`HOSTD_BOOT_RETRIES`); `None` once it was ready.
    pub boot_restarts: Option<i32>,
    /// What the reconciler last saw this hosting use, as its usage
    /// records hold it (written with the status, in its transaction).
    pub meter: Meter,
}

/// The resources a hosting is seen to use, for its usage records: vCPUs
/// and memory while its guest runs, disk while its disk exists; `None`
/// while it uses none. A change opens and closes spans in `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meter {
    pub vcpus: Option<i32>,
    pub memory_mib: Option<i32>,
    pub disk_gib: Option<i32>,
}

/// What a hosting's data other than its disk holds on the host's disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageUse {
    /// Its Completed backups (kept by a trigger on `backups`).
    pub backup_bytes: u64,
    /// Its entries in the quarantine (written by the reconciler).
    pub quarantine_bytes: u64,
}

impl StorageUse {
    /// What counts against the backup quota.
    pub fn total(&self) -> u64 {
        self.backup_bytes + self.quarantine_bytes
    }
}

/// Desired state plus observed status of one hosting: the reconciler's input.
#[derive(Debug, Clone)]
pub struct HostingRecord {
    pub id: HostingId,
    pub user_id: UserId,
    pub username: Username,
    pub spec: HostingSpec,
    pub generation: i64,
    pub deletion_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Desired disk epoch: bumped by the owner's reset (consent to an empty disk).
    pub disk_epoch: i32,
    /// The backup the disk of the desired epoch comes from (`None`: empty).
    pub restore_from: Option<BackupId>,
    /// A warm-pool guest, owned by the internal warm-pool account, not yet claimed.
    pub warm: bool,
    /// When this hosting was given a warm-pool guest (`None`: booted for it).
    pub claimed_at: Option<DateTime<Utc>>,
    /// The generation that claim set (see [`HostingRecord::claim_pending`]).
    pub claim_generation: Option<i64>,
    pub status: ObservedStatus,
    /// Its backups' and quarantined data's bytes.
    pub storage: StorageUse,
    /// Its owner's verified custom domains (served like its own host name).
    pub domains: Vec<CustomDomain>,
    /// The node it is placed on (`None`: not placed yet).
    pub node: Option<NodeName>,
    /// The node it is being moved to by a drain, if any.
    pub move_to: Option<NodeName>,
    /// The move goes on with the guest stopped (its live migration failed).
    pub move_cold: bool,
}

impl HostingRecord {
    /// A claimed warm-pool guest not yet personalised for its owner: the
    /// generation the claim set has not been observed.
    pub fn claim_pending(&self) -> bool {
        self.claim_generation
            .is_some_and(|g| self.status.observed_generation < g)
    }
}

#[derive(sqlx::FromRow)]
struct RecordRow {
    id: Uuid,
    user_id: Uuid,
    username: String,
    vcpus: i32,
    memory_mib: i32,
    disk_gib: i32,
    image: String,
    ssh_public_keys: Vec<String>,
    running: bool,
    hsts: bool,
    generation: i64,
    deletion_requested_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    phase: Option<String>,
    conditions: Option<sqlx::types::Json<Vec<Condition>>>,
    observed_generation: Option<i64>,
    ssh_port: Option<i32>,
    http_port: Option<i32>,
    vm_name: Option<String>,
    message: Option<String>,
    disk_created: Option<bool>,
    image_pin: Option<sqlx::types::Json<crate::images::ImageEntry>>,
    provisioning_since: Option<DateTime<Utc>>,
    last_reconciled_at: Option<DateTime<Utc>>,
    disk_epoch: i32,
    observed_disk_epoch: Option<i32>,
    restore_backup_id: Option<Uuid>,
    warm_pool: bool,
    claimed_at: Option<DateTime<Utc>>,
    claim_generation: Option<i64>,
    applied_seed: Option<String>,
    boot_restarts: Option<i32>,
    metered_vcpus: Option<i32>,
    metered_memory_mib: Option<i32>,
    metered_disk_gib: Option<i32>,
    backup_bytes: Option<i64>,
    quarantine_bytes: Option<i64>,
    domains: Vec<String>,
    node: Option<String>,
    move_to: Option<String>,
    move_cold: bool,
}

/// What [`Store::record_versions`] reports of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordVersion([i64; 3]);

const RECORD_SELECT: &str = "select h.id, h.user_id, u.username, h.vcpus, h.memory_mib, h.disk_gib, h.image, \
     h.ssh_public_keys, h.running, h.hsts, h.generation, h.deletion_requested_at, h.created_at, \
     s.phase, s.conditions, s.observed_generation, s.ssh_port, s.http_port, s.vm_name, s.message, \
     s.disk_created, s.image_pin, s.provisioning_since, s.last_reconciled_at, \
     h.disk_epoch, s.disk_epoch as observed_disk_epoch, h.restore_backup_id, h.warm_pool, h.claimed_at, h.claim_generation, \
     s.applied_seed, s.boot_restarts, s.metered_vcpus, s.metered_memory_mib, s.metered_disk_gib, s.backup_bytes, s.quarantine_bytes, \
     array(select d.name from custom_domains d where d.user_id = h.user_id and d.state = 'Verified' \
       order by d.name) as domains, h.node, h.move_to, h.move_cold \
     from hostings h join users u on u.id = h.user_id left join hosting_status s on s.hosting_id = h.id";

impl RecordRow {
    /// Rows were validated on the way in; re-parsing guards against hand edits.
    fn into_record(self) -> Result<HostingRecord> {
        let ssh_public_keys = self
            .ssh_public_keys
            .iter()
            .map(|k| SshPublicKey::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostingRecord {
            id: HostingId(self.id),
            user_id: UserId(self.user_id),
            username: Username::parse(&self.username)?,
            spec: HostingSpec {
                vcpus: Vcpus::parse(self.vcpus.into())?,
                memory_mib: MemoryMib::parse(self.memory_mib.into())?,
                disk_gib: DiskGib::parse(self.disk_gib.into())?,
                image: ImageName::parse(&self.image)?,
                ssh_public_keys,
                running: self.running,
                hsts: self.hsts,
            },
            generation: self.generation,
            deletion_requested_at: self.deletion_requested_at,
            created_at: self.created_at,
            disk_epoch: self.disk_epoch,
            restore_from: self.restore_backup_id.map(BackupId),
            warm: self.warm_pool,
            claimed_at: self.claimed_at,
            claim_generation: self.claim_generation,
            status: ObservedStatus {
                phase: self
                    .phase
                    .as_deref()
                    .map(Phase::from_db)
                    .unwrap_or(Phase::Pending),
                conditions: self.conditions.map(|j| j.0).unwrap_or_default(),
                observed_generation: self.observed_generation.unwrap_or(0),
                ssh_port: self.ssh_port.and_then(|p| u16::try_from(p).ok()),
                http_port: self.http_port.and_then(|p| u16::try_from(p).ok()),
                vm_name: self.vm_name,
                message: self.message,
                disk_created: self.disk_created.unwrap_or(false),
                image_pin: self.image_pin.map(|j| j.0),
                provisioning_since: self.provisioning_since,
                last_reconciled_at: self.last_reconciled_at,
                disk_epoch: self.observed_disk_epoch.unwrap_or(0),
                applied_seed: self.applied_seed,
                boot_restarts: self.boot_restarts,
                meter: Meter {
                    vcpus: self.metered_vcpus,
                    memory_mib: self.metered_memory_mib,
                    disk_gib: self.metered_disk_gib,
                },
            },
            storage: StorageUse {
                backup_bytes: self.backup_bytes.unwrap_or(0).max(0) as u64,
                quarantine_bytes: self.quarantine_bytes.unwrap_or(0).max(0) as u64,
            },
            domains: self
                .domains
                .into_iter()
                .map(CustomDomain::from_stored)
                .collect(),
            node: self.node.as_deref().map(NodeName::parse).transpose()?,
            move_to: self.move_to.as_deref().map(NodeName::parse).transpose()?,
            move_cold: self.move_cold,
        })
    }
}

impl Store {
    /// Creates the desired hosting, its Pending status and a first event, atomically.
    /// A second hosting for the same user fails on the unique index: `Conflict`.
    /// With `claim`, a Ready warm-pool guest of the spec's class is re-owned
    /// instead when there is one (see `claim_warm_guest`).
    pub async fn create_hosting(
        &self,
        user: UserId,
        spec: &HostingSpec,
        claim: bool,
    ) -> Result<HostingRecord> {
        // The user now has a hosting the read view has not seen.
        self.touched_user(user);
        if claim {
            if let Some(id) = self.claim_warm_guest(user, spec).await? {
                return self.must_get(id).await;
            }
        }
        let msg = "hosting requested; waiting for the reconciler";
        let id = self.insert_hosting(user, spec, None, msg).await?;
        self.must_get(id).await
    }

    /// Inserts a desired hosting (a warm-pool guest bound to the node
    /// `warm`), its Pending status and a `Created` event saying `msg`, in
    /// one transaction. The unique index on the user's hosting answers
    /// `Conflict`.
    pub(super) async fn insert_hosting(
        &self,
        user: UserId,
        spec: &HostingSpec,
        warm: Option<&NodeName>,
        msg: &str,
    ) -> Result<HostingId> {
        let id = Uuid::new_v4();
        let mut tx = self.pool().begin().await?;
        let q = sqlx::query(
            "insert into hostings (id, user_id, vcpus, memory_mib, disk_gib, image, ssh_public_keys, running, hsts, warm_pool, node) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(user.0);
        bind_spec(q, spec)
            .bind(warm.is_some())
            .bind(warm.map(NodeName::as_str))
            .execute(&mut *tx)
            .await
            .map_err(|e| match is_unique_violation(&e) {
                Some(_) => StoreError::Conflict("a hosting for this user"),
                None => e.into(),
            })?;
        sqlx::query("insert into hosting_status (hosting_id) values ($1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let id = HostingId(id);
        insert_event(&mut tx, id, EventType::Normal, Reason::Created, msg).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// One hosting by id.
    pub async fn get_record(&self, id: HostingId) -> Result<Option<HostingRecord>> {
        self.record_where("h.id = $1", id.0).await
    }

    /// One record selected by `cond` on its `$1`.
    async fn record_where(&self, cond: &str, arg: Uuid) -> Result<Option<HostingRecord>> {
        let sql = format!("{RECORD_SELECT} where {cond}");
        let row = sqlx::query_as::<_, RecordRow>(&sql)
            .bind(arg)
            .fetch_optional(&self.pool())
            .await?;
        row.map(RecordRow::into_record).transpose()
    }

    /// A record that must exist (just written in this call).
    pub(super) async fn must_get(&self, id: HostingId) -> Result<HostingRecord> {
        // Every caller has just written this hosting.
        self.touched_hosting(id);
        self.get_record(id).await?.ok_or(StoreError::NotFound)
    }

    /// The hosting of a user (there is at most one).
    pub async fn get_record_by_user(&self, user: UserId) -> Result<Option<HostingRecord>> {
        self.record_where("h.user_id = $1", user.0).await
    }

    /// Every hosting's row versions (the transaction ids that last wrote
    /// its `hostings`, `hosting_status` and owner's `users` rows): any write
    /// to a record changes them. Lets a cache fetch only changed records.
    pub async fn record_versions(&self) -> Result<Vec<(HostingId, RecordVersion)>> {
        let rows: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
            "select h.id, h.xmin::text::int8, coalesce(s.xmin::text::int8, 0), u.xmin::text::int8 \
             from hostings h join users u on u.id = h.user_id \
             left join hosting_status s on s.hosting_id = h.id",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, h, s, u)| (HostingId(id), RecordVersion([h, s, u])))
            .collect())
    }

    /// A fingerprint of every record's row versions (those
    /// [`Store::record_versions`] lists): the count, and the exclusive or
    /// of a 64-bit hash of each hosting's id and versions. Unchanged means
    /// (but for a 64-bit collision) no record was written, created or
    /// deleted; one row comes back instead of one per hosting.
    pub async fn records_fingerprint(&self) -> Result<(i64, i64)> {
        let (n, x): (i64, Option<i64>) = sqlx::query_as(
            "select count(*), bit_xor(hashtextextended(h.id::text || ':' || h.xmin::text || ':' \
                 || coalesce(s.xmin::text, '') || ':' || u.xmin::text, 0)) \
             from hostings h join users u on u.id = h.user_id \
             left join hosting_status s on s.hosting_id = h.id",
        )
        .fetch_one(&self.pool())
        .await?;
        Ok((n, x.unwrap_or(0)))
    }

    /// The records of `ids` that exist, in one query.
    pub async fn get_records(&self, ids: &[HostingId]) -> Result<Vec<HostingRecord>> {
        let ids: Vec<Uuid> = ids.iter().map(|i| i.0).collect();
        let rows = sqlx::query_as::<_, RecordRow>(&format!("{RECORD_SELECT} where h.id = any($1)"))
            .bind(ids)
            .fetch_all(&self.pool())
            .await?;
        rows.into_iter().map(RecordRow::into_record).collect()
    }

    /// Every hosting with its status, in one query (the reconciler's resync and the admin list).
    pub async fn list_records(&self) -> Result<Vec<HostingRecord>> {
        let rows =
            sqlx::query_as::<_, RecordRow>(&format!("{RECORD_SELECT} order by h.created_at"))
                .fetch_all(&self.pool())
                .await?;
        rows.into_iter().map(RecordRow::into_record).collect()
    }

    /// Applies `change` to the user's current spec under a row lock; bumps the
    /// generation only if the spec actually changed.
    pub async fn update_spec<F>(&self, user: UserId, change: F) -> Result<HostingRecord>
    where
        F: FnOnce(&HostingSpec) -> Result<HostingSpec, ValidationError>,
    {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query_as::<_, RecordRow>(&format!(
            "{RECORD_SELECT} where h.user_id = $1 for update of h"
        ))
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let rec = row.into_record()?;
        if rec.deletion_requested_at.is_some() {
            return Err(StoreError::Conflict("a deletion request for this hosting"));
        }
        let new = change(&rec.spec)?;
        if new != rec.spec {
            let q = sqlx::query(
                "update hostings set vcpus = $2, memory_mib = $3, disk_gib = $4, image = $5, ssh_public_keys = $6, \
                 running = $7, hsts = $8, generation = generation + 1 where id = $1",
            )
            .bind(rec.id.0);
            bind_spec(q, &new).execute(&mut *tx).await?;
            insert_event(
                &mut tx,
                rec.id,
                EventType::Normal,
                Reason::SpecChanged,
                &format!("spec changed (generation {})", rec.generation + 1),
            )
            .await?;
        }
        tx.commit().await?;
        self.must_get(rec.id).await
    }

    /// Records the owner's consent to replace a lost disk with a fresh, empty
    /// one: bumps the desired disk epoch (and the generation).
    pub async fn request_disk_reset(&self, user: UserId) -> Result<HostingRecord> {
        let mut tx = self.pool().begin().await?;
        let row: Option<(Uuid,)> = sqlx::query_as(
            "update hostings set disk_epoch = disk_epoch + 1, generation = generation + 1, \
             restore_backup_id = null where user_id = $1 and deletion_requested_at is null returning id",
        )
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let (id,) = row.ok_or(StoreError::NotFound)?;
        let msg = "the owner asked for a fresh, empty disk";
        insert_event(
            &mut tx,
            HostingId(id),
            EventType::Normal,
            Reason::DiskResetRequested,
            msg,
        )
        .await?;
        tx.commit().await?;
        self.must_get(HostingId(id)).await
    }

    /// Marks the user's hosting for deletion (idempotent). The row stays until the
    /// reconciler has cleaned up.
    pub async fn request_deletion(&self, user: UserId) -> Result<HostingRecord> {
        let mut tx = self.pool().begin().await?;
        let (id, already) = lock_hosting_of(&mut tx, user)
            .await?
            .ok_or(StoreError::NotFound)?;
        if already.is_none() {
            sqlx::query("update hostings set deletion_requested_at = now() where id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let (reason, msg) = (Reason::DeletionRequested, "deletion requested; cleaning up");
            insert_event(&mut tx, HostingId(id), EventType::Normal, reason, msg).await?;
        }
        tx.commit().await?;
        self.must_get(HostingId(id)).await
    }
}

/// Locks a user's hosting row for the transaction: its id and whether its
/// deletion was requested (when).
pub(super) async fn lock_hosting_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    user: UserId,
) -> Result<Option<(Uuid, Option<DateTime<Utc>>)>> {
    Ok(sqlx::query_as(
        "select id, deletion_requested_at from hostings where user_id = $1 for update",
    )
    .bind(user.0)
    .fetch_optional(&mut **tx)
    .await?)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds a spec's columns in table order: vcpus, memory_mib, disk_gib, image,
/// ssh_public_keys, running, hsts.
fn bind_spec<'q>(q: PgQuery<'q>, spec: &'q HostingSpec) -> PgQuery<'q> {
    let keys: Vec<&str> = spec.ssh_public_keys.iter().map(|k| k.as_str()).collect();
    q.bind(spec.vcpus.as_i32())
        .bind(spec.memory_mib.as_i32())
        .bind(spec.disk_gib.as_i32())
        .bind(spec.image.as_str())
        .bind(keys)
        .bind(spec.running)
        .bind(spec.hsts)
}
