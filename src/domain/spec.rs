//! A hosting's desired shape: its spec, the patch a client sends, the
//! installation's quota, SSH keys, image names and port ranges.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

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
    /// The key type (`ssh-ed25519`, …).
    pub fn kind(&self) -> &str {
        self.0.split(' ').next().unwrap_or_default()
    }
    /// The comment after the key data ("" when none).
    pub fn comment(&self) -> &str {
        self.0.splitn(3, ' ').nth(2).unwrap_or_default()
    }
    /// The fingerprint as `ssh-keygen -l` prints it (`SHA256:` and the
    /// unpadded base64 of the key blob's SHA-256).
    pub fn fingerprint(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        let data = self.0.split(' ').nth(1).unwrap_or_default();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_else(|_| data.as_bytes().to_vec());
        let sum = sha2::Sha256::digest(&blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sum)
        )
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

/// A resource quantity of a hosting: one type from the parsed request to
/// the domain XML (the store converts at its edge to Postgres `integer`).
/// Only values within the bounds exist.
macro_rules! quantity {
    ($(#[$doc:meta])* $name:ident, $field:literal, $lo:literal, $hi:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(u32);

        impl $name {
            /// The smallest value.
            pub const MIN: u32 = $lo;
            /// The largest value.
            pub const MAX: u32 = $hi;

            /// Parses a raw value (a client's, or a stored one), refusing
            /// one outside [`Self::MIN`]..=[`Self::MAX`].
            pub fn parse(v: i64) -> Result<Self, ValidationError> {
                if v < i64::from(Self::MIN) || v > i64::from(Self::MAX) {
                    return Err(ValidationError::new(
                        $field,
                        format!("must be between {} and {}", Self::MIN, Self::MAX),
                    ));
                }
                Ok(Self(v as u32))
            }

            /// The number.
            pub const fn get(self) -> u32 {
                self.0
            }

            /// As an `i32` (every value fits): Postgres `integer`, the CRD's `int32`.
            pub const fn as_i32(self) -> i32 {
                self.0 as i32
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

quantity!(
    /// Virtual CPUs of a hosting.
    Vcpus, "vcpus", 1, 16
);
quantity!(
    /// Memory of a hosting, MiB.
    MemoryMib, "memory_mib", 256, 65536
);
quantity!(
    /// Disk size of a hosting, GiB.
    DiskGib, "disk_gib", 1, 1024
);

/// Limits of a hosting spec, used by validation and by the CRD/API schema
/// (`crd.rs` checks its literals against these).
pub mod limits {
    use super::{DiskGib, MemoryMib, Vcpus};
    pub const VCPUS: (u32, u32) = (Vcpus::MIN, Vcpus::MAX);
    pub const MEMORY_MIB: (u32, u32) = (MemoryMib::MIN, MemoryMib::MAX);
    pub const DISK_GIB: (u32, u32) = (DiskGib::MIN, DiskGib::MAX);
    pub const MAX_SSH_KEYS: usize = 32;
}

/// The desired shape of a hosting, fully validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostingSpec {
    pub vcpus: Vcpus,
    pub memory_mib: MemoryMib,
    pub disk_gib: DiskGib,
    pub image: ImageName,
    pub ssh_public_keys: Vec<SshPublicKey>,
    pub running: bool,
    /// Send `Strict-Transport-Security` on the hosting's own names over HTTPS.
    pub hsts: bool,
}

impl Default for HostingSpec {
    fn default() -> Self {
        Self {
            vcpus: Vcpus(1),
            memory_mib: MemoryMib(512),
            disk_gib: DiskGib(10),
            image: ImageName("debian-12".into()),
            ssh_public_keys: vec![],
            running: true,
            hsts: false,
        }
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
    /// HSTS opt-in: send `Strict-Transport-Security: max-age=31536000` on the
    /// hosting's own names (`<user>.<sites domain>`, verified custom domains)
    /// when served over HTTPS. Browsers that saw it refuse plain HTTP to those
    /// names for a year, even after it is turned off. Never sent on the
    /// shared `/<user id>/` origin.
    pub hsts: Option<bool>,
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
            spec.vcpus = Vcpus::parse(v)?;
        }
        if let Some(v) = self.memory_mib {
            spec.memory_mib = MemoryMib::parse(v)?;
        }
        if let Some(v) = self.disk_gib {
            let v = DiskGib::parse(v)?;
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
        if let Some(h) = self.hsts {
            spec.hsts = h;
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

/// This installation's per-hosting maximums (tighter than [`limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub vcpus: Vcpus,
    pub memory_mib: MemoryMib,
    pub disk_gib: DiskGib,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            vcpus: Vcpus(2),
            memory_mib: MemoryMib(2048),
            disk_gib: DiskGib(20),
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
        let old = |f: fn(&HostingSpec) -> u32| before.map(f).unwrap_or(0);
        for (field, value, was, max, unit) in [
            (
                "vcpus",
                spec.vcpus.get(),
                old(|s| s.vcpus.get()),
                self.vcpus.get(),
                "",
            ),
            (
                "memory_mib",
                spec.memory_mib.get(),
                old(|s| s.memory_mib.get()),
                self.memory_mib.get(),
                " MiB",
            ),
            (
                "disk_gib",
                spec.disk_gib.get(),
                old(|s| s.disk_gib.get()),
                self.disk_gib.get(),
                " GiB",
            ),
        ] {
            let rule = format!("must be at most {max}{unit} on this installation");
            ValidationError::check(value <= max || value <= was, field, &rule)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SshPublicKey;

    #[test]
    fn a_keys_parts_and_fingerprint_match_ssh_keygen() {
        // `ssh-keygen -l -f` printed this key's fingerprint.
        let k = SshPublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIApcnVjzEMS6r3zLkxL55QpkySdkMyzbGi6Dcab8Nyi9 me@laptop",
        )
        .unwrap();
        assert_eq!(k.kind(), "ssh-ed25519");
        assert_eq!(k.comment(), "me@laptop");
        assert_eq!(
            k.fingerprint(),
            "SHA256:O0QDn+r5uGzxHFIX+YrDi/qvTT0DXQXKzaRi5ZwSGtw"
        );
    }
}
