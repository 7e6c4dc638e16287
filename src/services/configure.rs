//! `agent.configure` and `agent.config` (issue 18): a new config file from a job, applied
//! through the agent's one config-apply path and kept only when the process running it
//! reaches the broker within `confirm_s`; otherwise the previous file comes back.
//!
//! [`configure`] runs on the job worker: builds the new file (`merge`: the given keys over
//! the current file, `null` removes a key; `replace`: the given object), validates it with
//! [`crate::config::parse`] exactly as `--check-config` does (an error is answered with the
//! key and the reason, nothing written), keeps the current file as `<config>.bak`, writes
//! the new one atomically (0600), writes `state_dir/pending-config.json`, then sends the
//! new config to the main loop ([`Control::NewConfig`]):
//! - when it needs a restart (MQTT connection, `job_workers`, …: the agent's
//!   `needs_restart`), the main loop stops cleanly and re-executes; the new process
//!   ([`on_start`], `configure` thread) answers once connected, or at `confirm_s` after its
//!   start restores `.bak`, marks the marker `failed` and re-executes; the process with the
//!   old config then answers `success:false` with that reason;
//! - otherwise the worker waits until the config is swapped in and the link is up (at most
//!   `confirm_s`), and answers itself.
//!
//! Which process is which: the marker holds the sha256 of the new file. A process whose
//! config file has it is the new one; a marker with `failed` was written by a new process
//! that gave up. `state_dir` cannot be changed this way (the marker and the job journal live
//! there). Secrets in answers are masked as `--check-config` masks them.
#![forbid(unsafe_code)]

use crate::config::{Config, ConfigError};
use crate::jobs::typed::{Done, Failure, JobFailure};
use crate::proto::{Processed, ProcessedMeta, Wire};
use crate::runtime::{ConfigHandle, Control, ControlSender, Shutdown, Watch};
use crate::services::pending;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The marker file in `state_dir`.
pub const MARKER_FILE: &str = "pending-config.json";
/// Default of the `confirm_s` argument: the new config must reach the broker within it.
pub const CONFIRM_DEFAULT: u64 = 120;
/// Largest `confirm_s`.
pub const CONFIRM_MAX: u64 = 3600;
/// Starts of the new config without reaching the broker (a crash loop) before it is rolled
/// back at once.
pub const MAX_STARTS: u32 = 3;

/// Why an `agent.configure` failed (its `Display` is the job's `error`).
#[derive(Debug)]
pub enum ConfigureError {
    /// Bad job args.
    Args(String),
    /// The new config does not pass `--check-config` (`key`: the key at fault, when one is).
    Invalid { key: Option<String>, reason: String },
    /// Another change is waiting for its confirmation.
    Busy(String),
    /// Reading the current file, writing `.bak`, the new file or the marker.
    File { path: PathBuf, err: String },
    /// The new config did not reach the broker; the previous one is back.
    NoBroker(u64),
    /// socketman is stopping.
    Stopping,
}

impl std::fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ConfigureError as E;
        match self {
            E::Args(s) => write!(f, "invalid args: {s}"),
            E::Invalid {
                key: Some(k),
                reason,
            } => {
                write!(f, "invalid config: key \"{k}\": {reason}")
            }
            E::Invalid { key: None, reason } => write!(f, "invalid config: {reason}"),
            E::Busy(s) => write!(f, "busy: {s}"),
            E::File { path, err } => write!(f, "{}: {err}", path.display()),
            E::NoBroker(s) => write!(f, "{}", no_broker(*s)),
            E::Stopping => write!(f, "busy: socketman is stopping"),
        }
    }
}

impl std::error::Error for ConfigureError {}
impl JobFailure for ConfigureError {}

/// The reason of a rollback.
pub fn no_broker(confirm_s: u64) -> String {
    format!(
        "no broker connection within {confirm_s} s with the new config; the previous config was restored"
    )
}

/// `merge` or `replace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Merge,
    Replace,
}

