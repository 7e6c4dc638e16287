//! Self-update (SPEC §9, job `agent.update` of §4.4): replace the running socketman binary
//! and re-execute it, with a pending-update marker that lets the *new* process send the job's
//! `PROCESSED` once it is connected, and roll back to `<path>.bak` when it cannot connect.
//!
//! Threads: [`run`] runs on the job worker that took the job; on success it asks the agent's
//! main loop for a re-exec ([`Control::Reexec`], the one re-exec path: a clean stop of every
//! thread and service, then `execv` of the new binary with the same arguments and pid) and
//! tells the worker that the answer comes later ([`Done::AnsweredLater`]). [`on_start`] runs
//! once at start-up and, when a marker is present, starts the `selfupdate` thread that waits
//! on the link-state watch for the broker, then answers the job through [`pending::answer`]
//! (once: a crash between the answer and the marker removal is caught by
//! [`pending::already_answered`] at the next start).
//! Shares `state_dir/pending-update.json` (the marker, written atomically before the switch).
//!
//! Which process is which after a re-exec: the marker records the sha256 of the new binary.
//! A process whose own executable has that sha256 is the new one (it confirms or rolls back);
//! any other is the old one, which reports the failure. A marker carrying `failed` was
//! written by a new process that gave up; the restored old binary reports that text.
//! This works even when old and new report the same version string.
//!
//! Other jobs running at the moment of the re-exec get the clean stop's grace (SPEC §10);
//! processes started by `process.start` keep running untracked. If the `exec` itself fails,
//! the old binary is put back, the marker records the failure and the process exits 1: procd
//! starts the old binary again, which reports the failure.
#![forbid(unsafe_code)]

use crate::jobs::typed::Done;
use crate::platform::process::{self, Capture, RunOpts, Spec};
use crate::runtime::{ConfigHandle, Control, ControlSender};
use crate::services::pending::{self, Resume};
use crate::services::update;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The marker file in `state_dir`.
pub const MARKER_FILE: &str = "pending-update.json";
/// The new binary must answer `--version` within this.
pub const VERSION_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The new process must reach the broker within this after its start (SPEC §9).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(120);
/// Starts of the new binary without reaching the broker (crash loop under procd) before it
/// rolls back at once.
pub const MAX_STARTS: u32 = 3;

/// Why an `agent.update` failed before anything was switched (its `Display` is the job's
/// `error`).
#[derive(Debug)]
pub enum SelfUpdateError {
    /// Bad args, download, size or checksum (SPEC §8.3's errors, shared with `service.update`).
    Update(update::UpdateError),
    /// The path of the running binary is unknown.
    ExeUnknown(io::Error),
    /// The running binary was replaced or deleted under us.
    ExeDeleted(PathBuf),
    /// The running binary has no parent directory.
    NoDir(PathBuf),
    /// Another update is still pending (waiting for its new process to confirm).
    Pending { version: String, job_id: String },
    /// The new binary cannot be started at all.
    NotRunnable { path: PathBuf, err: io::Error },
    /// `--version` did not exit within the limit.
    VersionTimeout { path: PathBuf, secs: u64 },
    /// Waiting for the `--version` run failed.
    Wait { path: PathBuf, err: String },
    /// `--version` exited non-zero (`tail`: the start of its output).
    VersionFailed {
        path: PathBuf,
        status: String,
        tail: String,
    },
    /// A file step failed: making the download executable, keeping `.bak`, writing the
    /// marker, renaming the new binary over the old one.
    File {
        step: FileStep,
        path: PathBuf,
        err: io::Error,
    },
    /// socketman is stopping: the re-exec cannot be asked for any more (nothing changed).
    Stopping,
}

/// Which file step of [`SelfUpdateError::File`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStep {
    Chmod,
    Backup,
    Marker,
    Replace,
}

