//! Where guests may open connections (`HOSTD_GUEST_EGRESS`,
//! `HOSTD_GUEST_DENY_CIDRS`), parsed from the operator's settings.

use ipnet::IpNet;

use super::ValidationError;

/// Destinations no guest may open a new connection to, whatever the mode:
/// this host's networks and everything that is not the public internet
/// (private, shared address space, link-local with the cloud metadata
/// service, loopback, multicast, reserved; their IPv6 counterparts and
/// IPv4-mapped IPv6). The host's own addresses are refused separately
/// (`fib daddr type local`), public ones included.
pub const ALWAYS_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Whether guests reach the internet at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressMode {
    /// New connections to public addresses only.
    Public,
    /// No new outbound connection at all (inbound forwarding still works).
    None,
}

/// The guests' egress policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub mode: EgressMode,
    /// [`ALWAYS_DENIED`] plus the operator's `HOSTD_GUEST_DENY_CIDRS`.
    pub denied: Vec<IpNet>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy::parse("public", "").expect("the built-in policy parses")
    }
}

impl EgressPolicy {
    /// Parses the mode (`public` or `none`) and a comma- or space-separated
    /// list of extra CIDRs to refuse.
    pub fn parse(mode: &str, extra: &str) -> Result<EgressPolicy, ValidationError> {
        let mode = match mode {
            "public" => EgressMode::Public,
            "none" => EgressMode::None,
            _ => {
                return Err(ValidationError::new(
                    "HOSTD_GUEST_EGRESS",
                    "must be public or none",
                ))
            }
        };
        let mut denied = vec![];
        let extra = extra
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty());
        for c in ALWAYS_DENIED.iter().copied().chain(extra) {
            let net: IpNet = c.parse().map_err(|_| {
                ValidationError::new(
                    "HOSTD_GUEST_DENY_CIDRS",
                    format!("{c:?} is not a CIDR (address/prefix)"),
                )
            })?;
            let net = net.trunc();
            if !denied.contains(&net) {
                denied.push(net);
            }
        }
        Ok(EgressPolicy { mode, denied })
    }

    /// The IPv4 networks refused.
    pub fn denied_v4(&self) -> impl Iterator<Item = &IpNet> {
        self.denied.iter().filter(|n| matches!(n, IpNet::V4(_)))
    }

    /// The IPv6 networks refused.
    pub fn denied_v6(&self) -> impl Iterator<Item = &IpNet> {
        self.denied.iter().filter(|n| matches!(n, IpNet::V6(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_parses_and_refuses_bad_cidrs() {
        let p = EgressPolicy::parse("public", "203.0.113.0/24, 2001:db8::/32").unwrap();
        assert_eq!(p.mode, EgressMode::Public);
        assert!(p.denied.contains(&"169.254.0.0/16".parse().unwrap()));
        assert!(p.denied.contains(&"203.0.113.0/24".parse().unwrap()));
        assert_eq!(
            p.denied_v6()
                .filter(|n| n.to_string() == "2001:db8::/32")
                .count(),
            1
        );
        // Host bits are dropped: 10.1.2.3/8 is 10.0.0.0/8, already there.
        let n = EgressPolicy::parse("none", "10.1.2.3/8").unwrap();
        assert_eq!(n.mode, EgressMode::None);
        assert_eq!(n.denied.len(), ALWAYS_DENIED.len());
        assert!(EgressPolicy::parse("open", "").is_err());
        assert!(EgressPolicy::parse("public", "10.0.0.0").is_err());
        assert!(EgressPolicy::parse("public", "10.0.0.0/8; drop").is_err());
    }
}
