//! Custom domains (`/api/v1/host/my/domains`): a tenant claims a name and
//! gets the TXT record that proves control; the reconciler checks it,
//! routes the verified name to the tenant's guest and (with ACME) gets it a
//! certificate. Desired state only, like the rest of the API.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::AuthUser;
use super::error::{ApiError, ErrorBody};
use super::hosting::{host_op, hosting_of};
use super::AppState;
use crate::domain::CustomDomain;
use crate::store::{AddDomain, DomainRow};

/// A custom domain as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DomainView {
    pub name: String,
    /// `PendingVerification` (waiting for the TXT record), `Verified`
    /// (routed; certificate on its way when ACME is on), `Ready` (served
    /// over HTTPS) or `Failed` (see `last_error`).
    #[schema(pattern = "^(PendingVerification|Verified|Ready|Failed)$")]
    pub state: String,
    /// The TXT record to create: its name…
    pub txt_name: String,
    /// …and its value.
    pub txt_value: String,
    /// Why the last check or issuance failed.
    pub last_error: Option<String>,
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The certificate's state (`Pending`, `Issuing`, `Ready`, `Failed`).
    pub certificate_state: Option<String>,
    /// When the certificate expires.
    pub certificate_not_after: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<DomainRow> for DomainView {
    fn from(d: DomainRow) -> Self {
        let (cert_state, not_after) = d.certificate.clone().unzip();
        let state = match (d.state.as_str(), cert_state.as_deref()) {
            ("Verified", Some("Ready")) => "Ready".to_string(),
            (s, _) => s.to_string(),
        };
        DomainView {
            txt_name: d.name.txt_name(),
            name: d.name.to_string(),
            state,
            txt_value: d.token,
            last_error: d.last_error,
            checked_at: d.checked_at,
            verified_at: d.verified_at,
            certificate_state: cert_state,
            certificate_not_after: not_after.flatten(),
            created_at: d.created_at,
        }
    }
}

/// The body of `POST /api/v1/host/my/domains`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDomainBody {
    /// e.g. `www.example.com` (internationalised names are accepted).
    name: String,
}

/// The names a tenant may not claim: the platform's own.
fn platform_names(st: &AppState) -> Vec<String> {
    let mut v: Vec<String> = st.config.sites.sites_domain.iter().cloned().collect();
    v.extend(st.config.tls.panel_host.iter().cloned());
    if let Some(host) = st
        .config
        .sites
        .public_url
        .split_once("://")
        .and_then(|(_, r)| r.split(['/', ':']).next())
    {
        v.push(host.to_ascii_lowercase());
    }
    v
}

fn parse_name(st: &AppState, name: &str) -> Result<CustomDomain, ApiError> {
    let platform = platform_names(st);
    let refs: Vec<&str> = platform.iter().map(String::as_str).collect();
    Ok(CustomDomain::parse(name, &refs)?)
}

/// `POST /api/v1/host/my/domains {"name"}`: claims a domain for the
/// caller's hosting. It is served once its TXT record proves control.
#[utoipa::path(post, path = "/api/v1/host/my/domains", tag = "domains",
    security(("bearer" = [])),
    request_body = AddDomainBody,
    responses(
        (status = 201, description = "Claimed; create the TXT record it names", body = DomainView),
        (status = 404, description = "The caller has no hosting", body = ErrorBody),
        (status = 409, description = "Already claimed by the caller, or verified by another account", body = ErrorBody),
        (status = 422, description = "Not an acceptable domain name, or the per-account limit is reached", body = ErrorBody),
        (status = 429, description = "Too many hosting writes (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn add_domain(
    State(st): State<AppState>,
    auth: AuthUser,
    body: Result<Json<AddDomainBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let d = claim(&st, auth.id, &body.name).await?;
    Ok((StatusCode::CREATED, Json(DomainView::from(d))))
}

/// Claims `name` for `user` (the API's and the dashboard's add): rate
/// limited, validated, refused past the limit or when another account has
/// verified it.
pub async fn claim(
    st: &AppState,
    user: crate::domain::UserId,
    name: &str,
) -> Result<DomainRow, ApiError> {
    host_op(st, user).await?;
    let name = parse_name(st, name)?;
    hosting_of(st, user).await?;
    let token = {
        use base64::Engine;
        use rand::RngCore;
        let mut b = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut b);
        format!(
            "hostd-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        )
    };
    let max = st.config.tls.max_domains;
    match st.store.add_domain(user, &name, &token, max).await? {
        AddDomain::Added(d) => {
            tracing::info!(%user, domain = %name, "custom domain claimed");
            Ok(d)
        }
        AddDomain::Exists => Err(ApiError::Conflict(format!("you have already added {name}"))),
        AddDomain::TakenByOther => Err(ApiError::Conflict(format!(
            "{name} is in use by another account"
        ))),
        AddDomain::Limit => Err(ApiError::Unprocessable(format!(
            "an account may have at most {max} custom domains"
        ))),
    }
}

/// Removes `user`'s domain `name` (the API's and the dashboard's remove).
pub async fn unclaim(
    st: &AppState,
    user: crate::domain::UserId,
    name: &str,
) -> Result<(), ApiError> {
    host_op(st, user).await?;
    let name = parse_name(st, name)?;
    if st.store.remove_domain(user, &name).await? {
        tracing::info!(%user, domain = %name, "custom domain removed");
        Ok(())
    } else {
        Err(ApiError::NotFound("you have no such domain"))
    }
}

/// `GET /api/v1/host/my/domains`: the caller's domains.
#[utoipa::path(get, path = "/api/v1/host/my/domains", tag = "domains",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's domains, by name", body = Vec<DomainView>)))]
pub async fn list_domains(
    State(st): State<AppState>,
    auth: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    let rows = st.store.list_domains(auth.id).await?;
    Ok(Json(
        rows.into_iter().map(DomainView::from).collect::<Vec<_>>(),
    ))
}

/// `DELETE /api/v1/host/my/domains/{name}`: stops serving a domain (its
/// route and certificate go with the next reconcile).
#[utoipa::path(delete, path = "/api/v1/host/my/domains/{name}", tag = "domains",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The domain")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "The caller has no such domain", body = ErrorBody),
        (status = 422, description = "Not a domain name", body = ErrorBody),
    ))]
pub async fn remove_domain(
    State(st): State<AppState>,
    auth: AuthUser,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    unclaim(&st, auth.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
