//! `process.*` typed jobs (SPEC §4.4) and the `/proc` readers they share with `daemon.info`
//! and the watchdog.
//!
//! Owns the [`Registry`] of processes started by `process.start` (shared with healthz
//! through the job handlers).
//!
//! Threads: the job workers call [`run`]; every process started by `process.start` gets a
//! small reaper thread ([`crate::platform::process::spawn_supervised`]) that blocks in
//! `wait()` and records the exit status in the registry, so exit codes are known and no zombie
//! is left.
#![forbid(unsafe_code)]

use crate::platform::process::{self, Leftovers, Spec};
use crate::platform::procfs::protected;
pub use crate::platform::procfs::Protected;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
}

impl Exit {
    pub fn from_status(st: ExitStatus) -> Exit {
        Exit {
            code: st.code(),
            signal: st.signal(),
        }
    }
}

/// Exited entries kept for `process.status` beyond this are forgotten, oldest first.
const MAX_EXITED: usize = 256;

#[derive(Debug)]
struct Started {
    exit: Option<Exit>,
    /// Order of exit, for trimming.
    exited_seq: u64,
}

/// Processes started by `process.start`, by pid; the reaper threads fill in exits.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
    changed: Condvar,
}

#[derive(Default)]
struct RegistryInner {
    procs: HashMap<i32, Started>,
    seq: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn add(&self, pid: i32) {
        self.lock().procs.insert(
            pid,
            Started {
                exit: None,
                exited_seq: 0,
            },
        );
    }

    fn set_exit(&self, pid: i32, exit: Exit) {
        let mut g = self.lock();
        g.seq += 1;
        let seq = g.seq;
        if let Some(s) = g.procs.get_mut(&pid) {
            s.exit = Some(exit);
            s.exited_seq = seq;
        }
        let exited = g.procs.values().filter(|s| s.exit.is_some()).count();
        if exited > MAX_EXITED {
            if let Some(oldest) = g
                .procs
                .iter()
                .filter(|(_, s)| s.exit.is_some())
                .min_by_key(|(_, s)| s.exited_seq)
                .map(|(p, _)| *p)
            {
                g.procs.remove(&oldest);
            }
        }
        drop(g);
        self.changed.notify_all();
    }

    /// `None`: not started by us. `Some(None)`: still running. `Some(Some(exit))`: ended.
    pub fn get(&self, pid: i32) -> Option<Option<Exit>> {
        self.lock().procs.get(&pid).map(|s| s.exit)
    }

    /// Pids started by us that are still running, ascending.
    pub fn running(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .lock()
            .procs
            .iter()
            .filter(|(_, s)| s.exit.is_none())
            .map(|(p, _)| *p)
            .collect();
        v.sort_unstable();
        v
    }

