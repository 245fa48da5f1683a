//! The hosting API: desired state only. Handlers validate input into domain
//! types and write to the store; they never touch libvirt or nginx.

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::auth::AuthUser;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::crd::{SpecView, StatusView};
use crate::domain::{ssh_command, BackupId, HostingSpec, SpecPatch, UserId};
use crate::store::{Event, HostingRecord, RestoreRefusal, StoreError};

/// The hosting as the API shows it (shape is a contract, see docs/api.md;
/// `hostctl` reads it back into this type).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostingView {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub user_id: String,
    pub spec: SpecView,
    pub generation: i64,
    pub deletion_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: StatusView,
    pub web_url: Option<String>,
    pub ssh_command: Option<String>,
    /// What its backups and quarantined data hold, against its quota.
    #[serde(default)]
    pub storage: StorageView,
    /// Latest events, newest first (single-hosting answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub events: Option<Vec<Event>>,
}

/// A hosting's backup storage: its Completed backups and its quarantined
/// data (a disk replaced by a restore or reset, kept `HOSTD_QUARANTINE_DAYS`)
/// count against `quota_bytes` (`HOSTD_BACKUP_QUOTA_GIB`, or
/// `HOSTD_BACKUP_KEEP` × the disk size).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StorageView {
    pub backup_bytes: u64,
    pub quarantine_bytes: u64,
    pub quota_bytes: u64,
}

impl StorageView {
    pub fn of(st: &AppState, r: &HostingRecord) -> StorageView {
        StorageView {
            backup_bytes: r.storage.backup_bytes,
            quarantine_bytes: r.storage.quarantine_bytes,
            quota_bytes: st.config.backups.quota_bytes(r.spec.disk_gib.get()),
        }
    }

    /// "120.0 MiB of 70.0 GiB (backups 100.0 MiB, replaced disks kept 20.0 MiB)".
    pub fn summary(&self) -> String {
        let fmt = |b: u64| {
            if b >= 1 << 30 {
                format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
            } else {
                format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
            }
        };
        format!(
            "{} of {} (backups {}, replaced disks kept {})",
            fmt(self.backup_bytes + self.quarantine_bytes),
            fmt(self.quota_bytes),
            fmt(self.backup_bytes),
            fmt(self.quarantine_bytes)
        )
    }
}

pub fn view(st: &AppState, r: &HostingRecord, events: Option<Vec<Event>>) -> HostingView {
    let s = &r.status;
    HostingView {
        id: r.id.to_string(),
        user_id: r.user_id.to_string(),
        spec: (&r.spec).into(),
        generation: r.generation,
        deletion_requested_at: r.deletion_requested_at,
        status: StatusView {
            phase: s.phase,
            conditions: s.conditions.clone(),
            observed_generation: s.observed_generation,
            ssh_port: s.ssh_port,
            http_port: s.http_port,
            message: s.message.clone(),
            node: r.node.as_ref().map(|n| n.to_string()),
        },
        web_url: s
            .http_port
            .map(|_| st.config.sites.web_url(&r.username, r.user_id)),
        ssh_command: s.ssh_port.map(|p| ssh_command(st.config.public_host(), p)),
        storage: StorageView::of(st, r),
        events,
    }
}

/// A hosting spec patch from an optional JSON body (empty means "no
/// fields"); a non-empty body must say `Content-Type: application/json`.
pub struct PatchBody(pub SpecPatch);

impl<S: Send + Sync> FromRequest<S> for PatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        let body = Bytes::from_request(req, state).await?;
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(PatchBody(SpecPatch::default()));
        }
        if !is_json {
            let msg = "expected Content-Type: application/json";
            return Err(ApiError::UnsupportedMediaType(msg.into()));
        }
        serde_json::from_slice(&body)
            .map(PatchBody)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
                _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
            })
    }
}

/// Counts one hosting write of the caller against `HOSTD_HOST_OPS_PER_MIN`.
pub async fn host_op(st: &AppState, user: UserId) -> Result<(), ApiError> {
    st.guard
        .hit(super::limits::Rule::HostOps, &user.to_string())
        .await
}

