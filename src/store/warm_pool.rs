//! The warm pool's rows. A pool guest is a hosting owned by the internal
//! `hostd-warm-pool` account with `warm_pool = true`: it goes through the same
//! reconcile steps as any hosting (ports, disk, seed, domain, readiness,
//! repair, deletion), so the pool is desired state with no second code path.
//! A claim re-owns a Ready pool row inside the create transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::status::insert_event;
use super::{is_unique_violation, Result, Store, StoreError};
use crate::domain::*;

/// The internal account that owns unclaimed pool guests (migration
/// `20261128000006_warm_pool`); its role `system` can never log in.
pub const WARM_POOL_USER: UserId = UserId(Uuid::from_u128(0x00000000_0000_4000_8000_000000000001));

/// What the pool holds right now (one class: the default hosting size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WarmPoolCounts {
    /// Pool rows not being deleted.
    pub total: i64,
    /// Of those, booted and idle: claimable now.
    pub ready: i64,
    /// Pool rows being deleted (shrinking).
    pub deleting: i64,
}

impl WarmPoolCounts {
    /// The counts of several nodes added up.
    pub fn sum<'a>(counts: impl IntoIterator<Item = &'a WarmPoolCounts>) -> WarmPoolCounts {
        counts
            .into_iter()
            .fold(WarmPoolCounts::default(), |a, c| WarmPoolCounts {
                total: a.total + c.total,
                ready: a.ready + c.ready,
                deleting: a.deleting + c.deleting,
            })
    }
}

/// The pool's class: the spec fields a hosting must match to be claimable.
pub fn fits(spec: &HostingSpec, class: &HostingSpec) -> bool {
    spec.running
        && spec.vcpus == class.vcpus
        && spec.memory_mib == class.memory_mib
        && spec.disk_gib == class.disk_gib
        && spec.image == class.image
}

impl Store {
    /// Counts the pool's rows of `class` on all nodes.
    pub async fn warm_pool_counts(&self, class: &HostingSpec) -> Result<WarmPoolCounts> {
        Ok(WarmPoolCounts::sum(
            self.warm_pool_counts_by_node(class).await?.values(),
        ))
    }

    /// Counts the pool's rows of `class` on each node (`None`: rows not
    /// placed yet, from before pools were per node).
    pub async fn warm_pool_counts_by_node(
        &self,
        class: &HostingSpec,
    ) -> Result<HashMap<Option<NodeName>, WarmPoolCounts>> {
        let rows: Vec<(Option<String>, i64, i64, i64)> = sqlx::query_as(
            "select h.node, count(*) filter (where h.deletion_requested_at is null), \
                    count(*) filter (where h.deletion_requested_at is null and s.phase = 'Ready' \
                                     and s.observed_generation = h.generation), \
                    count(*) filter (where h.deletion_requested_at is not null) \
             from hostings h join hosting_status s on s.hosting_id = h.id \
             where h.warm_pool and h.vcpus = $1 and h.memory_mib = $2 and h.disk_gib = $3 and h.image = $4 \
             group by h.node",
        )
        .bind(class.vcpus.as_i32())
        .bind(class.memory_mib.as_i32())
        .bind(class.disk_gib.as_i32())
        .bind(class.image.as_str())
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter()
            .map(|(node, total, ready, deleting)| {
                let node = node.map(|n| NodeName::parse(&n)).transpose()?;
                Ok((
                    node,
                    WarmPoolCounts {
                        total,
                        ready,
                        deleting,
                    },
                ))
            })
            .collect()
    }

    /// Adds one pool guest of `class` bound to `node` (desired state; the
    /// reconciler admits it there and boots it, or drops it if it does not
    /// fit).
    pub async fn add_warm_guest(&self, class: &HostingSpec, node: &NodeName) -> Result<HostingId> {
        let class = HostingSpec {
            ssh_public_keys: vec![],
            running: true,
            ..class.clone()
        };
        let msg = format!("warm-pool guest requested on node {node}");
        self.insert_hosting(WARM_POOL_USER, &class, Some(node), &msg)
            .await
    }

