//! Service updates (SPEC §8.3, job `service.update` of §4.4): download an artifact over
//! HTTP(S) into the target filesystem, check its sha256, unpack it safely (or take it as the
//! single executable) into `<state_dir>/services/<name>/<version>/`, switch the `current`
//! symlink atomically, restart the service through the supervisor, watch it, and roll back to
//! the previous version when it does not stay up. Two versions are kept.
//!
//! Runs on the job worker thread that took the job; it blocks that worker for the download
//! and the watch (10 s, longer while waiting for a first heartbeat). Updates of one service
//! are serialised by a process-wide lock. The supervisor is reached through the
//! [`ServiceControl`] trait, so the orchestration is unit-tested with a fake.
//!
//! The download helpers ([`download`], [`check_sha256`], [`parse_sha256`], [`validate_url`])
//! are shared with the self-update (`src/services/selfupdate.rs`).
//!
//! Result on a rolled-back update: the job fails (`success:false`) with
//! `error: "new version did not stay up (<why>); rolled back to <previous>"` and still
//! carries the `result` object with `rolled_back:true` (see [`UpdateFailure`]): an operator
//! filtering a fleet on `success` sees every device that is not running the asked version.
#![forbid(unsafe_code)]

pub mod artifact;
pub mod layout;
pub mod unpack;

pub use artifact::*;
pub use layout::*;
pub use unpack::*;

use crate::config::Config;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest artifact accepted (services and socketman itself).
pub const DOWNLOAD_MAX: u64 = 64 * 1024 * 1024;
/// Overall limit of one download.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest total size of the files in an archive (a gzip bomb stops here).
pub const UNPACK_MAX: u64 = 256 * 1024 * 1024;
/// How long a new version must stay up (SPEC §8.3).
pub const WATCH_UP: Duration = Duration::from_secs(10);
/// Upper bound of the wait for a first heartbeat of a heartbeating service (never shorter
/// than [`WATCH_UP`], never longer than `watchdog_timeout`).
pub const WATCH_HEARTBEAT_MAX: Duration = Duration::from_secs(60);
/// Name of the symlink to the running version.
pub const CURRENT: &str = "current";

/// What went wrong in an update. The `Display` text is the job's `error`.
#[derive(Debug)]
pub enum UpdateError {
    /// `meta.args` missing or malformed; the text names the argument.
    Args(String),
    /// The service is not in `services`.
    NoSuchService(String),
    /// Another update of the same service is running.
    Busy(String),
    /// The service already runs this version.
    SameVersion { name: String, version: String },
    /// The HTTP request failed (connection, TLS, status, timeout); URL redacted.
    Download { url: String, detail: String },
    /// The artifact is larger than [`DOWNLOAD_MAX`].
    TooLarge { url: String, limit: u64 },
    /// The sha256 of the download differs from the one asked for.
    Checksum { expected: String, got: String },
    /// The archive holds something that may not be unpacked (names the entry).
    Unsafe { entry: String, why: String },
    /// The archive is damaged.
    Archive(String),
    /// A file operation failed (names the path).
    Io { path: PathBuf, err: io::Error },
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Args(s) => write!(f, "invalid args: {s}"),
            UpdateError::NoSuchService(n) => write!(f, "no such service: {n}"),
            UpdateError::Busy(n) => write!(f, "busy: an update of service {n} is running"),
            UpdateError::SameVersion { name, version } => {
                write!(f, "service {name} already runs version {version}")
            }
            UpdateError::Download { url, detail } => write!(f, "download {url}: {detail}"),
            UpdateError::TooLarge { url, limit } => {
                write!(f, "download {url}: larger than {limit} bytes")
            }
            UpdateError::Checksum { expected, got } => {
                write!(f, "checksum mismatch: expected {expected}, got {got}")
            }
            UpdateError::Unsafe { entry, why } => {
                write!(f, "unsafe archive entry {entry:?}: {why}")
            }
            UpdateError::Archive(s) => write!(f, "bad archive: {s}"),
            UpdateError::Io { path, err } => write!(f, "{}: {err}", path.display()),
        }
    }
}

impl std::error::Error for UpdateError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UpdateError + '_ {
    move |err| UpdateError::Io {
        path: path.to_path_buf(),
        err,
    }
}

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

