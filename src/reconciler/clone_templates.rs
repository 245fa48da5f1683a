//! Templates for clones: a generic guest of the default size booted once,
//! its filesystems frozen and its memory saved to a file, so that a new
//! hosting starts as a clone of it (its own qcow2 overlay on the template's
//! frozen disk, its own domain started from the memory file) in seconds
//! instead of a cold boot (see `steps::power` and `steps::seed`).
//!
//! A template is desired state derived from settings: its hash covers the
//! rendered template domain XML and seed, the image version's files and
//! [`FORMAT`], so any change to them means a new template, built beside the
//! old one; nothing is recorded in Postgres. Its actual state is files: the
//! pool volumes `hostd-tpl-<hash>-<build>-disk.qcow2` and `-seed.iso` (named
//! per build, so a rebuild under the same hash never reuses a disk that
//! clones are overlays of), and
//! `<state>/templates/<instance>/<hash>/` holding `memory.bin` and `template.json`
//! (written last: a template without it is incomplete and never serves a
//! clone). One template is built at a time, off the workers, only when no
//! guest boots or waits and the host has room for one more guest. A build
//! that fails is retried after [`RETRY_AFTER`]; a build a crash interrupted
//! is removed (domain, directory; its volumes with the unused ones) at the
//! next maintenance. Superseded templates lose their memory file and
//! directory at once. A template volume no template names is deleted, a disk
//! only once no hosting's disk and no quarantined disk is an overlay of it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::render::{Inputs, TemplateNames};
use super::{Context, ReconcileError};
use crate::domain::{HostingId, HostingSpec, UserId, Username};
use crate::drivers::{VmDriver, VolumeSource};
use crate::images::ImageEntry;

/// Bumped when what a template must hold changes (its hash covers it).
pub const FORMAT: &str = "1";
/// How long a failed build waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(600);
/// How long a template's guest may take to boot.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Clones started at once: each reads the memory file (from the page cache
/// after the first) and then runs; measured with `scripts/bench-clone.sh`,
/// ten at once answered within 8.3 s on two cores.
pub const RESTORES_AT_ONCE: usize = 8;

/// A built template, as `template.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub hash: String,
    pub image: String,
    /// The image version's base disk the template's disk is an overlay of.
    pub image_disk: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub disk_gib: u32,
    /// The pool volume holding the frozen disk (named per build: a template
    /// rebuilt under the same hash never reuses a disk a clone may need).
    pub disk_volume: String,
    /// The pool volume of the template's seed.
    #[serde(default)]
    pub seed_volume: String,
    /// Its file (a clone's overlay names it as backing file).
    pub disk_file: PathBuf,
    pub memory_file: PathBuf,
    pub memory_bytes: u64,
    pub boot_seconds: f64,
    pub save_seconds: f64,
    pub built_at: chrono::DateTime<chrono::Utc>,
}

impl TemplateInfo {
    /// Whether a hosting of `spec` on image version `image` can be its clone.
    pub fn fits(&self, spec: &HostingSpec, image: &ImageEntry) -> bool {
        self.image == spec.image.as_str()
            && self.image_disk == image.disk
            && self.memory_mib == spec.memory_mib.get()
            && self.vcpus == spec.vcpus.get()
            && self.disk_gib == spec.disk_gib.get()
    }
}

/// The template the settings ask for.
#[derive(Debug, Clone)]
struct Desired {
    hash: String,
    class: HostingSpec,
    image: ImageEntry,
}

#[derive(Default)]
struct State {
    /// The template being built: its hash and names.
    building: Option<(String, TemplateNames)>,
    /// The last failed build: its hash, why, when.
    failed: Option<(String, String, Instant)>,
    /// The ready template last read (hash → info).
    ready: Option<TemplateInfo>,
}

/// The templates of one reconciler.
pub struct Templates {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    /// Clones being started (see [`RESTORES_AT_ONCE`]).
    pub restores: Arc<tokio::sync::Semaphore>,
}

/// A template directory as `hostd doctor` and `health/detailed` list it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateStatus {
    pub hash: String,
    /// `false`: being built, or a build a crash interrupted (removed by the
    /// reconciler's next maintenance).
    pub complete: bool,
    #[serde(flatten)]
    pub info: Option<TemplateInfo>,
    /// The frozen disk's file size (what the template adds to every clone's
    /// chain; its clones' own writes are in their overlays).
    pub disk_bytes: Option<u64>,
}

/// Where instance `instance` keeps its templates' memory files and records
/// (each instance its own: a second hostd on the host never touches them).
pub fn dir(state_dir: &Path, instance: &str) -> PathBuf {
    state_dir.join("templates").join(instance)
}

