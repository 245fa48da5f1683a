//! Encryption of backups before they leave the host: AES-256-GCM in the
//! STREAM construction (`aead::stream`, RustCrypto's `aes-gcm`; Hoang, Reyhanitabar,
//! Rogaway and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse
//! Misuse-Resistance"), so a file of any size is encrypted in 1 MiB chunks
//! with constant memory, and a chunk that is changed, dropped, reordered or
//! cut off at the end makes decryption fail.
//!
//! A sealed file is a 23-byte header — the magic `HOSTDBK1`, the key's
//! 8-byte fingerprint, a random 7-byte nonce prefix — and the chunks, each
//! with its 16-byte tag and the header as associated data. The key is 32
//! random bytes per installation, hex in a 0600 file
//! (`HOSTD_BACKUP_KEY_FILE`); its fingerprint goes into each manifest.
//! Losing the key loses the backups: the operator keeps a copy off-host.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"HOSTDBK1";
const HEADER: usize = 8 + 8 + 7;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;

/// What can go wrong sealing or opening a file.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a sealed hostd backup (bad header)")]
    NotSealed,
    #[error("sealed with another key (fingerprint {found}, this installation's is {ours})")]
    OtherKey { found: String, ours: String },
    #[error("the sealed file was changed or cut short: authentication failed")]
    Tampered,
    #[error("backup key file {0}: {1}")]
    Key(String, String),
}

/// The installation's backup key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

impl Key {
    /// Reads the key from `path`, or creates it there (0600) if there is no
    /// file. Anything but 64 hex digits (and a newline) is an error.
    pub fn load_or_create(path: &Path) -> Result<Key, SealError> {
        let bad = |m: String| SealError::Key(path.display().to_string(), m);
        match std::fs::read_to_string(path) {
            Ok(text) => Key::parse(text.trim()).map_err(bad),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use rand::RngCore;
                let mut k = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut k);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                }
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| bad(e.to_string()))?;
                writeln!(f, "{}", hex::encode(k)).map_err(|e| bad(e.to_string()))?;
                f.sync_all().map_err(|e| bad(e.to_string()))?;
                tracing::warn!(path = %path.display(),
                    "created the backup encryption key: keep a copy off this host, \
                     without it no backup can be restored");
                Ok(Key(k))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// A key from 64 hex digits.
    pub fn parse(hex_text: &str) -> Result<Key, String> {
        let bytes = hex::decode(hex_text).map_err(|_| "expected 64 hex digits".to_string())?;
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "expected 64 hex digits (32 bytes)".to_string())?;
        Ok(Key(k))
    }

    fn fingerprint_bytes(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"hostd backup key v1\0");
        h.update(self.0);
        let d = h.finalize();
        d[..8].try_into().expect("8 bytes")
    }

    /// The key's fingerprint (16 hex digits): names the key without
    /// revealing it, in each sealed file's header and in manifests.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint_bytes())
    }
}

/// Reads until `buf` is full or the end; how many bytes it holds.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Seals `from` into `to` (created or truncated, synced). Returns the
/// sealed file's size and SHA-256 (hex): what the object store must hold.
pub fn seal_file(key: &Key, from: &Path, to: &Path) -> Result<(u64, String), SealError> {
    use rand::RngCore;
    let mut prefix = [0u8; 7];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&key.fingerprint_bytes());
    header.extend_from_slice(&prefix);
    let aead = Aes256Gcm::new((&key.0).into());
    let mut enc = EncryptorBE32::from_aead(aead, (&prefix).into());
    let mut input = File::open(from)?;
    let mut out = std::io::BufWriter::new(File::create(to)?);
    let mut sum = Sha256::new();
    let mut size = 0u64;
    let mut put = |bytes: &[u8], out: &mut std::io::BufWriter<File>| -> std::io::Result<()> {
        sum.update(bytes);
        size += bytes.len() as u64;
        out.write_all(bytes)
    };
    put(&header, &mut out)?;
    // One chunk of look-ahead: the last chunk is sealed differently.
    let mut cur = vec![0u8; CHUNK];
    let mut next = vec![0u8; CHUNK];
    let mut n = fill(&mut input, &mut cur)?;
    loop {
        let m = if n == CHUNK {
            fill(&mut input, &mut next)?
        } else {
            0
        };
        let payload = Payload {
            msg: &cur[..n],
            aad: &header,
        };
        if m == 0 {
            let c = enc.encrypt_last(payload).map_err(|_| SealError::Tampered)?;
            put(&c, &mut out)?;
            break;
        }
        let c = enc.encrypt_next(payload).map_err(|_| SealError::Tampered)?;
        put(&c, &mut out)?;
        std::mem::swap(&mut cur, &mut next);
        n = m;
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok((size, hex::encode(sum.finalize())))
}

