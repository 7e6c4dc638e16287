//! Answers owed across a restart (`firmware.upgrade` after the reboot, `agent.update` and
//! `agent.configure` after the re-exec): the marker file in `state_dir` (JSON, written atomically before the
//! action) and the one way such an answer is sent: stored with the job id in the seen-id
//! journal and published ([`crate::jobs::Jobs::finish_acked`]), the marker removed only once
//! the broker acknowledged it. A crash between the two leaves the marker with an answered
//! job: the next start sees the stored answer ([`already_answered`]) and only removes the
//! marker, so the job is answered once, not twice.
#![forbid(unsafe_code)]

use crate::jobs::Jobs;
use crate::runtime::{ConfigHandle, ControlSender, Shutdown, Watch};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an owed answer waits for the broker's acknowledgement before the marker is
/// left for the next start.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// What the start-up step of each owed answer (`agent.update`, `firmware.upgrade`,
/// `agent.configure`) is given: built once by the agent, cloned for each.
#[derive(Clone)]
pub struct Resume {
    pub cfg: ConfigHandle,
    pub jobs: Arc<Jobs>,
    pub link: Watch<bool>,
    pub shutdown: Shutdown,
    /// Where a rollback asks for its re-exec.
    pub control: ControlSender,
    /// When this process started (confirm deadlines count from it).
    pub started: Instant,
    /// Test builds: see [`crate::runtime::Timings::crash_after_answer`].
    pub crash_after_answer: bool,
}

/// Reads a marker; `None` when absent, or unreadable (then logged and removed).
pub fn read<T: DeserializeOwned>(path: &Path, what: &str) -> Option<T> {
    let bad = |e: String| {
        log::error!("{}: not a {what} marker ({e}); removed", path.display());
        remove(path);
        None
    };
    match crate::platform::fs::read_json(path) {
        Ok(Some(v)) => match serde_json::from_value(v) {
            Ok(m) => Some(m),
            Err(e) => bad(e.to_string()),
        },
        Ok(None) => None,
        Err(e) => bad(e.to_string()),
    }
}

/// Writes a marker atomically (tmp + fsync + rename, 0600).
pub fn write<T: Serialize>(path: &Path, m: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
    crate::platform::fs::write_atomic(path, &bytes)
}

/// Removes a marker (absent is fine; other errors logged).
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::error!("cannot remove {}: {e}", path.display()),
    }
}

/// At start: true when the job of a marker was answered already (by the previous process,
/// which stopped before removing the marker); the marker is then removed.
pub fn already_answered(jobs: &Jobs, job_id: &str, path: &Path) -> bool {
    if !jobs.answered(job_id) {
        return false;
    }
    log::warn!(
        "job {job_id}: answered before the last stop; {} removed, not answered again",
        path.display()
    );
    remove(path);
    true
}

/// Sends the owed `processed` of `job_id` and removes the marker at `path` once the broker
/// acknowledged it. `crash_after`: test builds abort between the two (see
/// [`crate::runtime::Timings::crash_after_answer`]).
pub fn answer(
    jobs: &Jobs,
    link: &Watch<bool>,
    path: &Path,
    job_id: &str,
    processed: &Value,
    crash_after: bool,
) {
    let acked = jobs.finish_acked(job_id, processed, Instant::now() + ACK_WAIT, || link.get());
    if !acked {
        log::warn!(
            "job {job_id}: answer queued but not acknowledged yet; {} stays until the next start",
            path.display()
        );
        return;
    }
    if crash_after {
        log::warn!("job {job_id}: test build: aborting between the answer and the marker removal");
        log::logger().flush();
        std::process::abort();
    }
    remove(path);
}
