//! What the operator's alert rules watch that only the database knows
//! (`deploy/prometheus/hostd-rules.yml`): backups overdue and the first
//! certificate to expire. Read by each resync into gauges.

use chrono::{DateTime, Utc};

use super::{Result, Store};

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertFacts {
    /// Hostings (not warm-pool guests, not being deleted, with a disk) whose
    /// newest completed backup, or creation without one, is older than twice
    /// the backup interval. 0 without a schedule.
    pub backups_overdue: i64,
    /// When the first Ready certificate expires.
    pub earliest_certificate_expiry: Option<DateTime<Utc>>,
}

impl Store {
    /// Reads the [`AlertFacts`] (`interval`: the backup schedule, if any).
    pub async fn alert_facts(&self, interval: Option<std::time::Duration>) -> Result<AlertFacts> {
        let overdue_after = interval.map(|i| 2.0 * i.as_secs_f64());
        let (backups_overdue, earliest_certificate_expiry): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "select \
                   (select count(*) from hostings h join hosting_status s on s.hosting_id = h.id \
                    where $1::float8 is not null and h.deletion_requested_at is null \
                      and not h.warm_pool and s.disk_created \
                      and coalesce((select max(b.completed_at) from backups b \
                                    where b.hosting_id = h.id and b.state = 'Completed'), h.created_at) \
                          < now() - make_interval(secs => $1::float8)), \
                   (select min(not_after) from certificates where state = 'Ready')",
            )
            .bind(overdue_after)
            .fetch_one(&self.pool())
            .await?;
        Ok(AlertFacts {
            backups_overdue,
            earliest_certificate_expiry,
        })
    }
}
