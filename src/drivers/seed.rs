//! Builds the seed disk: an ISO 9660 image, volume id `cidata`, written in
//! process (no `genisoimage` run, no temporary directory): a cloud-init
//! NoCloud seed (`user-data`, `meta-data`, `network-config`) for images that
//! run cloud-init, and the same settings as plain files under `hostd/` for
//! hostd's own image, whose boot unit applies them in well under a second
//! instead of cloud-init's two Python stages.
//!
//! The image is plain ISO 9660 (no Rock Ridge or Joliet): one primary
//! volume descriptor, path tables, two directories of one sector each, and
//! the files. Linux mounts it with its default `map=normal`, which shows
//! the identifiers (`USER-DATA;1`) as `user-data`; blkid and udev read the
//! label `cidata` from the descriptor. Every name is hostd's own (the
//! tenant's input only reaches file contents).

/// The files of a NoCloud seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: String,
    /// One key per line, read by the guest at every boot.
    pub authorized_keys: String,
    /// Plain files under `hostd/` (name, content), applied at every boot by
    /// hostd's image (`hostname`, `sshd.conf`, `nftables.conf`, `index.html`).
    pub plain: Vec<(&'static str, String)>,
}

const SECTOR: usize = 2048;

/// Builds the ISO image bytes.
pub fn build_iso(files: &SeedFiles) -> Vec<u8> {
    let root_files: Vec<(&str, &[u8])> = vec![
        ("user-data", files.user_data.as_bytes()),
        ("meta-data", files.meta_data.as_bytes()),
        ("network-config", files.network_config.as_bytes()),
        ("authorized_keys", files.authorized_keys.as_bytes()),
    ];
    let sub_files: Vec<(&str, &[u8])> = files
        .plain
        .iter()
        .map(|(n, c)| (*n, c.as_bytes()))
        .collect();
    Iso::new(&root_files, "hostd", &sub_files).bytes()
}

/// One file's identifier: upper case, with the version suffix.
fn file_id(name: &str) -> Vec<u8> {
    let mut id = name.to_ascii_uppercase().into_bytes();
    id.extend_from_slice(b";1");
    id
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn sectors(len: usize) -> usize {
    len.div_ceil(SECTOR).max(1)
}

/// A directory record.
fn record(id: &[u8], extent: usize, len: usize, dir: bool, date: [u8; 7]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent as u32));
    r[10..18].copy_from_slice(&both32(len as u32));
    r[18..25].copy_from_slice(&date);
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