impl std::fmt::Display for SelfUpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SelfUpdateError as E;
        match self {
            E::Update(e) => write!(f, "{e}"),
            E::ExeUnknown(e) => write!(f, "cannot find my executable: {e}"),
            E::ExeDeleted(p) => write!(f, "my executable {} was deleted", p.display()),
            E::NoDir(p) => write!(f, "{}: no directory", p.display()),
            E::Pending { version, job_id } => {
                write!(
                    f,
                    "busy: update to {version} (job {job_id}) is still pending"
                )
            }
            E::NotRunnable { path, err } => {
                write!(f, "new binary {} does not run: {err}", path.display())
            }
            E::VersionTimeout { path, secs } => write!(
                f,
                "new binary {}: --version did not exit within {secs} s",
                path.display()
            ),
            E::Wait { path, err } => write!(f, "new binary {}: wait failed: {err}", path.display()),
            E::VersionFailed { path, status, tail } => write!(
                f,
                "new binary {}: --version failed ({status}): {tail}",
                path.display()
            ),
            E::File { step, path, err } => match step {
                FileStep::Chmod => write!(f, "{}: {err}", path.display()),
                FileStep::Backup => write!(f, "cannot keep {}: {err}", path.display()),
                FileStep::Marker => write!(f, "cannot write {}: {err}", path.display()),
                FileStep::Replace => write!(f, "cannot replace {}: {err}", path.display()),
            },
            E::Stopping => write!(f, "busy: socketman is stopping"),
        }
    }
}

impl std::error::Error for SelfUpdateError {}
impl crate::jobs::typed::JobFailure for SelfUpdateError {}

impl From<update::UpdateError> for SelfUpdateError {
    fn from(e: update::UpdateError) -> Self {
        SelfUpdateError::Update(e)
    }
}

/// The `agent.update` job handler: the config and where the re-exec request goes.
#[derive(Clone)]
pub struct SelfUpdate {
    pub cfg: ConfigHandle,
    pub control: ControlSender,
}

impl crate::jobs::typed::AgentUpdate for SelfUpdate {
    fn update(&self, job_id: &str, args: &Value) -> Result<Done, crate::jobs::typed::Failure> {
        Ok(run(self, job_id, args)?)
    }
}

/// The pending update, `state_dir/pending-update.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The `agent.update` job whose `PROCESSED` is still owed.
    pub job_id: String,
    /// The version asked for.
    pub version: String,
    /// The version that ran the job.
    pub previous: String,
    /// The executable replaced.
    pub path: PathBuf,
    /// When the switch happened (Unix seconds).
    pub at: u64,
    /// sha256 of the new binary.
    pub sha256: String,
    /// Set by a new process that gave up and restored the old binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Starts of the new binary so far.
    #[serde(default)]
    pub starts: u32,
}

/// `state_dir/pending-update.json`.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

/// Reads the marker; `None` when absent or unreadable (logged).
pub fn read_marker(path: &Path) -> Option<Marker> {
    match crate::platform::fs::read_json(path) {
        Ok(Some(v)) => match serde_json::from_value(v) {
            Ok(m) => Some(m),
            Err(e) => {
                log::error!(
                    "{}: not a pending-update marker ({e}); removed",
                    path.display()
                );
                let _ = fs::remove_file(path);
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            log::error!("{}: {e}; removed", path.display());
            let _ = fs::remove_file(path);
            None
        }
    }
}

/// Writes the marker atomically (tmp + fsync + rename).
pub fn write_marker(path: &Path, m: &Marker) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
    crate::platform::fs::write_atomic(path, &bytes)
}

/// `<path>.bak`.
pub fn backup_path(exe: &Path) -> PathBuf {
    let mut s = exe.as_os_str().to_owned();
    s.push(".bak");
    PathBuf::from(s)
}

