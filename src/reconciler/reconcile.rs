//! One reconcile of one hosting: read desired state, observe actual state,
//! take the next steps, write status. Level-triggered and idempotent: every
//! step checks before it acts, so a pass interrupted anywhere (error, crash)
//! is completed or undone by the next one. Deletion is convergence to absent.

use std::net::SocketAddr;
use std::time::Duration;

use askama::Template;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::faults::InjectedFault;
use super::metrics::Metrics;
use super::Context;
use crate::domain::{Condition, EventType, HostingId, Phase};
use crate::drivers::seed::{build_iso, SeedFiles};
use crate::drivers::{probe, DriverError, RouteSpec, VolumeSource};
use crate::images::{ImageEntry, ImageError};
use crate::store::{HostingRecord, StoreError};
use crate::templates::{
    yaml_quote, DomainXml, MetaData, NetworkConfig, NftablesConf, SshdConf, UserData, WelcomeHtml,
    MARKER_NS,
};

/// What the controller should do after a successful reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Converged; wait for a change or the next resync.
    AwaitChange,
    /// Not converged yet (e.g. waiting for the guest to boot): look again later.
    Requeue(Duration),
    /// The hosting is gone (finalizer complete, or never existed).
    Gone,
}

/// Why a reconcile failed. Stored as condition reason/message and a Warning event.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Fault(#[from] InjectedFault),
    #[error("guest not ready after {0:?}: {1}")]
    ReadinessTimeout(Duration, String),
}

impl ReconcileError {
    /// A CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Store(StoreError::PortsExhausted(_)) => "PortsExhausted",
            ReconcileError::Store(_) => "DatabaseError",
            ReconcileError::Driver(DriverError::NginxInvalid(_)) => "RouteRejected",
            ReconcileError::Driver(DriverError::NginxReload(_)) => "NginxReloadFailed",
            ReconcileError::Driver(DriverError::Connection(_)) => "LibvirtUnavailable",
            ReconcileError::Driver(_) => "DriverError",
            ReconcileError::Image(_) => "ImageUnavailable",
            ReconcileError::Fault(_) => "InjectedFault",
            ReconcileError::ReadinessTimeout(..) => "ReadinessTimeout",
        }
    }
}

/// Names of a hosting's libvirt objects.
pub fn domain_name(id: HostingId) -> String {
    format!("hostd-{id}")
}
pub fn disk_volume(id: HostingId) -> String {
    format!("hostd-{id}-disk.qcow2")
}
pub fn seed_volume(id: HostingId) -> String {
    format!("hostd-{id}-seed.iso")
}

/// Parses a volume name back to its hosting (for orphan collection).
pub fn volume_owner(name: &str) -> Option<HostingId> {
    let rest = name.strip_prefix("hostd-")?;
    let (id, suffix) = rest.split_at(rest.len().min(36));
    if suffix != "-disk.qcow2" && suffix != "-seed.iso" {
        return None;
    }
    uuid::Uuid::parse_str(id).ok().map(HostingId)
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..8])
}

/// Hash of everything that shapes the domain definition (a change needs a
/// restart) and of everything in the seed (takes effect at next boot).
pub fn desired_hashes(
    ctx: &Context,
    rec: &HostingRecord,
    image: &ImageEntry,
    ssh: u16,
    http: u16,
) -> (String, String) {
    let dom = format!(
        "{}|{}|{}|{}|{}|{:?}|{}|{:?}|{:?}|{:?}|{}|{}|{}|{}",
        include_str!("../../templates/domain.xml").len(),
        ctx.config.domain_type.as_str(),
        rec.spec.vcpus,
        rec.spec.memory_mib,
        rec.spec.disk_gib,
        image.disk,
        image.format,
        image.kernel,
        image.initrd,
        image.cmdline,
        ctx.config.ssh_bind,
        ssh,
        http,
        ctx.vm.pool_name(),
    );
    let keys: Vec<&str> = rec
        .spec
        .ssh_public_keys
        .iter()
        .map(|k| k.as_str())
        .collect();
    let seed = format!(
        "{}|{}|{}|{}|{}|{}",
        short_hash(include_str!("../../templates/user-data.yaml")),
        rec.username.as_str(),
        keys.join("\n"),
        ctx.config.public_url,
        ssh,
        short_hash(include_str!("../../templates/welcome.html")),
    );
    (short_hash(&dom), short_hash(&seed))
}