/// The layout of one image: a root with files and one subdirectory.
struct Iso<'a> {
    root: Vec<(Vec<u8>, &'a [u8])>,
    sub_name: Vec<u8>,
    sub: Vec<(Vec<u8>, &'a [u8])>,
}

impl<'a> Iso<'a> {
    fn new(root: &[(&str, &'a [u8])], sub_name: &str, sub: &[(&str, &'a [u8])]) -> Self {
        // Records in a directory are sorted by identifier.
        let ids = |files: &[(&str, &'a [u8])]| {
            let mut v: Vec<(Vec<u8>, &'a [u8])> =
                files.iter().map(|(n, c)| (file_id(n), *c)).collect();
            v.sort();
            v
        };
        Iso {
            root: ids(root),
            sub_name: sub_name.to_ascii_uppercase().into_bytes(),
            sub: ids(sub),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        // Sector map: the system area (16 sectors of zeros), the primary
        // volume descriptor, the terminator, the L and M path tables, the
        // root directory, the subdirectory, then the files.
        let (pvd, term, l_table, m_table, root_dir, sub_dir) = (16, 17, 18, 19, 20, 21);
        let mut next = 22;
        let mut place = |files: &[(Vec<u8>, &'a [u8])]| -> Vec<usize> {
            files
                .iter()
                .map(|(_, c)| {
                    let at = next;
                    next += sectors(c.len());
                    at
                })
                .collect()
        };
        let root_at = place(&self.root);
        let sub_at = place(&self.sub);
        let total = next;
        let date = [126, 1, 1, 0, 0, 0, 0]; // 2026-01-01 00:00 UTC: the image never changes with the clock
        let mut img = vec![0u8; total * SECTOR];
        let at = |s: usize| s * SECTOR;

        // Directories: ".", "..", then the entries.
        let dir = |own: usize, parent: usize, entries: Vec<Vec<u8>>| {
            let mut d = record(&[0], own, SECTOR, true, date);
            d.extend(record(&[1], parent, SECTOR, true, date));
            for e in entries {
                d.extend(e);
            }
            assert!(d.len() <= SECTOR, "a seed directory outgrew one sector");
            d
        };
        let mut root_entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .root
            .iter()
            .zip(&root_at)
            .map(|((id, c), s)| (id.clone(), record(id, *s, c.len(), false, date)))
            .collect();
        root_entries.push((
            self.sub_name.clone(),
            record(&self.sub_name, sub_dir, SECTOR, true, date),
        ));
        root_entries.sort();
        let root = dir(
            root_dir,
            root_dir,
            root_entries.into_iter().map(|e| e.1).collect(),
        );
        let sub_entries = self
            .sub
            .iter()
            .zip(&sub_at)
            .map(|((id, c), s)| record(id, *s, c.len(), false, date))
            .collect();
        let sub = dir(sub_dir, root_dir, sub_entries);
        img[at(root_dir)..at(root_dir) + root.len()].copy_from_slice(&root);
        img[at(sub_dir)..at(sub_dir) + sub.len()].copy_from_slice(&sub);
        for ((_, c), s) in self
            .root
            .iter()
            .zip(&root_at)
            .chain(self.sub.iter().zip(&sub_at))
        {
            img[at(*s)..at(*s) + c.len()].copy_from_slice(c);
        }

        // Path tables: the root (number 1) and the subdirectory (parent 1).
        let path_table = |big: bool| {
            let mut t = Vec::new();
            for (name, extent) in [(&[0u8][..], root_dir), (&self.sub_name[..], sub_dir)] {
                t.push(name.len() as u8);
                t.push(0);
                let (e, p) = if big {
                    ((extent as u32).to_be_bytes(), 1u16.to_be_bytes())
                } else {
                    ((extent as u32).to_le_bytes(), 1u16.to_le_bytes())
                };
                t.extend_from_slice(&e);
                t.extend_from_slice(&p);
                t.extend_from_slice(name);
                if name.len() % 2 == 1 {
                    t.push(0);
                }
            }
            t
        };
        let (l, m) = (path_table(false), path_table(true));
        img[at(l_table)..at(l_table) + l.len()].copy_from_slice(&l);
        img[at(m_table)..at(m_table) + m.len()].copy_from_slice(&m);

        // The primary volume descriptor.
        let p = &mut img[at(pvd)..at(pvd) + SECTOR];
        p[0] = 1;
        p[1..6].copy_from_slice(b"CD001");
        p[6] = 1;
        let padded = |s: &[u8], n: usize| {
            let mut v = s.to_vec();
            v.resize(n, b' ');
            v
        };
        p[8..40].copy_from_slice(&padded(b"LINUX", 32));
        p[40..72].copy_from_slice(&padded(b"cidata", 32));
        p[80..88].copy_from_slice(&both32(total as u32));
        p[120..124].copy_from_slice(&both16(1));
        p[124..128].copy_from_slice(&both16(1));
        p[128..132].copy_from_slice(&both16(SECTOR as u16));
        p[132..140].copy_from_slice(&both32(l.len() as u32));
        p[140..144].copy_from_slice(&(l_table as u32).to_le_bytes());
        p[148..152].copy_from_slice(&(m_table as u32).to_be_bytes());
        p[156..190].copy_from_slice(&record(&[0], root_dir, SECTOR, true, date));
        for (from, to) in [
            (190, 318),
            (318, 446),
            (446, 574),
            (574, 702),
            (702, 739),
            (739, 776),
            (776, 813),
        ] {
            p[from..to].fill(b' ');
        }
        p[574..574 + 5].copy_from_slice(b"HOSTD");
        // Creation and modification dates fixed like the records';
        // expiration and effective dates unset.
        for (from, digits) in [
            (813, b"2026010100000000"),
            (830, b"2026010100000000"),
            (847, b"0000000000000000"),
            (864, b"0000000000000000"),
        ] {
            p[from..from + 16].copy_from_slice(digits);
            p[from + 16] = 0;
        }
        p[881] = 1;

        // The set terminator.
        let t = &mut img[at(term)..at(term) + SECTOR];
        t[0] = 255;
        t[1..6].copy_from_slice(b"CD001");
        t[6] = 1;
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} (install-deps.sh installs it): {e}"));
        assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The image reads back with the standard tools: label `cidata` for
    /// blkid (what udev and the guest's boot unit look up), and every file
    /// with its exact content (isoinfo, from the genisoimage package).
    #[test]
    fn the_seed_image_reads_back_with_the_standard_tools() {
        let big = "x".repeat(5000) + "\n";
        let files = SeedFiles {
            user_data: "#cloud-config\nhostname: a\n".into(),
            meta_data: "instance-id: i-1\n".into(),
            network_config: "version: 2\n".into(),
            authorized_keys: big.clone(),
            plain: vec![
                ("hostname", "a\n".into()),
                ("sshd.conf", String::new()),
                ("index.html", "<h1>é</h1>\n".into()),
            ],
        };
        let iso = build_iso(&files);
        assert_eq!(iso.len() % SECTOR, 0);
        assert_eq!(build_iso(&files), iso, "the same files make the same image");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.iso");
        std::fs::write(&path, &iso).unwrap();
        let p = path.to_str().unwrap();
        let label = run("blkid", &["-p", "-o", "value", "-s", "LABEL", p]);
        assert_eq!(label.trim(), "cidata");
        let fstype = run("blkid", &["-p", "-o", "value", "-s", "TYPE", p]);
        assert_eq!(fstype.trim(), "iso9660");
        let listing = run("isoinfo", &["-f", "-i", p]);
        let mut names: Vec<&str> = listing.lines().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "/AUTHORIZED_KEYS;1",
                "/HOSTD",
                "/HOSTD/HOSTNAME;1",
                "/HOSTD/INDEX.HTML;1",
                "/HOSTD/SSHD.CONF;1",
                "/META-DATA;1",
                "/NETWORK-CONFIG;1",
                "/USER-DATA;1",
            ]
        );
        for (name, want) in [
            ("/USER-DATA;1", files.user_data.as_str()),
            ("/META-DATA;1", files.meta_data.as_str()),
            ("/NETWORK-CONFIG;1", files.network_config.as_str()),
            ("/AUTHORIZED_KEYS;1", big.as_str()),
            ("/HOSTD/HOSTNAME;1", "a\n"),
            ("/HOSTD/SSHD.CONF;1", ""),
            ("/HOSTD/INDEX.HTML;1", "<h1>é</h1>\n"),
        ] {
            assert_eq!(run("isoinfo", &["-i", p, "-x", name]), want, "{name}");
        }
    }
}