/// What the supervisor says about a service at one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// A live process of the service exists.
    pub running: bool,
    pub pid: Option<u32>,
    /// Restarts counted by the supervisor.
    pub restarts: u64,
    /// SPEC §4.4 status word (`running`, `backoff`, `fatal`, …).
    pub status: String,
    /// When the last heartbeat of the service arrived (Unix seconds).
    pub last_heartbeat: Option<u64>,
}

/// The verdict of a [`Watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep watching.
    Pending,
    /// It stayed up (and heartbeated when needed).
    Up,
    /// It did not; the text says why.
    Down(String),
}

/// Pure state machine deciding whether a freshly restarted service "stays up": running for
/// `up_for` with the same pid and no new restart, and, when `need_heartbeat`, a heartbeat
/// in a later second than `since_unix` before `heartbeat_by`.
#[derive(Debug, Clone)]
pub struct Watch {
    since: Instant,
    since_unix: u64,
    up_for: Duration,
    need_heartbeat: bool,
    heartbeat_by: Duration,
    first: Option<(Option<u32>, u64)>,
}

impl Watch {
    pub fn new(
        since: Instant,
        since_unix: u64,
        up_for: Duration,
        heartbeat: Option<Duration>,
    ) -> Watch {
        Watch {
            since,
            since_unix,
            up_for,
            need_heartbeat: heartbeat.is_some(),
            heartbeat_by: heartbeat.unwrap_or(up_for).max(up_for),
            first: None,
        }
    }

    /// Feeds one observation taken at `now`.
    pub fn step(&mut self, now: Instant, obs: &Observation) -> Verdict {
        let elapsed = now.saturating_duration_since(self.since);
        if !obs.running {
            // A short "starting" right after the restart is fine; anything else is not.
            if obs.status == "starting" && elapsed < self.up_for && self.first.is_none() {
                return Verdict::Pending;
            }
            return Verdict::Down(format!("status {}", obs.status));
        }
        match self.first {
            None => self.first = Some((obs.pid, obs.restarts)),
            Some((pid, restarts)) => {
                if pid != obs.pid {
                    return Verdict::Down(format!(
                        "restarted (pid {} then {})",
                        pid.map_or("-".into(), |p| p.to_string()),
                        obs.pid.map_or("-".into(), |p| p.to_string())
                    ));
                }
                if obs.restarts > restarts {
                    return Verdict::Down("restarted".into());
                }
            }
        }
        if elapsed < self.up_for {
            return Verdict::Pending;
        }
        if !self.need_heartbeat || obs.last_heartbeat.is_some_and(|t| t > self.since_unix) {
            return Verdict::Up;
        }
        if elapsed >= self.heartbeat_by {
            return Verdict::Down(format!(
                "no heartbeat within {} s",
                self.heartbeat_by.as_secs()
            ));
        }
        Verdict::Pending
    }
}

// ---------------------------------------------------------------------------------------
// Orchestration
// ---------------------------------------------------------------------------------------

/// What the update needs from the supervisor (SPEC §8.1).
pub trait ServiceControl {
    /// Marks the service `updating` (true) or back to its normal status (false).
    fn set_updating(&self, name: &str, updating: bool);
    /// Stops and starts the service again, now from `current` (or its configured `dir`).
    fn restart(&self, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
    /// The service's state now.
    fn observe(&self, name: &str) -> Option<Observation>;
}

/// A failed `service.update`: the error text, and the result object when the update got as
/// far as switching versions (a rollback).
#[derive(Debug)]
pub struct UpdateFailure {
    pub error: String,
    pub result: Option<Value>,
}

impl From<UpdateError> for UpdateFailure {
    fn from(e: UpdateError) -> Self {
        UpdateFailure {
            error: e.to_string(),
            result: None,
        }
    }
}

/// How long to watch and how often to look; tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    pub up_for: Duration,
    pub heartbeat_max: Duration,
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            up_for: WATCH_UP,
            heartbeat_max: WATCH_HEARTBEAT_MAX,
            poll: Duration::from_millis(250),
        }
    }
}

fn locks() -> &'static Mutex<HashSet<String>> {
    static L: std::sync::OnceLock<Mutex<HashSet<String>>> = std::sync::OnceLock::new();
    L.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Held while a service is being updated; a second update of it is refused.
struct ServiceLock(String);

