//! The supervisor of socketman's own `services` (SPEC §8.1): start at boot, restart with
//! back-off, `fatal` after too many failed starts, TERM→KILL stop, SERVICE events, and the
//! `service.list/start/stop/restart` jobs.
//!
//! Threads: one `supervisor` thread ([`run`]) blocks on its event channel, which the
//! children's reaper threads ([`crate::platform::process::spawn_supervised`]) feed with their
//! exits, [`config_changed`] (the agent's config-apply path) with a nudge and the stop token
//! with a last one; it wakes by itself only when a restart is due. Each wake runs one [`tick`]:
//! config changes, exits, due restarts, applying the restart policy. Job workers and the watchdog
//! act on services through [`start`], [`stop`], [`restart`]; the agent's clean stop calls
//! [`stop_all_by`]. All of them share the [`Supervisor`] handle: one mutex over the table, the
//! config, the outbox for SERVICE events and the heartbeat table (for `last_heartbeat`); a
//! stop takes the child out of the table and waits for it outside the lock.
//!
//! The timing rules are the pure state machine [`Policy`], driven with `Instant`s.
#![forbid(unsafe_code)]

use crate::config::{Config, RestartPolicy, ServiceConfig};
use crate::link::outbox::Outbox;
use crate::platform::process::{self, Exited, Leftovers, Spec, Streams, Supervised};
use crate::runtime::{ConfigHandle, Shutdown};
use crate::services::heartbeats::Heartbeats;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failed starts within [`FATAL_WINDOW`] that make a service `fatal`.
pub const FATAL_STARTS: usize = 10;
/// Window for [`FATAL_STARTS`].
pub const FATAL_WINDOW: Duration = Duration::from_secs(300);
/// A run this long resets the back-off; a shorter one is a failed start.
pub const RESET_AFTER: Duration = Duration::from_secs(60);
/// Longest back-off, in back-off units (1 unit = 1 s).
pub const MAX_DELAY_UNITS: u32 = 60;
/// Grace between TERM and KILL when stopping a service.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// SPEC §4.4 status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Stopped,
    Starting,
    Backoff,
    Fatal,
    Updating,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Starting => "starting",
            Status::Backoff => "backoff",
            Status::Fatal => "fatal",
            Status::Updating => "updating",
            Status::Unknown => "unknown",
        }
    }
}

/// What to do after a service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Leave it stopped (policy `never`, or `on-failure` after a clean exit).
    Stopped,
    /// Start again after this many back-off units (1, 2, 4 … 60).
    Retry(u32),
    /// Too many failed starts: `fatal` until a job starts it.
    Fatal,
}

/// Back-off and `fatal` bookkeeping of one service. Pure: every call takes `now`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    exp: u32,
    fails: VecDeque<Instant>,
    started_at: Option<Instant>,
}

impl Policy {
    /// The service was started at `now`.
    pub fn on_start(&mut self, now: Instant) {
        self.started_at = Some(now);
    }

    /// The service ended at `now`; `success` is exit code 0.
    pub fn on_exit(&mut self, now: Instant, success: bool, restart: RestartPolicy) -> Next {
        let up = self
            .started_at
            .take()
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or(Duration::ZERO);
        if up >= RESET_AFTER {
            self.exp = 0;
        }
        let again = match restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        if !again {
            return Next::Stopped;
        }
        if up < RESET_AFTER && self.failed(now) {
            return Next::Fatal;
        }
        Next::Retry(self.next_delay())
    }

    /// The service could not even be spawned at `now`.
    pub fn on_spawn_failed(&mut self, now: Instant) -> Next {
        self.started_at = None;
        if self.failed(now) {
            Next::Fatal
        } else {
            Next::Retry(self.next_delay())
        }
    }

    /// A job started it: forget failures and back-off.
    pub fn reset(&mut self) {
        self.exp = 0;
        self.fails.clear();
        self.started_at = None;
    }

    fn failed(&mut self, now: Instant) -> bool {
        self.fails.push_back(now);
        while let Some(first) = self.fails.front() {
            if now.saturating_duration_since(*first) > FATAL_WINDOW {
                self.fails.pop_front();
            } else {
                break;
            }
        }
        self.fails.len() >= FATAL_STARTS
    }