/// Saves `exe` as `<exe>.bak` (hard link, else copy; through a temporary name so an
/// existing `.bak` is replaced atomically). `exe` itself is not touched.
pub fn backup(exe: &Path) -> io::Result<PathBuf> {
    let bak = backup_path(exe);
    let dir = exe.parent().unwrap_or(Path::new("."));
    let tmp = update::temp_name(dir, "bak");
    if fs::hard_link(exe, &tmp).is_err() {
        fs::copy(exe, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    }
    if let Err(e) = fs::rename(&tmp, &bak) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(bak)
}

/// Puts `<exe>.bak` back as `exe` (atomic rename).
pub fn restore_backup(exe: &Path) -> io::Result<()> {
    let bak = backup_path(exe);
    fs::rename(&bak, exe).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", bak.display())))
}

/// Runs `path --version`; it must exit 0 within `timeout`. Returns its first output line.
pub fn check_new_binary(path: &Path, timeout: Duration) -> Result<String, SelfUpdateError> {
    let spec = Spec::new(path).arg("--version");
    // A background child of the new binary could keep the pipe open: read for 1 s at most.
    let opts = RunOpts::new(timeout)
        .capture(Capture::Combined { max: 64 * 1024 })
        .drain(Duration::from_secs(1))
        .no_leftovers();
    let mut tries = 0;
    let out = loop {
        match process::run(&spec, &opts, &|_| {}) {
            Ok(o) => break o,
            // ETXTBSY: a fork in another thread still holds the file we just wrote.
            Err(e) if e.error.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(SelfUpdateError::NotRunnable {
                    path: path.to_path_buf(),
                    err: e.error,
                })
            }
        }
    };
    if out.timed_out {
        return Err(SelfUpdateError::VersionTimeout {
            path: path.to_path_buf(),
            secs: timeout.as_secs(),
        });
    }
    let status = out.status.as_ref().map_err(|e| SelfUpdateError::Wait {
        path: path.to_path_buf(),
        err: e.to_string(),
    })?;
    let output = out.output_lossy();
    let first = output.lines().next().unwrap_or("").trim().to_string();
    if !status.success() {
        let tail: String = output.trim().chars().take(200).collect();
        return Err(SelfUpdateError::VersionFailed {
            path: path.to_path_buf(),
            status: status.to_string(),
            tail,
        });
    }
    Ok(first)
}

/// The executable of this process. Refused when it was replaced or deleted under us.
fn own_exe() -> Result<PathBuf, SelfUpdateError> {
    let p = std::env::current_exe().map_err(SelfUpdateError::ExeUnknown)?;
    if p.to_string_lossy().ends_with(" (deleted)") {
        return Err(SelfUpdateError::ExeDeleted(p));
    }
    Ok(p)
}

