//! Typed jobs (SPEC §4.4): `meta.type` with a dot, and the named built-ins. Each arm calls
//! the module that owns the part of the agent it acts on; the answer is the `result` object
//! or an error message for `meta.error`.
#![forbid(unsafe_code)]

use crate::agent::Agent;
use serde_json::{json, Value};
use std::sync::Arc;

/// Every typed job this build runs (besides shell jobs). Anything else with a dot is
/// REJECTED `unknown_type`.
pub const TYPES: &[&str] = &[
    "ping",
    // stats (issue 3)
    "stats",
    // process control (issue 5)
    "healthz",
    "usage",
    "process.start",
    "process.stop",
    "process.signal",
    "process.status",
    "process.list",
    "process.info",
    "daemon.list",
    "daemon.info",
    "daemon.start",
    "daemon.stop",
    "daemon.restart",
    "daemon.reload",
    "daemon.enable",
    "daemon.disable",
    "service.list",
    "service.start",
    "service.stop",
    "service.restart",
    // updates (issue 6)
    "service.update",
    "agent.update",
];

/// Types that are shell jobs with network safety (SPEC §4.4).
pub const NETWORK_TYPES: &[&str] = &["network", "networking", "all"];

/// True when `ty` is run as a typed job by [`run`].
pub fn is_typed(ty: &str) -> bool {
    TYPES.contains(&ty)
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

/// Runs typed job `ty` of job `id` (what the workers call): the update jobs need the id
/// (the self-update answers its job from the next process) and may fail with a result.
pub fn run_job(agent: &Arc<Agent>, id: &str, ty: &str, args: &Value) -> Result<Value, Failure> {
    match ty {
        "service.update" => crate::update::run(agent, args).map_err(|f| Failure {
            error: f.error,
            result: f.result,
        }),
        "agent.update" => crate::selfupdate::run(agent, id, args).map_err(Failure::from),
        _ => run(agent, ty, args).map_err(Failure::from),
    }
}

/// Runs typed job `ty` with `args`. `Err` is the message for `meta.error`.
pub fn run(agent: &Arc<Agent>, ty: &str, args: &Value) -> Result<Value, String> {
    let _ = args;
    match ty {
        "ping" => {
            Ok(json!({"uptime": crate::identity::system_uptime(), "version": crate::VERSION}))
        }
        "stats" => Ok(crate::collect::job_record(agent)),
        "healthz" | "usage" => crate::healthz::run(agent, ty),
        t if t.starts_with("process.") => crate::procs::run(agent, t, args),
        t if t.starts_with("daemon.") => crate::daemons::run(agent, t, args),
        t if t.starts_with("service.") && crate::supervisor::TYPES.contains(&t) => {
            crate::supervisor::run(agent, t, args)
        }
        "service.update" => crate::update::run(agent, args).map_err(|f| f.error),
        "agent.update" => {
            Err("agent.update runs through typed::run_job (it needs the job id)".into())
        }
        other => {
            let _ = agent;
            Err(format!("unknown_type: {other}"))
        }
    }
}
