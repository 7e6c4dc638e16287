//! Unpacking and installing a downloaded artifact: `.tar.gz` with path-traversal, link and size
//! checks, or a single executable, into `<service_dir>/<version>/`.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

/// The normal components of an archive path; refuses absolute paths and `..`.
fn safe_components(p: &Path, entry: &str) -> Result<Vec<String>, UpdateError> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(UpdateError::Unsafe {
                    entry: entry.into(),
                    why: "'..' in the path".into(),
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(UpdateError::Unsafe {
                    entry: entry.into(),
                    why: "absolute path".into(),
                })
            }
        }
    }
    Ok(out)
}

/// True when `path` is `link` or lies below it.
fn under(path: &[String], link: &[String]) -> bool {
    path.len() >= link.len() && path[..link.len()] == *link
}

/// The per-entry check of [`unpack_tar_gz`], before anything is written: `raw` is the entry's
/// path, `kind` its type, `link_name` reads its link target (called only for symlinks and hard
/// links) and `links` holds the symlinks of the archive seen so far (a symlink entry is added).
/// `Ok(true)`: unpack the entry; `Ok(false)`: skip it (extension headers, `./`); `Err`: refuse
/// the archive.
pub fn check_entry(
    raw: &Path,
    kind: tar::EntryType,
    link_name: impl FnOnce() -> io::Result<Option<PathBuf>>,
    links: &mut Vec<Vec<String>>,
) -> Result<bool, UpdateError> {
    let shown = raw.to_string_lossy().into_owned();
    let unsafe_entry = |why: &str| UpdateError::Unsafe {
        entry: shown.clone(),
        why: why.to_string(),
    };
    use tar::EntryType as T;
    match kind {
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(false),
        T::Char | T::Block | T::Fifo => return Err(unsafe_entry("device file or FIFO")),
        T::GNUSparse => return Err(unsafe_entry("sparse files are not supported")),
        _ => {}
    }
    let parts = safe_components(raw, &shown)?;
    if parts.is_empty() {
        return Ok(false); // "./"
    }
    if links.iter().any(|l| under(&parts, l)) {
        return Err(unsafe_entry(
            "path goes through or over a symlink of the archive",
        ));
    }
    if kind.is_symlink() || kind.is_hard_link() {
        let target = link_name()
            .map_err(|err| UpdateError::Archive(format!("link of {shown}: {err}")))?
            .ok_or_else(|| unsafe_entry("link without a target"))?;
        if kind.is_symlink() {
            // Resolve lexically from the link's directory; it may never climb above dest.
            if target.is_absolute() {
                return Err(unsafe_entry("symlink to an absolute path"));
            }
            // Every `..` must come before the first name: a name may be another symlink of
            // the archive (in any order), and `..` after it climbs from where that one
            // points, not lexically (`a -> .`, `b -> a/..` is dest's parent; found by fuzz).
            let mut at: Vec<String> = parts[..parts.len() - 1].to_vec();
            let mut named = false;
            for c in target.components() {
                match c {
                    Component::Normal(s) => {
                        named = true;
                        at.push(s.to_string_lossy().into_owned())
                    }
                    Component::CurDir => {}
                    Component::ParentDir if named => {
                        return Err(unsafe_entry("symlink target has '..' after a name"));
                    }
                    Component::ParentDir => {
                        if at.pop().is_none() {
                            return Err(unsafe_entry("symlink points outside the directory"));
                        }
                    }
                    _ => return Err(unsafe_entry("symlink to an absolute path")),
                }
            }
            links.push(parts.clone());
        } else {
            let shown_t = target.to_string_lossy().into_owned();
            let t = safe_components(&target, &shown_t)
                .map_err(|_| unsafe_entry("hard link to outside the directory"))?;
            if t.is_empty() || links.iter().any(|l| under(&t, l)) {
                return Err(unsafe_entry("hard link to a symlink or outside"));
            }
        }
    }
    Ok(true)
}

/// Unpacks the gzip tar `archive` into the existing empty directory `dest`, refusing (and
/// stopping at) anything that could write outside it: absolute paths, `..`, symlinks whose
/// target leaves `dest`, entries through or over a symlink of the archive, hard links to
/// outside or to symlinks, device files and FIFOs. Returns the number of entries unpacked.
pub fn unpack_tar_gz(archive: &Path, dest: &Path) -> Result<usize, UpdateError> {
    let f = File::open(archive).map_err(io_err(archive))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(f)));
    ar.set_preserve_permissions(false);
    // Never group- or world-writable, whatever the archive says (a 0666 file stays 0644).
    ar.set_mask(0o022);
    ar.set_preserve_ownerships(false);
    ar.set_overwrite(false);
    let entries = ar
        .entries()
        .map_err(|e| UpdateError::Archive(format!("{}: {e}", archive.display())))?;
    let mut links: Vec<Vec<String>> = Vec::new();
    let mut total: u64 = 0;
    let mut count = 0;
    for entry in entries {
        let mut e =
            entry.map_err(|e| UpdateError::Archive(format!("{}: {e}", archive.display())))?;
        let raw = e
            .path()
            .map_err(|err| UpdateError::Archive(format!("entry name: {err}")))?
            .into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let unsafe_entry = |why: &str| UpdateError::Unsafe {
            entry: shown.clone(),
            why: why.to_string(),
        };
        let kind = e.header().entry_type();
        let link_name = || e.link_name().map(|t| t.map(|t| t.into_owned()));
        if !check_entry(&raw, kind, link_name, &mut links)? {
            continue;
        }
        total = total.saturating_add(e.header().size().unwrap_or(0));
        if total > UNPACK_MAX {
            return Err(UpdateError::Archive(format!(
                "unpacked content larger than {UNPACK_MAX} bytes"
            )));
        }
        match e.unpack_in(dest) {
            Ok(true) => count += 1,
            Ok(false) => return Err(unsafe_entry("refused by the unpacker")),
            Err(err) => return Err(UpdateError::Archive(format!("{shown}: {err}"))),
        }
    }
    Ok(count)
}

