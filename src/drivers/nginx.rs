//! The nginx proxy driver. One route file per hosting (`<hosting id>.conf`,
//! location blocks only) in the routes directory, which the operator's main
//! nginx config includes inside a `server` block. Changes from concurrent
//! reconciles are collected into batches: written atomically, validated once
//! with `nginx -t` against the whole config, then reloaded once. A batch that
//! fails validation is rolled back and bisected until the rejected changes are
//! isolated, so one bad route cannot block the others and the last good config
//! keeps serving. Reconciles submit changes without waiting
//! ([`ProxyDriver::submit`]), so a batch takes everything pending.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{DriverError, DriverResult, ProxyDriver, RouteSpec};
use crate::domain::HostingId;
use crate::templates::RouteConf;

/// How long the batcher waits for more changes after the first one.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

type Change = (HostingId, Option<String>, oneshot::Sender<DriverResult<()>>);

/// Route files (id → content) and the names of other files in the directory.
type RouteScan = (Vec<(HostingId, String)>, Vec<String>);

/// Submitted changes by hosting: the content and where it stands.
type Outcomes = HashMap<HostingId, (Option<String>, super::RouteOutcome)>;

/// The nginx-backed [`ProxyDriver`].
pub struct NginxDriver {
    /// Submitted changes by hosting: their content and where they stand.
    outcomes: Arc<std::sync::Mutex<Outcomes>>,
    routes_dir: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    tx: mpsc::UnboundedSender<Change>,
    /// Set while the files on disk are newer than what nginx serves (a reload failed).
    reload_pending: Arc<AtomicBool>,
}

impl NginxDriver {
    /// Creates the driver and spawns its batcher task (needs a tokio runtime).
    pub fn new(routes_dir: &Path, conf: &Path, bin: &Path) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let reload_pending = Arc::new(AtomicBool::new(false));
        let batcher = Batcher {
            routes_dir: routes_dir.to_path_buf(),
            conf: conf.to_path_buf(),
            bin: bin.to_path_buf(),
            reload_pending: reload_pending.clone(),
        };
        tokio::spawn(batcher.run(rx));
        Self {
            outcomes: Default::default(),
            routes_dir: routes_dir.to_path_buf(),
            conf: conf.to_path_buf(),
            bin: bin.to_path_buf(),
            tx,
            reload_pending,
        }
    }
}

fn route_path(dir: &Path, id: HostingId) -> PathBuf {
    dir.join(format!("{id}.conf"))
}

/// Runs `nginx <args> -c <conf>`, returning stderr on failure.
async fn nginx(bin: &Path, conf: &Path, args: &[&str]) -> Result<(), String> {
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

async fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let content = content.to_string();
    let (tmp2, path2) = (tmp.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp2)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp2, &path2)?;
        if let Some(d) = path2.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn read_opt(path: &Path) -> std::io::Result<Option<String>> {
    match tokio::fs::read_to_string(path).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn set_file(path: &Path, content: Option<&str>) -> std::io::Result<()> {
    match content {
        Some(c) => write_atomic(path, c).await,
        None => match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

struct Batcher {
    routes_dir: PathBuf,
    conf: PathBuf,
    bin: PathBuf,
    /// A previous reload failed: the files on disk are newer than what nginx serves.
    reload_pending: Arc<AtomicBool>,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Change>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while let Ok(Some(c)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                batch.push(c);
                if batch.len() >= 100_000 {
                    break;
                }
            }
            let (n, t) = (batch.len(), std::time::Instant::now());
            self.process(batch).await;
            tracing::debug!(
                changes = n,
                ms = t.elapsed().as_millis() as u64,
                "route batch applied"
            );
        }
    }

    /// Applies changes; returns the previous contents for rollback.
    async fn write_all(
        &self,
        changes: &[(HostingId, Option<String>)],
    ) -> std::io::Result<Vec<(PathBuf, Option<String>)>> {
        let mut undo = Vec::with_capacity(changes.len());
        for (id, content) in changes {
            let path = route_path(&self.routes_dir, *id);
            let old = read_opt(&path).await?;
            if old.as_deref() != content.as_deref() {
                set_file(&path, content.as_deref()).await?;
                undo.push((path, old));
            }
        }
        Ok(undo)
    }

    async fn rollback(undo: Vec<(PathBuf, Option<String>)>) {
        for (path, old) in undo.into_iter().rev() {
            if let Err(e) = set_file(&path, old.as_deref()).await {
                tracing::error!(path = %path.display(), error = %e, "nginx route rollback failed");
            }
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
                    Self::rollback(undo).await;
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
    /// 2k·log2(n) validations instead of n. Whether any file changed.
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
                            Self::rollback(undo).await;
                            todo.push(half);
                        }
                    },
                }
            }
        }
        changed
    }

    /// Writes and validates one change alone; `Ok(true)` if a file changed.
    async fn apply_one(&self, id: HostingId, content: Option<String>) -> DriverResult<bool> {
        let undo = self.write_all(&[(id, content)]).await?;
        if undo.is_empty() {
            return Ok(false);
        }
        match nginx(&self.bin, &self.conf, &["-t", "-q"]).await {
            Ok(()) => Ok(true),
            Err(err) => {
                Self::rollback(undo).await;
                Err(DriverError::NginxInvalid(err))
            }
        }
    }
}

