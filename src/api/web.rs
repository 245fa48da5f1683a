//! placeholder
use axum::Router;
pub fn router() -> Router<super::AppState> { Router::new() }