    fn next_delay(&mut self) -> u32 {
        let d = 1u32
            .checked_shl(self.exp)
            .unwrap_or(u32::MAX)
            .min(MAX_DELAY_UNITS);
        if d < MAX_DELAY_UNITS {
            self.exp += 1;
        }
        d
    }
}

struct Svc {
    cfg: ServiceConfig,
    status: Status,
    child: Option<Supervised>,
    pid: Option<i32>,
    exit_code: Option<i32>,
    restarts: u64,
    policy: Policy,
    next_start: Option<Instant>,
    /// A job or the watchdog is stopping it (the child is out of the table).
    busy: bool,
}

#[derive(Default)]
struct Table {
    svcs: Vec<Svc>,
    /// `stop_all` ran: nothing is started any more.
    shutdown: bool,
}

/// The services table.
#[derive(Default)]
pub struct Services {
    inner: Mutex<Table>,
}

/// The supervisor handle shared by its thread, the job workers, the watchdog and healthz.
#[derive(Clone)]
pub struct Supervisor {
    services: Arc<Services>,
    cfg: ConfigHandle,
    pub outbox: Outbox,
    shutdown: Shutdown,
    heartbeats: Heartbeats,
    /// One unit of the restart back-off (1 s; test builds shorten it so that the road to
    /// `fatal` does not take four minutes).
    backoff_unit: Duration,
    /// Wakes the supervisor thread: a child exited, the config changed, the stop.
    wake: mpsc::Sender<()>,
    /// The receiving end, taken by [`run`].
    wake_rx: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
}

/// Why a `service.*` job or a supervisor call failed (its `Display` is `meta.error`).
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorError {
    /// No configured service has this name.
    NoSuchService(String),
    /// A job or the watchdog is stopping it right now.
    BeingStopped(String),
    /// socketman's clean stop is under way: nothing is started any more.
    Stopping,
    /// `/bin/sh -c cmd` could not be started.
    Start(String),
    /// Bad or missing job arguments.
    Args(String),
}

impl std::fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorError::NoSuchService(n) => write!(f, "no such service: {n}"),
            SupervisorError::BeingStopped(n) => write!(f, "service {n} is being stopped"),
            SupervisorError::Stopping => write!(f, "socketman is stopping"),
            SupervisorError::Start(m) | SupervisorError::Args(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for SupervisorError {}
impl crate::jobs::typed::JobFailure for SupervisorError {}

impl Supervisor {
    pub fn new(
        cfg: ConfigHandle,
        outbox: Outbox,
        shutdown: Shutdown,
        heartbeats: Heartbeats,
        backoff_unit: Duration,
    ) -> Self {
        let (wake, wake_rx) = mpsc::channel();
        let stop_wake = Mutex::new(wake.clone());
        shutdown.on_trigger(move || {
            let _ = crate::runtime::lock(&stop_wake).send(());
        });
        Supervisor {
            services: Arc::default(),
            cfg,
            outbox,
            shutdown,
            heartbeats,
            backoff_unit,
            wake,
            wake_rx: Arc::new(Mutex::new(Some(wake_rx))),
        }
    }

    /// Wakes the supervisor thread.
    fn nudge(&self) {
        let _ = self.wake.send(());
    }

    /// The current config.
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.get()
    }
}

impl Services {
    fn lock(&self) -> MutexGuard<'_, Table> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// A snapshot of one service, for the update helper and healthz.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub status: Status,
    pub pid: Option<i32>,
    pub version: Option<String>,
    pub restarts: u64,
}

/// `<state_dir>/services/<name>/current` (the installed version, SPEC §8.3).
pub fn current_link(sup: &Supervisor, name: &str) -> PathBuf {
    sup.cfg()
        .state_dir
        .join("services")
        .join(name)
        .join("current")
}

fn version_of(sup: &Supervisor, cfg: &ServiceConfig) -> Option<String> {
    let link = current_link(sup, &cfg.name);
    if let Ok(target) = std::fs::read_link(&link) {
        if let Some(v) = target.file_name().and_then(|f| f.to_str()) {
            return Some(v.to_string());
        }
    }
    cfg.version.clone()
}

fn work_dir(sup: &Supervisor, cfg: &ServiceConfig) -> Option<PathBuf> {
    let link = current_link(sup, &cfg.name);
    if link.is_dir() {
        return Some(link);
    }
    cfg.dir.as_ref().map(PathBuf::from)
}

