//! Certificates on the host: hostd's TLS directory (`HOSTD_STATE_DIR/tls`).
//!
//! ```text
//! tls/                     0711 root
//!   acme-account-*.json    0600 root    the ACME account key
//!   certs.map              0644         host name → certificate file (nginx map)
//!   live/<name>.pem        0600 www-data chain + key, replaced by rename
//!   live/_fallback.pem     0600 www-data self-signed, for names without one
//!   live/_wildcard.pem     0600 www-data HOSTD_SITES_TLS_CERT + _KEY
//!   challenges/<token>     0644         HTTP-01 answers
//! ```
//!
//! nginx loads a certificate per handshake (variable `ssl_certificate`),
//! so its workers (`www-data`) own the files; a renewal is one rename and
//! no reload. Names are validated DNS names (tenant host names, custom
//! domains), never raw input, so they are safe as file names.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// The nginx workers' user (`templates/nginx-main.conf`).
pub const NGINX_USER: &str = "www-data";
/// The certificate for names that have none (relative to the TLS dir).
pub const FALLBACK_FILE: &str = "live/_fallback.pem";
/// The operator's wildcard certificate, copied (relative to the TLS dir).
pub const WILDCARD_FILE: &str = "live/_wildcard.pem";
/// The nginx map of served names.
pub const MAP_FILE: &str = "certs.map";

/// Writes `bytes` to `path` atomically (a temporary file renamed over it),
/// mode 0600, owned by `owner` (uid, gid) if given.
pub fn write_private(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The earliest expiry of the certificates in a PEM chain (`None`: no
/// parsable certificate).
pub fn not_after(pem: &[u8]) -> Option<DateTime<Utc>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .filter_map(|p| {
            let (_, cert) = x509_parser::parse_x509_certificate(&p.contents).ok()?;
            DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        })
        .min()
}

/// hostd's TLS directory.
#[derive(Debug, Clone)]
pub struct CertFiles {
    dir: PathBuf,
    /// The nginx workers' uid and gid (files they read are theirs).
    owner: Option<(u32, u32)>,
}

impl CertFiles {
    pub fn new(dir: &Path) -> Self {
        let owner = passwd_ids(NGINX_USER);
        CertFiles {
            dir: dir.to_path_buf(),
            owner,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directories (nginx's workers traverse them but cannot
    /// list `live/`) and the fallback certificate.
    pub fn prepare(&self) -> std::io::Result<()> {
        for (d, mode) in [
            (self.dir.clone(), 0o711),
            (self.dir.join("live"), 0o711),
            (self.dir.join("challenges"), 0o755),
        ] {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))?;
        }
        let fallback = self.dir.join(FALLBACK_FILE);
        if !fallback.exists() {
            let ck = rcgen::generate_simple_self_signed(vec!["hostd.invalid".to_string()])
                .map_err(std::io::Error::other)?;
            let pem = format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem());
            write_private(&fallback, pem.as_bytes(), self.owner)?;
        }
        Ok(())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join("live").join(format!("{name}.pem"))
    }

    /// Installs a certificate for `name` (chain, then key, in one file).
    pub fn install(&self, name: &str, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        let mut pem = chain_pem.trim_end().to_string();
        pem.push('\n');
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        write_private(&self.file(name), pem.as_bytes(), self.owner)
    }

    /// Copies the operator's wildcard certificate and key in; its expiry.
    pub fn install_wildcard(&self, cert: &Path, key: &Path) -> std::io::Result<DateTime<Utc>> {
        let chain = std::fs::read_to_string(cert)?;
        let key = std::fs::read_to_string(key)?;
        let expiry = not_after(chain.as_bytes()).ok_or_else(|| {
            std::io::Error::other(format!("{}: no certificate in it", cert.display()))
        })?;
        let pem = format!("{}\n{}\n", chain.trim_end(), key.trim_end());
        let path = self.dir.join(WILDCARD_FILE);
        if std::fs::read(&path).ok().as_deref() != Some(pem.as_bytes()) {
            write_private(&path, pem.as_bytes(), self.owner)?;
        }
        Ok(expiry)
    }

    /// The installed certificate of `name` and its expiry, if any.
    pub fn installed(&self, name: &str) -> Option<DateTime<Utc>> {
        not_after(&std::fs::read(self.file(name)).ok()?)
    }

    /// Names with an installed certificate (the fallback and wildcard aside).
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.join("live"))? {
            let n = e?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = n.strip_suffix(".pem") {
                if !stem.starts_with('_') && !stem.starts_with('.') {
                    out.push(stem.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Removes the certificate of a name no longer served.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The nginx map for `served` names (those with a certificate file)
    /// and, with `wildcard`, the sites domain's wildcard entry.
    pub fn map_content(&self, served: &[String], wildcard: Option<&str>) -> String {
        let mut out = String::from("# written by hostd: host name -> certificate file\n");
        if let Some(d) = wildcard {
            out.push_str(&format!(
                "*.{d} \"{}\";\n",
                self.dir.join(WILDCARD_FILE).display()
            ));
        }
        for n in served {
            out.push_str(&format!("{n} \"{}\";\n", self.file(n).display()));
        }
        out
    }

    pub fn map_path(&self) -> PathBuf {
        self.dir.join(MAP_FILE)
    }
}

/// uid and gid of a user in /etc/passwd.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() != Some(&user) {
            return None;
        }
        Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
    })
}

/// The first directory on the way to `dir` (itself included) that nginx's
/// workers, which are neither its owner nor in its group, cannot traverse
/// (no `o+x`): they would fail every handshake with a file of `dir`.
pub fn untraversable(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let dir = std::fs::canonicalize(dir)?;
    for d in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
        if std::fs::metadata(d)?.permissions().mode() & 0o001 == 0 {
            return Ok(Some(d.to_path_buf()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_private_files_and_reads_their_expiry() {
        let d = tempfile::tempdir().unwrap();
        let files = CertFiles::new(&d.path().join("tls"));
        files.prepare().unwrap();
        let fb = std::fs::read(files.dir().join(FALLBACK_FILE)).unwrap();
        assert!(not_after(&fb).is_some_and(|t| t > Utc::now()));
        let ck = rcgen::generate_simple_self_signed(vec!["a.example.com".to_string()]).unwrap();
        files
            .install(
                "a.example.com",
                &ck.cert.pem(),
                &ck.signing_key.serialize_pem(),
            )
            .unwrap();
        let meta = std::fs::metadata(files.file("a.example.com")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(files.installed("a.example.com").is_some());
        assert_eq!(files.list().unwrap(), vec!["a.example.com".to_string()]);
        let map = files.map_content(&["a.example.com".into()], Some("sites.test"));
        assert!(map.contains("*.sites.test \""), "{map}");
        files.remove("a.example.com").unwrap();
        assert!(files.list().unwrap().is_empty());
    }

    #[test]
    fn a_private_directory_on_the_way_is_named() {
        let d = tempfile::tempdir().unwrap();
        let tls = d.path().join("state/tls");
        std::fs::create_dir_all(&tls).unwrap();
        let state = d.path().join("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o711)).unwrap();
        let canon = std::fs::canonicalize(&state).unwrap();
        assert_eq!(untraversable(&tls).unwrap(), Some(canon));
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(untraversable(&tls).unwrap(), None);
    }
}