/// The marker's spec-hash attribute: `<domain hash>-<seed hash>`.
pub fn marker_hash(dom: &str, seed: &str) -> String {
    format!("{dom}-{seed}")
}

fn split_marker_hash(h: &str) -> (&str, &str) {
    h.split_once('-').unwrap_or((h, ""))
}

/// Sets a condition, keeping its transition time when its status is unchanged.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let status_s = if status { "True" } else { "False" };
    let now = Utc::now();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status_s {
                c.last_transition_time = now;
            }
            c.status = status_s.into();
            c.reason = reason.into();
            c.message = message.into();
        }
        None => conds.push(Condition {
            type_: type_.into(),
            status: status_s.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now,
        }),
    }
}

fn remove_condition(conds: &mut Vec<Condition>, type_: &str) {
    conds.retain(|c| c.type_ != type_);
}

fn ssh_probe_addr(ctx: &Context, port: u16) -> SocketAddr {
    let ip = if ctx.config.ssh_bind.is_unspecified() {
        "127.0.0.1".parse().unwrap()
    } else {
        ctx.config.ssh_bind
    };
    SocketAddr::new(ip, port)
}

/// The public access info shown to users and on the welcome page.
pub fn ssh_command(public_host: &str, port: u16) -> String {
    format!("ssh -p {port} ubuntu@{public_host}")
}

pub fn web_url(public_url: &str, user_id: crate::domain::UserId) -> String {
    format!("{public_url}/{user_id}/")
}

/// Renders the cloud-init seed files of a hosting.
pub fn render_seed(ctx: &Context, rec: &HostingRecord, ssh: u16) -> SeedFiles {
    let host = ctx.config.public_host().to_string();
    let cmd = ssh_command(&host, ssh);
    let url = web_url(&ctx.config.public_url, rec.user_id);
    let welcome = WelcomeHtml {
        username: rec.username.as_str(),
        ssh_command: &cmd,
        web_url: &url,
        ssh_port: ssh,
        ssh_host: &host,
    }
    .render()
    .expect("welcome template renders");
    let keys: Vec<String> = rec
        .spec
        .ssh_public_keys
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    let user_data = UserData {
        hosting_id: rec.id.to_string(),
        hostname: yaml_quote(&rec.username.hostname()),
        gecos: yaml_quote(&format!("hostd user {}", rec.username.as_str())),
        ssh_keys: keys.iter().map(|k| yaml_quote(k)).collect(),
        sshd_config: yaml_quote(&SshdConf.render().expect("sshd template")),
        nftables: yaml_quote(&NftablesConf.render().expect("nft template")),
        welcome_html: yaml_quote(&welcome),
    }
    .render()
    .expect("user-data template renders");
    let meta_data = MetaData {
        instance_id: yaml_quote(&format!("hostd-{}", rec.id)),
        hostname: yaml_quote(&rec.username.hostname()),
    }
    .render()
    .expect("meta-data template renders");
    let mut authorized_keys = keys.join("\n");
    authorized_keys.push('\n');
    SeedFiles {
        user_data,
        meta_data,
        network_config: NetworkConfig.render().expect("network template"),
        authorized_keys,
    }
}

/// Renders the domain XML of a hosting.
pub fn render_domain(
    ctx: &Context,
    rec: &HostingRecord,
    image: &ImageEntry,
    ssh: u16,
    http: u16,
    hash: &str,
) -> String {
    let name = domain_name(rec.id);
    let (disk, seed) = (disk_volume(rec.id), seed_volume(rec.id));
    let console_log = ctx
        .config
        .state_dir
        .join("console")
        .join(format!("{name}.log"));
    DomainXml {
        domain_type: ctx.config.domain_type.as_str(),
        name: &name,
        ns: MARKER_NS,
        instance: &ctx.config.instance,
        hosting_id: rec.id.to_string(),
        generation: rec.generation,
        spec_hash: hash,
        memory_mib: rec.spec.memory_mib,
        vcpus: rec.spec.vcpus,
        kernel: image.kernel.as_ref().map(|p| p.display().to_string()),
        initrd: image.initrd.as_ref().map(|p| p.display().to_string()),
        cmdline: image.cmdline.clone(),
        pool: ctx.vm.pool_name(),
        disk_volume: &disk,
        seed_volume: &seed,
        ssh_bind: ctx.config.ssh_bind.to_string(),
        ssh_port: ssh,
        http_port: http,
        console_log: console_log.display().to_string(),
    }
    .render()
    .expect("domain template renders")
}

