//! Askama templates (files in `templates/`) and the values they are rendered
//! from. XML templates are auto-escaped; YAML values are passed pre-quoted
//! (JSON string syntax is a valid YAML double-quoted scalar), so nothing a
//! user typed can change the structure of any generated file.

use askama::Template;

/// XML namespace of hostd's ownership marker in domain `<metadata>`.
/// The target device of a hosting's disk in `templates/domain.xml`.
pub const DISK_DEV: &str = "vda";
/// The target device of its cloud-init seed in `templates/domain.xml`.
pub const SEED_DEV: &str = "vdb";

pub const MARKER_NS: &str = "https://hostd.dev/xmlns/hosting/v1";

#[derive(Template)]
#[template(path = "domain.xml")]
pub struct DomainXml<'a> {
    pub domain_type: &'a str,
    pub name: &'a str,
    pub ns: &'a str,
    pub instance: &'a str,
    pub installation: &'a str,
    pub hosting_id: String,
    /// The domain's UUID: the hosting id, or a template's own.
    pub uuid: String,
    pub generation: i64,
    pub spec_hash: &'a str,
    /// A VM generation ID device (`<genid/>`, a new random id at every
    /// define or create): templates and the clones restored from them, so
    /// a clone's kernel learns it is a copy and reseeds its RNG.
    pub genid: bool,
    /// Start by loading this memory file (`-incoming file:…`): a clone's
    /// first start from a template.
    pub incoming: Option<String>,
    pub memory_mib: crate::domain::MemoryMib,
    pub vcpus: crate::domain::Vcpus,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub storage_pool: &'a str,
    pub disk_volume: &'a str,
    pub seed_volume: &'a str,
    pub ssh_bind: String,
    /// Address the guest's HTTP port is forwarded on (its node's address).
    pub http_bind: String,
    pub ssh_port: u16,
    pub http_port: u16,
    pub console_log: String,
    /// A virtio-serial channel for the QEMU guest agent (images that run it).
    pub guest_agent: bool,
    /// The console log on a virtio console (`hvc0`) instead of the emulated
    /// UART, for kernels booted with `console=hvc0`: under TCG every byte
    /// written to a 16550 costs an emulated I/O exit (measured: 3.6 s of a
    /// 22 s boot).
    pub virtio_console: bool,
    /// CPU bandwidth per vCPU thread within each 100 ms period, µs.
    pub cpu_quota_us: u32,
    /// The disk's throttle: bytes and operations per second.
    pub disk_bytes_sec: u64,
    pub disk_iops_sec: u64,
}

#[derive(Template)]
#[template(path = "user-data.yaml", escape = "none")]
pub struct UserData {
    pub hosting_id: String,
    pub hostname: String,
    pub gecos: String,
    pub sshd_config: String,
    pub nftables: String,
    pub welcome_html: String,
}

#[derive(Template)]
#[template(path = "meta-data.yaml", escape = "none")]
pub struct MetaData {
    pub instance_id: String,
    pub hostname: String,
}

#[derive(Template)]
#[template(path = "network-config.yaml", escape = "none")]
pub struct NetworkConfig;

#[derive(Template)]
#[template(path = "sshd.conf", escape = "none")]
pub struct SshdConf;

#[derive(Template)]
#[template(path = "nftables.conf", escape = "none")]
pub struct NftablesConf;

#[derive(Template)]
#[template(path = "welcome.html")]
pub struct WelcomeHtml<'a> {
    pub username: &'a str,
    pub ssh_command: &'a str,
    pub web_url: &'a str,
    pub ssh_port: u16,
    pub ssh_host: &'a str,
}

#[derive(Template)]
#[template(path = "route.map", escape = "none")]
pub struct RouteMap {
    pub hosting_id: String,
    pub user_id: String,
    /// The guest's forwarded address (`127.0.0.1:<port>`), or `stopped` for
    /// the 503 "stopped" page.
    pub upstream: String,
    /// The tenant's own host name (a validated DNS name), if host routing is on.
    pub hosts: Vec<String>,
    /// `hsts:<host> 1;` entries: HSTS on the hosts over HTTPS.
    pub hsts: bool,
}

#[derive(Template)]
#[template(path = "nginx-main.conf", escape = "none")]
pub struct NginxMainConf {
    pub pid_file: String,
    pub error_log: String,
    pub access_log: String,
    /// The per-site statistics log hostd reads (`HOSTD_NGINX_SITE_LOG`).
    pub site_log: Option<String>,
    pub temp_dir: String,
    pub listen: String,
    pub routes_dir: String,
    /// nginx's `map_hash_max_size` (the route maps hold two keys per hosting).
    pub map_hash_max_size: u32,
    /// nginx's `map_hash_bucket_size`.
    pub map_hash_bucket_size: u32,
    /// `HOSTD_SITES_DOMAIN` as a regex, to answer 404 for unknown names under it.
    pub sites_domain_regex: Option<String>,
    /// The HTTPS listener, if any.
    pub tls: Option<NginxTls>,
    /// The dashboard's own server, if any.
    pub panel: Option<NginxPanel>,
}