/// Counts one restore or reset against `HOSTD_DISK_REPLACES_PER_HOUR` (taken
/// back if the request is refused).
async fn disk_replace(st: &AppState, user: UserId) -> Result<super::limits::Ticket, ApiError> {
    st.guard
        .attempt(super::limits::Rule::DiskReplace, &user.to_string())
        .await
}

/// The hosting with its latest events, as single-hosting endpoints show it.
async fn with_events(st: &AppState, rec: &HostingRecord) -> Result<HostingView, ApiError> {
    let events = st.store.recent_events(rec.id, 20).await?;
    Ok(view(st, rec, Some(events)))
}

/// Validates a create request and records the hosting (shared with the
/// dashboard; the caller has counted the write).
pub async fn create_for(
    st: &AppState,
    user: UserId,
    patch: &SpecPatch,
) -> Result<HostingRecord, ApiError> {
    let spec = patch.apply(&HostingSpec::default(), true)?;
    st.config.quota.check(None, &spec)?;
    if st.catalog_names.iter().all(|n| n != spec.image.as_str()) {
        return Err(ApiError::Unprocessable(format!(
            "image: unknown image '{}' (known: {})",
            spec.image.as_str(),
            st.catalog_names.join(", ")
        )));
    }
    // A spec of the pool's class (the default size) claims a Ready pool
    // guest if there is one (the reconciler's HOSTD_WARM_POOL decides
    // whether there are any); otherwise, or without one, the cold path.
    let claim = crate::store::warm_pool::fits(&spec, &HostingSpec::default());
    let rec = st.store.create_hosting(user, &spec, claim).await?;
    tracing::info!(hosting = %rec.id, user = %user, "hosting requested");
    Ok(rec)
}

/// `POST /api/v1/host`
#[utoipa::path(post, path = "/api/v1/host", tag = "hosting",
    security(("bearer" = [])),
    request_body(content = SpecPatch, description = "Spec fields; omitted ones take defaults (1 vCPU, 512 MiB, 10 GiB, debian-12, running). An empty body is allowed."),
    responses(
        (status = 202, description = "Recorded; the reconciler provisions it", body = HostingView),
        (status = 409, description = "The caller already has a hosting", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn create(
    State(st): State<AppState>,
    auth: AuthUser,
    PatchBody(patch): PatchBody,
) -> Result<impl IntoResponse, ApiError> {
    host_op(&st, auth.id).await?;
    let rec = create_for(&st, auth.id, &patch).await?;
    Ok((StatusCode::ACCEPTED, Json(with_events(&st, &rec).await?)))
}

/// `GET /api/v1/host/my`
#[utoipa::path(get, path = "/api/v1/host/my", tag = "hosting",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The hosting with its latest 20 events", body = HostingView),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
    ))]
