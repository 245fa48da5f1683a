//! Drivers: hostd's only contact with the outside systems it manages. One trait
//! per system (VMs, the HTTP proxy), each with one real implementation. Tests use
//! the same implementations against libvirt's `test:///default` hypervisor and a
//! private nginx, never mocks.

use async_trait::async_trait;

use crate::domain::HostingId;

pub mod acme;
pub mod dns;
pub mod domain_events;
pub mod isolation;
pub mod kv;
pub mod libvirt;
pub mod nginx;
pub mod offsite;
pub mod ownership;
pub mod probe;
pub mod qemu_img;
pub mod seed;
pub mod tls_files;

/// Driver-layer errors.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("libvirt connection lost: {0}")]
    Connection(String),
    #[error("refusing to touch domain {0}: it carries no hostd marker of this instance")]
    NotOurs(String),
    /// The object belongs to another hostd installation.
    #[error("{0}")]
    Foreign(String),
    /// The QEMU guest agent did not answer, or the command failed in the guest.
    #[error("guest agent: {0}")]
    GuestAgent(String),
    #[error("nginx configuration rejected: {0}")]
    NginxInvalid(String),
    #[error("nginx reload failed: {0}")]
    NginxReload(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// This reconciler's leader term is over (another took the lease): it
    /// must not change any hypervisor (see [`fenced`]).
    #[error("refused: this reconciler's leader term is over")]
    Deposed,
    /// The off-host backup store failed (after its retries).
    #[error("backup store: {0}")]
    Store(String),
    #[error("{0}")]
    Other(String),
}

pub type DriverResult<T> = Result<T, DriverError>;

/// Creates `dir` readable by root only (quarantine holds tenants' disks).
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// What hostd's marker in a domain's `<metadata>` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub instance: String,
    /// The installation that wrote it (absent in markers written before
    /// installation ids existed: adoptable, never garbage-collected).
    pub installation: Option<uuid::Uuid>,
    pub hosting_id: HostingId,
    pub generation: i64,
    pub spec_hash: String,
}

/// A domain as observed in libvirt (domains carrying this instance's marker,
/// of any installation: the caller tells its own from foreign ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDomain {
    pub name: String,
    pub marker: Marker,
    pub running: bool,
}

/// A running domain's counters (since it started) and gauges, as the
/// hypervisor reports them; `None` where it cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainStats {
    /// CPU time used, all vCPUs, nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory the guest holds on the host (resident, else its balloon).
    pub memory_bytes: u64,
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
    /// Host storage the system disk's image occupies.
    pub disk_allocation_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// What the host offers guests, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostResources {
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// Active CPUs.
    pub cpus: u32,
    /// Free space in hostd's storage pool, bytes.
    pub disk_available_bytes: u64,
}

/// How a migration's streams (memory and disk copy) reach the target's QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationVia {
    /// UNIX sockets in this directory, which both nodes see (nodes on one
    /// machine). Guest isolation does not apply to them.
    Unix(std::path::PathBuf),
    /// TCP to the target's address (libvirt's migration ports). QEMU makes
    /// these connections as the guests' user, which guest isolation refuses
    /// towards local and private addresses.
    Tcp(std::net::IpAddr),
}

/// A volume to create in hostd's storage pool.
#[derive(Debug, Clone)]
pub enum VolumeSource {
    /// A qcow2 overlay of `capacity_gib` backed by a base image file.
    Overlay {
        backing: std::path::PathBuf,
        backing_format: String,
        capacity_gib: crate::domain::DiskGib,
    },
    /// A raw volume holding exactly these bytes (cloud-init seed ISO).
    Bytes(Vec<u8>),
}