    /// Waits up to `d` for `pid` (one of ours) to end.
    fn wait_exit(&self, pid: i32, d: Duration) -> Option<Exit> {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        loop {
            if let Some(Some(e)) = g.procs.get(&pid).map(|s| s.exit) {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = match self.changed.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors

/// A job argument that is missing or not what it must be. The `Display` text is the job's
/// `meta.error`. Shared with the `daemon.*` and `service.*` jobs, which read their
/// arguments with [`arg_str`] and wrap this in their own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// `args[key]` is absent or null: `missing "pid"`.
    Missing { key: &'static str },
    /// `args[key]` is there but of the wrong type or out of range: `"pid" must be a positive
    /// integer, found "12"`. `expected` completes "must be"; `found` is the JSON found.
    Invalid {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    /// An item of the list `args[key]` is of the wrong type: `"args" must hold strings,
    /// found {}`.
    Item {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    /// The value of `entry` in the object `args[key]` is of the wrong type: `"env".A must be
    /// a string, found [1]`.
    Entry {
        key: &'static str,
        entry: String,
        expected: &'static str,
        found: String,
    },
    /// `args[key]` is an empty string where a value is needed: `"path" is empty`.
    Empty { key: &'static str },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Missing { key } => write!(f, "missing \"{key}\""),
            ArgError::Invalid {
                key,
                expected,
                found,
            } => write!(f, "\"{key}\" must be {expected}, found {found}"),
            ArgError::Item {
                key,
                expected,
                found,
            } => write!(f, "\"{key}\" must hold {expected}, found {found}"),
            ArgError::Entry {
                key,
                entry,
                expected,
                found,
            } => write!(f, "\"{key}\".{entry} must be {expected}, found {found}"),
            ArgError::Empty { key } => write!(f, "\"{key}\" is empty"),
        }
    }
}

impl std::error::Error for ArgError {}

impl crate::jobs::typed::JobFailure for ArgError {}

/// Why a `process.*` job or a `/proc` read failed. The `Display` text is the job's
/// `meta.error` (SPEC §4.4: `no such pid: N`, `permission denied`).
#[derive(Debug)]
pub enum ProcError {
    /// A job argument is missing or malformed.
    Arg(ArgError),
    /// No process has this pid: `/proc/<pid>` is gone, a signal got `ESRCH`, or it is a
    /// zombie not started by `process.start`.
    NoSuchPid(i32),
    /// The kernel refused: `/proc/<pid>/stat` not readable, or a signal got `EPERM`.
    PermissionDenied,
    /// The pid is init, socketman itself, one of its threads or its process group leader:
    /// never stopped or signalled for a job (a STOP would freeze the agent for good).
    Forbidden { pid: i32, why: Protected },
    /// `signal` is not one of [`SIGNALS`].
    UnknownSignal(String),
    /// `process.start` could not start the program (not found, not executable, no thread
    /// for its reaper).
    Start { path: String, err: io::Error },
    /// `/proc/<pid>/stat` was read but is not in the kernel's format.
    Parse { path: String },
    /// A signal to `pid` failed for another reason than `ESRCH`/`EPERM`.
    Signal { pid: i32, err: io::Error },
    /// [`run`] was given a type that is not `process.*`.
    UnknownType(String),
}

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcError::Arg(e) => e.fmt(f),
            ProcError::NoSuchPid(pid) => write!(f, "no such pid: {pid}"),
            ProcError::PermissionDenied => write!(f, "permission denied"),
            ProcError::Forbidden { pid, why } => write!(f, "forbidden: {pid} is {why}"),
            ProcError::UnknownSignal(name) => write!(f, "unknown signal: {name}"),
            ProcError::Start { path, err } => {
                // "No such file or directory (os error 2)" → "No such file or directory".
                let msg = err.to_string();
                let msg = msg.split(" (os error").next().unwrap_or(&msg);
                write!(f, "cannot start {path}: {msg}")
            }
            ProcError::Parse { path } => write!(f, "cannot parse {path}"),
            ProcError::Signal { pid, err } => write!(f, "cannot signal {pid}: {err}"),
            ProcError::UnknownType(ty) => write!(f, "unknown_type: {ty}"),
        }
    }
}

impl std::error::Error for ProcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProcError::Start { err, .. } | ProcError::Signal { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<ArgError> for ProcError {
    fn from(e: ArgError) -> Self {
        ProcError::Arg(e)
    }
}

impl crate::jobs::typed::JobFailure for ProcError {}

// ---------------------------------------------------------------------------------------
// /proc readers

/// The fields of `/proc/<pid>/stat` socketman uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// In clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Clock ticks after boot.
    pub starttime: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name sits in parentheses and may itself
/// contain spaces and parentheses, so it runs from the first `(` to the LAST `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid: i32 = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field n is rest[n - 3].
    let field = |n: usize| -> Option<&str> { rest.get(n - 3).copied() };
    let num = |n: usize| -> Option<u64> { field(n)?.parse().ok() };
    Some(Stat {
        pid,
        comm,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        utime: num(14)?,
        stime: num(15)?,
        starttime: num(22)?,
        // rss can be negative in theory for kernel threads' accounting quirks; treat as 0.
        rss_pages: field(24)?.parse::<i64>().ok()?.max(0) as u64,
    })
}

pub use crate::platform::procfs::{kb_value, status_uid, status_value};

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// uid → user name from an `/etc/passwd` text.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(':');
            let name = it.next()?;
            let _pw = it.next()?;
            let uid: u32 = it.next()?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

fn boot_time() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_btime(&t))
        .unwrap_or(0)
}