fn entry_json(sup: &Supervisor, s: &Svc) -> Value {
    json!({
        "name": s.cfg.name,
        "status": s.status.as_str(),
        "version": version_of(sup, &s.cfg),
        "pid": s.pid,
        "restarts": s.restarts,
        "last_heartbeat": sup.heartbeats.last_seen(&s.cfg.name),
    })
}

fn publish(sup: &Supervisor, s: &Svc) {
    log::info!(
        "service {}: {} (pid {:?}, exit code {:?})",
        s.cfg.name,
        s.status.as_str(),
        s.pid,
        s.exit_code
    );
    sup.outbox.status_event(
        "SERVICE",
        serde_json::to_value(crate::proto::ServiceMeta {
            exit_code: s.exit_code,
            name: s.cfg.name.clone(),
            pid: s.pid,
            status: s.status.as_str().to_string(),
        })
        .unwrap_or(Value::Null),
    );
}

fn set_status(sup: &Supervisor, s: &mut Svc, st: Status) {
    if s.status != st {
        s.status = st;
        publish(sup, s);
    }
}

fn apply_next(sup: &Supervisor, s: &mut Svc, next: Next, now: Instant) {
    match next {
        Next::Stopped => {
            s.next_start = None;
            s.status = Status::Stopped;
        }
        Next::Retry(units) => {
            let d = sup.backoff_unit * units;
            log::info!("service {}: restart in {d:?}", s.cfg.name);
            s.next_start = Some(now + d);
            s.restarts += 1;
            s.status = Status::Backoff;
        }
        Next::Fatal => {
            log::error!(
                "service {}: {FATAL_STARTS} failed starts within {FATAL_WINDOW:?}, giving up until started by a job",
                s.cfg.name
            );
            s.next_start = None;
            s.status = Status::Fatal;
        }
    }
    publish(sup, s);
}

/// Spawns `/bin/sh -c cmd` in its own process group; its reaper thread wakes the supervisor
/// when it exits. On failure the policy decides.
fn spawn_svc(sup: &Supervisor, s: &mut Svc, now: Instant) -> Result<(), SupervisorError> {
    s.next_start = None;
    let mut spec = Spec::shell(&s.cfg.cmd)
        .envs(&s.cfg.env)
        .streams(Streams::Inherit);
    let dir = work_dir(sup, &s.cfg);
    if let Some(d) = &dir {
        spec = spec.current_dir(d);
    }
    let wake = sup.wake.clone();
    let name = s.cfg.name.clone();
    // Whatever the leader leaves behind in its group goes with it (Leftovers::Kill).
    match process::spawn_supervised(&spec, Leftovers::Kill, &|_| {}, move |e: Exited| {
        log::debug!("service {name}: pid {} reaped", e.pid);
        let _ = wake.send(());
    }) {
        Ok(child) => {
            s.pid = Some(child.pid());
            s.child = Some(child);
            s.exit_code = None;
            s.policy.on_start(now);
            s.status = Status::Running;
            publish(sup, s);
            Ok(())
        }
        Err(e) => {
            let msg = format!(
                "cannot start service {} (cmd {:?}, dir {:?}): {}",
                s.cfg.name, s.cfg.cmd, dir, e.error
            );
            log::error!("{msg}");
            s.pid = None;
            s.exit_code = None;
            let next = s.policy.on_spawn_failed(now);
            apply_next(sup, s, next, now);
            Err(SupervisorError::Start(msg))
        }
    }
}

/// TERM to every group, KILL after `grace` ([`process::terminate`]); logs what needed KILL.
fn terminate(children: Vec<Supervised>, grace: Duration) -> Vec<(i32, Option<Exited>)> {
    let done = process::terminate(&children, grace);
    for (pid, e) in &done {
        match e {
            Some(e) if e.signal() == Some(libc::SIGKILL) => {
                log::warn!("service pid {pid}: still alive {grace:?} after TERM, KILLed")
            }
            Some(_) => {}
            None => log::warn!("service pid {pid}: not reaped after KILL"),
        }
    }
    done
}

/// Longest sleep of the supervisor thread when nothing is due (a safety net: exits, config
/// changes and the stop wake it at once).
const IDLE: Duration = Duration::from_secs(60);

