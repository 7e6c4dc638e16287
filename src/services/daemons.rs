//! `daemon.*` typed jobs (SPEC §4.5): the system's own services, driven through init scripts
//! in `init_dir` (`initd`, as on OpenWrt) or through `systemctl` (`systemd`).
//!
//! initd: actions are `<init_dir>/<name> start|stop|restart|reload|enable|disable`; the status
//! is `<init_dir>/<name> running` (exit 0 = running, the OpenWrt procd verb), and when that
//! does not say running, `<init_dir>/<name> status` (exit 0 = running, anything else =
//! stopped); `enabled` is the exit code of `<init_dir>/<name> enabled` (OpenWrt `rc.common`);
//! `pid` comes from `/var/run/<name>.pid` when it names a live process, else from the first
//! process whose command name is `<name>`, else null.
//! systemd: `systemctl is-active`, `is-enabled`, `show -p MainPID --value`, `list-units`.
//!
//! Threads: runs in the job worker that calls [`run`] (and healthz). Every command runs with a
//! timeout ([`CMD_TIMEOUT`]) in its own process group, killed as a group when it overruns.
#![forbid(unsafe_code)]

use crate::config::{Config, ServiceManager};
use crate::platform::process::{self, Capture, RunOpts, Spec, WaitError};
use crate::services::procs::ArgError;
use serde_json::{json, Value};
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Limit for one init script or systemctl call.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for status queries (healthz, list).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a `daemon.*` job (or a status query of healthz) failed. The `Display` text is the
/// job's `meta.error`.
#[derive(Debug)]
pub enum DaemonError {
    /// A job argument is missing or malformed (`missing "name"`).
    Arg(ArgError),
    /// The name is empty, starts with `-` or holds `/` or `..`: never passed to a script
    /// or to systemctl.
    BadName(String),
    /// `daemons` is set and does not list this daemon.
    NotAllowed(String),
    /// initd: `<init_dir>/<name>` is not an executable file.
    NoSuchDaemon { name: String, script: PathBuf },
    /// The init script or systemctl could not be started.
    Run { program: PathBuf, err: io::Error },
    /// The init script or systemctl was started but its exit status could not be had.
    Wait { program: PathBuf, err: WaitError },
    /// initd: `init_dir` could not be listed (`daemon.list`).
    InitDir { dir: String, err: io::Error },
    /// `action` did not finish within `after` ([`CMD_TIMEOUT`]); it was killed.
    Timeout {
        name: String,
        action: String,
        after: Duration,
    },
    /// `action` exited with a code other than 0.
    Failed {
        name: String,
        action: String,
        code: i32,
    },
    /// `action` was ended by a signal.
    Killed { name: String, action: String },
    /// [`run`] was given a type that is not `daemon.*`.
    UnknownType(String),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Arg(e) => e.fmt(f),
            DaemonError::BadName(name) => write!(f, "forbidden: daemon name {name:?}"),
            DaemonError::NotAllowed(name) => {
                write!(f, "forbidden: daemon {name} is not in \"daemons\"")
            }
            DaemonError::NoSuchDaemon { name, script } => {
                write!(f, "no such daemon: {name} ({} not found)", script.display())
            }
            DaemonError::Run { program, err } => {
                write!(f, "cannot run {}: {err}", program.display())
            }
            DaemonError::Wait { program, err } => {
                write!(f, "wait for {}: {err}", program.display())
            }
            DaemonError::InitDir { dir, err } => write!(f, "cannot read init_dir {dir}: {err}"),
            DaemonError::Timeout {
                name,
                action,
                after,
            } => write!(f, "daemon {name} {action}: timeout after {after:?}"),
            DaemonError::Failed { name, action, code } => {
                write!(f, "daemon {name} {action} failed with exit code {code}")
            }
            DaemonError::Killed { name, action } => {
                write!(f, "daemon {name} {action} was killed by a signal")
            }
            DaemonError::UnknownType(ty) => write!(f, "unknown_type: {ty}"),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::Run { err, .. } | DaemonError::InitDir { err, .. } => Some(err),
            DaemonError::Wait { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<ArgError> for DaemonError {
    fn from(e: ArgError) -> Self {
        DaemonError::Arg(e)
    }
}

impl crate::jobs::typed::JobFailure for DaemonError {}

/// Output of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// `None` when killed by a signal or on timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub timed_out: bool,
}

/// Runs `program args` in its own process group with a timeout. `capture`: read stdout (only
/// for queries: an init script's `start` leaves daemons holding any pipe it is given).
pub fn run_program(
    program: &Path,
    args: &[&str],
    timeout: Duration,
    capture: bool,
) -> Result<Ran, DaemonError> {
    let spec = Spec::new(program).args(args);
    // A daemon that inherited the pipe may keep it open: wait briefly, never for it to end.
    let opts = RunOpts::new(timeout)
        .capture(if capture {
            Capture::Stdout { max: 64 * 1024 }
        } else {
            Capture::None
        })
        .drain(Duration::from_millis(500));
    let o = process::run(&spec, &opts, &|_| {}).map_err(|e| DaemonError::Run {
        program: program.to_path_buf(),
        err: e.error,
    })?;
    if o.timed_out {
        log::warn!(
            "{} {} timed out after {timeout:?}, killing it",
            program.display(),
            args.join(" ")
        );
        return Ok(Ran {
            code: None,
            stdout: o.output_lossy(),
            timed_out: true,
        });
    }
    let stdout = o.output_lossy();
    match o.status {
        Ok(st) => Ok(Ran {
            code: st.code(),
            stdout,
            timed_out: false,
        }),
        Err(err) => Err(DaemonError::Wait {
            program: program.to_path_buf(),
            err,
        }),
    }
}

/// The manager in use: `auto` is systemd when `/run/systemd/system` exists.
pub fn manager(cfg: &Config) -> ServiceManager {
    match cfg.service_manager {
        ServiceManager::Auto => {
            if Path::new("/run/systemd/system").is_dir() {
                ServiceManager::Systemd
            } else {
                ServiceManager::Initd
            }
        }
        m => m,
    }
}

/// Refuses names with `/` or `..`, empty ones, and names outside `daemons` when set.
pub fn check_name(cfg: &Config, name: &str) -> Result<(), DaemonError> {
    if name.is_empty() || name.contains('/') || name.contains("..") || name.starts_with('-') {
        return Err(DaemonError::BadName(name.to_string()));
    }
    if let Some(allowed) = &cfg.daemons {
        let base = name.strip_suffix(".service").unwrap_or(name);
        if !allowed
            .iter()
            .any(|a| a == name || a.strip_suffix(".service").unwrap_or(a) == base)
        {
            return Err(DaemonError::NotAllowed(name.to_string()));
        }
    }
    Ok(())
}

fn script(cfg: &Config, name: &str) -> Result<PathBuf, DaemonError> {
    let p = Path::new(&cfg.init_dir).join(name);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
        _ => Err(DaemonError::NoSuchDaemon {
            name: name.to_string(),
            script: p,
        }),
    }
}

