//! Typed jobs (SPEC §4.4): `meta.type` with a dot, and the named built-ins. Each arm calls
//! the module that owns the part of the agent it acts on; the answer is the `result` object
//! or an error message for `meta.error`.
#![forbid(unsafe_code)]

use crate::agent::Agent;
use serde_json::{json, Value};
use std::sync::Arc;

/// Every typed job this build runs (besides shell jobs). Anything else with a dot is
/// REJECTED `unknown_type`.
pub const TYPES: &[&str] = &["ping", "stats"];

/// Types that are shell jobs with network safety (SPEC §4.4).
pub const NETWORK_TYPES: &[&str] = &["network", "networking", "all"];

/// True when `ty` is run as a typed job by [`run`].
pub fn is_typed(ty: &str) -> bool {
    TYPES.contains(&ty)
}

/// Runs typed job `ty` with `args`. `Err` is the message for `meta.error`.
pub fn run(agent: &Arc<Agent>, ty: &str, args: &Value) -> Result<Value, String> {
    let _ = args;
    match ty {
        "ping" => {
            Ok(json!({"uptime": crate::identity::system_uptime(), "version": crate::VERSION}))
        }
        "stats" => Ok(crate::collect::job_record(agent)),
        other => {
            let _ = agent;
            Err(format!("unknown_type: {other}"))
        }
    }
}