/// `agent.update`: download, verify, check `--version`, keep `.bak`, write the marker,
/// switch, then ask for the re-exec. `Err`: nothing changed (except a refreshed `.bak`).
pub fn run(su: &SelfUpdate, job_id: &str, args: &Value) -> Result<Done, SelfUpdateError> {
    let cfg = su.cfg.get();
    let a = update::parse_args(args, false)?;
    let exe = own_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| SelfUpdateError::NoDir(exe.clone()))?
        .to_path_buf();
    let marker_file = marker_path(&cfg.state_dir);
    if let Some(m) = read_marker(&marker_file) {
        return Err(SelfUpdateError::Pending {
            version: m.version,
            job_id: m.job_id,
        });
    }
    log::info!(
        "agent.update: {} -> {} from {} (job {job_id})",
        crate::VERSION,
        a.version,
        crate::http::redact(&a.url)
    );
    let dl = update::download(
        &cfg,
        &a.url,
        &dir,
        update::DOWNLOAD_MAX,
        update::DOWNLOAD_TIMEOUT,
    )?;
    update::check_sha256(&a.sha256, &dl.sha256)?;
    let new = dl.file;
    let file_err = |step, path: &Path| {
        let path = path.to_path_buf();
        move |err| SelfUpdateError::File { step, path, err }
    };
    fs::set_permissions(new.path(), fs::Permissions::from_mode(0o755))
        .map_err(file_err(FileStep::Chmod, new.path()))?;
    let said = check_new_binary(new.path(), VERSION_CHECK_TIMEOUT)?;
    log::info!("agent.update: new binary answers {said:?}");
    backup(&exe).map_err(file_err(FileStep::Backup, &backup_path(&exe)))?;
    let marker = Marker {
        job_id: job_id.to_string(),
        version: a.version.clone(),
        previous: crate::VERSION.to_string(),
        path: exe.clone(),
        at: crate::proto::now(),
        sha256: dl.sha256.clone(),
        failed: None,
        starts: 0,
    };
    crate::platform::fs::ensure_dir(&cfg.state_dir)
        .and_then(|()| write_marker(&marker_file, &marker))
        .map_err(file_err(FileStep::Marker, &marker_file))?;
    if let Err(e) = fs::rename(new.path(), &exe) {
        let _ = fs::remove_file(&marker_file);
        return Err(file_err(FileStep::Replace, &exe)(e));
    }
    let _ = new.keep();
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    log::info!(
        "agent.update: {} replaced ({} kept as .bak); re-executing",
        exe.display(),
        crate::VERSION
    );
    let failed_marker = marker.clone();
    let mf = marker_file.clone();
    let request = Control::Reexec {
        exe: exe.clone(),
        why: format!("agent.update job {job_id} to {}", a.version),
        on_fail: Box::new(move |err: &io::Error| {
            // The exec failed after the clean stop: put the old binary back and let the
            // next start (procd respawns) report it.
            let _ = restore_backup(&failed_marker.path);
            let mut m = failed_marker;
            m.failed = Some(format!("re-executing {} failed: {err}", m.path.display()));
            if let Err(e) = write_marker(&mf, &m) {
                log::error!("cannot write the update marker: {e}");
            }
        }),
    };
    if su.control.send(request).is_err() {
        // The main loop is gone (stopping): undo, nothing changed.
        let _ = restore_backup(&exe);
        let _ = fs::remove_file(&marker_file);
        return Err(SelfUpdateError::Stopping);
    }
    Ok(Done::AnsweredLater)
}

/// What a starting process does with a marker (pure; see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// This is the new binary: confirm once connected (marker updated with this start).
    Confirm(Marker),
    /// This is the new binary, but it keeps restarting without reaching the broker.
    RollBack(Marker, String),
    /// This is the old binary (restored or never replaced): report the failure.
    Failed(Marker, String),
}

/// Decides from the marker and the sha256 of this process's executable.
pub fn decide(mut m: Marker, my_sha256: Option<&str>) -> Start {
    if let Some(why) = m.failed.clone() {
        return Start::Failed(m, why);
    }
    if my_sha256.is_some_and(|s| s.eq_ignore_ascii_case(&m.sha256)) {
        m.starts += 1;
        if m.starts > MAX_STARTS {
            let why = format!(
                "update to {} failed: the new binary started {} times without reaching the broker; rolled back",
                m.version, MAX_STARTS
            );
            return Start::RollBack(m, why);
        }
        return Start::Confirm(m);
    }
    let why = format!(
        "update to {} failed: the new binary did not take over; still running {}",
        m.version,
        crate::VERSION
    );
    Start::Failed(m, why)
}

/// The `PROCESSED` of the `agent.update` job.
pub fn processed(m: &Marker, success: bool, error: Option<&str>) -> Value {
    let duration_ms = crate::proto::now().saturating_sub(m.at) * 1000;
    let meta = crate::proto::ProcessedMeta {
        msg: error
            .map(str::to_string)
            .unwrap_or_else(|| format!("updated from {} to {}", m.previous, m.version)),
        ty: "agent.update".into(),
        success,
        exit_code: None,
        duration_ms,
        truncated: false,
        result: success.then(|| json!({"version": m.version, "previous": m.previous})),
        error: error.map(str::to_string),
    };
    crate::proto::Wire::to_value(&crate::proto::Processed::new(&m.job_id, meta))
}