/// One supervisor step at `now`: config changes, exits, due restarts. Returns how long the
/// thread may sleep before the next step.
pub fn tick(sup: &Supervisor, now: Instant) -> Duration {
    let cfg = sup.cfg();
    let services = &sup.services;
    let mut t = services.lock();
    if t.shutdown || sup.shutdown.is_set() {
        return IDLE;
    }
    // Config: new services, changed ones (applied at their next start), removed ones.
    for c in &cfg.services {
        match t.svcs.iter_mut().find(|s| s.cfg.name == c.name) {
            Some(s) => {
                if s.cfg != *c {
                    log::info!(
                        "service {}: config changed, applies at its next start",
                        c.name
                    );
                    s.cfg = c.clone();
                }
            }
            None => t.svcs.push(Svc {
                cfg: c.clone(),
                status: Status::Stopped,
                child: None,
                pid: None,
                exit_code: None,
                restarts: 0,
                policy: Policy::default(),
                next_start: c.autostart.then_some(now),
                busy: false,
            }),
        }
    }
    let mut removed = Vec::new();
    t.svcs.retain_mut(|s| {
        if cfg.services.iter().any(|c| c.name == s.cfg.name) || s.busy {
            return true;
        }
        log::info!(
            "service {}: removed from the config, stopping it",
            s.cfg.name
        );
        if let Some(child) = s.child.take() {
            removed.push(child);
        }
        false
    });
    if !removed.is_empty() {
        let _ = std::thread::Builder::new()
            .name("svc-stop".into())
            .spawn(move || {
                terminate(removed, STOP_GRACE);
            });
    }
    for s in t.svcs.iter_mut() {
        if let Some(exit) = s.child.as_ref().and_then(Supervised::exited) {
            s.child = None;
            let pid = s.pid.take();
            s.exit_code = exit.code();
            log::warn!(
                "service {}: pid {pid:?} ended (exit code {:?}, signal {:?})",
                s.cfg.name,
                exit.code(),
                exit.signal()
            );
            let next = s.policy.on_exit(now, exit.code() == Some(0), s.cfg.restart);
            apply_next(sup, s, next, now);
        }
        if s.child.is_none() && !s.busy && s.next_start.is_some_and(|t| t <= now) {
            let _ = spawn_svc(sup, s, now);
        }
    }
    let mut wait = IDLE;
    for s in &t.svcs {
        if let Some(due) = s.next_start {
            wait = wait.min(due.saturating_duration_since(now));
        }
    }
    wait.max(Duration::from_millis(10))
}

/// The body of the `supervisor` thread (services with `autostart` start on its first tick).
pub fn run(sup: Supervisor) -> impl FnOnce() + Send + 'static {
    move || {
        log::info!(
            "supervisor: {} service(s) configured",
            sup.cfg().services.len()
        );
        let Some(rx) = crate::runtime::lock(&sup.wake_rx).take() else {
            log::error!("supervisor: started twice; this one ends");
            return;
        };
        loop {
            let wait = tick(&sup, Instant::now());
            if sup.shutdown.is_set() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        log::info!("supervisor: stopping (services are stopped by stop_all)");
    }
}

/// The config changed (the agent's apply path): the supervisor thread picks up new,
/// changed and removed services now.
pub fn config_changed(sup: &Supervisor) {
    sup.nudge();
}

/// Every service as in healthz.
pub fn entries(sup: &Supervisor) -> Vec<Value> {
    let t = sup.services.lock();
    t.svcs.iter().map(|s| entry_json(sup, s)).collect()
}

/// One service's state, for the update helper.
pub fn info(sup: &Supervisor, name: &str) -> Option<ServiceInfo> {
    let t = sup.services.lock();
    t.svcs
        .iter()
        .find(|s| s.cfg.name == name)
        .map(|s| ServiceInfo {
            name: s.cfg.name.clone(),
            status: s.status,
            pid: s.pid,
            version: version_of(sup, &s.cfg),
            restarts: s.restarts,
        })
}

/// Marks a service `updating` (or back to its real state) for the update helper.
pub fn set_updating(sup: &Supervisor, name: &str, on: bool) {
    let mut t = sup.services.lock();
    if let Some(s) = t.svcs.iter_mut().find(|s| s.cfg.name == name) {
        let st = if on {
            Status::Updating
        } else if s.child.is_some() {
            Status::Running
        } else {
            Status::Stopped
        };
        set_status(sup, s, st);
    }
}

/// True when the configured service `name` heartbeats (SPEC §8.2).
pub fn heartbeats(sup: &Supervisor, name: &str) -> bool {
    sup.cfg()
        .services
        .iter()
        .any(|s| s.name == name && s.heartbeat)
}

