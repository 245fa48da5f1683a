//! Cooperative shutdown: one token cancelled by SIGINT/SIGTERM (or a test),
//! watched by the API server, the reconciler loop and its workers, so each
//! finishes its current step and releases what it holds (the leader lease).

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
