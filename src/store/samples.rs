//! Per-hosting statistics (migration `20261212000002_hosting_samples`):
//! the reconciler's samples, written in one statement per round, read back
//! in buckets for graphs, and downsampled (raw → 5 minutes → 1 hour) so
//! their size stays bounded.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Result, Store};
use crate::domain::HostingId;

/// How long raw samples, five-minute and hourly buckets are kept.
pub const KEEP_RAW: chrono::Duration = chrono::Duration::days(1);
pub const KEEP_5M: chrono::Duration = chrono::Duration::days(30);
pub const KEEP_1H: chrono::Duration = chrono::Duration::days(365);

/// One hosting's sample over `seconds` ending at `at`: counters are the
/// interval's amounts, gauges the values seen; `None` where the source
/// could not tell.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub hosting: HostingId,
    pub at: DateTime<Utc>,
    pub seconds: f32,
    pub cpu_ns: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub disk_read: Option<i64>,
    pub disk_write: Option<i64>,
    pub disk_alloc_bytes: Option<i64>,
    pub net_rx: Option<i64>,
    pub net_tx: Option<i64>,
    pub http: Option<HttpCounts>,
}

/// What the host nginx served for one site over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounts {
    pub requests: i32,
    pub bytes: i64,
    pub s2xx: i32,
    pub s3xx: i32,
    pub s4xx: i32,
    pub s5xx: i32,
}

/// One point of a graph: rates over its bucket, averages of gauges.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Point {
    /// The bucket's start.
    pub at: DateTime<Utc>,
    /// Seconds of samples in it (less than the step where none were taken).
    pub seconds: f64,
    /// CPU use, percent of one vCPU (200 = two vCPUs fully busy).
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<f64>,
    pub disk_read_bps: Option<f64>,
    pub disk_write_bps: Option<f64>,
    pub disk_allocation_bytes: Option<f64>,
    pub net_rx_bps: Option<f64>,
    pub net_tx_bps: Option<f64>,
    pub requests_per_s: Option<f64>,
    pub http_bytes_per_s: Option<f64>,
    /// Responses by status class over the bucket: 2xx, 3xx, 4xx, 5xx.
    pub status: Option<[i64; 4]>,
}

#[derive(sqlx::FromRow)]
struct PointRow {
    at: DateTime<Utc>,
    seconds: f64,
    cpu_ns: Option<f64>,
    memory: Option<f64>,
    disk_read: Option<f64>,
    disk_write: Option<f64>,
    disk_alloc: Option<f64>,
    net_rx: Option<f64>,
    net_tx: Option<f64>,
    requests: Option<f64>,
    http_bytes: Option<f64>,
    s2xx: Option<i64>,
    s3xx: Option<i64>,
    s4xx: Option<i64>,
    s5xx: Option<i64>,
}