/// The dashboard's server block (`HOSTD_PANEL_HOST`).
pub struct NginxPanel {
    /// Its host name (a validated DNS name).
    pub host: String,
    /// The API listener it proxies to.
    pub upstream: String,
}

/// The TLS half of the host nginx config.
pub struct NginxTls {
    /// `listen` address of the TLS listener.
    pub listen: String,
    /// `:<port>` when the TLS port is not 443 (for redirects), else empty.
    pub port_suffix: String,
    /// hostd's TLS directory: `*.map` (name → certificate file), `challenges/`.
    pub dir: String,
    /// The certificate served to names that have none (hostd writes it).
    pub fallback: String,
}

/// Quotes any string as a YAML double-quoted scalar. Everything outside
/// printable ASCII-safe territory is escaped, including the characters YAML
/// (unlike JSON) treats as line breaks: NEL (U+0085), LS (U+2028), PS (U+2029).
pub fn yaml_quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                o.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_quote_survives_hostile_input() {
        let hostile = "a\"\n- evil: true\n#x: 'y' \u{2028}\u{85}\t\\ \u{7} é";
        let doc = format!("k: {}\n", yaml_quote(hostile));
        let v: serde_norway::Value = serde_norway::from_str(&doc).unwrap();
        assert_eq!(v["k"].as_str().unwrap(), hostile);
    }

    fn xml(genid: bool, incoming: Option<&str>) -> DomainXml<'static> {
        DomainXml {
            domain_type: "qemu",
            name: "hostd-x",
            ns: MARKER_NS,
            instance: "t",
            installation: "i",
            hosting_id: "id".into(),
            uuid: "id".into(),
            genid,
            incoming: incoming.map(String::from),
            generation: 1,
            spec_hash: "h",
            memory_mib: crate::domain::MemoryMib::parse(512).unwrap(),
            vcpus: crate::domain::Vcpus::parse(1).unwrap(),
            kernel: Some("/a/<b>&'c".into()),
            initrd: None,
            cmdline: None,
            storage_pool: "p",
            cpu_quota_us: 50_000,
            disk_bytes_sec: 1 << 20,
            disk_iops_sec: 100,
            disk_volume: "d",
            seed_volume: "s",
            ssh_bind: "127.0.0.1".into(),
            http_bind: "127.0.0.1".into(),
            ssh_port: 10000,
            http_port: 30000,
            console_log: "/tmp/x.log".into(),
            guest_agent: true,
            virtio_console: false,
        }
    }

    #[test]
    fn a_clones_first_start_loads_the_memory_file_and_nothing_else_does() {
        let plain = xml(false, None).render().unwrap();
        assert!(
            !plain.contains("genid") && !plain.contains("qemu:"),
            "{plain}"
        );
        let clone = xml(true, Some("/s/t/<m>&'.bin")).render().unwrap();
        assert!(clone.contains("\n  <genid/>\n"), "{clone}");
        assert!(
            clone.contains("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"),
            "{clone}"
        );
        assert!(clone.contains("<qemu:arg value='-incoming'/>"), "{clone}");
        let arg = &clone[clone.find("value='file:").unwrap()..];
        let arg = &arg[..arg.find("/>").unwrap()];
        assert!(
            !arg[6..].contains('<') && !arg[12..arg.len() - 1].contains('\''),
            "{arg}"
        );
        // Only these lines differ: the saved machine fits the hosting's own XML.
        let extra: Vec<&str> = clone
            .lines()
            .filter(|l| !plain.lines().any(|p| p == *l))
            .collect();
        assert_eq!(extra.len(), 6, "{extra:?}");
        let mut r = quick_xml::Reader::from_str(&clone);
        while !matches!(
            r.read_event().expect("well-formed"),
            quick_xml::events::Event::Eof
        ) {}
    }

    #[test]
    fn domain_xml_escapes() {
        let x = xml(false, None).render().unwrap();
        assert!(x.contains("name='org.qemu.guest_agent.0'"), "{x}");
        // Per-guest limits: CPU per vCPU, the data disk's throttle.
        assert!(x.contains("<quota>50000</quota>"), "{x}");
        let disk = &x[x.find("volume='d'").unwrap()..];
        let disk = &disk[..disk.find("</disk>").unwrap()];
        assert!(
            disk.contains("<total_bytes_sec>1048576</total_bytes_sec>"),
            "{disk}"
        );
        assert!(
            disk.contains("<total_iops_sec>100</total_iops_sec>"),
            "{disk}"
        );
        assert!(
            x.contains("/a/&#60;b&#62;&#38;&#39;c") || x.contains("/a/&lt;b&gt;&amp;&#39;c"),
            "{x}"
        );
        // The backup job names the disks by these targets.
        for (dev, volume) in [(DISK_DEV, "'d'"), (SEED_DEV, "'s'")] {
            let at = x.find(&format!("volume={volume}")).expect("volume");
            let target = &x[at..x[at..].find("</disk>").unwrap() + at];
            assert!(target.contains(&format!("<target dev='{dev}'")), "{target}");
        }
    }
}
