//! Observed state, written by the reconciler: status, events, port
//! allocations and the leader's heartbeat.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{ObservedStatus, Result, Store, StoreError};
use crate::domain::*;

/// The reconciler leader's counters, stored with its heartbeat so an API-only
/// process can show them in `/api/v1/health/detailed`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct ReconcilerStats {
    /// Reconciles run since the leader started.
    pub reconciles: u64,
    /// Reconciles that failed.
    pub errors: u64,
    /// Drift repairs and orphan removals.
    pub repairs: u64,
    /// Full resync passes.
    pub resyncs: u64,
    /// Hostings queued or being reconciled.
    pub queue_depth: u64,
    /// Duration of the last resync pass, in milliseconds.
    pub last_pass_ms: u64,
    /// Whether the writer held the leader lease.
    pub is_leader: bool,
    /// The host-side checks as the reconciler's process sees them
    /// (`libvirt`, `nginx`, `guest_isolation`: each `{"status", "detail"}`),
    /// for an API process that cannot see the host (a container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_checks: Option<serde_json::Value>,
}

/// One event in a hosting's history.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub type_: EventType,
    pub reason: Reason,
    pub message: String,
}

impl NewEvent {
    /// The events as the three text columns the insert unnests.
    fn columns(events: &[NewEvent]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
        let t = events.iter().map(|e| e.type_.as_str()).collect();
        let r = events.iter().map(|e| e.reason.as_str()).collect();
        let m = events.iter().map(|e| e.message.as_str()).collect();
        (t, r, m)
    }
}

impl Store {
    /// The latest events of a hosting, newest first.
    pub async fn recent_events(&self, id: HostingId, limit: i64) -> Result<Vec<Event>> {
        Ok(sqlx::query_as::<_, (DateTime<Utc>, String, String, String)>(
            "select at, type, reason, message from events where hosting_id = $1 order by at desc, id desc limit $2",
        )
        .bind(id.0)
        .bind(limit)
        .fetch_all(&self.pool())
        .await?
        .into_iter()
        .map(|(at, type_, reason, message)| Event { at, type_, reason, message })
        .collect())
    }

    /// Records events of one hosting, in order, in one statement.
    pub async fn add_events(&self, id: HostingId, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (t, r, m) = NewEvent::columns(events);
        sqlx::query(
            "insert into events (hosting_id, type, reason, message) \
             select $1, e.t, e.r, e.m from unnest($2::text[], $3::text[], $4::text[]) \
               with ordinality as e(t, r, m, n) order by e.n",
        )
        .bind(id.0)
        .bind(t)
        .bind(r)
        .bind(m)
        .execute(&self.pool())
        .await?;
        self.touched_hosting(id);
        Ok(())
    }

    /// Writes the observed status (everything but ports, which only
    /// [`Store::allocate_ports`] writes).
    pub async fn write_status(&self, id: HostingId, s: &ObservedStatus) -> Result<()> {
        self.write_status_with_events(id, s, &[]).await
    }

