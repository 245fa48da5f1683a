//! Domain types: everything the user typed is parsed here, at the edge, into
//! types that can only hold valid values. The store and the reconciler only ever
//! see these types, never raw strings.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod status;
pub use status::*;

/// Why a piece of input was refused. The message is safe to show to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The input field that was refused.
    pub field: &'static str,
    /// What is wrong with it, in words a user understands.
    pub message: String,
}

impl ValidationError {
    /// `Ok` when `ok`, otherwise the error for `field` breaking `rule`.
    pub fn check(ok: bool, field: &'static str, rule: &str) -> Result<(), ValidationError> {
        if ok {
            Ok(())
        } else {
            Err(ValidationError::new(field, rule))
        }
    }

    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A syntactically valid e-mail address, stored as typed (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        let err = |m: &str| Err(ValidationError::new("email", m));
        if s.is_empty() || s.len() > 254 {
            return err("must be 1 to 254 characters");
        }
        let Some((local, domain)) = s.split_once('@') else {
            return err("must contain '@'");
        };
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return err("is not a valid address");
        }
        if !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return err("domain part is not valid");
        }
        let ok_local = local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let ok_domain = domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !ok_local || !ok_domain {
            return err("contains characters that are not allowed");
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 3–32 characters of `[a-z0-9_-]`, starting with a letter. Safe in hostnames,
/// HTML, YAML and file names by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (3..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        let rule = "must be 3-32 characters of a-z, 0-9, '_' or '-', starting with a letter";
        ValidationError::check(ok, "username", rule).map(|_| Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A hostname derived from the username (`_` is not valid in hostnames).
    pub fn hostname(&self) -> String {
        self.0.replace('_', "-")
    }
}

/// A password of acceptable length. Never logged, never stored in clear.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    /// Normalises to NFC (so the same password typed on two systems is the
    /// same bytes) and checks: at least 8 characters, at most 72 bytes
    /// (bcrypt ignores the rest: longer input is refused, never truncated),
    /// no NUL or other control characters.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        use unicode_normalization::UnicodeNormalization;
        if s.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "password",
                "must not contain control characters (NUL, tab, newline, ...)",
            ));
        }
        let s: String = s.nfc().collect();
        if s.chars().count() < 8 {
            return Err(ValidationError::new(
                "password",
                "must be at least 8 characters",
            ));
        }
        if s.len() > 72 {
            return Err(ValidationError::new("password", "must be at most 72 bytes"));
        }
        Ok(Self(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
    pub fn from_db(s: &str) -> Role {
        if s == "admin" {
            Role::Admin
        } else {
            Role::User
        }
    }
}

/// An OpenSSH public key line (`type base64 [comment]`), checked for a known
/// key type, valid base64 and no characters that could break out of YAML.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshPublicKey(String);

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl SshPublicKey {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let err = |m: &str| Err(ValidationError::new("ssh_public_keys", m));
        let s = s.trim();
        if s.len() > 16 * 1024 {
            return err("key is too long");
        }
        if s.chars().any(|c| c.is_control()) {
            return err("key must be a single line");
        }
        let mut parts = s.splitn(3, ' ');
        let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
            return err("expected '<type> <base64> [comment]'");
        };
        if !SSH_KEY_TYPES.contains(&kind) {
            return err("unsupported key type");
        }
        if data.len() < 16
            || !data
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        {
            return err("key data is not base64");
        }
        let comment = parts.next().unwrap_or("").trim();
        if !comment.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return err("comment must be printable ASCII");
        }
        let mut out = format!("{kind} {data}");
        if !comment.is_empty() {
            out.push(' ');
            out.push_str(comment);
        }
        Ok(Self(out))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a guest image in the image catalogue: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName(String);

impl ImageName {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && !s.contains("..");
        let rule = "must be 1-64 characters of a-z, 0-9, '.', '_' or '-'";
        ValidationError::check(ok, "image", rule).map(|_| Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a create-only field was refused in an update.
const CREATE_ONLY: &str = "cannot be changed after creation";

/// Limits of a hosting spec, used by validation and by the CRD/API schema
/// (`crd.rs` refers to these constants).
pub mod limits {
    pub const VCPUS: (i32, i32) = (1, 16);
    pub const MEMORY_MIB: (i32, i32) = (256, 65536);
    pub const DISK_GIB: (i32, i32) = (1, 1024);
    pub const MAX_SSH_KEYS: usize = 32;
}

/// The desired shape of a hosting, fully validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostingSpec {
    pub vcpus: i32,
    pub memory_mib: i32,
    pub disk_gib: i32,
    pub image: ImageName,
    pub ssh_public_keys: Vec<SshPublicKey>,
    pub running: bool,
}

impl Default for HostingSpec {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 10,
            image: ImageName("debian-12".into()),
            ssh_public_keys: vec![],
            running: true,
        }
    }
}

