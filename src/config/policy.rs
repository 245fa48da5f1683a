//! The validated policies [`super::Config`] carries: the domain type,
//! per-guest limits, rate limits, backups and capacity.

use std::time::Duration;

/// The libvirt domain type: `kvm` (hardware acceleration) or `qemu` (TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    Kvm,
    Qemu,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }

    /// KVM only where hardware virtualization works: `/dev/kvm` present and not
    /// the kvm-pvm software module (on which KVM guests fail to boot).
    pub fn detect() -> (DomainType, &'static str) {
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            (
                DomainType::Qemu,
                "kvm_pvm module loaded (no hardware virtualization): using TCG",
            )
        } else if std::path::Path::new("/dev/kvm").exists() {
            (DomainType::Kvm, "/dev/kvm present: using KVM")
        } else {
            (DomainType::Qemu, "/dev/kvm absent: using TCG")
        }
    }
}

/// What one guest may use of the host, in its domain definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Percent of one core per vCPU.
    pub cpu_percent: u32,
    /// Disk bytes per second, reads and writes together.
    pub disk_bytes_per_sec: u64,
    /// Disk operations per second.
    pub disk_iops: u64,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            cpu_percent: 100,
            disk_bytes_per_sec: 100 << 20,
            disk_iops: 2000,
        }
    }
}

/// The API's rate limits (see `api::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub login_max_failures: u32,
    pub login_slow_after: u32,
    pub login_max_failures_per_address: u32,
    pub login_window: Duration,
    pub register_per_hour: u32,
    pub host_ops_per_min: u32,
    pub disk_replaces_per_hour: u32,
    /// bcrypt computations at once.
    pub bcrypt_concurrency: usize,
}

/// When backups are taken and how many are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupPolicy {
    /// Time between scheduled backups of a hosting (`None`: no schedule).
    pub interval: Option<Duration>,
    /// Completed backups kept per hosting.
    pub keep: u32,
    /// A chain of backups is at most this long: a full one, then
    /// incrementals (`1`: every backup full).
    pub full_every: u32,
    /// Backup and quarantine bytes per hosting (`None`: `keep` × its disk).
    pub quota_bytes: Option<u64>,
    /// Backups running at the same time.
    pub concurrency: u32,
    /// The off-host store, if any.
    pub offsite: Option<OffsitePolicy>,
}

/// Off-host backups (`HOSTD_BACKUP_S3_*`).
#[derive(Clone, PartialEq, Eq)]
pub struct OffsitePolicy {
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix inside the bucket, without slashes at either end ("" for none).
    pub prefix: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// The backup encryption key's file.
    pub key_file: std::path::PathBuf,
    /// Newest backups per hosting also kept on this host.
    pub local_keep: u32,
}

impl std::fmt::Debug for OffsitePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsitePolicy")
            .field("url", &self.url())
            .field("region", &self.region)
            .field("key_file", &self.key_file)
            .field("local_keep", &self.local_keep)
            .finish_non_exhaustive()
    }
}

impl OffsitePolicy {
    /// Where backups go, for messages (no credentials).
    pub fn url(&self) -> String {
        match self.prefix.is_empty() {
            true => format!("{}/{}", self.endpoint, self.bucket),
            false => format!("{}/{}/{}", self.endpoint, self.bucket, self.prefix),
        }
    }

    /// Parses `http(s)://<endpoint>/<bucket>[/<prefix>]` into (endpoint,
    /// bucket, prefix).
    pub fn parse_url(url: &str) -> Result<(String, String, String), String> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or("expected http(s)://<endpoint>/<bucket>[/<prefix>]")?;
        let (host, path) = rest.split_once('/').ok_or("no bucket in the URL")?;
        if host.is_empty() || host.contains(['@', '?', '#']) {
            return Err(
                "expected a host[:port] before the bucket (no credentials in the URL)".into(),
            );
        }
        let path = path.trim_end_matches('/');
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(format!("'{bucket}' is not an S3 bucket name"));
        }
        let prefix_ok = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && !prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if !prefix.is_empty() && !prefix_ok {
            return Err(format!(
                "'{prefix}' is not a key prefix (a-z, 0-9, '-', '_', '.', '/')"
            ));
        }
        Ok((
            format!("{scheme}://{host}"),
            bucket.to_string(),
            prefix.to_string(),
        ))
    }
}

impl BackupPolicy {
    /// The bytes of backups and quarantined data a hosting with a disk of
    /// `disk_gib` GiB may hold.
    pub fn quota_bytes(&self, disk_gib: u32) -> u64 {
        self.quota_bytes
            .unwrap_or((u64::from(self.keep) * u64::from(disk_gib)) << 30)
    }
}

/// How much of the host the reconciler lets guests take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityPolicy {
    /// Host memory (MiB) kept back from guests.
    pub reserved_mib: u64,
    /// Factor on (host memory - reserved).
    pub memory_overcommit: f64,
    /// Factor on the host's CPUs.
    pub cpu_overcommit: f64,
    /// Pool space (bytes) a new disk may not take (`HOSTD_DISK_RESERVE_GIB`).
    pub reserved_disk_bytes: u64,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        CapacityPolicy {
            reserved_mib: 1024,
            memory_overcommit: 1.0,
            cpu_overcommit: 4.0,
            reserved_disk_bytes: 2 << 30,
        }
    }
}

/// How sites are served over HTTPS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPolicy {
    /// Certificates from ACME (`None`: no issuance).
    pub acme: Option<AcmePolicy>,
    /// The operator's wildcard certificate and key for the sites domain.
    pub wildcard: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where keys, chains, challenges and the ACME account live (0700).
    pub dir: std::path::PathBuf,
    /// The DNS server custom domains are verified through.
    pub dns_resolver: Option<std::net::SocketAddr>,
    /// Custom domains per tenant.
    pub max_domains: u32,
    /// The dashboard's host name (`HOSTD_PANEL_HOST`).
    pub panel_host: Option<String>,
}

/// The ACME CA hostd gets certificates from.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmePolicy {
    pub directory: String,
    pub email: Option<String>,
    /// The only root trusted for the CA's API (a test CA such as Pebble's).
    pub ca_file: Option<std::path::PathBuf>,
    /// Renew this long before expiry.
    pub renew_before: Duration,
}

impl TlsPolicy {
    /// Whether hostd serves anything over TLS at all.
    pub fn enabled(&self) -> bool {
        self.acme.is_some() || self.wildcard.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::OffsitePolicy;

    #[test]
    fn store_urls_are_endpoint_bucket_and_prefix() {
        let p = OffsitePolicy::parse_url;
        assert_eq!(
            p("http://127.0.0.1:9000/hostd-backups/site1").unwrap(),
            (
                "http://127.0.0.1:9000".into(),
                "hostd-backups".into(),
                "site1".into()
            )
        );
        assert_eq!(
            p("https://s3.eu-west-1.amazonaws.com/my.backups/a/b/").unwrap(),
            (
                "https://s3.eu-west-1.amazonaws.com".into(),
                "my.backups".into(),
                "a/b".into()
            )
        );
        assert_eq!(p("https://s3.example.com/bkt").unwrap().2, "");
        for bad in [
            "s3://bucket/x",
            "http://host",
            "http:///bucket",
            "http://user:pass@host/bucket",
            "http://host/UPPER",
            "http://host/ab",
            "http://host/bucket/../etc",
            "http://host/bucket/a//b",
            "http://host/bucket/sp ace",
        ] {
            assert!(p(bad).is_err(), "{bad} accepted");
        }
    }
}
