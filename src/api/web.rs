//! The web dashboard: server-rendered askama pages (`templates/web/`) on the
//! API's listener under `/ui/`, for people rather than scripts. It calls the
//! same validation and store functions as the JSON handlers, so the two can
//! never accept different things.
//!
//! Browser security, and why:
//! - **Sessions are separate from bearer tokens.** The browser holds an
//!   HttpOnly, SameSite=Strict cookie with 32 random bytes (only their
//!   SHA-256 is stored, `store::sessions`); the JSON API never accepts a
//!   cookie, so a page can never make an authenticated API call by riding
//!   on ambient credentials, and script on a page cannot read the session.
//! - **CSRF**: every form carries a token, HMAC-SHA256 of the session id
//!   (or, before login, of a random pre-session cookie) under a key derived
//!   from the JWT secret; a POST without it, or whose `Origin` is not this
//!   host, or that a browser labels `Sec-Fetch-Site: cross-site`, is refused
//!   with 403 and changes nothing.
//! - **A strict Content-Security-Policy** (`default-src 'none'`, scripts
//!   and styles only from `/ui/static/`, no inline script or style at all,
//!   `frame-ancestors 'none'`, `form-action 'self'`), plus `nosniff`,
//!   `X-Frame-Options: DENY`, `Referrer-Policy: same-origin` and
//!   `Cache-Control: no-store` on every page.
//! - **Never on the sites' origin.** Tenant pages are served through nginx
//!   at `HOSTD_PUBLIC_URL` and run whatever script their owner wrote; were the
//!   dashboard on that origin, any tenant's page could read it and post its
//!   forms. So hostd serves the dashboard only on its own listener, and the
//!   nginx configuration it generates never proxies to it.
//!
//! Everything works without JavaScript (forms post and redirect; the status
//! page refreshes itself inside `<noscript>`); with it, `app.js` follows
//! the hosting live over Server-Sent Events (`/ui/hosting/events`), adds
//! copy buttons and reads an uploaded key file into the form.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::auth::{check_credentials, register_account, ClientAddr};
use super::error::ApiError;
use super::hosting::{console_of, create_for, host_op, hosting_of, patch_for};
use super::limits::{client_key, Rule};
use super::AppState;
use crate::domain::{ssh_command, ConditionType, Phase, Role, SpecPatch, UserId};
use crate::store::{HostingRecord, StoreError, User};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hostd_session";
/// The pre-session cookie behind the login and sign-up forms' CSRF token.
pub const PRESESSION_COOKIE: &str = "hostd_presession";
/// How often a live view looks for changes.
pub const SSE_TICK: Duration = Duration::from_millis(500);
/// A live view checks its session every this many ticks.
const SESSION_EVERY: u32 = 10;
/// Live views one user may hold open at once.
pub const SSE_PER_USER: usize = 4;
/// Live views the process holds open at once.
pub const SSE_TOTAL: usize = 512;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's shared state: open live views.
#[derive(Default)]
pub struct WebState {
    streams: Mutex<HashMap<UserId, usize>>,
}

/// One open live view, counted until dropped.
struct StreamSlot {
    web: Arc<WebState>,
    user: UserId,
}

