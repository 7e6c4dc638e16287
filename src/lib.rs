//! socketman: a device agent for OpenWrt routers and Raspberry Pi boards.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; `smctl` (`src/bin/smctl/`)
//! shares the job and event types. See the README's architecture section for the threads.

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod error;
pub mod healthz;
pub mod http;
pub mod jobs;
pub mod link;
pub mod logging;
pub mod net;
pub mod platform;
pub mod proto;
pub mod provision;
pub mod runtime;
pub mod services;
pub mod stats;

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
