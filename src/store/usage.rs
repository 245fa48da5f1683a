//! Usage records (migration `20261212000001_usage`): the spans the status
//! writes open and close, read back as totals over a range, with amounts
//! where prices (`rates`) are set. Written only by triggers and the
//! finalizer, in the transactions of the state changes they record.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Result, Store};
use crate::domain::UserId;

/// Seconds of a span of `kind` count as `quantity × seconds`; the counter
/// kind (`egress_bytes`) counts its rows' bytes.
pub const KINDS: [&str; 5] = [
    "vcpu",
    "memory_mib",
    "disk_gib",
    "backup_gib",
    "egress_bytes",
];

/// One usage record, clipped to the range asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UsageSpan {
    pub hosting_id: Uuid,
    pub owner_id: Uuid,
    /// vcpu, memory_mib, disk_gib, backup_gib or egress_bytes.
    pub kind: String,
    /// vCPUs, MiB, GiB, or (egress_bytes) the bytes sent in its hour.
    pub quantity: f64,
    pub start: DateTime<Utc>,
    /// `null`: still open (in use now).
    pub end: Option<DateTime<Utc>>,
    /// Seconds of it inside the range (up to now for an open one).
    pub seconds_in_range: f64,
    /// quantity × seconds_in_range, or (egress_bytes) the bytes.
    pub amount_in_range: f64,
}

/// What was used over a range.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct UsageTotals {
    pub vcpu_seconds: f64,
    pub memory_mib_seconds: f64,
    pub disk_gib_seconds: f64,
    pub backup_gib_seconds: f64,
    pub egress_bytes: f64,
    /// What it costs at the prices set (`rates`), by currency; empty when
    /// no price is set.
    pub charges: BTreeMap<String, f64>,
}

impl UsageTotals {
    fn add(&mut self, s: &UsageSpan) {
        let t = match s.kind.as_str() {
            "vcpu" => &mut self.vcpu_seconds,
            "memory_mib" => &mut self.memory_mib_seconds,
            "disk_gib" => &mut self.disk_gib_seconds,
            "backup_gib" => &mut self.backup_gib_seconds,
            _ => &mut self.egress_bytes,
        };
        *t += s.amount_in_range;
    }
}

