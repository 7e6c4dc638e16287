//! Jobs (SPEC §4): intake (parse, verify, dedupe), queue and workers, shell runner, typed jobs.
pub mod network;
pub mod typed;