    /// Writes the observed status and records `events` (in order, before
    /// it), in one statement: a reconcile pass's events travel with its
    /// status writes instead of costing a round trip each.
    pub async fn write_status_with_events(
        &self,
        id: HostingId,
        s: &ObservedStatus,
        events: &[NewEvent],
    ) -> Result<()> {
        let (t, r, m) = NewEvent::columns(events);
        sqlx::query(
            "with ev as (insert into events (hosting_id, type, reason, message) \
               select $1, e.t, e.r, e.m from unnest($12::text[], $13::text[], $14::text[]) \
                 with ordinality as e(t, r, m, n) order by e.n) \
             insert into hosting_status (hosting_id, phase, conditions, observed_generation, vm_name, message, \
               disk_created, provisioning_since, image_pin, disk_epoch, applied_seed, boot_restarts, \
               metered_vcpus, metered_memory_mib, metered_disk_gib, metered_at, last_reconciled_at) \
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $15, $16, $17, $18, $19, now()) \
             on conflict (hosting_id) do update set phase = $2, conditions = $3, observed_generation = $4, \
               vm_name = $5, message = $6, disk_created = $7, provisioning_since = $8, image_pin = $9, \
               disk_epoch = $10, applied_seed = $11, boot_restarts = $15, metered_vcpus = $16, \
               metered_memory_mib = $17, metered_disk_gib = $18, metered_at = $19, last_reconciled_at = now()",
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
        .bind(s.disk_epoch)
        .bind(&s.applied_seed)
        .bind(t)
        .bind(r)
        .bind(m)
        .bind(s.boot_restarts)
        .bind(s.meter.vcpus)
        .bind(s.meter.memory_mib)
        .bind(s.meter.disk_gib)
        .bind(self.now())
        .execute(&self.pool())
        .await?;
        self.touched_hosting(id);
        Ok(())
    }

    /// Allocates the hosting's SSH and HTTP ports if it has none yet, and records
    /// them in its status, in one statement (one transaction). The primary
    /// key on `port_allocations.port` decides races between concurrent
    /// allocators; `hostd_allocate_port` (migration
    /// `20261129000001_port_allocator`) retries a lost race itself.
    pub async fn allocate_ports(
        &self,
        id: HostingId,
        ssh: PortRange,
        http: PortRange,
    ) -> Result<(u16, u16)> {
        use rand::Rng;
        // A random place to start from: concurrent allocators spread over
        // the range instead of all walking to the same free port.
        let from = {
            let mut rng = rand::thread_rng();
            [
                rng.gen_range(ssh.start..=ssh.end) as i32,
                rng.gen_range(http.start..=http.end) as i32,
            ]
        };
        let row: Option<(i32, i32)> = sqlx::query_as(
            "with s as (select hostd_allocate_port($1, 'ssh', $2, $3, $4) as p), \
                  h as (select hostd_allocate_port($1, 'http', $5, $6, $7) as p) \
             update hosting_status set ssh_port = s.p, http_port = h.p from s, h \
             where hosting_id = $1 returning ssh_port, http_port",
        )
        .bind(id.0)
        .bind(ssh.start as i32)
        .bind(ssh.end as i32)
        .bind(from[0])
        .bind(http.start as i32)
        .bind(http.end as i32)
        .bind(from[1])
        .fetch_optional(&self.pool())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("HD001") => {
                let kind = d
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|p| p.detail());
                StoreError::PortsExhausted(match kind {
                    Some("http") => "http",
                    _ => "ssh",
                })
            }
            _ => StoreError::Db(e),
        })?;
        let (s, h) = row.ok_or(StoreError::NotFound)?;
        self.touched_hosting(id);
        Ok((s as u16, h as u16))
    }

    /// Releases the hosting's ports (idempotent).
    pub async fn release_ports(&self, id: HostingId) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "update hosting_status set ssh_port = null, http_port = null where hosting_id = $1",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        delete_ports(&mut tx, id).await?;
        tx.commit().await?;
        self.touched_hosting(id);
        Ok(())
    }

    /// The last step of the finalizer: removes the hosting row (status and events cascade).
    /// Refuses while the deletion has not been requested.
    pub async fn delete_hosting(&self, id: HostingId) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        delete_ports(&mut tx, id).await?;
        // Its usage ends now, by this store's clock (the row's delete
        // trigger would end it at the database's).
        sqlx::query(
            "update usage set period = tstzrange(lower(period), greatest($2, lower(period) + interval '1 microsecond'), '[)') \
             where hosting_id = $1 and upper_inf(period) \
               and exists (select 1 from hostings where id = $1 and deletion_requested_at is not null)",
        )
        .bind(id.0)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into hosting_tombstones (hosting_id) select id from hostings \
             where id = $1 and deletion_requested_at is not null on conflict do nothing",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        sqlx::query("delete from hostings where id = $1 and deletion_requested_at is not null")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.touched_hosting(id);
        Ok(())
    }

    /// Records what each hosting's quarantined entries hold (`bytes`, the
    /// whole quarantine's tally); hostings absent from it hold none. Writes
    /// only the rows that change.
    pub async fn set_quarantine_bytes(&self, bytes: &[(HostingId, u64)]) -> Result<()> {
        let ids: Vec<Uuid> = bytes.iter().map(|(id, _)| id.0).collect();
        let sizes: Vec<i64> = bytes.iter().map(|(_, b)| *b as i64).collect();
        sqlx::query(
            "update hosting_status s set quarantine_bytes = coalesce(v.b, 0) \
             from hosting_status s2 left join unnest($1::uuid[], $2::bigint[]) v(id, b) on v.id = s2.hosting_id \
             where s.hosting_id = s2.hosting_id and s.quarantine_bytes is distinct from coalesce(v.b, 0)",
        )
        .bind(ids)
        .bind(sizes)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// All port allocations: (port, kind, hosting id). For invariants checks.
    pub async fn list_ports(&self) -> Result<Vec<(u16, String, HostingId)>> {
        Ok(sqlx::query_as::<_, (i32, String, Uuid)>(
            "select port, kind, hosting_id from port_allocations order by port",
        )
        .fetch_all(&self.pool())
        .await?
        .into_iter()
        .map(|(p, k, h)| (p as u16, k, HostingId(h)))
        .collect())
    }
}

