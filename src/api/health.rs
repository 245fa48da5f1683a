//! Health, version and Prometheus metrics endpoints.

use std::sync::atomic::Ordering::Relaxed;
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
    let libvirt = match &st.vm {
        Some(vm) => check(vm.ping().await.map_err(|e| e.to_string()), t),
        None => json!({"status": "unknown", "detail": "no libvirt driver in this process"}),
    };
    let t = Instant::now();
    let nginx = match &st.proxy {
        Some(p) => check(p.health().await.map_err(|e| e.to_string()), t),
        None => json!({"status": "unknown", "detail": "no proxy driver in this process"}),
    };
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
    let all_ok = [&db, &libvirt, &nginx, &reconciler]
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
            "checks": {"database": db, "libvirt": libvirt, "nginx": nginx, "reconciler": reconciler},
        })),
    )
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let m = &st.metrics;
    let hb = m.heartbeat_ms.load(Relaxed);
    let age = if hb > 0 {
        (chrono::Utc::now().timestamp_millis() - hb) as f64 / 1000.0
    } else {
        -1.0
    };
    let rows: [(&str, &str, &str, String); 8] = [
        (
            "hostd_reconciles_total",
            "counter",
            "Reconciles run.",
            m.reconciles.load(Relaxed).to_string(),
        ),
        (
            "hostd_reconcile_errors_total",
            "counter",
            "Reconciles that failed.",
            m.errors.load(Relaxed).to_string(),
        ),
        (
            "hostd_repairs_total",
            "counter",
            "Drift repairs and orphan removals.",
            m.repairs.load(Relaxed).to_string(),
        ),
        (
            "hostd_resyncs_total",
            "counter",
            "Full resync passes.",
            m.resyncs.load(Relaxed).to_string(),
        ),
        (
            "hostd_queue_depth",
            "gauge",
            "Hostings queued or being reconciled.",
            m.queue_depth.load(Relaxed).to_string(),
        ),
        (
            "hostd_last_resync_duration_seconds",
            "gauge",
            "Duration of the last resync pass.",
            (m.last_pass_ms.load(Relaxed) as f64 / 1000.0).to_string(),
        ),
        (
            "hostd_heartbeat_age_seconds",
            "gauge",
            "Seconds since the last resync pass (-1: none).",
            age.to_string(),
        ),
        (
            "hostd_reconciler_leader",
            "gauge",
            "1 if this process holds the leader lease.",
            (m.is_leader.load(Relaxed) as u8).to_string(),
        ),
    ];
    let out: String = rows
        .iter()
        .map(|(name, kind, help, v)| {
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n")
        })
        .collect();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