fn users() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .map(|t| parse_passwd(&t))
        .unwrap_or_default()
}

fn user_of(users: &HashMap<u32, String>, uid: u32) -> String {
    users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
}

/// Reads `/proc/<pid>/stat`. `Err` is the job error ([`ProcError::NoSuchPid`],
/// [`ProcError::PermissionDenied`], [`ProcError::Parse`]).
pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(t) => parse_stat(&t).ok_or(ProcError::Parse { path }),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(ProcError::PermissionDenied),
        Err(_) => Err(ProcError::NoSuchPid(pid)),
    }
}

/// Pids of every process in `/proc`, ascending.
pub fn all_pids() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    pid > 0 && matches!(read_stat(pid), Ok(s) if s.state != 'Z' && s.state != 'X')
}

/// Pids of processes whose command name is `name` (the first 15 bytes, as the kernel keeps).
pub fn pids_named(name: &str) -> Vec<i32> {
    let short: String = name.chars().take(15).collect();
    all_pids()
        .into_iter()
        .filter(|p| matches!(read_stat(*p), Ok(s) if s.comm == short && s.state != 'Z'))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Arguments

/// `args[key]` as a pid (a positive integer).
pub fn arg_pid(args: &Value, key: &'static str) -> Result<i32, ArgError> {
    match args.get(key) {
        None | Some(Value::Null) => Err(ArgError::Missing { key }),
        Some(v) => v
            .as_i64()
            .filter(|n| *n > 0 && *n <= i64::from(i32::MAX))
            .map(|n| n as i32)
            .ok_or_else(|| ArgError::Invalid {
                key,
                expected: "a positive integer",
                found: v.to_string(),
            }),
    }
}

/// `args[key]` as a string.
pub fn arg_str<'a>(args: &'a Value, key: &'static str) -> Result<&'a str, ArgError> {
    match args.get(key) {
        None | Some(Value::Null) => Err(ArgError::Missing { key }),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(ArgError::Invalid {
            key,
            expected: "a string",
            found: v.to_string(),
        }),
    }
}

/// The SPEC signal names and their numbers.
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", libc::SIGTERM),
    ("SIGKILL", libc::SIGKILL),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGCONT", libc::SIGCONT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
];

