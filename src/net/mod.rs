//! Connectivity (SPEC §6): [`monitor`] checks the uplink; [`recovery`] is the pure state
//! machine that decides on repairs and the reboot.

pub mod monitor;
pub mod recovery;
