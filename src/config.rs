//! Typed configuration, read once from environment variables at start-up.
//! Every variable name here is part of the operator contract (see README).
//! A bad value fails start-up with one line naming the variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::PortRange;

/// A configuration problem, always naming the variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

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

/// All of hostd's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres connection string (`DATABASE_URL`).
    pub database_url: String,
    /// Where the API listens (`HOSTD_LISTEN`).
    pub listen: SocketAddr,
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
    /// Directory of per-hosting nginx route files (`HOSTD_NGINX_ROUTES_DIR`).
    pub nginx_routes_dir: PathBuf,
    /// Main nginx config that includes the routes directory (`HOSTD_NGINX_CONF`).
    pub nginx_conf: PathBuf,
    /// nginx binary (`HOSTD_NGINX_BIN`).
    pub nginx_bin: PathBuf,
    /// Base URL users reach hostings at (`HOSTD_PUBLIC_URL`).
    pub public_url: String,
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
    /// Full resync period (`HOSTD_RESYNC_SECS`).
    pub resync: Duration,
    /// Concurrent reconciles (`HOSTD_RECONCILE_CONCURRENCY`).
    pub concurrency: usize,
    /// Deadline for a guest to become ready (`HOSTD_READY_TIMEOUT_SECS`).
    pub ready_timeout: Duration,
    /// Cap of the per-hosting error backoff (`HOSTD_BACKOFF_MAX_SECS`).
    pub backoff_max: Duration,
    /// Image catalogue file (`HOSTD_IMAGES_FILE`); default `<state>/images/catalog.yaml`.
    pub images_file: PathBuf,
    /// Fault injection spec (`HOSTD_FAULTS`), empty in production.
    pub faults: String,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

fn parse_num<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| bad(name, format!("'{v}' is not a valid number"))),
    }
}

