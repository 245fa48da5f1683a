//! Hypervisor nodes as the operator names them: [`NodeName`], the libvirt
//! URI hostd connects to ([`NodeUri`]) and the address the host nginx and the
//! probes use to reach the ports a node's guests forward ([`NodeAddress`]).
//! Parsed here, at the edge, so that nothing an operator typed reaches a
//! path, a domain's XML or an nginx configuration unchecked.

use std::fmt;
use std::net::IpAddr;

use super::ValidationError;

/// A node's name: 1–32 of `a-z`, `0-9` and `-`, not starting or ending with
/// `-` (it appears in storage pool directories and log lines).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct NodeName(String);

impl NodeName {
    pub fn parse(s: &str) -> Result<NodeName, ValidationError> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        ValidationError::check(
            ok,
            "name",
            "must be 1-32 characters of a-z, 0-9 and '-', not starting or ending with '-'",
        )?;
        Ok(NodeName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The libvirt transports a node may be reached over. Plain `qemu+tcp` is
/// refused: it carries no authentication or encryption.
const SCHEMES: [&str; 5] = ["qemu", "qemu+unix", "qemu+ssh", "qemu+tls", "test"];

/// A libvirt connection URI (`qemu+ssh://host/system`,
/// `qemu+unix:///system?socket=…`, `test:///path.xml`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct NodeUri(String);

impl NodeUri {
    pub fn parse(s: &str) -> Result<NodeUri, ValidationError> {
        let rule = "must be a libvirt URI (qemu:///system, qemu+ssh://host/system, \
                    qemu+tls://host/system, qemu+unix:///system?socket=PATH or test:///…) \
                    of at most 512 characters, without spaces";
        let clean = !s.is_empty()
            && s.len() <= 512
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        let scheme_ok = s
            .split_once("://")
            .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme));
        ValidationError::check(clean && scheme_ok, "uri", rule)?;
        Ok(NodeUri(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the host nginx reaches a node's forwarded ports: an IP address,
/// never a name (no DNS lookup decides where a tenant's traffic goes), and
/// never an unspecified or multicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct NodeAddress(IpAddr);

impl NodeAddress {
    pub const LOOPBACK: NodeAddress = NodeAddress(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    pub fn parse(s: &str) -> Result<NodeAddress, ValidationError> {
        let rule =
            "must be the IP address (not a name) at which the host reaches the node's guests";
        let ip: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| ValidationError::new("address", rule))?;
        ValidationError::check(
            !ip.is_unspecified() && !ip.is_multicast(),
            "address",
            "must be one address of the node, not 0.0.0.0, :: or a multicast address",
        )?;
        Ok(NodeAddress(ip))
    }

    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// How the address is written in a URL or an nginx `proxy_pass`
    /// (an IPv6 address in brackets).
    pub fn host(&self) -> String {
        match self.0 {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        }
    }
}

impl Default for NodeAddress {
    fn default() -> Self {
        NodeAddress::LOOPBACK
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_uris_and_addresses_are_parsed_strictly() {
        for good in ["local", "node-2", "a", "n0"] {
            assert!(NodeName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a/b", "a b", "../x", &"x".repeat(33)] {
            assert!(NodeName::parse(bad).is_err(), "{bad}");
        }
        for good in [
            "qemu:///system",
            "qemu+ssh://root@h2/system",
            "qemu+unix:///system?socket=/run/n2/libvirt/libvirt-sock",
            "test:///tmp/n.xml",
        ] {
            assert!(NodeUri::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "qemu+tcp://h/system",
            "http://h/",
            "qemu:///system x",
            "qemu:///sys\ntem",
            "/run/libvirt",
        ] {
            assert!(NodeUri::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(NodeAddress::parse("127.0.0.2").unwrap().host(), "127.0.0.2");
        assert_eq!(NodeAddress::parse("::1").unwrap().host(), "[::1]");
        for bad in ["", "h2.example", "0.0.0.0", "::", "224.0.0.1", "1.2.3.4:80"] {
            assert!(NodeAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
