//! `firmware.upgrade` (issue 18): flash a firmware image with `sysupgrade` and answer the
//! job from the next start, by comparing the firmware the device came back with (as the
//! stats record reports it, [`identity::firmware`]) to the one asked for.
//!
//! [`upgrade`] runs on the job worker that took the job: refuses without a `sysupgrade_cmd`
//! (`unsupported`), while another firmware job is pending (`busy`), or when the free RAM
//! (the image goes to the tmpfs `/tmp`) is below the image size + [`RAM_MARGIN`]; downloads
//! into `/tmp` (the shared HTTP client, `cacrt`/`insecure`), checks the sha256, runs
//! `sysupgrade -T IMAGE` (refused with its output on failure), writes
//! `state_dir/pending-firmware.json` atomically, flushes the stats cache as before a
//! reboot, publishes a FIRMWARE `{"state":"flashing",…}` event, then runs
//! `sysupgrade [-n] IMAGE`, which reboots the device. [`on_start`] answers the job once the
//! next process reached the broker (the `firmware` thread) through [`pending::answer`].
//!
//! With `keep_settings` (the default) the marker must survive the flash: when the image's
//! keep list directory `/lib/upgrade/keep.d` exists, `socketman` is written there listing
//! the config file and `state_dir`, as OpenWrt packages do for their own files.
#![forbid(unsafe_code)]

use crate::jobs::typed::{Done, Failure, JobFailure};
use crate::link::outbox::Outbox;
use crate::platform::identity;
use crate::platform::process::{self, Capture, RunOpts, Spec};
use crate::proto::{Event, FirmwareMeta, Processed, ProcessedMeta, Wire};
use crate::runtime::{ConfigHandle, Shutdown, Watch};
use crate::services::pending;
use crate::services::update::{self, UpdateError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The marker file in `state_dir`.
pub const MARKER_FILE: &str = "pending-firmware.json";
/// Free RAM that must be left once the image sits in `/tmp` (sysupgrade copies tools to a
/// ramdisk and stops services; 8 MiB is what a 32/64 MiB router can spare).
pub const RAM_MARGIN: u64 = 8 * 1024 * 1024;
/// `sysupgrade -T IMAGE` must finish within this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `sysupgrade IMAGE` must exit within this (it usually never returns: the device reboots).
pub const FLASH_TIMEOUT: Duration = Duration::from_secs(600);
/// After `sysupgrade` exited 0, the device must go down within this; otherwise the job is
/// answered as failed.
pub const REBOOT_WAIT: Duration = Duration::from_secs(300);
/// Output of `sysupgrade` kept for an error message.
const OUTPUT_MAX: usize = 4096;
/// The keep-list entry written for sysupgrade.
const KEEP_FILE: &str = "lib/upgrade/keep.d/socketman";

/// Why a `firmware.upgrade` failed (its `Display` is the job's `error`).
#[derive(Debug)]
pub enum FirmwareError {
    /// Bad args, download, size or checksum (the errors of `service.update`).
    Update(UpdateError),
    /// `keep_settings` is not a boolean.
    Args(String),
    /// No `sysupgrade_cmd` and not OpenWrt.
    Unsupported,
    /// Another firmware job is pending or running.
    Busy(String),
    /// `/proc/meminfo` unreadable.
    NoMeminfo,
    /// Free RAM below the image size + margin (the image did not fit in `available` −
    /// [`RAM_MARGIN`]: by its Content-Length, or while it streamed in).
    LowRam { available: u64 },
    /// `sysupgrade -T` or `sysupgrade` could not start.
    Run { what: &'static str, err: String },
    /// `sysupgrade -T` refused the image.
    TestFailed { status: String, output: String },
    /// `sysupgrade` failed.
    FlashFailed { status: String, output: String },
    /// `sysupgrade` exited 0 and the device kept running.
    NoReboot(u64),
    /// Writing the marker.
    Marker { path: PathBuf, err: std::io::Error },
}

impl std::fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use FirmwareError as E;
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1_048_576.0);
        match self {
            E::Update(e) => write!(f, "{e}"),
            E::Args(s) => write!(f, "invalid args: {s}"),
            E::Unsupported => write!(
                f,
                "unsupported: no sysupgrade_cmd on this device (not OpenWrt)"
            ),
            E::Busy(s) => write!(f, "busy: {s}"),
            E::NoMeminfo => write!(f, "cannot read MemAvailable from /proc/meminfo"),
            E::LowRam { available } => write!(
                f,
                "not enough free RAM: the image is larger than {} available minus a {} margin",
                mib(*available),
                mib(RAM_MARGIN)
            ),
            E::Run { what, err } => write!(f, "cannot run {what}: {err}"),
            E::TestFailed { status, output } => {
                write!(f, "sysupgrade -T refused the image ({status}): {output}")
            }
            E::FlashFailed { status, output } => {
                write!(f, "sysupgrade failed ({status}): {output}")
            }
            E::NoReboot(s) => write!(
                f,
                "sysupgrade exited 0 but the device did not reboot within {s} s"
            ),
            E::Marker { path, err } => write!(f, "cannot write {}: {err}", path.display()),
        }
    }
}