impl PointRow {
    fn into_point(self) -> Point {
        let per_s = |v: Option<f64>| v.map(|v| v / self.seconds);
        Point {
            at: self.at,
            seconds: self.seconds,
            cpu_percent: self.cpu_ns.map(|ns| ns / 1e9 / self.seconds * 100.0),
            memory_bytes: self.memory,
            disk_read_bps: per_s(self.disk_read),
            disk_write_bps: per_s(self.disk_write),
            disk_allocation_bytes: self.disk_alloc,
            net_rx_bps: per_s(self.net_rx),
            net_tx_bps: per_s(self.net_tx),
            requests_per_s: per_s(self.requests),
            http_bytes_per_s: per_s(self.http_bytes),
            status: match (self.s2xx, self.s3xx, self.s4xx, self.s5xx) {
                (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
                _ => None,
            },
        }
    }
}

/// The columns a downsampling merge sums (gauges are sums too).
const SUMMED: &str = "cpu_ns, memory_sum, disk_read, disk_write, disk_alloc_sum, net_rx, net_tx, \
                      requests, http_bytes, s2xx, s3xx, s4xx, s5xx";

impl Store {
    /// Writes one round of samples in one statement.
    pub async fn insert_samples(&self, samples: &[Sample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        let col = |f: &dyn Fn(&Sample) -> Option<i64>| samples.iter().map(f).collect::<Vec<_>>();
        let http = |f: &dyn Fn(&HttpCounts) -> i64| {
            samples
                .iter()
                .map(|s| s.http.as_ref().map(f))
                .collect::<Vec<Option<i64>>>()
        };
        sqlx::query(
            "insert into hosting_samples (hosting_id, resolution, at, seconds, samples, cpu_ns, memory_sum, \
               disk_read, disk_write, disk_alloc_sum, net_rx, net_tx, requests, http_bytes, s2xx, s3xx, s4xx, s5xx) \
             select h, 0, a, s, 1, c, m, dr, dw, da, rx, tx, rq::int, hb, x2::int, x3::int, x4::int, x5::int \
             from unnest($1::uuid[], $2::timestamptz[], $3::real[], $4::int8[], $5::int8[], $6::int8[], \
               $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
               $14::int8[], $15::int8[], $16::int8[]) \
               as t(h, a, s, c, m, dr, dw, da, rx, tx, rq, hb, x2, x3, x4, x5) \
             where exists (select 1 from hostings where id = h) \
             on conflict (hosting_id, resolution, at) do nothing",
        )
        .bind(samples.iter().map(|s| s.hosting.0).collect::<Vec<Uuid>>())
        .bind(samples.iter().map(|s| s.at).collect::<Vec<_>>())
        .bind(samples.iter().map(|s| s.seconds).collect::<Vec<f32>>())
        .bind(col(&|s| s.cpu_ns))
        .bind(col(&|s| s.memory_bytes))
        .bind(col(&|s| s.disk_read))
        .bind(col(&|s| s.disk_write))
        .bind(col(&|s| s.disk_alloc_bytes))
        .bind(col(&|s| s.net_rx))
        .bind(col(&|s| s.net_tx))
        .bind(http(&|h| h.requests.into()))
        .bind(http(&|h| h.bytes))
        .bind(http(&|h| h.s2xx.into()))
        .bind(http(&|h| h.s3xx.into()))
        .bind(http(&|h| h.s4xx.into()))
        .bind(http(&|h| h.s5xx.into()))
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    /// Moves samples past their resolution's age into the next one (raw
    /// → 5-minute buckets → hourly ones, merged with what is there) and
    /// deletes hourly buckets past a year, each step one statement. Returns
    /// the rows moved or deleted.
    pub async fn downsample(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut n = 0;
        for (from, to, keep) in [(0, 300, KEEP_RAW), (300, 3600, KEEP_5M)] {
            let sums = SUMMED
                .split(", ")
                .map(|c| format!("sum({c})"))
                .collect::<Vec<_>>()
                .join(", ");
            let merge = SUMMED
                .split(", ")
                .map(|c| format!("{c} = hosting_samples.{c} + excluded.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "with moved as (delete from hosting_samples where resolution = $1 and at < $3 returning *) \
                 insert into hosting_samples (hosting_id, resolution, at, seconds, samples, {SUMMED}) \
                 select hosting_id, $2, to_timestamp(floor(extract(epoch from at) / $2) * $2), \
                   sum(seconds), sum(samples), {sums} \
                 from moved where exists (select 1 from hostings where id = moved.hosting_id) \
                 group by hosting_id, 3 \
                 on conflict (hosting_id, resolution, at) do update set \
                   seconds = hosting_samples.seconds + excluded.seconds, \
                   samples = hosting_samples.samples + excluded.samples, {merge}"
            );
            n += sqlx::query(&sql)
                .bind(from)
                .bind(to)
                .bind(now - keep)
                .execute(&self.pool())
                .await?
                .rows_affected();
        }
        n += sqlx::query("delete from hosting_samples where resolution = 3600 and at < $1")
            .bind(now - KEEP_1H)
            .execute(&self.pool())
            .await?
            .rows_affected();
        Ok(n)
    }

    /// The hosting's samples since `from`, in buckets of `step` seconds.
    pub async fn sample_points(
        &self,
        hosting: HostingId,
        from: DateTime<Utc>,
        step: u32,
    ) -> Result<Vec<Point>> {
        let rows = sqlx::query_as::<_, PointRow>(
            "select to_timestamp(floor(extract(epoch from at) / $3) * $3) as at, \
               sum(seconds)::float8 as seconds, sum(cpu_ns)::float8 as cpu_ns, \
               (sum(memory_sum)::float8 / nullif(sum(samples) filter (where memory_sum is not null), 0)) as memory, \
               sum(disk_read)::float8 as disk_read, sum(disk_write)::float8 as disk_write, \
               (sum(disk_alloc_sum)::float8 / nullif(sum(samples) filter (where disk_alloc_sum is not null), 0)) as disk_alloc, \
               sum(net_rx)::float8 as net_rx, sum(net_tx)::float8 as net_tx, \
               sum(requests)::float8 as requests, sum(http_bytes)::float8 as http_bytes, \
               sum(s2xx)::int8 as s2xx, sum(s3xx)::int8 as s3xx, sum(s4xx)::int8 as s4xx, sum(s5xx)::int8 as s5xx \
             from hosting_samples where hosting_id = $1 and at >= $2 and resolution <= $3 \
             group by 1 order by 1",
        )
        .bind(hosting.0)
        .bind(from)
        .bind(step as i32)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(PointRow::into_point).collect())
    }

    /// Rows and bytes the samples table holds (with its indexes).
    pub async fn samples_size(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "select (select count(*) from hosting_samples), pg_total_relation_size('hosting_samples')",
        )
        .fetch_one(&self.pool())
        .await?)
    }
}