async fn delete_ports(tx: &mut Transaction<'_, Postgres>, id: HostingId) -> Result<()> {
    sqlx::query("delete from port_allocations where hosting_id = $1")
        .bind(id.0)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    id: HostingId,
    t: EventType,
    reason: Reason,
    message: &str,
) -> Result<()> {
    sqlx::query("insert into events (hosting_id, type, reason, message) values ($1, $2, $3, $4)")
        .bind(id.0)
        .bind(t.as_str())
        .bind(reason.as_str())
        .bind(message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Records the reconciler leader's heartbeat and counters.
    pub async fn heartbeat(
        &self,
        instance: &str,
        holder: &str,
        stats: &ReconcilerStats,
    ) -> Result<()> {
        sqlx::query(
            "insert into reconciler_heartbeat (instance, holder, at, stats) values ($1, $2, now(), $3) \
             on conflict (instance) do update set holder = $2, at = now(), stats = $3",
        )
        .bind(instance)
        .bind(holder)
        .bind(sqlx::types::Json(stats))
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// The last heartbeat: holder, age in seconds, counters.
    /// Asks the reconciler to look at hosting `id` now (the notification
    /// its listener follows).
    pub async fn wake(&self, id: HostingId) -> Result<()> {
        sqlx::query("select pg_notify('hostd_hostings', $1)")
            .bind(id.to_string())
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    pub async fn last_heartbeat(
        &self,
        instance: &str,
    ) -> Result<Option<(String, f64, ReconcilerStats)>> {
        let row: Option<(String, f64, sqlx::types::Json<ReconcilerStats>)> = sqlx::query_as(
            "select holder, extract(epoch from now() - at)::float8, stats from reconciler_heartbeat where instance = $1",
        )
        .bind(instance)
        .fetch_optional(&self.pool())
        .await?;
        Ok(row.map(|(h, a, s)| (h, a, s.0)))
    }
}

/// Memory, vCPUs and disk that hostings hold or wait for, summed in SQL so an
/// admission decision costs one query whatever the number of hostings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityUsage {
    /// Held by running hostings: admitted (ports allocated), `running`, not
    /// being deleted, not waiting. A stopped hosting holds only its disk.
    pub memory_mib: i64,
    pub vcpus: i64,
    /// Wanted by hostings created before the one being decided that wait to
    /// run (not yet admitted, or admitted but waiting to be started again).
    pub queued_memory_mib: i64,
    pub queued_vcpus: i64,
    /// Hostings with `Scheduled=False`.
    pub waiting: i64,
}

/// One hosting's part in capacity decisions (see [`crate::capacity::usage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityRow {
    pub id: HostingId,
    /// The node it is placed on (`None`: not placed yet).
    pub node: Option<NodeName>,
    pub memory_mib: i64,
    pub vcpus: i64,
    pub created_at: DateTime<Utc>,
    /// Ports allocated (admitted once).
    pub admitted: bool,
    /// `Scheduled=False`: waiting for room.
    pub waiting: bool,
    /// `running` and not being deleted.
    pub wants_to_run: bool,
}

impl Store {
    /// Every hosting's part in capacity decisions, for the reconciler's
    /// admission ledger (one query; [`Store::capacity_usage`] sums the same
    /// rows in SQL).
    pub async fn capacity_rows(&self) -> Result<Vec<CapacityRow>> {
        type Row = (
            Uuid,
            i32,
            i32,
            DateTime<Utc>,
            bool,
            bool,
            bool,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "select h.id, h.memory_mib, h.vcpus, h.created_at, s.ssh_port is not null, \
               s.conditions @> '[{\"type\":\"Scheduled\",\"status\":\"False\"}]', \
               h.running and h.deletion_requested_at is null, coalesce(h.move_to, h.node) \
             from hostings h join hosting_status s on s.hosting_id = h.id",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, m, v, c, a, w, r, n)| CapacityRow {
                id: HostingId(id),
                node: n.and_then(|n| NodeName::parse(&n).ok()),
                memory_mib: m as i64,
                vcpus: v as i64,
                created_at: c,
                admitted: a,
                waiting: w,
                wants_to_run: r,
            })
            .collect())
    }
}

