//! The hosting API: desired state only. Handlers validate input into domain
//! types and write to the store; they never touch libvirt or nginx.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use serde::Serialize;

use super::auth::AuthUser;
use super::error::ApiError;
use super::AppState;
use crate::domain::{ssh_command, web_url, Condition, HostingSpec, Role, SpecPatch};
use crate::store::{Event, HostingRecord};

#[derive(Serialize)]
pub struct SpecView {
    vcpus: i32,
    memory_mib: i32,
    disk_gib: i32,
    image: String,
    ssh_public_keys: Vec<String>,
    running: bool,
}

#[derive(Serialize)]
pub struct StatusView {
    phase: String,
    conditions: Vec<Condition>,
    observed_generation: i64,
    ssh_port: Option<u16>,
    http_port: Option<u16>,
    message: Option<String>,
}

/// The hosting as the API shows it (shape is a contract, see docs/api.md).
#[derive(Serialize)]
pub struct HostingView {
    id: String,
    user_id: String,
    spec: SpecView,
    generation: i64,
    deletion_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    status: StatusView,
    web_url: Option<String>,
    ssh_command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
}

pub fn view(st: &AppState, r: &HostingRecord, events: Option<Vec<Event>>) -> HostingView {
    let s = &r.status;
    HostingView {
        id: r.id.to_string(),
        user_id: r.user_id.to_string(),
        spec: spec_view(&r.spec),
        generation: r.generation,
        deletion_requested_at: r.deletion_requested_at,
        status: StatusView {
            phase: s.phase.as_str().into(),
            conditions: s.conditions.clone(),
            observed_generation: s.observed_generation,
            ssh_port: s.ssh_port,
            http_port: s.http_port,
            message: s.message.clone(),
        },
        web_url: s
            .http_port
            .map(|_| web_url(&st.config.public_url, r.user_id)),
        ssh_command: s.ssh_port.map(|p| ssh_command(st.config.public_host(), p)),
        events,
    }
}

fn spec_view(s: &HostingSpec) -> SpecView {
    SpecView {
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        disk_gib: s.disk_gib,
        image: s.image.as_str().into(),
        ssh_public_keys: s
            .ssh_public_keys
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
        running: s.running,
    }
}

/// Parses an optional JSON body (empty means "no fields").
fn parse_patch(body: &Bytes) -> Result<SpecPatch, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(SpecPatch::default());
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

fn require_json(headers: &axum::http::HeaderMap, body: &Bytes) -> Result<(), ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(());
    }
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ))
    }
}

/// `POST /api/v1/host`
pub async fn create(
    State(st): State<AppState>,
    auth: AuthUser,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    require_json(&headers, &body)?;
    let patch = parse_patch(&body)?;
    let spec = patch.apply(&HostingSpec::default(), true)?;
    if st.catalog_names.iter().all(|n| n != spec.image.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "image: unknown image '{}' (known: {})",
            spec.image.as_str(),
            st.catalog_names.join(", ")
        )));
    }
    let rec = st.store.create_hosting(auth.id, &spec).await?;
    tracing::info!(hosting = %rec.id, user = %auth.id, "hosting requested");
    let events = st.store.recent_events(rec.id, 20).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&st, &rec, Some(events)))))
}

/// `GET /api/v1/host/my`
pub async fn get_mine(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let rec = st
        .store
        .get_record_by_user(auth.id)
        .await?
        .ok_or(ApiError::NotFound("you have no hosting"))?;
    let events = st.store.recent_events(rec.id, 20).await?;
    Ok(Json(view(&st, &rec, Some(events))))
}

/// `PATCH /api/v1/host/my`
pub async fn patch_mine(
    State(st): State<AppState>,
    auth: AuthUser,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    require_json(&headers, &body)?;
    let patch = parse_patch(&body)?;
    let rec = st
        .store
        .update_spec(auth.id, |cur| patch.apply(cur, false))
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("you have no hosting"),
            crate::store::StoreError::Conflict(_) => {
                ApiError::Conflict("the hosting is being deleted".into())
            }
            o => o.into(),
        })?;
    let events = st.store.recent_events(rec.id, 20).await?;
    Ok(Json(view(&st, &rec, Some(events))))
}

/// `DELETE /api/v1/host/my`
pub async fn delete_mine(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let rec = st
        .store
        .request_deletion(auth.id)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("you have no hosting"),
            o => o.into(),
        })?;
    tracing::info!(hosting = %rec.id, "hosting deletion requested");
    Ok((StatusCode::ACCEPTED, Json(view(&st, &rec, None))))
}

/// `GET /api/v1/admin/hostings` (admins only)
pub async fn admin_list(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    if auth.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let all = st.store.list_records().await?;
    Ok(Json(
        all.iter().map(|r| view(&st, r, None)).collect::<Vec<_>>(),
    ))
}
