//! Health, version and Prometheus metrics endpoints.

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;

/// `GET /api/v1/health`: cheap liveness.
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /api/v1/version`
pub async fn version() -> impl IntoResponse {
    Json(json!({"name": "hostd", "version": env!("CARGO_PKG_VERSION")}))
}

fn check(ok: Result<String, String>, started: Instant) -> serde_json::Value {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match ok {
        Ok(detail) => json!({"status": "ok", "latency_ms": ms, "detail": detail}),
        Err(e) => json!({"status": "error", "latency_ms": ms, "detail": e}),
    }
}

/// `GET /api/v1/health/detailed`: database, libvirt, nginx, reconciler.
pub async fn detailed(State(st): State<AppState>) -> impl IntoResponse {
    let t = Instant::now();
    let db = check(
        st.store
            .ping()
            .await
            .map(|_| "postgres reachable".to_string())
            .map_err(|e| e.to_string()),
        t,
    );
    let t = Instant::now();
    let libvirt = check(st.vm.ping().await.map_err(|e| e.to_string()), t);
    let t = Instant::now();
    let nginx = check(st.proxy.health().await.map_err(|e| e.to_string()), t);
    let t = Instant::now();
    let reconciler = match st.store.last_heartbeat(&st.config.instance).await {
        Ok(Some((holder, age, stats))) => {
            let fresh = age < (st.config.resync.as_secs_f64() * 3.0 + 10.0);
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
    let t = Instant::now();
    let isolation = if st.config.real_guests() {
        let iso = crate::drivers::isolation::Isolation::default();
        check(
            iso.check().await.map_err(|e| format!("NOT in force: {e}")),
            t,
        )
    } else {
        json!({"status": "ok", "detail": "not needed: simulated hypervisor"})
    };
    let all_ok = [&db, &libvirt, &nginx, &reconciler, &isolation]
        .iter()
        .all(|c| c["status"] != "error");
    let code = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": if all_ok { "ok" } else { "degraded" },
            "domain_type": st.config.domain_type.as_str(),
            "domain_type_reason": st.config.domain_type_reason,
            "checks": {"database": db, "libvirt": libvirt, "nginx": nginx, "reconciler": reconciler, "guest_isolation": isolation},
            "capacity": capacity,
        })),
    )
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
