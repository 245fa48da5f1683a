//! Browser sessions: cookies, CSRF tokens (session and pre-session), the
//! [`WebUser`] extractor, and how a dashboard request fails ([`WebError`]).

use askama::Template;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::pages::ErrorPage;
use super::{PRESESSION_COOKIE, SESSION_COOKIE};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::domain::Role;
use crate::store::{StoreError, User};

// ---------------------------------------------------------------- cookies

/// The value of the cookie `base` (its `__Host-` form when cookies are
/// secure). A cookie sent twice is refused: a page on a sibling host can
/// plant a second cookie of a name, and which one wins would be its choice.
pub(super) fn cookie<'a>(st: &AppState, headers: &'a HeaderMap, base: &str) -> Option<&'a str> {
    let name = cookie_name(st, base);
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// A cookie's name: with `HOSTD_SECURE_COOKIES` (the dashboard reached over
/// HTTPS), the `__Host-` form, which browsers accept only when `Secure`,
/// for `Path=/` and without `Domain`: no other host can set or shadow it.
pub(super) fn cookie_name(st: &AppState, base: &str) -> String {
    if st.config.secure_cookies {
        format!("__Host-{base}")
    } else {
        base.to_string()
    }
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn unb64(s: &str) -> Option<Vec<u8>> {
    let v = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    (v.len() == 32).then_some(v)
}

pub(super) fn random_id() -> Vec<u8> {
    use rand::RngCore;
    let mut b = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

pub(super) fn set_cookie(st: &AppState, base: &str, value: &str, max_age: u64) -> HeaderValue {
    let name = cookie_name(st, base);
    let attrs = if st.config.secure_cookies {
        "Path=/; Secure"
    } else {
        "Path=/ui"
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; {attrs}; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("cookie is ASCII")
}

// ------------------------------------------------------------------- CSRF

pub(super) fn csrf_key(st: &AppState) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"hostd dashboard csrf v1\0");
    h.update(&st.config.jwt_secret);
    h.finalize().to_vec()
}

pub(super) fn csrf_mac(st: &AppState, kind: &[u8], id: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(&csrf_key(st)).expect("any key length");
    m.update(kind);
    m.update(id);
    m
}

/// The CSRF token of a session (or pre-session) id.
pub(super) fn csrf_token(st: &AppState, kind: &[u8], id: &[u8]) -> String {
    b64(&csrf_mac(st, kind, id).finalize().into_bytes())
}

/// Whether `token` is the CSRF token of `id` (constant time).
pub(super) fn csrf_ok(st: &AppState, kind: &[u8], id: &[u8], token: &str) -> bool {
    let Ok(t) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    csrf_mac(st, kind, id).verify_slice(&t).is_ok()
}

/// Refuses a POST that a browser says comes from another site, or whose
/// `Origin` is not this host.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return false;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
            !host.is_empty() && authority.eq_ignore_ascii_case(host)
        }
    }
}

pub(super) const SESSION_KIND: &[u8] = b"session\0";
pub(super) const PRESESSION_KIND: &[u8] = b"presession\0";

// ---------------------------------------------------------------- errors

/// How a dashboard request fails: an error page with the API's status code,
/// or a redirect to the login page.
pub enum WebError {
    Page(StatusCode, String),
    Login,
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        let message = e.public_message();
        WebError::Page(status, message)
    }
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::Login => Redirect::to("/ui/login").into_response(),
            WebError::Page(status, message) => {
                let page = ErrorPage {
                    user: None,
                    csrf: String::new(),
                    status: status.as_u16(),
                    message,
                };
                (status, render(&page)).into_response()
            }
        }
    }
}

/// A refused form's status and message for the page to show again; a
/// server error is not shown but becomes the error page (and is logged).
pub(super) fn shown(e: ApiError) -> Result<(StatusCode, String), WebError> {
    let status = e.status();
    if status.is_server_error() {
        return Err(e.into());
    }
    Ok((status, e.public_message()))
}

pub(super) fn forbidden(why: &str) -> WebError {
    tracing::warn!(target: "audit", why, "dashboard form refused");
    WebError::Page(StatusCode::FORBIDDEN, format!("refused: {why}"))
}

pub(super) fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response()
        }
    }
}

// --------------------------------------------------------------- sessions

/// The signed-in user of a dashboard request, with the session's CSRF token.
pub struct WebUser {
    pub user: User,
    pub(super) sid: Vec<u8>,
    pub csrf: String,
}

impl axum::extract::FromRequestParts<AppState> for WebUser {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, WebError> {
        let sid = cookie(st, &parts.headers, SESSION_COOKIE)
            .and_then(unb64)
            .ok_or(WebError::Login)?;
        let user = st.store.session_user(&sid).await?.ok_or(WebError::Login)?;
        let csrf = csrf_token(st, SESSION_KIND, &sid);
        Ok(WebUser { user, sid, csrf })
    }
}

impl WebUser {
    /// Checks a form of this session: same origin and the right token.
    pub(super) fn check(
        &self,
        st: &AppState,
        headers: &HeaderMap,
        token: &str,
    ) -> Result<(), WebError> {
        if !same_origin(headers) {
            return Err(forbidden("cross-origin form post"));
        }
        if !csrf_ok(st, SESSION_KIND, &self.sid, token) {
            return Err(forbidden("missing or wrong CSRF token"));
        }
        Ok(())
    }

    pub(super) fn nav(&self) -> Option<Nav> {
        Some(Nav {
            username: self.user.username.clone(),
            admin: self.user.role == Role::Admin,
        })
    }
}

/// What the header shows of the signed-in user.
pub struct Nav {
    pub username: String,
    pub admin: bool,
}

/// Starts a session for `user`: the cookie to set.
pub(super) async fn start_session(st: &AppState, user: &User) -> Result<HeaderValue, WebError> {
    let sid = random_id();
    let ttl = st.jwt.ttl_secs();
    let expires = chrono::Utc::now() + chrono::Duration::seconds(ttl as i64);
    st.store
        .create_session(&sid, user.id, user.token_epoch, expires)
        .await?;
    tracing::info!(target: "audit", user = %user.id, "dashboard session started");
    Ok(set_cookie(st, SESSION_COOKIE, &b64(&sid), ttl))
}

/// The pre-session id behind a login or sign-up form, and the cookie to set
/// when the browser has none yet.
pub(super) fn presession(st: &AppState, headers: &HeaderMap) -> (Vec<u8>, Option<HeaderValue>) {
    match cookie(st, headers, PRESESSION_COOKIE).and_then(unb64) {
        Some(id) => (id, None),
        None => {
            let id = random_id();
            let c = set_cookie(st, PRESESSION_COOKIE, &b64(&id), 3600);
            (id, Some(c))
        }
    }
}

/// Checks a login or sign-up form's origin and pre-session token.
pub(super) fn check_presession(
    st: &AppState,
    headers: &HeaderMap,
    token: &str,
) -> Result<(), WebError> {
    if !same_origin(headers) {
        return Err(forbidden("cross-origin form post"));
    }
    let ok = cookie(st, headers, PRESESSION_COOKIE)
        .and_then(unb64)
        .is_some_and(|id| csrf_ok(st, PRESESSION_KIND, &id, token));
    if !ok {
        return Err(forbidden(
            "missing or wrong CSRF token (reload the form and try again)",
        ));
    }
    Ok(())
}

pub(super) fn with_cookie(mut res: Response, c: Option<HeaderValue>) -> Response {
    if let Some(c) = c {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}
