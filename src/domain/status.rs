//! The vocabulary of observed state: phases, conditions and events, and the
//! closed sets of condition types and reasons the reconciler may write. Enums,
//! so a typo is a compile error and the API documents every value.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares a fieldless enum whose string form is the variant's name.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The CamelCase name stored in Postgres and shown by the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }

            /// Parses a stored name; `None` for anything unknown.
            pub fn from_name(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// Lifecycle phase of a hosting, as shown to users.
    pub enum Phase {
        Pending,
        Provisioning,
        Ready,
        Updating,
        Stopped,
        Deleting,
        Failed,
        /// Its node is down: nobody can tell what its guest does.
        Unknown,
    }
}

impl Phase {
    /// Parses the stored phase; an unknown value reads as `Pending`.
    pub fn from_db(s: &str) -> Phase {
        Phase::from_name(s).unwrap_or(Phase::Pending)
    }
}

named_enum! {
    /// Where a backup stands.
    pub enum BackupState {
        /// Requested; the reconciler has not started it.
        Pending,
        /// Being taken (also one interrupted by a crash, until it is redone).
        Running,
        /// Stored, with its size and checksum.
        Completed,
        /// Could not be taken; the message says why.
        Failed,
    }
}

named_enum! {
    /// Who asked for a backup.
    pub enum BackupTrigger {
        /// The owner, through the API.
        Manual,
        /// The schedule (`HOSTD_BACKUP_INTERVAL_HOURS`).
        Scheduled,
    }
}

named_enum! {
    /// What a backup holds.
    pub enum BackupKind {
        /// The whole disk: a standalone qcow2.
        Full,
        /// Only what changed since its parent backup was taken (restored
        /// with the chain of backups down to a full one).
        Incremental,
    }
}

named_enum! {
    /// Event severity.
    pub enum EventType {
        Normal,
        Warning,
    }
}

named_enum! {
    /// The condition types a hosting's status can carry.
    pub enum ConditionType {
        /// The domain runs (or is stopped as requested).
        VMRunning,
        /// The nginx route matches the spec.
        RouteConfigured,
        /// The site answers through nginx and SSH is up.
        WebReady,
        /// A memory/vCPU change is being applied by a restart.
        RestartRequired,
        /// The last reconcile failed (present only while failing).
        Reconciled,
        /// The hosting has (or waits for) room on the host.
        Scheduled,
        /// The disk vanished and no backup could restore it: the owner decides.
        DiskLost,
        /// Its node answers (present as False only while the node is down).
        NodeReachable,
    }
}

named_enum! {
    /// Why something happened: the `reason` of events and conditions.
    pub enum Reason {
        // Desired state (written by the API's store calls).
        Created,
        SpecChanged,
        DeletionRequested,
        // Progress.
        PortsAllocated,
        Provisioning,
        DiskCreated,
        SeedUpdated,
        SeedApplied,
        SeedApplyFailed,
        Defined,
        Redefined,
        Restarting,
        Started,
        Running,
        RouteConfigured,
        Configured,
        Booting,
        Serving,
        Ready,
        Stopping,
        ShuttingDown,
        Stopped,
        // Scheduling and nodes.
        Admitted,
        Placed,
        NoNodeFits,
        NodeDown,
        NodeBack,
        Evacuated,
        NotEvacuated,
        Migrating,
        Migrated,
        MigrationFailed,
        InsufficientMemory,
        InsufficientCpu,
        InsufficientDisk,
        // Disk safety.
        DiskLost,
        DiskMissing,
        DiskResetRequested,
        DiskReset,
        DiskQuarantined,
        // Backups and restores.
        BackupRequested,
        BackupStarted,
        BackupResumed,
        BackupCompleted,
        BackupFailed,
        BackupsExpired,
        RestoreRequested,
        Restoring,
        DiskRestored,
        RestoreFailed,
        // Warm pool and clones.
        Personalised,
        PersonaliseFallback,
        Cloned,
        CloneFallback,
        // Drift repairs (Warning events).
        DomainRecreated,
        DomainStarted,
        RouteRepaired,
        ForcedOff,
        // Failures (the `Reconciled` condition and Warning events).
        PortsExhausted,
        DatabaseError,
        RouteRejected,
        NginxReloadFailed,
        LibvirtUnavailable,
        DriverError,
        ImageUnavailable,
        InjectedFault,
        ReadinessTimeout,
        // Boots that never came up.
        BootRestarted,
        BootFailed,
        BootQueued,
        // HTTPS and custom domains.
        CertificateIssued,
        CertificateFailed,
        DomainVerified,
        // An administrator acted on the hosting (the message names them).
        AdminAction,
    }
}

/// A Kubernetes-style status condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// "True" or "False".
    #[schema(pattern = "^(True|False)$")]
    pub status: String,
    pub reason: Reason,
    pub message: String,
    pub last_transition_time: chrono::DateTime<chrono::Utc>,
}

impl Condition {
    /// Whether the condition holds.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Sets a condition, keeping its transition time while its status is unchanged.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: &str,
) {
    let status_s = if status { "True" } else { "False" };
    let now = chrono::Utc::now();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status_s {
                c.last_transition_time = now;
            }
            c.status = status_s.into();
            c.reason = reason;
            c.message = message.into();
        }
        None => conds.push(Condition {
            type_,
            status: status_s.into(),
            reason,
            message: message.into(),
            last_transition_time: now,
        }),
    }
}

/// Removes a condition (it no longer applies).
pub fn remove_condition(conds: &mut Vec<Condition>, type_: ConditionType) {
    conds.retain(|c| c.type_ != type_);
}

/// Whether `conds` holds a true condition of `type_`.
pub fn has_true(conds: &[Condition], type_: ConditionType) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.as_str()), Some(*r));
        }
        assert_eq!(Phase::from_db("nonsense"), Phase::Pending);
        let json = serde_json::to_string(&ConditionType::WebReady).unwrap();
        assert_eq!(json, "\"WebReady\"");
    }
}