/// The pending change, `state_dir/pending-config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub job_id: String,
    pub mode: Mode,
    /// When the new file was written (Unix seconds).
    pub at: u64,
    /// The new process must reach the broker within this many seconds of its start.
    pub confirm_s: u64,
    /// sha256 of the new file.
    pub sha256: String,
    /// Set by a new process that gave up and restored `.bak`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Starts with the new config so far.
    #[serde(default)]
    pub starts: u32,
}

/// `state_dir/pending-config.json`.
pub fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MARKER_FILE)
}

/// `<config>.bak`.
pub fn backup_path(config: &Path) -> PathBuf {
    let mut s = config.as_os_str().to_owned();
    s.push(".bak");
    PathBuf::from(s)
}

/// The job id of a pending change (answered by [`on_start`], not as "interrupted").
pub fn pending_job_id(state_dir: &Path) -> Option<String> {
    read_marker(&marker_path(state_dir)).map(|m| m.job_id)
}

fn read_marker(path: &Path) -> Option<Marker> {
    pending::read(path, "pending-config")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `agent.configure` / `agent.config` handler.
#[derive(Clone)]
pub struct ConfigJob {
    pub cfg: ConfigHandle,
    pub link: Watch<bool>,
    pub shutdown: Shutdown,
    pub control: ControlSender,
    /// The agent's `needs_restart` (the one definition of what a fresh start applies).
    pub needs_restart: fn(&Config, &Config) -> bool,
}

impl crate::jobs::typed::AgentConfig for ConfigJob {
    fn configure(&self, job_id: &str, args: &Value) -> Result<Done, Failure> {
        configure(self, job_id, args).map_err(|e| {
            let result = match &e {
                ConfigureError::Invalid { key, reason } => {
                    Some(json!({"key": key, "reason": reason}))
                }
                _ => None,
            };
            Failure {
                error: e.to_string(),
                result,
            }
        })
    }

    fn config(&self) -> Value {
        effective(&self.cfg)
    }
}

/// `{"config": masked effective config, "path": the config file}` (`agent.config`).
pub fn effective(cfg: &ConfigHandle) -> Value {
    json!({"config": cfg.get().masked_json(), "path": cfg.path()})
}

/// The parsed args: the keys, the mode, `confirm_s`.
pub fn parse_args(args: &Value) -> Result<(Map<String, Value>, Mode, u64), ConfigureError> {
    let bad = |s: &str| ConfigureError::Args(s.to_string());
    let config = match args.get("config") {
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(bad("config must be an object")),
        None => return Err(bad("config is required")),
    };
    let mode = match args.get("mode") {
        None | Some(Value::Null) => Mode::Merge,
        Some(Value::String(s)) if s == "merge" => Mode::Merge,
        Some(Value::String(s)) if s == "replace" => Mode::Replace,
        Some(_) => return Err(bad("mode must be \"merge\" or \"replace\"")),
    };
    let confirm_s = match args.get("confirm_s") {
        None | Some(Value::Null) => CONFIRM_DEFAULT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=CONFIRM_MAX).contains(&n) => n,
            _ => {
                return Err(ConfigureError::Args(format!(
                    "confirm_s must be an integer 1-{CONFIRM_MAX}"
                )))
            }
        },
    };
    Ok((config, mode, confirm_s))
}

/// The new file's object: `given` over `current` (`merge`; `null` removes a key) or `given`.
pub fn build(current: &Map<String, Value>, given: Map<String, Value>, mode: Mode) -> Value {
    match mode {
        Mode::Replace => Value::Object(given),
        Mode::Merge => {
            let mut out = current.clone();
            for (k, v) in given {
                if v.is_null() {
                    out.remove(&k);
                } else {
                    out.insert(k, v);
                }
            }
            Value::Object(out)
        }
    }
}