fn known(sup: &Supervisor, t: &mut Table, name: &str) -> Result<(), SupervisorError> {
    if t.svcs.iter().any(|s| s.cfg.name == name) {
        return Ok(());
    }
    // Configured but the supervisor has not picked it up yet (just after start or HUP).
    match sup.cfg().services.iter().find(|c| c.name == name) {
        Some(c) => {
            t.svcs.push(Svc {
                cfg: c.clone(),
                status: Status::Stopped,
                child: None,
                pid: None,
                exit_code: None,
                restarts: 0,
                policy: Policy::default(),
                next_start: None,
                busy: false,
            });
            Ok(())
        }
        None => Err(SupervisorError::NoSuchService(name.to_string())),
    }
}

/// Starts a service now (also out of `fatal`). Already running: its entry unchanged.
pub fn start(sup: &Supervisor, name: &str) -> Result<Value, SupervisorError> {
    let mut t = sup.services.lock();
    if t.shutdown {
        return Err(SupervisorError::Stopping);
    }
    known(sup, &mut t, name)?;
    let Some(s) = t.svcs.iter_mut().find(|s| s.cfg.name == name) else {
        return Err(SupervisorError::NoSuchService(name.to_string()));
    };
    if s.busy {
        return Err(SupervisorError::BeingStopped(name.to_string()));
    }
    if s.child.is_none() {
        s.policy.reset();
        spawn_svc(sup, s, Instant::now())?;
    }
    Ok(entry_json(sup, s))
}

/// Stops a service: TERM to its group, KILL after 10 s. It stays stopped until started.
pub fn stop(sup: &Supervisor, name: &str) -> Result<Value, SupervisorError> {
    let (pid, child) = {
        let mut t = sup.services.lock();
        known(sup, &mut t, name)?;
        let Some(s) = t.svcs.iter_mut().find(|s| s.cfg.name == name) else {
            return Err(SupervisorError::NoSuchService(name.to_string()));
        };
        if s.busy {
            return Err(SupervisorError::BeingStopped(name.to_string()));
        }
        s.next_start = None;
        match (s.pid, s.child.take()) {
            (Some(pid), Some(child)) => {
                s.busy = true;
                (pid, child)
            }
            _ => {
                set_status(sup, s, Status::Stopped);
                return Ok(entry_json(sup, s));
            }
        }
    };
    log::info!("service {name}: stopping pid {pid}");
    let done = terminate(vec![child], STOP_GRACE);
    let exit = done.into_iter().next().and_then(|(_, e)| e);
    let mut t = sup.services.lock();
    let Some(s) = t.svcs.iter_mut().find(|s| s.cfg.name == name) else {
        return Err(SupervisorError::NoSuchService(name.to_string()));
    };
    s.busy = false;
    s.pid = None;
    s.policy.started_at = None;
    s.exit_code = exit.and_then(|e| e.code());
    s.status = Status::Stopped;
    publish(sup, s);
    Ok(entry_json(sup, s))
}

/// Stop (when running) and start again; counted in `restarts`.
pub fn restart(sup: &Supervisor, name: &str) -> Result<Value, SupervisorError> {
    stop(sup, name)?;
    {
        let mut t = sup.services.lock();
        if let Some(s) = t.svcs.iter_mut().find(|s| s.cfg.name == name) {
            s.restarts += 1;
        }
    }
    start(sup, name)
}

/// Stops every service (TERM to all groups, KILL after 10 s) and starts none any more. For
/// the clean stop of SPEC §10.
pub fn stop_all(sup: &Supervisor) {
    stop_all_within(sup, STOP_GRACE);
}

/// [`stop_all`] with the KILL coming by `deadline` at the latest (at least 1 s after TERM),
/// so that the agent's own stop stays bounded.
pub fn stop_all_by(sup: &Supervisor, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    stop_all_within(sup, left.clamp(Duration::from_secs(1), STOP_GRACE));
}

fn stop_all_within(sup: &Supervisor, grace: Duration) {
    let children: Vec<Supervised> = {
        let mut t = sup.services.lock();
        t.shutdown = true;
        t.svcs
            .iter_mut()
            .filter_map(|s| {
                s.next_start = None;
                s.child.take()
            })
            .collect()
    };
    if children.is_empty() {
        return;
    }
    log::info!("stopping {} service(s)", children.len());
    let done = terminate(children, grace);
    let mut t = sup.services.lock();
    for (pid, exit) in done {
        if let Some(s) = t.svcs.iter_mut().find(|s| s.pid == Some(pid)) {
            s.pid = None;
            s.exit_code = exit.and_then(|e| e.code());
            s.status = Status::Stopped;
            publish(sup, s);
        }
    }
}

