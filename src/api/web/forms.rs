//! The dashboard's handlers: login and sign-up, the hosting page and its
//! forms (create, power, resize, domains, HSTS, delete) and the console.
//! Each form is checked for origin and CSRF before anything else.

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::{
    hosting_view, my_record, ConsolePage, DeletePage, LoginPage, SignupPage, SIZES,
};
use super::session::{
    check_presession, cookie, csrf_token, presession, render, set_cookie, start_session, unb64,
    with_cookie, WebError, WebUser, PRESESSION_KIND,
};
use super::SESSION_COOKIE;
use crate::api::auth::{check_credentials, register_account, ClientAddr};
use crate::api::error::ApiError;
use crate::api::hosting::{console_of, create_for, host_op, patch_for};
use crate::api::limits::{client_key, Rule};
use crate::api::AppState;
use crate::domain::SpecPatch;
use crate::store::StoreError;

// ---------------------------------------------------------------- handlers

pub(super) async fn index(st: State<AppState>, headers: HeaderMap) -> Response {
    match cookie(&st, &headers, SESSION_COOKIE).and_then(unb64) {
        Some(sid) if matches!(st.store.session_user(&sid).await, Ok(Some(_))) => {
            Redirect::to("/ui/hosting").into_response()
        }
        _ => Redirect::to("/ui/login").into_response(),
    }
}

pub(super) async fn login_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let (id, set) = presession(&st, &headers);
    let page = LoginPage {
        user: None,
        csrf: csrf_token(&st, PRESESSION_KIND, &id),
        error: None,
        username: String::new(),
    };
    with_cookie(render(&page), set)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) password: String,
}

pub(super) async fn login_submit(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, WebError> {
    check_presession(&st, &headers, &f.csrf)?;
    match check_credentials(&st, &client_key(addr), &f.username, &f.password).await {
        Ok(user) => {
            let c = start_session(&st, &user).await?;
            let mut res = Redirect::to("/ui/hosting").into_response();
            res.headers_mut().append(header::SET_COOKIE, c);
            Ok(res)
        }
        Err(e @ (ApiError::Unauthorized(_) | ApiError::TooManyRequests(_))) => {
            let status = e.status();
            let (id, set) = presession(&st, &headers);
            let page = LoginPage {
                user: None,
                csrf: csrf_token(&st, PRESESSION_KIND, &id),
                error: Some(e.public_message()),
                username: f.username,
            };
            Ok(with_cookie((status, render(&page)).into_response(), set))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn signup_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let (id, set) = presession(&st, &headers);
    let page = SignupPage {
        user: None,
        csrf: csrf_token(&st, PRESESSION_KIND, &id),
        error: None,
        username: String::new(),
        email: String::new(),
    };
    with_cookie(render(&page), set)
}

#[derive(Deserialize)]
pub(super) struct SignupForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) email: String,
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) password: String,
}

pub(super) async fn signup_submit(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Form(f): Form<SignupForm>,
) -> Result<Response, WebError> {
    check_presession(&st, &headers, &f.csrf)?;
    let result = async {
        st.guard.hit(Rule::Register, &client_key(addr)).await?;
        register_account(&st, &f.email, &f.username, &f.password).await
    }
    .await;
    match result {
        Ok(user) => {
            let c = start_session(&st, &user).await?;
            let mut res = Redirect::to("/ui/hosting").into_response();
            res.headers_mut().append(header::SET_COOKIE, c);
            Ok(res)
        }
        Err(
            e @ (ApiError::Unprocessable(_) | ApiError::Conflict(_) | ApiError::TooManyRequests(_)),
        ) => {
            let status = e.status();
            let page = SignupPage {
                user: None,
                csrf: f.csrf.clone(),
                error: Some(e.public_message()),
                username: f.username,
                email: f.email,
            };
            Ok((status, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    pub(super) csrf: String,
}

pub(super) async fn logout(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    st.store.delete_session(&u.sid).await?;
    tracing::info!(target: "audit", user = %u.user.id, "dashboard session ended");
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, set_cookie(&st, SESSION_COOKIE, "", 0));
    Ok(res)
}

pub(super) async fn hosting_page(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    Ok(render(&hosting_view(&st, &u, None).await?))
}

/// Re-renders the hosting page with a validation error (the form's status).
pub(super) async fn form_error(
    st: &AppState,
    u: &WebUser,
    e: ApiError,
) -> Result<Response, WebError> {
    match e {
        ApiError::Unprocessable(_)
        | ApiError::Conflict(_)
        | ApiError::NotFound(_)
        | ApiError::TooManyRequests(_) => {
            let status = e.status();
            let page = hosting_view(st, u, Some(e.public_message())).await?;
            Ok((status, render(&page)).into_response())
        }
        e => Err(e.into()),
    }
}

/// A hosting form's answer: back to the hosting page, or the page again
/// with the error.
pub(super) async fn after_form<T>(
    st: &AppState,
    u: &WebUser,
    result: Result<T, ApiError>,
) -> Result<Response, WebError> {
    match result {
        Ok(_) => Ok(to_hosting()),
        Err(e) => form_error(st, u, e).await,
    }
}

pub(super) fn to_hosting() -> Response {
    Redirect::to("/ui/hosting").into_response()
}

#[derive(Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) size: String,
    #[serde(default)]
    pub(super) ssh_key: String,
}

/// The public keys of a form's text area: one per line, blank and `#`
/// lines skipped.
pub(super) fn key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The size a form picked: "vcpus:mib" among [`SIZES`].
pub(super) fn parse_size(s: &str) -> Result<(i64, i64), ApiError> {
    SIZES
        .iter()
        .find(|(c, m, _)| format!("{c}:{m}") == s)
        .map(|(c, m, _)| (*c, *m))
        .ok_or_else(|| ApiError::Unprocessable("size: pick one of the offered sizes".into()))
}

pub(super) async fn hosting_create(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<CreateForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        host_op(&st, u.user.id).await?;
        let (vcpus, memory_mib) = parse_size(&f.size)?;
        let keys = key_lines(&f.ssh_key);
        let patch = SpecPatch {
            vcpus: Some(vcpus),
            memory_mib: Some(memory_mib),
            ssh_public_keys: Some(keys),
            ..SpecPatch::default()
        };
        create_for(&st, u.user.id, &patch).await
    }
    .await;
    after_form(&st, &u, result).await
}

/// A switch of the spec: `running` (start/stop) or `hsts`, "true" or "false".
#[derive(Deserialize)]
pub(super) struct SwitchForm {
    #[serde(default)]
    pub(super) csrf: String,
    pub(super) running: Option<String>,
    pub(super) hsts: Option<String>,
}

/// "true"/"false" of a form field, or the API's 422.
fn switch(field: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::Unprocessable(format!("{field}: true or false"))),
    }
}