fn in_range(field: &'static str, v: i64, (lo, hi): (i32, i32)) -> Result<i32, ValidationError> {
    if v < lo as i64 || v > hi as i64 {
        Err(ValidationError::new(
            field,
            format!("must be between {lo} and {hi}"),
        ))
    } else {
        Ok(v as i32)
    }
}

/// Raw, untrusted spec fields as they arrive from a client; every field
/// optional (the body of `POST /host` and `PATCH /host/my`). The schema's
/// bounds are documentation; `apply` is what enforces them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecPatch {
    /// Virtual CPUs.
    #[schema(minimum = 1, maximum = 16)]
    pub vcpus: Option<i64>,
    /// Memory in MiB.
    #[schema(minimum = 256, maximum = 65536)]
    pub memory_mib: Option<i64>,
    /// Disk size in GiB (at creation only).
    #[schema(minimum = 1, maximum = 1024)]
    pub disk_gib: Option<i64>,
    /// Image from the catalogue (at creation only).
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub image: Option<String>,
    /// OpenSSH public keys for the `ubuntu` user (at most 32).
    #[schema(max_items = 32)]
    pub ssh_public_keys: Option<Vec<String>>,
    /// Whether the VM should run.
    pub running: Option<bool>,
}

impl SpecPatch {
    /// Applies the patch on top of `base`, validating every field it sets.
    /// `allow_create_only` permits fields that cannot change after creation.
    pub fn apply(
        &self,
        base: &HostingSpec,
        allow_create_only: bool,
    ) -> Result<HostingSpec, ValidationError> {
        let mut spec = base.clone();
        if let Some(v) = self.vcpus {
            spec.vcpus = in_range("vcpus", v, limits::VCPUS)?;
        }
        if let Some(v) = self.memory_mib {
            spec.memory_mib = in_range("memory_mib", v, limits::MEMORY_MIB)?;
        }
        if let Some(v) = self.disk_gib {
            let v = in_range("disk_gib", v, limits::DISK_GIB)?;
            let frozen = !allow_create_only && v != base.disk_gib;
            ValidationError::check(!frozen, "disk_gib", CREATE_ONLY)?;
            spec.disk_gib = v;
        }
        if let Some(img) = &self.image {
            let img = ImageName::parse(img)?;
            let frozen = !allow_create_only && img != base.image;
            ValidationError::check(!frozen, "image", CREATE_ONLY)?;
            spec.image = img;
        }
        if let Some(keys) = &self.ssh_public_keys {
            if keys.len() > limits::MAX_SSH_KEYS {
                return Err(ValidationError::new(
                    "ssh_public_keys",
                    "too many keys (at most 32)",
                ));
            }
            let mut parsed = Vec::with_capacity(keys.len());
            for k in keys {
                let k = SshPublicKey::parse(k)?;
                if !parsed.contains(&k) {
                    parsed.push(k);
                }
            }
            spec.ssh_public_keys = parsed;
        }
        if let Some(r) = self.running {
            spec.running = r;
        }
        Ok(spec)
    }
}

/// Kind of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Ssh,
    Http,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Ssh => "ssh",
            PortKind::Http => "http",
        }
    }
}

/// An inclusive TCP port range, e.g. `10000-20000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or("expected '<start>-<end>'")?;
        let start: u16 = a.trim().parse().map_err(|_| "start is not a port number")?;
        let end: u16 = b.trim().parse().map_err(|_| "end is not a port number")?;
        if start == 0 || start > end {
            return Err("start must be between 1 and end".into());
        }
        Ok(Self { start, end })
    }
    pub fn len(&self) -> u32 {
        (self.end - self.start) as u32 + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn overlaps(&self, o: &PortRange) -> bool {
        self.start <= o.end && o.start <= self.end
    }
}

/// Identifier newtypes, so a user id is never passed where a hosting id belongs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct HostingId(pub Uuid);

/// A backup of a hosting's disk.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct BackupId(pub Uuid);

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl fmt::Display for HostingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// This installation's per-hosting maximums (tighter than [`limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub vcpus: i32,
    pub memory_mib: i32,
    pub disk_gib: i32,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 20,
        }
    }
}

