//! [`Settings`]: every setting as clap reads it (environment variable,
//! flag, default). Its validation into a [`super::Config`] is in
//! `validate.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use super::*;
use crate::domain::PortRange;
use crate::faults::Faults;

/// The default `HOSTD_BOOT_CONCURRENCY`: one boot per two cores under TCG,
/// two per core with KVM. A TCG boot keeps about two threads busy (the vCPU,
/// and passt spinning until the guest's network is up). Measured on two
/// cores (`scripts/bench-burst.sh 10 0 1 2`, one run, pool of 2): one at a
/// time finished a boot every ~15.7 s, two at a time a pair every ~31 s, the
/// same throughput, so one at a time serves the first users sooner (median
/// 56.8 s against 62.9 s in another run; all at once: 163–186 s).
pub(super) fn default_boot_concurrency(cores: usize, kvm: bool) -> usize {
    match kvm {
        true => cores.max(1) * 2,
        false => (cores / 2).max(1),
    }
}
/// Every setting as read from the environment (or the equivalent flag).
/// Field docs are the `--help` text; the README table mirrors them.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Postgres URL (required for every command that talks to the database).
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// API listen address.
    #[arg(
        long,
        env = "HOSTD_LISTEN",
        value_name = "HOSTD_LISTEN",
        default_value = "127.0.0.1:8000"
    )]
    pub listen: SocketAddr,
    /// Extra listener serving only /metrics (required to scrape `hostd reconciler`).
    #[arg(
        long,
        env = "HOSTD_METRICS_LISTEN",
        value_name = "HOSTD_METRICS_LISTEN"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// HS256 secret, at least 32 bytes (`hostd all --dev` generates one and warns).
    #[arg(
        long,
        env = "HOSTD_JWT_SECRET",
        value_name = "HOSTD_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Token lifetime in seconds.
    #[arg(
        long,
        env = "HOSTD_JWT_TTL_SECS",
        value_name = "HOSTD_JWT_TTL_SECS",
        default_value = "3600"
    )]
    pub jwt_ttl_secs: u64,
    /// bcrypt cost (4-31).
    #[arg(long, env = "HOSTD_BCRYPT_COST", value_name = "HOSTD_BCRYPT_COST", default_value = "12",
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// libvirt URI (`test:///default` for a simulated hypervisor).
    #[arg(
        long,
        env = "HOSTD_LIBVIRT_URI",
        value_name = "HOSTD_LIBVIRT_URI",
        default_value = "qemu:///system"
    )]
    pub libvirt_uri: String,
    /// State directory: storage pool, images, console logs.
    #[arg(
        long,
        env = "HOSTD_STATE_DIR",
        value_name = "HOSTD_STATE_DIR",
        default_value = "/var/lib/hostd"
    )]
    pub state_dir: PathBuf,
    /// Directory of hostd's nginx route map (`routes.map`) [default: $HOSTD_STATE_DIR/nginx-routes].
    #[arg(
        long,
        env = "HOSTD_NGINX_ROUTES_DIR",
        value_name = "HOSTD_NGINX_ROUTES_DIR"
    )]
    pub nginx_routes_dir: Option<PathBuf>,
    /// Main nginx config that includes the routes directory.
    #[arg(
        long,
        env = "HOSTD_NGINX_CONF",
        value_name = "HOSTD_NGINX_CONF",
        default_value = "/etc/nginx/nginx.conf"
    )]
    pub nginx_conf: PathBuf,
    /// nginx binary.
    #[arg(
        long,
        env = "HOSTD_NGINX_BIN",
        value_name = "HOSTD_NGINX_BIN",
        default_value = "/usr/sbin/nginx"
    )]
    pub nginx_bin: PathBuf,
    /// Base of `web_url` and host of `ssh_command`.
    #[arg(
        long,
        env = "HOSTD_PUBLIC_URL",
        value_name = "HOSTD_PUBLIC_URL",
        default_value = "http://localhost"
    )]
    pub public_url: String,
    /// With a domain (e.g. `sites.example.com`), each site is also served at
    /// `<user>.<domain>`: one origin per tenant (the path form stays).
    #[arg(long, env = "HOSTD_SITES_DOMAIN", value_name = "HOSTD_SITES_DOMAIN",
          value_parser = crate::domain::SiteAddress::parse_domain)]
    pub sites_domain: Option<String>,
    /// The host nginx as the reconciler probes it (must be on 127.0.0.0/8).
    #[arg(
        long,
        env = "HOSTD_PROBE_URL",
        value_name = "HOSTD_PROBE_URL",
        default_value = "http://127.0.0.1:80"
    )]
    pub probe_url: String,
    /// SSH port range.
    #[arg(long, env = "HOSTD_SSH_PORTS", value_name = "HOSTD_SSH_PORTS", default_value = "10000-20000",
          value_parser = PortRange::parse)]
    pub ssh_ports: PortRange,
    /// Guest HTTP forward range (127.0.0.1 only; kept below the kernel's ephemeral ports).
    #[arg(long, env = "HOSTD_HTTP_PORTS", value_name = "HOSTD_HTTP_PORTS", default_value = "20001-30000",
          value_parser = PortRange::parse)]
    pub http_ports: PortRange,
    /// Address SSH forwards bind (`0.0.0.0` in production).
    #[arg(
        long,
        env = "HOSTD_SSH_BIND",
        value_name = "HOSTD_SSH_BIND",
        default_value = "127.0.0.1"
    )]
    pub ssh_bind: IpAddr,
    /// `kvm`, `qemu` (TCG) or `auto` (TCG when kvm_pvm is loaded or /dev/kvm is absent).
    #[arg(long, env = "HOSTD_DOMAIN_TYPE", value_name = "HOSTD_DOMAIN_TYPE", default_value = "auto",
          value_parser = ["auto", "kvm", "qemu"])]
    pub domain_type: String,
    /// Separates hostd installations sharing a libvirtd/Postgres server (a-z, 0-9, '-').
    #[arg(
        long,
        env = "HOSTD_INSTANCE",
        value_name = "HOSTD_INSTANCE",
        default_value = "default"
    )]
    pub instance: String,
    /// Name of the node `HOSTD_LIBVIRT_URI` reaches (the implicit first
    /// node; more are added with `hostd node add`).
    #[arg(
        long,
        env = "HOSTD_NODE_NAME",
        value_name = "HOSTD_NODE_NAME",
        default_value = "local"
    )]
    pub node_name: String,
    /// Seconds without a good heartbeat before a node counts as down
    /// (`NodeReady=False`; its hostings `Unknown`).
    #[arg(long, env = "HOSTD_NODE_DOWN_SECS", value_name = "HOSTD_NODE_DOWN_SECS", default_value = "60",
          value_parser = clap::value_parser!(u64).range(2..=86400))]
    pub node_down_secs: u64,
    /// Seconds between per-hosting statistics samples (CPU, memory, disk,
    /// network from libvirt; requests from the site log); 0: none taken.
    #[arg(long, env = "HOSTD_STATS_SECS", value_name = "HOSTD_STATS_SECS", default_value = "15",
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub stats_secs: u64,
    /// The host nginx's per-site log hostd reads for requests and bytes per
    /// site (`hostd nginx-conf` writes the `access_log` for it); unset: no
    /// HTTP statistics.
    #[arg(
        long,
        env = "HOSTD_NGINX_SITE_LOG",
        value_name = "HOSTD_NGINX_SITE_LOG"
    )]
    pub nginx_site_log: Option<PathBuf>,
    /// Export per-hosting series on `/metrics` (`hostd_hosting_*{hosting}`):
    /// one series per hosting and kind, so off by default.
    #[arg(long, env = "HOSTD_METRICS_PER_HOSTING", value_name = "HOSTD_METRICS_PER_HOSTING",
          default_value = "false", action = clap::ArgAction::Set)]
    pub metrics_per_hosting: bool,
    /// Full resync period in seconds.
    #[arg(long, env = "HOSTD_RESYNC_SECS", value_name = "HOSTD_RESYNC_SECS", default_value = "15",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_secs: u64,
    /// Parallel reconciles.
    #[arg(long, env = "HOSTD_RECONCILE_CONCURRENCY", value_name = "HOSTD_RECONCILE_CONCURRENCY", default_value = "32",
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub reconcile_concurrency: u64,
    /// Guest readiness deadline in seconds, before a Warning and backoff.
    #[arg(
        long,
        env = "HOSTD_READY_TIMEOUT_SECS",
        value_name = "HOSTD_READY_TIMEOUT_SECS",
        default_value = "300"
    )]
    pub ready_timeout_secs: u64,
    /// Restarts of a guest that is not ready within HOSTD_READY_TIMEOUT_SECS
    /// of its start, before the hosting is Failed (BootFailed).
    #[arg(
        long,
        env = "HOSTD_BOOT_RETRIES",
        value_name = "HOSTD_BOOT_RETRIES",
        default_value = "3"
    )]
    pub boot_retries: u32,
    /// Guests booting at once on this host (`0`: no limit) [default: half
    /// the host's cores, at least 1, under TCG; twice the cores with KVM].
    #[arg(
        long,
        env = "HOSTD_BOOT_CONCURRENCY",
        value_name = "HOSTD_BOOT_CONCURRENCY"
    )]
    pub boot_concurrency: Option<usize>,
    /// Cap of the per-hosting error backoff, in seconds.
    #[arg(long, env = "HOSTD_BACKOFF_MAX_SECS", value_name = "HOSTD_BACKOFF_MAX_SECS", default_value = "300",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_max_secs: u64,
    /// Image catalogue (optional) [default: $HOSTD_STATE_DIR/images/catalog.yaml].
    #[arg(long, env = "HOSTD_IMAGES_FILE", value_name = "HOSTD_IMAGES_FILE")]
    pub images_file: Option<PathBuf>,
    /// Fault injection for tests, e.g. `after_define:crash`.
    #[arg(long, env = "HOSTD_FAULTS", value_name = "HOSTD_FAULTS", default_value = "",
          value_parser = Faults::parse)]
    pub faults: Faults,
    /// Largest vCPU count one hosting may ask for.
    #[arg(long, env = "HOSTD_MAX_VCPUS", value_name = "HOSTD_MAX_VCPUS", default_value = "2",
          value_parser = clap::value_parser!(i32).range(1..=16))]
    pub max_vcpus: i32,
    /// Largest memory (MiB) one hosting may ask for.
    #[arg(long, env = "HOSTD_MAX_MEMORY_MIB", value_name = "HOSTD_MAX_MEMORY_MIB", default_value = "2048",
          value_parser = clap::value_parser!(i32).range(256..=65536))]
    pub max_memory_mib: i32,
    /// Largest disk (GiB) one hosting may ask for.
    #[arg(long, env = "HOSTD_MAX_DISK_GIB", value_name = "HOSTD_MAX_DISK_GIB", default_value = "20",
          value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub max_disk_gib: i32,
    /// Host memory (MiB) kept back from guests when admitting hostings.
    #[arg(
        long,
        env = "HOSTD_HOST_RESERVED_MIB",
        value_name = "HOSTD_HOST_RESERVED_MIB",
        default_value = "1024"
    )]
    pub host_reserved_mib: u64,
    /// Factor on the memory left for guests (1.0: no overcommit).
    #[arg(
        long,
        env = "HOSTD_MEMORY_OVERCOMMIT",
        value_name = "HOSTD_MEMORY_OVERCOMMIT",
        default_value = "1.0"
    )]
    pub memory_overcommit: f64,
    /// Factor on the host's CPUs for guests' vCPUs.
    #[arg(
        long,
        env = "HOSTD_CPU_OVERCOMMIT",
        value_name = "HOSTD_CPU_OVERCOMMIT",
        default_value = "4.0"
    )]
    pub cpu_overcommit: f64,
    /// `1`: run real guests even when the host-side guest isolation (nftables)
    /// cannot be put in place. Never in production.
    #[arg(long, env = "HOSTD_ALLOW_UNISOLATED_GUESTS", value_name = "HOSTD_ALLOW_UNISOLATED_GUESTS",
          default_value = "0", value_parser = ["0", "1"])]
    pub allow_unisolated_guests: String,
    /// CPU time each guest vCPU may use, percent of one core (cgroup quota
    /// per vCPU thread).
    #[arg(long, env = "HOSTD_GUEST_CPU_PERCENT", value_name = "HOSTD_GUEST_CPU_PERCENT",
          default_value = "100", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub guest_cpu_percent: u32,
    /// Disk throughput each guest may use, MiB/s (reads and writes together).
    #[arg(long, env = "HOSTD_GUEST_DISK_MIBPS", value_name = "HOSTD_GUEST_DISK_MIBPS",
          default_value = "100", value_parser = clap::value_parser!(u64).range(1..))]
    pub guest_disk_mibps: u64,
    /// Disk operations per second each guest may issue.
    #[arg(long, env = "HOSTD_GUEST_DISK_IOPS", value_name = "HOSTD_GUEST_DISK_IOPS",
          default_value = "2000", value_parser = clap::value_parser!(u64).range(1..))]
    pub guest_disk_iops: u64,
    /// Where guests may open connections: `public` (public addresses only:
    /// never this host, private, CGNAT, link-local/metadata, ULA, multicast
    /// or HOSTD_GUEST_DENY_CIDRS) or `none` (no outbound connection at all).
    #[arg(long, env = "HOSTD_GUEST_EGRESS", value_name = "HOSTD_GUEST_EGRESS",
          default_value = "public", value_parser = ["public", "none"])]
    pub guest_egress: String,
    /// More networks guests may not reach, comma-separated CIDRs (e.g. the
    /// host's public subnet, or a database's address).
    #[arg(
        long,
        env = "HOSTD_GUEST_DENY_CIDRS",
        value_name = "HOSTD_GUEST_DENY_CIDRS",
        default_value = ""
    )]
    pub guest_deny_cidrs: String,
    /// Disk space (GiB) kept free on the state directory's filesystem: a
    /// backup or restore that would cross it is refused, new disks wait.
    #[arg(
        long,
        env = "HOSTD_DISK_RESERVE_GIB",
        value_name = "HOSTD_DISK_RESERVE_GIB",
        default_value = "2"
    )]
    pub disk_reserve_gib: u64,
    /// Days a volume without a hosting is kept in $HOSTD_STATE_DIR/quarantine.
    #[arg(
        long,
        env = "HOSTD_QUARANTINE_DAYS",
        value_name = "HOSTD_QUARANTINE_DAYS",
        default_value = "7"
    )]
    pub quarantine_days: u64,
    /// Hours between scheduled backups of each hosting (`0`: no schedule).
    #[arg(
        long,
        env = "HOSTD_BACKUP_INTERVAL_HOURS",
        value_name = "HOSTD_BACKUP_INTERVAL_HOURS",
        default_value = "24"
    )]
    pub backup_interval_hours: f64,
    /// Completed backups kept per hosting (older ones are deleted).
    #[arg(long, env = "HOSTD_BACKUP_KEEP", value_name = "HOSTD_BACKUP_KEEP", default_value = "7",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_keep: u32,
    /// Every how many backups of a running guest a full one is taken; the
    /// others are incremental (only what changed since the previous backup,
    /// through a libvirt checkpoint). `1`: every backup is full.
    #[arg(long, env = "HOSTD_BACKUP_FULL_EVERY", value_name = "HOSTD_BACKUP_FULL_EVERY",
          default_value = "7", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub backup_full_every: u32,
    /// GiB of backups plus quarantined data each hosting may hold (`0`:
    /// HOSTD_BACKUP_KEEP × the hosting's disk size). Past it the oldest
    /// backups go first; a backup that cannot fit fails with the reason.
    #[arg(long, env = "HOSTD_BACKUP_QUOTA_GIB", value_name = "HOSTD_BACKUP_QUOTA_GIB",
          default_value = "0", value_parser = non_negative_gib)]
    pub backup_quota_gib: f64,
    /// Off-host backups: an S3-compatible store as
    /// `http(s)://<endpoint>/<bucket>[/<prefix>]` (path style), e.g.
    /// `https://s3.eu-west-1.amazonaws.com/my-backups/host1`. Every backup is
    /// encrypted (HOSTD_BACKUP_KEY_FILE) and uploaded; it is Completed only
    /// once read back from the store. Unset: backups stay on this host.
    #[arg(long, env = "HOSTD_BACKUP_S3_URL", value_name = "HOSTD_BACKUP_S3_URL")]
    pub backup_s3_url: Option<String>,
    /// The store's region.
    #[arg(
        long,
        env = "HOSTD_BACKUP_S3_REGION",
        value_name = "HOSTD_BACKUP_S3_REGION",
        default_value = "us-east-1"
    )]
    pub backup_s3_region: String,
    /// The store's access key id.
    #[arg(
        long,
        env = "HOSTD_BACKUP_S3_ACCESS_KEY",
        value_name = "HOSTD_BACKUP_S3_ACCESS_KEY"
    )]
    pub backup_s3_access_key: Option<String>,
    /// The store's secret key (or HOSTD_BACKUP_S3_SECRET_KEY_FILE).
    #[arg(
        long,
        env = "HOSTD_BACKUP_S3_SECRET_KEY",
        value_name = "HOSTD_BACKUP_S3_SECRET_KEY",
        hide_env_values = true
    )]
    pub backup_s3_secret_key: Option<String>,
    /// A file (mode 0600) holding the store's secret key.
    #[arg(
        long,
        env = "HOSTD_BACKUP_S3_SECRET_KEY_FILE",
        value_name = "HOSTD_BACKUP_S3_SECRET_KEY_FILE"
    )]
    pub backup_s3_secret_key_file: Option<PathBuf>,
    /// The key every backup is encrypted with before it leaves the host (64
    /// hex digits, mode 0600; created if missing). Keep a copy elsewhere:
    /// without it no off-host backup can be restored.
    #[arg(
        long,
        env = "HOSTD_BACKUP_KEY_FILE",
        value_name = "HOSTD_BACKUP_KEY_FILE",
        default_value = "/etc/hostd/backup.key"
    )]
    pub backup_key_file: PathBuf,
    /// With off-host backups: how many of each hosting's newest backups are
    /// also kept on this host, for quick restores (`0`: none).
    #[arg(
        long,
        env = "HOSTD_BACKUP_LOCAL_KEEP",
        value_name = "HOSTD_BACKUP_LOCAL_KEEP",
        default_value = "1"
    )]
    pub backup_local_keep: u32,
    /// Backups taken at the same time (each reads a whole disk and compresses it).
    #[arg(long, env = "HOSTD_BACKUP_CONCURRENCY", value_name = "HOSTD_BACKUP_CONCURRENCY",
          default_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_concurrency: u32,
    /// Generic guests kept booted and idle for new hostings of the default
    /// size (`0`: no warm pool). Each holds memory like a running hosting.
    #[arg(long, env = "HOSTD_WARM_POOL", value_name = "HOSTD_WARM_POOL", default_value = "0",
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub warm_pool: u32,
    /// Start new hostings from a template (a generic guest booted once and
    /// saved with its memory) instead of booting them, where the hypervisor
    /// can (QEMU) and the image has the guest agent. Costs one template's
    /// memory file and disk per size on the host's disk.
    #[arg(long, env = "HOSTD_CLONE_TEMPLATES", value_name = "HOSTD_CLONE_TEMPLATES",
          default_value = "true", action = clap::ArgAction::Set)]
    pub clone_templates: bool,
    /// ACME directory URL (e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`): with it, the
    /// reconciler issues and renews a certificate for every name it serves.
    #[arg(
        long,
        env = "HOSTD_ACME_DIRECTORY",
        value_name = "HOSTD_ACME_DIRECTORY"
    )]
    pub acme_directory: Option<String>,
    /// Contact e-mail of the ACME account (expiry warnings from the CA).
    #[arg(long, env = "HOSTD_ACME_EMAIL", value_name = "HOSTD_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// A PEM root the ACME client trusts instead of the public roots (a test CA).
    #[arg(long, env = "HOSTD_ACME_CA_FILE", value_name = "HOSTD_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// Renew a certificate this many days before it expires.
    #[arg(long, env = "HOSTD_ACME_RENEW_DAYS", value_name = "HOSTD_ACME_RENEW_DAYS",
          default_value = "30", value_parser = clap::value_parser!(u32).range(1..=80))]
    pub acme_renew_days: u32,
    /// A wildcard certificate (PEM chain) for `*.<HOSTD_SITES_DOMAIN>`: tenant
    /// names use it and no per-tenant certificate is issued.
    #[arg(
        long,
        env = "HOSTD_SITES_TLS_CERT",
        value_name = "HOSTD_SITES_TLS_CERT"
    )]
    pub sites_tls_cert: Option<PathBuf>,
    /// The wildcard certificate's private key (PEM).
    #[arg(long, env = "HOSTD_SITES_TLS_KEY", value_name = "HOSTD_SITES_TLS_KEY")]
    pub sites_tls_key: Option<PathBuf>,
    /// DNS server (`address:port`) that custom domains' TXT records are
    /// checked through; unset: the host's resolv.conf.
    #[arg(long, env = "HOSTD_DNS_RESOLVER", value_name = "HOSTD_DNS_RESOLVER")]
    pub dns_resolver: Option<std::net::SocketAddr>,
    /// The dashboard's own host name (e.g. `panel.example.com`, never under
    /// the sites domain): the host nginx serves the dashboard and API there,
    /// with a certificate like the sites'.
    #[arg(long, env = "HOSTD_PANEL_HOST", value_name = "HOSTD_PANEL_HOST",
          value_parser = crate::domain::SiteAddress::parse_domain)]
    pub panel_host: Option<String>,
    /// hostd's TLS directory (certificates, ACME account, challenges)
    /// [default: HOSTD_STATE_DIR/tls].
    #[arg(long, env = "HOSTD_TLS_DIR", value_name = "HOSTD_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Custom domains one tenant may attach.
    #[arg(long, env = "HOSTD_MAX_DOMAINS", value_name = "HOSTD_MAX_DOMAINS",
          default_value = "5", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_domains: u32,
    /// Mark the dashboard's cookies `Secure` (set when the API listener is
    /// reached over HTTPS, e.g. behind a TLS-terminating proxy).
    #[arg(long, env = "HOSTD_SECURE_COOKIES", value_name = "HOSTD_SECURE_COOKIES",
          default_value = "false", action = clap::ArgAction::Set)]
    pub secure_cookies: bool,
    /// Redis (rate limits and token revocations shared by API processes).
    #[arg(
        long,
        env = "HOSTD_REDIS_URL",
        value_name = "HOSTD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Failed logins per account from one client address within
    /// HOSTD_LOGIN_WINDOW_SECS before 429 (the lockout is per account and
    /// address: guesses from elsewhere never lock the owner out).
    #[arg(long, env = "HOSTD_LOGIN_MAX_FAILURES", value_name = "HOSTD_LOGIN_MAX_FAILURES",
          default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures: u32,
    /// Failed logins per account from anywhere within HOSTD_LOGIN_WINDOW_SECS
    /// after which its login attempts are slowed (one a second), not refused.
    #[arg(long, env = "HOSTD_LOGIN_SLOW_AFTER", value_name = "HOSTD_LOGIN_SLOW_AFTER",
          default_value = "20", value_parser = clap::value_parser!(u32).range(1..))]
    pub login_slow_after: u32,
    /// Proxies (comma-separated CIDRs) whose X-Forwarded-For names the client:
    /// behind a TLS proxy every client would otherwise share its address.
    #[arg(
        long,
        env = "HOSTD_TRUSTED_PROXIES",
        value_name = "HOSTD_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: String,
    /// Failed logins per client address within HOSTD_LOGIN_WINDOW_SECS before 429.
    #[arg(long, env = "HOSTD_LOGIN_MAX_FAILURES_PER_ADDRESS",
          value_name = "HOSTD_LOGIN_MAX_FAILURES_PER_ADDRESS", default_value = "30",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures_per_address: u32,
    /// The window of the login limits, seconds.
    #[arg(long, env = "HOSTD_LOGIN_WINDOW_SECS", value_name = "HOSTD_LOGIN_WINDOW_SECS",
          default_value = "60", value_parser = clap::value_parser!(u64).range(1..))]
    pub login_window_secs: u64,
    /// Registrations per client address per hour.
    #[arg(long, env = "HOSTD_REGISTER_PER_HOUR", value_name = "HOSTD_REGISTER_PER_HOUR",
          default_value = "20", value_parser = clap::value_parser!(u32).range(1..))]
    pub register_per_hour: u32,
    /// Hosting writes (create, change, delete, reset, backup, restore) per user per minute.
    #[arg(long, env = "HOSTD_HOST_OPS_PER_MIN", value_name = "HOSTD_HOST_OPS_PER_MIN",
          default_value = "10", value_parser = clap::value_parser!(u32).range(1..))]
    pub host_ops_per_min: u32,
    /// Disk replacements (restores and resets) per user per hour.
    #[arg(long, env = "HOSTD_DISK_REPLACES_PER_HOUR", value_name = "HOSTD_DISK_REPLACES_PER_HOUR",
          default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    pub disk_replaces_per_hour: u32,
    /// bcrypt computations at once (`0`: one per CPU core).
    #[arg(
        long,
        env = "HOSTD_BCRYPT_CONCURRENCY",
        value_name = "HOSTD_BCRYPT_CONCURRENCY",
        default_value = "0"
    )]
    pub bcrypt_concurrency: usize,
    /// Log as JSON lines (`1`) instead of text.
    #[arg(long, env = "HOSTD_LOG_JSON", value_name = "HOSTD_LOG_JSON", default_value = "0",
          value_parser = ["0", "1"])]
    pub log_json: String,
}

/// Parses the settings from the environment alone (no command line).
#[derive(Parser)]
#[command(no_binary_name = true)]
pub(super) struct EnvOnly {
    #[command(flatten)]
    pub(super) settings: Settings,
}

/// A size in GiB, fractions allowed, not negative and not absurd.
fn non_negative_gib(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e6).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a size in GiB between 0 and 1000000")),
    }
}

impl Settings {
    /// Reads the settings from the environment only.
    pub fn from_env() -> Result<Settings, ConfigError> {
        EnvOnly::try_parse_from(std::iter::empty::<String>())
            .map(|e| e.settings)
            .map_err(|e| bad("environment", first_line(&e.to_string())))
    }

    /// The TLS directory, with its default applied.
    pub fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tls"))
    }

    /// The routes directory, with its default applied.
    pub fn routes_dir(&self) -> PathBuf {
        self.nginx_routes_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("nginx-routes"))
    }
}
