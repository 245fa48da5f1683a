//! Quarantine: where a tenant's data goes instead of being deleted (a disk
//! replaced by a reset or a restore, a volume found without a hosting after a
//! database restore, a deleted hosting's backups), kept for
//! `HOSTD_QUARANTINE_DAYS` so an operator can still bring it back.
//!
//! An entry's *time of quarantine* is in its name
//! (`20261204T204455.123456789Z-hostd-<id>-disk.qcow2`), never taken from the
//! file: a rename keeps the file's modification time, so a disk that had not
//! been written for a week looked a week old the moment it was quarantined
//! and was deleted at the next resync. Names are unique (nanoseconds, and a
//! counter when two land in the same instant), so one entry never replaces
//! another. Each hosting keeps at most one quarantined entry of each kind
//! (disk, seed, backups): a newer one replaces the older, so a tenant who
//! restores in a loop cannot park a disk's worth of data per restore.
//! Entries whose name carries no time (put there by hand) are never deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::names::volume_owner;
use crate::domain::HostingId;

/// The directory under the state directory.
pub const DIR: &str = "quarantine";

/// The time format of new entries (nanoseconds: names stay unique).
const STAMP: &str = "%Y%m%dT%H%M%S%.9fZ";
/// The format of entries made before nanoseconds were added.
const STAMP_SECONDS: &str = "%Y%m%dT%H%M%SZ";

/// What a quarantined entry held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Disk,
    Seed,
    Backups,
}

/// One entry of the quarantine directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    /// When it was quarantined (from its name).
    pub at: Option<DateTime<Utc>>,
    /// Whose it was, and what.
    pub owner: Option<(HostingId, Kind)>,
}

impl Entry {
    /// Reads an entry's time and owner from its file name.
    pub fn parse(path: PathBuf) -> Entry {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stamp, rest) = name.split_once('-').unwrap_or(("", ""));
        let at = [STAMP, STAMP_SECONDS]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(stamp, f).ok())
            .map(|t| t.and_utc());
        // A counter after the stamp (`.1-`) when two entries met in one instant.
        let rest = match rest.split_once('-') {
            Some((n, r)) if n.starts_with('.') && n[1..].parse::<u32>().is_ok() => r,
            _ => rest,
        };
        let owner = if let Some(id) = rest.strip_prefix("backups-") {
            uuid::Uuid::parse_str(id)
                .ok()
                .map(|u| (HostingId(u), Kind::Backups))
        } else {
            volume_owner(rest).map(|id| {
                let kind = match rest.ends_with("-disk.qcow2") {
                    true => Kind::Disk,
                    false => Kind::Seed,
                };
                (id, kind)
            })
        };
        Entry { path, at, owner }
    }
}

/// The quarantine directory and how long it keeps things.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
    keep: Duration,
}

impl Quarantine {
    pub fn new(state_dir: &Path, keep: Duration) -> Quarantine {
        Quarantine {
            dir: state_dir.join(DIR),
            keep,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a new entry for `name` (a volume's name, or `backups-<id>`)
    /// goes: the directory is created (root only), the time of quarantine
    /// `now` is in the name, and the path is not taken.
    pub fn target(&self, name: &str, now: DateTime<Utc>) -> std::io::Result<PathBuf> {
        crate::drivers::private_dir(&self.dir)?;
        let stamp = now.format(STAMP).to_string();
        let mut path = self.dir.join(format!("{stamp}-{name}"));
        let mut n = 0;
        while path.symlink_metadata().is_ok() {
            n += 1;
            path = self.dir.join(format!("{stamp}-.{n}-{name}"));
        }
        Ok(path)
    }

    /// Every entry, oldest first (entries without a time last).
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return vec![];
        };
        let mut out: Vec<Entry> = rd.flatten().map(|e| Entry::parse(e.path())).collect();
        out.sort_by_key(|e| (e.at.is_none(), e.at, e.path.clone()));
        out
    }

    /// After `newest` was added: deletes the older entries of the same
    /// hosting and kind (at most one of each is kept). Returns what it deleted.
    pub fn bound(&self, newest: &Path) -> Vec<PathBuf> {
        let new = Entry::parse(newest.to_path_buf());
        let Some(owner) = new.owner else {
            return vec![];
        };
        let older = self
            .entries()
            .into_iter()
            .filter(|e| e.path != new.path && e.owner == Some(owner))
            .map(|e| e.path);
        older
            .filter(|p| remove(p, "older than the hosting's newer one"))
            .collect()
    }

    /// Deletes the entries quarantined more than the keeping period before
    /// `now` (by the time in their names). Returns what it deleted.
    pub fn expire(&self, now: DateTime<Utc>) -> Vec<PathBuf> {
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let mut gone = vec![];
        for e in self.entries() {
            match e.at {
                Some(at) if now - at > keep => {
                    if remove(&e.path, "quarantine period over") {
                        gone.push(e.path);
                    }
                }
                Some(_) => {}
                None => tracing::debug!(file = %e.path.display(),
                    "quarantine entry without a time in its name: kept"),
            }
        }
        gone
    }

    /// Bytes held by each hosting's entries (what counts against its backup
    /// quota), sorted by hosting.
    pub fn bytes_by_hosting(&self) -> Vec<(HostingId, u64)> {
        let mut by: std::collections::BTreeMap<uuid::Uuid, u64> = Default::default();
        for e in self.entries() {
            if let Some((id, _)) = e.owner {
                *by.entry(id.0).or_default() += size_of(&e.path);
            }
        }
        by.into_iter().map(|(id, b)| (HostingId(id), b)).collect()
    }

    /// Bytes held by the entries (what the quarantine costs the disk).
    pub fn bytes(&self) -> u64 {
        self.entries().iter().map(|e| size_of(&e.path)).sum()
    }
}

/// Deletes an entry (a file or a directory); whether it is gone.
fn remove(path: &Path, why: &str) -> bool {
    tracing::warn!(file = %path.display(), why, "deleting a quarantined entry");
    let r = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot delete a quarantined entry");
            false
        }
    }
}

