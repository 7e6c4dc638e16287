//! Parsing and verifying one message from `sub/…` (SPEC §4.1, §4.3): size, JSON shape,
//! signature, age, type allow-list. Pure: no I/O, the clock is an argument. Runs on the MQTT
//! link thread.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::proto::{ErrorCode, JobError};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Messages over this size are REJECTED `invalid` (SPEC §4.2).
pub const MAX_JOB_BYTES: usize = 256 * 1024;

/// A job that passed intake.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub timestamp: Option<i64>,
    /// `meta.type`, default `cmd`.
    pub ty: String,
    /// `meta.msg` (the command of shell jobs).
    pub msg: Option<String>,
    /// `meta.args` of typed jobs (`{}` when absent).
    pub args: Value,
    /// Effective timeout in seconds (`meta.timeout` clamped to `job_timeout_max`, else `job_timeout`).
    pub timeout: u64,
}

/// The kind of job, which decides how it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/bin/sh -c msg`.
    Shell,
    /// A shell job with network safety; runs alone.
    Network,
    /// A typed job ([`super::typed::all_types`]).
    Typed,
}

impl Job {
    pub fn kind(&self) -> Kind {
        kind_of(&self.ty)
    }
}

pub fn kind_of(ty: &str) -> Kind {
    if super::typed::NETWORK_TYPES.contains(&ty) {
        Kind::Network
    } else if super::typed::is_typed(ty) {
        Kind::Typed
    } else {
        Kind::Shell
    }
}

/// Why a message was refused: `code` is one of SPEC §4.2's.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub detail: String,
}

impl Rejection {
    fn new(id: Option<String>, code: ErrorCode, detail: impl Into<String>) -> Self {
        Rejection {
            id,
            code,
            detail: detail.into(),
        }
    }

    /// The SPEC §4.2 error (code and detail) for the REJECTED.
    pub fn error(&self) -> JobError {
        JobError::new(self.code, self.detail.clone())
    }

    /// `"<code>: <detail>"` as sent in `meta.error`.
    pub fn message(&self) -> String {
        self.error().to_string()
    }
}

