//! The image catalogue: maps an image name (as used in a hosting spec) to the
//! files that boot it. Read from `HOSTD_IMAGES_FILE` (YAML) when present; the
//! built-in default is `debian-12`, built by `scripts/build-image.sh` into
//! `$HOSTD_STATE_DIR/images/debian-12/`, and `debian-12-cloudinit` once
//! `scripts/build-image.sh debian-12-cloudinit` has built it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::ImageName;

/// How to boot one image.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Base disk; each hosting gets a qcow2 overlay of it.
    pub disk: PathBuf,
    /// Format of the base disk (`qcow2` or `raw`).
    #[serde(default = "default_format")]
    pub format: String,
    /// Kernel for direct kernel boot; absent means the disk boots by itself (BIOS).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// The image runs the QEMU guest agent and hostd's `hostd-boot --live`,
    /// so a running guest can apply a new seed without a reboot (the warm
    /// pool's claim). Set by an operator's catalogue entry, or read from the
    /// `manifest.json` beside a built image's disk when it is pinned.
    #[serde(default)]
    pub guest_agent: bool,
}

fn default_format() -> String {
    "qcow2".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    images: BTreeMap<String, ImageEntry>,
}

/// The set of known images.
#[derive(Debug, Clone)]
pub struct Catalog {
    images: BTreeMap<String, ImageEntry>,
}

/// Errors of the image catalogue.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image '{0}'")]
    Unknown(String),
    #[error("image '{name}' is not built: {path} is missing (run scripts/build-image.sh)")]
    Missing { name: String, path: String },
    #[error("image catalogue {path}: {message}")]
    Catalog { path: String, message: String },
}

