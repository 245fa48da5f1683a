//! Which installation owns a directory. hostd writes its installation id into
//! `.hostd-installation` in the storage pool and routes directories it uses,
//! and refuses to reconcile against a directory claimed by another
//! installation (a second hostd pointed at the wrong database or sharing an
//! instance name), instead of adopting and garbage-collecting its objects.

use std::io::Write;
use std::path::Path;

use uuid::Uuid;

use super::{DriverError, DriverResult};

/// The marker file's name (a dotfile: never taken for a route or a volume).
pub const MARKER_FILE: &str = ".hostd-installation";

/// The installation a directory belongs to, if it is claimed.
pub fn owner(dir: &Path) -> DriverResult<Option<Uuid>> {
    match std::fs::read_to_string(dir.join(MARKER_FILE)) {
        Ok(s) => Uuid::parse_str(s.trim()).map(Some).map_err(|_| {
            DriverError::Other(format!(
                "{}: not an installation id",
                dir.join(MARKER_FILE).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Claims `dir` (creating it) for `ours`; refuses one claimed by another.
pub fn claim(dir: &Path, ours: Uuid, what: &str) -> DriverResult<()> {
    std::fs::create_dir_all(dir)?;
    if let Some(theirs) = owner(dir)? {
        return if theirs == ours {
            Ok(())
        } else {
            Err(DriverError::Foreign(format!(
                "the {what} {} belongs to hostd installation {theirs}, but this hostd's database is installation {ours}: \
                 refusing to touch it. Point DATABASE_URL at that installation's database, or give this hostd its own \
                 HOSTD_INSTANCE, HOSTD_STATE_DIR and HOSTD_NGINX_ROUTES_DIR",
                dir.display()
            )))
        };
    }
    let path = dir.join(MARKER_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(format!("{ours}\n").as_bytes())?;
            f.sync_all()?;
            Ok(())
        }
        // Another process claimed it first: check whose it is now.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => claim(dir, ours, what),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_one_owner() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        claim(d.path(), a, "pool").unwrap();
        claim(d.path(), a, "pool").unwrap();
        let e = claim(d.path(), b, "pool").unwrap_err().to_string();
        assert!(
            e.contains(&a.to_string()) && e.contains(&b.to_string()),
            "{e}"
        );
        assert_eq!(owner(d.path()).unwrap(), Some(a));
    }
}
