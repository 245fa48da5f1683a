//! The resync's copy of desired state. Reading every record each pass cost
//! the resync more CPU than anything else at thousands of hostings; now a
//! pass reads every record's row versions (one narrow query) and fetches
//! only the records whose versions changed since the last pass; and while
//! a one-row fingerprint of all versions is unchanged, not even those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::HostingId;
use crate::store::{HostingRecord, RecordVersion, Store};

/// Most records one fetch names.
const FETCH_CHUNK: usize = 500;

/// [`Store::records_fingerprint`]: the count and a hash of all versions.
type Fingerprint = (i64, i64);

/// Records by id, with the versions they were fetched under.
#[derive(Default)]
pub struct RecordCache {
    entries: HashMap<HostingId, (RecordVersion, Arc<Cached>)>,
    /// The fingerprint of the versions the last pass read, and the records
    /// it returned: while the fingerprint is unchanged, a pass reads one
    /// row instead of one per hosting.
    last: Option<(Fingerprint, Vec<Arc<Cached>>)>,
}

/// A record and what the resync derives from it, computed once per version
/// of the record (and of the renderer's templates).
pub struct Cached {
    pub rec: HostingRecord,
    derived: Mutex<Option<(u64, Arc<Derived>)>>,
}

/// What a converged hosting's observed state must match.
pub struct Derived {
    pub domain: String,
    pub disk_volume: String,
    pub seed_volume: String,
    /// The marker's `spec-hash` (`None`: no ports or image yet).
    pub marker: Option<String>,
    /// The route entry (`None`: no HTTP port yet, or a pool guest).
    pub route: Option<String>,
}

impl std::ops::Deref for Cached {
    type Target = HostingRecord;
    fn deref(&self) -> &HostingRecord {
        &self.rec
    }
}

impl Cached {
    fn new(rec: HostingRecord) -> Self {
        Cached {
            rec,
            derived: Mutex::new(None),
        }
    }

    /// What is derived from this record under templates of `epoch`,
    /// computed by `f` the first time.
    pub fn derived(&self, epoch: u64, f: impl FnOnce(&HostingRecord) -> Derived) -> Arc<Derived> {
        let mut d = self.derived.lock().unwrap();
        match &*d {
            Some((e, v)) if *e == epoch => v.clone(),
            _ => {
                let v = Arc::new(f(&self.rec));
                *d = Some((epoch, v.clone()));
                v
            }
        }
    }
}

impl RecordCache {
    /// Every record as of now, oldest hosting first. A record written
    /// between the version query and its fetch is cached newer than its
    /// version says, so it is fetched again next time: never older.
    pub async fn current(&mut self, store: &Store) -> crate::store::Result<Vec<Arc<Cached>>> {
        // Read before the versions: a write in between changes the versions
        // after this fingerprint, so the next pass reads them again.
        let fingerprint = store.records_fingerprint().await?;
        if let Some((f, all)) = &self.last {
            if *f == fingerprint {
                return Ok(all.clone());
            }
        }
        let versions = store.record_versions().await?;
        let mut next = HashMap::with_capacity(versions.len());
        let mut stale: HashMap<HostingId, RecordVersion> = HashMap::new();
        for (id, v) in versions {
            match self.entries.remove(&id) {
                Some((had, rec)) if had == v => {
                    next.insert(id, (v, rec));
                }
                _ => {
                    stale.insert(id, v);
                }
            }
        }
        let ids: Vec<HostingId> = stale.keys().copied().collect();
        for chunk in ids.chunks(FETCH_CHUNK) {
            for rec in store.get_records(chunk).await? {
                let v = stale[&rec.id];
                next.insert(rec.id, (v, Arc::new(Cached::new(rec))));
            }
        }
        // Gone since the version query: deleted; left out.
        self.entries = next;
        let mut all: Vec<Arc<Cached>> = self.entries.values().map(|(_, r)| r.clone()).collect();
        all.sort_by_key(|r| (r.created_at, r.id));
        self.last = Some((fingerprint, all.clone()));
        Ok(all)
    }
}