/// SPEC name → number.
pub fn signal_number(name: &str) -> Option<i32> {
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Number → name (`SIGSEGV` and friends too, for exit reports).
pub fn signal_name(sig: i32) -> String {
    if let Some((n, _)) = SIGNALS.iter().find(|(_, s)| *s == sig) {
        return n.to_string();
    }
    match sig {
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGALRM => "SIGALRM".into(),
        other => format!("SIG{other}"),
    }
}

/// Refuses to signal init, socketman, its threads (a signal to a thread id reaches the
/// whole agent: a STOP would freeze it for good) and its process group leader.
fn not_self(pid: i32) -> Result<(), ProcError> {
    match protected(pid) {
        Some(why) => Err(ProcError::Forbidden { pid, why }),
        None => Ok(()),
    }
}

fn kill_err(pid: i32, err: io::Error) -> ProcError {
    match err.raw_os_error() {
        Some(libc::ESRCH) => ProcError::NoSuchPid(pid),
        Some(libc::EPERM) => ProcError::PermissionDenied,
        _ => ProcError::Signal { pid, err },
    }
}

// ---------------------------------------------------------------------------------------
// Jobs

/// The `process.*` jobs, on the registry of the processes they started.
#[derive(Default, Clone)]
pub struct Processes(pub Arc<Registry>);

impl crate::jobs::typed::Processes for Processes {
    fn run(&self, ty: &str, args: &Value) -> Result<Value, crate::jobs::typed::Failure> {
        Ok(run(&self.0, ty, args)?)
    }
}

/// Runs one `process.*` job.
pub fn run(reg: &Arc<Registry>, ty: &str, args: &Value) -> Result<Value, ProcError> {
    match ty {
        "process.start" => start(reg, args),
        "process.stop" => stop(reg, args),
        "process.signal" => signal(args),
        "process.status" => status(reg, args),
        "process.list" => Ok(list(reg)),
        "process.info" => info(arg_pid(args, "pid")?),
        other => Err(ProcError::UnknownType(other.to_string())),
    }
}

/// Starts a program without a shell in its own process group and records it.
pub fn start(reg: &Arc<Registry>, args: &Value) -> Result<Value, ProcError> {
    let path = arg_str(args, "path")?;
    if path.is_empty() {
        return Err(ArgError::Empty { key: "path" }.into());
    }
    let argv: Vec<String> = match args.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(ArgError::Item {
                    key: "args",
                    expected: "strings",
                    found: other.to_string(),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ArgError::Invalid {
                key: "args",
                expected: "a list",
                found: v.to_string(),
            }
            .into())
        }
    };
    let env: BTreeMap<String, String> = match args.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(n) => Ok((k.clone(), n.to_string())),
                Value::Bool(b) => Ok((k.clone(), b.to_string())),
                other => Err(ArgError::Entry {
                    key: "env",
                    entry: k.clone(),
                    expected: "a string",
                    found: other.to_string(),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ArgError::Invalid {
                key: "env",
                expected: "an object",
                found: v.to_string(),
            }
            .into())
        }
    };
    let spec = Spec::new(path).args(&argv).envs(&env);
    let reg2 = Arc::clone(reg);
    let child = process::spawn_supervised(
        &spec,
        Leftovers::Keep,
        // Registered before the reaper can record the exit.
        &|pid| {
            reg.add(pid);
            log::info!("process.start: started {path} as pid {pid}");
        },
        move |e| {
            let exit = e.status.map(Exit::from_status).unwrap_or(Exit {
                code: None,
                signal: None,
            });
            log::info!(
                "process {} ended (exit code {:?}, signal {:?})",
                e.pid,
                exit.code,
                exit.signal
            );
            reg2.set_exit(e.pid, exit);
        },
    )
    .map_err(|e| ProcError::Start {
        path: path.to_string(),
        err: e.error,
    })?;
    Ok(json!({ "pid": child.pid() }))
}

fn exit_json(e: Option<Exit>, sent: Option<i32>) -> Value {
    match e {
        Some(e) => json!({"exit_code": e.code, "signal": e.signal.map(signal_name)}),
        None => json!({"exit_code": null, "signal": sent.map(signal_name)}),
    }
}