pub async fn get_mine(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<axum::response::Response, ApiError> {
    use crate::store::view::Cached;
    if let Some(live) = st.store.view().and_then(|v| v.live()) {
        if let Cached::Hit(h) = live.hosting(auth.id) {
            // Serialized once per version of the entry.
            let body = h.body.get_or_init(|| {
                let v = view(&st, &h.rec, Some(h.events.clone()));
                serde_json::to_vec(&v).expect("hosting serializes").into()
            });
            let ct = [(axum::http::header::CONTENT_TYPE, "application/json")];
            return Ok((ct, body.clone()).into_response());
        }
        // Not seen (perhaps just created elsewhere), or overtaken by a
        // write of this process: Postgres answers.
    }
    let rec = my_hosting(&st, &auth).await?;
    Ok(Json(with_events(&st, &rec).await?).into_response())
}

/// Validates a spec change and records it (shared with the dashboard; the
/// caller has counted the write).
pub async fn patch_for(
    st: &AppState,
    user: UserId,
    patch: &SpecPatch,
) -> Result<HostingRecord, ApiError> {
    let rec = st
        .store
        .update_spec(user, |cur| {
            let new = patch.apply(cur, false)?;
            st.config.quota.check(Some(cur), &new)?;
            Ok(new)
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("you have no hosting"),
            crate::store::StoreError::Conflict(_) => {
                ApiError::Conflict("the hosting is being deleted".into())
            }
            o => o.into(),
        })?;
    Ok(rec)
}

/// `PATCH /api/v1/host/my`
#[utoipa::path(patch, path = "/api/v1/host/my", tag = "hosting",
    security(("bearer" = [])),
    request_body(content = SpecPatch, description = "Fields to change; `disk_gib` and `image` only to their current values"),
    responses(
        (status = 200, description = "The new desired state (generation + 1 if it changed)", body = HostingView),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
        (status = 409, description = "The hosting is being deleted", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn patch_mine(
    State(st): State<AppState>,
    auth: AuthUser,
    PatchBody(patch): PatchBody,
) -> Result<impl IntoResponse, ApiError> {
    host_op(&st, auth.id).await?;
    let rec = patch_for(&st, auth.id, &patch).await?;
    Ok(Json(with_events(&st, &rec).await?))
}

/// 202 and the hosting, for a request the reconciler will carry out.
fn accepted(
    st: &AppState,
    r: Result<HostingRecord, StoreError>,
    what: &str,
) -> Result<(StatusCode, Json<HostingView>), ApiError> {
    let rec = r.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound("you have no hosting"),
        o => o.into(),
    })?;
    tracing::info!(hosting = %rec.id, "{what}");
    Ok((StatusCode::ACCEPTED, Json(view(st, &rec, None))))
}

/// `POST /api/v1/host/my/reset`: the owner's consent to replace a lost disk
/// (or the current one) with a fresh, empty disk. The reconciler quarantines
/// the old disk, if any, and boots the hosting on a new one.
#[utoipa::path(post, path = "/api/v1/host/my/reset", tag = "hosting",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Disk reset requested", body = HostingView),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
        (status = 409, description = "The hosting is being deleted", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn reset_mine(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    host_op(&st, auth.id).await?;
    let rec = reset_for(&st, auth.id).await?;
    accepted(&st, Ok(rec), "disk reset requested")
}

/// Records a disk reset (shared with the dashboard; the caller has counted
/// the write): counted against `HOSTD_DISK_REPLACES_PER_HOUR`.
pub async fn reset_for(st: &AppState, user: UserId) -> Result<HostingRecord, ApiError> {
    let t = disk_replace(st, user).await?;
    let r = st.store.request_disk_reset(user).await;
    if r.is_err() {
        st.guard.forgive(t).await;
    }
    r.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound("you have no hosting"),
        o => o.into(),
    })
}

/// `DELETE /api/v1/host/my`: the row stays until the reconciler has cleaned up.
#[utoipa::path(delete, path = "/api/v1/host/my", tag = "hosting",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Deletion requested; the row goes when the reconciler has cleaned up", body = HostingView),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn delete_mine(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    host_op(&st, auth.id).await?;
    let r = st.store.request_deletion(auth.id).await;
    accepted(&st, r, "hosting deletion requested")
}

/// The caller's hosting, or 404.
async fn my_hosting(st: &AppState, auth: &AuthUser) -> Result<HostingRecord, ApiError> {
    hosting_of(st, auth.id).await
}

/// A user's hosting, or 404.
pub async fn hosting_of(st: &AppState, user: UserId) -> Result<HostingRecord, ApiError> {
    st.store
        .get_record_by_user(user)
        .await?
        .ok_or(ApiError::NotFound("you have no hosting"))
}

/// `POST /api/v1/host/my/backups`: a backup request the reconciler carries
/// out (202 and the Pending backup); 409 while one is pending or running.
#[utoipa::path(post, path = "/api/v1/host/my/backups", tag = "hosting",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Backup requested", body = crate::store::Backup),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
        (status = 409, description = "A backup or restore is pending or running", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn create_backup(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    host_op(&st, auth.id).await?;
    let b = backup_for(&st, auth.id).await?;
    Ok((StatusCode::ACCEPTED, Json(b)))
}

/// Records a backup request (shared with the dashboard; the caller has
/// counted the write).
pub async fn backup_for(st: &AppState, user: UserId) -> Result<crate::store::Backup, ApiError> {
    let b = st.store.request_backup(user).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound("you have no hosting"),
        StoreError::Conflict(what) => ApiError::Conflict(format!("{what} exists")),
        o => o.into(),
    })?;
    tracing::info!(hosting = %b.hosting_id, backup = %b.id, "backup requested");
    Ok(b)
}