async fn event(
    ctx: &Context,
    id: HostingId,
    t: EventType,
    reason: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    match t {
        EventType::Normal => tracing::info!(reason, message, "event"),
        EventType::Warning => tracing::warn!(reason, message, "event"),
    }
    ctx.store.add_event(id, t, reason, message).await?;
    Ok(())
}

async fn repair(
    ctx: &Context,
    id: HostingId,
    reason: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    Metrics::inc(&ctx.metrics.repairs);
    event(ctx, id, EventType::Warning, reason, message).await
}

/// Reconciles one hosting, inside a span carrying its id and generation.
pub async fn reconcile(ctx: &Context, id: HostingId) -> Result<Action, ReconcileError> {
    let Some(rec) = ctx.store.get_record(id).await? else {
        return Ok(Action::Gone);
    };
    let span = tracing::info_span!("reconcile", hosting = %id, generation = rec.generation);
    async move {
        if rec.deletion_requested_at.is_some() {
            finalize(ctx, &rec).await
        } else {
            apply(ctx, rec).await
        }
    }
    .instrument(span)
    .await
}

/// Converges an existing hosting towards its spec.
async fn apply(ctx: &Context, rec: HostingRecord) -> Result<Action, ReconcileError> {
    let id = rec.id;
    let mut st = rec.status.clone();
    let name = domain_name(id);

    // 1. Ports (allocated and recorded in one transaction).
    let (ssh, http) = match (st.ssh_port, st.http_port) {
        (Some(s), Some(h)) => (s, h),
        _ => {
            let (s, h) = ctx
                .store
                .allocate_ports(id, ctx.config.ssh_ports, ctx.config.http_ports)
                .await?;
            event(
                ctx,
                id,
                EventType::Normal,
                "PortsAllocated",
                &format!("SSH port {s}, HTTP port {h}"),
            )
            .await?;
            ctx.faults.hit("after_port_allocation").await?;
            (s, h)
        }
    };
    if st.phase == Phase::Pending {
        st.phase = Phase::Provisioning;
        event(
            ctx,
            id,
            EventType::Normal,
            "Provisioning",
            &format!(
                "provisioning a {} VM ({})",
                ctx.config.domain_type.as_str(),
                ctx.config.domain_type_reason
            ),
        )
        .await?;
    }

    // 2. Image and disk volume.
    // The image version is pinned when the disk is first created: a rebuilt
    // image must not change the kernel under an existing disk.
    let image = match &st.image_pin {
        Some(pin) => {
            pin.check(&rec.spec.image)?;
            pin.clone()
        }
        None => ctx.catalog.pin(&rec.spec.image)?,
    };
    let created = ctx
        .vm
        .create_volume(
            &disk_volume(id),
            VolumeSource::Overlay {
                backing: image.disk.clone(),
                backing_format: image.format.clone(),
                capacity_gib: rec.spec.disk_gib,
            },
        )
        .await?;
    if created {
        if st.disk_created {
            repair(
                ctx,
                id,
                "DiskRecreated",
                "the disk volume was missing and was recreated empty: the hosting's data was lost",
            )
            .await?;
        } else {
            event(
                ctx,
                id,
                EventType::Normal,
                "DiskCreated",
                &format!(
                    "{} GiB disk from image {}",
                    rec.spec.disk_gib,
                    rec.spec.image.as_str()
                ),
            )
            .await?;
        }
        ctx.faults.hit("after_disk_create").await?;
    }
    if !st.disk_created || st.image_pin.is_none() {
        st.disk_created = true;
        st.image_pin = Some(image.clone());
        ctx.store.write_status(id, &st).await?;
    }

    // 3. Seed and domain definition.
    let (dom_hash, seed_hash) = desired_hashes(ctx, &rec, &image, ssh, http);
    let hash = marker_hash(&dom_hash, &seed_hash);
    let observed = ctx.vm.get_domain(&name).await?;
    let seed_missing = !ctx.vm.volume_exists(&seed_volume(id)).await?;
    let (old_dom, old_seed) = observed
        .as_ref()
        .map(|o| split_marker_hash(&o.marker.spec_hash))
        .unwrap_or(("", ""));
    let mut restart_needed = false;
    if seed_missing || old_seed != seed_hash {
        let iso = build_iso(&render_seed(ctx, &rec, ssh)).await?;
        if !ctx
            .vm
            .create_volume(&seed_volume(id), VolumeSource::Bytes(iso.clone()))
            .await?
        {
            ctx.vm.replace_volume_bytes(&seed_volume(id), iso).await?;
        }
        if observed.is_some() && old_seed != seed_hash {
            event(
                ctx,
                id,
                EventType::Normal,
                "SeedUpdated",
                "cloud-init seed regenerated; SSH key changes take effect at the next boot",
            )
            .await?;
        }
        ctx.faults.hit("after_seed_upload").await?;
    }
    let needs_define = observed
        .as_ref()
        .map(|o| o.marker.spec_hash != hash)
        .unwrap_or(true);
    if needs_define {
        std::fs::create_dir_all(ctx.config.state_dir.join("console")).map_err(DriverError::from)?;
        let xml = render_domain(ctx, &rec, &image, ssh, http, &hash);
        ctx.vm.define(&xml).await?;
        match &observed {
            None if st.vm_name.is_some() => {
                repair(
                    ctx,
                    id,
                    "DomainRecreated",
                    "the domain was missing and was redefined on the existing disk",
                )
                .await?
            }
            None => {
                event(
                    ctx,
                    id,
                    EventType::Normal,
                    "Defined",
                    &format!("domain {name} defined"),
                )
                .await?
            }
            Some(o) => {
                if o.running && old_dom != dom_hash {
                    restart_needed = true;
                }
                event(
                    ctx,
                    id,
                    EventType::Normal,
                    "Redefined",
                    &format!("domain {name} redefined for generation {}", rec.generation),
                )
                .await?;
            }
        }
        ctx.faults.hit("after_define").await?;
    }
    st.vm_name = Some(name.clone());

    // 4. Power state and route.
    let running_now = observed.as_ref().map(|o| o.running).unwrap_or(false);
    if !rec.spec.running {
        return stop(ctx, &rec, st, running_now).await;
    }
    ctx.shutdowns.lock().unwrap().remove(&id);
    if restart_needed {
        set_condition(
            &mut st.conditions,
            "RestartRequired",
            true,
            "SpecChanged",
            "memory/vCPU change: restarting the VM",
        );
        st.phase = Phase::Updating;
        ctx.store.write_status(id, &st).await?;
        ctx.vm.destroy(&name).await?;
        event(
            ctx,
            id,
            EventType::Normal,
            "Restarting",
            "restarting the VM to apply the new memory/vCPU settings",
        )
        .await?;
    }
    if !running_now || restart_needed {
        ctx.vm.start(&name).await?;
        if observed.is_some() && !restart_needed && matches!(rec.status.phase, Phase::Ready) {
            repair(
                ctx,
                id,
                "DomainStarted",
                "the VM was found shut off while it should run; started it",
            )
            .await?;
        } else {
            event(
                ctx,
                id,
                EventType::Normal,
                "Started",
                &format!("domain {name} started"),
            )
            .await?;
        }
        if st.provisioning_since.is_none() || restart_needed {
            st.provisioning_since = Some(Utc::now());
        }
        ctx.faults.hit("after_start").await?;
    }
    remove_condition(&mut st.conditions, "RestartRequired");
    set_condition(
        &mut st.conditions,
        "VMRunning",
        true,
        "Running",
        &format!("domain {name} is running"),
    );
    ensure_route(ctx, &rec, Some(http)).await?;
    set_condition(
        &mut st.conditions,
        "RouteConfigured",
        true,
        "Configured",
        &format!("/{}/ proxied to 127.0.0.1:{http}", rec.user_id),
    );

    // 5. Readiness: through the host nginx, and the SSH banner.
    let url = format!("{}/{}/", ctx.config.probe_url, rec.user_id);
    let (web, sshb) = tokio::join!(
        probe::http_ok(&ctx.http, &url),
        probe::ssh_banner(ssh_probe_addr(ctx, ssh))
    );
    match (&web, &sshb) {
        (Ok(_), Ok(_)) => {
            set_condition(
                &mut st.conditions,
                "WebReady",
                true,
                "Serving",
                "site answers through nginx and SSH is up",
            );
            remove_condition(&mut st.conditions, "Reconciled");
            let was_ready = rec.status.phase == Phase::Ready
                && rec.status.observed_generation == rec.generation;
            st.phase = Phase::Ready;
            st.observed_generation = rec.generation;
            st.message = None;
            st.provisioning_since = None;
            ctx.faults.hit("before_status_write").await?;
            ctx.store.write_status(id, &st).await?;
            if !was_ready {
                event(
                    ctx,
                    id,
                    EventType::Normal,
                    "Ready",
                    &format!("site and SSH (port {ssh}) are up"),
                )
                .await?;
            }
            ctx.reset_backoff(id);
            Ok(Action::AwaitChange)
        }
        _ => {
            let why = [web.err(), sshb.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            set_condition(
                &mut st.conditions,
                "WebReady",
                false,
                "Booting",
                &format!("waiting for the guest: {why}"),
            );
            if st.phase != Phase::Updating {
                st.phase = Phase::Provisioning;
            }
            st.message = Some("waiting for the guest to boot".into());
            let since = *st.provisioning_since.get_or_insert_with(Utc::now);
            let waited = (Utc::now() - since).to_std().unwrap_or_default();
            if waited > ctx.config.ready_timeout {
                st.provisioning_since = Some(Utc::now());
                ctx.store.write_status(id, &st).await?;
                return Err(ReconcileError::ReadinessTimeout(
                    ctx.config.ready_timeout,
                    why,
                ));
            }
            ctx.faults.hit("before_status_write").await?;
            ctx.store.write_status(id, &st).await?;
            ctx.reset_backoff(id);
            Ok(Action::Requeue(Duration::from_secs(2)))
        }
    }
}

/// Desired `running: false`: graceful shutdown (forced after 60 s), 503 route.
async fn stop(
    ctx: &Context,
    rec: &HostingRecord,
    mut st: crate::store::Status,
    running_now: bool,
) -> Result<Action, ReconcileError> {
    let id = rec.id;
    let name = domain_name(id);
    ensure_route(ctx, rec, None).await?;
    set_condition(
        &mut st.conditions,
        "RouteConfigured",
        true,
        "Stopped",
        "route answers 503 while the VM is stopped",
    );
    if running_now {
        let asked = *ctx
            .shutdowns
            .lock()
            .unwrap()
            .get(&id)
            .unwrap_or(&tokio::time::Instant::now());
        if !ctx.shutdowns.lock().unwrap().contains_key(&id) {
            ctx.vm.shutdown(&name).await?;
            ctx.shutdowns.lock().unwrap().insert(id, asked);
            event(
                ctx,
                id,
                EventType::Normal,
                "Stopping",
                "asked the guest to shut down",
            )
            .await?;
        } else if asked.elapsed() > Duration::from_secs(60) {
            ctx.vm.destroy(&name).await?;
            event(
                ctx,
                id,
                EventType::Warning,
                "ForcedOff",
                "the guest did not shut down within 60 s; powered it off",
            )
            .await?;
        }
        if ctx
            .vm
            .get_domain(&name)
            .await?
            .map(|d| d.running)
            .unwrap_or(false)
        {
            set_condition(
                &mut st.conditions,
                "VMRunning",
                true,
                "ShuttingDown",
                "waiting for the guest to shut down",
            );
            ctx.store.write_status(id, &st).await?;
            return Ok(Action::Requeue(Duration::from_secs(2)));
        }
    }
    ctx.shutdowns.lock().unwrap().remove(&id);
    set_condition(
        &mut st.conditions,
        "VMRunning",
        false,
        "Stopped",
        "the VM is stopped as requested",
    );
    set_condition(
        &mut st.conditions,
        "WebReady",
        false,
        "Stopped",
        "the VM is stopped",
    );
    remove_condition(&mut st.conditions, "Reconciled");
    let was = rec.status.phase;
    st.phase = Phase::Stopped;
    st.observed_generation = rec.generation;
    st.message = None;
    st.provisioning_since = None;
    ctx.faults.hit("before_status_write").await?;
    ctx.store.write_status(id, &st).await?;
    if was != Phase::Stopped {
        event(ctx, id, EventType::Normal, "Stopped", "the VM is stopped").await?;
    }
    ctx.reset_backoff(id);
    Ok(Action::AwaitChange)
}

/// Makes the route file match; repairs hand edits, with an event.
async fn ensure_route(
    ctx: &Context,
    rec: &HostingRecord,
    http: Option<u16>,
) -> Result<(), ReconcileError> {
    let spec = RouteSpec {
        hosting_id: rec.id,
        user_id: rec.user_id,
        http_port: http,
    };
    let want = ctx.proxy.render(&spec);
    let have = ctx.proxy.read_route(rec.id).await?;
    if have.as_deref() == Some(want.as_str()) {
        if ctx.proxy.reload_pending() {
            // Content right but not yet served: the batcher retries the reload.
            ctx.proxy.apply(rec.id, Some(spec)).await?;
        }
        return Ok(());
    }
    ctx.faults.hit("before_route_write").await?;
    ctx.proxy.apply(rec.id, Some(spec)).await?;
    ctx.faults.hit("after_route_write").await?;
    let was_configured = rec
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "RouteConfigured" && c.status == "True");
    match have {
        Some(_) if was_configured => {
            repair(
                ctx,
                rec.id,
                "RouteRepaired",
                "the route file had been changed by hand; rewrote it",
            )
            .await?
        }
        None if was_configured && rec.status.phase == Phase::Ready => {
            repair(
                ctx,
                rec.id,
                "RouteRepaired",
                "the route file was missing; rewrote it",
            )
            .await?
        }
        _ => {
            event(
                ctx,
                rec.id,
                EventType::Normal,
                "RouteConfigured",
                &format!("/{}/ routed", rec.user_id),
            )
            .await?
        }
    }
    Ok(())
}

