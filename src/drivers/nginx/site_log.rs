//! The host nginx's site log (`HOSTD_NGINX_SITE_LOG`): one short line per
//! request a tenant's site answered, `<upstream> <status> <bytes sent>`
//! (`hostd_sites` in `templates/nginx-main.conf`, written in 64 KiB
//! buffers flushed every 5 s). Read from where the last read stopped; the
//! counts are per upstream address (`127.0.0.1:<http port>`, a hosting's).
//! Past [`ROTATE_BYTES`] the file is emptied after it is read: nginx opens
//! it with `O_APPEND`, so its next write lands at the start; lines written
//! between the read and the truncation (microseconds) are lost.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::store::samples::HttpCounts;

/// Size past which the log is emptied once read.
pub const ROTATE_BYTES: u64 = 16 << 20;

/// Reads the site log incrementally.
#[derive(Debug)]
pub struct SiteLog {
    path: PathBuf,
    /// Inode and offset read up to.
    pos: Option<(u64, u64)>,
    /// A line cut by the end of the last read.
    partial: Vec<u8>,
}

impl SiteLog {
    pub fn new(path: PathBuf) -> SiteLog {
        SiteLog {
            path,
            pos: None,
            partial: vec![],
        }
    }

    /// The counts per upstream of the lines written since the last call
    /// (the first call skips what was there before: older than hostd's
    /// previous sample, or another process's). A missing file counts
    /// nothing.
    pub fn read_new(&mut self) -> std::io::Result<HashMap<String, HttpCounts>> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        let (ino, len) = (meta.ino(), meta.len());
        let start = match self.pos {
            None => {
                self.pos = Some((ino, len));
                return Ok(HashMap::new());
            }
            // Same file, not emptied by someone else.
            Some((i, off)) if i == ino && off <= len => off,
            _ => {
                self.partial.clear();
                0
            }
        };
        f.seek(SeekFrom::Start(start))?;
        let mut buf = std::mem::take(&mut self.partial);
        f.by_ref().take(len - start).read_to_end(&mut buf)?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.partial = buf[complete..].to_vec();
        let counts = count(&buf[..complete]);
        let mut end = len;
        if len > ROTATE_BYTES {
            f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
            f.set_len(0)?;
            end = 0;
        }
        self.pos = Some((ino, end));
        Ok(counts)
    }
}

/// Counts lines `<upstream> <status> <bytes>`; malformed lines are skipped.
pub fn count(text: &[u8]) -> HashMap<String, HttpCounts> {
    let mut out: HashMap<String, HttpCounts> = HashMap::new();
    for line in String::from_utf8_lossy(text).lines() {
        let mut it = line.split(' ');
        let (Some(up), Some(status), Some(bytes), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let (Ok(status), Ok(bytes)) = (status.parse::<u16>(), bytes.parse::<i64>()) else {
            continue;
        };
        if up.is_empty() || up == "stopped" {
            continue;
        }
        let c = out.entry(up.to_string()).or_default();
        c.requests += 1;
        c.bytes += bytes;
        match status / 100 {
            2 => c.s2xx += 1,
            3 => c.s3xx += 1,
            4 => c.s4xx += 1,
            5 => c.s5xx += 1,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_per_upstream_and_by_status_class() {
        let c = count(
            b"127.0.0.1:20001 200 612\n127.0.0.1:20001 404 150\n127.0.0.2:20002 502 0\n\
              stopped 503 200\n garbage\n127.0.0.1:20001 301 10\n",
        );
        assert_eq!(c.len(), 2);
        let a = c["127.0.0.1:20001"];
        assert_eq!(
            (a.requests, a.bytes, a.s2xx, a.s3xx, a.s4xx, a.s5xx),
            (3, 772, 1, 1, 1, 0)
        );
        assert_eq!(c["127.0.0.2:20002"].s5xx, 1);
    }

    #[test]
    fn reads_only_new_complete_lines_and_survives_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sites.log");
        let append = |s: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap();
            f.write_all(s.as_bytes()).unwrap();
        };
        append("127.0.0.1:1 200 5\n");
        let mut log = SiteLog::new(p.clone());
        assert!(
            log.read_new().unwrap().is_empty(),
            "what was there before is skipped"
        );
        append("127.0.0.1:1 200 5\n127.0.0.1:1 20");
        assert_eq!(log.read_new().unwrap()["127.0.0.1:1"].requests, 1);
        append("0 7\n");
        let c = log.read_new().unwrap();
        assert_eq!((c["127.0.0.1:1"].requests, c["127.0.0.1:1"].bytes), (1, 7));
        std::fs::write(&p, "").unwrap();
        append("127.0.0.1:1 500 1\n");
        assert_eq!(
            log.read_new().unwrap()["127.0.0.1:1"].s5xx,
            1,
            "emptied by someone else"
        );
    }
}
