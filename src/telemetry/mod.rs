//! Logging and tracing set-up: one subscriber for the whole process, filtered
//! by `RUST_LOG` (default `info`), JSON when `HOSTD_LOG_JSON=1`; and the
//! Prometheus [`metrics`].

use tracing_subscriber::{fmt, EnvFilter};

pub mod metrics;
pub use metrics::Metrics;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
