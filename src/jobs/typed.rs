//! Typed jobs (SPEC §4.4): `meta.type` with a dot, and the named built-ins. Each arm calls
//! the module that owns the part of the agent it acts on; the answer is the `result` object
//! or an error message for `meta.error`.
#![forbid(unsafe_code)]

use crate::agent::Agent;
use serde_json::{json, Value};
use std::sync::Arc;

/// The typed jobs answered here; the `process.*`, `daemon.*` and `service.*` families are
/// listed by their modules ([`all_types`] gives every one). Anything else with a dot is
/// REJECTED `unknown_type`.
pub const TYPES: &[&str] = &[
    "ping",
    "stats",
    "healthz",
    "usage",
    "service.update",
    "agent.update",
];

/// The type lists of every module that runs typed jobs.
const FAMILIES: &[&[&str]] = &[
    TYPES,
    crate::services::procs::TYPES,
    crate::services::daemons::TYPES,
    crate::services::supervisor::TYPES,
];

/// Every typed job this build runs (besides shell jobs).
pub fn all_types() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|f| f.iter().copied())
}

/// Types that are shell jobs with network safety (SPEC §4.4).
pub const NETWORK_TYPES: &[&str] = &["network", "networking", "all"];

/// True when `ty` is run as a typed job by [`run`].
pub fn is_typed(ty: &str) -> bool {
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

/// Runs typed job `ty` of job `id` (what the workers call): the update jobs need the id
/// (the self-update answers its job from the next process) and may fail with a result.
pub fn run_job(agent: &Arc<Agent>, id: &str, ty: &str, args: &Value) -> Result<Value, Failure> {
    match ty {
        "service.update" => crate::services::update::run(agent, args).map_err(|f| Failure {
            error: f.error,
            result: f.result,
        }),
        "agent.update" => crate::services::selfupdate::run(agent, id, args).map_err(Failure::from),
        _ => run(agent, ty, args).map_err(Failure::from),
    }
}

/// Runs typed job `ty` with `args`. `Err` is the message for `meta.error`.
pub fn run(agent: &Arc<Agent>, ty: &str, args: &Value) -> Result<Value, String> {
    let _ = args;
    match ty {
        "ping" => Ok(
            json!({"uptime": crate::platform::identity::system_uptime(), "version": crate::VERSION}),
        ),
        "stats" => Ok(crate::stats::collect::job_record(agent)),
        "healthz" | "usage" => crate::healthz::run(agent, ty),
        t if crate::services::procs::TYPES.contains(&t) => {
            crate::services::procs::run(agent, t, args)
        }
        t if crate::services::daemons::TYPES.contains(&t) => {
            crate::services::daemons::run(agent, t, args)
        }
        t if crate::services::supervisor::TYPES.contains(&t) => {
            crate::services::supervisor::run(agent, t, args)
        }
        "service.update" => crate::services::update::run(agent, args).map_err(|f| f.error),
        "agent.update" => {
            Err("agent.update runs through typed::run_job (it needs the job id)".into())
        }
        other => {
            let _ = agent;
            Err(format!("unknown_type: {other}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_listed_type_has_an_arm() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            topic: "t".into(),
            key: "k".into(),
            mqtt_host: "h".into(),
            state_dir: d.path().join("state"),
            cache_dir: d.path().join("cache"),
            init_dir: d.path().join("init.d").display().to_string(),
            ..Config::default()
        };
        let agent = Agent::new(
            cfg,
            d.path().join("c.json"),
            None,
            "02-00-00-00-00-09".into(),
        );
        let mut n = 0;
        for ty in all_types() {
            assert!(is_typed(ty));
            // Empty args: every job either answers or names what is missing — never "unknown".
            if let Err(f) = run_job(&agent, "id-1", ty, &json!({})) {
                assert!(!f.error.starts_with("unknown_type"), "{ty}: {}", f.error);
            }
            n += 1;
        }
        assert_eq!(n, 24, "the 24 typed jobs of SPEC §4.4");
        assert!(!is_typed("process.explode") && !is_typed("cmd"));
    }
}
