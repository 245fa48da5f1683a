//! Guest network isolation on the host. With libvirt's user-mode networking
//! (passt), a guest's connections are made by the passt process on the host,
//! and passt maps the guest's gateway address to the host's loopback: a
//! tenant with root in their VM could reach Postgres, the hostd API, the host
//! nginx and other guests' forwarded ports, and, through the host's routes,
//! the cloud metadata service (169.254.169.254), the operator's LAN and
//! every private network the host can reach. passt's `--no-map-gw` would stop
//! only the first, and libvirt offers no way to pass it. So hostd installs an
//! nftables table that refuses every *new* connection made by the users
//! passt and QEMU run as to:
//! - any address of the host itself (`fib daddr type local`: 127.0.0.0/8,
//!   ::1 and the host's own addresses, public ones included);
//! - every network that is not the public internet
//!   ([`crate::domain::ALWAYS_DENIED`]: private, CGNAT, link-local with the
//!   metadata address, ULA, multicast, reserved) and `HOSTD_GUEST_DENY_CIDRS`;
//! - with `HOSTD_GUEST_EGRESS=none`, anywhere.
//!
//! Replies on connections the host opened to a guest's forwarded port are not
//! new, so inbound forwarding keeps working.
//!
//! The users are those guests really run as: libvirt's `qemu.conf` `user`,
//! the users of running `qemu-system-*` and `passt` processes, and the
//! usual accounts (`libvirt-qemu`, `qemu`, `nobody` for a passt started as
//! root) that exist here. [`Isolation::check`] verifies the table covers
//! every running guest process, so a guest started under another user is
//! reported, and the resync puts the table back when it is missing or
//! stale (`nft flush ruleset` removes it).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{DriverError, DriverResult};
use crate::domain::{EgressMode, EgressPolicy};

/// Name of the nftables table (family `inet`), shared by every hostd on the host.
pub const TABLE: &str = "hostd_guest_isolation";

/// Accounts guests commonly run as: Debian's `libvirt-qemu`, Fedora's
/// `qemu`, and `nobody` (passt drops to it when started as root).
pub const GUEST_USERS: &[&str] = &["libvirt-qemu", "qemu", "nobody"];

/// Process names whose users are guest users.
const GUEST_PROCESSES: &[&str] = &["passt", "passt.avx2", "qemu-system-x86"];

/// Installs and checks the isolation table with the `nft` binary.
#[derive(Debug, Clone)]
pub struct Isolation {
    nft: PathBuf,
    policy: EgressPolicy,
    /// Where libvirt's QEMU driver settings are (its `user`).
    qemu_conf: PathBuf,
    /// Where processes are listed.
    proc_dir: PathBuf,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation::new(EgressPolicy::default())
    }
}

/// The uid of `user` from /etc/passwd.
pub(crate) fn uid_of(user: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user)).then(|| f.get(2)?.parse().ok())?
    })
}

/// The `user = "…"` of a libvirt `qemu.conf` (a name or `+uid`).
fn qemu_conf_user(text: &str) -> Option<u32> {
    let line = text.lines().map(str::trim).find(|l| {
        l.strip_prefix("user")
            .is_some_and(|r| r.trim_start().starts_with('='))
    })?;
    let v = line.split_once('=')?.1.trim().trim_matches('"');
    match v.strip_prefix('+') {
        Some(n) => n.parse().ok(),
        None => uid_of(v),
    }
}

/// A running process that runs guests: (pid, name, real uid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcess {
    pub pid: u32,
    pub name: String,
    pub uid: u32,
}

/// The running passt and QEMU processes, from `/proc`.
fn guest_processes(proc_dir: &std::path::Path) -> Vec<GuestProcess> {
    let Ok(rd) = std::fs::read_dir(proc_dir) else {
        return vec![];
    };
    let mut out = vec![];
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        let (Some(name), Some(uid)) = (field("Name:"), field("Uid:")) else {
            continue;
        };
        if !GUEST_PROCESSES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        // Real, effective, saved, filesystem: the effective uid owns sockets.
        let Some(uid) = uid.split_whitespace().nth(1).and_then(|u| u.parse().ok()) else {
            continue;
        };
        out.push(GuestProcess { pid, name, uid });
    }
    out
}