    /// Asks for `n` pool guests of `class` on `node` to be deleted, those
    /// not yet claimable first, then the newest. Returns how many were asked.
    pub async fn shrink_warm_pool(
        &self,
        class: &HostingSpec,
        node: &NodeName,
        n: i64,
    ) -> Result<u64> {
        let r = sqlx::query(
            "update hostings set deletion_requested_at = now() where id in ( \
               select h.id from hostings h join hosting_status s on s.hosting_id = h.id \
               where h.warm_pool and h.deletion_requested_at is null and h.node = $6 \
                 and h.vcpus = $1 and h.memory_mib = $2 and h.disk_gib = $3 and h.image = $4 \
               order by (s.phase = 'Ready') asc, h.created_at desc limit $5 \
               for update of h skip locked)",
        )
        .bind(class.vcpus.as_i32())
        .bind(class.memory_mib.as_i32())
        .bind(class.disk_gib.as_i32())
        .bind(class.image.as_str())
        .bind(n)
        .bind(node.as_str())
        .execute(&self.pool())
        .await?;
        Ok(r.rows_affected())
    }

    /// Asks for one pool guest of any class to be deleted (capacity is short
    /// for a tenant's hosting): `true` if there was one.
    pub async fn evict_warm_guest(&self) -> Result<bool> {
        let r = sqlx::query(
            "update hostings set deletion_requested_at = now() where id in ( \
               select h.id from hostings h join hosting_status s on s.hosting_id = h.id \
               where h.warm_pool and h.deletion_requested_at is null \
               order by (s.phase = 'Ready') asc, h.created_at desc limit 1 \
               for update of h skip locked)",
        )
        .execute(&self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Asks for one pool row's deletion (it cannot be admitted).
    pub async fn drop_warm_guest(&self, id: HostingId) -> Result<()> {
        sqlx::query(
            "update hostings set deletion_requested_at = coalesce(deletion_requested_at, now()) \
             where id = $1 and warm_pool",
        )
        .bind(id.0)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Creates `user`'s hosting from a Ready pool guest of the spec's class,
    /// in one transaction: the pool row is locked (`skip locked`, so two
    /// concurrent claims take two guests), re-owned, given the user's keys and
    /// a new generation, its pool history replaced by a `Created` event.
    /// `Ok(None)`: no Ready pool guest (the caller creates one the cold way).
    /// A user who already has a hosting gets `Conflict`, and nothing changes.
    pub(super) async fn claim_warm_guest(
        &self,
        user: UserId,
        spec: &HostingSpec,
    ) -> Result<Option<HostingId>> {
        let mut tx = self.pool().begin().await?;
        let keys: Vec<&str> = spec.ssh_public_keys.iter().map(|k| k.as_str()).collect();
        let row: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "with c as ( \
               select h.id, h.created_at from hostings h join hosting_status s on s.hosting_id = h.id \
               where h.warm_pool and h.deletion_requested_at is null and s.phase = 'Ready' \
                 and s.observed_generation = h.generation \
                 and h.vcpus = $2 and h.memory_mib = $3 and h.disk_gib = $4 and h.image = $5 \
                 and exists (select 1 from nodes n where n.name = h.node and n.schedulable \
                             and n.fenced_at is null and n.draining_since is null) \
               order by h.created_at limit 1 for update of h skip locked) \
             update hostings h set user_id = $1, warm_pool = false, claimed_at = now(), created_at = now(), \
               ssh_public_keys = $6, hsts = $7, generation = h.generation + 1, claim_generation = h.generation + 1 \
             from c where h.id = c.id returning h.id, c.created_at",
        )
        .bind(user.0)
        .bind(spec.vcpus.as_i32())
        .bind(spec.memory_mib.as_i32())
        .bind(spec.disk_gib.as_i32())
        .bind(spec.image.as_str())
        .bind(&keys)
        .bind(spec.hsts)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| match is_unique_violation(&e) {
            Some(_) => StoreError::Conflict("a hosting for this user"),
            None => e.into(),
        })?;
        let Some((id, booted)) = row else {
            return Ok(None);
        };
        let id = HostingId(id);
        // The pool's own history is not the tenant's.
        sqlx::query("delete from events where hosting_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "update hosting_status set phase = 'Provisioning', provisioning_since = now(), \
             message = 'personalising a warm-pool guest' where hosting_id = $1",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        let age = (Utc::now() - booted).num_seconds().max(0);
        let msg = format!(
            "hosting requested; given a warm-pool guest requested {age} s ago, \
             to be personalised for you"
        );
        insert_event(&mut tx, id, EventType::Normal, Reason::Created, &msg).await?;
        tx.commit().await?;
        Ok(Some(id))
    }
}
