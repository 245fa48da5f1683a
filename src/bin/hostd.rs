//! The hostd server binary: a thin command-line shell over the library.

use clap::{Parser, Subcommand};
use hostd::app::{Application, Mode};
use hostd::config::{Config, Settings};
use hostd::shutdown::Shutdown;

#[derive(Parser)]
#[command(
    name = "hostd",
    version,
    about = "Self-hosted web-hosting control plane"
)]
struct Cli {
    /// Every setting; each is read from its environment variable.
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// API and reconciler in one process.
    All {
        /// Generate a JWT secret if HOSTD_JWT_SECRET is unset (development only).
        #[arg(long)]
        dev: bool,
    },
    /// The REST API only.
    Api,
    /// The reconciler only (one leader at a time per database).
    Reconciler,
    /// Apply database migrations and exit.
    Migrate,
    /// Check the environment: database, libvirt, nginx, image, acceleration.
    Doctor,
    /// Print the Hosting CustomResourceDefinition (crds/hosting.yaml).
    Crds,
    /// Print a main nginx config that includes the route map.
    NginxConf {
        /// Listen address, e.g. 0.0.0.0:80.
        #[arg(long, default_value = "0.0.0.0:80")]
        listen: String,
        /// Directory for pid, logs and temp files.
        #[arg(long, default_value = "/var/lib/hostd/nginx")]
        prefix: String,
        /// The routes directory to include [default: HOSTD_NGINX_ROUTES_DIR's value].
        #[arg(long)]
        routes_dir: Option<std::path::PathBuf>,
        /// HTTPS listen address, e.g. 0.0.0.0:443 (certificates from
        /// `HOSTD_STATE_DIR/tls`); none: HTTP only.
        #[arg(long)]
        https_listen: Option<String>,
        /// Where nginx writes the per-site log for hostd's statistics
        /// [default: HOSTD_NGINX_SITE_LOG's value; none: no site log].
        #[arg(long)]
        site_log: Option<std::path::PathBuf>,
    },
    /// After the host lost its disks: wake every hosting and watch the
    /// running reconciler restore it from its newest backup (off-host ones
    /// included) until each is served again or found lost.
    Recover {
        /// Give up watching after this many seconds.
        #[arg(long, default_value = "1800")]
        timeout: u64,
    },
    /// Ask for every certificate (or those of NAME) to be renewed now.
    RenewCertificates { name: Option<String> },
    /// Grant the admin role to a user.
    MakeAdmin { username: String },
    /// Hypervisor nodes: list, add, cordon, uncordon, remove.
    Node {
        #[command(subcommand)]
        cmd: hostd::node_cli::NodeCmd,
    },
    /// GET a URL and exit 0 on a 2xx answer within 5 s, else 1: the
    /// containers' health check (the runtime image has no curl).
    Probe { url: String },
}

fn config(settings: &Settings, dev: bool) -> Config {
    match settings.clone().into_config(dev) {
        Ok((c, generated)) => {
            if generated {
                eprintln!("WARNING: HOSTD_JWT_SECRET is not set: generated a random one for this run (--dev). Tokens will not survive a restart. Never do this in production.");
            }
            c
        }
        Err(e) => {
            eprintln!("hostd: {e}");
            std::process::exit(2);
        }
    }
}

async fn serve(c: Config, mode: Mode) {
    let app = match Application::build(c, mode).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hostd: {e}");
            std::process::exit(1);
        }
    };
    if let Some(addr) = app.addr() {
        tracing::info!(%addr, ?mode, "hostd listening");
    }
    let shutdown = Shutdown::default();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        hostd::shutdown::signal().await;
        tracing::info!("shutdown requested");
        sd.cancel();
    });
    if let Err(e) = app.run_until_stopped(shutdown).await {
        eprintln!("hostd: {e}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // A bad setting: one line naming the variable.
            eprintln!(
                "hostd: invalid configuration: {}",
                hostd::config::first_line(&e.to_string())
            );
            std::process::exit(2)
        }
        Err(e) => e.exit(),
    };
    if let Cmd::Probe { url } = &cli.cmd {
        let c = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .build()
            .expect("http client");
        match c.get(url).send().await {
            Ok(r) if r.status().is_success() => std::process::exit(0),
            Ok(r) => {
                eprintln!("hostd probe: {url} answered {}", r.status());
                std::process::exit(1)
            }
            Err(e) => {
                eprintln!("hostd probe: {url}: {e}");
                std::process::exit(1)
            }
        }
    }
    let s = &cli.settings;
    hostd::telemetry::init(s.log_json == "1");
    match cli.cmd {
        Cmd::All { dev } => serve(config(s, dev), Mode::All).await,
        Cmd::Api => serve(config(s, false), Mode::Api).await,
        Cmd::Reconciler => serve(config(s, true), Mode::Reconciler).await,
        Cmd::Migrate => {
            let c = config(s, true);
            let store = hostd::store::Store::connect(&c.database_url, 2)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("hostd: {e}");
                    std::process::exit(1)
                });
            if let Err(e) = store.migrate().await {
                eprintln!("hostd: {e}");
                std::process::exit(1);
            }
            println!("migrations applied");
        }
        Cmd::Doctor => std::process::exit(hostd::doctor::run(config(s, true)).await),
        Cmd::Node { cmd } => std::process::exit(hostd::node_cli::run(config(s, true), cmd).await),
        Cmd::Recover { timeout } => std::process::exit(
            hostd::recover::run(config(s, true), std::time::Duration::from_secs(timeout)).await,
        ),
        Cmd::Crds => print!("{}", hostd::crd::hosting_crd_yaml()),
        Cmd::NginxConf {
            listen,
            prefix,
            routes_dir,
            https_listen,
            site_log,
        } => {
            let site_log = site_log
                .or_else(|| s.nginx_site_log.clone())
                .map(|p| p.display().to_string());
            let routes = routes_dir.unwrap_or_else(|| s.routes_dir());
            let routes = routes.display().to_string();
            let tls_dir = s.tls_dir().display().to_string();
            let api = s.listen.to_string();
            let conf = hostd::app::nginx_main_conf(&hostd::app::NginxLayout {
                listen: &listen,
                https_listen: https_listen.as_deref(),
                prefix: &prefix,
                routes_dir: &routes,
                tls_dir: &tls_dir,
                sites_domain: s.sites_domain.as_deref(),
                panel: s.panel_host.as_deref().map(|p| (p, api.as_str())),
                site_log: site_log.as_deref(),
            });
            print!("{conf}")
        }
        Cmd::RenewCertificates { name } => {
            let c = config(s, true);
            let store = hostd::store::Store::connect(&c.database_url, 2)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("hostd: {e}");
                    std::process::exit(1)
                });
            match store.request_renewal(name.as_deref()).await {
                Ok(n) => println!("renewal requested for {n} certificate(s)"),
                Err(e) => {
                    eprintln!("hostd: {e}");
                    std::process::exit(1)
                }
            }
        }
        Cmd::Probe { .. } => unreachable!("handled before the settings"),
        Cmd::MakeAdmin { username } => {
            let c = config(s, true);
            let u = hostd::domain::Username::parse(&username).unwrap_or_else(|e| {
                eprintln!("hostd: {e}");
                std::process::exit(2)
            });
            let store = hostd::store::Store::connect(&c.database_url, 2)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("hostd: {e}");
                    std::process::exit(1)
                });
            match store.set_role(&u, hostd::domain::Role::Admin).await {
                Ok(()) => println!("{username} is now an admin"),
                Err(e) => {
                    eprintln!("hostd: {e}");
                    std::process::exit(1)
                }
            }
        }
    }
}
