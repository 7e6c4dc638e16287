//! The tar unpacker's per-entry path check, `socketman::services::update::check_entry`, on a
//! sequence of entries as one archive would list them.
//!
//! Input: entries separated by `\n`; each is one tar type byte (`0` file, `1` hard link,
//! `2` symlink, `5` directory, `x`, `L`, …) then the path, optionally `\0` and the link
//! target. Entries are checked in order until the first refusal, as the unpacker does.
//!
//! Oracle: a model of the tree the accepted entries make. No accepted entry may lie through
//! or over a symlink of the archive, and every accepted symlink, resolved the way the kernel
//! would (following the archive's other symlinks, whatever their order), must stay inside the
//! destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socketman::services::update::check_entry;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

type Names = Vec<Vec<u8>>;

fn names(p: &Path) -> Option<Names> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.as_bytes().to_vec()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Where `target`, read from directory `dir`, leads in the model; `None` when it climbs above
/// the root (escape). Loops and dangling links are not escapes (the kernel stops there).
/// `follows`: links followed so far in this lookup; like the kernel (40 in all per path
/// walk, not per level) it gives up beyond that, which also bounds the work (counting per
/// level made chains of links exponential: a fuzz run sat in one input for 30 min).
fn resolve(
    dir: &[Vec<u8>],
    target: &Path,
    links: &HashMap<Names, PathBuf>,
    follows: &mut u32,
) -> Option<Names> {
    if *follows > 40 {
        return Some(Vec::new()); // ELOOP: the kernel refuses, nothing is reached
    }
    let mut cur: Names = dir.to_vec();
    for c in target.components() {
        match c {
            Component::Normal(s) => {
                cur.push(s.as_bytes().to_vec());
                if let Some(t) = links.get(&cur) {
                    *follows += 1;
                    if *follows > 40 {
                        return Some(Vec::new());
                    }
                    let parent = cur[..cur.len() - 1].to_vec();
                    cur = resolve(&parent, t, links, follows)?;
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(cur)
}

fuzz_target!(|data: &[u8]| {
    let mut links: Vec<Vec<String>> = Vec::new();
    let mut model: HashMap<Names, PathBuf> = HashMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&ty, rest)) = line.split_first() else {
            continue;
        };
        let (path, target) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let path = Path::new(OsStr::from_bytes(path));
        let kind = tar::EntryType::new(ty);
        let link_name = || Ok(target.map(|t| PathBuf::from(OsStr::from_bytes(t))));
        match check_entry(path, kind, link_name, &mut links) {
            Err(_) => break,
            Ok(false) => continue,
            Ok(true) => {}
        }
        let parts = names(path).expect("accepted path with '..' or '/'");
        assert!(!parts.is_empty());
        for n in 1..=parts.len() {
            assert!(
                !model.contains_key(&parts[..n]),
                "accepted {path:?} through or over a symlink"
            );
        }
        if kind.is_symlink() {
            let t = PathBuf::from(OsStr::from_bytes(target.unwrap_or_default()));
            model.insert(parts, t);
        }
    }
    for (at, target) in &model {
        let dir = &at[..at.len() - 1];
        assert!(
            resolve(dir, target, &model, &mut 0).is_some(),
            "symlink {:?} -> {target:?} leads outside the destination (links: {model:?})",
            String::from_utf8_lossy(&at.join(&b'/'))
        );
    }
});