impl WebState {
    fn open(self: &Arc<Self>, user: UserId) -> Option<StreamSlot> {
        let mut m = self.streams.lock().unwrap();
        let total: usize = m.values().sum();
        let mine = m.entry(user).or_default();
        if *mine >= SSE_PER_USER || total >= SSE_TOTAL {
            return None;
        }
        *mine += 1;
        Some(StreamSlot {
            web: self.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.web.streams.lock().unwrap();
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// The dashboard's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login_submit))
        .route("/ui/signup", get(signup_page).post(signup_submit))
        .route("/ui/logout", post(logout))
        .route("/ui/hosting", get(hosting_page).post(hosting_create))
        .route("/ui/hosting/power", post(hosting_power))
        .route("/ui/hosting/resize", post(hosting_resize))
        .route(
            "/ui/hosting/delete",
            get(delete_confirm).post(hosting_delete),
        )
        .route("/ui/hosting/events", get(hosting_events))
        .route("/ui/hosting/console", get(console_page))
        .route("/ui/admin", get(admin_page))
        .route("/ui/static/app.js", get(app_js))
        .route("/ui/static/app.css", get(app_css))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Security headers on every dashboard response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

// ---------------------------------------------------------------- cookies

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    let v = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    (v.len() == 32).then_some(v)
}

fn random_id() -> Vec<u8> {
    use rand::RngCore;
    let mut b = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn set_cookie(st: &AppState, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if st.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie is ASCII")
}

// ------------------------------------------------------------------- CSRF

fn csrf_key(st: &AppState) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"hostd dashboard csrf v1\0");
    h.update(&st.config.jwt_secret);
    h.finalize().to_vec()
}

fn csrf_mac(st: &AppState, kind: &[u8], id: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(&csrf_key(st)).expect("any key length");
    m.update(kind);
    m.update(id);
    m
}

/// The CSRF token of a session (or pre-session) id.
fn csrf_token(st: &AppState, kind: &[u8], id: &[u8]) -> String {
    b64(&csrf_mac(st, kind, id).finalize().into_bytes())
}

/// Whether `token` is the CSRF token of `id` (constant time).
fn csrf_ok(st: &AppState, kind: &[u8], id: &[u8], token: &str) -> bool {
    let Ok(t) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    csrf_mac(st, kind, id).verify_slice(&t).is_ok()
}

/// Refuses a POST that a browser says comes from another site, or whose
/// `Origin` is not this host.
fn same_origin(headers: &HeaderMap) -> bool {
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

const SESSION_KIND: &[u8] = b"session\0";
const PRESESSION_KIND: &[u8] = b"presession\0";

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

fn forbidden(why: &str) -> WebError {
    tracing::warn!(target: "audit", why, "dashboard form refused");
    WebError::Page(StatusCode::FORBIDDEN, format!("refused: {why}"))
}

fn render<T: Template>(t: &T) -> Response {
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
    sid: Vec<u8>,
    pub csrf: String,
}

impl axum::extract::FromRequestParts<AppState> for WebUser {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, WebError> {
        let sid = cookie(&parts.headers, SESSION_COOKIE)
            .and_then(unb64)
            .ok_or(WebError::Login)?;
        let user = st.store.session_user(&sid).await?.ok_or(WebError::Login)?;
        let csrf = csrf_token(st, SESSION_KIND, &sid);
        Ok(WebUser { user, sid, csrf })
    }
}

impl WebUser {
    /// Checks a form of this session: same origin and the right token.
    fn check(&self, st: &AppState, headers: &HeaderMap, token: &str) -> Result<(), WebError> {
        if !same_origin(headers) {
            return Err(forbidden("cross-origin form post"));
        }
        if !csrf_ok(st, SESSION_KIND, &self.sid, token) {
            return Err(forbidden("missing or wrong CSRF token"));
        }
        Ok(())
    }

    fn nav(&self) -> Option<Nav> {
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
async fn start_session(st: &AppState, user: &User) -> Result<HeaderValue, WebError> {
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
fn presession(st: &AppState, headers: &HeaderMap) -> (Vec<u8>, Option<HeaderValue>) {
    match cookie(headers, PRESESSION_COOKIE).and_then(unb64) {
        Some(id) => (id, None),
        None => {
            let id = random_id();
            let c = set_cookie(st, PRESESSION_COOKIE, &b64(&id), 3600);
            (id, Some(c))
        }
    }
}

/// Checks a login or sign-up form's origin and pre-session token.
fn check_presession(st: &AppState, headers: &HeaderMap, token: &str) -> Result<(), WebError> {
    if !same_origin(headers) {
        return Err(forbidden("cross-origin form post"));
    }
    let ok = cookie(headers, PRESESSION_COOKIE)
        .and_then(unb64)
        .is_some_and(|id| csrf_ok(st, PRESESSION_KIND, &id, token));
    if !ok {
        return Err(forbidden(
            "missing or wrong CSRF token (reload the form and try again)",
        ));
    }
    Ok(())
}

fn with_cookie(mut res: Response, c: Option<HeaderValue>) -> Response {
    if let Some(c) = c {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

// ------------------------------------------------------------- templates

#[derive(Template)]
#[template(path = "web/error.html")]
struct ErrorPage {
    user: Option<Nav>,
    csrf: String,
    status: u16,
    message: String,
}

#[derive(Template)]
#[template(path = "web/login.html")]
struct LoginPage {
    user: Option<Nav>,
    csrf: String,
    error: Option<String>,
    username: String,
}

#[derive(Template)]
#[template(path = "web/signup.html")]
struct SignupPage {
    user: Option<Nav>,
    csrf: String,
    error: Option<String>,
    username: String,
    email: String,
}

/// A condition as the page shows it.
pub struct CondRow {
    pub type_: String,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// An event as the page shows it.
pub struct EventRow {
    pub at: String,
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Everything the status section shows, for the page and the live view.
#[derive(serde::Serialize)]
pub struct LiveStatus {
    pub phase: String,
    pub message: String,
    pub progress: u8,
    pub converged: bool,
    pub generation: i64,
    pub observed_generation: i64,
    pub running: bool,
    pub vcpus: i32,
    pub memory_mib: i32,
    pub disk_gib: i32,
    pub web_url: Option<String>,
    pub ssh_command: Option<String>,
    pub conditions: Vec<(String, bool, String, String)>,
    pub events: Vec<(String, bool, String, String)>,
    pub deleting: bool,
}

#[derive(Template)]
#[template(path = "web/hosting.html")]
struct HostingPage {
    user: Option<Nav>,
    csrf: String,
    error: Option<String>,
    hosting: Option<LiveStatus>,
    conditions: Vec<CondRow>,
    events: Vec<EventRow>,
    sizes: Vec<(i64, i64, &'static str)>,
}

#[derive(Template)]
#[template(path = "web/delete.html")]
struct DeletePage {
    user: Option<Nav>,
    csrf: String,
    username: String,
}

#[derive(Template)]
#[template(path = "web/console.html")]
struct ConsolePage {
    user: Option<Nav>,
    csrf: String,
    captured_at: Option<String>,
    truncated: bool,
    text: String,
}

/// A hosting row of the admin page.
pub struct AdminRow {
    pub id: String,
    pub owner: String,
    pub pool: bool,
    pub phase: String,
    pub converged: bool,
    pub size: String,
    pub ssh_port: String,
    pub node: String,
}

#[derive(Template)]
#[template(path = "web/admin.html")]
struct AdminPage {
    user: Option<Nav>,
    csrf: String,
    rows: Vec<AdminRow>,
    node: String,
}

/// The sizes offered by the create and resize forms: (vCPUs, MiB, label).
const SIZES: &[(i64, i64, &str)] = &[
    (1, 512, "Small: 1 vCPU, 512 MiB"),
    (1, 1024, "Medium: 1 vCPU, 1 GiB"),
    (2, 2048, "Large: 2 vCPUs, 2 GiB"),
];

// --------------------------------------------------------------- status

/// How far provisioning has got, 0-100, from the conditions that make it up.
pub fn progress(rec: &HostingRecord) -> u8 {
    let s = &rec.status;
    let converged = s.observed_generation == rec.generation;
    match s.phase {
        Phase::Ready | Phase::Stopped if converged => 100,
        Phase::Failed => 100,
        _ => {
            let steps = [
                ConditionType::Scheduled,
                ConditionType::VMRunning,
                ConditionType::RouteConfigured,
                ConditionType::WebReady,
            ];
            let done = steps
                .iter()
                .filter(|t| crate::domain::has_true(&s.conditions, **t))
                .count() as u8;
            5 + done * 22
        }
    }
}

fn live_status(st: &AppState, rec: &HostingRecord, events: &[crate::store::Event]) -> LiveStatus {
    let s = &rec.status;
    LiveStatus {
        phase: s.phase.to_string(),
        message: s.message.clone().unwrap_or_default(),
        progress: progress(rec),
        converged: s.observed_generation == rec.generation,
        generation: rec.generation,
        observed_generation: s.observed_generation,
        running: rec.spec.running,
        vcpus: rec.spec.vcpus,
        memory_mib: rec.spec.memory_mib,
        disk_gib: rec.spec.disk_gib,
        web_url: s
            .http_port
            .map(|_| st.config.sites.web_url(&rec.username, rec.user_id)),
        ssh_command: s.ssh_port.map(|p| ssh_command(st.config.public_host(), p)),
        conditions: s
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.to_string(),
                    c.is_true(),
                    c.reason.to_string(),
                    c.message.clone(),
                )
            })
            .collect(),
        events: events
            .iter()
            .map(|e| {
                (
                    e.at.format("%H:%M:%S").to_string(),
                    e.type_ == "Warning",
                    e.reason.clone(),
                    e.message.clone(),
                )
            })
            .collect(),
        deleting: rec.deletion_requested_at.is_some(),
    }
}

/// The signed-in user's hosting, if any.
async fn my_record(st: &AppState, user: UserId) -> Result<Option<HostingRecord>, WebError> {
    match hosting_of(st, user).await {
        Ok(r) => Ok(Some(r)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn hosting_view(
    st: &AppState,
    u: &WebUser,
    error: Option<String>,
) -> Result<HostingPage, WebError> {
    let rec = my_record(st, u.user.id).await?;
    let (hosting, conditions, events) = match &rec {
        None => (None, vec![], vec![]),
        Some(rec) => {
            let evs = st.store.recent_events(rec.id, 20).await?;
            let live = live_status(st, rec, &evs);
            let conditions = live
                .conditions
                .iter()
                .map(|(t, ok, r, m)| CondRow {
                    type_: t.clone(),
                    ok: *ok,
                    reason: r.clone(),
                    message: m.clone(),
                })
                .collect();
            let events = live
                .events
                .iter()
                .map(|(at, w, r, m)| EventRow {
                    at: at.clone(),
                    warning: *w,
                    reason: r.clone(),
                    message: m.clone(),
                })
                .collect();
            (Some(live), conditions, events)
        }
    };
    Ok(HostingPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        error,
        hosting,
        conditions,
        events,
        sizes: SIZES.to_vec(),
    })
}

// ---------------------------------------------------------------- handlers

async fn index(st: State<AppState>, headers: HeaderMap) -> Response {
    match cookie(&headers, SESSION_COOKIE).and_then(unb64) {
        Some(sid) if matches!(st.store.session_user(&sid).await, Ok(Some(_))) => {
            Redirect::to("/ui/hosting").into_response()
        }
        _ => Redirect::to("/ui/login").into_response(),
    }
}

async fn login_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
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
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

async fn login_submit(
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

async fn signup_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
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
struct SignupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

async fn signup_submit(
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
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
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

async fn hosting_page(State(st): State<AppState>, u: WebUser) -> Result<Response, WebError> {
    Ok(render(&hosting_view(&st, &u, None).await?))
}

/// Re-renders the hosting page with a validation error (the form's status).
async fn form_error(st: &AppState, u: &WebUser, e: ApiError) -> Result<Response, WebError> {
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
async fn after_form<T>(
    st: &AppState,
    u: &WebUser,
    result: Result<T, ApiError>,
) -> Result<Response, WebError> {
    match result {
        Ok(_) => Ok(to_hosting()),
        Err(e) => form_error(st, u, e).await,
    }
}

fn to_hosting() -> Response {
    Redirect::to("/ui/hosting").into_response()
}

#[derive(Deserialize)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    size: String,
    #[serde(default)]
    ssh_key: String,
}

/// The size a form picked: "vcpus:mib" among [`SIZES`].
fn parse_size(s: &str) -> Result<(i64, i64), ApiError> {
    SIZES
        .iter()
        .find(|(c, m, _)| format!("{c}:{m}") == s)
        .map(|(c, m, _)| (*c, *m))
        .ok_or_else(|| ApiError::Unprocessable("size: pick one of the offered sizes".into()))
}

async fn hosting_create(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<CreateForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        host_op(&st, u.user.id).await?;
        let (vcpus, memory_mib) = parse_size(&f.size)?;
        let keys: Vec<String> = f
            .ssh_key
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
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

#[derive(Deserialize)]
struct PowerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    running: String,
}

async fn hosting_power(
    State(st): State<AppState>,
    u: WebUser,
    headers: HeaderMap,
    Form(f): Form<PowerForm>,
) -> Result<Response, WebError> {
    u.check(&st, &headers, &f.csrf)?;
    let result = async {
        let running = match f.running.as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(ApiError::Unprocessable("running: true or false".into())),
        };
        host_op(&st, u.user.id).await?;
        let patch = SpecPatch {
            running: Some(running),
            ..SpecPatch::default()
        };
        patch_for(&st, u.user.id, &patch).await
    }
    .await;
    after_form(&st, &u, result).await
}

#[derive(Deserialize)]
struct ResizeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    size: String,
}

async fn hosting_resize(
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

async fn delete_confirm(State(st): State<AppState>, u: WebUser) -> Result<Response, WebError> {
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
struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

async fn hosting_delete(
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

/// `GET /ui/hosting/events`: Server-Sent Events, one `status` event (JSON
/// of [`LiveStatus`]) whenever what the page shows changes, `gone` when
/// the hosting no longer exists, `ended` when the session does.
async fn hosting_events(State(st): State<AppState>, u: WebUser) -> Result<Response, WebError> {
    let web = st.web.clone();
    let slot = web.open(u.user.id).ok_or_else(|| {
        WebError::Page(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live views open".into(),
        )
    })?;
    struct Loop {
        st: AppState,
        sid: Vec<u8>,
        user: UserId,
        last: Option<String>,
        first: bool,
        done: bool,
        ticks: u32,
        _slot: StreamSlot,
    }
    let init = Loop {
        st,
        sid: u.sid,
        user: u.user.id,
        last: None,
        first: true,
        done: false,
        ticks: 0,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(init, |mut l| async move {
        if l.done {
            return None;
        }
        loop {
            if !l.first {
                tokio::time::sleep(SSE_TICK).await;
            }
            l.first = false;
            // The session is looked at every SESSION_EVERY ticks (a logout
            // ends the stream within seconds).
            l.ticks += 1;
            if l.ticks % SESSION_EVERY == 1 {
                match l.st.store.session_user(&l.sid).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        l.done = true;
                        let ev = SseEvent::default().event("ended").data("session ended");
                        return Some((Ok::<_, std::convert::Infallible>(ev), l));
                    }
                    Err(_) => continue,
                }
            }
            // The read view when it vouches for the hosting (no query);
            // Postgres otherwise.
            let cached = l.st.store.view().and_then(|v| v.live()).and_then(|live| {
                match live.hosting(l.user) {
                    crate::store::view::Cached::Hit(h) => Some(h),
                    _ => None,
                }
            });
            let (rec, evs) = match cached {
                Some(h) => (h.rec.clone(), h.events.clone()),
                None => {
                    let rec = match l.st.store.get_record_by_user(l.user).await {
                        Ok(r) => r,
                        Err(_) => continue,
                    };
                    let Some(rec) = rec else {
                        l.done = true;
                        let ev = SseEvent::default().event("gone").data("no hosting");
                        return Some((Ok(ev), l));
                    };
                    let Ok(evs) = l.st.store.recent_events(rec.id, 20).await else {
                        continue;
                    };
                    (rec, evs)
                }
            };
            let json =
                serde_json::to_string(&live_status(&l.st, &rec, &evs)).expect("status serializes");
            if l.last.as_deref() != Some(json.as_str()) {
                l.last = Some(json.clone());
                return Some((Ok(SseEvent::default().event("status").data(json)), l));
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn console_page(State(st): State<AppState>, u: WebUser) -> Result<Response, WebError> {
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

async fn admin_page(State(st): State<AppState>, u: WebUser) -> Result<Response, WebError> {
    if u.user.role != Role::Admin {
        return Err(ApiError::Forbidden.into());
    }
    let node = match st.store.last_heartbeat(&st.config.instance).await {
        Ok(Some((holder, _, _))) => holder,
        _ => "no reconciler heartbeat".to_string(),
    };
    let rows = st
        .store
        .list_records()
        .await?
        .iter()
        .map(|r| AdminRow {
            id: r.id.to_string(),
            owner: r.username.as_str().to_string(),
            pool: r.pool,
            phase: r.status.phase.to_string(),
            converged: r.status.observed_generation == r.generation,
            size: format!(
                "{} vCPU, {} MiB, {} GiB",
                r.spec.vcpus, r.spec.memory_mib, r.spec.disk_gib
            ),
            ssh_port: r.status.ssh_port.map(|p| p.to_string()).unwrap_or_default(),
            node: format!("{} ({})", st.config.instance, node),
        })
        .collect();
    Ok(render(&AdminPage {
        user: u.nav(),
        csrf: u.csrf.clone(),
        rows,
        node,
    }))
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../templates/web/static/app.js"),
    )
}

async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../templates/web/static/app.css"),
    )
}
