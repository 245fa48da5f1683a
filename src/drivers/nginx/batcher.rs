//! The batcher: collects the route changes of concurrent reconciles, writes
//! the map file once, validates it once with `nginx -t` and reloads once; a
//! batch that fails validation is rolled back and bisected until the
//! rejected changes are isolated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::map_file::MapFile;
use super::Change;
use crate::domain::HostingId;
use crate::drivers::{DriverError, DriverResult};

/// How long the batcher waits for more changes after the first one.
pub(super) const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The least pause after a batch, in multiples of that batch's duration.
pub(super) const BATCH_SPACING: u32 = 4;

/// Runs `nginx <args> -c <conf>`, returning stderr on failure.
pub(super) async fn nginx(bin: &Path, conf: &Path, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .arg("-c")
        .arg(conf)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .filter(|l| !l.contains("test is successful") && !l.contains("syntax is ok"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// Previous entries of the hostings a write changed, for rollback.
pub(super) type Undo = Vec<(HostingId, Option<String>)>;

pub(super) struct Batcher {
    pub(super) map: Arc<MapFile>,
    pub(super) conf: PathBuf,
    pub(super) bin: PathBuf,
    /// Held while the map file is written, validated and reloaded.
    pub(super) writing: Arc<tokio::sync::Mutex<()>>,
    /// A previous reload failed: the file on disk is newer than what nginx serves.
    pub(super) reload_pending: Arc<AtomicBool>,
}

impl Batcher {
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Change>) {
        // When the last batch ended and how long it took.
        let mut last: Option<(tokio::time::Instant, Duration)> = None;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            // Validating and reloading grow with the routes (both parse the
            // whole map): the next batch starts no sooner than BATCH_SPACING
            // times the last one's duration after it, so under a flood of
            // changes nginx takes a bounded share of the machine and batches
            // grow instead.
            let now = tokio::time::Instant::now();
            let spaced = last.map_or(now, |(end, took)| end + took * BATCH_SPACING);
            let deadline = (now + BATCH_WINDOW).max(spaced);
            while let Ok(Some(c)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                batch.push(c);
                if batch.len() >= 100_000 {
                    break;
                }
            }
            let (n, t) = (batch.len(), std::time::Instant::now());
            let writing = self.writing.clone();
            let guard = writing.lock().await;
            self.process(batch).await;
            drop(guard);
            last = Some((tokio::time::Instant::now(), t.elapsed()));
            tracing::debug!(
                changes = n,
                ms = t.elapsed().as_millis() as u64,
                "route batch applied"
            );
        }
    }

    /// Applies `changes` to the map file (one atomic write, none if nothing
    /// changes); returns the previous entries for rollback.
    async fn write_all(&self, changes: &[(HostingId, Option<String>)]) -> std::io::Result<Undo> {
        let map = self.map.clone();
        let changes = changes.to_vec();
        tokio::task::spawn_blocking(move || {
            let t = map.current()?;
            let mut entries = t.entries.clone();
            let mut undo = Vec::new();
            for (id, content) in changes {
                let old = match &content {
                    Some(c) => entries.insert(id, c.clone()),
                    None => entries.remove(&id),
                };
                if old != content {
                    undo.push((id, old));
                }
            }
            if !undo.is_empty() || t.unowned {
                map.write(entries)?;
            }
            Ok(undo)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn rollback(&self, undo: Undo) {
        if let Err(e) = self.write_all(&undo).await {
            tracing::error!(error = %e, "nginx route map rollback failed");
        }
    }

    async fn process(&mut self, batch: Vec<Change>) {
        // Last write wins per hosting inside one batch.
        let mut latest: HashMap<HostingId, usize> = HashMap::new();
        for (i, (id, _, _)) in batch.iter().enumerate() {
            latest.insert(*id, i);
        }
        let changes: Vec<(HostingId, Option<String>)> = batch
            .iter()
            .enumerate()
            .filter(|(i, (id, _, _))| latest[id] == *i)
            .map(|(_, (id, c, _))| (*id, c.clone()))
            .collect();
        let mut results: HashMap<HostingId, DriverResult<()>> = HashMap::new();

        let mut changed = false;
        match self.write_all(&changes).await {
            Err(e) => {
                for (id, _) in &changes {
                    results.insert(*id, Err(DriverError::Other(format!("writing route: {e}"))));
                }
            }
            Ok(undo) if undo.is_empty() => {
                for (id, _) in &changes {
                    results.insert(*id, Ok(()));
                }
            }
            Ok(undo) => match nginx(&self.bin, &self.conf, &["-t", "-q"]).await {
                Ok(()) => {
                    changed = true;
                    for (id, _) in &changes {
                        results.insert(*id, Ok(()));
                    }
                }
                Err(err) => {
                    self.rollback(undo).await;
                    tracing::warn!(batch = changes.len(), error = %err, "nginx rejected a route batch; bisecting it");
                    changed |= self.bisect(&changes, &mut results).await;
                }
            },
        }
        if changed || self.reload_pending.load(Relaxed) {
            match nginx(&self.bin, &self.conf, &["-s", "reload"]).await {
                Ok(()) => self.reload_pending.store(false, Relaxed),
                Err(e) => {
                    self.reload_pending.store(true, Relaxed);
                    for r in results.values_mut() {
                        if r.is_ok() {
                            *r = Err(DriverError::NginxReload(e.clone()));
                        }
                    }
                }
            }
        }
        for (id, _, reply) in batch {
            let r = match results.get(&id) {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(clone_err(e)),
                None => Ok(()),
            };
            let _ = reply.send(r);
        }
    }

    /// Finds the changes nginx rejects by halving a rejected batch: each
    /// half is written and validated together, a rejected half is halved
    /// again, down to single changes. k bad changes among n cost about
    /// 2k·log2(n) validations instead of n. Whether any entry changed.
    async fn bisect(
        &self,
        changes: &[(HostingId, Option<String>)],
        results: &mut HashMap<HostingId, DriverResult<()>>,
    ) -> bool {
        let mut changed = false;
        let mut todo: Vec<&[(HostingId, Option<String>)]> = vec![changes];
        while let Some(part) = todo.pop() {
            if part.len() == 1 {
                let (id, content) = &part[0];
                let r = self.apply_one(*id, content.clone()).await;
                changed |= matches!(r, Ok(true));
                results.insert(*id, r.map(|_| ()));
                continue;
            }
            let (a, b) = part.split_at(part.len() / 2);
            for half in [a, b] {
                match self.write_all(half).await {
                    Err(e) => {
                        for (id, _) in half {
                            let msg = format!("writing route: {e}");
                            results.insert(*id, Err(DriverError::Other(msg)));
                        }
                    }
                    Ok(undo) if undo.is_empty() => {
                        for (id, _) in half {
                            results.insert(*id, Ok(()));
                        }
                    }
                    Ok(undo) => match nginx(&self.bin, &self.conf, &["-t", "-q"]).await {
                        Ok(()) => {
                            changed = true;
                            for (id, _) in half {
                                results.insert(*id, Ok(()));
                            }
                        }
                        Err(_) => {
                            self.rollback(undo).await;
                            todo.push(half);
                        }
                    },
                }
            }
        }
        changed
    }

    /// Writes and validates one change alone; `Ok(true)` if an entry changed.
    async fn apply_one(&self, id: HostingId, content: Option<String>) -> DriverResult<bool> {
        let undo = self.write_all(&[(id, content)]).await?;
        if undo.is_empty() {
            return Ok(false);
        }
        match nginx(&self.bin, &self.conf, &["-t", "-q"]).await {
            Ok(()) => Ok(true),
            Err(err) => {
                self.rollback(undo).await;
                Err(DriverError::NginxInvalid(err))
            }
        }
    }
}

pub(super) fn clone_err(e: &DriverError) -> DriverError {
    match e {
        DriverError::NginxInvalid(s) => DriverError::NginxInvalid(s.clone()),
        DriverError::NginxReload(s) => DriverError::NginxReload(s.clone()),
        other => DriverError::Other(other.to_string()),
    }
}
