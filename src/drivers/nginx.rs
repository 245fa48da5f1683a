//! The nginx proxy driver. Every hosting's route is an entry in one generated
//! map file, `routes.map` in the routes directory, which the main nginx
//! config (`templates/nginx-main.conf`) includes into two hashed `map`s: a
//! reload parses one table instead of a `location` block per hosting. An
//! entry starts with the line `# hosting <id>`, so the file reads back as
//! one route per hosting. Changes from concurrent reconciles are collected
//! into batches: the whole file is written atomically, validated once with
//! `nginx -t`, then nginx is reloaded once. A batch that fails validation is
//! rolled back and bisected until the rejected changes are isolated, so one
//! bad route cannot block the others and the last good config keeps serving.
//! Reconciles submit changes without waiting ([`ProxyDriver::submit`]), so a
//! batch takes everything pending. The parsed file is cached and read again
//! only when its inode, size or times change, so an idle resync costs one
//! `stat` here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{DriverError, DriverResult, ProxyDriver, RouteSpec};
use crate::domain::HostingId;
use crate::templates::RouteMap;

/// How long the batcher waits for more changes after the first one.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The least pause after a batch, in multiples of that batch's duration.
const BATCH_SPACING: u32 = 4;

/// The one file of routes in the routes directory.
pub const MAP_FILE: &str = "routes.map";

/// The line each hosting's entry starts with (followed by its id).
const ENTRY_HEADER: &str = "# hosting ";

type Change = (HostingId, Option<String>, oneshot::Sender<DriverResult<()>>);

/// Submitted changes by hosting: the content and where it stands.
type Outcomes = HashMap<HostingId, (Option<String>, super::RouteOutcome)>;

/// What identifies one version of the map file on disk: a rename gives a new
/// inode, an edit in place a new size or times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

/// The map file as last read or written.
#[derive(Debug, Default)]
struct Table {
    /// Each hosting's entry, exactly as in the file.
    entries: BTreeMap<HostingId, String>,
    /// The file holds text that is no hosting's entry (before the first
    /// entry, an entry header without a valid id, or a second entry of one
    /// hosting): it is dropped at the next write.
    unowned: bool,
    /// The file version this was read from or written as (`None`: no file).
    stamp: Option<Stamp>,
}

impl Table {
    /// Parses the file's text.
    fn parse(text: &str, stamp: Option<Stamp>) -> Table {
        let mut t = Table {
            stamp,
            ..Default::default()
        };
        let mut current: Option<(Option<HostingId>, String)> = None;
        // A second entry of one hosting, or text outside any entry, is unowned.
        let finish = |t: &mut Table, cur: Option<(Option<HostingId>, String)>| {
            t.unowned |= match cur {
                Some((Some(id), text)) => t.entries.insert(id, text).is_some(),
                Some((None, text)) => !text.is_empty(),
                None => false,
            };
        };
        for line in text.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix(ENTRY_HEADER) {
                finish(&mut t, current.take());
                let id = uuid::Uuid::parse_str(rest.trim_end_matches('\n'))
                    .ok()
                    .filter(|u| format!("{ENTRY_HEADER}{u}\n") == line)
                    .map(HostingId);
                current = Some((id, String::new()));
            }
            current
                .get_or_insert_with(|| (None, String::new()))
                .1
                .push_str(line);
        }
        finish(&mut t, current);
        t
    }

    /// The file's text.
    fn text(&self) -> String {
        let mut s = String::with_capacity(self.entries.values().map(|e| e.len()).sum());
        for e in self.entries.values() {
            s.push_str(e);
        }
        s
    }
}

/// The cached map file, shared by the driver and its batcher.
struct MapFile {
    path: PathBuf,
    table: std::sync::Mutex<Arc<Table>>,
}

