//! Stats (SPEC §5): [`collect`] builds records, [`spool`] keeps them on disk, [`upload`]
//! sends them.

pub mod collect;
pub mod spool;
pub mod upload;

use crate::net::NetStatus;
use crate::runtime::Watch;
use serde_json::Value;

/// The `stats` job: a fresh record of this device (not spooled).
pub struct StatsJob {
    pub ctx: upload::StatsCtx,
    pub net: Watch<NetStatus>,
}

impl crate::jobs::typed::StatsSource for StatsJob {
    fn record(&self) -> Value {
        collect::job_record(&self.ctx, &self.net)
    }
}
