//! Health, version and Prometheus metrics endpoints. `health/detailed`
//! computes its dependency checks at most once per [`CACHE_FOR`], whoever
//! asks and however often (one `nginx -t` per period); version strings and
//! host names in it, and `/metrics` on the API listener, are for admins only
//! (the `HOSTD_METRICS_LISTEN` listener serves `/metrics` to anyone who can
//! reach it). The dependency checks themselves are `crate::checks`, shared
//! with `hostd doctor`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::auth::IsAdmin;
use super::error::ApiError;
use super::AppState;
use crate::checks;

/// How long a `health/detailed` answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// A computed `health/detailed` answer.
#[derive(Clone)]
pub struct Cached {
    pub at: Instant,
    pub code: StatusCode,
    pub body: serde_json::Value,
}

/// `GET /api/v1/health`: cheap liveness.
#[utoipa::path(get, path = "/api/v1/health", tag = "meta",
    responses((status = 200, description = "The process answers", body = Object, example = json!({"status": "ok"}))))]
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /api/v1/version`
#[utoipa::path(get, path = "/api/v1/version", tag = "meta",
    responses((status = 200, description = "Name and version", body = Object)))]
pub async fn version() -> impl IntoResponse {
    Json(json!({"name": "hostd", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /api/v1/health/detailed`: database, libvirt, nginx, reconciler,
/// guest isolation, Redis, capacity. Anyone sees each check's status; an
/// admin also sees the details (versions, the leader's host name).
#[utoipa::path(get, path = "/api/v1/health/detailed", tag = "meta",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Every check passed (an admin token adds details)", body = Object),
        (status = 503, description = "A check failed (same shape)", body = Object),
    ))]
pub async fn detailed(State(st): State<AppState>, IsAdmin(admin): IsAdmin) -> impl IntoResponse {
    let cached = cached(&st).await;
    let body = if admin {
        cached.body
    } else {
        redact(cached.body)
    };
    (cached.code, Json(body))
}

/// The `health/detailed` answer with every detail, computed at most once
/// per [`CACHE_FOR`] (the dashboard's admin page shows it too).
pub async fn cached(st: &AppState) -> Cached {
    {
        // Held while computing: concurrent callers wait for this one answer.
        let mut slot = st.health_cache.lock().await;
        match slot.as_ref() {
            Some(c) if c.at.elapsed() < CACHE_FOR => c.clone(),
            _ => {
                let (code, body) = compute(st).await;
                let c = Cached {
                    at: Instant::now(),
                    code,
                    body,
                };
                *slot = Some(c.clone());
                c
            }
        }
    }
}

/// Only each check's status, for callers who are not admins.
fn redact(mut body: serde_json::Value) -> serde_json::Value {
    if let Some(checks) = body["checks"].as_object_mut() {
        for c in checks.values_mut() {
            *c = json!({"status": c["status"].clone()});
        }
    }
    if let Some(o) = body.as_object_mut() {
        o.remove("domain_type_reason");
        o.remove("capacity");
        o.remove("warm_pool");
        o.remove("clone_templates");
        o.remove("nodes");
        o.remove("read_view");
    }
    body
}

