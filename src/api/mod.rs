//! The REST API (axum). It validates input and records desired state; it never
//! touches VMs or nginx. Routes, shared state and the request body limit live here.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use crate::config::Config;
use crate::drivers::{ProxyDriver, VmDriver};
use crate::store::Store;
use crate::telemetry::Metrics;

pub mod admin;
pub mod auth;
pub mod domains;
pub mod error;
pub mod health;
pub mod hosting;
pub mod limits;
pub mod nodes;
pub mod openapi;
pub mod stats;
pub mod usage;
pub mod web;

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
    /// An API-only process: `health/detailed` shows the host checks
    /// (libvirt, nginx, guest isolation) from the reconciler's heartbeat
    /// when it has them, since this process may not see the host.
    pub host_checks_remote: bool,
    /// This process's Prometheus metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Rate limits, token revocations, the bcrypt bound.
    pub guard: Arc<limits::Guard>,
    /// The last `health/detailed` answer and when it was computed.
    pub health_cache: Arc<tokio::sync::Mutex<Option<health::Cached>>>,
    /// The dashboard's open live views.
    pub web: Arc<web::WebState>,
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

/// The `/api/v1` routes and their OpenAPI document, from one list: each
/// handler is routed at the path its `#[utoipa::path]` names.
pub fn api_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::{router::OpenApiRouter, routes};
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::me, auth::delete_me))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::change_password))
        .routes(routes!(hosting::create))
        .routes(routes!(
            hosting::get_mine,
            hosting::patch_mine,
            hosting::delete_mine
        ))
        .routes(routes!(hosting::reset_mine))
        .routes(routes!(hosting::console_mine))
        .routes(routes!(hosting::list_backups, hosting::create_backup))
        .routes(routes!(hosting::restore_mine))
        .routes(routes!(usage::my_usage))
        .routes(routes!(stats::my_stats))
        .routes(routes!(usage::admin_usage_csv))
        .routes(routes!(usage::list_rates, usage::set_rate))
        .routes(routes!(domains::add_domain, domains::list_domains))
        .routes(routes!(domains::remove_domain))
        .routes(routes!(admin::admin_list))
        .routes(routes!(admin::admin_patch, admin::admin_delete))
        .routes(routes!(admin::admin_users))
        .routes(routes!(admin::admin_set_role))
        .routes(routes!(nodes::list_nodes, nodes::add_node))
        .routes(routes!(nodes::get_node, nodes::remove_node))
        .routes(routes!(nodes::cordon_node))
        .routes(routes!(nodes::uncordon_node))
        .routes(routes!(nodes::fence_node))
        .routes(routes!(nodes::unfence_node))
        .routes(routes!(nodes::evacuate_node))
        .routes(routes!(nodes::drain_node))
        .routes(routes!(health::health))
        .routes(routes!(health::detailed))
        .routes(routes!(health::version))
        .routes(routes!(openapi_json))
        .split_for_parts();
    (router, openapi::standard_errors(doc))
}

/// `GET /api/v1/openapi.json`: this API's contract.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
async fn openapi_json(
    axum::Extension(OpenApiJson(doc)): axum::Extension<OpenApiJson>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc,
    )
}

/// The serialized document, built once at start.
#[derive(Clone)]
struct OpenApiJson(bytes::Bytes);

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let (api, doc) = api_routes();
    let doc = OpenApiJson(
        serde_json::to_vec(&doc)
            .expect("the OpenAPI document serializes")
            .into(),
    );
    Router::new()
        .merge(api)
        .merge(web::router())
        .route("/metrics", get(health::metrics_admin))
        .fallback(fallback)
        .layer(axum::Extension(doc))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
