//! Templates and clones from a memory snapshot (QEMU only). A template is a
//! generic guest booted once, its filesystems frozen through the guest agent
//! and its memory written to a file by QEMU's migration to `file:`; its disk
//! is left exactly as of the freeze. A clone is a hosting's own domain started
//! once with `-incoming file:<memory>` over a qcow2 overlay of that disk: the
//! guest resumes where the template stopped, and its filesystems are thawed.
//! libvirt's own save/restore cannot do this: a restore must keep the saved
//! domain's UUID, and every clone is a domain of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use virt::connect::Connect;
use virt::domain::Domain;

use super::agent::{agent_call, agent_exec};
use super::{is, lv, LibvirtDriver, Owner};
use crate::drivers::{Captured, DriverError, DriverResult};
use virt::error::ErrorNumber;

/// One QMP command on the domain's monitor; its `return` value.
fn qmp(d: &Domain, cmd: &serde_json::Value) -> DriverResult<serde_json::Value> {
    let out = d
        .qemu_monitor_command(&cmd.to_string(), 0)
        .map_err(|e| DriverError::Libvirt(format!("QMP {}: {e}", cmd["execute"])))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| DriverError::Libvirt(format!("QMP answer: {e}")))?;
    if let Some(e) = v.get("error") {
        return Err(DriverError::Libvirt(format!("QMP {}: {e}", cmd["execute"])));
    }
    Ok(v["return"].take())
}

/// Waits until the guest agent answers `guest-ping`.
fn wait_agent(d: &Domain, deadline: Instant) -> DriverResult<()> {
    loop {
        match agent_call(d, &json!({"execute": "guest-ping"})) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(DriverError::GuestAgent(format!("never answered: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Stops and forgets a template domain of this name (a crashed capture's),
/// if one exists and is ours.
pub(super) fn remove(c: &Connect, name: &str, owner: &Owner) -> DriverResult<()> {
    let Some(d) = LibvirtDriver::lookup_ours(c, name, owner)? else {
        return Ok(());
    };
    if d.is_active().unwrap_or(false) {
        match d.destroy() {
            Err(e) if !is(&e, ErrorNumber::OperationInvalid) => return Err(lv(e)),
            _ => {}
        }
    }
    if d.is_persistent().unwrap_or(false) {
        d.undefine().map_err(lv)?;
    }
    Ok(())
}

/// Boots the template domain `xml` (transient), waits for its guest to have
/// booted (`systemctl is-system-running --wait`, nginx and sshd active),
/// freezes its filesystems and saves its memory to `memory`, then stops it.
pub(super) fn capture(
    c: &Connect,
    xml: &str,
    name: &str,
    owner: &Owner,
    memory: &Path,
    boot_timeout: Duration,
) -> DriverResult<Captured> {
    remove(c, name, owner)?;
    match std::fs::remove_file(memory) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let started = Instant::now();
    let d = c.create_domain_xml(xml, 0).map_err(lv)?;
    let r = save(&d, started, memory, boot_timeout);
    // Stopped whatever happened: a transient domain is gone once stopped.
    let _ = d.destroy();
    r
}

fn save(
    d: &Domain,
    started: Instant,
    memory: &Path,
    boot_timeout: Duration,
) -> DriverResult<Captured> {
    let deadline = started + boot_timeout;
    wait_agent(d, deadline)?;
    let script = "systemctl is-system-running --wait >/dev/null || true; \
                  systemctl is-active --quiet nginx ssh && sync";
    let left = deadline.saturating_duration_since(Instant::now());
    agent_exec(d, "/bin/sh", &["-c".into(), script.into()], left)?;
    let booted = started.elapsed();
    let t = Instant::now();
    agent_call(d, &json!({"execute": "guest-fsfreeze-freeze"}))?;
    qmp(d, &json!({"execute": "stop"}))?;
    let uri = format!("file:{}", memory.display());
    qmp(d, &json!({"execute": "migrate", "arguments": {"uri": uri}}))?;
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let st = qmp(d, &json!({"execute": "query-migrate"}))?;
        match st["status"].as_str() {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => {
                return Err(DriverError::Libvirt(format!(
                    "saving the template's memory failed: {}",
                    st["error-desc"].as_str().unwrap_or("no reason given")
                )))
            }
            _ if Instant::now() > until => {
                return Err(DriverError::Libvirt(
                    "saving the template's memory took over 300 s".into(),
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Ok(Captured {
        boot: booted,
        save: t.elapsed(),
        memory_bytes: std::fs::metadata(memory)?.len(),
    })
}

/// Starts the defined, stopped domain `name` from `xml` (its definition plus
/// `-incoming`) as a one-off live configuration (its persistent definition
/// stays what it is), then thaws the guest's filesystems (the template froze
/// them) through the agent, within `timeout`.
pub(super) fn restore(
    c: &Connect,
    name: &str,
    owner: &Owner,
    xml: &str,
    timeout: Duration,
) -> DriverResult<Domain> {
    let d = LibvirtDriver::lookup_ours(c, name, owner)?
        .ok_or_else(|| DriverError::Libvirt(format!("domain {name} is not defined")))?;
    if d.is_active().map_err(lv)? {
        return Err(DriverError::Libvirt(format!(
            "domain {name} is running: not restoring a template over it"
        )));
    }
    let d = c.create_domain_xml(xml, 0).map_err(lv)?;
    let deadline = Instant::now() + timeout;
    loop {
        match agent_call(&d, &json!({"execute": "guest-fsfreeze-thaw"})) {
            Ok(_) => return Ok(d),
            Err(e) if Instant::now() > deadline => {
                let _ = d.destroy();
                return Err(DriverError::GuestAgent(format!(
                    "the clone's filesystems were not thawed: {e}"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The uid and gid QEMU runs as: libvirt's DAC base label from its
/// capabilities (right also where hostd runs in a container, whose
/// `/etc/passwd` does not know the host's users); `None` without one.
pub(super) fn qemu_label(c: &Connect) -> Option<(u32, u32)> {
    let caps = c.capabilities().ok()?;
    let at = caps.find("<baselabel type='")?;
    let rest = &caps[at..];
    let label = &rest[rest.find('>')? + 1..rest.find("</baselabel>")?];
    let (u, g) = label.split_once(':')?;
    Some((
        u.trim_start_matches('+').parse().ok()?,
        g.trim_start_matches('+').parse().ok()?,
    ))
}

/// Makes `dir` a directory QEMU's user may write a memory file into (QEMU,
/// not libvirt, opens a migration's `file:`).
pub(super) fn qemu_writable(dir: &Path, label: Option<(u32, u32)>) -> DriverResult<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    if let Some((uid, gid)) = label {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    Ok(())
}

/// After a capture: the memory file (if any; a regular file, never a link)
/// and its directory belong to root again and only root writes them, so no
/// guest's QEMU (all run as one user) can change what every later clone
/// will run; QEMU's group may read them.
pub(super) fn seal(memory: &Path, label: Option<(u32, u32)>) -> DriverResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let gid = label.map(|(_, g)| g);
    if let Some(dir) = memory.parent() {
        std::os::unix::fs::chown(dir, Some(0), gid)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    match std::fs::symlink_metadata(memory) {
        Ok(m) if m.file_type().is_file() => {
            std::os::unix::fs::lchown(memory, Some(0), gid)?;
            std::fs::set_permissions(memory, std::fs::Permissions::from_mode(0o640))?;
        }
        Ok(_) => {
            std::fs::remove_file(memory)?;
            return Err(DriverError::Other(
                "the memory file was not a regular file; removed".into(),
            ));
        }
        Err(_) => {}
    }
    Ok(())
}
