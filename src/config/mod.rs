//! Typed configuration. Every setting is declared once, in `settings.rs`, as
//! a clap argument with its environment variable and default, so `hostd
//! --help` lists them all and the README table is checked against this list
//! by a test. [`Settings`] is what clap parses; [`Config`] (here) is the
//! validated result the rest of hostd uses, with the policies of
//! `policy.rs`; `validate.rs` turns the one into the other. A bad value stops
//! start-up with one line naming the variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::PortRange;
use crate::faults::Faults;

mod policy;
mod settings;
mod validate;

pub use policy::{
    AcmePolicy, BackupPolicy, CapacityPolicy, DomainType, GuestLimits, OffsitePolicy, RateLimits,
    TlsPolicy,
};
use settings::EnvOnly;
pub use settings::Settings;

/// A configuration problem, always naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

/// A comma- or space-separated list of CIDRs.
fn parse_cidrs(var: &'static str, text: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| bad(var, format!("{c:?} is not an address or CIDR")))
        })
        .collect()
}

/// A [`ConfigError`] for `var`.
pub(crate) fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// All of hostd's settings, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres connection string (`DATABASE_URL`).
    pub database_url: String,
    /// Where the API listens (`HOSTD_LISTEN`).
    pub listen: SocketAddr,
    /// HTTPS: ACME, the sites wildcard, custom domains.
    pub tls: TlsPolicy,
    /// Where /metrics alone is served, if anywhere (`HOSTD_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
    /// HS256 signing secret, at least 32 bytes (`HOSTD_JWT_SECRET`).
    pub jwt_secret: Vec<u8>,
    /// Lifetime of issued tokens (`HOSTD_JWT_TTL_SECS`).
    pub jwt_ttl: Duration,
    /// bcrypt cost (`HOSTD_BCRYPT_COST`).
    pub bcrypt_cost: u32,
    /// libvirt connection URI (`HOSTD_LIBVIRT_URI`).
    pub libvirt_uri: String,
    /// State directory: storage pool, images (`HOSTD_STATE_DIR`).
    pub state_dir: PathBuf,
    /// Directory of hostd's nginx route map (`HOSTD_NGINX_ROUTES_DIR`).
    pub nginx_routes_dir: PathBuf,
    /// Main nginx config that includes the routes directory (`HOSTD_NGINX_CONF`).
    pub nginx_conf: PathBuf,
    /// nginx binary (`HOSTD_NGINX_BIN`).
    pub nginx_bin: PathBuf,
    /// Where sites are served: `HOSTD_PUBLIC_URL` (without a trailing slash)
    /// and `HOSTD_SITES_DOMAIN`.
    pub sites: crate::domain::SiteAddress,
    /// Base URL the reconciler probes routes through, i.e. the host nginx (`HOSTD_PROBE_URL`).
    pub probe_url: String,
    /// SSH port range (`HOSTD_SSH_PORTS`).
    pub ssh_ports: PortRange,
    /// Guest HTTP port range, bound on 127.0.0.1 only (`HOSTD_HTTP_PORTS`).
    pub http_ports: PortRange,
    /// Address SSH ports are bound on (`HOSTD_SSH_BIND`).
    pub ssh_bind: IpAddr,
    /// libvirt domain type (`HOSTD_DOMAIN_TYPE`: kvm, qemu or auto).
    pub domain_type: DomainType,
    /// Why that domain type was chosen.
    pub domain_type_reason: String,
    /// Separates several hostd installations sharing one libvirtd (`HOSTD_INSTANCE`).
    pub instance: String,
    /// The implicit node's name (`HOSTD_NODE_NAME`).
    pub node_name: crate::domain::NodeName,
    /// Silence after which a node is down (`HOSTD_NODE_DOWN_SECS`).
    pub node_down: Duration,
    /// Per-hosting statistics: the sampling period (`HOSTD_STATS_SECS`;
    /// `None`: off), the site log (`HOSTD_NGINX_SITE_LOG`) and per-hosting
    /// series on `/metrics` (`HOSTD_METRICS_PER_HOSTING`).
    pub stats: StatsSettings,
    /// Full resync period (`HOSTD_RESYNC_SECS`).
    pub resync: Duration,
    /// Concurrent reconciles (`HOSTD_RECONCILE_CONCURRENCY`).
    pub concurrency: usize,
    /// Deadline for a guest to become ready (`HOSTD_READY_TIMEOUT_SECS`).
    pub ready_timeout: Duration,
    /// Restarts of a guest that never became ready (`HOSTD_BOOT_RETRIES`).
    pub boot_retries: u32,
    /// Guests booting at once (`HOSTD_BOOT_CONCURRENCY`; 0: no limit).
    pub boot_concurrency: usize,
    /// Cap of the per-hosting error backoff (`HOSTD_BACKOFF_MAX_SECS`).
    pub backoff_max: Duration,
    /// Image catalogue file (`HOSTD_IMAGES_FILE`).
    pub images_file: PathBuf,
    /// Fault injection (`HOSTD_FAULTS`), empty in production.
    pub faults: Faults,
    /// Per-hosting maximums (`HOSTD_MAX_VCPUS`, `HOSTD_MAX_MEMORY_MIB`, `HOSTD_MAX_DISK_GIB`).
    pub quota: crate::domain::Quota,
    /// Host capacity policy (`HOSTD_HOST_RESERVED_MIB`, `HOSTD_*_OVERCOMMIT`).
    pub capacity: CapacityPolicy,
    /// Run real guests without host-side isolation (`HOSTD_ALLOW_UNISOLATED_GUESTS`).
    pub allow_unisolated_guests: bool,
    /// Per-guest limits (`HOSTD_GUEST_CPU_PERCENT`, `HOSTD_GUEST_DISK_MIBPS`,
    /// `HOSTD_GUEST_DISK_IOPS`).
    pub guest_limits: GuestLimits,
    /// Proxies whose `X-Forwarded-For` names the client (`HOSTD_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where guests may connect (`HOSTD_GUEST_EGRESS`, `HOSTD_GUEST_DENY_CIDRS`).
    pub guest_egress: crate::domain::EgressPolicy,
    /// Warm-pool guests to keep booted (HOSTD_WARM_POOL; 0 = none).
    pub warm_pool: u32,
    /// Clones from templates (HOSTD_CLONE_TEMPLATES).
    pub clone_templates: bool,
    /// Dashboard cookies carry `Secure` (`HOSTD_SECURE_COOKIES`).
    pub secure_cookies: bool,
    /// Bytes kept free for the host (`HOSTD_DISK_RESERVE_GIB`).
    pub disk_reserve_bytes: u64,
    /// How long quarantined volumes are kept (`HOSTD_QUARANTINE_DAYS`).
    pub quarantine: Duration,
    /// Backup schedule and retention.
    pub backups: BackupPolicy,
    /// Redis URL (`HOSTD_REDIS_URL`).
    pub redis_url: String,
    /// Rate limits and the bcrypt bound.
    pub limits: RateLimits,
}

