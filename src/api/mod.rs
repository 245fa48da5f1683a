//! The REST API (axum). It validates input and records desired state; it never
//! touches VMs or nginx. Routes, shared state and the request body limit live here.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;
use crate::drivers::{ProxyDriver, VmDriver};
use crate::store::Store;
use crate::telemetry::Metrics;

pub mod auth;
pub mod error;
pub mod health;
pub mod hosting;
pub mod limits;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub jwt: auth::Jwt,
    /// bcrypt hash of a random password: verified against when a login names no
    /// user, so unknown users and wrong passwords take the same time.
    pub dummy_hash: String,
    /// Image names the catalogue knows (validated at create).
    pub catalog_names: Arc<Vec<String>>,
    /// The hypervisor driver, used read-only by `health/detailed` (every
    /// process mode has one; the API never changes anything through it).
    pub vm: Arc<dyn VmDriver>,
    /// The nginx driver, likewise only for `health/detailed`.
    pub proxy: Arc<dyn ProxyDriver>,
    /// This process's Prometheus metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Rate limits, token revocations, the bcrypt bound.
    pub guard: Arc<limits::Guard>,
    /// The last `health/detailed` answer and when it was computed.
    pub health_cache: Arc<tokio::sync::Mutex<Option<health::Cached>>>,
}

async fn fallback() -> error::ApiError {
    error::ApiError::NotFound("no such endpoint")
}

/// The router of the metrics-only listener (`HOSTD_METRICS_LISTEN`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(fallback)
        .with_state(state)
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/me", get(auth::me))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/password", axum::routing::put(auth::change_password))
        .route("/host", post(hosting::create))
        .route(
            "/host/my",
            get(hosting::get_mine)
                .patch(hosting::patch_mine)
                .delete(hosting::delete_mine),
        )
        .route("/host/my/reset", post(hosting::reset_mine))
        .route(
            "/host/my/backups",
            get(hosting::list_backups).post(hosting::create_backup),
        )
        .route("/host/my/restore", post(hosting::restore_mine))
        .route("/admin/hostings", get(hosting::admin_list))
        .route("/health", get(health::health))
        .route("/health/detailed", get(health::detailed))
        .route("/version", get(health::version));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(health::metrics_admin))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
