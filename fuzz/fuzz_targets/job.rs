//! The MQTT job parser without signing: `socketman::jobs::intake::parse`.
//!
//! Input: one flag byte, then the payload. Flag bit 0 sets `job_max_age` (600 s, so the age
//! arithmetic on outside timestamps runs), bit 1 a `job_types` allow-list.
#![no_main]

#[path = "common/job_check.rs"]
mod job_check;

use libfuzzer_sys::fuzz_target;
use socketman::config::Config;
use socketman::jobs::intake;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    let mut cfg = Config::default();
    if flags & 1 != 0 {
        cfg.job_max_age = 600;
    }
    if flags & 2 != 0 {
        cfg.job_types = Some(vec!["cmd".into(), "ping".into(), "process.list".into()]);
    }
    job_check::check(&cfg, intake::parse(payload, &cfg, job_check::NOW));
});
