//! Nodes: the hypervisor hosts hostings are placed on. Desired columns are
//! the operator's (CLI, admin API); observed ones (heartbeat, readiness,
//! resources) the reconciler's. A hosting's `node` is its placement: written
//! once, before anything is created for it on that node.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Result, Store, StoreError};
use crate::domain::{
    EventType, HostingId, NodeAddress, NodeName, NodeUri, Reason, ValidationError,
};
use crate::drivers::HostResources;

/// A node as stored: what the operator asked for and what was last observed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Node {
    pub name: NodeName,
    pub uri: NodeUri,
    pub address: NodeAddress,
    /// New hostings may be placed here (`false`: cordoned).
    pub schedulable: bool,
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Capacity overrides: what the host is taken to have, whatever libvirt reports.
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    /// `HOSTD_LIBVIRT_URI`'s node (upserted at startup).
    pub implicit: bool,
    pub created_at: DateTime<Utc>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub ready: bool,
    /// `Ready`, `Unreachable` (silent for less than `HOSTD_NODE_DOWN_SECS`)
    /// or `Down`, as the reconciler last saw it.
    pub health: String,
    pub message: Option<String>,
    pub resources: Option<HostResources>,
    /// Hostings placed on it.
    pub hostings: i64,
    /// When an operator declared it dead (see [`Store::fence_node`]).
    pub fenced_at: Option<DateTime<Utc>>,
    /// Where its guests forward SSH (`None`: `HOSTD_SSH_BIND`).
    pub ssh_address: Option<std::net::IpAddr>,
    /// When an operator asked for it to be emptied (see [`Store::drain_node`]).
    pub draining_since: Option<DateTime<Utc>>,
    /// Why the drain makes no progress, if it does not.
    pub drain_message: Option<String>,
}

/// What an evacuation did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Evacuation {
    /// Hostings to be restored elsewhere: (hosting, backup, taken at).
    pub moved: Vec<(HostingId, crate::domain::BackupId, DateTime<Utc>)>,
    /// Hostings without a backup, left on the fenced node.
    pub stranded: Vec<HostingId>,
}

/// A node to add.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub name: NodeName,
    pub uri: NodeUri,
    pub address: NodeAddress,
    pub ssh_address: Option<std::net::IpAddr>,
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
}

#[derive(sqlx::FromRow)]
struct NodeDbRow {
    name: String,
    libvirt_uri: String,
    address: String,
    ssh_address: Option<String>,
    schedulable: bool,
    labels: serde_json::Value,
    memory_mib: Option<i64>,
    vcpus: Option<i32>,
    implicit: bool,
    created_at: DateTime<Utc>,
    heartbeat_at: Option<DateTime<Utc>>,
    ready: bool,
    message: Option<String>,
    resources: Option<sqlx::types::Json<HostResources>>,
    hostings: i64,
    health: String,
    fenced_at: Option<DateTime<Utc>>,
    draining_since: Option<DateTime<Utc>>,
    drain_message: Option<String>,
}

const NODE_SELECT: &str = "select n.name, n.libvirt_uri, host(n.address) as address, \
     host(n.ssh_address) as ssh_address, n.schedulable, n.labels, \
     n.memory_mib, n.vcpus, n.implicit, n.created_at, n.heartbeat_at, n.ready, n.message, n.resources, \
     (select count(*) from hostings h where h.node = n.name) as hostings, n.health, n.fenced_at, \
     n.draining_since, n.drain_message \
     from nodes n";