/// The ruleset for these uids and this policy: replaces the table atomically.
pub fn ruleset(uids: &[u32], policy: &EgressPolicy) -> String {
    let set = uids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let join = |it: &mut dyn Iterator<Item = &ipnet::IpNet>| {
        it.map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
    };
    let v4 = join(&mut policy.denied_v4());
    let v6 = join(&mut policy.denied_v6());
    let reject = "counter reject with icmpx type admin-prohibited";
    let mut rules = vec![
        format!("meta skuid @guests ct state new fib daddr type local {reject}"),
        format!("meta skuid @guests ct state new ip daddr @denied4 {reject}"),
        format!("meta skuid @guests ct state new ip6 daddr @denied6 {reject}"),
    ];
    if policy.mode == EgressMode::None {
        rules.push(format!("meta skuid @guests ct state new {reject}"));
    }
    let rules = rules
        .iter()
        .map(|r| format!("    {r}\n"))
        .collect::<String>();
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20 set guests {{ type uid; elements = {{ {set} }} }}\n\
         \x20 set denied4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {v4} }} }}\n\
         \x20 set denied6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {v6} }} }}\n\
         \x20 chain output {{\n\
         \x20   type filter hook output priority 0; policy accept;\n\
         {rules}\
         \x20 }}\n\
         }}\n"
    )
}

impl Isolation {
    /// Isolation with this egress policy.
    pub fn new(policy: EgressPolicy) -> Isolation {
        Isolation {
            nft: PathBuf::from("/usr/sbin/nft"),
            policy,
            qemu_conf: PathBuf::from("/etc/libvirt/qemu.conf"),
            proc_dir: PathBuf::from("/proc"),
        }
    }

    /// Lists processes from `dir` instead of `/proc` (tests give a made-up
    /// process table).
    pub fn with_proc_dir(mut self, dir: &std::path::Path) -> Isolation {
        self.proc_dir = dir.to_path_buf();
        self
    }

    /// The running passt and QEMU processes.
    pub fn guest_processes(&self) -> Vec<GuestProcess> {
        guest_processes(&self.proc_dir)
    }

    /// The uids guests run as here: the usual accounts that exist,
    /// `qemu.conf`'s user, and the users of running guest processes.
    pub fn uids(&self) -> DriverResult<Vec<u32>> {
        let mut uids: BTreeSet<u32> = GUEST_USERS.iter().filter_map(|u| uid_of(u)).collect();
        if let Some(u) = std::fs::read_to_string(&self.qemu_conf)
            .ok()
            .and_then(|t| qemu_conf_user(&t))
        {
            uids.insert(u);
        }
        uids.extend(self.guest_processes().iter().map(|p| p.uid));
        // Root is never a guest user: refusing root's connections would cut
        // the host off (a QEMU run as root is reported by `check` instead).
        uids.remove(&0);
        if uids.is_empty() {
            return Err(DriverError::Other(format!(
                "none of the users {GUEST_USERS:?} exists and no guest process runs (is libvirt installed?)"
            )));
        }
        Ok(uids.into_iter().collect())
    }

