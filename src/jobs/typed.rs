//! Typed jobs (SPEC §4.4): `meta.type` with a dot, and the named built-ins. The job layer
//! knows the names; the work is done behind the narrow traits of [`Handlers`], which the
//! owning modules implement (`services::procs`, `services::daemons`, `services::supervisor`,
//! `services::update`, `services::selfupdate`, `services::firmware`, `services::configure`,
//! `stats`, `healthz`) and `agent.rs` plugs in.
//! Nothing here names those modules.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::sync::Arc;

/// The typed jobs answered here directly or by [`Handlers`]. Anything else with a dot is
/// REJECTED `unknown_type`.
pub const TYPES: &[&str] = &[
    "ping",
    "stats",
    "healthz",
    "usage",
    "service.update",
    "agent.update",
    "firmware.upgrade",
    "agent.configure",
    "agent.config",
];

/// `process.*` ([`Processes`]).
pub const PROCESS_TYPES: &[&str] = &[
    "process.start",
    "process.stop",
    "process.signal",
    "process.status",
    "process.list",
    "process.info",
];

/// `daemon.*` ([`Daemons`]).
pub const DAEMON_TYPES: &[&str] = &[
    "daemon.list",
    "daemon.info",
    "daemon.start",
    "daemon.stop",
    "daemon.restart",
    "daemon.reload",
    "daemon.enable",
    "daemon.disable",
];

/// `service.*` but `service.update` ([`Services`]).
pub const SERVICE_TYPES: &[&str] = &[
    "service.list",
    "service.start",
    "service.stop",
    "service.restart",
];

/// Test builds only: a job type whose handler panics, to check the panic policy (the
/// process logs the panic once and aborts; procd/systemd start it again).
#[cfg(feature = "test-hooks")]
pub const TEST_PANIC: &str = "test.panic";

/// The type lists.
const FAMILIES: &[&[&str]] = &[TYPES, PROCESS_TYPES, DAEMON_TYPES, SERVICE_TYPES];

/// Every typed job this build runs (besides shell jobs).
pub fn all_types() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|f| f.iter().copied())
}

/// Types that are shell jobs with network safety (SPEC §4.4).
pub const NETWORK_TYPES: &[&str] = &["network", "networking", "all"];

/// True when `ty` is run as a typed job by [`run_job`].
pub fn is_typed(ty: &str) -> bool {
    #[cfg(feature = "test-hooks")]
    if ty == TEST_PANIC {
        return true;
    }
    FAMILIES.iter().any(|f| f.contains(&ty))
}

/// A failed typed job: the message for `meta.error`, and a `result` when the job has one
/// to report anyway (a rolled-back `service.update`, SPEC §8.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: String,
    pub result: Option<Value>,
}

impl From<String> for Failure {
    fn from(error: String) -> Self {
        Failure {
            error,
            result: None,
        }
    }
}

/// Implemented by the error enum of each module that runs typed jobs: its `Display` is the
/// text sent in `meta.error` (SPEC §4.4: `no such pid: N`, `permission denied`, …).
pub trait JobFailure: std::fmt::Display {}

impl<E: JobFailure> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            error: e.to_string(),
            result: None,
        }
    }
}

/// What a typed job produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// The `result` object of the PROCESSED sent now.
    Result(Value),
    /// The answer is owed by the next process (`agent.update`: the agent re-executes the new
    /// binary, which answers the job once it reached the broker). Nothing is sent now; the job
    /// stays unfinished in the seen-id store.
    AnsweredLater,
}

/// `process.*` jobs.
pub trait Processes: Send + Sync {
    fn run(&self, ty: &str, args: &Value) -> Result<Value, Failure>;
}

/// `daemon.*` jobs (the system's init scripts or systemd units).
pub trait Daemons: Send + Sync {
    fn run(&self, ty: &str, args: &Value) -> Result<Value, Failure>;
}

/// socketman's own services: `service.list/start/stop/restart` and `service.update`.
pub trait Services: Send + Sync {
    fn run(&self, ty: &str, args: &Value) -> Result<Value, Failure>;
    fn update(&self, args: &Value) -> Result<Value, Failure>;
}

/// `agent.update`: replaces socketman itself.
pub trait AgentUpdate: Send + Sync {
    fn update(&self, job_id: &str, args: &Value) -> Result<Done, Failure>;
}

/// `firmware.upgrade`: flashes a firmware image (`services::firmware`).
pub trait Firmware: Send + Sync {
    fn upgrade(&self, job_id: &str, args: &Value) -> Result<Done, Failure>;
}

/// `agent.configure` (a new config file, confirmed by a broker connection) and
/// `agent.config` (the effective config, secrets masked) (`services::configure`).
pub trait AgentConfig: Send + Sync {
    fn configure(&self, job_id: &str, args: &Value) -> Result<Done, Failure>;
    fn config(&self) -> Value;
}

/// A fresh stats record (`stats`).
pub trait StatsSource: Send + Sync {
    fn record(&self) -> Value;
}

/// The `healthz` document and `usage`.
pub trait Health: Send + Sync {
    fn healthz(&self) -> Value;
    fn usage(&self) -> Result<Value, Failure>;
}

/// The handlers of the typed jobs, given to the job workers.
#[derive(Clone)]
pub struct Handlers {
    pub processes: Arc<dyn Processes>,
    pub daemons: Arc<dyn Daemons>,
    pub services: Arc<dyn Services>,
    pub agent_update: Arc<dyn AgentUpdate>,
    pub firmware: Arc<dyn Firmware>,
    pub agent_config: Arc<dyn AgentConfig>,
    pub stats: Arc<dyn StatsSource>,
    pub health: Arc<dyn Health>,
}

/// Runs typed job `ty` of job `id` with `args` (what the workers call).
pub fn run_job(h: &Handlers, id: &str, ty: &str, args: &Value) -> Result<Done, Failure> {
    let r = |v: Result<Value, Failure>| v.map(Done::Result);
    match ty {
        "ping" => Ok(Done::Result(json!({
            "uptime": crate::platform::identity::system_uptime(),
            "version": crate::VERSION
        }))),
        "stats" => Ok(Done::Result(h.stats.record())),
        "healthz" => Ok(Done::Result(h.health.healthz())),
        "usage" => r(h.health.usage()),
        "service.update" => h.services.update(args).map(Done::Result),
        "agent.update" => h.agent_update.update(id, args),
        "firmware.upgrade" => h.firmware.upgrade(id, args),
        "agent.configure" => h.agent_config.configure(id, args),
        "agent.config" => Ok(Done::Result(h.agent_config.config())),
        t if PROCESS_TYPES.contains(&t) => r(h.processes.run(t, args)),
        t if DAEMON_TYPES.contains(&t) => r(h.daemons.run(t, args)),
        t if SERVICE_TYPES.contains(&t) => r(h.services.run(t, args)),
        #[cfg(feature = "test-hooks")]
        TEST_PANIC => panic!("test.panic job {id}: panicking on purpose (test-hooks build)"),
        other => Err(Failure::from(format!("unknown_type: {other}"))),
    }
}