/// The hypervisor: domains and the storage pool hostd owns.
#[async_trait]
pub trait VmDriver: Send + Sync + 'static {
    /// A cheap liveness check; returns a description (e.g. the hypervisor version).
    async fn ping(&self) -> DriverResult<String>;
    /// Creates (or starts) hostd's storage pool; idempotent.
    async fn ensure_storage_pool(&self) -> DriverResult<()>;
    /// The host's memory and CPUs and the pool's free space.
    async fn resources(&self) -> DriverResult<HostResources>;
    /// Name of the storage pool (for domain XML).
    fn storage_pool_name(&self) -> &str;
    /// All domains carrying this instance's marker.
    async fn list_domains(&self) -> DriverResult<Vec<ObservedDomain>>;
    /// The counters of each named domain that runs now (names of this
    /// instance's domains, from a listing); others are left out.
    async fn domain_stats(&self, names: Vec<String>) -> DriverResult<Vec<(String, DomainStats)>>;
    /// Names of domains that changed (any domain of the hypervisor: defined,
    /// undefined, started, stopped, metadata changed), as the hypervisor
    /// reports them; `None` when it reports nothing and only listings tell.
    fn domain_changes(&self) -> Option<std::sync::Arc<domain_events::DomainChanges>> {
        None
    }
    /// Makes the next [`VmDriver::list_domains`] list every domain, where a
    /// driver otherwise serves listings from what events told it (what the
    /// periodic relist costs, for benchmarks).
    fn expire_listing(&self) {}
    /// One domain by name, if it exists and carries this instance's marker.
    async fn get_domain(&self, name: &str) -> DriverResult<Option<ObservedDomain>>;
    /// Names of all volumes in hostd's pool.
    async fn list_volumes(&self) -> DriverResult<Vec<String>>;
    /// Whether one volume exists in hostd's pool.
    async fn volume_exists(&self, name: &str) -> DriverResult<bool>;
    /// Creates a volume unless one of that name exists; `true` if it was created.
    async fn create_volume(&self, name: &str, source: VolumeSource) -> DriverResult<bool>;
    /// Replaces a raw volume's contents (seed regeneration).
    async fn replace_volume_bytes(&self, name: &str, bytes: Vec<u8>) -> DriverResult<()>;
    /// Moves a volume's file out of the pool to `to` (same filesystem, a
    /// path that must not exist), where it is kept rather than deleted;
    /// `None` if there was nothing to move (absent, or a simulated volume
    /// without a file).
    async fn quarantine_volume(
        &self,
        name: &str,
        to: &std::path::Path,
    ) -> DriverResult<Option<std::path::PathBuf>>;
    /// A crash-consistent image of a domain's disk volume, for a backup.
    /// While the domain runs, libvirt's backup job (push mode) writes a qcow2
    /// copy to `staging` and the guest keeps running (a backup job an
    /// earlier, crashed hostd left running is aborted first): only what
    /// changed since checkpoint `checkpoints.since` when it can (an
    /// incremental), else everything; checkpoint `checkpoints.create` is
    /// made as the copy starts, and other hostd checkpoints are deleted.
    /// While it is stopped (or undefined), nothing writes the volume, so its
    /// own file is the (full) image and no checkpoint is made.
    async fn disk_image(
        &self,
        domain: &str,
        volume: &str,
        staging: &std::path::Path,
        checkpoints: &Checkpoints,
    ) -> DriverResult<DiskImage>;
    /// Forgets the domain's checkpoints (libvirt's records only): its disk
    /// is being replaced, so their bitmaps are not in the new one. Absent
    /// domain is fine.
    async fn forget_checkpoints(&self, domain: &str) -> DriverResult<()>;
    /// Makes `name` a volume holding the qcow2 image file `from` (moved into
    /// the pool, so `from` must be on the pool's filesystem). The volume must
    /// not exist.
    async fn restore_volume(&self, name: &str, from: &std::path::Path) -> DriverResult<()>;
    /// Deletes a volume; absent is fine.
    async fn delete_volume(&self, name: &str) -> DriverResult<()>;
    /// Defines (or redefines) a domain from XML that carries the marker.
    async fn define(&self, xml: &str) -> DriverResult<()>;
    /// Starts a defined domain; already running is fine.
    async fn start(&self, name: &str) -> DriverResult<()>;
    /// Asks the guest to shut down (ACPI); stopped already is fine.
    async fn shutdown(&self, name: &str) -> DriverResult<()>;
    /// Forces a domain off; absent or stopped is fine. Refuses unmarked domains.
    async fn destroy(&self, name: &str) -> DriverResult<()>;
    /// Removes a domain definition; absent is fine. Refuses unmarked domains.
    async fn undefine(&self, name: &str) -> DriverResult<()>;
    /// Whether this hypervisor can save a running guest's memory to a file
    /// and start clones from it (QEMU; not libvirt's test driver).
    fn clones_supported(&self) -> bool {
        false
    }
    /// This driver as `Any` (to reach the other node's connection in a migration).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// Moves domain `name` to `target`'s hypervisor: a live migration with
    /// its writable disk copied into `target`'s pool (a stopped guest is
    /// started paused for the copy, never running, and stopped there), the
    /// definition persisted there as `xml` and removed here. The streams go
    /// `via` a socket directory both nodes see, or the target's address.
    /// An unfinished job is aborted after `timeout`; on any error the guest
    /// is left here as it was.
    async fn migrate(
        &self,
        name: &str,
        target: &dyn VmDriver,
        xml: &str,
        via: &MigrationVia,
        timeout: std::time::Duration,
    ) -> DriverResult<()> {
        let _ = (name, target, xml, via, timeout);
        Err(DriverError::Other(
            "this hypervisor cannot migrate guests".into(),
        ))
    }
    /// The file of a volume in hostd's pool.
    async fn volume_path(&self, name: &str) -> DriverResult<std::path::PathBuf>;
    /// Captures a template: starts the transient domain `xml` (named `name`;
    /// a leftover of that name is removed first), waits up to `boot_timeout`
    /// for its guest to have booted (guest agent), freezes its filesystems,
    /// writes its memory to `memory` (a file QEMU creates; its directory is
    /// made writable for QEMU's user and the file read-only afterwards) and
    /// stops it. Its disk is left as of the freeze.
    async fn capture_template(
        &self,
        name: &str,
        xml: &str,
        memory: &std::path::Path,
        boot_timeout: std::time::Duration,
    ) -> DriverResult<Captured> {
        let _ = (name, xml, memory, boot_timeout);
        Err(DriverError::Other(
            "this hypervisor cannot save a guest's memory".into(),
        ))
    }
    /// Removes a template's domain, if one is left (a crashed capture's).
    async fn remove_template_domain(&self, name: &str) -> DriverResult<()> {
        let _ = name;
        Ok(())
    }
    /// Starts the defined, stopped domain `name` from `xml` (its definition
    /// plus `-incoming` of a template's memory file) for this run only (the
    /// persistent definition stays), then thaws the guest's filesystems,
    /// within `timeout`. On an error the domain is stopped.
    async fn restore_clone(
        &self,
        name: &str,
        xml: &str,
        timeout: std::time::Duration,
    ) -> DriverResult<()> {
        let _ = (name, xml, timeout);
        Err(DriverError::Other(
            "this hypervisor cannot start clones".into(),
        ))
    }
    /// Runs `path args…` as root inside a running guest through the QEMU
    /// guest agent (a virtio-serial channel: no network to the guest) and
    /// waits up to `timeout` for it to exit. A non-zero exit is an error
    /// carrying its output. Only guests of images with `guest_agent` have
    /// the channel; libvirt's test driver has no agent and always errs.
    async fn guest_exec(
        &self,
        name: &str,
        path: &str,
        args: &[&str],
        timeout: std::time::Duration,
    ) -> DriverResult<String>;
}

