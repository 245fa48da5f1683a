//! `hostd doctor`: runs the dependency checks of `health/detailed`
//! (`crate::checks`, the same list) from the command line, plus what only
//! an operator's shell can see: who owns the routes and pool directories,
//! the acceleration in use, whether nginx can reach the TLS files, the
//! backup key and off-host store, the image catalogue's files, and each
//! node's libvirt (pinged from here). One line per check; the exit code is 1
//! when any failed.

use crate::checks::{self, Check, Outcome};
use crate::config::Config;
use crate::drivers::libvirt::LibvirtDriver;
use crate::drivers::nginx::NginxDriver;
use crate::images::Catalog;

/// The printed report: one line per check, and how many failed.
#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, c: &Check) {
        println!("{}", c.line());
        self.failed += usize::from(c.outcome == Outcome::Error);
    }

    fn line(&mut self, ok: bool, what: &str, detail: impl std::fmt::Display) {
        println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
        self.failed += usize::from(!ok);
    }
}

/// Postgres, and the installation id (nil when unknown).
async fn installation(c: &Config, out: &mut Report) -> uuid::Uuid {
    match crate::store::Store::connect(&c.database_url, 1).await {
        Ok(s) => {
            out.check(&checks::database(&s).await);
            s.installation_id().await.unwrap_or_default()
        }
        Err(e) => {
            out.line(false, "database", e);
            uuid::Uuid::nil()
        }
    }
}

/// Whether the routes and pool directories are this installation's.
fn ownership(c: &Config, installation: uuid::Uuid, out: &mut Report) {
    let pool_dir = crate::drivers::libvirt::pool_dir(&c.state_dir, &c.instance);
    for (what, dir) in [
        ("routes directory", &c.nginx_routes_dir),
        ("storage pool", &pool_dir),
    ] {
        let shown = dir.display();
        match crate::drivers::ownership::owner(dir) {
            Ok(Some(o)) if o == installation => out.line(true, what, format!("{shown} is ours")),
            Ok(Some(o)) => out.line(false, what, format!("{shown} belongs to installation {o}")),
            Ok(None) => out.line(true, what, format!("{shown} not claimed yet")),
            Err(e) => out.line(false, what, e),
        }
    }
}

/// libvirt, acceleration, nginx, guest isolation, Redis, qemu-img.
async fn services(c: &Config, installation: uuid::Uuid, out: &mut Report) {
    let vm = LibvirtDriver::new(&c.libvirt_uri, &c.instance, installation, &c.state_dir);
    out.check(&checks::libvirt(&vm).await);
    let accel = format!(
        "domain type '{}': {}",
        c.domain_type.as_str(),
        c.domain_type_reason
    );
    out.line(true, "acceleration", accel);
    let proxy = NginxDriver::new(
        &c.nginx_routes_dir,
        &c.nginx_conf,
        &c.nginx_bin,
        &c.tls.dir.join(crate::drivers::tls_files::MAP_FILE),
    );
    out.check(&checks::nginx(&proxy).await);
    out.check(&checks::guest_isolation(c).await);
    let prefix = format!("hostd:{}:", c.instance);
    let redis = async {
        let kv = crate::drivers::kv::Kv::new(&c.redis_url, &prefix)?;
        kv.ping().await.map(|p| format!("{}: {p}", c.redis_url))
    };
    out.check(&checks::redis(redis).await);
    out.check(&checks::qemu_img().await);
}

/// With TLS on: can nginx's workers reach the certificate files?
fn tls_files(c: &Config, out: &mut Report) {
    if !c.tls.enabled() {
        return;
    }
    let what = "TLS directory";
    let dir = &c.tls.dir;
    match crate::drivers::tls_files::untraversable(dir) {
        Ok(None) => out.line(true, what, format!("{} reachable by nginx", dir.display())),
        Ok(Some(d)) => out.line(
            false,
            what,
            format!(
                "nginx's workers cannot traverse {} (every TLS handshake fails): chmod o+x it",
                d.display()
            ),
        ),
        // Not created yet: the reconciler makes it on its first TLS pass.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.line(true, what, format!("{} not created yet", dir.display()))
        }
        Err(e) => out.line(false, what, format!("{}: {e}", dir.display())),
    }
}