/// TERM to the process group (or the process when it leads no group), KILL after `grace`.
pub fn stop(reg: &Registry, args: &Value) -> Result<Value, ProcError> {
    let pid = arg_pid(args, "pid")?;
    let grace = match args.get("grace") {
        None | Some(Value::Null) => 5.0,
        Some(v) => v
            .as_f64()
            .filter(|g| *g >= 0.0 && *g <= 3600.0)
            .ok_or_else(|| ArgError::Invalid {
                key: "grace",
                expected: "seconds (0-3600)",
                found: v.to_string(),
            })?,
    };
    let grace = Duration::from_secs_f64(grace);
    not_self(pid)?;
    let ours = reg.get(pid);
    if let Some(Some(e)) = ours {
        // Already ended: report how.
        return Ok(exit_json(Some(e), None));
    }
    let st = read_stat(pid)?;
    if st.state == 'Z' && ours.is_none() {
        return Err(ProcError::NoSuchPid(pid));
    }
    let group = st.pgrp == pid && pid > 1;
    let send = |sig: i32| -> Result<(), ProcError> {
        let r = if group {
            crate::platform::sys::kill_group(pid, sig)
        } else {
            crate::platform::sys::kill(pid, sig)
        };
        r.map_err(|e| kill_err(pid, e))
    };
    send(libc::SIGTERM)?;
    // A stopped process cannot act on TERM until it is continued.
    let _ = send(libc::SIGCONT);
    log::info!("process.stop: TERM sent to {pid} (group: {group})");
    if ours.is_some() {
        if let Some(e) = reg.wait_exit(pid, grace) {
            return Ok(exit_json(Some(e), None));
        }
        log::info!("process.stop: {pid} still alive after {grace:?}, sending KILL");
        let _ = send(libc::SIGKILL);
        return Ok(exit_json(
            reg.wait_exit(pid, Duration::from_secs(5)),
            Some(libc::SIGKILL),
        ));
    }
    // Not ours: watch /proc.
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return Ok(exit_json(None, Some(libc::SIGTERM)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!("process.stop: {pid} still alive after {grace:?}, sending KILL");
    let _ = send(libc::SIGKILL);
    Ok(exit_json(None, Some(libc::SIGKILL)))
}

/// Sends one of the SPEC signals to a process.
pub fn signal(args: &Value) -> Result<Value, ProcError> {
    let pid = arg_pid(args, "pid")?;
    let name = arg_str(args, "signal")?;
    let sig = signal_number(name).ok_or_else(|| ProcError::UnknownSignal(name.to_string()))?;
    not_self(pid)?;
    crate::platform::sys::kill(pid, sig).map_err(|e| kill_err(pid, e))?;
    log::info!("process.signal: {name} sent to {pid}");
    Ok(json!({}))
}

/// Running or not; the exit code for processes started by `process.start`.
pub fn status(reg: &Registry, args: &Value) -> Result<Value, ProcError> {
    let pid = arg_pid(args, "pid")?;
    match reg.get(pid) {
        Some(None) => Ok(json!({"running": true, "exit_code": null})),
        Some(Some(e)) => Ok(json!({
            "running": false,
            "exit_code": e.code,
            "signal": e.signal.map(signal_name),
        })),
        None => {
            if alive(pid) {
                Ok(json!({"running": true, "exit_code": null}))
            } else {
                Err(ProcError::NoSuchPid(pid))
            }
        }
    }
}

/// Every process in `/proc`, plus the pids started by `process.start` still running.
pub fn list(reg: &Registry) -> Value {
    let ticks = crate::platform::sys::clock_ticks().max(1);
    let page = crate::platform::sys::page_size();
    let btime = boot_time();
    let users = users();
    let procs: Vec<Value> = all_pids()
        .into_iter()
        .filter_map(|pid| {
            let st = read_stat(pid).ok()?;
            let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| status_uid(&t));
            Some(json!({
                "pid": st.pid,
                "ppid": st.ppid,
                "name": st.comm,
                "state": st.state.to_string(),
                "user": uid.map(|u| user_of(&users, u)),
                "rss_bytes": st.rss_pages * page,
                "cpu_user_ms": st.utime * 1000 / ticks,
                "cpu_system_ms": st.stime * 1000 / ticks,
                "started": btime + st.starttime / ticks,
            }))
        })
        .collect();
    json!({"processes": procs, "started_by_agent": reg.running()})
}

/// CPU use in percent of one CPU between two samples of (utime + stime) ticks.
pub fn cpu_percent(
    ticks_before: u64,
    ticks_after: u64,
    ticks_per_s: u64,
    elapsed: Duration,
) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || ticks_per_s == 0 {
        return 0.0;
    }
    let used = ticks_after.saturating_sub(ticks_before) as f64 / ticks_per_s as f64;
    (used / secs * 1000.0).round() / 10.0
}

