//! Rendering a hosting's files (domain XML, cloud-init seed) and the desired
//! state hash stored in the domain's marker.
//!
//! The hash is computed from the *rendered* output, so whatever shapes a file
//! (a template edit, a config value, a spec field) changes the hash by
//! construction; nothing is listed by hand. Two hashes: the domain part (a
//! change needs a restart) and the seed part (read by the guest at its next
//! boot, so no restart). The marker's own fields (hash, generation,
//! installation) are left out of what is hashed.
//!
//! Rendering every hosting on every resync would cost CPU at scale, so the
//! hashes are cached per hosting under a fingerprint of [`Inputs`]: the
//! renderers read nothing but an `Inputs` and the per-process [`Renderer`]
//! settings, so an unchanged fingerprint means unchanged output.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use askama::Template;
use sha2::{Digest, Sha256};

use super::names::{console_log, disk_volume, domain_name, seed_volume};
use crate::config::{Config, DomainType};
use crate::domain::{ssh_command, HostingId, HostingSpec, SiteAddress, UserId, Username};
use crate::drivers::seed::SeedFiles;
use crate::images::ImageEntry;
use crate::store::HostingRecord;
use crate::templates::{
    yaml_quote, DomainXml, MetaData, NetworkConfig, NftablesConf, SshdConf, UserData, WelcomeHtml,
    MARKER_NS,
};

/// Everything about one hosting that shapes its rendered files.
#[derive(Debug, Hash)]
pub struct Inputs<'a> {
    pub id: HostingId,
    pub user_id: UserId,
    pub username: &'a Username,
    pub spec: &'a HostingSpec,
    pub image: &'a ImageEntry,
    pub ssh_port: u16,
    pub http_port: u16,
    /// Booted for the warm pool (still there, or claimed since): the guest's
    /// instance id then names its owner, so a claim is a new instance to the
    /// guest (its welcome page is written for the new owner).
    pub from_warm_pool: bool,
    /// Where its node's forwarded HTTP port is bound (the node's address).
    pub address: crate::domain::NodeAddress,
    /// Where its node's forwarded SSH port is bound (`None`: `HOSTD_SSH_BIND`).
    pub ssh_address: Option<std::net::IpAddr>,
}

impl<'a> Inputs<'a> {
    /// The inputs of a hosting record, its pinned image and its (SSH, HTTP) ports.
    pub fn of(rec: &'a HostingRecord, image: &'a ImageEntry, ports: (u16, u16)) -> Inputs<'a> {
        Inputs {
            id: rec.id,
            user_id: rec.user_id,
            username: &rec.username,
            spec: &rec.spec,
            image,
            ssh_port: ports.0,
            http_port: ports.1,
            from_warm_pool: rec.warm || rec.claimed_at.is_some(),
            address: crate::domain::NodeAddress::LOOPBACK,
            ssh_address: None,
        }
    }

    /// The same inputs for a guest on a node reached at `address`, whose
    /// guests forward SSH on `ssh_address`.
    pub fn at(
        self,
        (address, ssh_address): (crate::domain::NodeAddress, Option<std::net::IpAddr>),
    ) -> Inputs<'a> {
        Inputs {
            address,
            ssh_address,
            ..self
        }
    }
}

/// How a domain XML differs from a hosting's own definition (which is the
/// default, and the only shape that feeds the desired-state hash).
#[derive(Debug, Default, Clone)]
struct Shape {
    /// A template's own names instead of the hosting's.
    template: Option<TemplateNames>,
    genid: bool,
    incoming: Option<String>,
}

/// A template domain's names (see `reconciler::clone_templates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateNames {
    pub name: String,
    pub uuid: uuid::Uuid,
    pub disk: String,
    pub seed: String,
}

/// The template files, for [`Renderer::set_edit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateFile {
    Domain,
    UserData,
    MetaData,
    NetworkConfig,
    Sshd,
    Nftables,
    Welcome,
}

/// A change applied to one rendered template: how tests stand in for an edit
/// of a template file (templates are compiled into the binary).
pub type TemplateEdit = Arc<dyn Fn(TemplateFile, &mut String) + Send + Sync>;

/// The desired-state hashes of one hosting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    /// Of the domain XML (marker fields excluded): a change needs a restart.
    pub domain: String,
    /// Of every seed file: a change applies at the next boot.
    pub seed: String,
}

impl Hashes {
    /// The marker's `spec-hash` attribute: `<domain>-<seed>`.
    pub fn marker(&self) -> String {
        format!("{}-{}", self.domain, self.seed)
    }