impl std::error::Error for FirmwareError {}
impl JobFailure for FirmwareError {}

impl From<UpdateError> for FirmwareError {
    fn from(e: UpdateError) -> Self {
        FirmwareError::Update(e)
    }
}

/// The pending upgrade, `state_dir/pending-firmware.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub job_id: String,
    /// The firmware asked for (`version` of the job).
    pub version: String,
    /// The firmware before the flash, as the stats record reported it.
    pub previous: String,
    pub keep_settings: bool,
    /// When the flash started (Unix seconds).
    pub at: u64,
}

/// `state_dir/pending-firmware.json`.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

/// The job id of a pending upgrade (answered by [`on_start`], not as "interrupted").
pub fn pending_job_id(state_dir: &Path) -> Option<String> {
    pending::read::<Marker>(&marker_path(state_dir), "pending-firmware").map(|m| m.job_id)
}

/// The `firmware.upgrade` handler.
#[derive(Clone)]
pub struct FirmwareJob {
    pub cfg: ConfigHandle,
    pub outbox: Outbox,
    pub link: Watch<bool>,
    pub shutdown: Shutdown,
    /// Flushes the stats cache to `state_dir` (as before a recovery reboot).
    pub before_flash: Arc<dyn Fn() + Send + Sync>,
}

impl crate::jobs::typed::Firmware for FirmwareJob {
    fn upgrade(&self, job_id: &str, args: &Value) -> Result<Done, Failure> {
        Ok(upgrade(self, job_id, args)?)
    }
}

/// One firmware job at a time in this process (the marker covers the time after the flash).
static RUNNING: Mutex<()> = Mutex::new(());

/// The `sysupgrade` command: `sysupgrade_cmd`, else `sysupgrade` on OpenWrt.
pub fn sysupgrade_cmd(cfg: &crate::config::Config, root: &Path) -> Option<String> {
    cfg.sysupgrade_cmd
        .clone()
        .or_else(|| identity::is_openwrt(root).then(|| "sysupgrade".to_string()))
}

/// `'…'` for `/bin/sh`.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Runs `cmd` through `/bin/sh -c`, output captured: (success, status text, output).
fn sh(
    what: &'static str,
    cmd: &str,
    timeout: Duration,
) -> Result<(bool, String, String), FirmwareError> {
    let out = process::run(
        &Spec::shell(cmd),
        &RunOpts::new(timeout).capture(Capture::Combined { max: OUTPUT_MAX }),
        &|_| {},
    )
    .map_err(|e| FirmwareError::Run {
        what,
        err: e.error.to_string(),
    })?;
    let output = out.output_lossy().trim().to_string();
    if out.timed_out {
        return Ok((
            false,
            format!("no exit within {} s", timeout.as_secs()),
            output,
        ));
    }
    match &out.status {
        Ok(s) => Ok((s.success(), s.to_string(), output)),
        Err(e) => Ok((false, e.to_string(), output)),
    }
}

/// Writes the sysupgrade keep-list entry for the config file and `state_dir` when the
/// keep.d directory exists under `root`.
fn keep_across_flash(root: &Path, config: &Path, state_dir: &Path) {
    let keep = root.join(KEEP_FILE);
    if !keep.parent().is_some_and(Path::is_dir) {
        return;
    }
    let text = format!("{}\n{}/\n", config.display(), state_dir.display());
    if let Err(e) = crate::platform::fs::write_atomic_mode(&keep, text.as_bytes(), 0o644) {
        log::warn!("firmware: cannot write {}: {e}", keep.display());
    }
}

