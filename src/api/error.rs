//! The API's one error type. Only this layer knows HTTP status codes. Every
//! error renders as `{"error":{"code","message"}}`; internal errors are logged
//! with detail and answered with a generic 500 that echoes nothing.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::domain::ValidationError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A rate limit: 429 with `Retry-After`.
    #[error("too many requests: retry in {} s", retry_secs(.0))]
    TooManyRequests(std::time::Duration),
    /// Too much work queued (bcrypt): 503 with `Retry-After`.
    #[error("the server is busy: retry in {} s", retry_secs(.0))]
    Busy(std::time::Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_code().0
    }

    /// What the client is told: internal details are logged here and
    /// replaced by a generic message.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal server error".to_string()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "dependency unavailable");
                "service temporarily unavailable".to_string()
            }
            ApiError::Unauthorized(m) => m.to_string(),
            other => other.to_string(),
        }
    }

    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The body of every error response.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine-readable `code` and a human message.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// One of: bad_request, unauthorized, forbidden, not_found, conflict,
    /// payload_too_large, unsupported_media_type, validation_failed,
    /// unavailable, rate_limited, busy, internal.
    #[schema(value_type = String, pattern = "^(bad_request|unauthorized|forbidden|not_found|conflict|payload_too_large|unsupported_media_type|validation_failed|unavailable|rate_limited|busy|internal)$")]
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let message = self.public_message();
        let body = Json(ErrorBody {
            error: ErrorDetail { code, message },
        });
        match self {
            ApiError::TooManyRequests(d) | ApiError::Busy(d) => (
                status,
                [(axum::http::header::RETRY_AFTER, retry_secs(&d).to_string())],
                body,
            )
                .into_response(),
            _ => (status, body).into_response(),
        }
    }
}

/// Whole seconds to wait, at least 1 (`Retry-After` has no fractions).
fn retry_secs(d: &std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Unprocessable(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Invalid(v) => ApiError::Unprocessable(v.to_string()),
            StoreError::Db(sqlx::Error::PoolTimedOut) | StoreError::Db(sqlx::Error::Io(_)) => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Maps axum's JSON extraction failures onto our error shape.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection::*;
        match r {
            JsonDataError(e) => ApiError::Unprocessable(e.body_text()),
            JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
            MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge("request body too large".into())
                } else {
                    ApiError::BadRequest(e.body_text())
                }
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body too large".into())
        } else {
            ApiError::BadRequest(r.body_text())
        }
    }
}
