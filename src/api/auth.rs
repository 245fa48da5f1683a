//! Authentication: registration, login (OAuth2 password form or JSON), JWT
//! issuing and the `AuthUser` extractor. HS256 only (the algorithm is pinned);
//! bcrypt runs on the blocking pool, a bounded number at a time
//! (`limits::Guard::bcrypt`), so logins never stall other requests. Tokens
//! carry a `jti` (for logout) and the user's token epoch (bumped by a
//! password change); failed logins are rate-limited and audited.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::limits::{client_key, Rule};
use super::AppState;
use crate::domain::{Email, Password, Role, UserId, Username};
use crate::store::view::Cached;

/// JWT claims. `tep` is the user's token epoch when the token was issued.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub tep: i32,
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
const LEEWAY: u64 = 5;

/// What a valid token says.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub user: UserId,
    pub jti: uuid::Uuid,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub epoch: i32,
}

/// Issues and checks tokens.
#[derive(Clone)]
pub struct Jwt {
    enc: EncodingKey,
    dec: DecodingKey,
    ttl: std::time::Duration,
}

impl Jwt {
    pub fn new(secret: &[u8], ttl: std::time::Duration) -> Jwt {
        Jwt {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    /// A token for `user` at token epoch `epoch`, valid from now for the TTL.
    pub fn issue(&self, user: UserId, epoch: i32) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
            tep: epoch,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Checks signature (HS256 only), `exp` and `nbf` (with a small leeway),
    /// `iat` not in the future, a lifetime no longer than the TTL, and a `jti`.
    pub fn verify(&self, token: &str) -> Result<TokenInfo, ApiError> {
        const BAD: ApiError = ApiError::Unauthorized("invalid or expired token");
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = LEEWAY;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub", "iat", "nbf"]);
        let c = jsonwebtoken::decode::<Claims>(token, &self.dec, &v)
            .map_err(|_| BAD)?
            .claims;
        let now = chrono::Utc::now().timestamp();
        let leeway = LEEWAY as i64;
        if c.iat > now + leeway || c.exp - c.iat > self.ttl.as_secs() as i64 + leeway {
            return Err(BAD);
        }
        Ok(TokenInfo {
            user: uuid::Uuid::parse_str(&c.sub).map(UserId).map_err(|_| BAD)?,
            jti: uuid::Uuid::parse_str(&c.jti).map_err(|_| BAD)?,
            expires_at: chrono::DateTime::from_timestamp(c.exp, 0).ok_or(BAD)?,
            epoch: c.tep,
        })
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }
}

/// The client's address, for per-address limits: the TCP peer, or, behind
/// one of `HOSTD_TRUSTED_PROXIES`, the address they forwarded
/// (`X-Forwarded-For`); IPv4-mapped addresses as IPv4.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let xff: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(ClientAddr(super::limits::client_of(
            peer,
            &xff,
            &st.config.trusted_proxies,
        )))
    }
}

/// The authenticated caller (from `Authorization: Bearer <jwt>`).
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub role: Role,
    pub username: Username,
    /// The presented token (for logout).
    pub token: TokenInfo,
}

/// Checks a bearer token fully: signature and claims, the user's token
/// epoch (a password change voids older tokens), and revocation.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<AuthUser, ApiError> {
    const BAD: ApiError = ApiError::Unauthorized("invalid or expired token");
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthorized("missing bearer token"))?;
    let info = state.jwt.verify(token.trim())?;
    // The read view answers without a round trip when it is live, knows
    // the user, and has not been overtaken by this process's own writes.
    // Anything it cannot vouch for goes to Postgres: a user it has not seen
    // (new, or deleted: a deleted user's token is refused at once), a token
    // newer than the epoch it holds (a password changed elsewhere).
    if let Some(live) = state.store.view().and_then(|v| v.live()) {
        if let Cached::Hit(user) = live.user(info.user) {
            if info.epoch < user.token_epoch || live.is_revoked(info.jti) {
                return Err(BAD);
            }
            let elsewhere = if info.epoch == user.token_epoch {
                state
                    .guard
                    .refused_elsewhere(info.jti, info.user, info.epoch)
                    .await
            } else {
                None
            };
            if elsewhere == Some(true) {
                return Err(BAD);
            }
            if elsewhere == Some(false) {
                return Ok(AuthUser {
                    id: info.user,
                    role: user.role,
                    username: Username::parse(&user.username)
                        .map_err(|_| ApiError::Unauthorized("invalid user"))?,
                    token: info,
                });
            }
        }
    }
    let user = state.store.get_user(info.user).await?.ok_or(BAD)?;
    if user.token_epoch != info.epoch || state.guard.is_revoked(info.jti).await? {
        return Err(BAD);
    }
    Ok(AuthUser {
        id: info.user,
        role: user.role,
        username: Username::parse(&user.username)
            .map_err(|_| ApiError::Unauthorized("invalid user"))?,
        token: info,
    })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await
    }
}

