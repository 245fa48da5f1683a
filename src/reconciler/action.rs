//! What a reconcile returns: the next [`Action`] for the controller, or why
//! it failed ([`ReconcileError`], the reconciler's one error enum).

use std::time::Duration;

use crate::domain::Reason;
use crate::drivers::DriverError;
use crate::faults::InjectedFault;
use crate::images::ImageError;
use crate::store::StoreError;

/// What the controller should do after a successful reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Converged; wait for a change or the next resync.
    AwaitChange,
    /// Not converged yet (e.g. waiting for the guest to boot): look again later.
    Requeue(Duration),
    /// The hosting is gone (finalizer complete, or never existed).
    Gone,
}

/// Why a reconcile failed. Stored as condition reason/message and a Warning event.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Fault(#[from] InjectedFault),
    #[error("guest not ready after {0:?}: {1}")]
    ReadinessTimeout(Duration, String),
    /// Writing would leave less than `HOSTD_DISK_RESERVE_GIB` free.
    #[error("{0}")]
    NoSpace(String),
}

impl ReconcileError {
    /// The reason recorded on the hosting's `Reconciled` condition and event.
    pub fn reason(&self) -> Reason {
        match self {
            ReconcileError::Store(StoreError::PortsExhausted(_)) => Reason::PortsExhausted,
            ReconcileError::Store(_) => Reason::DatabaseError,
            ReconcileError::Driver(DriverError::NginxInvalid(_)) => Reason::RouteRejected,
            ReconcileError::Driver(DriverError::NginxReload(_)) => Reason::NginxReloadFailed,
            ReconcileError::Driver(DriverError::Connection(_)) => Reason::LibvirtUnavailable,
            ReconcileError::Driver(_) => Reason::DriverError,
            ReconcileError::Image(_) => Reason::ImageUnavailable,
            ReconcileError::Fault(_) => Reason::InjectedFault,
            ReconcileError::ReadinessTimeout(..) => Reason::ReadinessTimeout,
            ReconcileError::NoSpace(_) => Reason::InsufficientDisk,
        }
    }
}