/// `GET /api/v1/host/my/backups`: the hosting's backups, newest first.
#[utoipa::path(get, path = "/api/v1/host/my/backups", tag = "hosting",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Backups, newest first", body = Vec<crate::store::Backup>),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
    ))]
pub async fn list_backups(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let rec = my_hosting(&st, &auth).await?;
    Ok(Json(st.store.list_backups(rec.id).await?))
}

/// The body of `POST /api/v1/host/my/restore`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    backup_id: BackupId,
}

/// `POST /api/v1/host/my/restore {"backup_id": …}`: the owner's request to
/// replace the disk with a completed backup (202 and the hosting).
#[utoipa::path(post, path = "/api/v1/host/my/restore", tag = "hosting",
    security(("bearer" = [])),
    request_body = RestoreBody,
    responses(
        (status = 202, description = "Restore requested", body = HostingView),
        (status = 404, description = "No hosting, or no such backup", body = ErrorBody),
        (status = 409, description = "The backup is not Completed, or the hosting is busy", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn restore_mine(
    State(st): State<AppState>,
    auth: AuthUser,
    body: Result<Json<RestoreBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    host_op(&st, auth.id).await?;
    let Json(body) = body?;
    let rec = restore_for(&st, auth.id, body.backup_id).await?;
    accepted(&st, Ok(rec), "restore requested")
}

/// Records a restore of `backup` (shared with the dashboard; the caller has
/// counted the write): counted against `HOSTD_DISK_REPLACES_PER_HOUR`.
pub async fn restore_for(
    st: &AppState,
    user: UserId,
    backup: BackupId,
) -> Result<HostingRecord, ApiError> {
    let t = disk_replace(st, user).await?;
    let asked = st.store.request_restore(user, backup).await;
    if !matches!(asked, Ok(Ok(_))) {
        st.guard.forgive(t).await;
    }
    asked?.map_err(|r| match r {
        RestoreRefusal::NoHosting => ApiError::NotFound("you have no hosting"),
        RestoreRefusal::NoSuchBackup => {
            ApiError::NotFound("your hosting has no backup with that id")
        }
        o => ApiError::Conflict(o.to_string()),
    })
}

/// The tail of the hosting's boot console log, as last copied by the
/// reconciler. The text is the guest's (cleaned of control characters):
/// untrusted, to be shown as text.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleView {
    /// When the reconciler copied it; absent before the first copy.
    pub captured_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Size of the whole log then, bytes.
    pub log_size: i64,
    /// Whether `text` is only the end of the log.
    pub truncated: bool,
    /// The last (at most 64 KiB of) log text.
    pub text: String,
}

/// The console view of a hosting (shared with the dashboard).
pub async fn console_of(st: &AppState, rec: &HostingRecord) -> Result<ConsoleView, ApiError> {
    Ok(match st.store.console(rec.id).await? {
        Some(c) => ConsoleView {
            truncated: c.truncated(),
            captured_at: Some(c.captured_at),
            log_size: c.log_size,
            text: c.tail,
        },
        None => ConsoleView {
            captured_at: None,
            log_size: 0,
            truncated: false,
            text: String::new(),
        },
    })
}

#[utoipa::path(get, path = "/api/v1/host/my/console", tag = "hosting",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The console tail (empty before the first copy)", body = ConsoleView),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
    ))]
/// `GET /api/v1/host/my/console`: the owner's boot console log tail.
pub async fn console_mine(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<Json<ConsoleView>, ApiError> {
    let rec = my_hosting(&st, &auth).await?;
    Ok(Json(console_of(&st, &rec).await?))
}