const SYSTEMCTL: &str = "systemctl";

fn systemctl(args: &[&str], timeout: Duration, capture: bool) -> Result<Ran, DaemonError> {
    run_program(Path::new(SYSTEMCTL), args, timeout, capture)
}

/// initd status: `running` (exit 0), else `status` (exit 0 = running, other = stopped).
fn initd_status(p: &Path) -> &'static str {
    match run_program(p, &["running"], QUERY_TIMEOUT, false) {
        Ok(r) if r.code == Some(0) => return "running",
        Ok(_) => {}
        Err(e) => {
            log::warn!("{e}");
            return "unknown";
        }
    }
    match run_program(p, &["status"], QUERY_TIMEOUT, false) {
        Ok(r) if r.code == Some(0) => "running",
        Ok(r) if r.timed_out => "unknown",
        Ok(_) => "stopped",
        Err(_) => "unknown",
    }
}

/// `systemctl is-active` word → SPEC status.
pub fn systemd_status_word(word: &str) -> &'static str {
    match word.trim() {
        "active" | "reloading" => "running",
        "inactive" | "failed" | "deactivating" => "stopped",
        "activating" => "starting",
        _ => "unknown",
    }
}

fn status_of(cfg: &Config, name: &str) -> Result<&'static str, DaemonError> {
    match manager(cfg) {
        ServiceManager::Systemd => {
            let r = systemctl(&["is-active", name], QUERY_TIMEOUT, true)?;
            Ok(systemd_status_word(&r.stdout))
        }
        _ => Ok(initd_status(&script(cfg, name)?)),
    }
}