async fn compute(st: &AppState) -> (StatusCode, serde_json::Value) {
    st.metrics.health_checks.inc();
    let db = checks::database(&st.store).await.json();
    let t = Instant::now();
    let heartbeat = st.store.last_heartbeat(&st.config.instance).await;
    let fresh = |age: f64| age < (st.config.resync.as_secs_f64() * 3.0 + 10.0);
    // An API-only process (a container) may not see the host: it shows the
    // host checks the reconciler made with its last heartbeat, if fresh.
    let remote = match &heartbeat {
        Ok(Some((_, age, stats))) if st.host_checks_remote && fresh(*age) => {
            stats.host_checks.clone()
        }
        _ => None,
    };
    let (libvirt, nginx, isolation) = match remote {
        Some(h) => {
            let from_reconciler = |name: &str| {
                let mut c = h.get(name).cloned().unwrap_or_else(
                    || json!({"status": "error", "detail": "not in the reconciler's heartbeat"}),
                );
                c["source"] = json!("reconciler");
                c
            };
            (
                from_reconciler("libvirt"),
                from_reconciler("nginx"),
                from_reconciler("guest_isolation"),
            )
        }
        None => (
            checks::libvirt(&*st.vm).await.json(),
            checks::nginx(&*st.proxy).await.json(),
            checks::guest_isolation(&st.config).await.json(),
        ),
    };
    let reconciler = match heartbeat {
        Ok(Some((holder, age, mut stats))) => {
            let fresh = fresh(age);
            stats.host_checks = None;
            json!({
                "status": if fresh { "ok" } else { "error" },
                "latency_ms": t.elapsed().as_secs_f64() * 1000.0,
                "leader": holder,
                "heartbeat_age_s": age,
                "counters": stats,
            })
        }
        Ok(None) => json!({"status": "error", "detail": "no reconciler heartbeat yet"}),
        Err(e) => json!({"status": "error", "detail": e.to_string()}),
    };
    let capacity = match (st.store.capacity_usage(None).await, st.vm.resources().await) {
        (Ok(usage), Ok(host)) => json!(crate::capacity::report(&usage, host, &st.config.capacity)),
        (Err(e), _) => json!({"status": "error", "detail": e.to_string()}),
        (_, Err(e)) => json!({"status": "error", "detail": e.to_string()}),
    };
    // The warm pool, as the store sees it (admins only, like capacity).
    let class = crate::domain::HostingSpec::default();
    // `desired` is per node (each node that takes new hostings keeps one).
    let warm_pool = match st.store.warm_pool_counts_by_node(&class).await {
        Ok(by_node) => {
            let c = crate::store::WarmPoolCounts::sum(by_node.values());
            let nodes: serde_json::Map<String, serde_json::Value> = (by_node.into_iter())
                .map(|(n, c)| {
                    let name = n.map_or_else(|| "(not placed)".to_string(), |n| n.to_string());
                    (
                        name,
                        json!({"guests": c.total, "ready": c.ready, "leaving": c.deleting}),
                    )
                })
                .collect();
            json!({"desired": st.config.warm_pool, "guests": c.total, "ready": c.ready,
                   "booting": c.total - c.ready, "leaving": c.deleting, "nodes": nodes,
                   "class": {"vcpus": class.vcpus, "memory_mib": class.memory_mib,
                             "disk_gib": class.disk_gib, "image": class.image.as_str()}})
        }
        Err(e) => json!({"status": "error", "detail": e.to_string()}),
    };
    // Templates for clones, from their files (admins only).
    let templates = json!({
        "enabled": st.config.clone_templates,
        "templates": crate::reconciler::clone_templates::on_disk_status(&st.config.state_dir, &st.config.instance),
    });
    // The nodes as the reconciler last saw them (admins only).
    let nodes = match st.store.list_nodes().await {
        Ok(n) => json!(n
            .into_iter()
            .map(crate::api::nodes::NodeView::from)
            .collect::<Vec<_>>()),
        Err(e) => json!({"status": "error", "detail": e.to_string()}),
    };
    // Redis down is not fatal (limits fall back to per-process memory):
    // degraded, but still 200.
    let redis = checks::redis(st.guard.ping_redis()).await.json();
    let all_ok = [&db, &libvirt, &nginx, &reconciler, &isolation]
        .iter()
        .all(|c| c["status"] != "error");
    let code = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = match (all_ok, redis["status"] == "ok") {
        (true, true) => "ok",
        _ => "degraded",
    };
    (
        code,
        json!({
            "status": status,
            "domain_type": st.config.domain_type.as_str(),
            "domain_type_reason": st.config.domain_type_reason,
            "checks": {"database": db, "libvirt": libvirt, "nginx": nginx, "reconciler": reconciler,
                       "guest_isolation": isolation, "redis": redis},
            "capacity": capacity,
            "warm_pool": warm_pool,
            "clone_templates": templates,
            "nodes": nodes,
            // This process's read view (admins only): live, sizes, and how
            // stale it ran over the last changes it applied.
            "read_view": st.store.view().map(|v| json!(v.stats())),
        }),
    )
}

/// `GET /metrics` on the API listener: admins only.
pub async fn metrics_admin(
    State(st): State<AppState>,
    IsAdmin(admin): IsAdmin,
) -> Result<impl IntoResponse, ApiError> {
    if !admin {
        return Err(ApiError::Forbidden);
    }
    Ok(metrics(State(st)).await)
}

/// `GET /metrics`: Prometheus text format (OpenMetrics).
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
}
