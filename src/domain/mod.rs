//! Domain types: everything the user typed is parsed here, at the edge, into
//! types that can only hold valid values. The store and the reconciler only ever
//! see these types, never raw strings.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod account;
mod egress;
mod node;
mod site_name;
mod spec;
mod status;
pub use account::*;
pub use egress::*;
pub use node::*;
pub use site_name::*;
pub use spec::*;
pub use status::*;

/// Why a piece of input was refused. The message is safe to show to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The input field that was refused.
    pub field: &'static str,
    /// What is wrong with it, in words a user understands.
    pub message: String,
}

impl ValidationError {
    /// `Ok` when `ok`, otherwise the error for `field` breaking `rule`.
    pub fn check(ok: bool, field: &'static str, rule: &str) -> Result<(), ValidationError> {
        if ok {
            Ok(())
        } else {
            Err(ValidationError::new(field, rule))
        }
    }

    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Identifier newtypes, so a user id is never passed where a hosting id belongs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct HostingId(pub Uuid);

/// A backup of a hosting's disk.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct BackupId(pub Uuid);

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl fmt::Display for HostingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The SSH command a user runs to reach their hosting.
pub fn ssh_command(public_host: &str, port: u16) -> String {
    format!("ssh -p {port} ubuntu@{public_host}")
}

/// Where sites are served: always the path form `<public url>/<user id>/`
/// (one origin shared by every tenant), and, with a sites domain, the host
/// form `<scheme>://<user>.<sites domain>[:port]/` (one origin per tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteAddress {
    /// `HOSTD_PUBLIC_URL`, without a trailing slash.
    pub public_url: String,
    /// `HOSTD_SITES_DOMAIN`, validated as a lowercase DNS name.
    pub sites_domain: Option<String>,
}

impl SiteAddress {
    /// The host name of a tenant's own origin, if host routing is on.
    pub fn vhost(&self, user: &Username) -> Option<String> {
        let d = self.sites_domain.as_ref()?;
        Some(format!("{}.{d}", user.hostname()))
    }

    /// The address shown to the user: the host form when enabled.
    pub fn web_url(&self, user: &Username, user_id: UserId) -> String {
        match self.vhost(user) {
            Some(host) => {
                let (scheme, rest) = self.public_url.split_once("://").unwrap_or(("http", ""));
                let authority = rest.split('/').next().unwrap_or("");
                let port = authority
                    .rsplit_once(':')
                    .filter(|(h, _)| !h.ends_with(']') || authority.starts_with('['))
                    .map(|(_, p)| format!(":{p}"))
                    .filter(|p| p[1..].chars().all(|c| c.is_ascii_digit()))
                    .unwrap_or_default();
                format!("{scheme}://{host}{port}/")
            }
            None => format!("{}/{user_id}/", self.public_url),
        }
    }

    /// Validates a sites domain: lowercase DNS labels of a-z, 0-9 and '-'.
    pub fn parse_domain(s: &str) -> Result<String, String> {
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if ok {
            Ok(s.to_string())
        } else {
            Err("must be a lowercase DNS name such as sites.example.com".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("a_b-9").is_ok());
        for bad in [
            "ab",
            "9abc",
            "Alice",
            "a b c",
            "al/../x",
            "a<script>",
            &"a".repeat(33),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(Email::parse("a@example.com").is_ok());
        for bad in [
            "",
            "a",
            "a@b",
            "@b.com",
            "a@@b.com",
            "a@b..com",
            "a b@c.com",
            "a\"b@c.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_keys_reject_injection() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0 me@host";
        assert_eq!(SshPublicKey::parse(good).unwrap().as_str(), good);
        assert!(SshPublicKey::parse("ssh-ed25519 AAAA\n- evil: yaml").is_err());
        assert!(SshPublicKey::parse("ssh-dss AAAAB3NzaC1kc3MAAACBA").is_err());
        assert!(SshPublicKey::parse("ssh-ed25519 \"quoted\"").is_err());
    }

    #[test]
    fn spec_patch_validates_and_freezes_disk() {
        let base = HostingSpec::default();
        let p = SpecPatch {
            memory_mib: Some(1024),
            ..Default::default()
        };
        assert_eq!(p.apply(&base, false).unwrap().memory_mib.get(), 1024);
        let p = SpecPatch {
            memory_mib: Some(1),
            ..Default::default()
        };
        assert!(p.apply(&base, false).is_err());
        let p = SpecPatch {
            disk_gib: Some(20),
            ..Default::default()
        };
        assert!(p.apply(&base, false).is_err());
        assert_eq!(p.apply(&base, true).unwrap().disk_gib.get(), 20);
    }

    #[test]
    fn port_ranges() {
        assert_eq!(PortRange::parse("10000-20000").unwrap().len(), 10001);
        assert!(PortRange::parse("20-10").is_err());
        assert!(PortRange::parse("0-10").is_err());
        assert!(PortRange::parse("x").is_err());
    }
}
