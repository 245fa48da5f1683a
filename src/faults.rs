//! Fault injection for crash-safety tests. Named fault points sit at every
//! side-effecting step of reconcile and cleanup; they are compiled in but inert
//! unless `HOSTD_FAULTS` names them, e.g. `after_define:crash,after_start:delay:500`.
//! Actions: `crash` (abort at once, like `kill -9`), `error`, `delay:<ms>`.
//! Parsed once, with the rest of the configuration.

use std::collections::HashMap;
use std::time::Duration;

/// Every fault point, in the order reconcile and cleanup reach them.
pub const POINTS: &[&str] = &[
    "after_node_placed",
    "after_port_allocation",
    "after_disk_create",
    "before_migrate",
    "during_migrate",
    "after_migrate",
    "after_move_route",
    "after_seed_upload",
    "after_define",
    "after_restart_destroy",
    "after_start",
    "before_clone_restore",
    "after_clone_restore",
    "before_agent_call",
    "after_seed_apply",
    "after_clone_personalise",
    "after_clone_fallback_disk",
    "before_route_write",
    "after_route_write",
    "before_status_write",
    "after_boot_restart",
    "after_route_remove",
    "after_domain_destroy",
    "after_domain_undefine",
    "after_volume_delete",
    "after_release_ports",
    "after_backup_start",
    "after_backup_copy",
    "after_backup_file",
    "after_backup_seal",
    "after_backup_upload",
    "after_backup_manifest",
    "after_restore_quarantine",
    "after_restore_disk",
    "after_template_capture",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    Crash,
    Error,
    Delay(Duration),
}

/// The configured faults (empty in production).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    points: HashMap<String, FaultAction>,
}

/// The error an `error` fault returns.
#[derive(Debug, thiserror::Error)]
#[error("injected fault at {0}")]
pub struct InjectedFault(pub &'static str);

impl Faults {
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut points = HashMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (point, action) = item
                .split_once(':')
                .ok_or_else(|| format!("'{item}': expected <point>:<action>"))?;
            if !POINTS.contains(&point) {
                return Err(format!(
                    "unknown fault point '{point}' (known: {})",
                    POINTS.join(", ")
                ));
            }
            let action = match action {
                "crash" => FaultAction::Crash,
                "error" => FaultAction::Error,
                a => match a.strip_prefix("delay:").and_then(|ms| ms.parse().ok()) {
                    Some(ms) => FaultAction::Delay(Duration::from_millis(ms)),
                    None => {
                        return Err(format!("'{a}': action must be crash, error or delay:<ms>"))
                    }
                },
            };
            points.insert(point.to_string(), action);
        }
        Ok(Faults { points })
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Called at a fault point: inert unless configured.
    pub async fn hit(&self, point: &'static str) -> Result<(), InjectedFault> {
        debug_assert!(POINTS.contains(&point), "undeclared fault point {point}");
        match self.points.get(point) {
            None => Ok(()),
            Some(FaultAction::Crash) => {
                tracing::error!(point, "HOSTD_FAULTS: crashing at fault point");
                std::process::abort();
            }
            Some(FaultAction::Error) => Err(InjectedFault(point)),
            Some(FaultAction::Delay(d)) => {
                tokio::time::sleep(*d).await;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let f = Faults::parse("after_define:crash, after_start:delay:20,after_route_write:error")
            .unwrap();
        assert_eq!(
            f.points["after_start"],
            FaultAction::Delay(Duration::from_millis(20))
        );
        assert!(Faults::parse("nope:crash").is_err());
        assert!(Faults::parse("after_define:boom").is_err());
        assert!(Faults::parse("").unwrap().is_empty());
    }
}