/// Starts or stops the hosting, or turns its HSTS opt-in on or off.
pub(super) async fn hosting_switch(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<SwitchForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        let patch = SpecPatch {
            running: switch("running", f.running.as_deref())?,
            hsts: switch("hsts", f.hsts.as_deref())?,
            ..SpecPatch::default()
        };
        if patch.running.is_some() {
            host_op(&st, u.user.id).await?;
        }
        patch_for(&st, u.user.id, &patch).await
    }
    .await;
    after_form(&st, &u, result).await
}

#[derive(Deserialize)]
pub(super) struct DomainForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) name: String,
}

/// Adds a custom domain (the API's rules); the page shows its TXT record.
pub(super) async fn domain_add(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<DomainForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = crate::api::domains::claim(&st, u.user.id, &f.name).await;
    after_form(&st, &u, result).await
}

/// Removes a custom domain.
pub(super) async fn domain_remove(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<DomainForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = crate::api::domains::unclaim(&st, u.user.id, &f.name).await;
    after_form(&st, &u, result).await
}

#[derive(Deserialize)]
pub(super) struct ResizeForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) size: String,
}

pub(super) async fn hosting_resize(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<ResizeForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        let (vcpus, memory_mib) = parse_size(&f.size)?;
        host_op(&st, u.user.id).await?;
        let patch = SpecPatch {
            vcpus: Some(vcpus),
            memory_mib: Some(memory_mib),
            ..SpecPatch::default()
        };
        patch_for(&st, u.user.id, &patch).await
    }
    .await;
    after_form(&st, &u, result).await
}

pub(super) async fn delete_confirm(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    if my_record(&st, u.user.id).await?.is_none() {
        return Ok(to_hosting());
    }
    Ok(render(&DeletePage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        username: u.user.username.clone(),
    }))
}

#[derive(Deserialize)]
pub(super) struct DeleteForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) confirm: String,
}

pub(super) async fn hosting_delete(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    if f.confirm.trim() != u.user.username {
        return Err(WebError::Page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirm: type your username to delete the hosting".into(),
        ));
    }
    let result = async {
        host_op(&st, u.user.id).await?;
        st.store
            .request_deletion(u.user.id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => ApiError::NotFound("you have no hosting"),
                o => o.into(),
            })
    }
    .await;
    match result {
        Ok(rec) => {
            tracing::info!(hosting = %rec.id, "hosting deletion requested (dashboard)");
            Ok(to_hosting())
        }
        Err(e) => form_error(&st, &u, e).await,
    }
}
pub(super) async fn console_page(
    State(st): State<AppState>,
    u: WebUser,
) -> Result<Response, WebError> {
    let Some(rec) = my_record(&st, u.user.id).await? else {
        return Ok(to_hosting());
    };
    let c = console_of(&st, &rec).await?;
    Ok(render(&ConsolePage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        captured_at: c
            .captured_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        truncated: c.truncated,
        text: c.text,
    }))
}