/// One process in detail (the Nest bot's fields).
pub fn info(pid: i32) -> Result<Value, ProcError> {
    let ticks = crate::platform::sys::clock_ticks().max(1);
    let page = crate::platform::sys::page_size();
    let t0 = Instant::now();
    let first = read_stat(pid)?;
    std::thread::sleep(Duration::from_millis(200));
    let st = read_stat(pid)?;
    let elapsed = t0.elapsed();
    let usage = cpu_percent(
        first.utime + first.stime,
        st.utime + st.stime,
        ticks,
        elapsed,
    );
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let user = status_uid(&status_text).map(|u| user_of(&users(), u));
    let mut m = Map::new();
    m.insert("pid".into(), json!(pid));
    m.insert("name".into(), json!(st.comm));
    m.insert("cmdline".into(), json!(cmdline));
    m.insert("state".into(), json!(st.state.to_string()));
    m.insert("user".into(), json!(user));
    m.insert("cpu_usage".into(), json!(usage));
    m.insert(
        "cpu_time".into(),
        json!({"user": st.utime * 1000 / ticks, "system": st.stime * 1000 / ticks}),
    );
    m.insert(
        "memory".into(),
        json!({
            "rss": st.rss_pages * page,
            "swap": kb_value(&status_text, "VmSwap"),
        }),
    );
    m.insert("started".into(), json!(boot_time() + st.starttime / ticks));
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stat_of_this_process() {
        // Captured from this machine at test time.
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let st = parse_stat(&text).unwrap();
        assert_eq!(st.pid, std::process::id() as i32);
        assert!(matches!(st.state, 'R' | 'S'));
        // The thread reading its own stat is running.
        let me = parse_stat(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
        assert_eq!(me.state, 'R');
        assert!(st.rss_pages > 0);
        assert!(st.starttime > 0);
        let ppid: i32 = status_value(
            &std::fs::read_to_string("/proc/self/status").unwrap(),
            "PPid",
        )
        .unwrap()
        .parse()
        .unwrap();
        assert_eq!(st.ppid, ppid);
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        // A real process whose name has spaces and parentheses: a copy of sleep.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("a) b (c");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = Command::new(&exe).arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if text.contains("a) b (c") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let st = parse_stat(&text).unwrap();
        assert_eq!(st.comm, "a) b (c");
        assert_eq!(st.pid, pid);
        assert_eq!(st.ppid, std::process::id() as i32);
        assert!(matches!(st.state, 'S' | 'R'));
    }

    #[test]
    fn stat_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x"), None);
        assert_eq!(parse_stat("12 (x) S 1"), None);
        assert_eq!(parse_stat("x (y) S 1 2 3 4 5 6 7 8 9 10 11 12"), None);
    }

    #[test]
    fn proc_files_of_this_machine() {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        assert!(parse_btime(&stat).unwrap() > 1_000_000_000);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = status_uid(&status).unwrap();
        let users = parse_passwd(&std::fs::read_to_string("/etc/passwd").unwrap());
        assert!(users.contains_key(&uid));
        assert!(kb_value(&status, "VmRSS").unwrap() > 0);
        assert_eq!(kb_value(&status, "NoSuchKey"), None);
    }

    #[test]
    fn cpu_percent_math() {
        assert_eq!(cpu_percent(10, 30, 100, Duration::from_millis(200)), 100.0);
        assert_eq!(cpu_percent(10, 11, 100, Duration::from_millis(200)), 5.0);
        assert_eq!(cpu_percent(10, 5, 100, Duration::from_millis(200)), 0.0);
        assert_eq!(cpu_percent(1, 2, 100, Duration::ZERO), 0.0);
    }

    #[test]
    fn signals() {
        assert_eq!(signal_number("SIGUSR2"), Some(libc::SIGUSR2));
        assert_eq!(signal_number("SIGFOO"), None);
        assert_eq!(signal_number("TERM"), None);
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
    }

    #[test]
    fn args() {
        assert_eq!(arg_pid(&json!({"pid": 12}), "pid"), Ok(12));
        assert_eq!(
            arg_pid(&json!({}), "pid"),
            Err(ArgError::Missing { key: "pid" })
        );
        assert_eq!(
            arg_pid(&json!({"pid": null}), "pid")
                .unwrap_err()
                .to_string(),
            "missing \"pid\""
        );
        for (bad, found) in [
            (json!("12"), "\"12\""),
            (json!(-1), "-1"),
            (json!(0), "0"),
            (json!(1.5), "1.5"),
            (json!(i64::from(i32::MAX) + 1), "2147483648"),
        ] {
            let e = arg_pid(&json!({ "pid": bad }), "pid").unwrap_err();
            assert_eq!(
                e,
                ArgError::Invalid {
                    key: "pid",
                    expected: "a positive integer",
                    found: found.into()
                }
            );
            assert_eq!(
                e.to_string(),
                format!("\"pid\" must be a positive integer, found {found}")
            );
        }
        assert_eq!(arg_str(&json!({"name": "x"}), "name"), Ok("x"));
        assert_eq!(
            arg_str(&json!({"name": 3}), "name")
                .unwrap_err()
                .to_string(),
            "\"name\" must be a string, found 3"
        );
        assert_eq!(
            arg_str(&json!({}), "name").unwrap_err().to_string(),
            "missing \"name\""
        );
    }

    #[test]
    fn error_texts() {
        // The texts of meta.error (SPEC §4.4), which the fleet server matches.
        let io = |code| io::Error::from_raw_os_error(code);
        for (e, text) in [
            (ProcError::NoSuchPid(5), "no such pid: 5"),
            (ProcError::PermissionDenied, "permission denied"),
            (
                ProcError::Forbidden {
                    pid: 7,
                    why: Protected::Socketman,
                },
                "forbidden: 7 is socketman itself",
            ),
            (
                ProcError::Forbidden {
                    pid: 1,
                    why: Protected::Init,
                },
                "forbidden: 1 is init (pid 1)",
            ),
            (
                ProcError::UnknownSignal("SIGBOGUS".into()),
                "unknown signal: SIGBOGUS",
            ),
            (
                ProcError::Start {
                    path: "/x".into(),
                    err: io(libc::ENOENT),
                },
                "cannot start /x: No such file or directory",
            ),
            (
                ProcError::Parse {
                    path: "/proc/9/stat".into(),
                },
                "cannot parse /proc/9/stat",
            ),
            (
                ProcError::Signal {
                    pid: 9,
                    err: io(libc::EINVAL),
                },
                "cannot signal 9: Invalid argument (os error 22)",
            ),
            (
                ProcError::UnknownType("process.x".into()),
                "unknown_type: process.x",
            ),
            (ArgError::Empty { key: "path" }.into(), "\"path\" is empty"),
            (
                ArgError::Item {
                    key: "args",
                    expected: "strings",
                    found: "{}".into(),
                }
                .into(),
                "\"args\" must hold strings, found {}",
            ),
            (
                ArgError::Entry {
                    key: "env",
                    entry: "A".into(),
                    expected: "a string",
                    found: "[1]".into(),
                }
                .into(),
                "\"env\".A must be a string, found [1]",
            ),
        ] {
            assert_eq!(e.to_string(), text, "{e:?}");
            assert_eq!(crate::jobs::typed::Failure::from(e).error, text);
        }
    }

    #[test]
    fn kill_errors() {
        let io = |code| io::Error::from_raw_os_error(code);
        assert!(matches!(
            kill_err(5, io(libc::ESRCH)),
            ProcError::NoSuchPid(5)
        ));
        assert!(matches!(
            kill_err(5, io(libc::EPERM)),
            ProcError::PermissionDenied
        ));
        let e = kill_err(5, io(libc::EINVAL));
        assert!(matches!(&e, ProcError::Signal { pid: 5, .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn gone_pid_self_and_bad_signal() {
        let reg = Arc::new(Registry::default());
        // A pid that was just reaped and not reused yet.
        let mut child = Command::new("/bin/true").spawn().unwrap();
        let gone = child.id() as i32;
        child.wait().unwrap();
        assert!(matches!(read_stat(gone), Err(ProcError::NoSuchPid(p)) if p == gone));
        assert!(matches!(
            status(&reg, &json!({"pid": gone})),
            Err(ProcError::NoSuchPid(p)) if p == gone
        ));
        assert!(matches!(
            signal(&json!({"pid": gone, "signal": "SIGCONT"})),
            Err(ProcError::NoSuchPid(p)) if p == gone
        ));
        let me = std::process::id() as i32;
        assert!(matches!(
            signal(&json!({"pid": me, "signal": "SIGCONT"})),
            Err(ProcError::Forbidden { pid, .. }) if pid == me
        ));
        assert!(matches!(
            stop(&reg, &json!({"pid": me})),
            Err(ProcError::Forbidden { pid, .. }) if pid == me
        ));
        // init, and every thread of socketman (a signal to a thread id reaches the agent).
        for ty in ["SIGCONT", "SIGSTOP", "SIGKILL"] {
            assert!(matches!(
                signal(&json!({"pid": 1, "signal": ty})),
                Err(ProcError::Forbidden {
                    pid: 1,
                    why: Protected::Init
                })
            ));
        }
        assert!(matches!(
            stop(&reg, &json!({"pid": 1, "grace": 0})),
            Err(ProcError::Forbidden {
                pid: 1,
                why: Protected::Init
            })
        ));
        let tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|t| *t != me)
            .collect();
        assert!(!tids.is_empty(), "the test harness runs tests on threads");
        for tid in tids {
            assert!(matches!(
                signal(&json!({"pid": tid, "signal": "SIGSTOP"})),
                Err(ProcError::Forbidden {
                    why: Protected::SocketmanThread,
                    ..
                })
            ));
            assert!(matches!(
                stop(&reg, &json!({"pid": tid})),
                Err(ProcError::Forbidden {
                    why: Protected::SocketmanThread,
                    ..
                })
            ));
        }
        assert!(matches!(
            signal(&json!({"pid": me, "signal": "TERM"})),
            Err(ProcError::UnknownSignal(n)) if n == "TERM"
        ));
        assert_eq!(
            stop(&reg, &json!({"pid": me, "grace": -1}))
                .unwrap_err()
                .to_string(),
            "\"grace\" must be seconds (0-3600), found -1"
        );
        assert!(matches!(
            run(&reg, "process.bogus", &json!({})),
            Err(ProcError::UnknownType(t)) if t == "process.bogus"
        ));
        assert!(matches!(
            run(&reg, "process.info", &json!({})),
            Err(ProcError::Arg(ArgError::Missing { key: "pid" }))
        ));
    }

    #[test]
    fn start_status_stop_own_process() {
        let reg = Arc::new(Registry::default());
        let r = start(&reg, &json!({"path": "/bin/sleep", "args": ["30"]})).unwrap();
        let pid = r["pid"].as_i64().unwrap() as i32;
        assert_eq!(reg.running(), vec![pid]);
        assert_eq!(status(&reg, &json!({"pid": pid})).unwrap()["running"], true);
        let s = stop(&reg, &json!({"pid": pid, "grace": 2})).unwrap();
        assert_eq!(s, json!({"exit_code": null, "signal": "SIGTERM"}));
        let st = status(&reg, &json!({"pid": pid})).unwrap();
        assert_eq!(st["running"], false);
        assert!(reg.running().is_empty());

        let r = start(
            &reg,
            &json!({"path": "/bin/sh", "args": ["-c", "exit $CODE"], "env": {"CODE": "7"}}),
        )
        .unwrap();
        let pid = r["pid"].as_i64().unwrap() as i32;
        assert_eq!(
            reg.wait_exit(pid, Duration::from_secs(5)).unwrap().code,
            Some(7)
        );
        assert_eq!(status(&reg, &json!({"pid": pid})).unwrap()["exit_code"], 7);
    }

    #[test]
    fn start_errors() {
        let reg = Arc::new(Registry::default());
        let text = |args: Value| start(&reg, &args).unwrap_err().to_string();
        let e = start(&reg, &json!({"path": "/nonexistent/x"})).unwrap_err();
        assert!(
            matches!(&e, ProcError::Start { path, err }
                if path == "/nonexistent/x" && err.kind() == io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "cannot start /nonexistent/x: No such file or directory"
        );
        assert_eq!(
            text(json!({"path": "/bin/true", "args": "x"})),
            "\"args\" must be a list, found \"x\""
        );
        assert_eq!(
            text(json!({"path": "/bin/true", "args": [{}]})),
            "\"args\" must hold strings, found {}"
        );
        assert_eq!(
            text(json!({"path": "/bin/true", "env": {"A": [1]}})),
            "\"env\".A must be a string, found [1]"
        );
        assert_eq!(
            text(json!({"path": "/bin/true", "env": [1]})),
            "\"env\" must be an object, found [1]"
        );
        assert_eq!(text(json!({"path": ""})), "\"path\" is empty");
        assert!(matches!(
            start(&reg, &json!({})),
            Err(ProcError::Arg(ArgError::Missing { key: "path" }))
        ));
    }
}
