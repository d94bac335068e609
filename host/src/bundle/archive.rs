//! The bundle's container: a gzip'd tar, written deterministically and read under limits.
//!
//! Reading never unpacks anything to disk, and looks at each entry's header before its data: the
//! packed size, the unpacked size (the decompressed stream is counted and cut off past the limit,
//! so a small file that expands to gigabytes is refused early), at most one entry per file a
//! bundle may hold, each a regular file named exactly as one of them — no `..`, no absolute path,
//! no symbolic or hard link — and no declared size beyond the limit.

use super::{BundleError, FILES};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path};

/// Most entries a bundle has: one per file it may hold.
pub(super) const MAX_ENTRIES: usize = FILES.len();

/// A reader that counts what it gives and fails once it has given more than `limit` bytes.
struct Capped<R> {
    inner: R,
    read: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("past the size limit"));
        }
        Ok(n)
    }
}

/// The files of a bundle, read from its bytes under `max_bytes` (packed and unpacked).
pub(super) fn read(bytes: &[u8], max_bytes: u64) -> Result<BTreeMap<&'static str, Vec<u8>>, BundleError> {
    if bytes.len() as u64 > max_bytes {
        return Err(BundleError::TooLarge(format!(
            "the bundle is {} bytes, more than the limit of {max_bytes}",
            bytes.len()
        )));
    }
    let stream =
        Capped { inner: flate2::bufread::GzDecoder::new(bytes), read: 0, limit: max_bytes, exceeded: false };
    let mut archive = tar::Archive::new(stream);
    let entries = read_entries(&mut archive, max_bytes);
    let mut stream = archive.into_inner();
    // The rest of the stream (the tar's end, any padding) is read too: it counts towards the limit,
    // and the gzip checksum is verified at its end. Nothing may follow the gzip stream: bytes
    // appended to a bundle would change its file's hash but not what it holds.
    let result = entries.and_then(|files| {
        std::io::copy(&mut stream, &mut std::io::sink()).map_err(malformed)?;
        match stream.inner.get_ref().len() {
            0 => Ok(files),
            after => Err(BundleError::Malformed(format!(
                "not a gzip'd tar: {after} bytes follow the end of its gzip stream"
            ))),
        }
    });
    match result {
        Err(_) if stream.exceeded => Err(BundleError::TooLarge(format!(
            "the bundle expands to more than the limit of {max_bytes} bytes when unpacked"
        ))),
        other => other,
    }
}

fn malformed(error: std::io::Error) -> BundleError {
    BundleError::Malformed(format!("not a gzip'd tar: {error}"))
}

fn read_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    max_bytes: u64,
) -> Result<BTreeMap<&'static str, Vec<u8>>, BundleError> {
    let mut files = BTreeMap::new();
    let mut declared = 0u64;
    for (index, entry) in archive.entries().map_err(malformed)?.enumerate() {
        let mut entry = entry.map_err(malformed)?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if index >= MAX_ENTRIES {
            return Err(BundleError::Unsafe(format!(
                "the bundle has more than {MAX_ENTRIES} entries (at {shown}); it holds at most one of each of {}",
                FILES.join(", ")
            )));
        }
        let path = entry.path().map_err(|e| BundleError::Malformed(format!("entry {shown}: {e}")))?;
        if path.is_absolute() || shown.starts_with('/') {
            return Err(BundleError::Unsafe(format!("entry {shown}: an absolute path")));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(BundleError::Unsafe(format!("entry {shown}: a path out of the bundle (..)")));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(BundleError::Unsafe(format!(
                "entry {shown}: a {} link; a bundle holds regular files only",
                if kind.is_symlink() { "symbolic" } else { "hard" }
            )));
        }
        if !kind.is_file() {
            return Err(BundleError::Unsafe(format!(
                "entry {shown}: a {kind:?} entry; a bundle holds regular files only"
            )));
        }
        let Some(name) = known_name(&path) else {
            return Err(BundleError::Extra(format!(
                "extra file {shown}: a bundle holds only {}",
                FILES.join(", ")
            )));
        };
        if files.contains_key(name) {
            return Err(BundleError::Malformed(format!("{name} appears twice")));
        }
        let size = entry.size();
        declared = declared.saturating_add(size);
        if declared > max_bytes {
            return Err(BundleError::Unsafe(format!(
                "entry {shown} declares {size} bytes, more than the limit of {max_bytes} for the whole bundle"
            )));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry.read_to_end(&mut data).map_err(malformed)?;
        files.insert(name, data);
    }
    Ok(files)
}

/// The file name `path` is, when it is exactly one of [`FILES`] (`./name` included).
fn known_name(path: &Path) -> Option<&'static str> {
    let mut parts = path.components().filter(|c| !matches!(c, Component::CurDir));
    let (Some(Component::Normal(name)), None) = (parts.next(), parts.next()) else {
        return None;
    };
    FILES.into_iter().find(|known| name == *known)
}

/// The bundle's bytes: `files` in name order, each a regular file owned by 0:0, mode 0644, mtime
/// 0, in a gzip stream without a name or a timestamp. The same files give the same bytes.
pub(super) fn write(files: &BTreeMap<&'static str, Vec<u8>>) -> Result<Vec<u8>, BundleError> {
    let failed = |e: std::io::Error| BundleError::Write(format!("cannot write the bundle: {e}"));
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).map_err(failed)?;
        header.set_size(data.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append(&header, data.as_slice()).map_err(failed)?;
    }
    let tar = tar.into_inner().map_err(failed)?;
    // No file name, mtime 0, "unknown" operating system: nothing of the machine that built it.
    let mut gzip = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gzip.write_all(&tar).map_err(failed)?;
    gzip.finish().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeMap<&'static str, Vec<u8>> {
        BTreeMap::from([("manifest.json", b"{}".to_vec()), ("settings.json", b"{\"a\":1}".to_vec())])
    }

    #[test]
    fn the_same_files_give_the_same_bytes_and_read_back() {
        let first = write(&files()).unwrap();
        assert_eq!(first, write(&files()).unwrap());
        assert_eq!(read(&first, 1 << 20).unwrap(), files());
    }

    #[test]
    fn bytes_after_the_gzip_stream_are_refused() {
        let bundle = write(&files()).unwrap();
        for after in [&b"junk"[..], &bundle] {
            let error = read(&[bundle.as_slice(), after].concat(), 1 << 20).unwrap_err().to_string();
            assert!(
                error.contains(&format!("{} bytes follow the end of its gzip stream", after.len())),
                "{error}"
            );
        }
    }

    #[test]
    fn a_stream_that_expands_past_the_limit_is_refused() {
        // 8 MiB of zeros after a valid entry packs into a few KiB.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_path("settings.json").unwrap();
        header.set_size(8 << 20);
        header.set_cksum();
        tar.append(&header, std::io::repeat(0).take(8 << 20)).unwrap();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&tar.into_inner().unwrap()).unwrap();
        let bomb = gzip.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        // The declared size is refused first; past it, the stream's own size.
        assert!(matches!(read(&bomb, 1 << 20), Err(BundleError::Unsafe(_))));
        assert!(read(&bomb, 16 << 20).is_ok());
    }
}