/// Validates `text` as `--check-config` does.
pub fn validate(text: &str, path: &Path) -> Result<Config, ConfigureError> {
    match crate::config::parse(text, &path.display().to_string()) {
        Ok((c, _notes)) => Ok(c),
        Err(ConfigError::Key { key, msg, .. }) => Err(ConfigureError::Invalid {
            key: Some(key),
            reason: msg,
        }),
        Err(ConfigError::Missing { key, .. }) => Err(ConfigureError::Invalid {
            key: Some(key),
            reason: "required key is missing".into(),
        }),
        Err(e) => Err(ConfigureError::Invalid {
            key: None,
            reason: e.to_string(),
        }),
    }
}

/// One config change at a time in this process.
static RUNNING: Mutex<()> = Mutex::new(());

/// `agent.configure`.
pub fn configure(cj: &ConfigJob, job_id: &str, args: &Value) -> Result<Done, ConfigureError> {
    let (given, mode, confirm_s) = parse_args(args)?;
    let _one = RUNNING
        .try_lock()
        .map_err(|_| ConfigureError::Busy("another agent.configure is running".into()))?;
    let old = cj.cfg.get();
    let path = cj.cfg.path().to_path_buf();
    let marker_file = marker_path(&old.state_dir);
    if let Some(m) = read_marker(&marker_file) {
        return Err(ConfigureError::Busy(format!(
            "config change of job {} is still waiting for its confirmation",
            m.job_id
        )));
    }
    let file_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e: String| ConfigureError::File { path: p, err: e }
    };
    let current_text = crate::config::read_regular(&path, crate::config::MAX_CONFIG_BYTES)
        .map_err(file_err(&path))?;
    let current: Map<String, Value> = match serde_json::from_str(&current_text) {
        Ok(Value::Object(o)) => o,
        _ if mode == Mode::Replace => Map::new(),
        _ => {
            return Err(ConfigureError::File {
                path,
                err: "the current file is not a JSON object; use mode \"replace\"".into(),
            })
        }
    };
    let new_obj = build(&current, given, mode);
    let text = serde_json::to_string_pretty(&new_obj).unwrap_or_default() + "\n";
    let new = validate(&text, &path)?;
    if new.state_dir != old.state_dir {
        return Err(ConfigureError::Invalid {
            key: Some("state_dir".into()),
            reason: "cannot be changed by agent.configure (the pending marker and the job journal live there)".into(),
        });
    }
    let restart = (cj.needs_restart)(&old, &new);
    crate::platform::fs::write_atomic(&backup_path(&path), current_text.as_bytes())
        .map_err(|e| file_err(&backup_path(&path))(e.to_string()))?;
    let marker = Marker {
        job_id: job_id.to_string(),
        mode,
        at: crate::proto::now(),
        confirm_s,
        sha256: sha256_hex(text.as_bytes()),
        failed: None,
        starts: 0,
    };
    pending::write(&marker_file, &marker).map_err(|e| file_err(&marker_file)(e.to_string()))?;
    if let Err(e) = crate::platform::fs::write_atomic(&path, text.as_bytes()) {
        pending::remove(&marker_file);
        return Err(file_err(&path)(e.to_string()));
    }
    log::info!(
        "agent.configure job {job_id}: {} written ({mode:?}, previous kept as .bak); {}",
        path.display(),
        if restart {
            "restarting to apply it"
        } else {
            "applying it in place"
        }
    );
    let sent = cj.control.send(Control::NewConfig {
        cfg: Box::new(new.clone()),
        from: "agent.configure",
    });
    if sent.is_err() {
        restore(&path);
        pending::remove(&marker_file);
        return Err(ConfigureError::Stopping);
    }
    if restart {
        return Ok(Done::AnsweredLater);
    }
    // Applied in place: the link keeps its connection; still confirm it.
    let deadline = Instant::now() + Duration::from_secs(confirm_s);
    while *cj.cfg.get() != new && Instant::now() < deadline {
        if cj.shutdown.wait_timeout(Duration::from_millis(20)) {
            return Ok(Done::AnsweredLater);
        }
    }
    let up = cj.link.wait_until(Some(deadline), |up| *up);
    if cj.shutdown.is_set() {
        return Ok(Done::AnsweredLater);
    }
    pending::remove(&marker_file);
    if up {
        Ok(Done::Result(success(&cj.cfg, mode, false)))
    } else {
        restore(&path);
        let back = crate::config::load(&path).map(|(c, _)| c);
        if let Ok(c) = back {
            let _ = cj.control.send(Control::NewConfig {
                cfg: Box::new(c),
                from: "agent.configure rollback",
            });
        }
        Err(ConfigureError::NoBroker(confirm_s))
    }
}