/// Runs one `service.*` job.
pub fn run_job(sup: &Supervisor, ty: &str, args: &Value) -> Result<Value, SupervisorError> {
    if ty == "service.list" {
        return Ok(json!({ "services": entries(sup) }));
    }
    let name = crate::services::procs::arg_str(args, "name")
        .map_err(|e| SupervisorError::Args(e.to_string()))?;
    match ty {
        "service.start" => start(sup, name),
        "service.stop" => stop(sup, name),
        "service.restart" => restart(sup, name),
        other => Err(SupervisorError::Args(format!("unknown_type: {other}"))),
    }
}

impl crate::services::update::ServiceControl for Supervisor {
    fn set_updating(&self, name: &str, updating: bool) {
        set_updating(self, name, updating);
    }
    fn restart(&self, name: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(restart(self, name).map(|_| ())?)
    }
    fn observe(&self, name: &str) -> Option<crate::services::update::Observation> {
        let i = info(self, name)?;
        Some(crate::services::update::Observation {
            running: i.status == Status::Running && i.pid.is_some(),
            pid: i.pid.and_then(|p| u32::try_from(p).ok()),
            restarts: i.restarts,
            status: i.status.as_str().to_string(),
            last_heartbeat: self.heartbeats.last_seen(name),
        })
    }
}

impl crate::jobs::typed::Services for Supervisor {
    fn run(&self, ty: &str, args: &Value) -> Result<Value, crate::jobs::typed::Failure> {
        Ok(run_job(self, ty, args)?)
    }

    fn update(&self, args: &Value) -> Result<Value, crate::jobs::typed::Failure> {
        let cfg = self.cfg();
        crate::services::update::service_update(
            &cfg,
            self,
            args,
            &crate::services::update::Timing::default(),
            &|d| self.shutdown.wait_timeout(d),
        )
        .map_err(|f| crate::jobs::typed::Failure {
            error: f.error,
            result: f.result,
        })
    }
}

impl crate::healthz::ServicesView for Supervisor {
    fn service_entries(&self) -> Vec<Value> {
        entries(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_doubles_to_sixty() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        let mut delays = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            p.on_start(now);
            now += s(1);
            match p.on_exit(now, false, RestartPolicy::Always) {
                Next::Retry(d) => delays.push(d),
                other => panic!("unexpected {other:?}"),
            }
            // Spread the failures so that they do not reach fatal.
            now += s(60);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn backoff_resets_after_sixty_seconds_up() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        p.on_start(t0);
        assert_eq!(
            p.on_exit(t0 + s(1), false, RestartPolicy::Always),
            Next::Retry(1)
        );
        p.on_start(t0 + s(2));
        assert_eq!(
            p.on_exit(t0 + s(3), false, RestartPolicy::Always),
            Next::Retry(2)
        );
        p.on_start(t0 + s(5));
        assert_eq!(
            p.on_exit(t0 + s(65), false, RestartPolicy::Always),
            Next::Retry(1)
        );
    }

    #[test]
    fn fatal_after_ten_failed_starts_in_five_minutes() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        let mut now = t0;
        for i in 0..9 {
            p.on_start(now);
            now += s(1);
            assert!(
                matches!(p.on_exit(now, false, RestartPolicy::Always), Next::Retry(_)),
                "{i}"
            );
            now += s(1);
        }
        p.on_start(now);
        assert_eq!(
            p.on_exit(now + s(1), true, RestartPolicy::Always),
            Next::Fatal
        );
        // A job start clears it.
        p.reset();
        p.on_start(now + s(2));
        assert_eq!(
            p.on_exit(now + s(3), false, RestartPolicy::Always),
            Next::Retry(1)
        );
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        let mut now = t0;
        for _ in 0..30 {
            p.on_start(now);
            now += s(1);
            assert!(matches!(
                p.on_exit(now, false, RestartPolicy::Always),
                Next::Retry(_)
            ));
            now += s(35); // 10 failures span 360 s > 300 s
        }
    }