/// `firmware.upgrade`. `Err`: nothing was flashed.
pub fn upgrade(fw: &FirmwareJob, job_id: &str, args: &Value) -> Result<Done, FirmwareError> {
    let cfg = fw.cfg.get();
    let a = update::parse_args(args, false)?;
    let keep_settings = match args.get("keep_settings") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(FirmwareError::Args(
                "keep_settings must be a boolean".into(),
            ))
        }
    };
    let root = identity::root();
    let cmd = sysupgrade_cmd(&cfg, &root).ok_or(FirmwareError::Unsupported)?;
    let _one = RUNNING
        .try_lock()
        .map_err(|_| FirmwareError::Busy("another firmware.upgrade is running".into()))?;
    let marker_file = marker_path(&cfg.state_dir);
    if let Some(m) = pending::read::<Marker>(&marker_file, "pending-firmware") {
        return Err(FirmwareError::Busy(format!(
            "upgrade to {} (job {}) is still pending",
            m.version, m.job_id
        )));
    }
    let available = identity::mem_available(&root).ok_or(FirmwareError::NoMeminfo)?;
    let cap = available.saturating_sub(RAM_MARGIN);
    if cap == 0 {
        return Err(FirmwareError::LowRam { available });
    }
    let previous = identity::firmware(&root);
    log::info!(
        "firmware.upgrade: {previous} -> {} from {} (job {job_id}, keep_settings {keep_settings}, {} bytes of RAM available)",
        a.version,
        crate::http::redact(&a.url),
        available
    );
    let tmp = root.join("tmp");
    crate::platform::fs::ensure_dir(&tmp).map_err(|err| FirmwareError::Marker {
        path: tmp.clone(),
        err,
    })?;
    let dl = match update::download(&cfg, &a.url, &tmp, cap, update::DOWNLOAD_TIMEOUT) {
        Err(UpdateError::TooLarge { .. }) => return Err(FirmwareError::LowRam { available }),
        r => r?,
    };
    update::check_sha256(&a.sha256, &dl.sha256)?;
    let image = dl.file;
    let (ok, status, output) = sh(
        "sysupgrade -T",
        &format!("{cmd} -T {}", quote(image.path())),
        TEST_TIMEOUT,
    )?;
    if !ok {
        return Err(FirmwareError::TestFailed { status, output });
    }
    let marker = Marker {
        job_id: job_id.to_string(),
        version: a.version.clone(),
        previous: previous.clone(),
        keep_settings,
        at: crate::proto::now(),
    };
    pending::write(&marker_file, &marker).map_err(|err| FirmwareError::Marker {
        path: marker_file.clone(),
        err,
    })?;
    if keep_settings {
        keep_across_flash(&root, fw.cfg.path(), &cfg.state_dir);
    }
    (fw.before_flash)();
    let event = Event::new(FirmwareMeta {
        job_id: job_id.to_string(),
        previous,
        state: "flashing".into(),
        version: a.version.clone(),
    });
    fw.outbox.status_event(
        "FIRMWARE",
        serde_json::to_value(&event.meta).unwrap_or_default(),
    );
    // The event goes out before the flash takes the network down.
    fw.outbox
        .wait_drained(Instant::now() + Duration::from_secs(5), || fw.link.get());
    let flash = format!(
        "{cmd}{} {}",
        if keep_settings { "" } else { " -n" },
        quote(image.path())
    );
    log::warn!(
        "firmware.upgrade job {job_id}: flashing {}: {flash}",
        a.version
    );
    // The image stays: sysupgrade may hand it to procd and return before it is written.
    let image = image.keep();
    let (ok, status, output) = match sh("sysupgrade", &flash, FLASH_TIMEOUT) {
        Ok(r) => r,
        Err(e) => {
            pending::remove(&marker_file);
            let _ = std::fs::remove_file(&image);
            return Err(e);
        }
    };
    if !ok {
        pending::remove(&marker_file);
        let _ = std::fs::remove_file(&image);
        return Err(FirmwareError::FlashFailed { status, output });
    }
    log::warn!("firmware.upgrade job {job_id}: sysupgrade exited 0; waiting for the reboot");
    if fw.shutdown.wait_timeout(REBOOT_WAIT) {
        // Stopped by the system going down: the next start answers.
        return Ok(Done::AnsweredLater);
    }
    pending::remove(&marker_file);
    let _ = std::fs::remove_file(&image);
    Err(FirmwareError::NoReboot(REBOOT_WAIT.as_secs()))
}