/// The `result` of a confirmed change.
fn success(cfg: &ConfigHandle, mode: Mode, restarted: bool) -> Value {
    json!({
        "config": cfg.get().masked_json(),
        "mode": mode,
        "restarted": restarted,
    })
}

/// Puts `<config>.bak` back (atomic rename).
fn restore(path: &Path) {
    if let Err(e) = std::fs::rename(backup_path(path), path) {
        log::error!(
            "agent.configure: cannot restore {}: {e}",
            backup_path(path).display()
        );
    }
}

/// The PROCESSED owed by [`on_start`].
pub fn processed(m: &Marker, result: Result<Value, String>) -> Value {
    let duration_ms = crate::proto::now().saturating_sub(m.at) * 1000;
    let meta = ProcessedMeta {
        msg: match &result {
            Ok(_) => "new config applied and connected to the broker".into(),
            Err(e) => e.clone(),
        },
        ty: "agent.configure".into(),
        success: result.is_ok(),
        exit_code: None,
        duration_ms,
        truncated: false,
        error: result.as_ref().err().cloned(),
        result: result.ok(),
    };
    Processed::new(&m.job_id, meta).to_value()
}

/// What a starting process does with a marker (pure).
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Running the new config: confirm once connected (marker updated with this start).
    Confirm(Marker),
    /// Running the new config, which keeps restarting without reaching the broker.
    RollBack(Marker, String),
    /// Running another config (the restored one): report the failure.
    Failed(Marker, String),
}

/// Decides from the marker and the sha256 of this process's config file.
pub fn decide(mut m: Marker, my_sha256: Option<&str>) -> Start {
    if let Some(why) = m.failed.clone() {
        return Start::Failed(m, why);
    }
    if my_sha256 == Some(m.sha256.as_str()) {
        m.starts += 1;
        if m.starts > MAX_STARTS {
            let why = format!(
                "the new config started {MAX_STARTS} times without reaching the broker; the previous config was restored"
            );
            return Start::RollBack(m, why);
        }
        return Start::Confirm(m);
    }
    Start::Failed(
        m,
        "the config file was changed before the new config was confirmed".into(),
    )
}

/// The new process gives up: marker says why, `.bak` goes back, re-exec.
fn roll_back(o: &pending::Resume, marker_file: &Path, mut m: Marker, why: String) {
    log::error!("agent.configure job {}: {why}", m.job_id);
    m.failed = Some(why);
    if let Err(e) = pending::write(marker_file, &m) {
        log::error!("cannot write {}: {e}", marker_file.display());
    }
    restore(o.cfg.path());
    match std::env::current_exe() {
        Ok(exe) => {
            let _ = o.control.send(Control::Reexec {
                exe,
                why: format!("rollback of agent.configure job {}", m.job_id),
                on_fail: Box::new(|e: &std::io::Error| {
                    log::error!("re-executing with the previous config failed: {e}")
                }),
            });
        }
        Err(e) => log::error!("cannot re-execute: path of the running binary: {e}"),
    }
}

