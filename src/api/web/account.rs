//! The account page (`/ui/account`): change the password (every other
//! session and token ends; this browser gets a fresh session), log out
//! everywhere, delete the account (refused while a hosting exists). Each
//! form carries the session's CSRF token; the rules are the API's
//! (`crate::api::auth::{set_password, end_every_session, delete_account}`).

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::AccountPage;
use super::session::{render, set_cookie, shown, start_session, WebError, WebUser};
use super::SESSION_COOKIE;
use crate::api::auth::{delete_account, end_every_session, set_password, ClientAddr};
use crate::api::error::ApiError;
use crate::api::AppState;

/// The page, with an error from a form (and its status) or a notice.
async fn page(
    st: &AppState,
    u: &WebUser,
    status: StatusCode,
    error: Option<String>,
    notice: Option<&str>,
) -> Result<Response, WebError> {
    let has_hosting = super::pages::my_record(st, u.user.id).await?.is_some();
    let body = render(&AccountPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        email: u.user.email.clone(),
        error,
        notice: notice.map(String::from),
        has_hosting,
    });
    Ok((status, body).into_response())
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    changed: Option<String>,
}

/// `GET /ui/account` (`?changed=password` after a change).
pub(super) async fn account_page(
    State(st): State<AppState>,
    u: WebUser,
    Query(q): Query<PageQuery>,
) -> Result<Response, WebError> {
    let notice = (q.changed.as_deref() == Some("password"))
        .then_some("Password changed: every other session and token has ended.");
    page(&st, &u, StatusCode::OK, None, notice).await
}

/// A failed form: the page again with the API's status and message.
async fn refused(st: &AppState, u: &WebUser, e: ApiError) -> Result<Response, WebError> {
    let (status, msg) = shown(e)?;
    page(st, u, status, Some(msg), None).await
}

/// Back to the login page, with the session cookie cleared.
fn to_login(st: &AppState) -> Response {
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, set_cookie(st, SESSION_COOKIE, "", 0));
    res
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    old_password: String,
    #[serde(default)]
    new_password: String,
}

/// `POST /ui/account/password`: every earlier session and token ends; this
/// browser continues in a new session.
pub(super) async fn change_password(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let id = u.user.id;
    if let Err(e) = set_password(&st, id, addr, &f.old_password, &f.new_password).await {
        return refused(&st, &u, e).await;
    }
    let user = st.store.get_user(id).await?.ok_or(WebError::Login)?;
    let cookie = start_session(&st, &user).await?;
    let mut res = Redirect::to("/ui/account?changed=password").into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(res)
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/account/logout-all`: every session (this one too) and token ends.
pub(super) async fn logout_everywhere(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    end_every_session(&st, u.user.id).await?;
    Ok(to_login(&st))
}

#[derive(Deserialize)]
pub(super) struct DeleteAccountForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
}

/// `POST /ui/account/delete`: the account goes (refused while it has a hosting).
pub(super) async fn delete(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<DeleteAccountForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    match delete_account(&st, u.user.id, addr, &f.password).await {
        Ok(()) => Ok(to_login(&st)),
        Err(e) => refused(&st, &u, e).await,
    }
}