    async fn nft(&self, args: &[&str], stdin: Option<&str>) -> DriverResult<String> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(&self.nft);
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| DriverError::Other(format!("cannot run {}: {e}", self.nft.display())))?;
        let mut input = child.stdin.take().expect("piped stdin");
        input.write_all(stdin.unwrap_or("").as_bytes()).await?;
        drop(input);
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(DriverError::Other(format!(
                "nft {}: {}",
                args.join(" "),
                err.trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs (or replaces) the table; idempotent. Returns a description.
    pub async fn ensure(&self) -> DriverResult<String> {
        let uids = self.uids()?;
        self.nft(&["-f", "-"], Some(&ruleset(&uids, &self.policy)))
            .await?;
        self.check().await
    }

    /// Whether the table is in force: its rules, every guest uid (those
    /// of running guest processes included) and every denied network.
    pub async fn check(&self) -> DriverResult<String> {
        let uids = self.uids()?;
        let listing = self.nft(&["list", "table", "inet", TABLE], None).await?;
        let missing =
            |what: String| DriverError::Other(format!("table inet {TABLE} does not cover {what}"));
        let set_line = listing
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("set guests"))
            .find(|l| l.trim_start().starts_with("elements"))
            .unwrap_or("");
        for uid in &uids {
            let covered = set_line
                .split(|c: char| !c.is_ascii_digit())
                .any(|n| n == uid.to_string());
            if !covered {
                let who = self
                    .guest_processes()
                    .into_iter()
                    .find(|p| p.uid == *uid)
                    .map(|p| format!(" (running {} pid {})", p.name, p.pid))
                    .unwrap_or_default();
                return Err(missing(format!("uid {uid}{who}")));
            }
        }
        if let Some(p) = self.guest_processes().into_iter().find(|p| p.uid == 0) {
            return Err(DriverError::Other(format!(
                "{} (pid {}) runs as root: its connections cannot be told from the host's",
                p.name, p.pid
            )));
        }
        for rule in ["fib daddr type local", "@denied4", "@denied6"] {
            if !listing
                .lines()
                .any(|l| l.contains(rule) && l.contains("reject"))
            {
                return Err(missing(format!("the {rule} rule")));
            }
        }
        if self.policy.mode == EgressMode::None
            && !listing
                .lines()
                .any(|l| l.contains("ct state new counter") && l.contains("reject"))
        {
            return Err(missing("HOSTD_GUEST_EGRESS=none".into()));
        }
        // Every denied network is in a set (nft prints them merged and
        // normalised, so each must fall inside an element shown).
        let shown = elements_of(&listing);
        for net in &self.policy.denied {
            if !shown.iter().any(|s| s.contains(net)) {
                return Err(missing(format!("network {net}")));
            }
        }
        let mode = match self.policy.mode {
            EgressMode::Public => "public addresses only",
            EgressMode::None => "none",
        };
        Ok(format!(
            "nftables table inet {TABLE}: new connections from uids {uids:?} (passt/QEMU) to host addresses and {} non-public networks are refused; egress: {mode}",
            self.policy.denied.len()
        ))
    }
}

/// The networks listed in the denied sets of an `nft list table` output.
fn elements_of(listing: &str) -> Vec<ipnet::IpNet> {
    let mut out = vec![];
    let mut in_set = false;
    for l in listing.lines() {
        let t = l.trim();
        if t.starts_with("set denied") {
            in_set = true;
        } else if t.starts_with("set ") || t.starts_with("chain ") {
            in_set = false;
        }
        if !in_set {
            continue;
        }
        let body = t.strip_prefix("elements = {").unwrap_or(t);
        for item in body.split(',') {
            let item = item.trim().trim_end_matches('}').trim();
            // Ranges print as `a-b`; single addresses without a prefix.
            if let Some((a, b)) = item.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.trim().parse(), b.trim().parse()) {
                    out.extend(ipnet::IpNet::aggregate(
                        &range_nets(a, b).unwrap_or_default(),
                    ));
                }
                continue;
            }
            if let Ok(n) = item.parse::<ipnet::IpNet>() {
                out.push(n);
            } else if let Ok(a) = item.parse::<std::net::IpAddr>() {
                out.push(ipnet::IpNet::from(a));
            }
        }
    }
    out
}

/// The networks covering the address range `a`..=`b`.
fn range_nets(a: std::net::IpAddr, b: std::net::IpAddr) -> Option<Vec<ipnet::IpNet>> {
    use std::net::IpAddr;
    Some(match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => ipnet::Ipv4Subnets::new(a, b, 0)
            .map(ipnet::IpNet::V4)
            .collect(),
        (IpAddr::V6(a), IpAddr::V6(b)) => ipnet::Ipv6Subnets::new(a, b, 0)
            .map(ipnet::IpNet::V6)
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_refuses_local_and_non_public_destinations_of_guest_users() {
        let p = EgressPolicy::parse("public", "203.0.113.0/24").unwrap();
        let r = ruleset(&[64055, 65534], &p);
        assert!(r.contains("set guests { type uid; elements = { 64055, 65534 } }"));
        assert!(r.contains("meta skuid @guests ct state new fib daddr type local counter reject"));
        assert!(r.contains("169.254.0.0/16") && r.contains("100.64.0.0/10"));
        assert!(r.contains("203.0.113.0/24") && r.contains("fc00::/7"));
        assert!(r.contains("policy accept"));
        assert!(!r.contains("meta skuid @guests ct state new counter reject"));
        // Replaced atomically: declared, deleted and recreated in one transaction.
        assert!(r.starts_with(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")));
        let none = ruleset(&[64055], &EgressPolicy::parse("none", "").unwrap());
        assert!(none.contains("meta skuid @guests ct state new counter reject"));
    }

    #[test]
    fn qemu_conf_user_is_read() {
        assert_eq!(
            qemu_conf_user("#user = \"root\"\nuser = \"+4242\"\n"),
            Some(4242)
        );
        assert_eq!(qemu_conf_user("# user = \"+1\"\n"), None);
        assert_eq!(qemu_conf_user("user = \"root\""), Some(0));
    }

    #[test]
    fn listed_elements_parse_with_ranges() {
        let l = "table inet t {\n\tset denied4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/8, 100.64.0.0-100.127.255.255,\n\t\t\t     169.254.169.254 }\n\t}\n}\n";
        let e = elements_of(l);
        assert!(e
            .iter()
            .any(|n| n.contains(&"100.64.0.0/10".parse::<ipnet::IpNet>().unwrap())));
        assert!(e
            .iter()
            .any(|n| n.contains(&"10.0.0.0/8".parse::<ipnet::IpNet>().unwrap())));
    }
}
