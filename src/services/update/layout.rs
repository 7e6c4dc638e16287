//! The on-disk layout of installed versions: `state_dir/services/<name>/<version>/`, the
//! `current` symlink switched atomically, and the retention of old versions.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

/// `<state_dir>/services/<name>`.
pub fn service_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("services").join(name)
}

/// The version `current` points at, when it is a symlink to a version directory.
pub fn current_version(service_dir: &Path) -> Option<String> {
    let target = fs::read_link(service_dir.join(CURRENT)).ok()?;
    let v = target.file_name()?.to_string_lossy().into_owned();
    if service_dir.join(&v).is_dir() {
        Some(v)
    } else {
        None
    }
}

/// The directory a service runs in when an installed version is current
/// (`<state_dir>/services/<name>/current`), for the supervisor.
pub fn installed_dir(state_dir: &Path, name: &str) -> Option<(PathBuf, String)> {
    let dir = service_dir(state_dir, name);
    current_version(&dir).map(|v| (dir.join(CURRENT), v))
}

/// Points `current` at `version` atomically: a new symlink `current.tmp` renamed over it.
pub fn switch_current(service_dir: &Path, version: &str) -> io::Result<()> {
    let tmp = service_dir.join("current.tmp");
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(version, &tmp)?;
    if let Err(e) = fs::rename(&tmp, service_dir.join(CURRENT)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(service_dir);
    Ok(())
}

/// Removes `current` (the service goes back to its configured `dir`).
pub fn clear_current(service_dir: &Path) -> io::Result<()> {
    match fs::remove_file(service_dir.join(CURRENT)) {
        Ok(()) => {
            sync_dir(service_dir);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes every version directory (and leftover temporary file) in `service_dir` except
/// `keep` and `current`. Returns what was removed.
pub fn prune(service_dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut removed = Vec::new();
    let rd = match fs::read_dir(service_dir) {
        Ok(rd) => rd,
        Err(_) => return removed,
    };
    let current = current_version(service_dir);
    for ent in rd.flatten() {
        let n = ent.file_name().to_string_lossy().into_owned();
        if n == CURRENT || keep.contains(&n.as_str()) || current.as_deref() == Some(&n) {
            continue;
        }
        match remove_any(&ent.path()) {
            Ok(()) => removed.push(n),
            Err(e) => log::warn!("cannot remove old version {}: {e}", ent.path().display()),
        }
    }
    removed.sort();
    removed
}

// ---------------------------------------------------------------------------------------
// Watching the new version
// ---------------------------------------------------------------------------------------
