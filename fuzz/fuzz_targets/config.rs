//! The config file parser `socketman::config::parse` (SPEC §2), on any UTF-8 text.
//!
//! Checks besides "no panic": an accepted config has the required keys, its masked JSON hides
//! the secrets, and the effective config written back as JSON parses to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socketman::config;

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8 text; other bytes are refused before parse.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, "fuzz.json") {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok((cfg, notes)) => {
            assert!(!cfg.topic.is_empty() && !cfg.key.is_empty() && !cfg.mqtt_host.is_empty());
            let masked = cfg.masked_json();
            for (k, v) in [
                ("password", &cfg.password),
                ("token", &cfg.token),
                ("job_secret", &cfg.job_secret),
            ] {
                let shown = &masked[k];
                assert!(
                    (v.is_none() && shown.is_null()) || shown == "***",
                    "{k} shown as {shown}"
                );
            }
            let _ = notes;
            let again = serde_json::to_string(&cfg).expect("Config serialises");
            let (cfg2, _) = config::parse(&again, "again.json")
                .unwrap_or_else(|e| panic!("effective config refused: {e}\n{again}"));
            assert_eq!(cfg, cfg2, "effective config changed when parsed again");
        }
    }
});