/// Opens sealed `from` into `to` (created or truncated, synced): fails,
/// leaving `to` incomplete for the caller to remove, if the header is not
/// ours, the key differs, or any chunk does not authenticate.
pub fn open_file(key: &Key, from: &Path, to: &Path) -> Result<u64, SealError> {
    let mut input = File::open(from)?;
    let total = input.metadata()?.len();
    let mut header = [0u8; HEADER];
    if fill(&mut input, &mut header)? != HEADER || &header[..8] != MAGIC {
        return Err(SealError::NotSealed);
    }
    if header[8..16] != key.fingerprint_bytes() {
        return Err(SealError::OtherKey {
            found: hex::encode(&header[8..16]),
            ours: key.fingerprint(),
        });
    }
    let prefix: [u8; 7] = header[16..23].try_into().expect("7 bytes");
    let aead = Aes256Gcm::new((&key.0).into());
    let mut dec = DecryptorBE32::from_aead(aead, (&prefix).into());
    let mut out = std::io::BufWriter::new(File::create(to)?);
    let mut left = total - HEADER as u64;
    if left < TAG as u64 {
        return Err(SealError::Tampered);
    }
    let mut buf = vec![0u8; CHUNK + TAG];
    let mut written = 0u64;
    loop {
        let want = left.min((CHUNK + TAG) as u64) as usize;
        if fill(&mut input, &mut buf[..want])? != want {
            return Err(SealError::Tampered);
        }
        left -= want as u64;
        let payload = Payload {
            msg: &buf[..want],
            aad: &header,
        };
        if left == 0 {
            let plain = dec.decrypt_last(payload).map_err(|_| SealError::Tampered)?;
            out.write_all(&plain)?;
            written += plain.len() as u64;
            break;
        }
        let plain = dec.decrypt_next(payload).map_err(|_| SealError::Tampered)?;
        out.write_all(&plain)?;
        written += plain.len() as u64;
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::load_or_create(&dir.path().join("k")).unwrap();
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (p, s, o) = (
            dir.path().join("p"),
            dir.path().join("s"),
            dir.path().join("o"),
        );
        std::fs::write(&p, &plain).unwrap();
        let (size, _) = seal_file(&key, &p, &s).unwrap();
        assert_eq!(size, std::fs::metadata(&s).unwrap().len());
        assert_eq!(open_file(&key, &s, &o).unwrap(), len as u64);
        assert_eq!(std::fs::read(&o).unwrap(), plain, "length {len}");
    }

    #[test]
    fn files_of_every_chunk_boundary_round_trip() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            roundtrip(len);
        }
    }

    #[test]
    fn a_changed_cut_or_extended_file_or_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::load_or_create(&dir.path().join("k")).unwrap();
        let other = Key::load_or_create(&dir.path().join("k2")).unwrap();
        let (p, s, o) = (
            dir.path().join("p"),
            dir.path().join("s"),
            dir.path().join("o"),
        );
        let marker = b"a marker the store must never see ".repeat(100_000);
        std::fs::write(&p, &marker).unwrap();
        seal_file(&key, &p, &s).unwrap();
        let sealed = std::fs::read(&s).unwrap();
        assert!(
            !sealed
                .windows(20)
                .any(|w| w == &b"a marker the store m"[..]),
            "plaintext in the sealed file"
        );
        let try_open = |bytes: &[u8], k: &Key| {
            std::fs::write(&s, bytes).unwrap();
            open_file(k, &s, &o)
        };
        let mut flipped = sealed.clone();
        flipped[HEADER + CHUNK + TAG + 3] ^= 1;
        assert!(matches!(try_open(&flipped, &key), Err(SealError::Tampered)));
        // Whole chunks dropped at the end: the new last chunk was not sealed as last.
        let cut = &sealed[..HEADER + 2 * (CHUNK + TAG)];
        assert!(matches!(try_open(cut, &key), Err(SealError::Tampered)));
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 40]);
        assert!(matches!(try_open(&longer, &key), Err(SealError::Tampered)));
        assert!(matches!(
            try_open(&sealed, &other),
            Err(SealError::OtherKey { .. })
        ));
        assert!(matches!(
            try_open(b"QFI\xfbnot sealed at all, a qcow2", &key),
            Err(SealError::NotSealed)
        ));
        assert!(try_open(&sealed, &key).is_ok());
    }

    #[test]
    fn a_key_file_is_created_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/backup.key");
        let a = Key::load_or_create(&path).unwrap();
        let b = Key::load_or_create(&path).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not hex").unwrap();
        assert!(Key::load_or_create(&path).is_err());
    }
}