/// The first line of a (clap) error message, which names the variable.
pub fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or(s)
        .trim_start_matches("error: ")
        .to_string()
}

impl Config {
    /// Reads and validates the configuration from the environment.
    pub fn from_env(dev: bool) -> Result<(Config, bool), ConfigError> {
        Settings::from_env()?.into_config(dev)
    }

    /// Whether hostd runs real guests (not libvirt's simulated `test:` driver),
    /// so guest isolation applies.
    pub fn real_guests(&self) -> bool {
        !self.libvirt_uri.starts_with("test:")
    }

    /// The host part of the public URL, for `ssh_command`.
    pub fn public_host(&self) -> &str {
        let rest = self
            .sites
            .public_url
            .split("://")
            .nth(1)
            .unwrap_or("localhost");
        let host = rest.split('/').next().unwrap_or(rest);
        if let Some(v6) = host.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else {
            host.split(':').next().unwrap_or(host)
        }
    }
}

/// `(variable, default)` of every setting, as clap declares them (for the
/// README check and `--help`).
pub fn documented_variables() -> Vec<(String, Option<String>)> {
    use clap::CommandFactory;
    EnvOnly::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().to_string();
            let default = a
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().to_string());
            Some((env, default))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::settings::*;
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        EnvOnly::try_parse_from(args.iter().copied())
            .map(|e| e.settings)
            .map_err(|e| first_line(&e.to_string()))
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = parse(&["--ssh-ports", "20-10"]).unwrap_err();
        assert!(e.contains("HOSTD_SSH_PORTS"), "{e}");
        let e = parse(&["--bcrypt-cost", "99"]).unwrap_err();
        assert!(e.contains("HOSTD_BCRYPT_COST"), "{e}");
        let e = parse(&["--faults", "nowhere:crash"]).unwrap_err();
        assert!(e.contains("HOSTD_FAULTS"), "{e}");
        let s = parse(&["--database-url", "postgres://x/y", "--instance", "Bad!"]).unwrap();
        let e = s.into_config(true).unwrap_err();
        assert_eq!(e.var, "HOSTD_INSTANCE");
        let s = parse(&["--database-url", "postgres://x/y"]).unwrap();
        assert_eq!(
            s.clone().into_config(false).unwrap_err().var,
            "HOSTD_JWT_SECRET"
        );
        let (c, generated) = s.into_config(true).unwrap();
        assert!(generated);
        assert_eq!(
            c.nginx_routes_dir,
            PathBuf::from("/var/lib/hostd/nginx-routes")
        );
    }

    #[test]
    fn readme_table_matches_the_declared_settings() {
        let readme = include_str!("../../README.md");
        let rows: Vec<(String, String)> = readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                Some((
                    cells.get(1)?.trim_matches('`').to_string(),
                    cells.get(2)?.to_string(),
                ))
            })
            .collect();
        let declared = documented_variables();
        for (var, default) in &declared {
            let row = rows.iter().find(|(v, _)| v == var);
            let Some((_, cell)) = row else {
                panic!("{var} is declared in config/settings.rs but missing from the README table");
            };
            if let Some(d) = default.as_deref().filter(|d| !d.is_empty()) {
                assert_eq!(cell, &format!("`{d}`"), "README default of {var}");
            }
        }
        for (var, _) in &rows {
            assert!(
                declared.iter().any(|(v, _)| v == var),
                "README documents {var}, which config/settings.rs does not declare"
            );
        }
    }
}

/// Per-hosting statistics settings (see [`Config::stats`]).
#[derive(Debug, Clone, Default)]
pub struct StatsSettings {
    pub interval: Option<Duration>,
    pub site_log: Option<PathBuf>,
    pub per_hosting_metrics: bool,
}