impl Quota {
    /// Refuses a spec above any maximum, naming the field and its limit. In
    /// an update (`before`), a value that does not grow is always accepted,
    /// so lowering a maximum never blocks other changes to existing hostings.
    pub fn check(
        &self,
        before: Option<&HostingSpec>,
        spec: &HostingSpec,
    ) -> Result<(), ValidationError> {
        let old = |f: fn(&HostingSpec) -> i32| before.map(f).unwrap_or(0);
        for (field, value, was, max, unit) in [
            ("vcpus", spec.vcpus, old(|s| s.vcpus), self.vcpus, ""),
            (
                "memory_mib",
                spec.memory_mib,
                old(|s| s.memory_mib),
                self.memory_mib,
                " MiB",
            ),
            (
                "disk_gib",
                spec.disk_gib,
                old(|s| s.disk_gib),
                self.disk_gib,
                " GiB",
            ),
        ] {
            let rule = format!("must be at most {max}{unit} on this installation");
            ValidationError::check(value <= max || value <= was, field, &rule)?;
        }
        Ok(())
    }
}

/// The SSH command a user runs to reach their hosting.
pub fn ssh_command(public_host: &str, port: u16) -> String {
    format!("ssh -p {port} ubuntu@{public_host}")
}

/// Where sites are served: always the path form `<public url>/<user id>/`
/// (one origin shared by every tenant), and, with a sites domain, the host
/// form `<scheme>://<user>.<sites domain>[:port]/` (one origin per tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteAddress {
    /// `HOSTD_PUBLIC_URL`, without a trailing slash.
    pub public_url: String,
    /// `HOSTD_SITES_DOMAIN`, validated as a lowercase DNS name.
    pub sites_domain: Option<String>,
}

impl SiteAddress {
    /// The host name of a tenant's own origin, if host routing is on.
    pub fn vhost(&self, user: &Username) -> Option<String> {
        let d = self.sites_domain.as_ref()?;
        Some(format!("{}.{d}", user.hostname()))
    }

    /// The address shown to the user: the host form when enabled.
    pub fn web_url(&self, user: &Username, user_id: UserId) -> String {
        match self.vhost(user) {
            Some(host) => {
                let (scheme, rest) = self.public_url.split_once("://").unwrap_or(("http", ""));
                let authority = rest.split('/').next().unwrap_or("");
                let port = authority
                    .rsplit_once(':')
                    .filter(|(h, _)| !h.ends_with(']') || authority.starts_with('['))
                    .map(|(_, p)| format!(":{p}"))
                    .filter(|p| p[1..].chars().all(|c| c.is_ascii_digit()))
                    .unwrap_or_default();
                format!("{scheme}://{host}{port}/")
            }
            None => format!("{}/{user_id}/", self.public_url),
        }
    }

    /// Validates a sites domain: lowercase DNS labels of a-z, 0-9 and '-'.
    pub fn parse_domain(s: &str) -> Result<String, String> {
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if ok {
            Ok(s.to_string())
        } else {
            Err("must be a lowercase DNS name such as sites.example.com".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("a_b-9").is_ok());
        for bad in [
            "ab",
            "9abc",
            "Alice",
            "a b c",
            "al/../x",
            "a<script>",
            &"a".repeat(33),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(Email::parse("a@example.com").is_ok());
        for bad in [
            "",
            "a",
            "a@b",
            "@b.com",
            "a@@b.com",
            "a@b..com",
            "a b@c.com",
            "a\"b@c.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_keys_reject_injection() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0 me@host";
        assert_eq!(SshPublicKey::parse(good).unwrap().as_str(), good);
        assert!(SshPublicKey::parse("ssh-ed25519 AAAA\n- evil: yaml").is_err());
        assert!(SshPublicKey::parse("ssh-dss AAAAB3NzaC1kc3MAAACBA").is_err());
        assert!(SshPublicKey::parse("ssh-ed25519 \"quoted\"").is_err());
    }

    #[test]
    fn spec_patch_validates_and_freezes_disk() {
        let base = HostingSpec::default();
        let p = SpecPatch {
            memory_mib: Some(1024),
            ..Default::default()
        };
        assert_eq!(p.apply(&base, false).unwrap().memory_mib, 1024);
        let p = SpecPatch {
            memory_mib: Some(1),
            ..Default::default()
        };
        assert!(p.apply(&base, false).is_err());
        let p = SpecPatch {
            disk_gib: Some(20),
            ..Default::default()
        };
        assert!(p.apply(&base, false).is_err());
        assert_eq!(p.apply(&base, true).unwrap().disk_gib, 20);
    }

    #[test]
    fn port_ranges() {
        assert_eq!(PortRange::parse("10000-20000").unwrap().len(), 10001);
        assert!(PortRange::parse("20-10").is_err());
        assert!(PortRange::parse("0-10").is_err());
        assert!(PortRange::parse("x").is_err());
    }
}
