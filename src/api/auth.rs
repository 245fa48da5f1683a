//! Authentication: registration, login (OAuth2 password form or JSON), JWT
//! issuing and the `AuthUser` extractor. HS256 only (the algorithm is pinned);
//! bcrypt runs on the blocking pool so logins never stall other requests.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::AppState;
use crate::domain::{Email, Password, Role, UserId, Username};

/// JWT claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
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

    pub fn issue(&self, user: UserId) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub", "iat"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &v)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token"))?;
        uuid::Uuid::parse_str(&data.claims.sub)
            .map(UserId)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token"))
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }
}

/// The authenticated caller (from `Authorization: Bearer <jwt>`).
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: UserId,
    pub role: Role,
    pub username: Username,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let id = state.jwt.verify(token.trim())?;
        let user = state
            .store
            .get_user(id)
            .await?
            .ok_or(ApiError::Unauthorized("invalid or expired token"))?;
        Ok(AuthUser {
            id,
            role: user.role,
            username: Username::parse(&user.username)
                .map_err(|_| ApiError::Unauthorized("invalid user"))?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    email: String,
    password: String,
    username: String,
}

/// `POST /api/v1/auth/register`
pub async fn register(
    State(st): State<AppState>,
    body: Result<Json<RegisterBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    let email = Email::parse(&body.email)?;
    let username = Username::parse(&body.username)?;
    let password = Password::parse(&body.password)?;
    let cost = st.config.bcrypt_cost;
    let hash = tokio::task::spawn_blocking(move || bcrypt::hash(password.expose(), cost))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = st
        .store
        .create_user(&email, &username, &hash, Role::User)
        .await?;
    tracing::info!(user = %user.id, username = %user.username, "user registered");
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize)]
struct LoginBody {
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

#[derive(Serialize)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// `POST /api/v1/auth/login`: form (`application/x-www-form-urlencoded`) or JSON.
pub async fn login(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let body = body?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body: LoginBody = if ctype.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid form: {e}")))?
    } else if ctype.starts_with("application/json") {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Unprocessable(format!("invalid JSON: {e}")))?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "expected application/x-www-form-urlencoded or application/json".into(),
        ));
    };
    const BAD: ApiError = ApiError::Unauthorized("incorrect username or password");
    if body.username.len() > 254 || body.password.len() > 1024 {
        return Err(BAD);
    }
    let found = st.store.find_user_for_login(body.username.trim()).await?;
    // Always run one bcrypt verification, against a dummy hash when the user
    // does not exist, so both failures take the same time.
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, st.dummy_hash.clone()),
    };
    let password = body.password;
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match user {
        Some(u) if ok => Ok(Json(TokenResponse {
            access_token: st.jwt.issue(u.id)?,
            token_type: "bearer",
            expires_in: st.jwt.ttl_secs(),
        })),
        _ => Err(BAD),
    }
}

/// `GET /api/v1/auth/me`
pub async fn me(State(st): State<AppState>, auth: AuthUser) -> Result<impl IntoResponse, ApiError> {
    let user = st
        .store
        .get_user(auth.id)
        .await?
        .ok_or(ApiError::Unauthorized("invalid or expired token"))?;
    Ok(Json(user))
}