/// Installs a downloaded artifact as `service_dir/<version>/`: a `.tar.gz`/`.tgz` (by the
/// URL) is unpacked, anything else becomes the executable `<version>/<name>` (0755). The
/// content is prepared in a temporary directory and renamed into place, so `<version>/` is
/// either complete or absent. An existing `<version>/` (not current) is replaced.
pub fn install(
    service_dir: &Path,
    name: &str,
    version: &str,
    artifact: TempFile,
    tar_gz: bool,
) -> Result<PathBuf, UpdateError> {
    let target = service_dir.join(version);
    let tmp = temp_name(service_dir, "unpack");
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        if tar_gz {
            let n = unpack_tar_gz(artifact.path(), &tmp)?;
            log::info!("service {name} {version}: unpacked {n} entries");
        } else {
            let exe = tmp.join(name);
            fs::set_permissions(artifact.path(), fs::Permissions::from_mode(0o755))
                .map_err(io_err(artifact.path()))?;
            fs::rename(artifact.path(), &exe).map_err(io_err(&exe))?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io_err(&tmp))?;
        if fs::symlink_metadata(&target).is_ok() {
            log::info!("replacing the earlier copy of {}", target.display());
            remove_any(&target).map_err(io_err(&target))?;
        }
        fs::rename(&tmp, &target).map_err(io_err(&target))?;
        sync_dir(service_dir);
        Ok(target.clone())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    drop(artifact);
    result
}

pub(crate) fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

// ---------------------------------------------------------------------------------------
// current, retention
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    /// `check_entry` for one entry; `Ok(true)` unpack, `Ok(false)` skip, `Err(why)` refused.
    fn check(
        path: &str,
        kind: T,
        target: Option<&str>,
        links: &mut Vec<Vec<String>>,
    ) -> Result<bool, String> {
        let link_name = || Ok(target.map(PathBuf::from));
        check_entry(Path::new(path), kind, link_name, links).map_err(|e| match e {
            UpdateError::Unsafe { why, .. } => why,
            other => format!("not Unsafe: {other}"),
        })
    }

    #[test]
    fn check_entry_accepts_skips_and_refuses_like_the_unpacker() {
        let mut links = Vec::new();
        assert_eq!(check("bin/run", T::Regular, None, &mut links), Ok(true));
        assert_eq!(check("./", T::Directory, None, &mut links), Ok(false));
        assert_eq!(check("x", T::XHeader, None, &mut links), Ok(false));
        assert_eq!(
            check("a/../../x", T::Regular, None, &mut links),
            Err("'..' in the path".into())
        );
        assert_eq!(
            check("/etc/x", T::Regular, None, &mut links),
            Err("absolute path".into())
        );
        assert_eq!(
            check("p", T::Fifo, None, &mut links),
            Err("device file or FIFO".into())
        );
        assert_eq!(
            check("up", T::Symlink, Some("../.."), &mut links),
            Err("symlink points outside the directory".into())
        );
        assert_eq!(
            check("abs", T::Symlink, Some("/etc"), &mut links),
            Err("symlink to an absolute path".into())
        );
        assert_eq!(check("lib", T::Symlink, Some("bin"), &mut links), Ok(true));
        assert_eq!(links, vec![vec!["lib".to_string()]]);
        assert_eq!(
            check("lib/x", T::Regular, None, &mut links),
            Err("path goes through or over a symlink of the archive".into())
        );
        assert_eq!(
            check("h", T::Link, Some("lib"), &mut links),
            Err("hard link to a symlink or outside".into())
        );
        assert_eq!(check("h", T::Link, Some("bin/run"), &mut links), Ok(true));
        assert_eq!(
            check("s", T::Symlink, None, &mut links),
            Err("link without a target".into())
        );
    }

    #[test]
    fn symlink_chains_cannot_climb_out() {
        // `l2 -> l1/..` with `l1 -> .` is dest's parent on disk although it looks inside.
        let mut links = Vec::new();
        assert_eq!(check("l1", T::Symlink, Some("."), &mut links), Ok(true));
        assert_eq!(
            check("l2", T::Symlink, Some("l1/.."), &mut links),
            Err("symlink target has '..' after a name".into())
        );
        // The same in the other order, before l1 exists.
        let mut links = Vec::new();
        assert_eq!(
            check("l2", T::Symlink, Some("x/../y"), &mut links),
            Err("symlink target has '..' after a name".into())
        );
        // Leading `..` (resolved through the real directories of the link) stays allowed.
        assert_eq!(
            check("a/b/l", T::Symlink, Some("./../../c/d"), &mut links),
            Ok(true)
        );
    }

    #[test]
    fn check_entry_reads_the_link_name_only_for_links() {
        let never = || -> io::Result<Option<PathBuf>> { panic!("link name read for a file") };
        assert!(check_entry(Path::new("f"), T::Regular, never, &mut Vec::new()).unwrap());
        let broken = || Err(io::Error::other("bad name"));
        let err = check_entry(Path::new("l"), T::Symlink, broken, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, UpdateError::Archive(ref m) if m == "link of l: bad name"));
    }
}
