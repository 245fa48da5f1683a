//! Usage for billing: a tenant's own (`GET /api/v1/host/my/usage`), every
//! tenant's as CSV for an admin (`GET /api/v1/admin/usage.csv`), and the
//! optional prices (`/api/v1/admin/rates`). Read-only but for the prices;
//! the records are written by the reconciler (see `store::usage`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::admin::Admin;
use super::auth::AuthUser;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::store::usage::{Rate, UsageSpan, UsageTotals, KINDS};

/// The longest range one request may ask for.
const MAX_RANGE_DAYS: i64 = 400;

/// `?from=&to=`, RFC 3339 (default: from the start of this month to now).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// Start of the range, RFC 3339 (default: the first of this month, 00:00 UTC).
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive (default: now).
    to: Option<String>,
}

/// A range parsed from a [`RangeQuery`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl RangeQuery {
    /// Parses the range, with defaults; 400 with what is wrong otherwise.
    pub fn parse(&self, now: DateTime<Utc>) -> Result<Range, ApiError> {
        let at = |field: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
            v.as_deref()
                .map(|s| {
                    DateTime::parse_from_rfc3339(s.trim())
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| {
                            ApiError::BadRequest(format!(
                                "{field}: not an RFC 3339 time (like 2026-12-01T00:00:00Z)"
                            ))
                        })
                })
                .transpose()
        };
        let month = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now);
        let from = at("from", &self.from)?.unwrap_or(month);
        let to = at("to", &self.to)?.unwrap_or(now);
        if from >= to {
            return Err(ApiError::BadRequest("from must be before to".into()));
        }
        if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
            return Err(ApiError::BadRequest(format!(
                "a range covers at most {MAX_RANGE_DAYS} days"
            )));
        }
        Ok(Range { from, to })
    }
}

fn query(q: Result<Query<RangeQuery>, QueryRejection>) -> Result<RangeQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// The answer of `GET /api/v1/host/my/usage`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub totals: UsageTotals,
    /// The records overlapping the range, oldest first.
    pub spans: Vec<UsageSpan>,
}

/// `GET /api/v1/host/my/usage?from=&to=`: what the caller's hostings (this
/// one and any deleted before) used over the range.
#[utoipa::path(get, path = "/api/v1/host/my/usage", tag = "hosting",
    security(("bearer" = [])),
    params(RangeQuery),
    responses(
        (status = 200, description = "Totals over the range and the records", body = UsageView),
        (status = 400, description = "A malformed or too long range", body = ErrorBody),
    ))]
pub async fn my_usage(
    State(st): State<AppState>,
    auth: AuthUser,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let range = query(q)?.parse(st.store.now())?;
    Ok(Json(usage_of(&st, Some(auth.id), range).await?))
}

/// What `user` (everyone: `None`) used over `range`.
pub async fn usage_of(
    st: &AppState,
    user: Option<crate::domain::UserId>,
    range: Range,
) -> Result<UsageView, ApiError> {
    let (totals, spans) = st.store.usage(user, range.from, range.to).await?;
    Ok(UsageView {
        from: range.from,
        to: range.to,
        totals,
        spans,
    })
}

/// `GET /api/v1/admin/usage.csv?from=&to=`: every record overlapping the
/// range, one line each, with its owner's username (empty once the
/// account is gone).
#[utoipa::path(get, path = "/api/v1/admin/usage.csv", tag = "admin",
    security(("bearer" = [])),
    params(RangeQuery),
    responses(
        (status = 200, description = "CSV: owner_id, username, hosting_id, kind, quantity, start, end, seconds_in_range, amount_in_range", content_type = "text/csv", body = String),
        (status = 400, description = "A malformed or too long range", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
    ))]
pub async fn admin_usage_csv(
    State(st): State<AppState>,
    auth: AuthUser,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let range = query(q)?.parse(st.store.now())?;
    let (_, spans) = st.store.usage(None, range.from, range.to).await?;
    let names: std::collections::HashMap<uuid::Uuid, String> = st
        .store
        .list_accounts()
        .await?
        .into_iter()
        .map(|u| (u.id.0, u.username.to_string()))
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"usage.csv\"",
            ),
        ],
        csv(&spans, &names),
    ))
}