/// The finalizer: route → reload → domain → volumes → ports → row. Every step
/// is idempotent, so it works whatever state apply left behind.
async fn finalize(ctx: &Context, rec: &HostingRecord) -> Result<Action, ReconcileError> {
    let id = rec.id;
    let name = domain_name(id);
    if rec.status.phase != Phase::Deleting {
        let mut st = rec.status.clone();
        st.phase = Phase::Deleting;
        st.message = Some("cleaning up".into());
        ctx.store.write_status(id, &st).await?;
    }
    ctx.proxy.apply(id, None).await?;
    ctx.faults.hit("after_route_remove").await?;
    ctx.vm.destroy(&name).await?;
    ctx.faults.hit("after_domain_destroy").await?;
    ctx.vm.undefine(&name).await?;
    ctx.faults.hit("after_domain_undefine").await?;
    ctx.vm.delete_volume(&disk_volume(id)).await?;
    ctx.vm.delete_volume(&seed_volume(id)).await?;
    ctx.faults.hit("after_volume_delete").await?;
    ctx.store.release_ports(id).await?;
    ctx.faults.hit("after_release_ports").await?;
    ctx.store.delete_hosting(id).await?;
    let _ = std::fs::remove_file(
        ctx.config
            .state_dir
            .join("console")
            .join(format!("{name}.log")),
    );
    ctx.shutdowns.lock().unwrap().remove(&id);
    ctx.reset_backoff(id);
    tracing::info!("hosting deleted; all resources released");
    Ok(Action::Gone)
}

/// The error policy: record the error on the hosting (condition + Warning
/// event), mark it Failed after repeated failures, and return the backoff delay.
pub async fn on_error(ctx: &Context, id: HostingId, err: &ReconcileError) -> Duration {
    let (delay, failures) = ctx.error_policy(id);
    tracing::warn!(hosting = %id, error = %err, failures, retry_in = ?delay, "reconcile failed");
    let msg = format!(
        "{err} (attempt {failures}, retrying in {:.1}s)",
        delay.as_secs_f64()
    );
    if let Ok(Some(rec)) = ctx.store.get_record(id).await {
        let mut st = rec.status.clone();
        set_condition(
            &mut st.conditions,
            "Reconciled",
            false,
            err.reason(),
            &err.to_string(),
        );
        st.message = Some(msg.clone());
        if failures >= 5 && rec.deletion_requested_at.is_none() {
            st.phase = Phase::Failed;
        }
        let _ = ctx.store.write_status(id, &st).await;
        let _ = ctx
            .store
            .add_event(id, EventType::Warning, err.reason(), &msg)
            .await;
    }
    delay
}
