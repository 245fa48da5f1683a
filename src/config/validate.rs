//! [`Settings`] into a [`Config`]: the checks no parser can make (formats,
//! relations between settings, absolute paths), the TLS policy, the domain
//! type, and the JWT secret.

use std::time::Duration;

use super::settings::default_boot_concurrency;
use super::*;
use crate::domain::{DiskGib, MemoryMib, Vcpus};

impl Settings {
    /// Checks the values no parser can: formats, relations, absolute paths.
    fn validate(&self) -> Result<(), ConfigError> {
        let db = self.database_url.as_deref().unwrap_or_default();
        if !db.starts_with("postgres://") && !db.starts_with("postgresql://") {
            return Err(bad(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        if !self.libvirt_uri.contains(":/") {
            return Err(bad("HOSTD_LIBVIRT_URI", "is not a libvirt URI"));
        }
        let routes = self.routes_dir();
        for (var, p) in [
            ("HOSTD_STATE_DIR", &self.state_dir),
            ("HOSTD_NGINX_ROUTES_DIR", &routes),
        ] {
            if !p.is_absolute() {
                return Err(bad(var, "must be an absolute path"));
            }
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return Err(bad(
                "HOSTD_PUBLIC_URL",
                "must start with http:// or https://",
            ));
        }
        if !self.probe_url.starts_with("http://127.") {
            let msg = "must be an http:// URL on 127.0.0.0/8 (the host nginx)";
            return Err(bad("HOSTD_PROBE_URL", msg));
        }
        for (var, f) in [
            ("HOSTD_MEMORY_OVERCOMMIT", self.memory_overcommit),
            ("HOSTD_CPU_OVERCOMMIT", self.cpu_overcommit),
        ] {
            if !(f.is_finite() && f > 0.0) {
                return Err(bad(var, "must be a positive number"));
            }
        }
        let h = self.backup_interval_hours;
        if !(h.is_finite() && (h == 0.0 || (1.0 / 60.0..=24.0 * 366.0).contains(&h))) {
            let msg = "must be 0 (no schedule) or between 1/60 (a minute) and 8784 (a year)";
            return Err(bad("HOSTD_BACKUP_INTERVAL_HOURS", msg));
        }
        if !(self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("rediss://")
            || self.redis_url.starts_with("redis+unix://")
            || self.redis_url.starts_with("unix://"))
        {
            return Err(bad("HOSTD_REDIS_URL", "must be a redis:// URL"));
        }
        if self.ssh_ports.overlaps(&self.http_ports) {
            return Err(bad("HOSTD_HTTP_PORTS", "overlaps HOSTD_SSH_PORTS"));
        }
        let valid_instance = (1..=32).contains(&self.instance.len())
            && self
                .instance
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_instance {
            return Err(bad(
                "HOSTD_INSTANCE",
                "must be 1-32 characters of a-z, 0-9 or '-'",
            ));
        }
        Ok(())
    }

    /// HTTPS: ACME, the wildcard option, custom domains.
    fn tls_policy(&self) -> Result<TlsPolicy, ConfigError> {
        let acme = match &self.acme_directory {
            None => None,
            Some(d) if d.starts_with("https://") => Some(AcmePolicy {
                directory: d.clone(),
                email: self.acme_email.clone(),
                ca_file: self.acme_ca_file.clone(),
                renew_before: Duration::from_secs(u64::from(self.acme_renew_days) * 86400),
            }),
            Some(_) => return Err(bad("HOSTD_ACME_DIRECTORY", "must be an https:// URL")),
        };
        if let Some(e) = &self.acme_email {
            let ok = e.len() <= 254
                && e.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !e
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',');
            if !ok {
                return Err(bad("HOSTD_ACME_EMAIL", "must be an e-mail address"));
            }
        }
        let wildcard = match (&self.sites_tls_cert, &self.sites_tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                if self.sites_domain.is_none() {
                    return Err(bad("HOSTD_SITES_TLS_CERT", "needs HOSTD_SITES_DOMAIN"));
                }
                Some((c.clone(), k.clone()))
            }
            _ => {
                return Err(bad(
                    "HOSTD_SITES_TLS_CERT",
                    "HOSTD_SITES_TLS_CERT and HOSTD_SITES_TLS_KEY go together",
                ))
            }
        };
        if let (Some(p), Some(d)) = (&self.panel_host, &self.sites_domain) {
            if p == d || p.ends_with(&format!(".{d}")) {
                return Err(bad(
                    "HOSTD_PANEL_HOST",
                    "must not be the sites domain or under it (a tenant's origin)",
                ));
            }
        }
        Ok(TlsPolicy {
            panel_host: self.panel_host.clone(),
            acme,
            wildcard,
            dir: self.tls_dir(),
            dns_resolver: self.dns_resolver,
            max_domains: self.max_domains,
        })
    }

    /// The domain type to use, and why.
    /// The off-host store from `HOSTD_BACKUP_S3_*`, if a URL is set.
    fn offsite(&self) -> Result<Option<OffsitePolicy>, ConfigError> {
        let Some(url) = self.backup_s3_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let (endpoint, bucket, prefix) =
            OffsitePolicy::parse_url(url).map_err(|e| bad("HOSTD_BACKUP_S3_URL", &e))?;
        let access_key = self
            .backup_s3_access_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                bad(
                    "HOSTD_BACKUP_S3_ACCESS_KEY",
                    "required with HOSTD_BACKUP_S3_URL",
                )
            })?;
        // An empty value is unset (the compose file passes every variable).
        let given_key = self.backup_s3_secret_key.as_ref().filter(|k| !k.is_empty());
        let given_file = self
            .backup_s3_secret_key_file
            .as_ref()
            .filter(|f| !f.as_os_str().is_empty());
        let secret_key = match (given_key, given_file) {
            (Some(k), None) => k.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    bad(
                        "HOSTD_BACKUP_S3_SECRET_KEY_FILE",
                        format!("{}: {e}", f.display()),
                    )
                })?,
            _ => return Err(bad(
                "HOSTD_BACKUP_S3_SECRET_KEY",
                "set it or HOSTD_BACKUP_S3_SECRET_KEY_FILE (one of them) with HOSTD_BACKUP_S3_URL",
            )),
        };
        if !self.backup_key_file.is_absolute() {
            return Err(bad("HOSTD_BACKUP_KEY_FILE", "must be an absolute path"));
        }
        Ok(Some(OffsitePolicy {
            endpoint,
            bucket,
            prefix,
            region: self.backup_s3_region.clone(),
            access_key,
            secret_key,
            key_file: self.backup_key_file.clone(),
            local_keep: self.backup_local_keep,
        }))
    }

    fn domain_type(&self) -> (DomainType, String) {
        match self.domain_type.as_str() {
            "kvm" => (DomainType::Kvm, "HOSTD_DOMAIN_TYPE=kvm".to_string()),
            "qemu" => (DomainType::Qemu, "HOSTD_DOMAIN_TYPE=qemu (TCG)".to_string()),
            _ => {
                let (t, why) = DomainType::detect();
                (t, why.to_string())
            }
        }
    }

    /// Validates the settings into a [`Config`]. With `dev`, a missing JWT
    /// secret is generated; the returned flag says so (the caller warns).
    pub fn into_config(self, dev: bool) -> Result<(Config, bool), ConfigError> {
        let offsite = self.offsite()?;
        let database_url = self
            .database_url
            .clone()
            .ok_or_else(|| bad("DATABASE_URL", "is required"))?;
        self.validate()?;
        let (jwt_secret, generated) = jwt_secret(self.jwt_secret.as_deref(), dev)?;
        let tls = self.tls_policy()?;
        let nginx_routes_dir = self.routes_dir();
        let (domain_type, domain_type_reason) = self.domain_type();
        let images_file = self
            .images_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("images/catalog.yaml"));
        let config = Config {
            database_url,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            jwt_secret,
            jwt_ttl: Duration::from_secs(self.jwt_ttl_secs),
            bcrypt_cost: self.bcrypt_cost,
            libvirt_uri: self.libvirt_uri,
            state_dir: self.state_dir,
            nginx_routes_dir,
            nginx_conf: self.nginx_conf,
            nginx_bin: self.nginx_bin,
            sites: crate::domain::SiteAddress {
                public_url: self.public_url.trim_end_matches('/').to_string(),
                sites_domain: self.sites_domain.clone(),
            },
            probe_url: self.probe_url.trim_end_matches('/').to_string(),
            ssh_ports: self.ssh_ports,
            http_ports: self.http_ports,
            ssh_bind: self.ssh_bind,
            domain_type,
            domain_type_reason,
            instance: self.instance,
            node_name: crate::domain::NodeName::parse(&self.node_name)
                .map_err(|e| bad("HOSTD_NODE_NAME", e.message))?,
            node_down: Duration::from_secs(self.node_down_secs),
            stats: super::StatsSettings {
                interval: (self.stats_secs > 0).then(|| Duration::from_secs(self.stats_secs)),
                site_log: self.nginx_site_log.clone(),
                per_hosting_metrics: self.metrics_per_hosting,
            },
            resync: Duration::from_secs(self.resync_secs),
            concurrency: self.reconcile_concurrency as usize,
            ready_timeout: Duration::from_secs(self.ready_timeout_secs),
            boot_retries: self.boot_retries,
            boot_concurrency: self.boot_concurrency.unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                default_boot_concurrency(cores, domain_type == DomainType::Kvm)
            }),
            backoff_max: Duration::from_secs(self.backoff_max_secs),
            images_file,
            faults: self.faults,
            quota: crate::domain::Quota {
                vcpus: Vcpus::parse(self.max_vcpus.into())
                    .map_err(|e| bad("HOSTD_MAX_VCPUS", e.to_string()))?,
                memory_mib: MemoryMib::parse(self.max_memory_mib.into())
                    .map_err(|e| bad("HOSTD_MAX_MEMORY_MIB", e.to_string()))?,
                disk_gib: DiskGib::parse(self.max_disk_gib.into())
                    .map_err(|e| bad("HOSTD_MAX_DISK_GIB", e.to_string()))?,
            },
            allow_unisolated_guests: self.allow_unisolated_guests == "1",
            guest_limits: GuestLimits {
                cpu_percent: self.guest_cpu_percent,
                disk_bytes_per_sec: self.guest_disk_mibps << 20,
                disk_iops: self.guest_disk_iops,
            },
            trusted_proxies: parse_cidrs("HOSTD_TRUSTED_PROXIES", &self.trusted_proxies)?,
            guest_egress: crate::domain::EgressPolicy::parse(
                &self.guest_egress,
                &self.guest_deny_cidrs,
            )
            .map_err(|e| bad("HOSTD_GUEST_DENY_CIDRS", e.to_string()))?,
            warm_pool: self.warm_pool,
            clone_templates: self.clone_templates,
            secure_cookies: self.secure_cookies,
            tls,
            quarantine: Duration::from_secs(self.quarantine_days * 86400),
            disk_reserve_bytes: self.disk_reserve_gib.saturating_mul(1 << 30),
            redis_url: self.redis_url.clone(),
            limits: RateLimits {
                login_max_failures: self.login_max_failures,
                login_slow_after: self.login_slow_after,
                login_max_failures_per_address: self.login_max_failures_per_address,
                login_window: Duration::from_secs(self.login_window_secs),
                register_per_hour: self.register_per_hour,
                host_ops_per_min: self.host_ops_per_min,
                disk_replaces_per_hour: self.disk_replaces_per_hour,
                bcrypt_concurrency: match self.bcrypt_concurrency {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                },
            },
            backups: BackupPolicy {
                interval: (self.backup_interval_hours > 0.0)
                    .then(|| Duration::from_secs_f64(self.backup_interval_hours * 3600.0)),
                keep: self.backup_keep,
                full_every: self.backup_full_every,
                quota_bytes: (self.backup_quota_gib > 0.0)
                    .then(|| (self.backup_quota_gib * (1u64 << 30) as f64).max(1.0) as u64),
                concurrency: self.backup_concurrency,
                offsite,
            },
            capacity: CapacityPolicy {
                reserved_mib: self.host_reserved_mib,
                memory_overcommit: self.memory_overcommit,
                cpu_overcommit: self.cpu_overcommit,
                reserved_disk_bytes: self.disk_reserve_gib.saturating_mul(1 << 30),
            },
        };
        Ok((config, generated))
    }
}

/// The JWT secret: given (≥ 32 bytes), or generated in `dev` mode.
fn jwt_secret(given: Option<&str>, dev: bool) -> Result<(Vec<u8>, bool), ConfigError> {
    match given {
        Some(s) if s.len() >= 32 => Ok((s.as_bytes().to_vec(), false)),
        Some(_) => Err(bad("HOSTD_JWT_SECRET", "must be at least 32 bytes")),
        None if dev => {
            use rand::RngCore;
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            Ok((hex::encode(b).into_bytes(), true))
        }
        None => Err(bad("HOSTD_JWT_SECRET", "is required (at least 32 bytes)")),
    }
}