/// Unit names (`x.service`) and their status from `systemctl list-units` output
/// (`--no-legend --plain`: `UNIT LOAD ACTIVE SUB DESCRIPTION…`).
pub fn parse_list_units(text: &str) -> Vec<(String, &'static str)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let mut unit = it.next()?;
            // Older systemctl prefixes failed units with a bullet even with --plain.
            if unit == "●" || unit == "*" {
                unit = it.next()?;
            }
            let _load = it.next()?;
            let active = it.next()?;
            unit.ends_with(".service")
                .then(|| (unit.to_string(), systemd_status_word(active)))
        })
        .collect()
}

/// `{"daemons":[{"name","status"}]}`.
pub fn list(cfg: &Config) -> Result<Value, DaemonError> {
    let mut out = Vec::new();
    match manager(cfg) {
        ServiceManager::Systemd => {
            let r = systemctl(
                &[
                    "list-units",
                    "--type=service",
                    "--all",
                    "--no-legend",
                    "--plain",
                    "--no-pager",
                ],
                CMD_TIMEOUT,
                true,
            )?;
            for (name, status) in parse_list_units(&r.stdout) {
                if check_name(cfg, &name).is_ok() {
                    out.push(json!({"name": name, "status": status}));
                }
            }
        }
        _ => {
            let rd = std::fs::read_dir(&cfg.init_dir).map_err(|err| DaemonError::InitDir {
                dir: cfg.init_dir.clone(),
                err,
            })?;
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| check_name(cfg, n).is_ok() && script(cfg, n).is_ok())
                .collect();
            names.sort();
            for n in names {
                let status = script(cfg, &n)
                    .map(|p| initd_status(&p))
                    .unwrap_or("unknown");
                out.push(json!({"name": n, "status": status}));
            }
        }
    }
    Ok(json!({ "daemons": out }))
}

fn pid_of(cfg: &Config, name: &str) -> Option<i32> {
    if manager(cfg) == ServiceManager::Systemd {
        let r = systemctl(
            &["show", "-p", "MainPID", "--value", name],
            QUERY_TIMEOUT,
            true,
        )
        .ok()?;
        return r.stdout.trim().parse::<i32>().ok().filter(|p| *p > 0);
    }
    if let Ok(t) = std::fs::read_to_string(format!("/var/run/{name}.pid")) {
        if let Ok(p) = t.trim().parse::<i32>() {
            if crate::services::procs::alive(p) {
                return Some(p);
            }
        }
    }
    crate::services::procs::pids_named(name).into_iter().next()
}

/// `{"name","status","enabled","pid"}`.
pub fn info(cfg: &Config, name: &str) -> Result<Value, DaemonError> {
    check_name(cfg, name)?;
    let status = status_of(cfg, name)?;
    let enabled = match manager(cfg) {
        ServiceManager::Systemd => {
            let r = systemctl(&["is-enabled", name], QUERY_TIMEOUT, true)?;
            r.stdout.trim() == "enabled"
        }
        _ => run_program(&script(cfg, name)?, &["enabled"], QUERY_TIMEOUT, false)?.code == Some(0),
    };
    let pid = if status == "running" {
        pid_of(cfg, name)
    } else {
        None
    };
    Ok(json!({"name": name, "status": status, "enabled": enabled, "pid": pid}))
}

/// Runs `action` on daemon `name`; answers `{"name","status"}` after it.
pub fn act(cfg: &Config, name: &str, action: &str) -> Result<Value, DaemonError> {
    check_name(cfg, name)?;
    let r = match manager(cfg) {
        ServiceManager::Systemd => systemctl(&[action, name], CMD_TIMEOUT, false)?,
        _ => run_program(&script(cfg, name)?, &[action], CMD_TIMEOUT, false)?,
    };
    let names = || (name.to_string(), action.to_string());
    if r.timed_out {
        let (name, action) = names();
        return Err(DaemonError::Timeout {
            name,
            action,
            after: CMD_TIMEOUT,
        });
    }
    match r.code {
        Some(0) => {}
        Some(code) => {
            let (name, action) = names();
            return Err(DaemonError::Failed { name, action, code });
        }
        None => {
            let (name, action) = names();
            return Err(DaemonError::Killed { name, action });
        }
    }
    log::info!("daemon {name}: {action} done");
    Ok(json!({"name": name, "status": status_of(cfg, name)?}))
}