/// Bytes allocated to a file or a directory tree.
fn size_of(path: &Path) -> u64 {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0),
        Ok(_) => super::space::allocated(path),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::names::{disk_volume, seed_volume};

    fn q(keep_days: u64) -> (tempfile::TempDir, Quarantine) {
        let d = tempfile::tempdir().unwrap();
        let q = Quarantine::new(d.path(), Duration::from_secs(keep_days * 86400));
        (d, q)
    }

    /// Writes a file whose modification time is `days` ago.
    fn old_file(path: &Path, days: u64) {
        std::fs::write(path, b"tenant data").unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(days * 86400);
        f.set_modified(t).unwrap();
    }

    #[test]
    fn the_time_of_quarantine_is_the_name_not_the_files_age() {
        let (_d, q) = q(7);
        let id = HostingId(uuid::Uuid::new_v4());
        let now = Utc::now();
        // A disk nobody wrote for 30 days, quarantined just now.
        let fresh = q.target(&disk_volume(id), now).unwrap();
        old_file(&fresh, 30);
        // One quarantined 8 days ago (another hosting), written yesterday.
        let other = HostingId(uuid::Uuid::new_v4());
        let stale = q
            .target(&disk_volume(other), now - chrono::Duration::days(8))
            .unwrap();
        old_file(&stale, 1);
        // Hand-made, no time in its name, very old: never deleted.
        let hand = q.dir().join("operator-notes.txt");
        old_file(&hand, 400);
        assert_eq!(q.expire(now), vec![stale.clone()]);
        assert!(fresh.exists(), "a disk quarantined now was deleted");
        assert!(hand.exists());
        // Seven days later it goes.
        assert_eq!(q.expire(now + chrono::Duration::days(8)), vec![fresh]);
    }

    #[test]
    fn names_are_unique_even_in_one_instant_and_parse_back() {
        let (_d, q) = q(7);
        let id = HostingId(uuid::Uuid::new_v4());
        let now = Utc::now();
        let a = q.target(&disk_volume(id), now).unwrap();
        std::fs::write(&a, b"a").unwrap();
        let b = q.target(&disk_volume(id), now).unwrap();
        assert_ne!(a, b);
        for p in [&a, &b] {
            let e = Entry::parse(p.clone());
            assert_eq!(e.owner, Some((id, Kind::Disk)), "{}", p.display());
            let at = e.at.unwrap();
            assert!((at - now).num_milliseconds().abs() < 1, "{at} vs {now}");
        }
        let s = Entry::parse(q.target(&seed_volume(id), now).unwrap());
        assert_eq!(s.owner, Some((id, Kind::Seed)));
        let bk = Entry::parse(q.target(&format!("backups-{id}"), now).unwrap());
        assert_eq!(bk.owner, Some((id, Kind::Backups)));
        // Entries of the old format (seconds) still carry their time.
        let old = Entry::parse(
            q.dir()
                .join(format!("20261101T120000Z-{}", disk_volume(id))),
        );
        assert_eq!(old.at.unwrap().to_rfc3339(), "2026-11-01T12:00:00+00:00");
        assert_eq!(old.owner, Some((id, Kind::Disk)));
    }

    #[test]
    fn a_hosting_keeps_one_quarantined_entry_of_each_kind() {
        let (_d, q) = q(7);
        let (id, other) = (
            HostingId(uuid::Uuid::new_v4()),
            HostingId(uuid::Uuid::new_v4()),
        );
        let t0 = Utc::now();
        let mut mine = vec![];
        for i in 0..3 {
            let p = q
                .target(&disk_volume(id), t0 + chrono::Duration::seconds(i))
                .unwrap();
            std::fs::write(&p, vec![0u8; 4096]).unwrap();
            mine.push(p);
        }
        let seed = q.target(&seed_volume(id), t0).unwrap();
        std::fs::write(&seed, b"s").unwrap();
        let theirs = q.target(&disk_volume(other), t0).unwrap();
        std::fs::write(&theirs, b"t").unwrap();
        let mut gone = q.bound(&mine[2]);
        gone.sort();
        assert_eq!(gone, vec![mine[0].clone(), mine[1].clone()]);
        assert!(mine[2].exists() && seed.exists() && theirs.exists());
        assert!(q.bytes() >= 4096);
    }
}
