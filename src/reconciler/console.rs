//! Copies the tail of each guest's boot console log into the store, so the
//! API (which may run elsewhere, and never reads the hypervisor's files)
//! can show it to the owner (`GET /api/v1/host/my/console`).
//!
//! The log is written by QEMU on this host; its content is the guest's, and
//! a tenant with root inside controls every byte. So the tail is cleaned
//! here: decoded lossily as UTF-8, ANSI escape sequences and every control
//! character but newline and tab removed. Readers still treat it as
//! untrusted text (the API serves `text/plain` with `nosniff`; the
//! dashboard escapes it).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::names::console_log;
use super::Context;
use crate::domain::HostingId;

/// Most bytes of the log kept (the store's bound, which the API reads too).
pub const TAIL_BYTES: u64 = crate::store::ConsoleTail::MAX_BYTES;

/// A changed log is copied at most this often per hosting.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Copies the console tail of `id` if the file grew (or shrank) since the
/// last copy and the last copy is older than [`MIN_INTERVAL`]. Failures are
/// logged, never fatal: the console is a convenience, not desired state.
pub async fn capture(ctx: &Context, id: HostingId) {
    let path = ctx.render.console_dir().join(console_log(id));
    let size = match tokio::fs::metadata(&path).await {
        Ok(m) => m.len(),
        Err(_) => return,
    };
    let seen = ctx.memory.with(id, |m| m.console_seen);
    if let Some((last, at)) = seen {
        if last == size || at.elapsed() < MIN_INTERVAL {
            return;
        }
    }
    let tail = match tokio::task::spawn_blocking(move || read_tail(&path, TAIL_BYTES)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "console log unreadable");
            return;
        }
        Err(_) => return,
    };
    match ctx.store.save_console(id, size as i64, &clean(&tail)).await {
        Ok(()) => {
            ctx.memory
                .with(id, |m| m.console_seen = Some((size, Instant::now())));
        }
        Err(e) => tracing::warn!(error = %e, "could not store the console tail"),
    }
}

/// The last `n` non-empty lines of a hosting's console log, cleaned and
/// joined by " | " (empty when there is no log), for events.
pub async fn last_lines(ctx: &Context, id: HostingId, n: usize) -> String {
    let path = ctx.render.console_dir().join(console_log(id));
    let tail = tokio::task::spawn_blocking(move || read_tail(&path, 4096))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let text = clean(&tail);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].join(" | ").chars().take(1000).collect()
}

/// The last `max` bytes of the file (from the start of a line when cut).
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(max).read_to_end(&mut buf)?;
    if start > 0 {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            buf.drain(..=nl);
        }
    }
    Ok(buf)
}

/// Guest bytes as safe text: lossy UTF-8; ANSI CSI/OSC sequences and control
/// characters other than `\n` and `\t` removed; `\r\n` becomes `\n`.
pub fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: ESC [ params final-byte (0x40..=0x7e).
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ESC ] ... BEL or ESC \.
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {
                    chars.next();
                }
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            // Bidirectional overrides could make a line read as another.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_are_removed() {
        let raw = b"\x1b[2J\x1b[1;31mred\x1b[0m ok\r\n\x1b]0;title\x07bell\x07\x00x\ty\n\xff\xfe end \xe2\x80\xae";
        assert_eq!(clean(raw), "red ok\nbellx\ty\n\u{fffd}\u{fffd} end ");
    }

    #[test]
    fn tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(&p, b"first line\nsecond line\nthird\n").unwrap();
        assert_eq!(read_tail(&p, 15).unwrap(), b"third\n");
        assert_eq!(
            read_tail(&p, 1000).unwrap(),
            b"first line\nsecond line\nthird\n"
        );
    }
}