/// Whether the caller presented a valid admin token (anything else, a bad
/// token included, is simply not an admin).
pub struct IsAdmin(pub bool);

impl FromRequestParts<AppState> for IsAdmin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(IsAdmin(false));
        }
        let admin = authenticate(parts, state)
            .await
            .is_ok_and(|u| u.role == Role::Admin);
        Ok(IsAdmin(admin))
    }
}

/// The body of `POST /auth/register`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// A valid email address (unique, compared case-insensitively).
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// 8 to 72 bytes, no control characters.
    #[schema(min_length = 8, max_length = 72)]
    password: String,
    /// 3 to 32 of a-z, 0-9, `-`, `_`, starting with a letter (unique).
    #[schema(pattern = "^[a-z][a-z0-9_-]{2,31}$")]
    username: String,
}

/// Creates an account from raw fields (the caller has counted the attempt
/// against the sign-up limit).
pub async fn register_account(
    st: &AppState,
    email: &str,
    username: &str,
    password: &str,
) -> Result<crate::store::User, ApiError> {
    let email = Email::parse(email)?;
    let username = Username::parse(username)?;
    let password = Password::parse(password)?;
    let hash = hash_password(st, password).await?;
    let user = st
        .store
        .create_user(&email, &username, &hash, Role::User)
        .await?;
    tracing::info!(user = %user.id, username = %user.username, "user registered");
    Ok(user)
}

/// `POST /api/v1/auth/register`
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The new account", body = crate::store::User),
        (status = 409, description = "Email or username taken", body = ErrorBody),
        (status = 429, description = "Too many sign-ups from this address (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn register(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    body: Result<Json<RegisterBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    st.guard.hit(Rule::Register, &client_key(addr)).await?;
    let Json(body) = body?;
    let user = register_account(&st, &body.email, &body.username, &body.password).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// The body of `POST /auth/login` (OAuth2 password form or JSON); the
/// OAuth2 form's extra fields are accepted and ignored.
#[derive(Deserialize, utoipa::ToSchema)]
struct LoginBody {
    /// Username or email.
    username: String,
    password: String,
    #[serde(default)]
    #[allow(dead_code)]
    grant_type: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    scope: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    client_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    client_secret: Option<String>,
}

/// A bearer token and its lifetime (`hostctl` reads it back).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// A fresh token for `user` at token epoch `epoch`.
fn token_response(
    st: &AppState,
    user: UserId,
    epoch: i32,
) -> Result<Json<TokenResponse>, ApiError> {
    Ok(Json(TokenResponse {
        access_token: st.jwt.issue(user, epoch)?,
        token_type: "bearer".into(),
        expires_in: st.jwt.ttl_secs(),
    }))
}

/// bcrypt of a valid password, through the bounded gate.
async fn hash_password(st: &AppState, p: Password) -> Result<String, ApiError> {
    let cost = st.config.bcrypt_cost;
    st.guard
        .bcrypt(move || bcrypt::hash(p.expose(), cost))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Parses a login body: form (`application/x-www-form-urlencoded`) or JSON.
fn login_body(headers: &HeaderMap, body: &[u8]) -> Result<LoginBody, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid form: {e}")))
    } else if ctype.starts_with("application/json") {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid JSON: {e}")))
    } else {
        Err(ApiError::UnsupportedMediaType(
            "expected application/x-www-form-urlencoded or application/json".into(),
        ))
    }
}

/// Whether `password` matches `hash`. The password as given must be valid
/// (8-72 bytes, no control characters: anything else is simply wrong, never
/// truncated); it is compared in NFC, and, for hashes made before passwords
/// were normalised, as typed.
async fn password_matches(st: &AppState, password: &str, hash: String) -> Result<bool, ApiError> {
    let Ok(p) = Password::parse(password) else {
        return Ok(false);
    };
    let raw = (p.expose() != password).then(|| password.to_string());
    st.guard
        .bcrypt(move || {
            bcrypt::verify(p.expose(), &hash).unwrap_or(false)
                || raw.is_some_and(|r| bcrypt::verify(r, &hash).unwrap_or(false))
        })
        .await
}

/// A failed login (its attempts stay counted), logged.
fn login_failed(st: &AppState, account: &str, addr: &str) -> ApiError {
    st.metrics.login_failures.inc();
    tracing::warn!(target: "audit", account, addr, "login failed");
    ApiError::Unauthorized("incorrect username or password")
}