/// A price: per unit and hour for the span kinds, per GiB for egress.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Rate {
    pub kind: String,
    pub price: f64,
    pub currency: String,
    pub from: DateTime<Utc>,
    /// `null`: until another price is set.
    pub until: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct RateRow {
    kind: String,
    price: f64,
    currency: String,
    from_: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct SpanRow {
    hosting_id: Uuid,
    owner_id: Uuid,
    kind: String,
    quantity: f64,
    start: DateTime<Utc>,
    end_: Option<DateTime<Utc>>,
    seconds: f64,
}

impl SpanRow {
    fn into_span(self) -> UsageSpan {
        let seconds = self.seconds.max(0.0);
        let amount = if self.kind == "egress_bytes" {
            self.quantity
        } else {
            self.quantity * seconds
        };
        UsageSpan {
            hosting_id: self.hosting_id,
            owner_id: self.owner_id,
            kind: self.kind,
            quantity: self.quantity,
            start: self.start,
            end: self.end_,
            seconds_in_range: seconds,
            amount_in_range: amount,
        }
    }
}

/// The spans overlapping `[$2, $3)` (an owner's when `$1` is not null),
/// clipped to it and to `$4` (now); an egress row counts when its hour
/// starts in the range.
const SPANS: &str = "select hosting_id, owner_id, kind, quantity::float8 as quantity, \
       lower(period) as start, upper(period) as end_, \
       extract(epoch from (least(coalesce(upper(period), $4), $3) - greatest(lower(period), $2)))::float8 as seconds \
     from usage where ($1::uuid is null or owner_id = $1) and period && tstzrange($2, $3, '[)') \
       and (kind <> 'egress_bytes' or lower(period) >= $2) \
     order by lower(period), kind, hosting_id";

/// What the spans cost at the prices valid while they ran, by currency.
const CHARGES: &str = "select r.currency, sum(case when u.kind = 'egress_bytes' \
         then u.quantity / 1073741824.0 * r.price \
         else u.quantity * r.price * extract(epoch from ( \
           least(coalesce(upper(u.period), $4), $3, coalesce(upper(r.valid), 'infinity')) \
           - greatest(lower(u.period), $2, lower(r.valid)))) / 3600.0 end)::float8 \
     from usage u join rates r on r.kind = u.kind and r.valid && u.period \
       and (u.kind <> 'egress_bytes' or r.valid @> lower(u.period)) \
     where ($1::uuid is null or u.owner_id = $1) and u.period && tstzrange($2, $3, '[)') \
       and (u.kind <> 'egress_bytes' or lower(u.period) >= $2) \
       and least(coalesce(upper(u.period), $4), $3, coalesce(upper(r.valid), 'infinity')) \
           > greatest(lower(u.period), $2, lower(r.valid)) \
     group by r.currency";

impl Store {
    /// Everything `owner` used over `[from, to)` (every owner's: `None`):
    /// the totals, their charges, and the spans clipped to the range.
    pub async fn usage(
        &self,
        owner: Option<UserId>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(UsageTotals, Vec<UsageSpan>)> {
        let now = self.now();
        let owner = owner.map(|o| o.0);
        let spans: Vec<UsageSpan> = sqlx::query_as::<_, SpanRow>(SPANS)
            .bind(owner)
            .bind(from)
            .bind(to)
            .bind(now)
            .fetch_all(&self.pool())
            .await?
            .into_iter()
            .map(SpanRow::into_span)
            .collect();
        let mut totals = UsageTotals::default();
        for s in &spans {
            totals.add(s);
        }
        let charges: Vec<(String, Option<f64>)> = sqlx::query_as(CHARGES)
            .bind(owner)
            .bind(from)
            .bind(to)
            .bind(now)
            .fetch_all(&self.pool())
            .await?;
        totals.charges = charges
            .into_iter()
            .map(|(c, a)| (c, a.unwrap_or(0.0)))
            .collect();
        Ok((totals, spans))
    }

    /// The spans open now, for checks: (hosting, kind, quantity).
    pub async fn open_usage(&self) -> Result<Vec<(Uuid, String, f64)>> {
        Ok(sqlx::query_as(
            "select hosting_id, kind, quantity::float8 from usage where upper_inf(period) \
             order by hosting_id, kind",
        )
        .fetch_all(&self.pool())
        .await?)
    }

    /// Adds each hosting's bytes to its egress for the clock hour of `at`
    /// (one statement; pool guests and hostings gone are left out).
    pub async fn add_egress(&self, bytes: &[(Uuid, i64)], at: DateTime<Utc>) -> Result<()> {
        let bytes: Vec<&(Uuid, i64)> = bytes.iter().filter(|(_, b)| *b > 0).collect();
        if bytes.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into usage (hosting_id, owner_id, kind, quantity, period) \
             select t.h, x.user_id, 'egress_bytes', t.b, \
               tstzrange(date_trunc('hour', $3::timestamptz), date_trunc('hour', $3::timestamptz) + interval '1 hour', '[)') \
             from unnest($1::uuid[], $2::int8[]) as t(h, b) join hostings x on x.id = t.h and not x.warm_pool \
             on conflict (hosting_id, (lower(period))) where kind = 'egress_bytes' \
               do update set quantity = usage.quantity + excluded.quantity",
        )
        .bind(bytes.iter().map(|(h, _)| *h).collect::<Vec<_>>())
        .bind(bytes.iter().map(|(_, b)| *b).collect::<Vec<_>>())
        .bind(at)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// The prices, oldest first.
    pub async fn rates(&self) -> Result<Vec<Rate>> {
        Ok(sqlx::query_as::<_, RateRow>(
            "select kind, price::float8 as price, currency, lower(valid) as from_, upper(valid) as until \
             from rates order by kind, lower(valid)",
        )
        .fetch_all(&self.pool())
        .await?
        .into_iter()
        .map(|r| Rate {
            kind: r.kind,
            price: r.price,
            currency: r.currency,
            from: r.from_,
            until: r.until,
        })
        .collect())
    }

    /// Sets the price of `kind` from `from` on: the price valid then ends
    /// there, a later one is removed. One transaction.
    pub async fn set_rate(
        &self,
        kind: &str,
        price: f64,
        currency: &str,
        from: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("delete from rates where kind = $1 and lower(valid) >= $2")
            .bind(kind)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "update rates set valid = tstzrange(lower(valid), $2, '[)') \
             where kind = $1 and valid @> $2",
        )
        .bind(kind)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "insert into rates (kind, price, currency, valid) \
             values ($1, $2::float8::numeric, $3, tstzrange($4, null, '[)'))",
        )
        .bind(kind)
        .bind(price)
        .bind(currency)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