/// Every template directory of `instance`, from its files.
pub fn on_disk_status(state_dir: &Path, instance: &str) -> Vec<TemplateStatus> {
    on_disk(&dir(state_dir, instance))
        .into_iter()
        .map(|(hash, info)| TemplateStatus {
            disk_bytes: info
                .as_ref()
                .and_then(|i| std::fs::metadata(&i.disk_file).ok())
                .map(|m| m.len()),
            complete: info.is_some(),
            hash,
            info,
        })
        .collect()
}

impl Templates {
    pub fn new(state_dir: &Path, instance: &str) -> Templates {
        Templates {
            dir: dir(state_dir, instance),
            state: Default::default(),
            restores: Arc::new(tokio::sync::Semaphore::new(RESTORES_AT_ONCE)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ready template a new hosting of `spec` on `image` can be cloned
    /// from, if any.
    pub fn for_hosting(
        &self,
        ctx: &Context,
        spec: &HostingSpec,
        image: &ImageEntry,
    ) -> Option<TemplateInfo> {
        let d = desired(ctx)?;
        let t = self.ready(&d.hash)?;
        t.fits(spec, image).then_some(t)
    }

    /// The ready template of `hash` (any, not only the desired one: a clone
    /// mid-start keeps its template), if its files are complete.
    pub fn ready(&self, hash: &str) -> Option<TemplateInfo> {
        if let Some(t) = self.lock().ready.as_ref().filter(|t| t.hash == hash) {
            if t.memory_file.exists() && t.disk_file.exists() {
                return Some(t.clone());
            }
        }
        let t = read_info(&self.dir.join(hash))?;
        if !(t.memory_file.exists() && t.disk_file.exists()) {
            return None;
        }
        self.lock().ready = Some(t.clone());
        Some(t)
    }

    /// Whether a template is wanted but not ready yet (being built, or
    /// about to be): the warm pool waits for it, so its guests are clones.
    pub fn pending(&self, ctx: &Context) -> bool {
        let Some(d) = desired(ctx) else { return false };
        let failed = self.lock().failed.as_ref().is_some_and(|f| f.0 == d.hash);
        self.ready(&d.hash).is_none() && !failed
    }
}

/// The template directories under `dir`: hash → its record (None: incomplete).
fn on_disk(dir: &Path) -> Vec<(String, Option<TemplateInfo>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            is_hash(&name).then(|| (name, read_info(&e.path())))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn is_hash(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn read_info(dir: &Path) -> Option<TemplateInfo> {
    let bytes = std::fs::read(dir.join("template.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The names of a template's libvirt objects: the domain by its hash, the
/// volumes by hash and `build` (random per build).
pub fn names(hash: &str, build: &str) -> TemplateNames {
    let mut b = [0u8; 16];
    let raw = hex::decode(hash).unwrap_or_default();
    for (i, x) in raw.iter().take(8).enumerate() {
        b[i] = *x;
        b[15 - i] = x ^ 0x5a;
    }
    TemplateNames {
        name: format!("hostd-tpl-{hash}"),
        uuid: uuid::Builder::from_random_bytes(b).into_uuid(),
        disk: format!("hostd-tpl-{hash}-{build}-disk.qcow2"),
        seed: format!("hostd-tpl-{hash}-{build}-seed.iso"),
    }
}

/// The generic hosting a template of `class` is booted as.
fn inputs<'a>(
    class: &'a HostingSpec,
    image: &'a ImageEntry,
    user: &'a Username,
    ports: (u16, u16),
) -> Inputs<'a> {
    Inputs {
        id: HostingId(uuid::Uuid::nil()),
        user_id: UserId(uuid::Uuid::nil()),
        username: user,
        spec: class,
        image,
        ssh_port: ports.0,
        http_port: ports.1,
        from_warm_pool: false,
        address: crate::domain::NodeAddress::LOOPBACK,
        ssh_address: None,
    }
}

fn template_user() -> Username {
    Username::parse("template").expect("a valid username")
}

/// The template the settings ask for: the default size, when clones are on,
/// the hypervisor can and the image has the guest agent.
fn desired(ctx: &Context) -> Option<Desired> {
    if !ctx.config.clone_templates || !ctx.vm.clones_supported() {
        return None;
    }
    let class = HostingSpec::default();
    let image = ctx.catalog.pin(&class.image).ok()?;
    if !image.guest_agent {
        return None;
    }
    let user = template_user();
    let i = inputs(&class, &image, &user, (0, 0));
    let placeholder = names("0000000000000000", "0");
    let xml = ctx.render.template_xml(&i, &placeholder);
    let seed = crate::drivers::seed::build_iso(&ctx.render.seed(&i));
    let mut h = sha2::Sha256::new();
    use sha2::Digest;
    for part in [
        FORMAT.as_bytes(),
        xml.as_bytes(),
        &seed,
        image.disk.as_os_str().as_encoded_bytes(),
        ctx.installation.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let hash = hex::encode(&h.finalize()[..8]);
    Some(Desired { hash, class, image })
}

/// Converges the templates: builds the desired one when missing (in the
/// background, one at a time, when the host is idle enough), removes
/// incomplete and superseded ones, and template volumes nothing uses.
/// Called by every resync.
pub async fn maintain(ctx: &Context) -> Result<(), ReconcileError> {
    let want = desired(ctx);
    let t = &ctx.templates;
    let building = t.lock().building.clone();
    let mut keep = HashSet::new();
    if let Some((_, n)) = &building {
        keep.extend([n.disk.clone(), n.seed.clone()]);
    }
    // Incomplete directories (a crashed build) and superseded templates'
    // memory files go; the current template's volumes stay.
    for (hash, info) in on_disk(&t.dir) {
        if building.as_ref().is_some_and(|b| b.0 == hash) {
            continue;
        }
        let wanted = want.as_ref().is_some_and(|d| d.hash == hash);
        match info {
            Some(info) if wanted => {
                keep.extend([info.disk_volume, info.seed_volume]);
            }
            Some(_) => {
                tracing::info!(template = %hash, "removing a superseded template's memory file");
                remove_dir(&t.dir.join(&hash));
            }
            None => {
                tracing::warn!(template = %hash, "removing an incomplete template (a build was interrupted)");
                ctx.vm
                    .remove_template_domain(&names(&hash, "").name)
                    .await?;
                remove_dir(&t.dir.join(&hash));
            }
        }
    }
    // Template volumes no template or build names: removed, a disk only
    // once no hosting's disk (nor a quarantined one) is an overlay of it.
    let volumes = ctx.vm.list_volumes().await?;
    for v in volumes
        .iter()
        .filter(|v| v.starts_with("hostd-tpl-") && !keep.contains(*v))
    {
        if v.ends_with("-disk.qcow2") {
            let file = ctx.vm.volume_path(v).await?;
            if disk_in_use(ctx, &volumes, &file).await? {
                continue;
            }
        }
        tracing::info!(volume = %v, "removing a template volume no template uses and no disk is an overlay of");
        ctx.vm.delete_volume(v).await?;
    }
    let Some(d) = want else { return Ok(()) };
    if building.is_some() || t.ready(&d.hash).is_some() {
        return Ok(());
    }
    if let Some((h, _, at)) = &t.lock().failed {
        if *h == d.hash && at.elapsed() < RETRY_AFTER {
            return Ok(());
        }
    }
    if ctx.boot_gate.counts() != (0, 0) || super::warm_pool::room_for(ctx, &d.class).await? < 1 {
        return Ok(());
    }
    start_build(ctx, d).await
}

/// Whether a hosting's disk volume in `volumes`, or a quarantined disk, is
/// a qcow2 overlay of `file` (`qemu-img info`; a disk it cannot read counts
/// as one: the template's disk is kept).
async fn disk_in_use(
    ctx: &Context,
    volumes: &[String],
    file: &Path,
) -> Result<bool, ReconcileError> {
    let mut disks = vec![];
    for v in volumes {
        if v.ends_with("-disk.qcow2") && !v.starts_with("hostd-tpl-") {
            disks.push(ctx.vm.volume_path(v).await?);
        }
    }
    let quarantined = ctx.quarantine.entries().into_iter().map(|e| e.path);
    disks.extend(quarantined.filter(|p| {
        p.is_file()
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("-disk.qcow2"))
    }));
    for path in disks {
        match crate::drivers::qemu_img::backing_file(&path).await {
            Ok(Some(b)) if b == file => return Ok(true),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(disk = %path.display(), error = %e, "cannot read a disk's backing file; keeping the template's disk");
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a template directory");
        }
    }
}

/// Removes a failed build: its domain, volumes (no clone can use them: it
/// never completed) and directory.
async fn discard(
    vm: &dyn VmDriver,
    dir: &Path,
    hash: &str,
    n: &TemplateNames,
) -> Result<(), ReconcileError> {
    vm.remove_template_domain(&n.name).await?;
    vm.delete_volume(&n.disk).await?;
    vm.delete_volume(&n.seed).await?;
    remove_dir(&dir.join(hash));
    Ok(())
}

/// A free loopback port (the template's forwarded ports; nothing connects).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Prepares template `d` (volumes, XML) and captures it in the background.
async fn start_build(ctx: &Context, d: Desired) -> Result<(), ReconcileError> {
    let t = &ctx.templates;
    let n = names(&d.hash, &format!("{:08x}", rand::random::<u32>()));
    {
        let mut st = t.lock();
        if st.building.is_some() {
            return Ok(());
        }
        st.building = Some((d.hash.clone(), n.clone()));
    }
    let prepared = prepare(ctx, &d, &n).await;
    let (xml, memory, disk_file) = match prepared {
        Ok(p) => p,
        Err(e) => {
            if let Err(e) = discard(ctx.vm.as_ref(), &t.dir, &d.hash, &n).await {
                tracing::warn!(template = %d.hash, error = %e, "removing the template that could not be prepared");
            }
            t.lock().building = None;
            return Err(e);
        }
    };
    tracing::info!(template = %d.hash, "building a template for clones: booting a generic guest");
    let (vm, state, dir) = (ctx.vm.clone(), t.state.clone(), t.dir.clone());
    let faults = ctx.config.faults.clone();
    tokio::spawn(async move {
        let hash = d.hash.clone();
        let r = async {
            let c = vm
                .capture_template(&n.name, &xml, &memory, BOOT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            faults
                .hit("after_template_capture")
                .await
                .map_err(|e| e.to_string())?;
            let info = TemplateInfo {
                hash: d.hash.clone(),
                image: d.class.image.as_str().to_string(),
                image_disk: d.image.disk.clone(),
                memory_mib: d.class.memory_mib.get(),
                vcpus: d.class.vcpus.get(),
                disk_gib: d.class.disk_gib.get(),
                disk_volume: n.disk.clone(),
                seed_volume: n.seed.clone(),
                disk_file,
                memory_file: memory.clone(),
                memory_bytes: c.memory_bytes,
                boot_seconds: c.boot.as_secs_f64(),
                save_seconds: c.save.as_secs_f64(),
                built_at: chrono::Utc::now(),
            };
            write_info(&dir.join(&d.hash), &info).map_err(|e| e.to_string())?;
            Ok::<_, String>(info)
        }
        .await;
        match r {
            Ok(info) => {
                tracing::info!(template = %hash, boot_s = info.boot_seconds, save_s = info.save_seconds,
                    memory_mib = info.memory_bytes >> 20, "template ready: new hostings start as its clones");
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.ready = Some(info);
                st.failed = None;
                st.building = None;
            }
            Err(e) => {
                tracing::warn!(template = %hash, error = %e, "building the template failed; new hostings boot cold (retried in 10 min)");
                if let Err(e) = discard(vm.as_ref(), &dir, &hash, &n).await {
                    tracing::warn!(template = %hash, error = %e, "removing the failed template");
                }
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.failed = Some((hash, e, Instant::now()));
                st.building = None;
            }
        }
    });
    Ok(())
}

/// The template's volumes (named by this build), its directory (a
/// leftover of the same hash removed) and domain XML: (XML, memory file,
/// disk file).
async fn prepare(
    ctx: &Context,
    d: &Desired,
    n: &TemplateNames,
) -> Result<(String, PathBuf, PathBuf), ReconcileError> {
    ctx.vm.remove_template_domain(&n.name).await?;
    remove_dir(&ctx.templates.dir.join(&d.hash));
    let user = template_user();
    let ports = (
        free_port().map_err(crate::drivers::DriverError::from)?,
        free_port().map_err(crate::drivers::DriverError::from)?,
    );
    let i = inputs(&d.class, &d.image, &user, ports);
    let vm = &ctx.vm;
    let overlay = VolumeSource::Overlay {
        backing: d.image.disk.clone(),
        backing_format: d.image.format.clone(),
        capacity_gib: d.class.disk_gib,
    };
    vm.create_volume(&n.disk, overlay).await?;
    let iso = crate::drivers::seed::build_iso(&ctx.render.seed(&i));
    vm.create_volume(&n.seed, VolumeSource::Bytes(iso)).await?;
    std::fs::create_dir_all(ctx.render.console_dir()).map_err(crate::drivers::DriverError::from)?;
    let xml = ctx.render.template_xml(&i, n);
    let memory = ctx.templates.dir.join(&d.hash).join("memory.bin");
    let disk_file = vm.volume_path(&n.disk).await?;
    Ok((xml, memory, disk_file))
}

/// Writes `template.json` last and atomically: the template is complete.
fn write_info(dir: &Path, info: &TemplateInfo) -> std::io::Result<()> {
    let tmp = dir.join("template.json.new");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("template.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct_per_hash() {
        let a = names("0123456789abcdef", "1");
        assert_eq!(a, names("0123456789abcdef", "1"));
        let b = names("0123456789abcdee", "1");
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(a.name, "hostd-tpl-0123456789abcdef");
        // A rebuild under the same hash: the same domain, new volumes.
        let again = names("0123456789abcdef", "2");
        assert_eq!((a.name.as_str(), a.uuid), (again.name.as_str(), again.uuid));
        assert_ne!(a.disk, again.disk);
        assert!(is_hash("0123456789abcdef"));
        assert!(!is_hash("0123456789ABCDEF"));
        assert!(!is_hash("../../etc/passwd"));
    }
}
