//! Files the service and its commands write.

use std::io::Write;
use std::path::Path;

/// Replaces `path` whole, with `mode`: a temporary file in the same directory, synced, then
/// renamed over it, so that a reader (a registry, a restart) never sees half a file.
pub fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    file.write_all(contents)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut permissions = file.as_file().metadata().map_err(|e| e.to_string())?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, mode);
    file.as_file().set_permissions(permissions).map_err(|e| e.to_string())?;
    file.persist(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
