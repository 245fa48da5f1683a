//! Guest-agent calls, off the reconcile workers. Applying a seed live runs
//! `hostd-boot --live` in the guest through the QEMU guest agent, which the
//! tenant's root controls: it may answer "still running" until the timeout.
//! Awaited inside a reconcile, such a call held a worker for its whole
//! timeout, and 32 hostile tenants could hold every worker. So a call is a
//! job here: the pass submits it and ends (`Requeue`), the job runs under
//! its own small semaphore (claims of warm-pool guests, which still run
//! hostd's own agent, under another one, so tenants' agents never delay
//! them), and its end wakes the hosting, whose next pass reads the outcome.
//! A tenant's failed call also starts a cooldown ([`AGENT_COOLDOWN`]) in
//! which its seed changes wait for the next boot instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::domain::HostingId;

/// How long one agent call may take.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Tenants' agent calls at once (per reconciler).
pub const TENANT_CALLS: usize = 4;
/// Clones' personalisations at once: as many as clones start at once
/// (`clone_templates::RESTORES_AT_ONCE`), so a burst's clones are not
/// queued twice.
pub const CLONE_CALLS: usize = super::clone_templates::RESTORES_AT_ONCE;
/// Warm-pool claims' agent calls at once.
pub const CLAIM_CALLS: usize = 4;
/// After a tenant's agent call failed, how long its live seed changes wait
/// for the next boot instead of calling the agent again.
pub const AGENT_COOLDOWN: Duration = Duration::from_secs(300);

/// What a call does, and whose slots it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A tenant's new seed, applied live (`hostd-boot --live`).
    Tenant,
    /// A claimed warm-pool guest's personalisation (still hostd's agent).
    Claim,
    /// A clone's first personalisation: its identity reset
    /// ([`CLONE_RESET`]), then `hostd-boot --live` as for a claim, in one
    /// guest command. Its own slots ([`CLONE_CALLS`]).
    Clone,
}

/// Run in a clone right after its start from a template, as root and before
/// its owner has any access: everything the template's guest generated that
/// must not be shared between clones is made anew. `$1`: 64 random bytes from
/// the host (hex); `$2`: the host's clock (seconds since the epoch). The
/// kernel RNG gets the host's bytes, credited (`RNDADDENTROPY`), and reseeds
/// its CRNG at once (`RNDRESEEDCRNG`): every clone's CRNG state differs from
/// here on (the VM generation ID does the same where the kernel has
/// `vmgenid`). The clock jumps from the template's save to now. New SSH host
/// keys (ed25519 and ECDSA, as `hostd-boot` makes them: RSA takes 5-16 s
/// under TCG) and a new machine-id. The boot id cannot be changed without a
/// reboot (`/proc/sys/kernel/random/boot_id` is read-only). After each
/// step a line `hostd-step NAME UPTIME` (the guest's `/proc/uptime`, read
/// by the shell itself) says when it ended: [`step_times`] turns them into
/// the event's breakdown.
pub const CLONE_RESET: &str = r#"set -eu
t() { read -r up _ < /proc/uptime; echo "hostd-step $1 $up"; }
t start
date -u -s "@$2" >/dev/null
t clock
perl -e 'open(my $f, ">", "/dev/urandom") or die "urandom: $!";
  my $b = pack("H*", $ARGV[0]);
  ioctl($f, 0x40085203, pack("ii", 8 * length($b), length($b)) . $b) or die "RNDADDENTROPY: $!";
  ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!";' "$1"
t rng
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C '' -f /etc/ssh/ssh_host_ed25519_key
ssh-keygen -q -t ecdsa -N '' -C '' -f /etc/ssh/ssh_host_ecdsa_key
t host-keys
systemd-id128 new > /etc/machine-id.new
mv /etc/machine-id.new /etc/machine-id
rm -f /var/lib/systemd/random-seed
t machine-id
/usr/local/sbin/hostd-boot --live
t seed
"#;

/// The steps' durations in milliseconds, from the `hostd-step NAME UPTIME`
/// lines [`CLONE_RESET`] prints (the guest's output: at most 16 steps,
/// names of at most 16 letters, digits and dashes; anything else is
/// ignored). A `start` line begins a new reference without a step.
pub fn step_times(output: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut last: Option<f64> = None;
    for line in output.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some("hostd-step"), Some(name), Some(up), None) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Ok(up) = up.parse::<f64>() else { continue };
        let ok = name.len() <= 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok || !up.is_finite() || up < 0.0 {
            continue;
        }
        if let (Some(before), true) = (last, name != "start") {
            out.push((
                name.to_string(),
                ((up - before).max(0.0) * 1000.0).round() as u64,
            ));
        }
        last = Some(up);
        if out.len() == 16 {
            break;
        }
    }
    out
}

/// What a call that ended well gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// How long it took, seen from the host.
    pub took: Duration,
    /// What it printed (at most 2,000 characters; the guest's words).
    pub output: String,
}

/// How a submitted call ended: what it ran, or why it failed.
pub type Outcome = Result<Ran, String>;

/// Where a hosting's call stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Submitted or running: the hosting is woken when it ends.
    Pending,
    /// Ended (taken: the next poll submits again).
    Done(Outcome),
}