impl MapFile {
    /// The table as the file is now: the cache, unless the file changed.
    fn current(&self) -> std::io::Result<Arc<Table>> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some(Stamp::of(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        {
            let t = self.table.lock().unwrap();
            if t.stamp == stamp {
                return Ok(t.clone());
            }
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // Stamped as it was before the read: a write in between is seen at
        // the next look.
        let t = Arc::new(Table::parse(&text, stamp));
        *self.table.lock().unwrap() = t.clone();
        Ok(t)
    }

    /// Writes `entries` as the file (atomically) and caches them.
    fn write(&self, entries: BTreeMap<HostingId, String>) -> std::io::Result<()> {
        let mut t = Table {
            entries,
            unowned: false,
            stamp: None,
        };
        let tmp = self.path.with_file_name(format!(".{MAP_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(t.text().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        t.stamp = Some(Stamp::of(&std::fs::metadata(&self.path)?));
        *self.table.lock().unwrap() = Arc::new(t);
        Ok(())
    }
}

/// The nginx-backed [`ProxyDriver`].
pub struct NginxDriver {
    /// Submitted changes by hosting: their content and where they stand.
    outcomes: Arc<std::sync::Mutex<Outcomes>>,
    routes_dir: PathBuf,
    map: Arc<MapFile>,
    conf: PathBuf,
    bin: PathBuf,
    tx: mpsc::UnboundedSender<Change>,
    /// Held while the map file is written, validated and reloaded.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Set while the files on disk are newer than what nginx serves (a reload failed).
    reload_pending: Arc<AtomicBool>,
}

impl NginxDriver {
    /// Creates the driver and spawns its batcher task (needs a tokio runtime).
    pub fn new(routes_dir: &Path, conf: &Path, bin: &Path) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let reload_pending = Arc::new(AtomicBool::new(false));
        let map = Arc::new(MapFile {
            path: routes_dir.join(MAP_FILE),
            table: Default::default(),
        });
        let writing = Arc::new(tokio::sync::Mutex::new(()));
        let batcher = Batcher {
            map: map.clone(),
            conf: conf.to_path_buf(),
            bin: bin.to_path_buf(),
            writing: writing.clone(),
            reload_pending: reload_pending.clone(),
        };
        tokio::spawn(batcher.run(rx));
        Self {
            outcomes: Default::default(),
            routes_dir: routes_dir.to_path_buf(),
            map,
            conf: conf.to_path_buf(),
            bin: bin.to_path_buf(),
            tx,
            writing,
            reload_pending,
        }
    }

    /// The map file's current table, read on a blocking thread if it changed.
    async fn table(&self) -> DriverResult<Arc<Table>> {
        let map = self.map.clone();
        Ok(tokio::task::spawn_blocking(move || map.current())
            .await
            .map_err(|e| DriverError::Other(format!("route map read: {e}")))??)
    }
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

/// Previous entries of the hostings a write changed, for rollback.
type Undo = Vec<(HostingId, Option<String>)>;

struct Batcher {
    map: Arc<MapFile>,
    conf: PathBuf,
    bin: PathBuf,
    /// Held while the map file is written, validated and reloaded.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// A previous reload failed: the file on disk is newer than what nginx serves.
    reload_pending: Arc<AtomicBool>,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Change>) {
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

/// Names of the files in `dir` that are not hostd's: anything but the map
/// file, the ownership marker and a recent temp file.
fn scan_stray(dir: &Path) -> DriverResult<Vec<String>> {
    let mut stray = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stray),
        Err(e) => return Err(e.into()),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == super::ownership::MARKER_FILE || name == MAP_FILE {
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
        stray.push(name);
    }
    Ok(stray)
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
        let upstream = match route.http_port {
            Some(port) => format!("127.0.0.1:{port}"),
            None => "stopped".into(),
        };
        let entry = RouteMap {
            hosting_id: route.hosting_id.to_string(),
            user_id: route.user_id.to_string(),
            upstream,
            vhost: route.vhost.clone(),
        }
        .render()
        .expect("route template renders");
        // Entries are concatenated into the file: each ends its last line.
        format!("{}\n", entry.trim_end())
    }

    async fn list_routes(&self) -> DriverResult<(Vec<(HostingId, String)>, Vec<String>)> {
        let table = self.table().await?;
        let dir = self.routes_dir.clone();
        let mut stray = tokio::task::spawn_blocking(move || scan_stray(&dir))
            .await
            .map_err(|e| DriverError::Other(format!("route scan: {e}")))??;
        if table.unowned {
            stray.push(MAP_FILE.to_string());
        }
        let routes = table.entries.iter().map(|(i, c)| (*i, c.clone()));
        Ok((routes.collect(), stray))
    }

    fn reload_pending(&self) -> bool {
        self.reload_pending.load(Relaxed)
    }

    async fn read_route(&self, id: HostingId) -> DriverResult<Option<String>> {
        Ok(self.table().await?.entries.get(&id).cloned())
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
        if file_name != MAP_FILE {
            let path = self.routes_dir.join(file_name);
            return match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
        // Text in the map file that is no hosting's entry: the file is
        // written again from the entries alone, validated and reloaded.
        let _writing = self.writing.lock().await;
        let map = self.map.clone();
        tokio::task::spawn_blocking(move || {
            let t = map.current()?;
            if t.unowned {
                map.write(t.entries.clone())?;
            }
            std::io::Result::Ok(())
        })
        .await
        .map_err(|e| DriverError::Other(format!("route map write: {e}")))??;
        nginx(&self.bin, &self.conf, &["-t", "-q"])
            .await
            .map_err(DriverError::NginxInvalid)?;
        nginx(&self.bin, &self.conf, &["-s", "reload"])
            .await
            .map_err(DriverError::NginxReload)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: uuid::Uuid, line: &str) -> String {
        format!("{ENTRY_HEADER}{id}\n{line}\n")
    }

    #[test]
    fn the_map_file_reads_back_as_one_entry_per_hosting() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let text = entry(a, "path:x 127.0.0.1:1;") + &entry(b, "path:y stopped;");
        let t = Table::parse(&text, None);
        assert!(!t.unowned);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[&HostingId(a)], entry(a, "path:x 127.0.0.1:1;"));
        // Written back, the text is the same (entries in id order).
        let mut sorted = [(a, "path:x 127.0.0.1:1;"), (b, "path:y stopped;")];
        sorted.sort();
        let want: String = sorted.iter().map(|(i, l)| entry(*i, l)).collect();
        assert_eq!(t.text(), want);
    }

    #[test]
    fn text_that_is_no_hostings_entry_is_unowned() {
        let a = uuid::Uuid::new_v4();
        let ok = entry(a, "path:x 127.0.0.1:1;");
        for text in [
            format!("path:evil 127.0.0.1:2;\n{ok}"),
            format!("{ok}{ENTRY_HEADER}not-a-uuid\npath:evil 127.0.0.1:2;\n"),
            format!("{ok}{ok}"),
            format!("{ok}{ENTRY_HEADER}{}\n", a.to_string().to_uppercase()),
        ] {
            let t = Table::parse(&text, None);
            assert!(t.unowned, "{text}");
            assert!(t.entries.contains_key(&HostingId(a)), "{text}");
        }
        // A hand edit inside an entry stays that entry's (and differs).
        let t = Table::parse(&format!("{ok}# note\n"), None);
        assert!(!t.unowned);
        assert_ne!(t.entries[&HostingId(a)], ok);
        assert!(Table::parse("", None).entries.is_empty());
    }
}