/// What the next start answers, from the firmware it runs now (pure).
pub fn verdict(m: &Marker, now: &str) -> Result<Value, String> {
    if now == m.version {
        Ok(json!({"version": m.version, "previous": m.previous}))
    } else if now == m.previous {
        Err(format!(
            "device came back on the old firmware {} (expected {})",
            m.previous, m.version
        ))
    } else {
        Err(format!(
            "device came back on firmware {now} (expected {}, was {})",
            m.version, m.previous
        ))
    }
}

/// The PROCESSED of the job.
pub fn processed(m: &Marker, verdict: &Result<Value, String>) -> Value {
    let duration_ms = crate::proto::now().saturating_sub(m.at) * 1000;
    let meta = ProcessedMeta {
        msg: match verdict {
            Ok(_) => format!("firmware upgraded from {} to {}", m.previous, m.version),
            Err(e) => e.clone(),
        },
        ty: "firmware.upgrade".into(),
        success: verdict.is_ok(),
        exit_code: None,
        duration_ms,
        truncated: false,
        result: verdict.as_ref().ok().cloned(),
        error: verdict.as_ref().err().cloned(),
    };
    Processed::new(&m.job_id, meta).to_value()
}

/// Call once at start-up: with a pending upgrade, starts the `firmware` thread that waits
/// for the broker, then answers the job.
pub fn on_start(o: pending::Resume, threads: &mut crate::runtime::Threads) {
    let marker_file = marker_path(&o.cfg.get().state_dir);
    let Some(m) = pending::read::<Marker>(&marker_file, "pending-firmware") else {
        return;
    };
    if pending::already_answered(&o.jobs, &m.job_id, &marker_file) {
        return;
    }
    let r = threads.spawn("firmware", move || {
        if !o.link.wait_until(None, |up| *up) {
            return; // stopping: the next start answers
        }
        let now = identity::firmware(&identity::root());
        let v = verdict(&m, &now);
        match &v {
            Ok(_) => log::info!(
                "firmware.upgrade job {}: now on {} (was {})",
                m.job_id,
                m.version,
                m.previous
            ),
            Err(e) => log::warn!("firmware.upgrade job {}: {e}", m.job_id),
        }
        pending::answer(
            &o.jobs,
            &o.link,
            &marker_file,
            &m.job_id,
            &processed(&m, &v),
            o.crash_after_answer,
        );
    });
    if let Err(e) = r {
        log::error!("cannot start the firmware thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker {
            job_id: "fw-1".into(),
            version: "r23633-c7b6cfac40".into(),
            previous: "r9544-457de5a".into(),
            keep_settings: true,
            at: crate::proto::now(),
        }
    }

    #[test]
    fn verdicts() {
        let m = marker();
        assert_eq!(
            verdict(&m, "r23633-c7b6cfac40"),
            Ok(json!({"version": "r23633-c7b6cfac40", "previous": "r9544-457de5a"}))
        );
        let old = verdict(&m, "r9544-457de5a").unwrap_err();
        assert!(
            old.starts_with("device came back on the old firmware"),
            "{old}"
        );
        let other = verdict(&m, "r45885").unwrap_err();
        assert!(other.contains("firmware r45885"), "{other}");
        let p = processed(&m, &verdict(&m, "r9544-457de5a"));
        assert_eq!(p["meta"]["success"], false);
        assert_eq!(p["meta"]["type"], "firmware.upgrade");
        assert_eq!(p["meta"]["error"], old);
    }

    #[test]
    fn sysupgrade_only_on_openwrt_unless_configured() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::default();
        assert_eq!(sysupgrade_cmd(&cfg, d.path()), None);
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/openwrt_release"),
            include_str!("../../tests/fixtures/openwrt_release-23.05-snapshot-x86_64"),
        )
        .unwrap();
        assert_eq!(
            sysupgrade_cmd(&cfg, d.path()).as_deref(),
            Some("sysupgrade")
        );
        cfg.sysupgrade_cmd = Some("/usr/local/bin/flash".into());
        assert_eq!(
            sysupgrade_cmd(&cfg, d.path()).as_deref(),
            Some("/usr/local/bin/flash")
        );
    }

    #[test]
    fn low_ram_message_names_the_margin() {
        let e = FirmwareError::LowRam {
            available: 20 << 20,
        };
        assert_eq!(
            e.to_string(),
            "not enough free RAM: the image is larger than 20.0 MiB available minus a 8.0 MiB margin"
        );
    }
}
