//! Connectivity (SPEC §6): [`monitor`] checks the uplink every `monitor` seconds and
//! publishes a [`NetStatus`] through a [`crate::runtime::Watch`]; [`recovery`] is the pure
//! state machine that decides on repairs and the reboot.
#![forbid(unsafe_code)]

pub mod monitor;
pub mod recovery;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the monitor last found (SPEC §6); `None` fields are not known yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetStatus {
    pub code: Option<u8>,
    pub wan_name: Option<String>,
    pub wan_ip: Option<String>,
    pub wan_gateway: Option<String>,
}

/// Set by the `network` job while it changes the network on purpose: its own re-check and
/// rollback handle the network, so the monitor's recovery timers pause (checks still run).
#[derive(Debug, Clone, Default)]
pub struct RecoveryPause(Arc<AtomicBool>);

impl RecoveryPause {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