/// Lower-case hex HMAC-SHA256 of `data` with `secret`.
pub fn sign(secret: &str, data: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(data.as_bytes());
    hex(&mac.finalize().into_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn verify(secret: &str, data: &str, sig: &str) -> bool {
    let Some(sig) = unhex(sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(data.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The id of a job object, if it is a valid one (for the REJECTED message).
fn valid_id(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 64 => Some(s.clone()),
        _ => None,
    }
}

/// Parses and checks one payload. `now` is Unix time in seconds.
pub fn parse(payload: &[u8], cfg: &Config, now: u64) -> Result<Job, Rejection> {
    if payload.len() > MAX_JOB_BYTES {
        return Err(Rejection::new(
            None,
            ErrorCode::Invalid,
            format!(
                "message is {} bytes, over the {MAX_JOB_BYTES} byte limit",
                payload.len()
            ),
        ));
    }
    if payload.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Rejection::new(None, ErrorCode::Invalid, "empty message"));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new(None, ErrorCode::Invalid, format!("not UTF-8 text ({e})")))?;
    let outer: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(None, ErrorCode::Invalid, format!("not JSON: {e}")))?;
    let Value::Object(outer_obj) = outer else {
        return Err(Rejection::new(
            None,
            ErrorCode::Invalid,
            format!("expected a JSON object, found {}", describe(&outer)),
        ));
    };

    let (obj, signed_id) = match &cfg.job_secret {
        None => (outer_obj, None),
        Some(secret) => {
            let (Some(Value::String(signed)), Some(Value::String(sig))) =
                (outer_obj.get("signed"), outer_obj.get("sig"))
            else {
                let id = valid_id(&outer_obj);
                return Err(Rejection::new(
                    id,
                    ErrorCode::Unsigned,
                    "jobs must be wrapped as {\"signed\":…,\"sig\":…}",
                ));
            };
            let inner: Option<Map<String, Value>> = serde_json::from_str(signed).ok();
            let id = inner.as_ref().and_then(valid_id);
            if !verify(secret, signed, sig) {
                return Err(Rejection::new(
                    id,
                    ErrorCode::BadSignature,
                    "HMAC-SHA256 of \"signed\" does not match \"sig\"",
                ));
            }
            match inner {
                Some(o) => (o, id),
                None => {
                    return Err(Rejection::new(
                        None,
                        ErrorCode::Invalid,
                        "\"signed\" is not a JSON object",
                    ))
                }
            }
        }
    };
    let _ = signed_id;

    let id = match obj.get("id") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(Rejection::new(None, ErrorCode::Invalid, "\"id\" is empty"))
        }
        Some(Value::String(s)) if s.chars().count() > 64 => {
            return Err(Rejection::new(
                None,
                ErrorCode::Invalid,
                format!("\"id\" is {} characters, over 64", s.chars().count()),
            ))
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Rejection::new(
                None,
                ErrorCode::Invalid,
                format!("\"id\" must be a string, found {}", describe(other)),
            ))
        }
        None => {
            return Err(Rejection::new(
                None,
                ErrorCode::Invalid,
                "\"id\" is missing",
            ))
        }
    };
    let reject = |code: ErrorCode, detail: String| Rejection::new(Some(id.clone()), code, detail);

    let timestamp = match obj.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)) {
            Some(t) => Some(t),
            None => {
                return Err(reject(
                    ErrorCode::Invalid,
                    "\"timestamp\" is not a usable number".into(),
                ))
            }
        },
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(t) => Some(t),
            Err(_) => {
                return Err(reject(
                    ErrorCode::Invalid,
                    format!("\"timestamp\" must be a number, found \"{s}\""),
                ))
            }
        },
        Some(other) => {
            return Err(reject(
                ErrorCode::Invalid,
                format!("\"timestamp\" must be a number, found {}", describe(other)),
            ))
        }
    };

    let meta = match obj.get("meta") {
        Some(Value::Object(m)) => m,
        None => return Err(reject(ErrorCode::Invalid, "\"meta\" is missing".into())),
        Some(other) => {
            return Err(reject(
                ErrorCode::Invalid,
                format!("\"meta\" must be an object, found {}", describe(other)),
            ))
        }
    };
    let ty = match meta.get("type") {
        None | Some(Value::Null) => "cmd".to_string(),
        Some(Value::String(s)) if s.trim().is_empty() => "cmd".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(reject(
                ErrorCode::Invalid,
                format!("\"meta.type\" must be a string, found {}", describe(other)),
            ))
        }
    };

    if cfg.job_max_age > 0 {
        match timestamp {
            None => {
                return Err(reject(
                    ErrorCode::Expired,
                    format!("no \"timestamp\" and job_max_age is {} s", cfg.job_max_age),
                ))
            }
            Some(t) => {
                // Saturating: a timestamp of i64::MIN or -1e308 is "very old", not wrapped.
                let age = (now as i64).saturating_sub(t);
                if age > cfg.job_max_age as i64 {
                    return Err(reject(
                        ErrorCode::Expired,
                        format!("job is {age} s old, over job_max_age {} s", cfg.job_max_age),
                    ));
                }
                if age.saturating_neg() > cfg.job_max_age as i64 {
                    return Err(reject(
                        ErrorCode::Expired,
                        format!("timestamp is {} s in the future", age.saturating_neg()),
                    ));
                }
            }
        }
    }

    let kind = kind_of(&ty);
    if ty.contains('.') && kind != Kind::Typed {
        return Err(reject(
            ErrorCode::UnknownType,
            format!("\"{ty}\" is not a job type of socketman {}", crate::VERSION),
        ));
    }
    if let Some(allowed) = &cfg.job_types {
        let shell_alias = kind == Kind::Shell && allowed.iter().any(|a| a == "cmd");
        if !allowed.iter().any(|a| a == &ty) && !shell_alias {
            return Err(reject(
                ErrorCode::Forbidden,
                format!("type \"{ty}\" is not in job_types"),
            ));
        }
    }

    let msg = match meta.get("msg") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(reject(
                ErrorCode::Invalid,
                format!("\"meta.msg\" must be a string, found {}", describe(other)),
            ))
        }
    };
    if kind != Kind::Typed && msg.as_deref().is_none_or(|m| m.trim().is_empty()) {
        return Err(reject(
            ErrorCode::Invalid,
            "\"meta.msg\" (the command) is missing or empty".into(),
        ));
    }
    let args = match meta.get("args") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            return Err(reject(
                ErrorCode::Invalid,
                format!("\"meta.args\" must be an object, found {}", describe(other)),
            ))
        }
    };
    let timeout = match meta.get("timeout") {
        None | Some(Value::Null) => cfg.job_timeout,
        Some(v) => {
            let t = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match t {
                Some(t) if t > 0.0 => (t.ceil() as u64).min(cfg.job_timeout_max),
                _ => {
                    return Err(reject(
                        ErrorCode::Invalid,
                        format!("\"meta.timeout\" must be a positive number of seconds, found {v}"),
                    ))
                }
            }
        }
    };
    Ok(Job {
        id,
        timestamp,
        ty,
        msg,
        args,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            topic: "t".into(),
            key: "k".into(),
            mqtt_host: "h".into(),
            ..Config::default()
        }
    }

    fn rej(payload: &[u8], c: &Config) -> Rejection {
        match parse(payload, c, 1_700_000_000) {
            Ok(j) => panic!("accepted {j:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn the_readme_job() {
        let j = parse(br#"{"id":"your-job-id","timestamp":1484484398,"meta":{"msg":"uptime","type":"your-job-type"}}"#, &cfg(), 0).unwrap();
        assert_eq!(j.id, "your-job-id");
        assert_eq!(j.timestamp, Some(1484484398));
        assert_eq!(j.ty, "your-job-type");
        assert_eq!(j.msg.as_deref(), Some("uptime"));
        assert_eq!(j.kind(), Kind::Shell);
        assert_eq!(j.timeout, 300);
        let d = parse(br#"{"id":"a","meta":{"msg":"ls"}}"#, &cfg(), 0).unwrap();
        assert_eq!(d.ty, "cmd");
    }

    #[test]
    fn malformed_payloads() {
        let c = cfg();
        let long_id = format!(r#"{{"id":"{}","meta":{{"msg":"x"}}}}"#, "a".repeat(100));
        let big = format!(r#"{{"id":"a","meta":{{"msg":"{}"}}}}"#, "x".repeat(300_000));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not JSON"),
            (b"", "empty"),
            (b"   ", "empty"),
            (&[0xff, 0xfe, 0x00, 0x01], "UTF-8"),
            (b"[1,2,3]", "object"),
            (b"42", "object"),
            (br#"{"meta":{"msg":"x"}}"#, "missing"),
            (br#"{"id":5,"meta":{"msg":"x"}}"#, "string"),
            (br#"{"id":"","meta":{"msg":"x"}}"#, "empty"),
            (long_id.as_bytes(), "over 64"),
            (big.as_bytes(), "limit"),
            (deep.as_bytes(), "not JSON"),
            (br#"{"id":"a"}"#, "meta"),
            (br#"{"id":"a","meta":"x"}"#, "meta"),
            (br#"{"id":"a","meta":{}}"#, "msg"),
            (br#"{"id":"a","meta":{"msg":5}}"#, "msg"),
            (br#"{"id":"a","meta":{"msg":"x","type":3}}"#, "type"),
            (br#"{"id":"a","meta":{"msg":"x","timeout":-1}}"#, "timeout"),
            (
                br#"{"id":"a","timestamp":"yesterday","meta":{"msg":"x"}}"#,
                "timestamp",
            ),
            (br#"{"id":"a","meta":{"type":"ping","args":[1]}}"#, "args"),
        ];
        for (p, want) in cases {
            let r = rej(p, &c);
            assert_eq!(
                r.code,
                "invalid",
                "{:?}",
                String::from_utf8_lossy(&p[..p.len().min(60)])
            );
            assert!(
                r.message().contains(want),
                "{} does not mention {want}",
                r.message()
            );
        }
        assert_eq!(rej(br#"{"id":"a","meta":{}}"#, &c).id.as_deref(), Some("a"));
        assert_eq!(rej(long_id.as_bytes(), &c).id, None);
    }

    #[test]
    fn types() {
        let c = cfg();
        assert_eq!(
            rej(br#"{"id":"a","meta":{"type":"process.explode"}}"#, &c).code,
            "unknown_type"
        );
        let p = parse(br#"{"id":"a","meta":{"type":"ping"}}"#, &c, 0).unwrap();
        assert_eq!(p.kind(), Kind::Typed);
        assert_eq!(p.args, serde_json::json!({}));
        let n = parse(
            br#"{"id":"a","meta":{"type":"network","msg":"true"}}"#,
            &c,
            0,
        )
        .unwrap();
        assert_eq!(n.kind(), Kind::Network);
        let mut only = cfg();
        only.job_types = Some(vec!["cmd".into()]);
        assert_eq!(
            rej(br#"{"id":"a","meta":{"type":"ping"}}"#, &only).code,
            "forbidden"
        );
        assert!(
            parse(
                br#"{"id":"a","meta":{"msg":"x","type":"custom"}}"#,
                &only,
                0
            )
            .is_ok(),
            "cmd allows free-form shell types"
        );
        only.job_types = Some(vec!["ping".into()]);
        assert_eq!(
            rej(br#"{"id":"a","meta":{"msg":"x"}}"#, &only).code,
            "forbidden"
        );
    }

    #[test]
    fn timeouts_are_clamped() {
        let mut c = cfg();
        c.job_timeout_max = 100;
        let j = parse(br#"{"id":"a","meta":{"msg":"x","timeout":5000}}"#, &c, 0).unwrap();
        assert_eq!(j.timeout, 100);
        let j = parse(br#"{"id":"a","meta":{"msg":"x","timeout":"2"}}"#, &c, 0).unwrap();
        assert_eq!(j.timeout, 2);
        let j = parse(br#"{"id":"a","meta":{"msg":"x","timeout":0.2}}"#, &c, 0).unwrap();
        assert_eq!(j.timeout, 1);
    }

    #[test]
    fn signatures_and_age() {
        let mut c = cfg();
        c.job_secret = Some("s3cret".into());
        c.job_max_age = 600;
        let now = 1_700_000_000u64;
        let inner = format!(r#"{{"id":"j1","timestamp":{now},"meta":{{"msg":"true"}}}}"#);
        let wrap =
            |signed: &str, sig: &str| serde_json::json!({"signed": signed, "sig": sig}).to_string();
        let good = wrap(&inner, &sign("s3cret", &inner));
        assert_eq!(parse(good.as_bytes(), &c, now).unwrap().id, "j1");
        let bad = wrap(&inner, &sign("other", &inner));
        let r = parse(bad.as_bytes(), &c, now).unwrap_err();
        assert_eq!(
            (r.code, r.id.as_deref()),
            (ErrorCode::BadSignature, Some("j1"))
        );
        assert_eq!(
            parse(wrap(&inner, "zz").as_bytes(), &c, now)
                .unwrap_err()
                .code,
            "bad_signature"
        );
        assert_eq!(
            parse(inner.as_bytes(), &c, now).unwrap_err().code,
            "unsigned"
        );
        let r = parse(good.as_bytes(), &c, now + 601).unwrap_err();
        assert_eq!(r.code, "expired");
        assert!(parse(good.as_bytes(), &c, now + 599).is_ok());
        let old = r#"{"id":"j2","meta":{"msg":"true"}}"#.to_string();
        assert_eq!(
            parse(wrap(&old, &sign("s3cret", &old)).as_bytes(), &c, now)
                .unwrap_err()
                .code,
            "expired"
        );
        // Extreme timestamps are old or in the future, never wrapped around.
        let mut c = cfg();
        c.job_max_age = 600;
        for (ts, text) in [
            ("-9223372036854775808", "s old"),
            ("-1e308", "s old"),
            ("9223372036854775807", "in the future"),
            ("1e308", "in the future"),
        ] {
            let j = format!(r#"{{"id":"x","timestamp":{ts},"meta":{{"msg":"true"}}}}"#);
            let r = parse(j.as_bytes(), &c, now).unwrap_err();
            assert_eq!(r.code, "expired", "{ts}");
            assert!(r.detail.contains(text), "{ts}: {}", r.detail);
        }
        assert_eq!(
            sign("key", "The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn extreme_timestamps_are_expired_without_wrapping() {
        let mut c = cfg();
        c.job_max_age = 600;
        let now = 1_700_000_000u64;
        for ts in ["-9223372036854775808", "-1e308", "\"-9223372036854775808\""] {
            let p = format!(r#"{{"id":"a","timestamp":{ts},"meta":{{"msg":"x"}}}}"#);
            let r = rej(p.as_bytes(), &c);
            assert_eq!(r.code, ErrorCode::Expired, "{ts}");
            assert_eq!(
                r.detail, "job is 9223372036854775807 s old, over job_max_age 600 s",
                "{ts}"
            );
        }
        let p = br#"{"id":"a","timestamp":9223372036854775807,"meta":{"msg":"x"}}"#;
        assert_eq!(
            rej(p, &c).detail,
            format!("timestamp is {} s in the future", i64::MAX - now as i64)
        );
    }
}