/// Every route file in `dir` (id → content) and the names of other files.
fn scan_routes(dir: &Path) -> DriverResult<RouteScan> {
    let mut routes = Vec::new();
    let mut stray = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((routes, stray)),
        Err(e) => return Err(e.into()),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == super::ownership::MARKER_FILE {
            continue;
        }
        if name.starts_with('.') && name.ends_with(".tmp") {
            // A temp file is stray only once no write can still be using it:
            // one younger than a minute may be a batch's write in progress
            // (removing it would fail that batch's rename).
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old {
                stray.push(name);
            }
            continue;
        }
        let id = name
            .strip_suffix(".conf")
            .and_then(|s| uuid::Uuid::parse_str(s).ok());
        match id {
            Some(id) if name == format!("{id}.conf") => {
                let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
                routes.push((HostingId(id), content));
            }
            _ => stray.push(name),
        }
    }
    Ok((routes, stray))
}

fn clone_err(e: &DriverError) -> DriverError {
    match e {
        DriverError::NginxInvalid(s) => DriverError::NginxInvalid(s.clone()),
        DriverError::NginxReload(s) => DriverError::NginxReload(s.clone()),
        other => DriverError::Other(other.to_string()),
    }
}

#[async_trait]
impl ProxyDriver for NginxDriver {
    fn render(&self, route: &RouteSpec) -> String {
        RouteConf {
            hosting_id: route.hosting_id.to_string(),
            user_id: route.user_id.to_string(),
            http_port: route.http_port,
            vhost: route.vhost.clone(),
        }
        .render()
        .expect("route template renders")
    }

    async fn list_routes(&self) -> DriverResult<(Vec<(HostingId, String)>, Vec<String>)> {
        // One blocking task for the whole scan (tokio::fs would hand every
        // read to the blocking pool separately: thousands of round trips).
        let dir = self.routes_dir.clone();
        tokio::task::spawn_blocking(move || scan_routes(&dir))
            .await
            .map_err(|e| DriverError::Other(format!("route scan: {e}")))?
    }

    fn reload_pending(&self) -> bool {
        self.reload_pending.load(Relaxed)
    }

    async fn read_route(&self, id: HostingId) -> DriverResult<Option<String>> {
        Ok(read_opt(&route_path(&self.routes_dir, id)).await?)
    }

    async fn apply(&self, id: HostingId, route: Option<RouteSpec>) -> DriverResult<()> {
        let content = route.as_ref().map(|r| self.render(r));
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((id, content, tx))
            .map_err(|_| DriverError::Other("nginx batcher stopped".into()))?;
        rx.await
            .map_err(|_| DriverError::Other("nginx batcher dropped the request".into()))?
    }

    fn submit(&self, id: HostingId, route: Option<RouteSpec>, done: Box<dyn FnOnce() + Send>) {
        let content = route.as_ref().map(|r| self.render(r));
        self.outcomes
            .lock()
            .unwrap()
            .insert(id, (content.clone(), super::RouteOutcome::Pending));
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send((id, content.clone(), tx));
        let outcomes = self.outcomes.clone();
        // The wait happens here, not in the reconcile that submitted.
        tokio::spawn(async move {
            let r = match sent {
                Err(_) => Err(DriverError::Other("nginx batcher stopped".into())),
                Ok(()) => rx.await.unwrap_or_else(|_| {
                    Err(DriverError::Other(
                        "nginx batcher dropped the request".into(),
                    ))
                }),
            };
            {
                let mut o = outcomes.lock().unwrap();
                // A newer submission for this hosting keeps its own state.
                if let Some((c, state)) = o.get_mut(&id) {
                    if *c == content {
                        *state = match r {
                            Ok(()) => super::RouteOutcome::Applied,
                            Err(e) => super::RouteOutcome::Failed(e),
                        };
                    }
                }
            }
            done();
        });
    }

    fn outcome(&self, id: HostingId, content: Option<&str>) -> Option<super::RouteOutcome> {
        let o = self.outcomes.lock().unwrap();
        let (c, state) = o.get(&id)?;
        if c.as_deref() != content {
            return None;
        }
        Some(match state {
            super::RouteOutcome::Pending => super::RouteOutcome::Pending,
            super::RouteOutcome::Applied => super::RouteOutcome::Applied,
            super::RouteOutcome::Failed(e) => super::RouteOutcome::Failed(clone_err(e)),
        })
    }

    fn forget(&self, id: HostingId) {
        self.outcomes.lock().unwrap().remove(&id);
    }

    async fn remove_stray(&self, file_name: &str) -> DriverResult<()> {
        if file_name.contains('/') || file_name == ".." || file_name == "." {
            return Err(DriverError::Other("invalid file name".into()));
        }
        set_file(&self.routes_dir.join(file_name), None).await?;
        Ok(())
    }

    async fn health(&self) -> DriverResult<String> {
        nginx(&self.bin, &self.conf, &["-t", "-q"])
            .await
            .map_err(DriverError::NginxInvalid)?;
        // nginx is up if the pid in its pid file is alive.
        let pid_file = pid_file_of(&self.conf).await;
        let running = match &pid_file {
            Some(p) => match tokio::fs::read_to_string(p).await {
                Ok(pid) => process_is_nginx(pid.trim()),
                Err(_) => false,
            },
            None => false,
        };
        if running {
            Ok("config valid, master running".into())
        } else {
            Err(DriverError::NginxReload(format!(
                "nginx is not running (pid file {})",
                pid_file
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "unknown".into())
            )))
        }
    }
}

/// Whether `pid` is a live (not zombie) nginx process: a stale pid file may
/// name an exited master or a reused pid.
fn process_is_nginx(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ..."
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next().unwrap_or('?');
    comm.starts_with("nginx") && state != 'Z' && state != 'X'
}

/// Finds the `pid` directive of a main nginx config (default /run/nginx.pid).
async fn pid_file_of(conf: &Path) -> Option<PathBuf> {
    let text = tokio::fs::read_to_string(conf).await.ok()?;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("pid ") {
            return Some(PathBuf::from(rest.trim_end_matches(';').trim()));
        }
    }
    Some(PathBuf::from("/run/nginx.pid"))
}
