//! The heartbeat datagram parser `socketman::services::heartbeats::parse` (SPEC §8.2): the
//! input is one UDP datagram as a local process would send it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socketman::services::heartbeats;

fuzz_target!(|data: &[u8]| {
    match heartbeats::parse(data) {
        Ok(beat) => {
            assert!(!beat.process_name.is_empty());
            assert!(beat.pid > 1, "{beat:?}");
            if let Some(cmd) = &beat.run_command {
                assert!(!cmd.trim().is_empty());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
