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
//!
//! Map: [`session`] (cookies, CSRF, the signed-in user, errors), [`pages`]
//! (templates and view models), [`forms`] (sign-in and the hosting page's
//! handlers), [`backups`] (backups, restore, reset), [`keys`] (SSH keys),
//! [`account`], [`admin`] (the admin page that acts), [`graphs`] (the
//! statistics page's SVG graphs), [`live`] (the
//! Server-Sent Events streams).

use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use super::AppState;
use forms::{
    console_page, delete_confirm, hosting_create, hosting_delete, hosting_page, hosting_resize,
    hosting_switch, index, login_page, login_submit, logout, signup_page, signup_submit,
};

mod account;
mod admin;
mod backups;
mod forms;
mod graphs;
mod keys;
mod live;
mod pages;
mod session;

pub use live::WebState;
pub use pages::{progress, AdminRow, CondRow, EventRow, LiveStatus};
pub use session::{Nav, WebError, WebUser};
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
        .route("/ui/hosting/power", post(hosting_switch))
        .route("/ui/hosting/resize", post(hosting_resize))
        .route("/ui/hosting/hsts", post(hosting_switch))
        .route("/ui/account", get(account::account_page))
        .route("/ui/account/password", post(account::change_password))
        .route("/ui/account/logout-all", post(account::logout_everywhere))
        .route("/ui/account/delete", post(account::delete))
        .route("/ui/hosting/domains", post(forms::domain_add))
        .route("/ui/hosting/domains/remove", post(forms::domain_remove))
        .route(
            "/ui/hosting/delete",
            get(delete_confirm).post(hosting_delete),
        )
        .route("/ui/hosting/events", get(live::hosting_events))
        .route("/ui/hosting/console", get(console_page))
        .route("/ui/stats", get(graphs::stats_page))
        .route(
            "/ui/backups",
            get(backups::backups_page).post(backups::backup_now),
        )
        .route("/ui/backups/events", get(live::backups_events))
        .route(
            "/ui/backups/restore",
            get(backups::restore_confirm).post(backups::restore_submit),
        )
        .route(
            "/ui/hosting/reset",
            get(backups::reset_confirm).post(backups::reset_submit),
        )
        .route("/ui/keys", get(keys::keys_page))
        .route("/ui/keys/add", post(keys::keys_add))
        .route("/ui/keys/remove", post(keys::keys_remove))
        .route("/ui/admin", get(admin::admin_page))
        .route("/ui/admin/hosting/power", post(admin::admin_power))
        .route(
            "/ui/admin/hosting/delete",
            get(admin::admin_delete_confirm).post(admin::admin_delete),
        )
        .route("/ui/admin/users/role", post(admin::admin_role))
        .route("/ui/admin/nodes/add", post(admin::admin_node_add))
        .route("/ui/admin/nodes/schedule", post(admin::admin_node_schedule))
        .route("/ui/admin/nodes/remove", post(admin::admin_node_remove))
        .route("/ui/admin/nodes/fence", post(admin::admin_node_fence))
        .route("/ui/admin/nodes/evacuate", post(admin::admin_node_evacuate))
        .route("/ui/admin/nodes/drain", post(admin::admin_node_drain))
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
async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../../templates/web/static/app.js"),
    )
}

async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../../templates/web/static/app.css"),
    )
}