/// The CSV of `spans`. Every field is a UUID, a number, a time, a kind or
/// a username (letters, digits, '-'), so none needs quoting.
pub fn csv(spans: &[UsageSpan], names: &std::collections::HashMap<uuid::Uuid, String>) -> String {
    let mut out = String::from(
        "owner_id,username,hosting_id,kind,quantity,start,end,seconds_in_range,amount_in_range\n",
    );
    for s in spans {
        let end = s.end.map(|e| e.to_rfc3339()).unwrap_or_default();
        let name = names.get(&s.owner_id).map(String::as_str).unwrap_or("");
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{:.3},{:.3}\n",
            s.owner_id,
            name,
            s.hosting_id,
            s.kind,
            s.quantity,
            s.start.to_rfc3339(),
            end,
            s.seconds_in_range,
            s.amount_in_range
        ));
    }
    out
}

/// `GET /api/v1/admin/rates`: the prices, past and current.
#[utoipa::path(get, path = "/api/v1/admin/rates", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every price, oldest first per kind", body = Vec<Rate>),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
    ))]
pub async fn list_rates(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    Ok(Json(st.store.rates().await?))
}

/// The body of `POST /api/v1/admin/rates`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRate {
    /// vcpu, memory_mib, disk_gib, backup_gib or egress_bytes.
    pub kind: String,
    /// Per unit and hour (per GiB for egress_bytes), at least 0.
    pub price: f64,
    /// ISO 4217 code, like EUR.
    pub currency: String,
    /// From when (RFC 3339; default now). The price valid then ends there.
    #[serde(default)]
    pub from: Option<String>,
}

/// `POST /api/v1/admin/rates`: sets a price from a time on (201).
#[utoipa::path(post, path = "/api/v1/admin/rates", tag = "admin",
    security(("bearer" = [])),
    request_body = SetRate,
    responses(
        (status = 201, description = "Every price, with the new one", body = Vec<Rate>),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 422, description = "An unknown kind, a negative price, a malformed currency or time", body = ErrorBody),
    ))]
pub async fn set_rate(
    State(st): State<AppState>,
    auth: AuthUser,
    body: Result<Json<SetRate>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::of(auth.id, auth.username.as_str(), auth.role)?;
    let Json(b) = body?;
    let bad = |m: &str| Err(ApiError::Unprocessable(m.to_string()));
    if !KINDS.contains(&b.kind.as_str()) {
        return bad("kind: one of vcpu, memory_mib, disk_gib, backup_gib, egress_bytes");
    }
    if !(b.price.is_finite() && (0.0..=1e9).contains(&b.price)) {
        return bad("price: a number from 0 to 1000000000");
    }
    if !(b.currency.len() == 3 && b.currency.bytes().all(|c| c.is_ascii_uppercase())) {
        return bad("currency: three capital letters (ISO 4217), like EUR");
    }
    let from = match &b.from {
        None => st.store.now(),
        Some(s) => match DateTime::parse_from_rfc3339(s.trim()) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => return bad("from: an RFC 3339 time"),
        },
    };
    st.store
        .set_rate(&b.kind, b.price, &b.currency, from)
        .await?;
    tracing::info!(admin = %admin.username, kind = %b.kind, price = b.price, currency = %b.currency, %from, "rate set");
    Ok((StatusCode::CREATED, Json(st.store.rates().await?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<&str>, to: Option<&str>) -> RangeQuery {
        RangeQuery {
            from: from.map(String::from),
            to: to.map(String::from),
        }
    }

    #[test]
    fn ranges_parse_with_defaults_and_refuse_what_is_wrong() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let r = q(None, None).parse(now).unwrap();
        assert_eq!(r.from, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(r.to, now);
        let r = q(Some("2026-12-07T10:00:00+01:00"), None)
            .parse(now)
            .unwrap();
        assert_eq!(r.from, Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap());
        for (f, t) in [
            (Some("yesterday"), None),
            (None, Some("2026-13-01T00:00:00Z")),
            (Some("2026-12-07T12:00:00Z"), Some("2026-12-07T12:00:00Z")),
            (Some("2024-01-01T00:00:00Z"), None),
        ] {
            assert!(q(f, t).parse(now).is_err(), "{f:?} {t:?}");
        }
    }
}
