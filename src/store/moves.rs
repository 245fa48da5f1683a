//! Drains: a node emptied by moving its hostings to other nodes, one at a
//! time. The operator's request (`nodes.draining_since`, which also
//! cordons) and each move (`hostings.move_to`, written before anything is
//! done on the target) are desired state; the reconciler's drain loop
//! starts the moves and its move step carries them out
//! (`reconciler::drain`, `reconciler::steps::moves`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Result, Store};
use crate::domain::{EventType, HostingId, NodeName, Reason, ValidationError};

/// How long a hosting whose move failed is passed over by its node's drain.
pub const MOVE_RETRY_AFTER_SECS: i64 = 300;

/// What a draining node has left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainWork {
    pub node: NodeName,
    /// Its hostings being moved now.
    pub moving: Vec<HostingId>,
    /// The next one to move (oldest first; those whose move failed lately last).
    pub next: Option<HostingId>,
    /// Hostings still placed there (warm-pool guests included).
    pub left: i64,
    pub draining_since: DateTime<Utc>,
}

impl Store {
    /// Asks for `name` to be emptied: cordons it, records the request (an
    /// earlier one's time is kept) and deletes its unclaimed warm-pool
    /// guests (the pool refills on other nodes). A fenced node is refused:
    /// its guests cannot move, it is evacuated instead.
    pub async fn drain_node(&self, name: &NodeName) -> Result<super::Node> {
        let mut tx = self.pool().begin().await?;
        if super::nodes::lock_node(&mut tx, name).await?.is_some() {
            return Err(ValidationError::new(
                "name",
                "is fenced: its guests cannot be migrated; evacuate it instead (hostd node evacuate)",
            )
            .into());
        }
        sqlx::query(
            "update nodes set schedulable = false, draining_since = coalesce(draining_since, now()), \
               drain_message = null where name = $1",
        )
        .bind(name.as_str())
        .execute(&mut *tx)
        .await?;
        super::nodes::delete_warm_guests_on(&mut tx, name).await?;
        tx.commit().await?;
        self.get_node(name).await
    }

    /// Every draining node's remaining work.
    pub async fn drain_work(&self) -> Result<Vec<DrainWork>> {
        type Row = (String, Vec<Uuid>, Option<Uuid>, i64, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "select n.name, \
               array(select h.id from hostings h where h.node = n.name and h.move_to is not null \
                     and h.deletion_requested_at is null order by h.created_at), \
               (select h.id from hostings h where h.node = n.name and h.move_to is null \
                  and h.deletion_requested_at is null and not h.warm_pool \
                  and (h.move_failed_at is null or h.move_failed_at < now() - make_interval(secs => $1)) \
                order by h.move_failed_at nulls first, h.created_at limit 1), \
               (select count(*) from hostings h where h.node = n.name), n.draining_since \
             from nodes n where n.draining_since is not null order by n.name",
        )
        .bind(MOVE_RETRY_AFTER_SECS as f64)
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter()
            .map(|(n, moving, next, left, since)| {
                Ok(DrainWork {
                    node: NodeName::parse(&n)?,
                    moving: moving.into_iter().map(HostingId).collect(),
                    next: next.map(HostingId),
                    left,
                    draining_since: since,
                })
            })
            .collect()
    }

    /// Records why a drain makes no progress (`None`: it does).
    pub async fn set_drain_message(&self, node: &NodeName, msg: Option<&str>) -> Result<()> {
        sqlx::query(
            "update nodes set drain_message = $2 where name = $1 and drain_message is distinct from $2",
        )
        .bind(node.as_str())
        .bind(msg)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Decides to move hosting `id` from `from` to `to` (unless it moves
    /// already, left `from`, or is being deleted). `false`: not started.
    pub async fn start_move(&self, id: HostingId, from: &NodeName, to: &NodeName) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "update hostings set move_to = $3, move_started_at = now(), move_cold = false \
             where id = $1 and node = $2 and move_to is null and deletion_requested_at is null",
        )
        .bind(id.0)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let msg = format!("node {from} is being drained: this hosting moves to node {to}");
        super::status::insert_event(&mut tx, id, EventType::Normal, Reason::Migrating, &msg)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The move of `id` to `to` is done (its guest answers there): the
    /// hosting is placed on `to` from now on. `false`: it was not moving there.
    pub async fn finish_move(&self, id: HostingId, to: &NodeName, msg: &str) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "update hostings set node = move_to, move_to = null, move_started_at = null, \
               move_failed_at = null, move_cold = false where id = $1 and move_to = $2",
        )
        .bind(id.0)
        .bind(to.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        super::status::insert_event(&mut tx, id, EventType::Normal, Reason::Migrated, msg).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The hosting's checkpoints are gone (they stay with a node it left):
    /// no backup of it counts as a base for an incremental one.
    pub async fn drop_checkpoints(&self, id: HostingId) -> Result<()> {
        sqlx::query("update backups set checkpoint = false where hosting_id = $1 and checkpoint")
            .bind(id.0)
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    /// The live migration of `id` failed: its move goes on with the guest
    /// stopped (stop, copy, start there). `false`: it was not moving live.
    pub async fn move_cold(&self, id: HostingId, msg: &str) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "update hostings set move_cold = true where id = $1 and move_to is not null and not move_cold",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let (t, reason) = (EventType::Warning, Reason::MigrationFailed);
        super::status::insert_event(&mut tx, id, t, reason, msg).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives up the move of `id` (it stays, served, where it is); its
    /// node's drain tries it again after the others.
    pub async fn give_up_move(&self, id: HostingId, msg: &str) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "update hostings set move_to = null, move_started_at = null, move_failed_at = now(), \
               move_cold = false where id = $1 and move_to is not null",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() > 0 {
            let (t, reason) = (EventType::Warning, Reason::MigrationFailed);
            super::status::insert_event(&mut tx, id, t, reason, msg).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