    /// Splits a marker's `spec-hash` back into (domain, seed).
    pub fn split(marker: &str) -> (&str, &str) {
        marker.split_once('-').unwrap_or((marker, ""))
    }
}

/// Renders files from [`Inputs`] and the settings fixed for this process.
pub struct Renderer {
    domain_type: DomainType,
    instance: String,
    installation: String,
    storage_pool: String,
    console_dir: PathBuf,
    ssh_bind: String,
    limits: crate::config::GuestLimits,
    sites: SiteAddress,
    public_host: String,
    edit: Mutex<Option<TemplateEdit>>,
    /// Bumped by every [`Renderer::set_edit`]: what was derived under an
    /// older epoch is stale.
    epoch: std::sync::atomic::AtomicU64,
    /// Hosting → (fingerprint of its inputs, hashes).
    cache: Mutex<HashMap<HostingId, (u64, Hashes)>>,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so moving bytes between parts changes the hash.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

impl Renderer {
    pub fn new(config: &Config, storage_pool: &str, installation: uuid::Uuid) -> Renderer {
        Renderer {
            domain_type: config.domain_type,
            instance: config.instance.clone(),
            installation: installation.to_string(),
            storage_pool: storage_pool.to_string(),
            console_dir: config.state_dir.join("console"),
            ssh_bind: config.ssh_bind.to_string(),
            limits: config.guest_limits,
            sites: config.sites.clone(),
            public_host: config.public_host().to_string(),
            edit: Mutex::new(None),
            epoch: Default::default(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Directory of the guests' serial console logs.
    pub fn console_dir(&self) -> &std::path::Path {
        &self.console_dir
    }

    /// Installs (or clears) a template edit; every cached hash is dropped.
    pub fn set_edit(&self, edit: Option<TemplateEdit>) {
        *self.edit.lock().unwrap() = edit;
        self.cache.lock().unwrap().clear();
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The templates' epoch (see [`Renderer::set_edit`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    fn finish(&self, file: TemplateFile, mut s: String) -> String {
        if let Some(edit) = self.edit.lock().unwrap().as_ref() {
            edit(file, &mut s);
        }
        s
    }

    /// The domain XML, with the marker carrying `generation` and `spec_hash`.
    pub fn domain_xml(&self, i: &Inputs, generation: i64, spec_hash: &str) -> String {
        let shape = Shape::default();
        self.domain_xml_marked(i, &self.installation, generation, spec_hash, &shape)
    }

    /// The hosting's domain XML for its first start as a clone: loading the
    /// template's memory file `memory`, with a VM generation ID. Only the
    /// host side (names, ports, volumes, console) differs from the
    /// template's XML, so the saved machine fits it.
    pub fn clone_xml(
        &self,
        i: &Inputs,
        generation: i64,
        spec_hash: &str,
        memory: &std::path::Path,
    ) -> String {
        let shape = Shape {
            genid: true,
            incoming: Some(memory.display().to_string()),
            ..Shape::default()
        };
        self.domain_xml_marked(i, &self.installation, generation, spec_hash, &shape)
    }

    /// A template's domain XML: `i` (a generic hosting of the template's
    /// class) under the template's own names, SSH forwarded on loopback only.
    pub fn template_xml(&self, i: &Inputs, names: &TemplateNames) -> String {
        let shape = Shape {
            genid: true,
            template: Some(names.clone()),
            ..Shape::default()
        };
        self.domain_xml_marked(i, &self.installation, 0, "template", &shape)
    }

    fn domain_xml_marked(
        &self,
        i: &Inputs,
        installation: &str,
        generation: i64,
        spec_hash: &str,
        shape: &Shape,
    ) -> String {
        let t = shape.template.as_ref();
        let name = t.map_or_else(|| domain_name(i.id), |t| t.name.clone());
        let uuid = t.map_or_else(|| i.id.to_string(), |t| t.uuid.to_string());
        let console = t.map_or_else(|| console_log(i.id), |t| format!("{}.log", t.name));
        let xml = DomainXml {
            domain_type: self.domain_type.as_str(),
            name: &name,
            ns: MARKER_NS,
            instance: &self.instance,
            installation,
            hosting_id: uuid.clone(),
            uuid,
            generation,
            spec_hash,
            genid: shape.genid,
            incoming: shape.incoming.clone(),
            memory_mib: i.spec.memory_mib,
            vcpus: i.spec.vcpus,
            kernel: i.image.kernel.as_ref().map(|p| p.display().to_string()),
            initrd: i.image.initrd.as_ref().map(|p| p.display().to_string()),
            cmdline: i.image.cmdline.clone(),
            storage_pool: &self.storage_pool,
            disk_volume: &t.map_or_else(|| disk_volume(i.id), |t| t.disk.clone()),
            seed_volume: &t.map_or_else(|| seed_volume(i.id), |t| t.seed.clone()),
            ssh_bind: match t {
                Some(_) => "127.0.0.1".to_string(),
                None => i
                    .ssh_address
                    .map_or_else(|| self.ssh_bind.clone(), |a| a.to_string()),
            },
            ssh_port: i.ssh_port,
            http_port: i.http_port,
            http_bind: i.address.ip().to_string(),
            console_log: self.console_dir.join(console).display().to_string(),
            guest_agent: i.image.guest_agent,
            cpu_quota_us: self.limits.cpu_percent * 1000,
            disk_bytes_sec: self.limits.disk_bytes_per_sec,
            disk_iops_sec: self.limits.disk_iops,
            virtio_console: i
                .image
                .cmdline
                .as_deref()
                .is_some_and(|c| c.split_whitespace().any(|a| a == "console=hvc0")),
        }
        .render()
        .expect("domain template renders");
        self.finish(TemplateFile::Domain, xml)
    }

    fn render<T: Template>(&self, file: TemplateFile, t: T) -> String {
        let s = t
            .render()
            .unwrap_or_else(|e| panic!("{file:?} template renders: {e}"));
        self.finish(file, s)
    }

    /// The cloud-init seed files.
    pub fn seed(&self, i: &Inputs) -> SeedFiles {
        let cmd = ssh_command(&self.public_host, i.ssh_port);
        let url = self.sites.web_url(i.username, i.user_id);
        let welcome = WelcomeHtml {
            username: i.username.as_str(),
            ssh_command: &cmd,
            web_url: &url,
            ssh_port: i.ssh_port,
            ssh_host: &self.public_host,
        };
        let keys: Vec<&str> = i.spec.ssh_public_keys.iter().map(|k| k.as_str()).collect();
        let sshd = self.render(TemplateFile::Sshd, SshdConf);
        let nft = self.render(TemplateFile::Nftables, NftablesConf);
        let html = self.render(TemplateFile::Welcome, welcome);
        let user_data = UserData {
            hosting_id: i.id.to_string(),
            hostname: yaml_quote(&i.username.hostname()),
            gecos: yaml_quote(&format!("hostd user {}", i.username.as_str())),
            sshd_config: yaml_quote(&sshd),
            nftables: yaml_quote(&nft),
            welcome_html: yaml_quote(&html),
        };
        let meta_data = MetaData {
            instance_id: yaml_quote(&match i.from_warm_pool {
                true => format!("hostd-{}-{}", i.id, i.user_id),
                false => format!("hostd-{}", i.id),
            }),
            hostname: yaml_quote(&i.username.hostname()),
        };
        SeedFiles {
            user_data: self.render(TemplateFile::UserData, user_data),
            meta_data: self.render(TemplateFile::MetaData, meta_data),
            network_config: self.render(TemplateFile::NetworkConfig, NetworkConfig),
            authorized_keys: keys.iter().map(|k| format!("{k}\n")).collect(),
            // The username is validated ([a-z0-9_-]), so its host form is a
            // plain label; the guest unit still treats it as data.
            plain: vec![
                ("hostname", format!("{}\n", i.username.hostname())),
                ("sshd.conf", sshd),
                ("nftables.conf", nft),
                ("index.html", html),
            ],
        }
    }

    /// The desired hashes of a hosting (cached while its inputs are unchanged).
    pub fn hashes(&self, i: &Inputs) -> Hashes {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        i.hash(&mut h);
        let fingerprint = h.finish();
        if let Some((f, hashes)) = self.cache.lock().unwrap().get(&i.id) {
            if *f == fingerprint {
                return hashes.clone();
            }
        }
        // The marker's own fields are fixed here so they never feed the hash.
        let xml = self.domain_xml_marked(i, "", 0, "", &Shape::default());
        let s = self.seed(i);
        let hashes = Hashes {
            domain: short_hash(&[&xml]),
            seed: {
                let mut parts: Vec<&str> = vec![
                    &s.user_data,
                    &s.meta_data,
                    &s.network_config,
                    &s.authorized_keys,
                ];
                for (name, content) in &s.plain {
                    parts.push(name);
                    parts.push(content);
                }
                short_hash(&parts)
            },
        };
        self.cache
            .lock()
            .unwrap()
            .insert(i.id, (fingerprint, hashes.clone()));
        hashes
    }

    /// Forgets a deleted hosting's cached hashes.
    pub fn forget(&self, id: HostingId) {
        self.cache.lock().unwrap().remove(&id);
    }
}