impl Config {
    /// Reads the configuration from the environment. With `dev`, a missing JWT
    /// secret is generated (and announced loudly by the caller).
    pub fn from_env(dev: bool) -> Result<(Config, bool), ConfigError> {
        let database_url = var("DATABASE_URL").ok_or_else(|| bad("DATABASE_URL", "is required"))?;
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(bad(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        let listen = var("HOSTD_LISTEN").unwrap_or_else(|| "127.0.0.1:8000".into());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| bad("HOSTD_LISTEN", format!("'{listen}' is not host:port")))?;

        let mut generated = false;
        let jwt_secret = match var("HOSTD_JWT_SECRET") {
            Some(s) if s.len() >= 32 => s.into_bytes(),
            Some(_) => return Err(bad("HOSTD_JWT_SECRET", "must be at least 32 bytes")),
            None if dev => {
                generated = true;
                use rand::RngCore;
                let mut b = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut b);
                hex::encode(b).into_bytes()
            }
            None => return Err(bad("HOSTD_JWT_SECRET", "is required (at least 32 bytes)")),
        };
        let jwt_ttl = Duration::from_secs(parse_num("HOSTD_JWT_TTL_SECS", 3600u64)?);
        let bcrypt_cost = parse_num("HOSTD_BCRYPT_COST", 12u32)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(bad("HOSTD_BCRYPT_COST", "must be between 4 and 31"));
        }
        let libvirt_uri = var("HOSTD_LIBVIRT_URI").unwrap_or_else(|| "qemu:///system".into());
        if !libvirt_uri.contains(":///") && !libvirt_uri.contains("://") {
            return Err(bad("HOSTD_LIBVIRT_URI", "is not a libvirt URI"));
        }
        let state_dir =
            PathBuf::from(var("HOSTD_STATE_DIR").unwrap_or_else(|| "/var/lib/hostd".into()));
        if !state_dir.is_absolute() {
            return Err(bad("HOSTD_STATE_DIR", "must be an absolute path"));
        }
        let nginx_routes_dir = var("HOSTD_NGINX_ROUTES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("nginx-routes"));
        if !nginx_routes_dir.is_absolute() {
            return Err(bad("HOSTD_NGINX_ROUTES_DIR", "must be an absolute path"));
        }
        let nginx_conf = PathBuf::from(
            var("HOSTD_NGINX_CONF").unwrap_or_else(|| "/etc/nginx/nginx.conf".into()),
        );
        let nginx_bin =
            PathBuf::from(var("HOSTD_NGINX_BIN").unwrap_or_else(|| "/usr/sbin/nginx".into()));
        let public_url = var("HOSTD_PUBLIC_URL").unwrap_or_else(|| "http://localhost".into());
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(bad(
                "HOSTD_PUBLIC_URL",
                "must start with http:// or https://",
            ));
        }
        let public_url = public_url.trim_end_matches('/').to_string();
        let probe_url = var("HOSTD_PROBE_URL").unwrap_or_else(|| "http://127.0.0.1:80".into());
        if !probe_url.starts_with("http://127.") {
            return Err(bad(
                "HOSTD_PROBE_URL",
                "must be an http:// URL on 127.0.0.0/8 (the host nginx)",
            ));
        }
        let probe_url = probe_url.trim_end_matches('/').to_string();
        let range = |name: &'static str, default: &str| -> Result<PortRange, ConfigError> {
            let v = var(name).unwrap_or_else(|| default.into());
            PortRange::parse(&v).map_err(|e| bad(name, format!("'{v}': {e}")))
        };
        let ssh_ports = range("HOSTD_SSH_PORTS", "10000-20000")?;
        // Below Linux's ephemeral range (32768-60999 by default), so a forward never
        // collides with the source port of an outgoing connection.
        let http_ports = range("HOSTD_HTTP_PORTS", "20001-30000")?;
        if ssh_ports.overlaps(&http_ports) {
            return Err(bad("HOSTD_HTTP_PORTS", "overlaps HOSTD_SSH_PORTS"));
        }
        let ssh_bind: IpAddr = var("HOSTD_SSH_BIND")
            .unwrap_or_else(|| "127.0.0.1".into())
            .parse()
            .map_err(|_| bad("HOSTD_SSH_BIND", "is not an IP address"))?;
        let (domain_type, domain_type_reason) = match var("HOSTD_DOMAIN_TYPE").as_deref() {
            None | Some("auto") => {
                let (t, why) = DomainType::detect();
                (t, why.to_string())
            }
            Some("kvm") => (DomainType::Kvm, "HOSTD_DOMAIN_TYPE=kvm".to_string()),
            Some("qemu") => (DomainType::Qemu, "HOSTD_DOMAIN_TYPE=qemu (TCG)".to_string()),
            Some(o) => {
                return Err(bad(
                    "HOSTD_DOMAIN_TYPE",
                    format!("'{o}' is not kvm, qemu or auto"),
                ))
            }
        };
        let instance = var("HOSTD_INSTANCE").unwrap_or_else(|| "default".into());
        if !(1..=32).contains(&instance.len())
            || !instance
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad(
                "HOSTD_INSTANCE",
                "must be 1-32 characters of a-z, 0-9 or '-'",
            ));
        }
        let resync = Duration::from_secs(parse_num("HOSTD_RESYNC_SECS", 15u64)?.max(1));
        let concurrency = parse_num("HOSTD_RECONCILE_CONCURRENCY", 32usize)?.max(1);
        let ready_timeout = Duration::from_secs(parse_num("HOSTD_READY_TIMEOUT_SECS", 300u64)?);
        let backoff_max = Duration::from_secs(parse_num("HOSTD_BACKOFF_MAX_SECS", 300u64)?.max(1));
        let images_file = var("HOSTD_IMAGES_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("images/catalog.yaml"));
        let faults = var("HOSTD_FAULTS").unwrap_or_default();
        crate::reconciler::faults::Faults::parse(&faults).map_err(|e| bad("HOSTD_FAULTS", e))?;

        Ok((
            Config {
                database_url,
                listen,
                jwt_secret,
                jwt_ttl,
                bcrypt_cost,
                libvirt_uri,
                state_dir,
                nginx_routes_dir,
                nginx_conf,
                nginx_bin,
                public_url,
                probe_url,
                ssh_ports,
                http_ports,
                ssh_bind,
                domain_type,
                domain_type_reason,
                instance,
                resync,
                concurrency,
                ready_timeout,
                backoff_max,
                images_file,
                faults,
            },
            generated,
        ))
    }

    /// The host part of the public URL, for `ssh_command`.
    pub fn public_host(&self) -> &str {
        let rest = self.public_url.split("://").nth(1).unwrap_or("localhost");
        let host = rest.split('/').next().unwrap_or(rest);
        if host.starts_with('[') {
            host.split(']')
                .next()
                .map(|h| &h[..])
                .unwrap_or(host)
                .trim_start_matches('[')
        } else {
            host.split(':').next().unwrap_or(host)
        }
    }
}
