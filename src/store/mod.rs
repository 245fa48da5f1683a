//! The store: every SQL statement hostd runs lives here. The API writes desired
//! state (users, hostings); the reconciler reads it and writes observed status,
//! port allocations and events. Callers pass and receive domain types only.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

use crate::domain::*;

pub mod lease;

/// Store-layer errors. The API maps these to HTTP codes; nothing here knows HTTP.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit; the string names what was duplicated.
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("no free {0} port left in the configured range")]
    PortsExhausted(&'static str),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Postgres channel the `hostings` trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "hostd_hostings";

/// A user as the API shows it (never with the hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    username: String,
    role: String,
    created_at: DateTime<Utc>,
    password_hash: String,
}

impl UserRow {
    fn into_user(self) -> (User, String) {
        (
            User {
                id: UserId(self.id),
                email: self.email,
                username: self.username,
                role: Role::from_db(&self.role),
                created_at: self.created_at,
            },
            self.password_hash,
        )
    }
}

/// Observed status of a hosting, written by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
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
    pub last_reconciled_at: Option<DateTime<Utc>>,
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
    pub status: Status,
}

/// One event in a hosting's history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
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
}

const RECORD_SELECT: &str = "select h.id, h.user_id, u.username, h.vcpus, h.memory_mib, h.disk_gib, h.image, \
     h.ssh_public_keys, h.running, h.generation, h.deletion_requested_at, h.created_at, \
     s.phase, s.conditions, s.observed_generation, s.ssh_port, s.http_port, s.vm_name, s.message, \
     s.disk_created, s.image_pin, s.provisioning_since, s.last_reconciled_at \
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
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
                disk_gib: self.disk_gib,
                image: ImageName::parse(&self.image)?,
                ssh_public_keys,
                running: self.running,
            },
            generation: self.generation,
            deletion_requested_at: self.deletion_requested_at,
            created_at: self.created_at,
            status: Status {
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
            },
        })
    }
}

fn is_unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
            Some(d.constraint().unwrap_or("").to_string())
        }
        _ => None,
    }
}

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    url: String,
}