/// What capturing a template took (see `VmDriver::capture_template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured {
    /// From creating the domain to a booted guest.
    pub boot: std::time::Duration,
    /// Freezing the filesystems and writing the memory file.
    pub save: std::time::Duration,
    pub memory_bytes: u64,
}

/// The checkpoints a backup job works with (see `VmDriver::disk_image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoints {
    /// The checkpoint to make as the copy starts.
    pub create: String,
    /// Copy only what changed since this checkpoint, if it still exists.
    pub since: Option<String>,
}

/// A disk image to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    pub path: std::path::PathBuf,
    /// `Some(c)`: holds only the clusters written since checkpoint `c`
    /// (the others unallocated); `None`: the whole disk.
    pub since: Option<String>,
    /// Whether `Checkpoints::create` was made (the guest was running).
    pub checkpoint: bool,
}

/// A hosting's desired route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub hosting_id: HostingId,
    pub user_id: crate::domain::UserId,
    /// `Some(port)`: proxy to the guest; `None`: serve the "stopped" 503 page.
    pub http_port: Option<u16>,
    /// Where that port is forwarded: the hosting's node's address.
    pub upstream_host: crate::domain::NodeAddress,
    /// Host names routed to it as well: the tenant's own name under
    /// `HOSTD_SITES_DOMAIN`, then its verified custom domains.
    pub hosts: Vec<String>,
    /// Send `Strict-Transport-Security` on `hosts` over HTTPS (the hosting's opt-in).
    pub hsts: bool,
}