fn node(r: NodeDbRow) -> Result<Node> {
    // Stored values passed these parsers when they were written; a row
    // edited by hand into something else is refused, not used.
    Ok(Node {
        name: NodeName::parse(&r.name)?,
        uri: NodeUri::parse(&r.libvirt_uri)?,
        address: NodeAddress::parse(&r.address)?,
        ssh_address: r.ssh_address.as_deref().and_then(|a| a.parse().ok()),
        schedulable: r.schedulable,
        labels: match r.labels {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
        memory_mib: r.memory_mib.map(|m| m as u64),
        vcpus: r.vcpus.map(|v| v as u32),
        implicit: r.implicit,
        created_at: r.created_at,
        heartbeat_at: r.heartbeat_at,
        ready: r.ready,
        message: r.message,
        resources: r.resources.map(|j| j.0),
        hostings: r.hostings,
        health: r.health,
        fenced_at: r.fenced_at,
        draining_since: r.draining_since,
        drain_message: r.drain_message,
    })
}

/// Locks a node's row for the rest of `tx`; returns when it was fenced
/// (`NotFound`: no such node).
pub(super) async fn lock_node(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &NodeName,
) -> Result<Option<DateTime<Utc>>> {
    let row: Option<(Option<DateTime<Utc>>,)> =
        sqlx::query_as("select fenced_at from nodes where name = $1 for update")
            .bind(name.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    row.map(|r| r.0).ok_or(StoreError::NotFound)
}

/// Deletes the unclaimed warm-pool guests placed on a node (the pool
/// refills on the others).
pub(super) async fn delete_warm_guests_on(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &NodeName,
) -> Result<()> {
    sqlx::query(
        "update hostings set deletion_requested_at = now() \
         where node = $1 and warm_pool and deletion_requested_at is null",
    )
    .bind(name.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Makes `name` the implicit node at `uri` (the one `HOSTD_LIBVIRT_URI`
    /// names) and binds every admitted hosting placed before nodes existed
    /// to it: they run there.
    pub async fn ensure_implicit_node(&self, name: &NodeName, uri: &NodeUri) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("update nodes set implicit = false where implicit and name <> $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into nodes (name, libvirt_uri, implicit) values ($1, $2, true) \
             on conflict (name) do update set libvirt_uri = excluded.libvirt_uri, implicit = true",
        )
        .bind(name.as_str())
        .bind(uri.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "update hostings h set node = $1 from hosting_status s \
             where s.hosting_id = h.id and h.node is null and s.ssh_port is not null",
        )
        .bind(name.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        let rows: Vec<NodeDbRow> = sqlx::query_as(&format!("{NODE_SELECT} order by n.name"))
            .fetch_all(&self.pool())
            .await?;
        rows.into_iter().map(node).collect()
    }

    pub async fn get_node(&self, name: &NodeName) -> Result<Node> {
        let row: Option<NodeDbRow> = sqlx::query_as(&format!("{NODE_SELECT} where n.name = $1"))
            .bind(name.as_str())
            .fetch_optional(&self.pool())
            .await?;
        node(row.ok_or(StoreError::NotFound)?)
    }

    /// Adds a node (schedulable; the reconciler connects to it at its next
    /// look at the nodes).
    pub async fn add_node(&self, n: &NewNode) -> Result<Node> {
        let r = sqlx::query(
            "insert into nodes (name, libvirt_uri, address, labels, memory_mib, vcpus, ssh_address) \
             values ($1, $2, $3::inet, $4, $5, $6, $7::inet)",
        )
        .bind(n.name.as_str())
        .bind(n.uri.as_str())
        .bind(n.address.ip().to_string())
        .bind(serde_json::Value::Object(n.labels.clone()))
        .bind(n.memory_mib.map(|m| m as i64))
        .bind(n.vcpus.map(|v| v as i32))
        .bind(n.ssh_address.map(|a| a.to_string()))
        .execute(&self.pool())
        .await;
        match r {
            Err(e) if super::is_unique_violation(&e).is_some() => {
                return Err(StoreError::Conflict("node"))
            }
            r => r?,
        };
        self.get_node(&n.name).await
    }

    /// Cordons (`false`) or uncordons a node: whether new hostings may be
    /// placed on it. Hostings already there stay.
    pub async fn set_schedulable(&self, name: &NodeName, schedulable: bool) -> Result<Node> {
        // Uncordoning also ends a drain (moves under way finish).
        let r = sqlx::query(
            "update nodes set schedulable = $2, \
               draining_since = case when $2 then null else draining_since end, \
               drain_message = case when $2 then null else drain_message end \
             where name = $1",
        )
        .bind(name.as_str())
        .bind(schedulable)
        .execute(&self.pool())
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_node(name).await
    }

    /// Removes a node that holds no hosting and is not the implicit one.
    pub async fn remove_node(&self, name: &NodeName) -> Result<()> {
        let n = self.get_node(name).await?;
        if n.implicit {
            return Err(ValidationError::new(
                "name",
                "is the node of HOSTD_LIBVIRT_URI: change that setting instead",
            )
            .into());
        }
        // The foreign key refuses the delete while a hosting is placed there.
        let r = sqlx::query("delete from nodes where name = $1 and not implicit")
            .bind(name.as_str())
            .execute(&self.pool())
            .await;
        match r {
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23503") => {
                Err(ValidationError::new(
                    "name",
                    format!(
                        "still holds {} hosting(s): move or delete them first",
                        n.hostings
                    ),
                )
                .into())
            }
            r => {
                r?;
                Ok(())
            }
        }
    }

    /// Fences a node (the operator says it is dead: nothing is placed there
    /// any more, and its hostings may be evacuated) or lifts the fence.
    /// Fencing also cordons it; lifting the fence leaves it cordoned.
    pub async fn fence_node(&self, name: &NodeName, fenced: bool) -> Result<Node> {
        let r = sqlx::query(
            "update nodes set fenced_at = case when $2 then coalesce(fenced_at, now()) end, \
               schedulable = schedulable and not $2 \
             where name = $1",
        )
        .bind(name.as_str())
        .bind(fenced)
        .execute(&self.pool())
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_node(name).await
    }

    /// Evacuates a fenced node: each hosting placed there with a Completed
    /// backup is unplaced and given a new disk epoch naming its newest one,
    /// so the reconciler places it on another node and restores it there
    /// (the loss window, the backup's time, is in its event); a hosting
    /// without a backup stays (Warning event); warm-pool guests there are
    /// deleted. One transaction. Refused unless the node is fenced.
    pub async fn evacuate_node(&self, name: &NodeName) -> Result<Evacuation> {
        let mut tx = self.pool().begin().await?;
        if lock_node(&mut tx, name).await?.is_none() {
            return Err(ValidationError::new(
                "name",
                "is not fenced: fence it first (hostd node fence), once it is dead or its guests are stopped for good",
            )
            .into());
        }
        delete_warm_guests_on(&mut tx, name).await?;
        type Row = (Uuid, Option<Uuid>, Option<DateTime<Utc>>);
        let rows: Vec<Row> = sqlx::query_as(
            "select h.id, b.id, b.created_at from hostings h \
             left join lateral (select id, coalesce(started_at, created_at) as created_at from backups \
                 where hosting_id = h.id and state = 'Completed' \
                 order by coalesce(started_at, created_at) desc limit 1) b on true \
             where h.node = $1 and not h.warm_pool and h.deletion_requested_at is null \
             order by h.created_at for update of h",
        )
        .bind(name.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Evacuation::default();
        for (id, backup, taken) in rows {
            let hosting = HostingId(id);
            match (backup, taken) {
                (Some(b), Some(t)) => {
                    sqlx::query(
                        "update hostings set node = null, disk_epoch = disk_epoch + 1, \
                           generation = generation + 1, restore_backup_id = $2 where id = $1",
                    )
                    .bind(id)
                    .bind(b)
                    .execute(&mut *tx)
                    .await?;
                    let msg = format!(
                        "node {name} is fenced: this hosting is restored on another node from backup {b} \
                         taken {}; what changed after that time is lost",
                        t.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                    let (ty, r) = (EventType::Warning, Reason::Evacuated);
                    super::status::insert_event(&mut tx, hosting, ty, r, &msg).await?;
                    out.moved.push((hosting, crate::domain::BackupId(b), t));
                }
                _ => {
                    let msg = format!(
                        "node {name} is fenced and this hosting has no completed backup: it stays \
                         there until the node returns, or its owner resets it"
                    );
                    let (ty, r) = (EventType::Warning, Reason::NotEvacuated);
                    super::status::insert_event(&mut tx, hosting, ty, r, &msg).await?;
                    out.stranded.push(hosting);
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records a heartbeat: `Ready` with what libvirt reported (the time of
    /// the last good heartbeat moves only then), or `Unreachable`/`Down` and why.
    pub async fn node_heartbeat(
        &self,
        name: &NodeName,
        health: &str,
        message: Option<&str>,
        resources: Option<&HostResources>,
    ) -> Result<()> {
        sqlx::query(
            "update nodes set ready = ($2 = 'Ready'), health = $2, message = $3, \
               heartbeat_at = case when $2 = 'Ready' then now() else heartbeat_at end, \
               resources = coalesce($4, resources) \
             where name = $1",
        )
        .bind(name.as_str())
        .bind(health)
        .bind(message)
        .bind(resources.map(sqlx::types::Json))
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Places a hosting on `node` unless it is placed already; returns the
    /// node it is placed on (the one chosen earlier, if any, so a decision
    /// is never made twice).
    pub async fn place(&self, id: HostingId, node: &NodeName) -> Result<NodeName> {
        let placed: Option<(Option<String>,)> = sqlx::query_as(
            "with u as (update hostings set node = $2 where id = $1 and node is null returning node) \
             select coalesce((select node from u), (select node from hostings where id = $1))",
        )
        .bind(id.0)
        .bind(node.as_str())
        .fetch_optional(&self.pool())
        .await?;
        match placed.and_then(|p| p.0) {
            Some(n) => Ok(NodeName::parse(&n)?),
            None => Err(StoreError::NotFound),
        }
    }

    /// The hostings placed on `node`.
    pub async fn hostings_on(&self, node: &NodeName) -> Result<Vec<HostingId>> {
        let ids: Vec<(Uuid,)> = sqlx::query_as("select id from hostings where node = $1")
            .bind(node.as_str())
            .fetch_all(&self.pool())
            .await?;
        Ok(ids.into_iter().map(|(i,)| HostingId(i)).collect())
    }
}
