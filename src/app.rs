//! Wiring: builds the pieces a process runs (API server, reconciler, or both)
//! from a [`Config`], binds the listener (port 0 works, for tests), and runs
//! until a shutdown signal, stopping cooperatively.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::drivers::libvirt::LibvirtDriver;
use crate::drivers::nginx::NginxDriver;
use crate::drivers::{ProxyDriver, VmDriver};
use crate::images::Catalog;
use crate::reconciler::{Context, Controller};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    All,
    Api,
    Reconciler,
}

/// A built application: bound listener (if any) and the reconciler (if any).
pub struct Application {
    listener: Option<tokio::net::TcpListener>,
    addr: Option<SocketAddr>,
    /// The metrics-only listener (`HOSTD_METRICS_LISTEN`), in any mode.
    metrics_listener: Option<tokio::net::TcpListener>,
    state: AppState,
    controller: Option<Arc<Controller>>,
}

/// Errors while building the application.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Image(#[from] crate::images::ImageError),
    #[error("{0}")]
    Context(#[from] crate::reconciler::ContextError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl Application {
    /// Connects to Postgres (waiting for it up to 30 s), runs migrations,
    /// creates drivers and binds the API listener.
    pub async fn build(config: Config, mode: Mode) -> Result<Application, AppError> {
        let store = connect_with_retry(&config.database_url).await?;
        store.migrate().await?;
        let installation = store.installation_id().await?;
        let metrics = Arc::new(Metrics::default());
        let catalog = Catalog::load(&config.images_file, &config.state_dir)?;
        let (vm, proxy): (Arc<dyn VmDriver>, Arc<dyn ProxyDriver>) = (
            Arc::new(LibvirtDriver::new(
                &config.libvirt_uri,
                &config.instance,
                installation,
                &config.state_dir,
            )),
            Arc::new(NginxDriver::new(
                &config.nginx_routes_dir,
                &config.nginx_conf,
                &config.nginx_bin,
                &config.tls.dir.join(crate::drivers::tls_files::MAP_FILE),
            )),
        );
        std::fs::create_dir_all(&config.nginx_routes_dir).map_err(|e| {
            AppError::Other(format!(
                "cannot create {}: {e}",
                config.nginx_routes_dir.display()
            ))
        })?;
        let cost = config.bcrypt_cost;
        let dummy_hash = tokio::task::spawn_blocking(move || {
            bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost)
        })
        .await
        .map_err(|e| AppError::Other(e.to_string()))?
        .map_err(|e| AppError::Other(e.to_string()))?;
        let kv =
            crate::drivers::kv::Kv::new(&config.redis_url, &format!("hostd:{}:", config.instance))
                .map_err(|e| AppError::Other(format!("HOSTD_REDIS_URL: {e}")))?;
        let guard = api::limits::Guard::new(kv, store.clone(), config.limits, metrics.clone());
        let state = AppState {
            guard: Arc::new(guard),
            health_cache: Arc::new(tokio::sync::Mutex::new(None)),
            web: Default::default(),
            store: store.clone(),
            config: Arc::new(config.clone()),
            jwt: api::auth::Jwt::new(&config.jwt_secret, config.jwt_ttl),
            dummy_hash,
            catalog_names: Arc::new(catalog.names().map(String::from).collect()),
            vm: vm.clone(),
            proxy: proxy.clone(),
            host_checks_remote: mode == Mode::Api,
            metrics: metrics.clone(),
        };
        if mode != Mode::Api {
            claim_state(&config, installation, vm.as_ref()).await?;
            guest_isolation(&config).await?;
        }
        if mode != Mode::Api {
            backup_key_present(&config, &store).await?;
        }
        let controller = if mode != Mode::Api {
            let ctx = Context::new(store, vm, proxy, config.clone(), installation, metrics)?;
            Some(Arc::new(Controller::new(ctx)))
        } else {
            None
        };
        let (listener, addr) = if mode != Mode::Reconciler {
            let (l, a) = bind(config.listen).await?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let metrics_listener = match config.metrics_listen {
            Some(a) => Some(bind(a).await?.0),
            None => None,
        };
        Ok(Application {
            listener,
            addr,
            metrics_listener,
            state,
            controller,
        })
    }

    /// The bound metrics-only address, if `HOSTD_METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The bound API address (None for a reconciler-only process).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn controller(&self) -> Option<Arc<Controller>> {
        self.controller.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs until `shutdown` is cancelled; then stops accepting requests,
    /// lets in-flight reconciles finish and releases the leader lease.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), AppError> {
        let reconciler = self
            .controller
            .clone()
            .map(|c| tokio::spawn(c.run(shutdown.clone())));
        if let Some(l) = self.metrics_listener {
            let router = api::metrics_router(self.state.clone());
            let sd = shutdown.clone();
            tokio::spawn(async move {
                let serve = axum::serve(l, router).with_graceful_shutdown(sd.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        if let Some(listener) = self.listener {
            // Reads are served from the in-process view once it is live.
            self.state.store.start_view(shutdown.clone());
            let router = api::router(self.state.clone());
            let sd = shutdown.clone();
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, service)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
                .map_err(|e| AppError::Other(format!("server: {e}")))?;
        } else {
            shutdown.cancelled().await;
        }
        if let Some(r) = reconciler {
            let _ = r.await;
        }
        Ok(())
    }
}

async fn connect_with_retry(url: &str) -> Result<Store, crate::store::StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Store::connect(url, 20).await {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for Postgres");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Before reconciling, makes sure the storage pool and the routes directory
/// are this installation's (claiming them if unclaimed); refuses to start
/// against another installation's, naming both ids.
async fn claim_state(
    config: &Config,
    installation: uuid::Uuid,
    vm: &dyn VmDriver,
) -> Result<(), AppError> {
    use crate::drivers::{ownership, DriverError};
    let foreign = |e: DriverError| match e {
        DriverError::Foreign(m) => AppError::Other(m),
        e => AppError::Other(format!("cannot check the state's ownership: {e}")),
    };
    ownership::claim(&config.nginx_routes_dir, installation, "routes directory")
        .map_err(foreign)?;
    match vm.ensure_storage_pool().await {
        Err(e @ DriverError::Foreign(_)) => Err(foreign(e)),
        // libvirtd may be down: the reconciler retries the pool later.
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare the storage pool yet");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Puts the host-side guest isolation in place before any guest runs;
/// refuses to start without it unless `HOSTD_ALLOW_UNISOLATED_GUESTS=1`.
async fn guest_isolation(config: &Config) -> Result<(), AppError> {
    if !config.real_guests() {
        return Ok(());
    }
    match crate::drivers::isolation::Isolation::new(config.guest_egress.clone()).ensure().await {
        Ok(detail) => {
            tracing::info!(%detail, "guest isolation in force");
            Ok(())
        }
        Err(e) if config.allow_unisolated_guests => {
            tracing::error!(error = %e, "guest isolation NOT in force (HOSTD_ALLOW_UNISOLATED_GUESTS=1): guests can reach host services");
            Ok(())
        }
        Err(e) => Err(AppError::Other(format!(
            "guest isolation cannot be put in place ({e}); refusing to run guests that could reach host services. Install nftables and run as root, or set HOSTD_ALLOW_UNISOLATED_GUESTS=1 to run without it"
        ))),
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), AppError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AppError::Bind(addr, e))?;
    let a = l.local_addr().map_err(|e| AppError::Bind(addr, e))?;
    Ok((l, a))
}

/// What `hostd nginx-conf` renders the host nginx config from.
pub struct NginxLayout<'a> {
    /// The HTTP listener.
    pub listen: &'a str,
    /// The HTTPS listener, if any (needs `tls_dir`).
    pub https_listen: Option<&'a str>,
    /// nginx's pid, logs and temporary files.
    pub prefix: &'a str,
    pub routes_dir: &'a str,
    /// hostd's TLS directory (`HOSTD_STATE_DIR/tls`).
    pub tls_dir: &'a str,
    pub sites_domain: Option<&'a str>,
    /// The dashboard's host name and the API listener it proxies to.
    pub panel: Option<(&'a str, &'a str)>,
    /// Where nginx writes the per-site log hostd reads for statistics.
    pub site_log: Option<&'a str>,
}

/// Renders the host nginx main config (used by start.sh and the tests).
pub fn nginx_main_conf(l: &NginxLayout) -> String {
    use askama::Template;
    let prefix = l.prefix;
    let tls = l.https_listen.map(|listen| {
        let port = listen.rsplit_once(':').map_or("443", |(_, p)| p);
        crate::templates::NginxTls {
            listen: listen.to_string(),
            port_suffix: if port == "443" {
                String::new()
            } else {
                format!(":{port}")
            },
            dir: l.tls_dir.to_string(),
            fallback: format!("{}/{}", l.tls_dir, crate::drivers::tls_files::FALLBACK_FILE),
        }
    });
    crate::templates::NginxMainConf {
        pid_file: format!("{prefix}/nginx.pid"),
        error_log: format!("{prefix}/error.log"),
        access_log: format!("{prefix}/access.log"),
        site_log: l.site_log.map(str::to_string),
        temp_dir: format!("{prefix}/tmp"),
        listen: l.listen.to_string(),
        routes_dir: l.routes_dir.to_string(),
        // Measured with nginx 1.22: 20,000 hostings (40,000 keys per map)
        // validate in 0.07 s with these; the defaults (2048, 64) cannot
        // build an optimal hash past a few thousand keys.
        map_hash_max_size: 65536,
        map_hash_bucket_size: 512,
        // A validated DNS name: only its dots need escaping in a regex.
        sites_domain_regex: l.sites_domain.map(|d| d.replace('.', "\\.")),
        tls,
        panel: l
            .panel
            .map(|(host, upstream)| crate::templates::NginxPanel {
                host: host.to_string(),
                upstream: upstream.to_string(),
            }),
    }
    .render()
    .expect("nginx template renders")
}

/// With off-host backups, a missing key file is created — unless backups
/// sealed with some key exist: then the file was lost (a new host without
/// the operator's copy), and a new key would only seal new backups that the
/// old ones cannot be told apart from; start-up stops and says which key
/// to bring back.
async fn backup_key_present(config: &Config, store: &Store) -> Result<(), AppError> {
    let Some(p) = &config.backups.offsite else {
        return Ok(());
    };
    if p.key_file.exists() {
        return Ok(());
    }
    let sealed = store.offsite_key_fingerprints().await?;
    if let Some((fp, n)) = sealed.first() {
        return Err(AppError::Other(format!(
            "HOSTD_BACKUP_KEY_FILE {} does not exist, but {n} off-host backup(s) were sealed with \
             the key of fingerprint {fp}: put that key file back (your copy of it) and start again; \
             hostd will not make a new key while backups need the old one",
            p.key_file.display()
        )));
    }
    Ok(())
}