/// The `daemon.*` jobs and healthz's `daemons`, on the current config.
#[derive(Clone)]
pub struct Daemons(pub crate::runtime::ConfigHandle);

impl crate::jobs::typed::Daemons for Daemons {
    fn run(&self, ty: &str, args: &Value) -> Result<Value, crate::jobs::typed::Failure> {
        Ok(run(&self.0.get(), ty, args)?)
    }
}

impl crate::healthz::DaemonsView for Daemons {
    fn daemon_entries(
        &self,
        cfg: &Config,
    ) -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>> {
        let v = list(cfg)?;
        Ok(v["daemons"].as_array().cloned().unwrap_or_default())
    }
}

/// Runs one `daemon.*` job.
pub fn run(cfg: &Config, ty: &str, args: &Value) -> Result<Value, DaemonError> {
    if ty == "daemon.list" {
        return list(cfg);
    }
    let name = crate::services::procs::arg_str(args, "name")?;
    match ty {
        "daemon.info" => info(cfg, name),
        _ => match ty.strip_prefix("daemon.") {
            Some(a @ ("start" | "stop" | "restart" | "reload" | "enable" | "disable")) => {
                act(cfg, name, a)
            }
            _ => Err(DaemonError::UnknownType(ty.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn cfg_with(dir: &Path, daemons: Option<Vec<&str>>) -> Config {
        Config {
            init_dir: dir.to_string_lossy().into_owned(),
            service_manager: ServiceManager::Initd,
            daemons: daemons.map(|d| d.into_iter().map(String::from).collect()),
            ..Config::default()
        }
    }

    fn write_script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn names_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let all = cfg_with(d.path(), None);
        assert!(check_name(&all, "dnsmasq").is_ok());
        for bad in ["../x", "a/b", "..", "", "-x"] {
            let e = check_name(&all, bad).unwrap_err();
            assert!(matches!(&e, DaemonError::BadName(n) if n == bad), "{bad}");
            assert_eq!(e.to_string(), format!("forbidden: daemon name {bad:?}"));
        }
        let some = cfg_with(d.path(), Some(vec!["ok", "web.service"]));
        assert!(check_name(&some, "ok").is_ok());
        assert!(check_name(&some, "web").is_ok());
        assert!(check_name(&some, "ok.service").is_ok());
        assert_eq!(
            check_name(&some, "other").unwrap_err().to_string(),
            "forbidden: daemon other is not in \"daemons\""
        );
    }

    #[test]
    fn initd_scripts() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let s = state.display();
        // A fake procd-style script: state in a file.
        let body = format!(
            "case \"$1\" in\n start) touch {s};;\n stop) rm -f {s};;\n running) test -e {s};;\n enabled) test -e {s}.en;;\n enable) touch {s}.en;;\n disable) rm -f {s}.en;;\n reload) exit 3;;\n *) exit 1;;\nesac"
        );
        let init = d.path().join("init");
        std::fs::create_dir(&init).unwrap();
        write_script(&init, "svc", &body);
        // Only `status` (LSB style).
        write_script(
            &init,
            "old",
            "case \"$1\" in status) exit 0;; *) exit 1;; esac",
        );
        std::fs::write(init.join("notexec"), "x").unwrap();
        let cfg = cfg_with(&init, None);
        assert_eq!(
            list(&cfg).unwrap(),
            json!({"daemons":[{"name":"old","status":"running"},{"name":"svc","status":"stopped"}]})
        );
        assert_eq!(
            act(&cfg, "svc", "start").unwrap(),
            json!({"name":"svc","status":"running"})
        );
        assert_eq!(info(&cfg, "svc").unwrap()["enabled"], false);
        act(&cfg, "svc", "enable").unwrap();
        assert_eq!(info(&cfg, "svc").unwrap()["enabled"], true);
        let e = act(&cfg, "svc", "reload").unwrap_err();
        assert!(
            matches!(&e, DaemonError::Failed { name, action, code: 3 }
                if name == "svc" && action == "reload"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "daemon svc reload failed with exit code 3");
        assert_eq!(act(&cfg, "svc", "stop").unwrap()["status"], "stopped");
        assert_eq!(
            info(&cfg, "nope").unwrap_err().to_string(),
            format!("no such daemon: nope ({}/nope not found)", init.display())
        );
        assert!(matches!(
            info(&cfg, "notexec"),
            Err(DaemonError::NoSuchDaemon { name, .. }) if name == "notexec"
        ));
        let only = cfg_with(&init, Some(vec!["old"]));
        assert_eq!(list(&only).unwrap()["daemons"].as_array().unwrap().len(), 1);
        assert!(matches!(
            act(&only, "svc", "start"),
            Err(DaemonError::NotAllowed(n)) if n == "svc"
        ));
        assert!(matches!(
            run(&cfg, "daemon.info", &json!({})),
            Err(DaemonError::Arg(ArgError::Missing { key: "name" }))
        ));
        assert_eq!(
            run(&cfg, "daemon.bogus", &json!({"name": "svc"}))
                .unwrap_err()
                .to_string(),
            "unknown_type: daemon.bogus"
        );
        let gone = cfg_with(&d.path().join("nonexistent"), None);
        let e = list(&gone).unwrap_err();
        assert!(
            matches!(&e, DaemonError::InitDir { err, .. }
            if err.kind() == io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .starts_with(&format!("cannot read init_dir {}: ", gone.init_dir)));
    }

    #[test]
    fn killed_and_timed_out_actions() {
        let d = tempfile::tempdir().unwrap();
        write_script(
            d.path(),
            "k",
            "case \"$1\" in stop) kill -9 $$;; restart) sleep 30;; *) exit 0;; esac",
        );
        let cfg = cfg_with(d.path(), None);
        let e = act(&cfg, "k", "stop").unwrap_err();
        assert!(matches!(&e, DaemonError::Killed { .. }), "{e:?}");
        assert_eq!(e.to_string(), "daemon k stop was killed by a signal");
        // CMD_TIMEOUT is 30 s: the text is checked on the variant.
        let e = DaemonError::Timeout {
            name: "k".into(),
            action: "restart".into(),
            after: CMD_TIMEOUT,
        };
        assert_eq!(e.to_string(), "daemon k restart: timeout after 30s");
    }

    #[test]
    fn run_errors() {
        let e = run_program(Path::new("/nonexistent/x"), &[], QUERY_TIMEOUT, false).unwrap_err();
        assert!(
            matches!(&e, DaemonError::Run { err, .. }
            if err.kind() == io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "cannot run /nonexistent/x: No such file or directory (os error 2)"
        );
        let e = DaemonError::Wait {
            program: "/etc/init.d/x".into(),
            err: WaitError::WaiterGone,
        };
        assert_eq!(
            e.to_string(),
            "wait for /etc/init.d/x: the waiter thread ended without an exit status"
        );
        assert_eq!(
            crate::jobs::typed::Failure::from(DaemonError::BadName("..".into())).error,
            "forbidden: daemon name \"..\""
        );
    }

    #[test]
    fn timeout_kills_the_group() {
        let t0 = Instant::now();
        let r = run_program(
            Path::new("/bin/sh"),
            &["-c", "sleep 30 & sleep 30"],
            Duration::from_millis(300),
            true,
        )
        .unwrap();
        assert!(r.timed_out);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn capture_does_not_wait_for_inheriting_children() {
        let t0 = Instant::now();
        let r = run_program(
            Path::new("/bin/sh"),
            &["-c", "echo hi; (sleep 5 &) ; exit 0"],
            Duration::from_secs(10),
            true,
        )
        .unwrap();
        assert_eq!(r.code, Some(0));
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn systemd_words() {
        assert_eq!(systemd_status_word("active\n"), "running");
        assert_eq!(systemd_status_word("failed"), "stopped");
        assert_eq!(systemd_status_word("activating"), "starting");
        assert_eq!(systemd_status_word("weird"), "unknown");
    }
}