fn report(o: &Resume, marker_file: &Path, m: &Marker, success: bool, error: Option<&str>) {
    let msg = processed(m, success, error);
    // Stored with the job id (a re-delivered job is a duplicate), sent like any result, the
    // marker removed once the broker has it.
    pending::answer(
        &o.jobs,
        &o.link,
        marker_file,
        &m.job_id,
        &msg,
        o.crash_after_answer,
    );
    if success {
        log::info!(
            "agent.update job {}: now running {} (was {})",
            m.job_id,
            m.version,
            m.previous
        );
    } else {
        log::warn!("agent.update job {}: {}", m.job_id, error.unwrap_or(""));
    }
}

/// The new process gives up: marker says why, `.bak` goes back, re-exec (through the
/// agent's main loop). When the rollback itself fails this process keeps running.
fn roll_back(control: &ControlSender, marker_file: &Path, mut m: Marker, why: String) {
    log::error!("{why}; restoring {}", backup_path(&m.path).display());
    m.failed = Some(why);
    if let Err(e) = write_marker(marker_file, &m) {
        log::error!("cannot write {}: {e}", marker_file.display());
    }
    if let Err(e) = restore_backup(&m.path) {
        log::error!("rollback impossible, keeping the new binary: {e}");
        return;
    }
    let exe = m.path.clone();
    let _ = control.send(Control::Reexec {
        why: format!("rollback of agent.update job {}", m.job_id),
        exe,
        on_fail: Box::new(|e: &io::Error| log::error!("re-executing the old binary failed: {e}")),
    });
}

/// The job id of a pending update, for `Jobs::resume_unfinished` at start-up: that job is
/// answered by [`on_start`], not as "interrupted".
pub fn pending_job_id(state_dir: &Path) -> Option<String> {
    read_marker(&marker_path(state_dir)).map(|m| m.job_id)
}

