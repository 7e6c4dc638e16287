//! socketman: a device agent for OpenWrt routers and Raspberry Pi boards.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; `smctl` (`src/bin/smctl.rs`)
//! shares the job and event types. See the README's architecture section for the threads.

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod collect;
pub mod config;
pub mod daemons;
pub mod events;
pub mod healthz;
pub mod http;
pub mod identity;
pub mod jobs;
pub mod logging;
pub mod monitor;
pub mod mqtt;
pub mod procs;
pub mod provision;
pub mod recovery;
pub mod selfupdate;
pub mod spool;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod update;
pub mod upload;
pub mod watchdog;

/// `socketman <semver> (<git sha or "unknown">)`, as `--version` prints it.
pub fn version_line() -> String {
    format!("socketman {} ({})", VERSION, GIT_SHA)
}

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from, when the build could tell.
pub const GIT_SHA: &str = match option_env!("SOCKETMAN_GIT_SHA") {
    Some(s) => s,
    None => "unknown",
};
