//! The route map file (`routes.map`): one entry per hosting, each starting
//! with `# hosting <id>`; parsed into a [`Table`] and cached until its inode,
//! size or times change; written whole and atomically; and the stray files
//! that are not hostd's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::MAP_FILE;
use crate::domain::HostingId;
use crate::drivers::DriverResult;

/// The line each hosting's entry starts with (followed by its id).
pub(super) const ENTRY_HEADER: &str = "# hosting ";
/// What identifies one version of the map file on disk: a rename gives a new
/// inode, an edit in place a new size or times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) ino: u64,
    pub(super) size: u64,
    pub(super) mtime_ns: i128,
    pub(super) ctime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

/// The map file as last read or written.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// Each hosting's entry, exactly as in the file.
    pub(super) entries: BTreeMap<HostingId, String>,
    /// The file holds text that is no hosting's entry (before the first
    /// entry, an entry header without a valid id, or a second entry of one
    /// hosting): it is dropped at the next write.
    pub(super) unowned: bool,
    /// The file version this was read from or written as (`None`: no file).
    pub(super) stamp: Option<Stamp>,
}

impl Table {
    /// Parses the file's text.
    pub(super) fn parse(text: &str, stamp: Option<Stamp>) -> Table {
        let mut t = Table {
            stamp,
            ..Default::default()
        };
        let mut current: Option<(Option<HostingId>, String)> = None;
        // A second entry of one hosting, or text outside any entry, is unowned.
        let finish = |t: &mut Table, cur: Option<(Option<HostingId>, String)>| {
            t.unowned |= match cur {
                Some((Some(id), text)) => t.entries.insert(id, text).is_some(),
                Some((None, text)) => !text.is_empty(),
                None => false,
            };
        };
        for line in text.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix(ENTRY_HEADER) {
                finish(&mut t, current.take());
                let id = uuid::Uuid::parse_str(rest.trim_end_matches('\n'))
                    .ok()
                    .filter(|u| format!("{ENTRY_HEADER}{u}\n") == line)
                    .map(HostingId);
                current = Some((id, String::new()));
            }
            current
                .get_or_insert_with(|| (None, String::new()))
                .1
                .push_str(line);
        }
        finish(&mut t, current);
        t
    }

    /// The file's text.
    pub(super) fn text(&self) -> String {
        let mut s = String::with_capacity(self.entries.values().map(|e| e.len()).sum());
        for e in self.entries.values() {
            s.push_str(e);
        }
        s
    }
}

/// The cached map file, shared by the driver and its batcher.
pub(super) struct MapFile {
    pub(super) path: PathBuf,
    pub(super) table: std::sync::Mutex<Arc<Table>>,
}

impl MapFile {
    /// The table as the file is now: the cache, unless the file changed.
    pub(super) fn current(&self) -> std::io::Result<Arc<Table>> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some(Stamp::of(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        {
            let t = self.table.lock().unwrap();
            if t.stamp == stamp {
                return Ok(t.clone());
            }
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        // Stamped as it was before the read: a write in between is seen at
        // the next look.
        let t = Arc::new(Table::parse(&text, stamp));
        *self.table.lock().unwrap() = t.clone();
        Ok(t)
    }

    /// Writes `entries` as the file (atomically) and caches them.
    pub(super) fn write(&self, entries: BTreeMap<HostingId, String>) -> std::io::Result<()> {
        let mut t = Table {
            entries,
            unowned: false,
            stamp: None,
        };
        let tmp = self.path.with_file_name(format!(".{MAP_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(t.text().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        t.stamp = Some(Stamp::of(&std::fs::metadata(&self.path)?));
        *self.table.lock().unwrap() = Arc::new(t);
        Ok(())
    }
}

/// Names of the files in `dir` that are not hostd's: anything but the map
/// file, the ownership marker and a recent temp file.
pub(super) fn scan_stray(dir: &Path) -> DriverResult<Vec<String>> {
    let mut stray = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stray),
        Err(e) => return Err(e.into()),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == crate::drivers::ownership::MARKER_FILE || name == MAP_FILE {
            continue;
        }
        if name.starts_with('.') && name.ends_with(".tmp") {
            // A temp file is stray only once no write can still be using it:
            // one younger than a minute may be a batch's write in progress
            // (removing it would fail that batch's rename).
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60));
            if old {
                stray.push(name);
            }
            continue;
        }
        stray.push(name);
    }
    Ok(stray)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: uuid::Uuid, line: &str) -> String {
        format!("{ENTRY_HEADER}{id}\n{line}\n")
    }

    #[test]
    fn the_map_file_reads_back_as_one_entry_per_hosting() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let text = entry(a, "path:x 127.0.0.1:1;") + &entry(b, "path:y stopped;");
        let t = Table::parse(&text, None);
        assert!(!t.unowned);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[&HostingId(a)], entry(a, "path:x 127.0.0.1:1;"));
        // Written back, the text is the same (entries in id order).
        let mut sorted = [(a, "path:x 127.0.0.1:1;"), (b, "path:y stopped;")];
        sorted.sort();
        let want: String = sorted.iter().map(|(i, l)| entry(*i, l)).collect();
        assert_eq!(t.text(), want);
    }

    #[test]
    fn text_that_is_no_hostings_entry_is_unowned() {
        let a = uuid::Uuid::new_v4();
        let ok = entry(a, "path:x 127.0.0.1:1;");
        for text in [
            format!("path:evil 127.0.0.1:2;\n{ok}"),
            format!("{ok}{ENTRY_HEADER}not-a-uuid\npath:evil 127.0.0.1:2;\n"),
            format!("{ok}{ok}"),
            format!("{ok}{ENTRY_HEADER}{}\n", a.to_string().to_uppercase()),
        ] {
            let t = Table::parse(&text, None);
            assert!(t.unowned, "{text}");
            assert!(t.entries.contains_key(&HostingId(a)), "{text}");
        }
        // A hand edit inside an entry stays that entry's (and differs).
        let t = Table::parse(&format!("{ok}# note\n"), None);
        assert!(!t.unowned);
        assert_ne!(t.entries[&HostingId(a)], ok);
        assert!(Table::parse("", None).entries.is_empty());
    }
}