impl ImageEntry {
    /// Checks that a pinned entry's files still exist.
    pub fn check(&self, name: &ImageName) -> Result<(), ImageError> {
        for p in [Some(&self.disk), self.kernel.as_ref(), self.initrd.as_ref()]
            .into_iter()
            .flatten()
        {
            if !p.exists() {
                return Err(ImageError::Missing {
                    name: name.as_str().into(),
                    path: p.display().to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The built-in image configured by cloud-init instead of `hostd-boot`.
pub const CLOUDINIT_IMAGE: &str = "debian-12-cloudinit";

/// The kernel command line of the built-in `debian-12` (pinned with each
/// disk: hostings created before a change keep theirs). Found by starving
/// guests of CPU (issue 30, docs/architecture.md "Console"):
/// * `console=hvc0`: a virtio console (see `templates::DomainXml`). It is a
///   module, so the initramfs runs with no console at all ("unable to open
///   an initial console"): whatever it prints is lost, and if it gives up
///   (no root device in time) its emergency shell waits unseen forever.
/// * `panic=10`: so the initramfs (and the kernel) reboot after a failure
///   instead; the guest tries again by itself, and hostd's boot restarts
///   stay the backstop.
/// * no `quiet`, `systemd.show_status=auto`: the kernel's messages from the
///   console's start on and systemd's progress reach the console log, so a
///   boot that stalls shows where (with `quiet` the log of a boot that had
///   not reached its login prompt was empty, whatever the cause).
/// * `systemd.default_timeout_start_sec=600`: a starved guest's early clock
///   can run fast (measured: kernel timestamps of 951 s at the root mount
///   about two minutes after start), and systemd's 90 s job timeouts then
///   fail units of a boot that is only slow; hostd's readiness deadline
///   decides instead.
pub const BUILTIN_CMDLINE: &str = "root=/dev/vda rw console=hvc0 panic=10 \
     systemd.show_status=auto systemd.default_timeout_start_sec=600";

impl Catalog {
    /// The built-in catalogue: `debian-12` under the state directory, and
    /// `debian-12-cloudinit` (configured by cloud-init) once it is built
    /// (`scripts/build-image.sh debian-12-cloudinit`).
    pub fn builtin(state_dir: &Path) -> Catalog {
        let entry = |name: &str| {
            let dir = state_dir.join("images").join(name);
            ImageEntry {
                disk: dir.join("disk.qcow2"),
                format: "qcow2".into(),
                kernel: Some(dir.join("vmlinuz")),
                initrd: Some(dir.join("initrd.img")),
                cmdline: Some(BUILTIN_CMDLINE.into()),
                guest_agent: false,
            }
        };
        let mut images = BTreeMap::new();
        images.insert("debian-12".to_string(), entry("debian-12"));
        let cloudinit = entry(CLOUDINIT_IMAGE);
        if cloudinit.disk.with_file_name("manifest.json").exists() {
            images.insert(CLOUDINIT_IMAGE.to_string(), cloudinit);
        }
        Catalog { images }
    }

    /// Loads `file` if it exists (its entries override the built-in ones).
    pub fn load(file: &Path, state_dir: &Path) -> Result<Catalog, ImageError> {
        let mut cat = Catalog::builtin(state_dir);
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let parsed: CatalogFile =
                    serde_norway::from_str(&text).map_err(|e| ImageError::Catalog {
                        path: file.display().to_string(),
                        message: e.to_string(),
                    })?;
                for (name, entry) in parsed.images {
                    ImageName::parse(&name).map_err(|e| ImageError::Catalog {
                        path: file.display().to_string(),
                        message: format!("image name '{name}': {}", e.message),
                    })?;
                    cat.images.insert(name, entry);
                }
                Ok(cat)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(cat),
            Err(e) => Err(ImageError::Catalog {
                path: file.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    pub fn get(&self, name: &ImageName) -> Result<&ImageEntry, ImageError> {
        self.images
            .get(name.as_str())
            .ok_or_else(|| ImageError::Unknown(name.as_str().to_string()))
    }

    /// The entry, after checking its files exist.
    pub fn resolve(&self, name: &ImageName) -> Result<&ImageEntry, ImageError> {
        let e = self.get(name)?;
        e.check(name)?;
        Ok(e)
    }

    /// The entry with every path resolved (symlinks followed), i.e. pinned to
    /// the image version installed now. `build-image.sh` installs each version
    /// in its own directory and points `disk.qcow2` & co. at the newest, so a
    /// pinned entry keeps naming the files an existing hosting was built from.
    pub fn pin(&self, name: &ImageName) -> Result<ImageEntry, ImageError> {
        let e = self.resolve(name)?;
        let canon = |p: &PathBuf| {
            std::fs::canonicalize(p).map_err(|err| ImageError::Missing {
                name: name.as_str().into(),
                path: format!("{}: {err}", p.display()),
            })
        };
        let disk = canon(&e.disk)?;
        let guest_agent = e.guest_agent || manifest_says_agent(&disk);
        Ok(ImageEntry {
            disk,
            format: e.format.clone(),
            kernel: e.kernel.as_ref().map(canon).transpose()?,
            initrd: e.initrd.as_ref().map(canon).transpose()?,
            cmdline: e.cmdline.clone(),
            guest_agent,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.images.keys().map(|s| s.as_str())
    }
}

/// Whether the `manifest.json` beside a built image's disk declares the guest
/// agent (`"guest_agent": true`, written by `scripts/build-image.sh`).
fn manifest_says_agent(disk: &Path) -> bool {
    let Some(dir) = disk.parent() else {
        return false;
    };
    std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("guest_agent").and_then(|a| a.as_bool()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_operator_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("catalog.yaml");
        std::fs::write(
            &f,
            "images:\n  ubuntu-22.04:\n    disk: /srv/jammy.img\n    format: qcow2\n",
        )
        .unwrap();
        let c = Catalog::load(&f, dir.path()).unwrap();
        assert!(c
            .get(&ImageName::parse("ubuntu-22.04").unwrap())
            .unwrap()
            .kernel
            .is_none());
        assert!(c.get(&ImageName::parse("debian-12").unwrap()).is_ok());
        assert!(matches!(
            c.resolve(&ImageName::parse("debian-12").unwrap()),
            Err(ImageError::Missing { .. })
        ));
        std::fs::write(&f, "images:\n  ubuntu:\n    disk: /x\n    bogus: 1\n").unwrap();
        assert!(Catalog::load(&f, dir.path()).is_err());
    }

    #[test]
    fn the_cloud_init_image_is_offered_once_built() {
        let dir = tempfile::tempdir().unwrap();
        let name = ImageName::parse(CLOUDINIT_IMAGE).unwrap();
        let c = Catalog::builtin(dir.path());
        assert!(matches!(c.get(&name), Err(ImageError::Unknown(_))));
        let built = dir.path().join("images").join(CLOUDINIT_IMAGE);
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(built.join("manifest.json"), r#"{"guest_agent": false}"#).unwrap();
        let c = Catalog::builtin(dir.path());
        let e = c.get(&name).unwrap();
        assert_eq!(e.disk, built.join("disk.qcow2"));
        assert_eq!(e.cmdline.as_deref(), Some(BUILTIN_CMDLINE));
        assert!(c.names().any(|n| n == CLOUDINIT_IMAGE));
    }
}