impl ServiceLock {
    /// Keyed by the service's directory (one per service and state_dir).
    fn take(name: &str, dir: &Path) -> Result<ServiceLock, UpdateError> {
        let key = dir.to_string_lossy().into_owned();
        let mut set = locks().lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(key.clone()) {
            return Err(UpdateError::Busy(name.to_string()));
        }
        Ok(ServiceLock(key))
    }
}

impl Drop for ServiceLock {
    fn drop(&mut self) {
        let mut set = locks().lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.0);
    }
}

/// Resets the `updating` mark whatever way the update ends.
struct UpdatingMark<'a> {
    ctl: &'a dyn ServiceControl,
    name: &'a str,
}

impl Drop for UpdatingMark<'_> {
    fn drop(&mut self) {
        self.ctl.set_updating(self.name, false);
    }
}

/// Watches `name` after a restart; `Up` or `Down(why)`. Returns early on `stop`.
fn watch(
    ctl: &dyn ServiceControl,
    name: &str,
    since: Instant,
    heartbeat: Option<Duration>,
    timing: &Timing,
    stop: &dyn Fn(Duration) -> bool,
) -> Verdict {
    let mut w = Watch::new(since, crate::proto::now(), timing.up_for, heartbeat);
    loop {
        let v = match ctl.observe(name) {
            Some(obs) => w.step(Instant::now(), &obs),
            None => Verdict::Down("the supervisor no longer knows it".into()),
        };
        if v != Verdict::Pending {
            return v;
        }
        if stop(timing.poll) {
            return Verdict::Down("socketman is stopping".into());
        }
    }
}