/// Call once at start-up: with a pending change, starts the `configure` thread.
pub fn on_start(o: pending::Resume, threads: &mut crate::runtime::Threads) {
    let marker_file = marker_path(&o.cfg.get().state_dir);
    let Some(m) = read_marker(&marker_file) else {
        return;
    };
    if pending::already_answered(&o.jobs, &m.job_id, &marker_file) {
        return;
    }
    let mine = std::fs::read(o.cfg.path()).ok().map(|b| sha256_hex(&b));
    let r = threads.spawn("configure", move || {
        let answer = |m: &Marker, r: Result<Value, String>| {
            pending::answer(
                &o.jobs,
                &o.link,
                &marker_file,
                &m.job_id,
                &processed(m, r),
                o.crash_after_answer,
            )
        };
        match decide(m, mine.as_deref()) {
            Start::Failed(m, why) => {
                if o.link.wait_until(None, |up| *up) {
                    log::warn!("agent.configure job {}: {why}", m.job_id);
                    answer(&m, Err(why));
                }
            }
            Start::RollBack(m, why) => roll_back(&o, &marker_file, m, why),
            Start::Confirm(m) => {
                if let Err(e) = pending::write(&marker_file, &m) {
                    log::error!("cannot write {}: {e}", marker_file.display());
                }
                let limit = Duration::from_secs(m.confirm_s);
                log::info!(
                    "agent.configure job {}: waiting up to {} s for the broker with the new config (start {})",
                    m.job_id,
                    m.confirm_s,
                    m.starts
                );
                if o.link.wait_until(Some(o.started + limit), |up| *up) {
                    log::info!("agent.configure job {}: new config confirmed", m.job_id);
                    answer(&m, Ok(success(&o.cfg, m.mode, true)));
                } else if !o.shutdown.is_set() {
                    let why = no_broker(m.confirm_s);
                    roll_back(&o, &marker_file, m, why);
                }
            }
        }
    });
    if let Err(e) = r {
        log::error!("cannot start the configure thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_and_replace() {
        let cur = obj(json!({"topic": "t", "key": "k", "mqtt_host": "h", "debug": 1}));
        let m = build(
            &cur,
            obj(json!({"ping-interval": 60, "debug": null})),
            Mode::Merge,
        );
        assert_eq!(
            m,
            json!({"topic": "t", "key": "k", "mqtt_host": "h", "ping-interval": 60})
        );
        let r = build(&cur, obj(json!({"topic": "x"})), Mode::Replace);
        assert_eq!(r, json!({"topic": "x"}));
    }

    #[test]
    fn args_and_validation() {
        assert!(parse_args(&json!({})).is_err());
        assert!(parse_args(&json!({"config": {}, "mode": "other"})).is_err());
        assert!(parse_args(&json!({"config": {}, "confirm_s": 0})).is_err());
        let (_, mode, c) = parse_args(&json!({"config": {}})).unwrap();
        assert_eq!((mode, c), (Mode::Merge, CONFIRM_DEFAULT));
        let p = Path::new("/etc/socketman/config.json");
        let e = validate(r#"{"topic":"t","key":"k","mqtt_host":"h","port":"x"}"#, p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: key \"port\": expected an integer, found \"x\""
        );
        let e = validate(r#"{"topic":"t","key":"k"}"#, p).unwrap_err();
        assert!(
            matches!(&e, ConfigureError::Invalid { key: Some(k), .. } if k == "mqtt_host"),
            "{e}"
        );
        assert!(validate(r#"{"topic":"t","key":"k","mqtt_host":"h"}"#, p).is_ok());
    }

    #[test]
    fn decide_new_old_and_crash_loop() {
        let m = Marker {
            job_id: "c1".into(),
            mode: Mode::Merge,
            at: 1,
            confirm_s: 5,
            sha256: "ab".repeat(32),
            failed: None,
            starts: 0,
        };
        assert!(
            matches!(decide(m.clone(), Some(&"ab".repeat(32))), Start::Confirm(n) if n.starts == 1)
        );
        assert!(matches!(decide(m.clone(), Some("cd")), Start::Failed(..)));
        let mut f = m.clone();
        f.failed = Some(no_broker(5));
        assert!(
            matches!(decide(f, Some(&"ab".repeat(32))), Start::Failed(_, w) if w.starts_with("no broker connection within 5 s"))
        );
        let mut c = m;
        c.starts = MAX_STARTS;
        assert!(matches!(
            decide(c, Some(&"ab".repeat(32))),
            Start::RollBack(..)
        ));
    }
}