impl Store {
    /// Capacity held and queued by every hosting but `me` (the hosting being
    /// decided, with its creation time; `None` for the totals).
    pub async fn capacity_usage(
        &self,
        me: Option<(HostingId, DateTime<Utc>)>,
    ) -> Result<CapacityUsage> {
        // For the totals nobody is older than the epoch: nothing is queued.
        let (id, older_bound) = me.map_or((Uuid::nil(), DateTime::UNIX_EPOCH), |(i, c)| (i.0, c));
        let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "with h as ( \
               select h.memory_mib, h.vcpus, h.created_at, s.ssh_port, \
                 s.conditions @> '[{\"type\":\"Scheduled\",\"status\":\"False\"}]' as waiting, \
                 h.running and h.deletion_requested_at is null as wants_to_run \
               from hostings h join hosting_status s on s.hosting_id = h.id where h.id <> $1), \
             c as (select *, wants_to_run and ssh_port is not null and not waiting as holds from h) \
             select coalesce(sum(memory_mib) filter (where holds), 0)::int8, \
               coalesce(sum(vcpus) filter (where holds), 0)::int8, \
               coalesce(sum(memory_mib) filter (where wants_to_run and not holds and created_at < $2), 0)::int8, \
               coalesce(sum(vcpus) filter (where wants_to_run and not holds and created_at < $2), 0)::int8, \
               count(*) filter (where waiting) from c",
        )
        .bind(id)
        .bind(older_bound)
        .fetch_one(&self.pool())
        .await?;
        Ok(CapacityUsage {
            memory_mib: row.0,
            vcpus: row.1,
            queued_memory_mib: row.2,
            queued_vcpus: row.3,
            waiting: row.4,
        })
    }
}

/// The copied tail of a guest's console log.
#[derive(Debug, Clone)]
pub struct ConsoleTail {
    pub captured_at: DateTime<Utc>,
    pub log_size: i64,
    pub tail: String,
}

impl ConsoleTail {
    /// Most bytes of a console log kept (the reconciler copies at most this
    /// much of the log's end).
    pub const MAX_BYTES: u64 = 64 * 1024;

    /// Whether the stored text is only the end of the log.
    pub fn truncated(&self) -> bool {
        self.log_size as u64 > Self::MAX_BYTES
    }
}

impl Store {
    /// Stores the console tail of a hosting (the reconciler's copy).
    pub async fn save_console(&self, id: HostingId, log_size: i64, tail: &str) -> Result<()> {
        sqlx::query(
            "insert into hosting_console (hosting_id, captured_at, log_size, tail) \
             values ($1, now(), $2, $3) \
             on conflict (hosting_id) do update set captured_at = now(), log_size = $2, tail = $3",
        )
        .bind(id.0)
        .bind(log_size)
        .bind(tail)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// The last stored console tail of a hosting, if any.
    pub async fn console(&self, id: HostingId) -> Result<Option<ConsoleTail>> {
        Ok(sqlx::query_as::<_, (DateTime<Utc>, i64, String)>(
            "select captured_at, log_size, tail from hosting_console where hosting_id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool())
        .await?
        .map(|(captured_at, log_size, tail)| ConsoleTail {
            captured_at,
            log_size,
            tail,
        }))
    }
}
