//! `qemu-img`, for what libvirt does not do: compressing a disk image into a
//! backup file (full or incremental) and flattening a chain of backups for
//! a restore. Runs as a child process (never blocks the runtime) and is
//! killed if the caller's future is dropped.

use std::path::Path;

use super::{DriverError, DriverResult};

/// Runs `qemu-img args…`; its standard output.
async fn run(args: &[&std::ffi::OsStr]) -> DriverResult<Vec<u8>> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DriverError::Other(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(DriverError::Other(format!(
            "qemu-img {} failed ({}): {}",
            args.first().map_or("".into(), |a| a.to_string_lossy()),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// `qemu-img convert` into a qcow2 with zstd-compressed clusters.
const COMPRESSED: [&str; 7] = [
    "convert",
    "-q",
    "-c",
    "-O",
    "qcow2",
    "-o",
    "compression_type=zstd",
];

/// Writes `from` (any qcow2 chain) as one standalone qcow2 file `to` with
/// zstd-compressed clusters. qemu reads such a file as a normal disk (new
/// writes are stored uncompressed), so a restore needs no decompression.
pub async fn compress(from: &Path, to: &Path) -> DriverResult<()> {
    let mut a: Vec<&std::ffi::OsStr> = COMPRESSED.iter().map(|s| os(s)).collect();
    a.extend([from.as_os_str(), to.as_os_str()]);
    run(&a).await.map(drop)
}

/// The virtual size of a qcow2 image, bytes (its backing file not opened).
async fn virtual_size(image: &Path) -> DriverResult<u64> {
    let a = [os("info"), os("--output=json"), image.as_os_str()];
    let json: serde_json::Value = serde_json::from_slice(&run(&a).await?)
        .map_err(|e| DriverError::Other(format!("qemu-img info: {e}")))?;
    json["virtual-size"]
        .as_u64()
        .ok_or_else(|| DriverError::Other("qemu-img info: no virtual-size".into()))
}

/// Points a qcow2 image at another backing file (`""`: none) without
/// reading either: its header changes, not its clusters.
pub async fn set_backing(image: &Path, backing: &str) -> DriverResult<()> {
    let mut a = vec![os("rebase"), os("-q"), os("-u"), os("-b"), os(backing)];
    if !backing.is_empty() {
        a.extend([os("-F"), os("qcow2")]);
    }
    a.push(image.as_os_str());
    run(&a).await.map(drop)
}

/// Compresses an incremental image `from` (libvirt's: the clusters written
/// since a checkpoint, the others unallocated over the live disk) into
/// `to`, keeping which clusters it holds — data, and clusters the guest
/// zeroed, which must read as zeros rather than through to the parent —
/// and naming `parent` (a file name, resolved next to `to`) as its backing
/// file. `scratch` is a path for an empty image of the same size. `from`'s
/// header is rewritten (it is a staging copy); the live disk is never opened.
pub async fn compress_incremental(
    from: &Path,
    to: &Path,
    parent: &str,
    scratch: &Path,
) -> DriverResult<()> {
    set_backing(from, "").await?;
    let size = virtual_size(from).await?.to_string();
    let _ = std::fs::remove_file(scratch);
    let create = [os("create"), os("-q"), os("-f"), os("qcow2")];
    let mut a = create.to_vec();
    a.extend([scratch.as_os_str(), os(&size)]);
    run(&a).await?;
    let empty = scratch.to_string_lossy().into_owned();
    let result = async {
        set_backing(from, &empty).await?;
        // With a backing file named (-B), convert copies only the clusters
        // the top image holds; over an empty one, nothing else differs.
        let mut a: Vec<&std::ffi::OsStr> = COMPRESSED.iter().map(|s| os(s)).collect();
        a.extend([os("-B"), os(&empty), os("-F"), os("qcow2")]);
        a.extend([from.as_os_str(), to.as_os_str()]);
        run(&a).await?;
        set_backing(to, parent).await
    }
    .await;
    let _ = std::fs::remove_file(scratch);
    result
}

/// Writes the disk a chain of backups holds (`top`, whose backing files are
/// the rest) as one standalone qcow2 file `to`.
pub async fn flatten(top: &Path, to: &Path) -> DriverResult<()> {
    let a = [
        os("convert"),
        os("-q"),
        os("-O"),
        os("qcow2"),
        top.as_os_str(),
        to.as_os_str(),
    ];
    run(&a).await.map(drop)
}

/// The bytes `flatten(top, …)` will write, about.
pub async fn flattened_size(top: &Path) -> DriverResult<u64> {
    let a = [
        os("measure"),
        os("--output=json"),
        os("-O"),
        os("qcow2"),
        top.as_os_str(),
    ];
    let json: serde_json::Value = serde_json::from_slice(&run(&a).await?)
        .map_err(|e| DriverError::Other(format!("qemu-img measure: {e}")))?;
    json["required"]
        .as_u64()
        .ok_or_else(|| DriverError::Other("qemu-img measure: no required size".into()))
}

/// The backing file of qcow2 image `image`, as an absolute path (`None`: a
/// standalone image). Reads only the header, also of a disk in use (`-U`).
pub async fn backing_file(image: &Path) -> DriverResult<Option<std::path::PathBuf>> {
    let a = [os("info"), os("-U"), os("--output=json"), image.as_os_str()];
    let json: serde_json::Value = serde_json::from_slice(&run(&a).await?)
        .map_err(|e| DriverError::Other(format!("qemu-img info: {e}")))?;
    Ok(json["full-backing-filename"]
        .as_str()
        .map(std::path::PathBuf::from))
}