/// Call once at start-up: handles a pending update marker (cheap when there is none) in a
/// `selfupdate` thread added to `threads`.
/// `deadline`: how long the new binary may take to reach the broker ([`CONNECT_DEADLINE`]).
pub fn on_start(o: Resume, deadline: Duration, threads: &mut crate::runtime::Threads) {
    let cfg = o.cfg.get();
    let marker_file = marker_path(&cfg.state_dir);
    let Some(m) = read_marker(&marker_file) else {
        return;
    };
    if pending::already_answered(&o.jobs, &m.job_id, &marker_file) {
        return;
    }
    let mine = own_exe().ok().and_then(|p| update::sha256_file(&p).ok());
    let r = threads.spawn("selfupdate", move || match decide(m, mine.as_deref()) {
        Start::Failed(m, why) => {
            // Kept for the next start when socketman stops before reaching the broker.
            if o.link.wait_until(None, |up| *up) {
                report(&o, &marker_file, &m, false, Some(&why));
            }
        }
        Start::RollBack(m, why) => roll_back(&o.control, &marker_file, m, why),
        Start::Confirm(m) => {
            let limit = deadline;
            if let Err(e) = write_marker(&marker_file, &m) {
                log::error!("cannot write {}: {e}", marker_file.display());
            }
            log::info!(
                "agent.update job {}: waiting up to {} s for the broker (start {})",
                m.job_id,
                limit.as_secs(),
                m.starts
            );
            if o.link.wait_until(Some(o.started + limit), |up| *up) {
                report(&o, &marker_file, &m, true, None);
            } else if !o.shutdown.is_set() {
                let why = format!(
                    "update to {} failed: no broker connection within {} s; rolled back",
                    m.version,
                    limit.as_secs()
                );
                roll_back(&o.control, &marker_file, m, why);
            }
        }
    });
    if let Err(e) = r {
        log::error!("cannot start the selfupdate thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            job_id: "j1".into(),
            version: "0.2.0".into(),
            previous: "0.1.0".into(),
            path: "/usr/bin/socketman".into(),
            at: 1_700_000_000,
            sha256: "ab".repeat(32),
            failed: None,
            starts: 0,
        }
    }

    #[test]
    fn marker_roundtrip_is_atomic_json() {
        let d = tempfile::tempdir().unwrap();
        let p = marker_path(d.path());
        write_marker(&p, &marker()).unwrap();
        assert_eq!(read_marker(&p), Some(marker()));
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        for k in ["job_id", "version", "previous", "path", "at"] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        fs::write(&p, b"garbage").unwrap();
        assert_eq!(read_marker(&p), None);
        assert!(!p.exists(), "unreadable marker removed");
    }

    #[test]
    fn decide_new_old_failed_and_crash_loop() {
        let m = marker();
        let sha = "AB".repeat(32);
        match decide(m.clone(), Some(&sha)) {
            Start::Confirm(n) => assert_eq!(n.starts, 1),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(decide(m.clone(), Some(&"cd".repeat(32))), Start::Failed(_, w) if w.contains("did not take over"))
        );
        assert!(matches!(decide(m.clone(), None), Start::Failed(..)));
        let mut f = m.clone();
        f.failed = Some("update to 0.2.0 failed: no broker".into());
        assert!(
            matches!(decide(f, Some(&sha)), Start::Failed(_, w) if w.contains("no broker")),
            "a failed marker wins even when the binaries are identical"
        );
        let mut c = m;
        c.starts = MAX_STARTS;
        assert!(
            matches!(decide(c, Some(&sha)), Start::RollBack(_, w) if w.contains("rolled back"))
        );
    }

    #[test]
    fn processed_payload() {
        let ok = processed(&marker(), true, None);
        assert_eq!(ok["id"], "j1");
        assert_eq!(ok["event_type"], "PROCESSED");
        assert_eq!(ok["meta"]["success"], true);
        assert_eq!(
            ok["meta"]["result"],
            json!({"version": "0.2.0", "previous": "0.1.0"})
        );
        let bad = processed(&marker(), false, Some("update to 0.2.0 failed: x"));
        assert_eq!(bad["meta"]["success"], false);
        assert_eq!(bad["meta"]["error"], "update to 0.2.0 failed: x");
    }

    #[test]
    fn backup_and_restore() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("socketman");
        fs::write(&exe, b"old").unwrap();
        fs::write(backup_path(&exe), b"older").unwrap();
        let bak = backup(&exe).unwrap();
        assert_eq!(bak, d.path().join("socketman.bak"));
        assert_eq!(fs::read(&bak).unwrap(), b"old");
        fs::write(d.path().join("new"), b"new").unwrap();
        fs::rename(d.path().join("new"), &exe).unwrap();
        assert_eq!(
            fs::read(&bak).unwrap(),
            b"old",
            "the backup is not the new file"
        );
        restore_backup(&exe).unwrap();
        assert_eq!(fs::read(&exe).unwrap(), b"old");
        assert!(!bak.exists());
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn version_check_needs_exit_0_in_time() {
        let d = tempfile::tempdir().unwrap();
        let good = script(d.path(), "good", "echo \"socketman 9.9.9 ($1)\"");
        assert_eq!(
            check_new_binary(&good, VERSION_CHECK_TIMEOUT).unwrap(),
            "socketman 9.9.9 (--version)"
        );
        let bad = script(d.path(), "bad", "echo broken >&2; exit 3");
        let e = check_new_binary(&bad, VERSION_CHECK_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--version failed") && e.contains("broken"),
            "{e}"
        );
        let slow = script(d.path(), "slow", "exec sleep 30");
        let t = std::time::Instant::now();
        let e = check_new_binary(&slow, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(e, SelfUpdateError::VersionTimeout { secs: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("did not exit within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let data = d.path().join("data");
        fs::write(&data, b"\x7fELF garbage").unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_new_binary(&data, VERSION_CHECK_TIMEOUT).unwrap_err();
        assert!(
            matches!(
                e,
                SelfUpdateError::NotRunnable { .. } | SelfUpdateError::VersionFailed { .. }
            ),
            "{e}"
        );
    }
}
