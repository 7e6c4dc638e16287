//! `socketman::services::update::unpack_tar_gz` on a real file: the input is an uncompressed
//! tar stream, gzipped here (the fuzzer cannot keep a gzip CRC right) into a temp file and
//! unpacked into a fresh directory.
//!
//! Oracle: nothing appears beside the destination, and no symlink inside it resolves to a
//! place outside it. Run it as an unprivileged user where you can (see scripts/fuzz.sh).
#![no_main]

use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use socketman::services::update::unpack_tar_gz;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn work() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("socketman-fuzz-tar-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("work dir");
        d
    })
}

fn walk(dir: &Path, root: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_symlink() {
            if let Ok(real) = fs::canonicalize(&p) {
                assert!(
                    real.starts_with(root),
                    "{p:?} resolves to {real:?}, outside {root:?}"
                );
            }
        } else if m.is_dir() {
            walk(&p, root);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = work().join("run");
    let _ = fs::remove_dir_all(&base);
    let dest = base.join("d");
    fs::create_dir_all(&dest).expect("dest");
    let archive = work().join("a.tar.gz");
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    fs::write(&archive, gz.finish().expect("gzip")).expect("archive");

    let _ = unpack_tar_gz(&archive, &dest);

    let beside: Vec<_> = fs::read_dir(&base)
        .expect("base")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("d")],
        "written beside dest"
    );
    let root = fs::canonicalize(&dest).expect("dest");
    walk(&root, &root);
    let _ = fs::remove_dir_all(&base);
});
