//! Observed state, written by the reconciler: status, events, port
//! allocations and the leader's heartbeat.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Result, Status, Store, StoreError};
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
}

/// One event in a hosting's history.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

impl Store {
    /// The latest events of a hosting, newest first.
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

    pub async fn add_event(
        &self,
        id: HostingId,
        t: EventType,
        reason: Reason,
        message: &str,
    ) -> Result<()> {
        // One statement: no transaction around it (three round trips).
        sqlx::query(
            "insert into events (hosting_id, type, reason, message) values ($1, $2, $3, $4)",
        )
        .bind(id.0)
        .bind(t.as_str())
        .bind(reason.as_str())
        .bind(message)
        .execute(&self.pool)
        .await?;
        self.touched_hosting(id);
        Ok(())
    }

    /// Writes the observed status (everything but ports, which only
    /// [`Store::allocate_ports`] writes).
    pub async fn write_status(&self, id: HostingId, s: &Status) -> Result<()> {
        sqlx::query(
            "insert into hosting_status (hosting_id, phase, conditions, observed_generation, vm_name, message, \
               disk_created, provisioning_since, image_pin, disk_epoch, applied_seed, last_reconciled_at) \
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now()) \
             on conflict (hosting_id) do update set phase = $2, conditions = $3, observed_generation = $4, \
               vm_name = $5, message = $6, disk_created = $7, provisioning_since = $8, image_pin = $9, \
               disk_epoch = $10, applied_seed = $11, last_reconciled_at = now()",
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
        .execute(&self.pool)
        .await?;
        self.touched_hosting(id);
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
            self.touched_hosting(id);
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
        delete_ports(&mut tx, id).await?;
        tx.commit().await?;
        self.touched_hosting(id);
        Ok(())
    }

    /// The last step of the finalizer: removes the hosting row (status and events cascade).
    /// Refuses while the deletion has not been requested.
    pub async fn delete_hosting(&self, id: HostingId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        delete_ports(&mut tx, id).await?;
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
        // The lowest free port from the offset up, else from the start up.
        // Each branch walks the primary key only along the run of taken
        // ports it starts in (the first taken port whose successor is
        // free), and the first branch that finds one ends the query: cost
        // grows with the run, not with the range.
        "select p from ( \
           (select $3::int as p where not exists (select 1 from port_allocations where port = $3)) \
           union all \
           (select a.port + 1 from port_allocations a where a.port >= $3 and a.port < $2 \
              and not exists (select 1 from port_allocations b where b.port = a.port + 1) \
            order by a.port limit 1) \
           union all \
           (select $1::int where not exists (select 1 from port_allocations where port = $1)) \
           union all \
           (select a.port + 1 from port_allocations a where a.port >= $1 and a.port < $3 \
              and not exists (select 1 from port_allocations b where b.port = a.port + 1) \
            order by a.port limit 1) \
         ) c limit 1",
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
        stats: &ReconcilerStats,
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
    ) -> Result<Option<(String, f64, ReconcilerStats)>> {
        let row: Option<(String, f64, sqlx::types::Json<ReconcilerStats>)> = sqlx::query_as(
            "select holder, extract(epoch from now() - at)::float8, stats from reconciler_heartbeat where instance = $1",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityRow {
    pub id: HostingId,
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
        type Row = (Uuid, i32, i32, DateTime<Utc>, bool, bool, bool);
        let rows: Vec<Row> = sqlx::query_as(
            "select h.id, h.memory_mib, h.vcpus, h.created_at, s.ssh_port is not null, \
               s.conditions @> '[{\"type\":\"Scheduled\",\"status\":\"False\"}]', \
               h.running and h.deletion_requested_at is null \
             from hostings h join hosting_status s on s.hosting_id = h.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, m, v, c, a, w, r)| CapacityRow {
                id: HostingId(id),
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
        .fetch_one(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last stored console tail of a hosting, if any.
    pub async fn console(&self, id: HostingId) -> Result<Option<ConsoleTail>> {
        Ok(sqlx::query_as::<_, (DateTime<Utc>, i64, String)>(
            "select captured_at, log_size, tail from hosting_console where hosting_id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .map(|(captured_at, log_size, tail)| ConsoleTail {
            captured_at,
            log_size,
            tail,
        }))
    }
}
