//! The MQTT job parser with `job_secret` set (signed jobs, SPEC §4.2).
//!
//! Input: one flag byte, then the rest. Flag bit 0 clear: the rest is the payload as sent
//! (the fuzzer cannot forge an HMAC, so this drives the wrapper checks and the refusal of bad
//! signatures). Bit 0 set: the rest is the inner job text, wrapped here as
//! `{"signed": <text>, "sig": <its HMAC>}` so the inner parser is reached through the signed
//! path. Bit 1 sets `job_max_age` (600 s); bit 2 corrupts the signature (must be refused).
#![no_main]

#[path = "common/job_check.rs"]
mod job_check;

use libfuzzer_sys::fuzz_target;
use socketman::config::Config;
use socketman::jobs::intake;

const SECRET: &str = "fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = Config {
        job_secret: Some(SECRET.into()),
        ..Config::default()
    };
    if flags & 2 != 0 {
        cfg.job_max_age = 600;
    }
    if flags & 1 == 0 {
        job_check::check(&cfg, intake::parse(rest, &cfg, job_check::NOW));
        return;
    }
    let inner = String::from_utf8_lossy(rest);
    let mut sig = intake::sign(SECRET, &inner);
    let corrupt = flags & 4 != 0;
    if corrupt {
        sig = intake::sign("not-the-secret", &inner);
    }
    let payload = serde_json::json!({"signed": inner, "sig": sig}).to_string();
    let r = intake::parse(payload.as_bytes(), &cfg, job_check::NOW);
    if corrupt {
        let rej = r.as_ref().expect_err("a wrong signature was accepted");
        // Oversized payloads are refused before the signature is looked at.
        assert!(
            matches!(
                rej.code,
                socketman::proto::ErrorCode::BadSignature | socketman::proto::ErrorCode::Invalid
            ),
            "{rej:?}"
        );
    }
    job_check::check(&cfg, r);
});