/// `service.update` (SPEC §8.3) with the supervisor behind `ctl`. `stop(d)` sleeps up to `d`
/// and returns true when the agent is stopping.
pub fn service_update(
    cfg: &Config,
    ctl: &dyn ServiceControl,
    args: &Value,
    timing: &Timing,
    stop: &dyn Fn(Duration) -> bool,
) -> Result<Value, UpdateFailure> {
    let a = parse_args(args, true)?;
    let svc = cfg
        .services
        .iter()
        .find(|s| s.name == a.name)
        .ok_or_else(|| UpdateError::NoSuchService(a.name.clone()))?;
    let dir = service_dir(&cfg.state_dir, &a.name);
    let _lock = ServiceLock::take(&a.name, &dir)?;
    crate::platform::fs::ensure_dir(&dir).map_err(io_err(&dir))?;
    let previous = current_version(&dir);
    if previous.as_deref() == Some(a.version.as_str()) {
        return Err(UpdateError::SameVersion {
            name: a.name,
            version: a.version,
        }
        .into());
    }
    // The version the service reports when no installed version is current.
    let previous_shown = previous.clone().or_else(|| svc.version.clone());
    log::info!(
        "service.update {}: {} -> {} from {}",
        a.name,
        previous_shown.as_deref().unwrap_or("unknown"),
        a.version,
        crate::http::redact(&a.url)
    );
    ctl.set_updating(&a.name, true);
    let _mark = UpdatingMark { ctl, name: &a.name };

    let dl = download(cfg, &a.url, &dir, DOWNLOAD_MAX, DOWNLOAD_TIMEOUT)?;
    check_sha256(&a.sha256, &dl.sha256)?;
    install(&dir, &a.name, &a.version, dl.file, is_tar_gz(&a.url))?;
    switch_current(&dir, &a.version).map_err(io_err(&dir.join(CURRENT)))?;
    log::info!("service {}: current -> {}", a.name, a.version);

    let heartbeat = svc.heartbeat.then(|| {
        Duration::from_secs(cfg.watchdog_timeout)
            .min(timing.heartbeat_max)
            .max(timing.up_for)
    });
    let since = Instant::now();
    let verdict = match ctl.restart(&a.name) {
        Ok(()) => watch(ctl, &a.name, since, heartbeat, timing, stop),
        Err(e) => Verdict::Down(format!("restart failed: {e}")),
    };
    let result = |rolled_back: bool| {
        json!({"name": a.name, "version": a.version, "previous": previous_shown,
               "rolled_back": rolled_back})
    };
    match verdict {
        Verdict::Up | Verdict::Pending => {
            if let Some(p) = &previous {
                prune(&dir, &[a.version.as_str(), p.as_str()]);
            } else {
                prune(&dir, &[a.version.as_str()]);
            }
            log::info!("service {} updated to {}", a.name, a.version);
            Ok(result(false))
        }
        Verdict::Down(why) => {
            log::warn!(
                "service {} version {} did not stay up ({why}); rolling back",
                a.name,
                a.version
            );
            let back = match &previous {
                Some(p) => switch_current(&dir, p),
                None => clear_current(&dir),
            };
            let shown = previous_shown
                .as_deref()
                .unwrap_or("the configured version");
            let mut error = format!("new version did not stay up ({why}); rolled back to {shown}");
            if let Err(e) = back {
                error = format!("new version did not stay up ({why}); rollback failed: {e}");
            } else if let Err(e) = ctl.restart(&a.name) {
                error.push_str(&format!(", but its restart failed: {e}"));
            }
            let mut keep = vec![a.version.as_str()];
            if let Some(p) = &previous {
                keep.push(p.as_str());
            }
            prune(&dir, &keep);
            log::warn!("service.update {}: {error}", a.name);
            Err(UpdateFailure {
                error,
                result: Some(result(true)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn sha_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn args_are_validated() {
        let ok = json!({"name": "core", "url": "https://h/x.tgz", "sha256": "AB".repeat(32), "version": "1.2.3"});
        let a = parse_args(&ok, true).unwrap();
        assert_eq!(
            a.sha256,
            "ab".repeat(32),
            "upper-case hex accepted, lowered"
        );
        for (k, v) in [
            ("name", json!("../etc")),
            ("name", json!("a/b")),
            ("name", json!("")),
            ("version", json!("")),
            ("version", json!("1/2")),
            ("version", json!("..")),
            ("version", json!("current")),
            ("version", json!(".hidden")),
            ("url", json!("ftp://h/x")),
            ("url", json!("http://")),
            ("url", json!("file:///etc/passwd")),
            ("sha256", json!("abc")),
            ("sha256", json!("g".repeat(64))),
            ("version", json!(3)),
        ] {
            let mut bad = ok.clone();
            bad[k] = v.clone();
            let e = parse_args(&bad, true).unwrap_err().to_string();
            assert!(e.starts_with("invalid args"), "{k}={v}: {e}");
        }
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("sha256");
        assert!(parse_args(&missing, true)
            .unwrap_err()
            .to_string()
            .contains("sha256 is required"));
        let agent = json!({"url": "http://h/sm", "sha256": "0".repeat(64), "version": "0.2.0"});
        assert_eq!(parse_args(&agent, false).unwrap().name, "");
    }

    #[test]
    fn stream_is_hashed_limited_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"hello artifact".to_vec();
        let d = save_stream(&mut &data[..], dir.path(), 1024, "http://h/a").unwrap();
        assert_eq!(d.sha256, sha_hex(&data));
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(fs::read(d.file.path()).unwrap(), data);
        let p = d.file.path().to_path_buf();
        drop(d);
        assert!(!p.exists(), "temporary download removed when dropped");

        let big = vec![7u8; 5000];
        let e = save_stream(
            &mut &big[..],
            dir.path(),
            4096,
            "http://h/a?access_token=s3cret",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("larger than 4096"), "{e}");
        assert!(!e.contains("s3cret"), "token redacted: {e}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left");
    }

    #[test]
    fn sha_mismatch_is_reported_with_both_sums() {
        let good = sha_hex(b"x");
        assert!(check_sha256(&good.to_uppercase(), &good).is_ok());
        let e = check_sha256(&"0".repeat(64), &good)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("checksum mismatch: expected {}, got {good}", "0".repeat(64))
        );
    }

    #[test]
    fn tar_gz_is_recognised_by_url_path() {
        assert!(is_tar_gz("https://h/a/svc-1.2.tar.gz"));
        assert!(is_tar_gz("http://h/svc.TGZ?access_token=x"));
        assert!(!is_tar_gz("http://h/svc?f=x.tgz"));
        assert!(!is_tar_gz("http://h/svc.bin"));
    }

    // --- archives built with the tar crate -------------------------------------------

    enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Fifo(&'a str),
        /// A regular file whose raw header name is written unchecked.
        RawName(&'a [u8], &'a [u8]),
    }

    fn targz(entries: &[E]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            match e {
                E::File(p, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(*mode);
                    b.append_data(&mut h, p, *data).unwrap();
                }
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                E::Sym(p, t) | E::Hard(p, t) => {
                    h.set_entry_type(if matches!(e, E::Sym(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_size(0);
                    h.set_mode(0o777);
                    b.append_link(&mut h, p, t).unwrap();
                }
                E::Fifo(p) => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_size(0);
                    h.set_mode(0o644);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                E::RawName(name, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    // Header::set_path refuses "..": write the bytes ourselves.
                    let gnu = h.as_gnu_mut().unwrap();
                    gnu.name[..name.len()].copy_from_slice(name);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<usize, UpdateError>) {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a.tgz");
        fs::write(&a, bytes).unwrap();
        let dest = root.path().join("sub/dest");
        fs::create_dir_all(&dest).unwrap();
        let r = unpack_tar_gz(&a, &dest);
        (root, r)
    }

    #[test]
    fn good_archive_unpacks_with_modes_and_inner_links() {
        let bytes = targz(&[
            E::Dir("bin"),
            E::File("bin/run", b"#!/bin/sh\necho hi\n", 0o755),
            E::File("etc/conf", b"x=1", 0o4644),
            E::Sym("bin/conf", "../etc/conf"),
            E::Hard("bin/run2", "bin/run"),
        ]);
        let (root, r) = unpack_bytes(&bytes);
        assert_eq!(r.unwrap(), 5);
        let d = root.path().join("sub/dest");
        let mode = fs::metadata(d.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let m2 = fs::metadata(d.join("etc/conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m2 & 0o7000, 0, "setuid bit not kept");
        assert_eq!(fs::read(d.join("bin/conf")).unwrap(), b"x=1");
        assert_eq!(
            fs::read(d.join("bin/run2")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }

    #[test]
    fn world_writable_entries_are_unpacked_without_group_or_other_write() {
        let bytes = targz(&[E::File("open", b"x", 0o666), E::File("run", b"x", 0o777)]);
        let (root, r) = unpack_bytes(&bytes);
        assert_eq!(r.unwrap(), 2);
        let d = root.path().join("sub/dest");
        let mode = |n: &str| fs::metadata(d.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("open"), 0o644);
        assert_eq!(mode("run"), 0o755);
    }

    fn refused(entries: &[E], why: &str) {
        let (root, r) = unpack_bytes(&targz(entries));
        let e = r.unwrap_err().to_string();
        assert!(e.contains(why), "expected {why:?} in {e:?}");
        assert!(
            !root.path().join("sub/evil").exists() && !root.path().join("evil").exists(),
            "nothing written outside"
        );
    }

    #[test]
    fn parent_dir_entries_are_refused() {
        refused(
            &[E::File("ok", b"1", 0o644), E::RawName(b"../evil", b"pwned")],
            "'..' in the path",
        );
        refused(&[E::RawName(b"a/../../evil", b"pwned")], "'..' in the path");
    }

    #[test]
    fn absolute_entries_are_refused() {
        refused(&[E::RawName(b"/tmp/evil-socketman", b"x")], "absolute path");
    }

    #[test]
    fn escaping_links_are_refused() {
        refused(&[E::Sym("evil", "../../evil")], "points outside");
        refused(&[E::Sym("a/b/evil", "../../../x")], "points outside");
        refused(&[E::Sym("evil", "/etc/passwd")], "absolute");
        // A link that stays inside, then a write through it.
        refused(
            &[E::Sym("up", "."), E::File("up/x", b"1", 0o644)],
            "through or over a symlink",
        );
        refused(&[E::Hard("evil", "../../etc/passwd")], "hard link");
        refused(&[E::Hard("evil", "/etc/passwd")], "hard link");
        refused(
            &[E::Sym("s", "x"), E::Hard("h", "s")],
            "hard link to a symlink",
        );
        refused(&[E::Fifo("fifo")], "device file or FIFO");
        // Two links that each look inside, but l2 is dest's parent on disk (fuzz/tar_path).
        refused(
            &[E::Sym("l1", "."), E::Sym("l2", "l1/..")],
            "'..' after a name",
        );
    }

    #[test]
    fn garbage_is_a_bad_archive() {
        let (_root, r) = unpack_bytes(b"this is not gzip");
        assert!(r.unwrap_err().to_string().starts_with("bad archive"));
    }

    // --- install, current, retention -------------------------------------------------

    fn artifact(dir: &Path, data: &[u8]) -> TempFile {
        let d = save_stream(&mut &data[..], dir, DOWNLOAD_MAX, "http://h/x").unwrap();
        d.file
    }

    #[test]
    fn install_switch_and_keep_two_versions() {
        let root = tempfile::tempdir().unwrap();
        let sd = service_dir(root.path(), "core");
        fs::create_dir_all(&sd).unwrap();
        assert_eq!(current_version(&sd), None);

        // A single executable.
        let a = artifact(&sd, b"#!/bin/sh\nexit 0\n");
        let v1 = install(&sd, "core", "1.0", a, false).unwrap();
        let exe = v1.join("core");
        assert_eq!(
            fs::metadata(&exe).unwrap().permissions().mode() & 0o777,
            0o755
        );
        switch_current(&sd, "1.0").unwrap();
        assert_eq!(current_version(&sd).as_deref(), Some("1.0"));
        assert_eq!(fs::read_link(sd.join("current")).unwrap(), Path::new("1.0"));
        assert_eq!(
            installed_dir(root.path(), "core"),
            Some((sd.join("current"), "1.0".to_string()))
        );

        // An archive.
        let a = artifact(&sd, &targz(&[E::File("run.sh", b"echo 2", 0o755)]));
        install(&sd, "core", "2.0", a, true).unwrap();
        switch_current(&sd, "2.0").unwrap();
        assert_eq!(fs::read(sd.join("current/run.sh")).unwrap(), b"echo 2");
        assert!(!sd.join("current.tmp").exists());

        let a = artifact(&sd, b"three");
        install(&sd, "core", "3.0", a, false).unwrap();
        switch_current(&sd, "3.0").unwrap();
        fs::write(sd.join(".download-1-99"), b"stale").unwrap();
        let removed = prune(&sd, &["3.0", "2.0"]);
        assert_eq!(
            removed,
            vec![".download-1-99".to_string(), "1.0".to_string()]
        );
        let mut left: Vec<String> = fs::read_dir(&sd)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["2.0", "3.0", "current"]);

        // A refused archive leaves nothing behind and current untouched.
        let a = artifact(&sd, &targz(&[E::RawName(b"../x", b"1")]));
        assert!(install(&sd, "core", "4.0", a, true).is_err());
        assert!(!sd.join("4.0").exists());
        assert_eq!(current_version(&sd).as_deref(), Some("3.0"));
        assert_eq!(fs::read_dir(&sd).unwrap().count(), 3, "no temporary left");

        clear_current(&sd).unwrap();
        assert_eq!(current_version(&sd), None);
        clear_current(&sd).unwrap();
    }

    #[test]
    fn switch_replaces_a_stale_tmp_link() {
        let root = tempfile::tempdir().unwrap();
        let sd = root.path();
        fs::create_dir(sd.join("1")).unwrap();
        fs::create_dir(sd.join("2")).unwrap();
        std::os::unix::fs::symlink("nowhere", sd.join("current.tmp")).unwrap();
        switch_current(sd, "1").unwrap();
        switch_current(sd, "2").unwrap();
        assert_eq!(current_version(sd).as_deref(), Some("2"));
        assert!(fs::symlink_metadata(sd.join("current.tmp")).is_err());
    }

    // --- watch state machine ---------------------------------------------------------

    fn obs(running: bool, pid: u32, restarts: u64) -> Observation {
        Observation {
            running,
            pid: Some(pid),
            restarts,
            status: if running { "running" } else { "backoff" }.into(),
            last_heartbeat: None,
        }
    }

    #[test]
    fn watch_up_after_ten_seconds() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, 1000, WATCH_UP, None);
        assert_eq!(w.step(t0, &obs(true, 10, 0)), Verdict::Pending);
        assert_eq!(
            w.step(t0 + Duration::from_secs(5), &obs(true, 10, 0)),
            Verdict::Pending
        );
        assert_eq!(
            w.step(t0 + Duration::from_secs(10), &obs(true, 10, 0)),
            Verdict::Up
        );
    }

    #[test]
    fn watch_down_on_exit_restart_or_new_pid() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, 1000, WATCH_UP, None);
        w.step(t0, &obs(true, 10, 0));
        assert!(
            matches!(w.step(t0 + Duration::from_secs(1), &obs(false, 10, 0)), Verdict::Down(s) if s.contains("backoff"))
        );
        let mut w = Watch::new(t0, 1000, WATCH_UP, None);
        w.step(t0, &obs(true, 10, 0));
        assert!(
            matches!(w.step(t0 + Duration::from_secs(2), &obs(true, 11, 1)), Verdict::Down(s) if s.contains("pid 10 then 11"))
        );
        let mut w = Watch::new(t0, 1000, WATCH_UP, None);
        w.step(t0, &obs(true, 10, 3));
        assert!(matches!(
            w.step(t0 + Duration::from_secs(2), &obs(true, 10, 4)),
            Verdict::Down(_)
        ));
        // "starting" right after the restart is tolerated, but not for ever.
        let mut w = Watch::new(t0, 1000, WATCH_UP, None);
        let mut starting = obs(false, 0, 0);
        starting.status = "starting".into();
        starting.pid = None;
        assert_eq!(w.step(t0, &starting), Verdict::Pending);
        assert!(matches!(w.step(t0 + WATCH_UP, &starting), Verdict::Down(_)));
    }

    #[test]
    fn watch_waits_for_a_first_heartbeat() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, 1000, WATCH_UP, Some(Duration::from_secs(30)));
        let mut o = obs(true, 10, 0);
        o.last_heartbeat = Some(1000); // the old version, in the second of the restart
        assert_eq!(w.step(t0 + Duration::from_secs(10), &o), Verdict::Pending);
        assert_eq!(w.step(t0 + Duration::from_secs(20), &o), Verdict::Pending);
        o.last_heartbeat = Some(1021);
        assert_eq!(w.step(t0 + Duration::from_secs(22), &o), Verdict::Up);

        let mut w = Watch::new(t0, 1000, WATCH_UP, Some(Duration::from_secs(30)));
        let o = obs(true, 10, 0);
        w.step(t0, &o);
        assert!(
            matches!(w.step(t0 + Duration::from_secs(30), &o), Verdict::Down(s) if s.contains("no heartbeat within 30 s"))
        );
    }

    // --- orchestration with a fake supervisor and a real local HTTP server ------------

    /// Serves `body` once per connection for `n` connections on a free port.
    fn serve(body: Vec<u8>, n: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for _ in 0..n {
                let (mut s, _) = match l.accept() {
                    Ok(x) => x,
                    Err(_) => return,
                };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        format!("http://127.0.0.1:{port}")
    }

    /// A supervisor that "runs" whatever `current` points at: versions listed in `crashing`
    /// exit at once.
    struct Fake {
        dir: PathBuf,
        crashing: Vec<String>,
        log: RefCell<Vec<String>>,
        pid: RefCell<u32>,
    }

    impl ServiceControl for Fake {
        fn set_updating(&self, name: &str, updating: bool) {
            self.log
                .borrow_mut()
                .push(format!("updating {name} {updating}"));
        }
        fn restart(&self, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            *self.pid.borrow_mut() += 1;
            let v = current_version(&self.dir).unwrap_or_else(|| "config".into());
            self.log.borrow_mut().push(format!("restart {name} {v}"));
            Ok(())
        }
        fn observe(&self, _name: &str) -> Option<Observation> {
            let v = current_version(&self.dir).unwrap_or_default();
            let up = !self.crashing.contains(&v);
            Some(obs(up, *self.pid.borrow(), 0))
        }
    }

    fn cfg_with_service(state: &Path) -> Config {
        let text = json!({"topic": "t", "key": "k", "mqtt_host": "localhost", "state_dir": state, "services": [{"name": "core", "cmd": "./core", "version": "0.9"}]});
        crate::config::parse(&text.to_string(), "test.json")
            .unwrap()
            .0
    }

    fn fast() -> Timing {
        Timing {
            up_for: Duration::from_millis(200),
            heartbeat_max: Duration::from_millis(400),
            poll: Duration::from_millis(20),
        }
    }

    fn no_stop(d: Duration) -> bool {
        std::thread::sleep(d);
        false
    }

    #[test]
    fn update_rollback_and_checksum_flow() {
        let root = tempfile::tempdir().unwrap();
        let cfg = cfg_with_service(root.path());
        let sd = service_dir(root.path(), "core");
        let fake = Fake {
            dir: sd.clone(),
            crashing: vec!["3.0".into()],
            log: RefCell::new(Vec::new()),
            pid: RefCell::new(100),
        };
        let good = b"#!/bin/sh\nsleep 100\n".to_vec();
        let args = |v: &str, url: &str, data: &[u8]| json!({"name": "core", "version": v, "url": url, "sha256": sha_hex(data)});

        // 1.0: first install over the configured version.
        let url = serve(good.clone(), 1) + "/core";
        let r = service_update(&cfg, &fake, &args("1.0", &url, &good), &fast(), &no_stop).unwrap();
        assert_eq!(
            r,
            json!({"name": "core", "version": "1.0", "previous": "0.9", "rolled_back": false})
        );
        assert_eq!(current_version(&sd).as_deref(), Some("1.0"));

        // Same version again: refused, nothing downloaded.
        let e =
            service_update(&cfg, &fake, &args("1.0", &url, &good), &fast(), &no_stop).unwrap_err();
        assert!(e.error.contains("already runs version 1.0"), "{}", e.error);

        // Bad checksum: nothing changed.
        let url = serve(good.clone(), 1) + "/core";
        let mut a = args("2.0", &url, &good);
        a["sha256"] = json!("f".repeat(64));
        let e = service_update(&cfg, &fake, &a, &fast(), &no_stop).unwrap_err();
        assert!(
            e.error.starts_with("checksum mismatch: expected ffff"),
            "{}",
            e.error
        );
        assert!(e.result.is_none());
        assert_eq!(current_version(&sd).as_deref(), Some("1.0"));
        assert!(!sd.join("2.0").exists());

        // 2.0 good.
        let url = serve(good.clone(), 1) + "/core";
        service_update(&cfg, &fake, &args("2.0", &url, &good), &fast(), &no_stop).unwrap();
        assert_eq!(current_version(&sd).as_deref(), Some("2.0"));

        // 3.0 crashes: rolled back to 2.0, and 1.0 pruned (two versions kept).
        let url = serve(good.clone(), 1) + "/core";
        let e =
            service_update(&cfg, &fake, &args("3.0", &url, &good), &fast(), &no_stop).unwrap_err();
        assert_eq!(
            e.result,
            Some(json!({"name": "core", "version": "3.0", "previous": "2.0", "rolled_back": true}))
        );
        assert!(e.error.contains("rolled back to 2.0"), "{}", e.error);
        assert_eq!(current_version(&sd).as_deref(), Some("2.0"));
        assert!(!sd.join("1.0").exists());
        let log = fake.log.borrow().join("\n");
        assert!(log.contains("restart core 3.0\nrestart core 2.0"), "{log}");
        assert!(log.ends_with("updating core false"), "{log}");

        // Dead URL: clear error, nothing changed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://127.0.0.1:{}/core", l.local_addr().unwrap().port());
        drop(l);
        let e =
            service_update(&cfg, &fake, &args("4.0", &dead, &good), &fast(), &no_stop).unwrap_err();
        assert!(
            e.error.starts_with("download http://127.0.0.1:"),
            "{}",
            e.error
        );
        assert_eq!(current_version(&sd).as_deref(), Some("2.0"));

        // Unknown service.
        let mut a = args("4.0", &dead, &good);
        a["name"] = json!("nope");
        let e = service_update(&cfg, &fake, &a, &fast(), &no_stop).unwrap_err();
        assert_eq!(e.error, "no such service: nope");
    }

    #[test]
    fn first_update_that_crashes_goes_back_to_the_configured_version() {
        let root = tempfile::tempdir().unwrap();
        let cfg = cfg_with_service(root.path());
        let sd = service_dir(root.path(), "core");
        let fake = Fake {
            dir: sd.clone(),
            crashing: vec!["1.0".into()],
            log: RefCell::new(Vec::new()),
            pid: RefCell::new(1),
        };
        let data = b"bin".to_vec();
        let url = serve(data.clone(), 1) + "/core";
        let a = json!({"name": "core", "version": "1.0", "url": url, "sha256": sha_hex(&data)});
        let e = service_update(&cfg, &fake, &a, &fast(), &no_stop).unwrap_err();
        assert!(e.error.contains("rolled back to 0.9"), "{}", e.error);
        assert_eq!(current_version(&sd), None);
        assert!(fs::symlink_metadata(sd.join("current")).is_err());
        assert!(fake
            .log
            .borrow()
            .contains(&"restart core config".to_string()));
    }
}