/// With off-host backups: the key file, and the store answering a listing.
async fn offsite(c: &Config, installation: uuid::Uuid, out: &mut Report) {
    let Some(p) = &c.backups.offsite else {
        return;
    };
    match std::fs::read_to_string(&p.key_file) {
        Ok(text) => match crate::seal::Key::parse(text.trim()) {
            Ok(k) => out.line(
                true,
                "backup key",
                format!(
                    "{} (fingerprint {}): keep a copy off this host",
                    p.key_file.display(),
                    k.fingerprint()
                ),
            ),
            Err(e) => out.line(
                false,
                "backup key",
                format!("{}: {e}", p.key_file.display()),
            ),
        },
        Err(e) => out.line(
            false,
            "backup key",
            format!(
                "{}: {e} (made at start only while no backup needs an older key)",
                p.key_file.display()
            ),
        ),
    }
    let listed = async {
        let store = crate::drivers::offsite::S3Store::connect(p)?;
        store.list(&installation.to_string()).await
    };
    match listed.await {
        Ok(keys) => out.line(
            true,
            "off-host backup store",
            format!("{}: {} objects of this installation", p.url(), keys.len()),
        ),
        Err(e) => out.line(false, "off-host backup store", format!("{}: {e}", p.url())),
    }
}

/// Every image of the catalogue, with its files.
fn images(c: &Config, out: &mut Report) {
    let cat = match Catalog::load(&c.images_file, &c.state_dir) {
        Ok(cat) => cat,
        Err(e) => return out.line(false, "image catalogue", e),
    };
    for name in cat.names().map(String::from).collect::<Vec<_>>() {
        let n = crate::domain::ImageName::parse(&name).expect("catalogue names are valid");
        match cat.resolve(&n) {
            Ok(e) => out.line(true, &format!("image {name}"), e.disk.display()),
            Err(e) => out.line(false, &format!("image {name}"), e),
        }
    }
}

/// The templates for clones on the host's disk (informational: none is no
/// error, the reconciler builds one when the host is idle).
fn clone_templates(c: &Config, out: &mut Report) {
    let all = crate::reconciler::clone_templates::on_disk_status(&c.state_dir, &c.instance);
    if !c.clone_templates {
        return out.line(
            true,
            "clone templates",
            "off (HOSTD_CLONE_TEMPLATES=false): new hostings boot",
        );
    }
    if all.is_empty() {
        let msg = "none yet: the reconciler builds one when no guest boots (its log says why not)";
        return out.line(true, "clone templates", msg);
    }
    for t in all {
        let what = format!("clone template {}", t.hash);
        match t.info {
            Some(i) => out.line(
                true,
                &what,
                format!(
                    "{} {} MiB {} vCPU {} GiB, memory file {} MiB, disk {} MiB, built {}",
                    i.image,
                    i.memory_mib,
                    i.vcpus,
                    i.disk_gib,
                    i.memory_bytes >> 20,
                    t.disk_bytes.unwrap_or(0) >> 20,
                    i.built_at.to_rfc3339()
                ),
            ),
            None => out.line(
                true,
                &what,
                "incomplete (being built, or interrupted: removed by the reconciler)",
            ),
        }
    }
}

/// Every node of the table but the implicit one (checked with the
/// services): pinged from here, with what the reconciler last recorded.
async fn nodes(c: &Config, id: uuid::Uuid, out: &mut Report) {
    let Ok(store) = crate::store::Store::connect(&c.database_url, 1).await else {
        return;
    };
    let Ok(list) = store.list_nodes().await else {
        return;
    };
    for n in list.into_iter().filter(|n| !n.implicit) {
        use crate::drivers::VmDriver;
        let what = format!("node {}", n.name);
        if n.fenced_at.is_some() {
            out.line(true, &what, "fenced (declared dead by an operator)");
            continue;
        }
        let d = LibvirtDriver::for_node(
            n.uri.as_str(),
            n.name.as_str(),
            &c.instance,
            id,
            &c.state_dir,
        );
        let ping = tokio::time::timeout(std::time::Duration::from_secs(10), d.ping()).await;
        match ping {
            Ok(Ok(v)) => out.line(
                true,
                &what,
                format!(
                    "{v}; reconciler says {} ({} hostings)",
                    n.health, n.hostings
                ),
            ),
            Ok(Err(e)) => out.line(false, &what, format!("{e}; reconciler says {}", n.health)),
            Err(_) => out.line(false, &what, "no answer within 10 s"),
        }
    }
}

/// Runs the checks; returns the exit code (0 all good, 1 otherwise).
pub async fn run(c: Config) -> i32 {
    let mut out = Report::default();
    let id = installation(&c, &mut out).await;
    ownership(&c, id, &mut out);
    services(&c, id, &mut out).await;
    tls_files(&c, &mut out);
    offsite(&c, id, &mut out).await;
    images(&c, &mut out);
    clone_templates(&c, &mut out);
    nodes(&c, id, &mut out).await;
    i32::from(out.failed > 0)
}
