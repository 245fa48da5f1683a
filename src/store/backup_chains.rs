//! Chains of backups and retention. An Incremental backup needs its parent,
//! and the parent its own, down to a Full one: a backup's *chain*. Retention
//! (`HOSTD_BACKUP_KEEP`, the backup quota) never deletes a backup a kept one
//! needs; the foreign key on `parent_id` would refuse it anyway.

use super::backups::{BackupRow, COLUMNS};
use super::{Backup, Result, Store};
use crate::domain::*;

/// `COLUMNS` qualified with a table alias.
fn columns_of(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Backup `b` of the hosting and the backups it needs, oldest (the Full
    /// one) first, whatever their state; empty if `b` does not exist. The
    /// first element is not a Full one when a link's parent was lost.
    pub async fn backup_chain(&self, hosting: HostingId, b: BackupId) -> Result<Vec<Backup>> {
        let q = format!(
            "with recursive chain(id, depth) as ( \
                 select id, 0 from backups where hosting_id = $1 and id = $2 \
                 union all \
                 select p.parent_id, c.depth + 1 from chain c join backups p on p.id = c.id \
                 where p.parent_id is not null and c.depth < 10000) \
             select {} from chain c join backups b on b.id = c.id order by c.depth desc",
            columns_of("b")
        );
        let rows: Vec<BackupRow> = sqlx::query_as(&q)
            .bind(hosting.0)
            .bind(b.0)
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(Backup::from).collect())
    }

    /// The newest Completed backup made with a checkpoint (the next backup
    /// of a running guest can be incremental from it), with the length of
    /// its chain.
    pub async fn checkpoint_base(&self, hosting: HostingId) -> Result<Option<(Backup, usize)>> {
        let tail = "state = 'Completed' and checkpoint order by completed_at desc, id limit 1";
        let Some(b) = self.backups_where(tail, hosting).await?.pop() else {
            return Ok(None);
        };
        let chain = self.backup_chain(hosting, b.id).await?;
        Ok(Some((b, chain.len())))
    }

    /// Removes backup records past retention: all but the newest `keep`
    /// Completed ones and the backups they need, and Failed ones older than
    /// the oldest of the newest `keep`; never the backup the hosting's
    /// restore names nor what it needs. Returns the Completed ones removed
    /// (whose files the caller deletes).
    pub async fn expire_backups(&self, hosting: HostingId, keep: u32) -> Result<Vec<Backup>> {
        let q = format!(
            "with recursive newest as ( \
                 select id, completed_at from backups where hosting_id = $1 and state = 'Completed' \
                 order by completed_at desc, id limit $2), \
             kept(id) as ( \
                 select id from newest \
                 union select restore_backup_id from hostings where id = $1 and restore_backup_id is not null \
                 union select b.parent_id from backups b join kept k on b.id = k.id \
                     where b.parent_id is not null), \
             oldest as (select min(completed_at) as at from newest) \
             delete from backups b where b.hosting_id = $1 \
                 and b.id not in (select id from kept) \
                 and (b.state = 'Completed' \
                      or (b.state = 'Failed' and b.created_at < coalesce((select at from oldest), now()) \
                          and (select count(*) from newest) >= $2)) \
             returning {COLUMNS}"
        );
        let rows: Vec<BackupRow> = sqlx::query_as(&q)
            .bind(hosting.0)
            .bind(i64::from(keep))
            .fetch_all(&self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(Backup::from)
            .filter(|b| b.state == BackupState::Completed)
            .collect())
    }

    /// Deletes the hosting's oldest Completed chains (a Full backup with the
    /// incrementals that need it, whole: a link alone restores nothing),
    /// never the newest backup's chain nor the one a restore waits for,
    /// while its backups plus `other` bytes (its quarantine) exceed `quota`
    /// bytes. Returns what it deleted.
    pub async fn trim_backups_to_quota(
        &self,
        hosting: HostingId,
        other: u64,
        quota: u64,
    ) -> Result<Vec<Backup>> {
        let q = format!(
            "with recursive member(id, root) as ( \
                 select id, id from backups where hosting_id = $1 and state = 'Completed' \
                     and parent_id is null \
                 union all \
                 select b.id, m.root from backups b join member m on b.parent_id = m.id \
                     where b.state = 'Completed'), \
             chains as ( \
                 select m.root, max(b.completed_at) as newest, sum(coalesce(b.size_bytes, 0)) as size \
                 from member m join backups b on b.id = m.id group by m.root), \
             ranked as ( \
                 select root, row_number() over w as n, sum(size) over w as upto from chains \
                 window w as (order by newest desc, root)), \
             spared as ( \
                 select m.root from member m join hostings h on h.restore_backup_id = m.id \
                 where h.id = $1), \
             doomed as ( \
                 select m.id from member m join ranked r on r.root = m.root \
                 where r.n > 1 and r.upto + $2 > $3 and m.root not in (select root from spared)) \
             delete from backups b using doomed d where b.id = d.id returning {}",
            columns_of("b")
        );
        let rows: Vec<BackupRow> = sqlx::query_as(&q)
            .bind(hosting.0)
            .bind(other as i64)
            .bind(quota as i64)
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(Backup::from).collect())
    }
}