/// `POST /api/v1/auth/login`: form (`application/x-www-form-urlencoded`) or
/// JSON. Past `HOSTD_LOGIN_MAX_FAILURES` failures for the account (or the
/// per-address limit) within the window: 429 with `Retry-After`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body(content(
        (LoginBody = "application/x-www-form-urlencoded"),
        (LoginBody = "application/json"),
    )),
    responses(
        (status = 200, description = "A bearer token", body = TokenResponse),
        (status = 401, description = "Incorrect username or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn login(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let body = login_body(&headers, &body?)?;
    let user = check_credentials(&st, &client_key(addr), &body.username, &body.password).await?;
    token_response(&st, user.id, user.token_epoch)
}

/// The account `login` (username or email) names if `password` is right,
/// with every login limit applied: attempts count before the outcome (a
/// right password takes its count back), so concurrent guesses cannot
/// overrun them; past `HOSTD_LOGIN_MAX_FAILURES` failures for the account
/// (or the per-address limit) within the window: 429.
pub async fn check_credentials(
    st: &AppState,
    addr: &str,
    login: &str,
    password: &str,
) -> Result<crate::store::User, ApiError> {
    let by_addr = st.guard.attempt(Rule::LoginAddress, addr).await?;
    let login = login.trim();
    // No account name is longer or holds a control character (and Postgres
    // refuses NUL in text: such a name must not reach a query).
    let found = if login.len() > 254 || login.chars().any(char::is_control) {
        None
    } else {
        st.store.find_user_for_login(login).await?
    };
    // The account key: the user id when the account exists (so its email
    // and username share one budget), else the name as typed.
    let account = match &found {
        Some((u, _)) => u.id.to_string(),
        None => login.to_lowercase(),
    };
    // The lockout is per account *and* address: guesses from elsewhere
    // never lock the owner out.
    let pair = format!("{account}@{addr}");
    let by_pair = match st.guard.attempt(Rule::LoginAccountAddress, &pair).await {
        Ok(t) => t,
        Err(e) => {
            st.guard.forgive(by_addr).await;
            return Err(e);
        }
    };
    // Past the account's ceiling (failures from anywhere), attempts on it
    // are slowed, not refused: they take turns, one per `SLOW_TURN`.
    let (by_account, _turn) = match st.guard.attempt(Rule::LoginAccount, &account).await {
        Ok(t) => (Some(t), None),
        Err(ApiError::TooManyRequests(_)) => (None, Some(st.guard.slow_turn(&account).await)),
        Err(e) => {
            st.guard.forgive(by_pair).await;
            st.guard.forgive(by_addr).await;
            return Err(e);
        }
    };
    // Always one bcrypt verification, against a dummy hash when the user
    // does not exist, so both failures take the same time.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, st.dummy_hash.clone()),
    };
    let ok = password_matches(st, password, hash).await?;
    match user {
        Some(u) if ok => {
            if let Some(t) = by_account {
                st.guard.forgive(t).await;
            }
            st.guard.forgive(by_pair).await;
            st.guard.forgive(by_addr).await;
            Ok(u)
        }
        _ => Err(login_failed(st, &account, addr)),
    }
}

/// Checks the caller's own password before a sensitive change. A wrong one
/// counts against the account's login limit, like a failed login (counted
/// before the outcome, taken back if right).
async fn confirm_password(
    st: &AppState,
    id: UserId,
    addr: Option<std::net::IpAddr>,
    password: &str,
) -> Result<(), ApiError> {
    let (account, addr) = (id.to_string(), client_key(addr));
    let pair = format!("{account}@{addr}");
    let attempt = st.guard.attempt(Rule::LoginAccountAddress, &pair).await?;
    let hash = st
        .store
        .password_hash(id)
        .await?
        .ok_or(ApiError::Unauthorized("invalid user"))?;
    if !password_matches(st, password, hash).await? {
        return Err(login_failed(st, &account, &addr));
    }
    st.guard.forgive(attempt).await;
    Ok(())
}

/// `POST /api/v1/auth/logout`: revokes the presented token.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses((status = 204, description = "The presented token is revoked")))]
pub async fn logout(State(st): State<AppState>, auth: AuthUser) -> Result<StatusCode, ApiError> {
    st.guard
        .revoke(auth.token.jti, auth.id, auth.token.expires_at)
        .await?;
    tracing::info!(target: "audit", user = %auth.id, "token revoked (logout)");
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `PUT /auth/password`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    old_password: String,
    new_password: String,
}

