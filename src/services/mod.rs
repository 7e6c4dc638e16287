//! The programs the device exists for: [`supervisor`] (SPEC §8.1), [`watchdog`] (§8.2),
//! [`update`] (§8.3) and [`selfupdate`] (§9), plus the `process.*` ([`procs`]) and
//! `daemon.*` ([`daemons`]) jobs.

pub mod daemons;
pub mod heartbeats;
pub mod procs;
pub mod selfupdate;
pub mod supervisor;
pub mod update;
pub mod watchdog;
