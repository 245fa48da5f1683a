//! Off-host backups (`HOSTD_BACKUP_S3_URL`): the store, the key, and where
//! things are in the store. The steps that use them are in
//! `steps/offsite.rs`.
//!
//! Layout in the store, under the configured prefix:
//! `<installation>/<hosting>/<backup>.qcow2.sealed` (a backup file sealed
//! with `crate::seal`) and `<installation>/<hosting>/manifest.json` (plain
//! JSON: ids, times, sizes, checksums and the key's fingerprint; no tenant
//! data). The installation id keeps two hostd installations sharing a
//! bucket apart; Postgres (kept by the operator) says which objects count.

use std::sync::Arc;

use crate::config::OffsitePolicy;
use crate::domain::{BackupId, HostingId};
use crate::drivers::offsite::{BackupStore, S3Store};
use crate::seal::Key;

/// The off-host store of this reconciler, with the key that seals backups.
#[derive(Clone)]
pub struct Offsite {
    pub store: Arc<dyn BackupStore>,
    pub key: Key,
    /// Newest backups per hosting also kept on this host.
    pub local_keep: u32,
    installation: uuid::Uuid,
}

impl Offsite {
    /// The store of `policy`, with its key (read, or created 0600).
    pub fn new(policy: &OffsitePolicy, installation: uuid::Uuid) -> Result<Offsite, String> {
        let key = Key::load_or_create(&policy.key_file).map_err(|e| e.to_string())?;
        let store = S3Store::connect(policy).map_err(|e| e.to_string())?;
        Ok(Offsite::with_store(
            store,
            key,
            policy.local_keep,
            installation,
        ))
    }

    /// An `Offsite` over any store (tests use the same S3 implementation
    /// against a real S3 server; this is for tools that bring their own).
    pub fn with_store(
        store: Arc<dyn BackupStore>,
        key: Key,
        local_keep: u32,
        installation: uuid::Uuid,
    ) -> Offsite {
        Offsite {
            store,
            key,
            local_keep,
            installation,
        }
    }

    /// The directory of one hosting's objects.
    pub fn dir(&self, id: HostingId) -> String {
        format!("{}/{id}", self.installation)
    }

    /// A backup's sealed object.
    pub fn object(&self, id: HostingId, b: BackupId) -> String {
        format!("{}/{b}.qcow2.sealed", self.dir(id))
    }

    /// A hosting's manifest.
    pub fn manifest(&self, id: HostingId) -> String {
        format!("{}/manifest.json", self.dir(id))
    }
}
