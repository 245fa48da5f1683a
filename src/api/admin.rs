//! The admin API (`/api/v1/admin/…`, admins only): every hosting, acting on
//! any of them (start, stop, delete), the accounts and their roles. Desired
//! state only, like the rest of the API. Each action is an audit log line
//! naming the admin and an `AdminAction` event on the hosting, so its
//! owner sees who stopped or deleted it. The dashboard's admin page calls
//! the same functions ([`act_on`], [`set_role_of`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::auth::AuthUser;
use super::error::{ApiError, ErrorBody};
use super::hosting::{view, HostingView};
use super::AppState;
use crate::domain::{EventType, HostingId, Reason, Role, SpecPatch, UserId, Username};
use crate::store::{HostingRecord, NewEvent, StoreError, User};

/// The admin making a request.
pub struct Admin {
    pub id: UserId,
    pub username: String,
}

impl Admin {
    /// The caller, if an admin; 403 otherwise.
    pub fn of(id: UserId, username: &str, role: Role) -> Result<Admin, ApiError> {
        match role {
            Role::Admin => Ok(Admin {
                id,
                username: username.to_string(),
            }),
            Role::User => Err(ApiError::Forbidden),
        }
    }

    fn from_auth(auth: &AuthUser) -> Result<Admin, ApiError> {
        Admin::of(auth.id, auth.username.as_str(), auth.role)
    }
}

/// What an admin does to a hosting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostingAction {
    Start,
    Stop,
    Delete,
}

impl HostingAction {
    fn past(self) -> &'static str {
        match self {
            HostingAction::Start => "started",
            HostingAction::Stop => "stopped",
            HostingAction::Delete => "deletion requested",
        }
    }
}

/// A hosting id from a path or form: an unknown or malformed one is 404.
pub fn parse_hosting_id(s: &str) -> Result<HostingId, ApiError> {
    uuid::Uuid::parse_str(s.trim())
        .map(HostingId)
        .map_err(|_| ApiError::NotFound("no such hosting"))
}

/// Carries out `action` on hosting `id` for `admin`: the owner's desired
/// state changes exactly as if they had asked, plus an audit line and an
/// `AdminAction` event. Warm-pool guests belong to the reconciler (409).
pub async fn act_on(
    st: &AppState,
    admin: &Admin,
    id: HostingId,
    action: HostingAction,
) -> Result<HostingRecord, ApiError> {
    let rec = st
        .store
        .get_record(id)
        .await?
        .ok_or(ApiError::NotFound("no such hosting"))?;
    if rec.warm {
        return Err(ApiError::Conflict(
            "a warm-pool guest is managed by the reconciler (HOSTD_WARM_POOL)".into(),
        ));
    }
    let owner = rec.user_id;
    let result = match action {
        HostingAction::Start | HostingAction::Stop => {
            let patch = SpecPatch {
                running: Some(action == HostingAction::Start),
                ..SpecPatch::default()
            };
            st.store
                .update_spec(owner, |cur| patch.apply(cur, false))
                .await
        }
        HostingAction::Delete => st.store.request_deletion(owner).await,
    };
    let rec = result.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound("no such hosting"),
        StoreError::Conflict(_) => ApiError::Conflict("the hosting is being deleted".into()),
        o => o.into(),
    })?;
    tracing::info!(target: "audit", admin = %admin.username, admin_id = %admin.id,
        hosting = %rec.id, owner = %rec.username.as_str(), action = action.past(), "admin action");
    let ev = NewEvent {
        type_: EventType::Normal,
        reason: Reason::AdminAction,
        message: format!("{} by administrator {}", action.past(), admin.username),
    };
    st.store.add_events(rec.id, &[ev]).await?;
    Ok(rec)
}

/// Gives account `username` the role `role`. An admin cannot change their
/// own role (the last admin could lock everyone out).
pub async fn set_role_of(
    st: &AppState,
    admin: &Admin,
    username: &str,
    role: Role,
) -> Result<User, ApiError> {
    let name = Username::parse(username).map_err(|_| ApiError::NotFound("no such user"))?;
    if name.as_str() == admin.username {
        return Err(ApiError::Conflict(
            "you cannot change your own role; ask another admin".into(),
        ));
    }
    st.store.set_role(&name, role).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound("no such user"),
        o => o.into(),
    })?;
    tracing::info!(target: "audit", admin = %admin.username, admin_id = %admin.id,
        user = %name.as_str(), role = role.as_str(), "role changed");
    let users = st.store.list_accounts().await?;
    users
        .into_iter()
        .find(|u| u.username == name.as_str())
        .ok_or(ApiError::NotFound("no such user"))
}

/// `GET /api/v1/admin/hostings` (admins only)
#[utoipa::path(get, path = "/api/v1/admin/hostings", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every hosting (warm-pool guests included)", body = Vec<HostingView>),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
    ))]
pub async fn admin_list(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    Admin::from_auth(&auth)?;
    let all = st.store.list_records().await?;
    Ok(Json(
        all.iter().map(|r| view(&st, r, None)).collect::<Vec<_>>(),
    ))
}

/// The body of `PATCH /api/v1/admin/hostings/{id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminPatch {
    /// Start (`true`) or stop (`false`) the hosting.
    running: bool,
}

/// `PATCH /api/v1/admin/hostings/{id}`: start or stop any hosting.
#[utoipa::path(patch, path = "/api/v1/admin/hostings/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The hosting's id")),
    request_body = AdminPatch,
    responses(
        (status = 200, description = "The new desired state", body = HostingView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such hosting", body = ErrorBody),
        (status = 409, description = "A warm-pool guest, or being deleted", body = ErrorBody),
    ))]
pub async fn admin_patch(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    body: Result<Json<AdminPatch>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::from_auth(&auth)?;
    let Json(body) = body?;
    let action = match body.running {
        true => HostingAction::Start,
        false => HostingAction::Stop,
    };
    let rec = act_on(&st, &admin, parse_hosting_id(&id)?, action).await?;
    Ok(Json(view(&st, &rec, None)))
}

/// `DELETE /api/v1/admin/hostings/{id}`: delete any hosting.
#[utoipa::path(delete, path = "/api/v1/admin/hostings/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The hosting's id")),
    responses(
        (status = 202, description = "Deletion requested", body = HostingView),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such hosting", body = ErrorBody),
        (status = 409, description = "A warm-pool guest", body = ErrorBody),
    ))]
pub async fn admin_delete(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::from_auth(&auth)?;
    let rec = act_on(&st, &admin, parse_hosting_id(&id)?, HostingAction::Delete).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&st, &rec, None))))
}

/// `GET /api/v1/admin/users`: every account, oldest first.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every account", body = Vec<User>),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
    ))]
pub async fn admin_users(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    Admin::from_auth(&auth)?;
    Ok(Json(st.store.list_accounts().await?))
}

/// The body of `PUT /api/v1/admin/users/{username}/role`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    role: Role,
}

/// `PUT /api/v1/admin/users/{username}/role`: make a user an admin or not.
#[utoipa::path(put, path = "/api/v1/admin/users/{username}/role", tag = "admin",
    security(("bearer" = [])),
    params(("username" = String, Path, description = "The account's username")),
    request_body = RoleBody,
    responses(
        (status = 200, description = "The account with its new role", body = User),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The caller's own role", body = ErrorBody),
    ))]
pub async fn admin_set_role(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(username): Path<String>,
    body: Result<Json<RoleBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let admin = Admin::from_auth(&auth)?;
    let Json(body) = body?;
    Ok(Json(set_role_of(&st, &admin, &username, body.role).await?))
}
