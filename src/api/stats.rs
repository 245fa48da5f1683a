//! A tenant's statistics: `GET /api/v1/host/my/stats?range=1h|24h|30d`,
//! the points the dashboard draws and `hostctl top` prints. Read-only; the
//! reconciler samples (see `reconciler::stats`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::AuthUser;
use super::error::{ApiError, ErrorBody};
use super::hosting::hosting_of;
use super::AppState;
use crate::store::samples::Point;

/// `?range=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// `1h` (15-second points), `24h` (5-minute points) or `30d` (hourly
    /// points); default `1h`.
    range: Option<String>,
}

/// A range the graphs offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StatsRange {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "30d")]
    Month,
}

impl StatsRange {
    /// Parses `1h`, `24h` or `30d`.
    pub fn parse(s: Option<&str>) -> Result<StatsRange, ApiError> {
        match s.map(str::trim) {
            None | Some("1h") => Ok(StatsRange::Hour),
            Some("24h") => Ok(StatsRange::Day),
            Some("30d") => Ok(StatsRange::Month),
            Some(_) => Err(ApiError::BadRequest(
                "range: one of 1h, 24h, 30d".to_string(),
            )),
        }
    }

    /// How far back, and the bucket size in seconds (at least the
    /// sampling period, for `1h`).
    pub fn span(self, sample_secs: u64) -> (chrono::Duration, u32) {
        match self {
            StatsRange::Hour => (
                chrono::Duration::hours(1),
                sample_secs.clamp(15, 3600) as u32,
            ),
            StatsRange::Day => (chrono::Duration::hours(24), 300),
            StatsRange::Month => (chrono::Duration::days(30), 3600),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatsRange::Hour => "1h",
            StatsRange::Day => "24h",
            StatsRange::Month => "30d",
        }
    }
}

/// The answer of `GET /api/v1/host/my/stats`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsView {
    pub range: StatsRange,
    /// Seconds per point.
    pub step_seconds: u32,
    /// Seconds between samples (`HOSTD_STATS_SECS`; 0: none are taken).
    pub sample_seconds: u64,
    /// Oldest first; a bucket without samples has no point.
    pub points: Vec<Point>,
}

/// The points of `rec`'s statistics over `range`.
pub async fn stats_of(
    st: &AppState,
    rec: &crate::store::HostingRecord,
    range: StatsRange,
) -> Result<StatsView, ApiError> {
    let sample_seconds = st.config.stats.interval.map_or(0, |d| d.as_secs());
    let (back, step) = range.span(sample_seconds);
    let from = chrono::Utc::now() - back;
    let points = st.store.sample_points(rec.id, from, step).await?;
    Ok(StatsView {
        range,
        step_seconds: step,
        sample_seconds,
        points,
    })
}

/// `GET /api/v1/host/my/stats?range=1h|24h|30d`: the hosting's CPU,
/// memory, disk, network and HTTP numbers over the range.
#[utoipa::path(get, path = "/api/v1/host/my/stats", tag = "hosting",
    security(("bearer" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "Points over the range, oldest first", body = StatsView),
        (status = 400, description = "An unknown range", body = ErrorBody),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
    ))]
pub async fn my_stats(
    State(st): State<AppState>,
    auth: AuthUser,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let range = StatsRange::parse(q.range.as_deref())?;
    let rec = hosting_of(&st, auth.id).await?;
    Ok(Json(stats_of(&st, &rec, range).await?))
}
