//! The programs the device exists for: [`supervisor`] (SPEC §8.1), [`watchdog`] (§8.2),
//! [`update`] (§8.3) and [`selfupdate`] (§9), plus the `process.*` ([`procs`]) and
//! `daemon.*` ([`daemons`]) jobs, `firmware.upgrade` ([`firmware`]) and
//! `agent.configure`/`agent.config` ([`configure`]); [`pending`] holds the answers those
//! owe across a restart.

pub mod configure;
pub mod daemons;
pub mod firmware;
pub mod heartbeats;
pub mod pending;
pub mod procs;
pub mod selfupdate;
pub mod supervisor;
pub mod update;
pub mod watchdog;
