//! Guest network isolation on the host. With libvirt's user-mode networking
//! (passt), a guest's connections are made by the passt process on the host,
//! and passt maps the guest's gateway address to the host's loopback: a
//! tenant with root in their VM could reach Postgres, the hostd API, the host
//! nginx and other guests' forwarded ports. passt's `--no-map-gw` would stop
//! that, but libvirt offers no way to pass it. So hostd installs an nftables
//! table that refuses every *new* connection made by the users passt and QEMU
//! run as (`libvirt-qemu`; `nobody` when passt is started as root) to any
//! address of the host itself (`fib daddr type local`: all of 127.0.0.0/8,
//! ::1 and the host's own addresses). Replies on connections the host opened
//! to a guest's forwarded port are not new, so inbound forwarding keeps
//! working; connections to other destinations are untouched.

use std::path::PathBuf;

use super::{DriverError, DriverResult};

/// Name of the nftables table (family `inet`), shared by every hostd on the host.
pub const TABLE: &str = "hostd_guest_isolation";

/// The users whose new connections to local addresses are refused.
pub const GUEST_USERS: &[&str] = &["libvirt-qemu", "nobody"];

/// Installs and checks the isolation table with the `nft` binary.
#[derive(Debug, Clone)]
pub struct Isolation {
    nft: PathBuf,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            nft: PathBuf::from("/usr/sbin/nft"),
        }
    }
}

/// The uid of `user` from /etc/passwd.
fn uid_of(user: &str) -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user)).then(|| f.get(2)?.parse().ok())?
    })
}

/// The ruleset for these uids: replaces the table atomically.
pub fn ruleset(uids: &[u32]) -> String {
    let set = uids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20 chain output {{\n\
         \x20   type filter hook output priority 0; policy accept;\n\
         \x20   meta skuid {{ {set} }} ct state new fib daddr type local counter reject with icmpx type admin-prohibited\n\
         \x20 }}\n\
         }}\n"
    )
}

impl Isolation {
    /// The guest users' uids present on this host.
    fn uids() -> DriverResult<Vec<u32>> {
        let uids: Vec<u32> = GUEST_USERS.iter().filter_map(|u| uid_of(u)).collect();
        if uids.is_empty() {
            return Err(DriverError::Other(format!(
                "none of the users {GUEST_USERS:?} exists (is libvirt installed?)"
            )));
        }
        Ok(uids)
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
        let uids = Self::uids()?;
        self.nft(&["-f", "-"], Some(&ruleset(&uids))).await?;
        self.check().await
    }

    /// Whether the table is in force with a rule for every guest user.
    pub async fn check(&self) -> DriverResult<String> {
        let uids = Self::uids()?;
        let listing = self.nft(&["list", "table", "inet", TABLE], None).await?;
        let rule = listing
            .lines()
            .find(|l| l.contains("fib daddr type local") && l.contains("reject"))
            .ok_or_else(|| {
                DriverError::Other(format!("table inet {TABLE} has no isolation rule"))
            })?;
        for uid in &uids {
            if !rule.contains(&uid.to_string()) {
                return Err(DriverError::Other(format!(
                    "table inet {TABLE} does not cover uid {uid}"
                )));
            }
        }
        Ok(format!(
            "nftables table inet {TABLE}: new connections from uids {uids:?} (passt/QEMU) to host addresses are refused"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_refuses_only_new_local_connections_of_guest_users() {
        let r = ruleset(&[64055, 65534]);
        assert!(r.contains("meta skuid { 64055, 65534 } ct state new fib daddr type local"));
        assert!(r.contains("policy accept"));
        // Replaced atomically: declared, deleted and recreated in one transaction.
        assert!(r.starts_with(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")));
    }
}