impl Store {
    /// Connects lazily-retrying: start-up waits up to `wait` for Postgres.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        let opts =
            PgConnectOptions::from_str(url)?.log_statements(tracing::log::LevelFilter::Debug);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(Store {
            pool,
            url: url.to_string(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Applies pending migrations (idempotent; concurrent callers serialize on a lock).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A dedicated connection (LISTEN, leases).
    pub async fn dedicated_connection(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    // ---------------------------------------------------------------- users

    pub async fn create_user(
        &self,
        email: &Email,
        username: &Username,
        password_hash: &str,
        role: Role,
    ) -> Result<User> {
        let row = sqlx::query_as::<_, UserRow>(
            "insert into users (id, email, username, password_hash, role) values ($1, $2, $3, $4, $5) \
             returning id, email, username, role, created_at, password_hash",
        )
        .bind(Uuid::new_v4())
        .bind(email.as_str())
        .bind(username.as_str())
        .bind(password_hash)
        .bind(role.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match is_unique_violation(&e) {
            Some(c) if c.contains("email") => StoreError::Conflict("a user with this email"),
            Some(_) => StoreError::Conflict("a user with this username"),
            None => e.into(),
        })?;
        Ok(row.into_user().0)
    }

    /// Finds a user by email (case-insensitive) or username, with the password hash.
    pub async fn find_user_for_login(&self, login: &str) -> Result<Option<(User, String)>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash from users \
             where lower(email) = lower($1) or username = $1 limit 1",
        )
        .bind(login)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(UserRow::into_user))
    }

    pub async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(
            "select id, email, username, role, created_at, password_hash from users where id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.into_user().0))
    }

    pub async fn set_role(&self, username: &Username, role: Role) -> Result<()> {
        let r = sqlx::query("update users set role = $2 where username = $1")
            .bind(username.as_str())
            .bind(role.as_str())
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ------------------------------------------------------------- hostings

    /// Creates the desired hosting, its Pending status and a first event, atomically.
    /// A second hosting for the same user fails on the unique index: `Conflict`.
    pub async fn create_hosting(&self, user: UserId, spec: &HostingSpec) -> Result<HostingRecord> {
        let id = Uuid::new_v4();
        let keys: Vec<&str> = spec.ssh_public_keys.iter().map(|k| k.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "insert into hostings (id, user_id, vcpus, memory_mib, disk_gib, image, ssh_public_keys, running) \
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(user.0)
        .bind(spec.vcpus)
        .bind(spec.memory_mib)
        .bind(spec.disk_gib)
        .bind(spec.image.as_str())
        .bind(&keys)
        .bind(spec.running)
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
        insert_event(
            &mut tx,
            HostingId(id),
            EventType::Normal,
            "Created",
            "hosting requested; waiting for the reconciler",
        )
        .await?;
        tx.commit().await?;
        self.get_record(HostingId(id))
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn get_record(&self, id: HostingId) -> Result<Option<HostingRecord>> {
        let row = sqlx::query_as::<_, RecordRow>(&format!("{RECORD_SELECT} where h.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(RecordRow::into_record).transpose()
    }

    pub async fn get_record_by_user(&self, user: UserId) -> Result<Option<HostingRecord>> {
        let row = sqlx::query_as::<_, RecordRow>(&format!("{RECORD_SELECT} where h.user_id = $1"))
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(RecordRow::into_record).transpose()
    }

    /// Every hosting with its status, in one query (the reconciler's resync and the admin list).
    pub async fn list_records(&self) -> Result<Vec<HostingRecord>> {
        let rows =
            sqlx::query_as::<_, RecordRow>(&format!("{RECORD_SELECT} order by h.created_at"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(RecordRow::into_record).collect()
    }

    /// Applies `change` to the user's current spec under a row lock; bumps the
    /// generation only if the spec actually changed.
    pub async fn update_spec<F>(&self, user: UserId, change: F) -> Result<HostingRecord>
    where
        F: FnOnce(&HostingSpec) -> Result<HostingSpec, ValidationError>,
    {
        let mut tx = self.pool.begin().await?;
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
            let keys: Vec<&str> = new.ssh_public_keys.iter().map(|k| k.as_str()).collect();
            sqlx::query(
                "update hostings set vcpus = $2, memory_mib = $3, disk_gib = $4, image = $5, ssh_public_keys = $6, \
                 running = $7, generation = generation + 1 where id = $1",
            )
            .bind(rec.id.0)
            .bind(new.vcpus)
            .bind(new.memory_mib)
            .bind(new.disk_gib)
            .bind(new.image.as_str())
            .bind(&keys)
            .bind(new.running)
            .execute(&mut *tx)
            .await?;
            insert_event(
                &mut tx,
                rec.id,
                EventType::Normal,
                "SpecChanged",
                &format!("spec changed (generation {})", rec.generation + 1),
            )
            .await?;
        }
        tx.commit().await?;
        self.get_record(rec.id).await?.ok_or(StoreError::NotFound)
    }

    /// Marks the user's hosting for deletion (idempotent). The row stays until the
    /// reconciler has cleaned up.
    pub async fn request_deletion(&self, user: UserId) -> Result<HostingRecord> {
        let mut tx = self.pool.begin().await?;
        let id: Option<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
            "select id, deletion_requested_at from hostings where user_id = $1 for update",
        )
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, already) = id.ok_or(StoreError::NotFound)?;
        if already.is_none() {
            sqlx::query("update hostings set deletion_requested_at = now() where id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            insert_event(
                &mut tx,
                HostingId(id),
                EventType::Normal,
                "DeletionRequested",
                "deletion requested; cleaning up",
            )
            .await?;
        }
        tx.commit().await?;
        self.get_record(HostingId(id))
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn recent_events(&self, id: HostingId, limit: i64) -> Result<Vec<Event>> {
        Ok(sqlx::query_as::<_, (DateTime<Utc>, String, String, String)>(
            "select at, type, reason, message from events where hosting_id = $1 order by at desc, id desc limit $2",
        )
        .bind(id.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(at, type_, reason, message)| Event { at, type_, reason, message })
        .collect())
    }

    // ----------------------------------------------------------- reconciler

    pub async fn add_event(
        &self,
        id: HostingId,
        t: EventType,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, id, t, reason, message).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes the observed status (everything but ports, which only
    /// [`Store::allocate_ports`] writes).
    pub async fn write_status(&self, id: HostingId, s: &Status) -> Result<()> {
        sqlx::query(
            "insert into hosting_status (hosting_id, phase, conditions, observed_generation, vm_name, message, \
               disk_created, provisioning_since, image_pin, last_reconciled_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, now()) \
             on conflict (hosting_id) do update set phase = $2, conditions = $3, observed_generation = $4, \
               vm_name = $5, message = $6, disk_created = $7, provisioning_since = $8, image_pin = $9, last_reconciled_at = now()",
        )
        .bind(id.0)
        .bind(s.phase.as_str())
        .bind(sqlx::types::Json(&s.conditions))
        .bind(s.observed_generation)
        .bind(&s.vm_name)
        .bind(&s.message)
        .bind(s.disk_created)
        .bind(s.provisioning_since)
        .bind(s.image_pin.as_ref().map(sqlx::types::Json))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Allocates the hosting's SSH and HTTP ports if it has none yet, and records
    /// them in its status in the same transaction. The primary key on
    /// `port_allocations.port` decides races between concurrent allocators.
    pub async fn allocate_ports(
        &self,
        id: HostingId,
        ssh: PortRange,
        http: PortRange,
    ) -> Result<(u16, u16)> {
        for _attempt in 0..16 {
            let mut tx = self.pool.begin().await?;
            let existing: Vec<(String, i32)> =
                sqlx::query_as("select kind, port from port_allocations where hosting_id = $1")
                    .bind(id.0)
                    .fetch_all(&mut *tx)
                    .await?;
            let mut ports = [None, None];
            for (kind, port) in existing {
                ports[(kind == "http") as usize] = Some(port as u16);
            }
            let mut raced = false;
            for (i, (kind, range)) in [(PortKind::Ssh, ssh), (PortKind::Http, http)]
                .into_iter()
                .enumerate()
            {
                if ports[i].is_some() {
                    continue;
                }
                match try_allocate(&mut tx, id, kind, range).await? {
                    Some(p) => ports[i] = Some(p),
                    None => raced = true,
                }
            }
            if raced {
                tx.rollback().await?;
                continue;
            }
            let (s, h) = (ports[0].unwrap(), ports[1].unwrap());
            sqlx::query(
                "update hosting_status set ssh_port = $2, http_port = $3 where hosting_id = $1",
            )
            .bind(id.0)
            .bind(s as i32)
            .bind(h as i32)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok((s, h));
        }
        Err(StoreError::PortsExhausted("ssh/http (too much contention)"))
    }

    /// Releases the hosting's ports (idempotent).
    pub async fn release_ports(&self, id: HostingId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "update hosting_status set ssh_port = null, http_port = null where hosting_id = $1",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        sqlx::query("delete from port_allocations where hosting_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last step of the finalizer: removes the hosting row (status and events cascade).
    /// Refuses while the deletion has not been requested.
    pub async fn delete_hosting(&self, id: HostingId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from port_allocations where hosting_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query("delete from hostings where id = $1 and deletion_requested_at is not null")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// All port allocations: (port, kind, hosting id). For invariants checks.
    pub async fn list_ports(&self) -> Result<Vec<(u16, String, HostingId)>> {
        Ok(sqlx::query_as::<_, (i32, String, Uuid)>(
            "select port, kind, hosting_id from port_allocations order by port",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(p, k, h)| (p as u16, k, HostingId(h)))
        .collect())
    }
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    id: HostingId,
    t: EventType,
    reason: &str,
    message: &str,
) -> Result<()> {
    sqlx::query("insert into events (hosting_id, type, reason, message) values ($1, $2, $3, $4)")
        .bind(id.0)
        .bind(t.as_str())
        .bind(reason)
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Tries to take one free port of `range`, starting at a random offset so that
/// concurrent allocators rarely collide. `None` means another transaction won.
async fn try_allocate(
    tx: &mut Transaction<'_, Postgres>,
    id: HostingId,
    kind: PortKind,
    range: PortRange,
) -> Result<Option<u16>> {
    use rand::Rng;
    let offset = rand::thread_rng().gen_range(range.start..=range.end) as i32;
    let free: Option<(i32,)> = sqlx::query_as(
        "select p from (select generate_series($1::int, $2::int) as p) g \
         where not exists (select 1 from port_allocations a where a.port = g.p) \
         order by (g.p < $3), g.p limit 1",
    )
    .bind(range.start as i32)
    .bind(range.end as i32)
    .bind(offset)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((port,)) = free else {
        return Err(StoreError::PortsExhausted(kind.as_str()));
    };
    let inserted = sqlx::query("insert into port_allocations (port, kind, hosting_id) values ($1, $2, $3) on conflict do nothing")
        .bind(port)
        .bind(kind.as_str())
        .bind(id.0)
        .execute(&mut **tx)
        .await?;
    Ok((inserted.rows_affected() == 1).then_some(port as u16))
}

impl Store {
    /// Records the reconciler leader's heartbeat and counters.
    pub async fn heartbeat(
        &self,
        instance: &str,
        holder: &str,
        stats: &crate::reconciler::metrics::Snapshot,
    ) -> Result<()> {
        sqlx::query(
            "insert into reconciler_heartbeat (instance, holder, at, stats) values ($1, $2, now(), $3) \
             on conflict (instance) do update set holder = $2, at = now(), stats = $3",
        )
        .bind(instance)
        .bind(holder)
        .bind(sqlx::types::Json(stats))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last heartbeat: holder, age in seconds, counters.
    pub async fn last_heartbeat(
        &self,
        instance: &str,
    ) -> Result<Option<(String, f64, crate::reconciler::metrics::Snapshot)>> {
        let row: Option<(String, f64, sqlx::types::Json<crate::reconciler::metrics::Snapshot>)> = sqlx::query_as(
            "select holder, extract(epoch from now() - at)::float8, stats from reconciler_heartbeat where instance = $1",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(h, a, s)| (h, a, s.0)))
    }
}