/// The HTTP front proxy (host nginx).
/// Where a submitted route change stands.
#[derive(Debug)]
pub enum RouteOutcome {
    /// Waiting for, or in, a batch.
    Pending,
    /// Validated and served (nginx reloaded with it).
    Applied,
    /// Rejected or not reloaded; the change was rolled back.
    Failed(DriverError),
}

#[async_trait]
pub trait ProxyDriver: Send + Sync + 'static {
    /// The exact file content hostd wants for this route.
    fn render(&self, route: &RouteSpec) -> String;
    /// Every route present: hosting id → its entry. Files in the routes
    /// directory that are not hostd's (and the map file itself, when it
    /// holds text that is no hosting's entry) are reported by name in the
    /// second list.
    async fn list_routes(&self) -> DriverResult<(Vec<(HostingId, String)>, Vec<String>)>;
    /// Whether the routes on disk are newer than what the proxy serves (the
    /// last reload failed); the next `apply` retries the reload.
    fn reload_pending(&self) -> bool;
    /// The current entry of one hosting's route, if present.
    async fn read_route(&self, id: HostingId) -> DriverResult<Option<String>>;
    /// Makes the route of `id` be `route` (or absent with `None`), validated and
    /// reloaded; batched with concurrent calls. On a validation failure the
    /// change is rolled back and the last good config keeps serving.
    async fn apply(&self, id: HostingId, route: Option<RouteSpec>) -> DriverResult<()>;
    /// Queues a route change without waiting for it: the batcher applies it
    /// with everything else pending (one validation, one reload), then calls
    /// `done`. [`ProxyDriver::outcome`] tells what became of it.
    fn submit(&self, id: HostingId, route: Option<RouteSpec>, done: Box<dyn FnOnce() + Send>);
    /// What became of the last change submitted for `id`, if its content is
    /// `content` (`None`: no such change is known).
    fn outcome(&self, id: HostingId, content: Option<&str>) -> Option<RouteOutcome>;
    /// Forgets what was submitted for `id` (after a failure was reported, or
    /// when the hosting is gone).
    fn forget(&self, id: HostingId);
    /// Removes a stray file from the routes directory (not a hostd route).
    async fn remove_stray(&self, file_name: &str) -> DriverResult<()>;
    /// Whether nginx is running and its config valid.
    async fn health(&self) -> DriverResult<String>;
    /// Makes the TLS map (host name → certificate file, see
    /// `tls_files`) be `content`: written, validated and reloaded when it
    /// changed (`Ok(true)`); on a rejection the previous map is restored.
    async fn apply_tls_map(&self, content: &str) -> DriverResult<bool>;
}
