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
//!
//! Map: [`map_file`] (the file, its cache, stray files), [`batcher`]
//! (batches, validation, reload, bisection); the driver here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use askama::Template;
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{DriverError, DriverResult, ProxyDriver, RouteSpec};
use crate::domain::HostingId;
use crate::templates::RouteMap;

mod batcher;
mod map_file;
pub mod site_log;

use batcher::{clone_err, nginx, Batcher};
use map_file::{scan_stray, MapFile, Table};

/// The one file of routes in the routes directory.
pub const MAP_FILE: &str = "routes.map";

pub(super) type Change = (HostingId, Option<String>, oneshot::Sender<DriverResult<()>>);

/// Submitted changes by hosting: the content and where it stands.
type Outcomes = HashMap<HostingId, (Option<String>, super::RouteOutcome)>;

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
    /// The TLS map file (`HOSTD_STATE_DIR/tls/certs.map`).
    tls_map: PathBuf,
}

impl NginxDriver {
    /// Creates the driver and spawns its batcher task (needs a tokio runtime).
    pub fn new(routes_dir: &Path, conf: &Path, bin: &Path, tls_map: &Path) -> Self {
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
            tls_map: tls_map.to_path_buf(),
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

#[async_trait]
impl ProxyDriver for NginxDriver {
    fn render(&self, route: &RouteSpec) -> String {
        let upstream = match route.http_port {
            Some(port) => format!("{}:{port}", route.upstream_host.host()),
            None => "stopped".into(),
        };
        let entry = RouteMap {
            hosting_id: route.hosting_id.to_string(),
            user_id: route.user_id.to_string(),
            upstream,
            hosts: route.hosts.clone(),
            hsts: route.hsts,
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

    async fn apply_tls_map(&self, content: &str) -> DriverResult<bool> {
        let _writing = self.writing.lock().await;
        let old = match tokio::fs::read_to_string(&self.tls_map).await {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if old.as_deref() == Some(content) {
            return Ok(false);
        }
        let write = |text: Option<String>| {
            let path = self.tls_map.clone();
            async move {
                tokio::task::spawn_blocking(move || match text {
                    Some(t) => {
                        let tmp = path.with_extension("map.tmp");
                        std::fs::write(&tmp, t)?;
                        std::fs::rename(&tmp, &path)
                    }
                    None => std::fs::remove_file(&path),
                })
                .await
                .map_err(|e| DriverError::Other(format!("TLS map write: {e}")))?
                .map_err(DriverError::from)
            }
        };
        write(Some(content.to_string())).await?;
        if let Err(e) = nginx(&self.bin, &self.conf, &["-t", "-q"]).await {
            write(old).await?;
            return Err(DriverError::NginxInvalid(e));
        }
        nginx(&self.bin, &self.conf, &["-s", "reload"])
            .await
            .map_err(DriverError::NginxReload)?;
        Ok(true)
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