/// `PUT /api/v1/auth/password`: checks the old password (failures count
/// against the account's login limit), sets the new one and revokes every
/// token of the user; answers with a fresh token.
#[utoipa::path(put, path = "/api/v1/auth/password", tag = "auth",
    security(("bearer" = [])),
    request_body = PasswordBody,
    responses(
        (status = 200, description = "Changed; every earlier token is void. A fresh token", body = TokenResponse),
        (status = 429, description = "Too many failed attempts (`Retry-After`)", body = ErrorBody),
    ))]
pub async fn change_password(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    auth: AuthUser,
    body: Result<Json<PasswordBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let Json(body) = body?;
    let epoch = set_password(&st, auth.id, addr, &body.old_password, &body.new_password).await?;
    token_response(&st, auth.id, epoch)
}

/// Sets a user's password after checking the old one (failures count
/// against the account's login limit); every earlier token and dashboard
/// session of the user ends. The API's and the dashboard's rule; the new
/// token epoch.
pub async fn set_password(
    st: &AppState,
    id: UserId,
    addr: Option<std::net::IpAddr>,
    old: &str,
    new: &str,
) -> Result<i32, ApiError> {
    let new = Password::parse(new).map_err(|e| {
        ApiError::Unprocessable(e.to_string().replacen("password", "new_password", 1))
    })?;
    confirm_password(st, id, addr, old).await?;
    let hash = hash_password(st, new).await?;
    let epoch = st.store.change_password(id, &hash).await?;
    revoke_all(st, id, epoch).await;
    st.metrics.password_changes.inc();
    tracing::info!(target: "audit", user = %id, "password changed; every earlier token revoked");
    Ok(epoch)
}

/// Tells every API process that the user's tokens before `epoch` are void.
async fn revoke_all(st: &AppState, id: UserId, epoch: i32) {
    let ttl = std::time::Duration::from_secs(st.jwt.ttl_secs());
    st.guard.mark_user(id, &epoch.to_string(), ttl).await;
}

/// Ends every token and dashboard session of the user ("log out
/// everywhere"); the new token epoch.
pub async fn end_every_session(st: &AppState, id: UserId) -> Result<i32, ApiError> {
    let epoch = st.store.bump_token_epoch(id).await?;
    revoke_all(st, id, epoch).await;
    tracing::info!(target: "audit", user = %id, "every token and session ended by the user");
    Ok(epoch)
}

/// The body of `DELETE /auth/me`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountBody {
    /// The account's password, to confirm.
    password: String,
}

#[utoipa::path(delete, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    request_body = DeleteAccountBody,
    responses(
        (status = 204, description = "The account is gone; every token and session of it is void at once, in every API process"),
        (status = 401, description = "Wrong password (counts as a failed login)", body = ErrorBody),
        (status = 409, description = "The account still has a hosting: delete it first", body = ErrorBody),
        (status = 429, description = "Too many failed attempts (`Retry-After`)", body = ErrorBody),
    ))]
/// `DELETE /api/v1/auth/me {"password"}`: deletes the caller's account.
pub async fn delete_me(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    auth: AuthUser,
    body: Result<Json<DeleteAccountBody>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body?;
    delete_account(&st, auth.id, addr, &body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the user's account after checking its password; refused while
/// it has a hosting. The API's and the dashboard's rule.
pub async fn delete_account(
    st: &AppState,
    id: UserId,
    addr: Option<std::net::IpAddr>,
    password: &str,
) -> Result<(), ApiError> {
    confirm_password(st, id, addr, password).await?;
    st.store.delete_user(id).await.map_err(|e| match e {
        crate::store::StoreError::Conflict(_) => {
            ApiError::Conflict("the account still has a hosting: delete it first".into())
        }
        crate::store::StoreError::NotFound => ApiError::Unauthorized("invalid user"),
        o => o.into(),
    })?;
    let ttl = std::time::Duration::from_secs(st.jwt.ttl_secs());
    st.guard.mark_user(id, "deleted", ttl).await;
    tracing::info!(target: "audit", user = %id, "account deleted by its owner");
    Ok(())
}

/// `GET /api/v1/auth/me`
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's account", body = crate::store::User)))]
pub async fn me(State(st): State<AppState>, auth: AuthUser) -> Result<impl IntoResponse, ApiError> {
    if let Some(live) = st.store.view().and_then(|v| v.live()) {
        if let Cached::Hit(user) = live.user(auth.id) {
            return Ok(Json((*user).clone()));
        }
    }
    let user = st
        .store
        .get_user(auth.id)
        .await?
        .ok_or(ApiError::Unauthorized("invalid or expired token"))?;
    Ok(Json(user))
}