struct Job {
    /// The seed the call applies.
    seed: String,
    /// `None` while it runs.
    outcome: Option<Outcome>,
}

/// The agent calls of one reconciler.
pub struct AgentCalls {
    tenants: Arc<Semaphore>,
    claims: Arc<Semaphore>,
    clones: Arc<Semaphore>,
    jobs: Arc<Mutex<HashMap<HostingId, Job>>>,
    /// Most calls seen running at once (for tests and the closing figures).
    pub peak: Arc<std::sync::atomic::AtomicUsize>,
    running: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for AgentCalls {
    fn default() -> Self {
        AgentCalls {
            tenants: Arc::new(Semaphore::new(TENANT_CALLS)),
            claims: Arc::new(Semaphore::new(CLAIM_CALLS)),
            clones: Arc::new(Semaphore::new(CLONE_CALLS)),
            jobs: Default::default(),
            peak: Default::default(),
            running: Default::default(),
        }
    }
}

impl AgentCalls {
    /// The outcome of the call applying `seed` to hosting `id`'s guest,
    /// submitting it if there is none (its end wakes the hosting). A finished call for another
    /// seed is dropped and a new one submitted; a running one is waited for.
    pub fn poll(
        &self,
        ctx: &super::Context,
        vm: std::sync::Arc<dyn crate::drivers::VmDriver>,
        id: HostingId,
        seed: &str,
        kind: CallKind,
    ) -> Poll {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.get(&id) {
            Some(j) if j.outcome.is_none() => return Poll::Pending,
            Some(j) if j.seed == seed => {
                let out = jobs.remove(&id).and_then(|j| j.outcome);
                return Poll::Done(out.expect("a finished job"));
            }
            _ => {}
        }
        jobs.insert(
            id,
            Job {
                seed: seed.to_string(),
                outcome: None,
            },
        );
        drop(jobs);
        let slots = match kind {
            CallKind::Tenant => &self.tenants,
            CallKind::Claim => &self.claims,
            CallKind::Clone => &self.clones,
        };
        let slots = slots.clone();
        let (name, wake) = (super::names::domain_name(id), ctx.waker(id));
        let faults = ctx.config.faults.clone();
        let (table, running, peak) = (self.jobs.clone(), self.running.clone(), self.peak.clone());
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let outcome = match slots.acquire_owned().await {
                Ok(_permit) => {
                    let now = running.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(now, SeqCst);
                    let started = Instant::now();
                    // A `delay` here stands for an agent that answers late.
                    let r = match faults.hit("before_agent_call").await {
                        Err(e) => Err(crate::drivers::DriverError::GuestAgent(e.to_string())),
                        Ok(()) if kind == CallKind::Clone => clone_reset(vm.as_ref(), &name).await,
                        Ok(()) => {
                            let (path, args) = ("/usr/local/sbin/hostd-boot", ["--live"]);
                            vm.guest_exec(&name, path, &args, AGENT_TIMEOUT).await
                        }
                    };
                    running.fetch_sub(1, SeqCst);
                    r.map(|output| Ran {
                        took: started.elapsed(),
                        output,
                    })
                    .map_err(|e| e.to_string())
                }
                Err(_) => Err("the agent calls were closed".to_string()),
            };
            if let Some(j) = table.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
                j.outcome = Some(outcome);
            }
            wake();
        });
        Poll::Pending
    }

    /// Forgets a hosting's call (it is gone); a running one finishes unread.
    pub fn forget(&self, id: HostingId) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Whether a call of the hosting is known (running or unread).
    pub fn knows(&self, id: HostingId) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }
}

/// Runs [`CLONE_RESET`] (and with it `hostd-boot --live`) in the clone
/// `name` with fresh bytes from the host's RNG and the host's clock.
async fn clone_reset(
    vm: &dyn crate::drivers::VmDriver,
    name: &str,
) -> crate::drivers::DriverResult<String> {
    let mut bytes = [0u8; 64];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
        .map_err(|e| crate::drivers::DriverError::Other(format!("host RNG: {e}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (entropy, clock) = (
        hex::encode(bytes),
        format!("{}.{:09}", now.as_secs(), now.subsec_nanos()),
    );
    let args = ["-c", CLONE_RESET, "hostd-clone-reset", &entropy, &clock];
    vm.guest_exec(name, "/bin/sh", &args, AGENT_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::step_times;

    #[test]
    fn step_times_are_the_differences_of_the_step_lines_and_ignore_the_rest() {
        let out = "hostd-step start 100.00 0\nhostd-step start 100.00\nhostd-step clock 100.01\n\
                   hostd-step start 3.50\nhostd-step rng 3.75\nhostd-boot: seed applied\n\
                   hostd-step host-keys 4.05\nhostd-step seed nan\nhostd-step a/b 5.0\n\
                   hostd-step seed 4.65\n";
        assert_eq!(
            step_times(out),
            vec![
                ("clock".to_string(), 10),
                ("rng".to_string(), 250),
                ("host-keys".to_string(), 300),
                ("seed".to_string(), 600),
            ]
        );
        assert!(step_times("").is_empty());
    }
}
