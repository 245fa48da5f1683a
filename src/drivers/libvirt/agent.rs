//! The QEMU guest agent: one command, and `guest-exec` with its status polls.
//! Everything the agent answers comes from the guest (a tenant's root can
//! replace it), so it is parsed as untrusted JSON.

use virt::domain::Domain;

use crate::drivers::{DriverError, DriverResult};

/// One guest-agent command; its `return` value. The answer comes from the
/// guest (a tenant's root can replace the agent), so it is parsed as
/// untrusted JSON and only the fields used here are read.
pub(super) fn agent_call(d: &Domain, cmd: &serde_json::Value) -> DriverResult<serde_json::Value> {
    let out = d
        .qemu_agent_command(&cmd.to_string(), 5, 0)
        .map_err(|e| DriverError::GuestAgent(e.to_string()))?;
    let mut v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| DriverError::GuestAgent(format!("unparsable answer: {e}")))?;
    Ok(v["return"].take())
}

/// `guest-exec` and its `guest-exec-status` polls (see `VmDriver::guest_exec`).
pub(super) fn agent_exec(
    d: &Domain,
    path: &str,
    args: &[String],
    timeout: std::time::Duration,
) -> DriverResult<String> {
    use base64::Engine;
    let started = std::time::Instant::now();
    let cmd = serde_json::json!({"execute": "guest-exec",
        "arguments": {"path": path, "arg": args, "capture-output": true}});
    let pid = agent_call(d, &cmd)?["pid"]
        .as_i64()
        .ok_or_else(|| DriverError::GuestAgent("guest-exec returned no pid".into()))?;
    let status = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
    loop {
        let st = agent_call(d, &status)?;
        if st["exited"].as_bool() == Some(true) {
            let text = |k: &str| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(st[k].as_str().unwrap_or(""))
                    .unwrap_or_default();
                let s = String::from_utf8_lossy(&b).into_owned();
                s.chars().take(2000).collect::<String>()
            };
            return match st["exitcode"].as_i64() {
                Some(0) => Ok(text("out-data")),
                code => Err(DriverError::GuestAgent(format!(
                    "{path} exited with {code:?}: {}",
                    text("err-data").trim()
                ))),
            };
        }
        if started.elapsed() > timeout {
            return Err(DriverError::GuestAgent(format!(
                "{path} still running after {timeout:?}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