    #[test]
    fn spawn_failures_count() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        for i in 0..9 {
            assert!(matches!(p.on_spawn_failed(t0 + s(i)), Next::Retry(_)));
        }
        assert_eq!(p.on_spawn_failed(t0 + s(10)), Next::Fatal);
    }

    fn agent_with(services: Vec<ServiceConfig>, dir: &std::path::Path) -> Supervisor {
        let cfg = crate::config::Config {
            services,
            state_dir: dir.join("state"),
            watchdog_port: 0,
            ..Default::default()
        };
        Supervisor::new(
            ConfigHandle::new(cfg, dir.join("c.json")),
            Outbox::new(1),
            Shutdown::new(),
            Heartbeats::default(),
            Duration::from_secs(1),
        )
    }

    fn svc(name: &str, cmd: &str, restart: RestartPolicy) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            cmd: cmd.into(),
            dir: None,
            version: Some("1.0".into()),
            autostart: true,
            restart,
            heartbeat: false,
            env: Default::default(),
        }
    }

    fn events(sup: &Supervisor) -> Vec<Value> {
        sup.outbox
            .drain()
            .iter()
            .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
            .filter(|v| v["event_type"] == "SERVICE")
            .map(|v| v["meta"].clone())
            .collect()
    }

    fn status_of(sup: &Supervisor, name: &str) -> Status {
        info(sup, name).unwrap().status
    }

    #[test]
    fn killed_service_is_restarted_with_backoff() {
        let d = tempfile::tempdir().unwrap();
        let a = agent_with(
            vec![svc("a", "exec sleep 30", RestartPolicy::Always)],
            d.path(),
        );
        let t0 = Instant::now();
        tick(&a, t0);
        let first = info(&a, "a").unwrap();
        assert_eq!(first.status, Status::Running);
        assert_eq!(first.version.as_deref(), Some("1.0"));
        let pid = first.pid.unwrap();
        crate::platform::sys::kill(pid, libc::SIGKILL).unwrap();
        for _ in 0..200 {
            tick(&a, t0);
            if status_of(&a, "a") == Status::Backoff {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(status_of(&a, "a"), Status::Backoff);
        // Not before its one second.
        tick(&a, t0 + Duration::from_millis(500));
        assert_eq!(status_of(&a, "a"), Status::Backoff);
        tick(&a, t0 + Duration::from_secs(2));
        let again = info(&a, "a").unwrap();
        assert_eq!(again.status, Status::Running);
        assert_eq!(again.restarts, 1);
        assert_ne!(again.pid, Some(pid));
        let ev = events(&a);
        let st: Vec<&str> = ev.iter().map(|e| e["status"].as_str().unwrap()).collect();
        assert_eq!(st, vec!["running", "backoff", "running"]);
        assert_eq!(ev[1]["exit_code"], Value::Null);
        assert_eq!(ev[2]["pid"], json!(again.pid));
        stop_all(&a);
        assert_eq!(status_of(&a, "a"), Status::Stopped);
        assert!(!crate::services::procs::alive(again.pid.unwrap()));
        // Nothing starts after stop_all.
        tick(&a, t0 + Duration::from_secs(100));
        assert_eq!(status_of(&a, "a"), Status::Stopped);
    }

    #[test]
    fn always_failing_service_goes_fatal_until_started() {
        let d = tempfile::tempdir().unwrap();
        let a = agent_with(vec![svc("f", "exit 3", RestartPolicy::OnFailure)], d.path());
        let mut t = Instant::now();
        for _ in 0..3000 {
            tick(&a, t);
            if status_of(&a, "f") == Status::Fatal {
                break;
            }
            t += Duration::from_secs(1);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(status_of(&a, "f"), Status::Fatal);
        let ev = events(&a);
        assert_eq!(ev.iter().filter(|e| e["status"] == "running").count(), 10);
        assert_eq!(ev.last().unwrap()["status"], "fatal");
        assert_eq!(ev.last().unwrap()["exit_code"], 3);
        assert_eq!(info(&a, "f").unwrap().restarts, 9);
        // Stays fatal.
        tick(&a, t + Duration::from_secs(1000));
        assert_eq!(status_of(&a, "f"), Status::Fatal);
        // A job starts it again.
        let e = start(&a, "f").unwrap();
        assert_eq!(e["status"], "running");
        assert_eq!(e["name"], "f");
    }

    #[test]
    fn jobs_stop_start_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut manual = svc("m", "exec sleep 30", RestartPolicy::Always);
        manual.autostart = false;
        manual.dir = Some(d.path().to_string_lossy().into_owned());
        manual.cmd = "echo $GREETING > out; exec sleep 30".into();
        manual.env.insert("GREETING".into(), "hello".into());
        let a = agent_with(vec![manual], d.path());
        tick(&a, Instant::now());
        assert_eq!(status_of(&a, "m"), Status::Stopped);
        let e = start(&a, "m").unwrap();
        assert_eq!(e["status"], "running");
        let pid = e["pid"].as_i64().unwrap() as i32;
        for _ in 0..100 {
            if std::fs::read_to_string(d.path().join("out")).is_ok_and(|s| s == "hello\n") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("out")).unwrap(),
            "hello\n"
        );
        let r = restart(&a, "m").unwrap();
        assert_eq!(r["restarts"], 1);
        assert_ne!(r["pid"].as_i64().unwrap() as i32, pid);
        assert!(!crate::services::procs::alive(pid));
        let s = stop(&a, "m").unwrap();
        assert_eq!(s["status"], "stopped");
        assert_eq!(s["pid"], Value::Null);
        tick(&a, Instant::now() + Duration::from_secs(100));
        assert_eq!(status_of(&a, "m"), Status::Stopped);
        assert_eq!(
            start(&a, "nope").unwrap_err(),
            SupervisorError::NoSuchService("nope".into())
        );
        assert_eq!(
            start(&a, "nope").unwrap_err().to_string(),
            "no such service: nope"
        );
        assert_eq!(entries(&a).len(), 1);
    }

    #[test]
    fn config_changes_add_and_remove_services() {
        let d = tempfile::tempdir().unwrap();
        let a = agent_with(
            vec![svc("old", "exec sleep 30", RestartPolicy::Always)],
            d.path(),
        );
        let t0 = Instant::now();
        tick(&a, t0);
        let old_pid = info(&a, "old").unwrap().pid.unwrap();
        // HUP: "old" removed, "new" added.
        let mut cfg = (*a.cfg()).clone();
        cfg.services = vec![svc("new", "exec sleep 30", RestartPolicy::Always)];
        a.cfg.set(cfg);
        tick(&a, t0);
        assert!(info(&a, "old").is_none());
        let new_pid = info(&a, "new").unwrap().pid.unwrap();
        for _ in 0..200 {
            if !crate::services::procs::alive(old_pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !crate::services::procs::alive(old_pid),
            "removed service stopped"
        );
        assert!(crate::services::procs::alive(new_pid));
        stop_all(&a);
        assert!(!crate::services::procs::alive(new_pid));
    }

    #[test]
    fn installed_version_dir_is_used() {
        let d = tempfile::tempdir().unwrap();
        let a = agent_with(
            vec![svc(
                "v",
                "pwd > ../pwd.txt; exec sleep 30",
                RestartPolicy::Never,
            )],
            d.path(),
        );
        let base = d.path().join("state/services/v");
        std::fs::create_dir_all(base.join("2.0.1")).unwrap();
        std::os::unix::fs::symlink("2.0.1", base.join("current")).unwrap();
        tick(&a, Instant::now());
        assert_eq!(info(&a, "v").unwrap().version.as_deref(), Some("2.0.1"));
        for _ in 0..100 {
            if base.join("pwd.txt").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pwd = std::fs::read_to_string(base.join("pwd.txt")).unwrap();
        assert!(pwd.trim().ends_with("services/v/2.0.1"), "{pwd}");
        stop_all(&a);
    }

    #[test]
    fn restart_policies() {
        let t0 = Instant::now();
        let mut p = Policy::default();
        p.on_start(t0);
        assert_eq!(
            p.on_exit(t0 + s(1), true, RestartPolicy::OnFailure),
            Next::Stopped
        );
        p.on_start(t0);
        assert_eq!(
            p.on_exit(t0 + s(1), false, RestartPolicy::OnFailure),
            Next::Retry(1)
        );
        p.on_start(t0);
        assert_eq!(
            p.on_exit(t0 + s(1), false, RestartPolicy::Never),
            Next::Stopped
        );
        p.on_start(t0);
        assert_eq!(
            p.on_exit(t0 + s(100), true, RestartPolicy::Always),
            Next::Retry(1)
        );
    }
}
