//! What a device answers to a job (SPEC §4.2, §4.6): [`Delivered`] on `delivery/…`,
//! [`Processed`] or [`Rejected`] on `pub/…`, and the [`RestResult`] PATCH body that replaces
//! the PROCESSED when `rest` is on.
//!
//! Reading is lenient where a reader can do without a field (`app`, most of `meta`): smctl
//! reads what older and newer agents send; unknown keys are ignored.

use super::{JobError, Wire, APP};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `event_type` of [`Delivered`].
pub const DELIVERED: &str = "DELIVERED";
/// `event_type` of [`Processed`].
pub const PROCESSED: &str = "PROCESSED";
/// `event_type` of [`Rejected`].
pub const REJECTED: &str = "REJECTED";

fn app() -> String {
    APP.to_string()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `{"id","app","timestamp","event_type":"DELIVERED","meta":{"delivered":true}}`, with
/// `"duplicate":true` in `meta` for a job id seen before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    #[serde(default = "app")]
    pub app: String,
    pub event_type: String,
    pub id: String,
    pub meta: DeliveredMeta,
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMeta {
    /// Always `true`.
    #[serde(default)]
    pub delivered: bool,
    /// The id was seen before: the job is not run again. Omitted when `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

impl Delivered {
    pub fn new(id: impl Into<String>, duplicate: bool) -> Delivered {
        Delivered {
            app: app(),
            event_type: DELIVERED.into(),
            id: id.into(),
            meta: DeliveredMeta {
                delivered: true,
                duplicate,
            },
            timestamp: super::now(),
        }
    }
}

impl Wire for Delivered {}

/// `{"id","timestamp","app","event_type":"PROCESSED","meta":{…}}`: the one result of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Processed {
    #[serde(default = "app")]
    pub app: String,
    pub event_type: String,
    pub id: String,
    pub meta: ProcessedMeta,
    pub timestamp: u64,
}

/// The `meta` of a PROCESSED. Missing keys read as [`ProcessedMeta::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessedMeta {
    pub duration_ms: u64,
    /// Why it failed (`"timeout"`, `"killed by signal 9"`, a typed job's error…). Omitted
    /// when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `null` when the job did not exit by itself (timeout, signal, never started).
    pub exit_code: Option<i32>,
    /// Output of a shell job (cut at `job_output_max`) or a summary.
    pub msg: String,
    /// The structured answer of a typed (or network) job. Omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    pub success: bool,
    /// `msg` was cut.
    pub truncated: bool,
    /// The job's `meta.type`.
    #[serde(rename = "type")]
    pub ty: String,
}

impl Default for ProcessedMeta {
    /// Type `cmd` (the job default), failed, no exit code, nothing else.
    fn default() -> ProcessedMeta {
        ProcessedMeta {
            duration_ms: 0,
            error: None,
            exit_code: None,
            msg: String::new(),
            result: None,
            success: false,
            truncated: false,
            ty: "cmd".into(),
        }
    }
}

impl ProcessedMeta {
    /// A failure that ran nothing: `msg` and `error` are `error`, exit code `null`, 0 ms (the
    /// agent's `jobs::processed_error`).
    pub fn failure(ty: impl Into<String>, error: impl Into<String>) -> ProcessedMeta {
        let error = error.into();
        ProcessedMeta {
            msg: error.clone(),
            error: Some(error),
            ty: ty.into(),
            ..ProcessedMeta::default()
        }
    }
}

impl Processed {
    pub fn new(id: impl Into<String>, meta: ProcessedMeta) -> Processed {
        Processed {
            app: app(),
            event_type: PROCESSED.into(),
            id: id.into(),
            meta,
            timestamp: super::now(),
        }
    }
}

impl Wire for Processed {}

/// `{"id":ID or null,"timestamp","app","event_type":"REJECTED","meta":{"error":"<code>: <detail>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    #[serde(default = "app")]
    pub app: String,
    pub event_type: String,
    /// `null` when the message had no usable id.
    #[serde(default)]
    pub id: Option<String>,
    pub meta: RejectedMeta,
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedMeta {
    /// `"<code>: <detail>"` ([`JobError`]'s text); empty when a reader got none.
    #[serde(default)]
    pub error: String,
}

impl RejectedMeta {
    /// `error` read back as a [`JobError`]; `None` for a code this version does not know.
    pub fn job_error(&self) -> Option<JobError> {
        JobError::parse(&self.error)
    }
}

impl Rejected {
    pub fn new(id: Option<&str>, error: &JobError) -> Rejected {
        Rejected {
            app: app(),
            event_type: REJECTED.into(),
            id: id.map(str::to_string),
            meta: RejectedMeta {
                error: error.to_string(),
            },
            timestamp: super::now(),
        }
    }
}

impl Wire for Rejected {}

/// The body of `PATCH <api_url>/operations/<id>` (SPEC §4.6), a superset of the C
/// SocketMan's body: `success` and `msg` are the keys a C-era API reads (`msg` is the job's
/// output, stdout then stderr, `""` when there was none); `output` carries the same text
/// under the name the C README documents; `exit_code` and `type` are socketman's additions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestResult {
    pub exit_code: Option<i32>,
    pub msg: String,
    pub output: String,
    pub success: bool,
    #[serde(rename = "type")]
    pub ty: String,
}

impl From<&ProcessedMeta> for RestResult {
    fn from(m: &ProcessedMeta) -> RestResult {
        RestResult {
            success: m.success,
            msg: m.msg.clone(),
            output: m.msg.clone(),
            exit_code: m.exit_code,
            ty: m.ty.clone(),
        }
    }
}

impl RestResult {
    /// The body for a PROCESSED message as stored (read loosely: older stores, and messages
    /// with fields missing, give `false`, `""`, `null`).
    pub fn of(processed: &Value) -> RestResult {
        let m = &processed["meta"];
        let text = m["msg"].as_str().unwrap_or_default().to_string();
        RestResult {
            success: m["success"].as_bool().unwrap_or(false),
            msg: text.clone(),
            output: text,
            exit_code: m["exit_code"].as_i64().and_then(|c| i32::try_from(c).ok()),
            ty: m["type"].as_str().unwrap_or("unknown").to_string(),
        }
    }
}

impl From<&Processed> for RestResult {
    fn from(p: &Processed) -> RestResult {
        RestResult::from(&p.meta)
    }
}

impl Wire for RestResult {}

/// One pending REST notification as stored in `state_dir/rest/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestNotification {
    pub id: String,
    pub body: RestResult,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tests::check;
    use crate::proto::ErrorCode;
    use serde_json::json;

    const T: u64 = 1_700_000_000;

    fn at<T2>(mut m: T2, set: impl FnOnce(&mut T2)) -> T2 {
        set(&mut m);
        m
    }

    #[test]
    fn delivered_and_duplicate() {
        // jobs::Jobs::on_message
        let d = at(Delivered::new("j1", false), |d| d.timestamp = T);
        check(
            &d,
            json!({"id": "j1", "app": "socketman", "timestamp": T, "event_type": "DELIVERED", "meta": {"delivered": true}}),
        );
        let dup = at(Delivered::new("j1", true), |d| d.timestamp = T);
        check(
            &dup,
            json!({"id": "j1", "app": "socketman", "timestamp": T, "event_type": "DELIVERED", "meta": {"delivered": true, "duplicate": true}}),
        );
        assert!(Delivered::new("x", false).timestamp > 1_600_000_000);
    }

    /// The PROCESSED envelope of `jobs::Jobs::execute`, `processed_error` and
    /// `services::selfupdate::processed`.
    fn processed(id: &str, meta: Value) -> Value {
        json!({"id": id, "timestamp": T, "app": "socketman", "event_type": "PROCESSED", "meta": meta})
    }

    #[test]
    fn processed_of_a_shell_job() {
        // jobs::Jobs::execute, Kind::Shell, exit 0.
        let out = "up 3 days\n";
        let m = json!({
            "msg": out,
            "type": "cmd",
            "success": true,
            "exit_code": 0,
            "duration_ms": 12u64,
            "truncated": false,
        });
        let meta = ProcessedMeta {
            msg: out.into(),
            success: true,
            exit_code: Some(0),
            duration_ms: 12,
            ..ProcessedMeta::default()
        };
        check(
            &at(Processed::new("j1", meta), |p| p.timestamp = T),
            processed("j1", m),
        );
    }

    #[test]
    fn processed_of_a_timed_out_shell_job_has_exit_code_null() {
        // jobs::Jobs::execute, `out.timed_out`: exit_code null, then m["error"] = "timeout".
        let mut m = json!({
            "msg": "partial",
            "type": "cmd",
            "success": false,
            "exit_code": None::<i32>,
            "duration_ms": 5000u64,
            "truncated": true,
        });
        m["error"] = json!("timeout");
        let meta = ProcessedMeta {
            msg: "partial".into(),
            duration_ms: 5000,
            truncated: true,
            error: Some("timeout".into()),
            ..ProcessedMeta::default()
        };
        let p = at(Processed::new("j1", meta), |p| p.timestamp = T);
        check(&p, processed("j1", m));
        assert_eq!(p.to_value()["meta"]["exit_code"], Value::Null);
        assert!(p.to_json().contains(r#""exit_code":null"#));
    }

    #[test]
    fn processed_of_a_network_job_has_its_result() {
        // jobs::Jobs::execute, Kind::Network: m["result"] = the network result.
        let r = json!({"online_before": true, "online_after": true, "rolled_back": false});
        let mut m = json!({
            "msg": "",
            "type": "network",
            "success": true,
            "exit_code": 0,
            "duration_ms": 2u64,
            "truncated": false,
        });
        m["result"] = r.clone();
        let meta = ProcessedMeta {
            ty: "network".into(),
            success: true,
            exit_code: Some(0),
            duration_ms: 2,
            result: Some(r),
            ..ProcessedMeta::default()
        };
        check(
            &at(Processed::new("n", meta), |p| p.timestamp = T),
            processed("n", m),
        );
    }

    #[test]
    fn processed_of_typed_jobs() {
        // jobs::Jobs::execute, Kind::Typed, Ok.
        let result = json!({"uptime": 5, "version": "0.1.0"});
        let (msg, truncated) = (result.to_string(), false);
        let m = json!({"msg": msg, "type": "ping", "success": true, "exit_code": 0,
                       "duration_ms": 1u64, "truncated": truncated, "result": result});
        let meta = ProcessedMeta {
            msg: msg.clone(),
            ty: "ping".into(),
            success: true,
            exit_code: Some(0),
            duration_ms: 1,
            result: Some(result.clone()),
            ..ProcessedMeta::default()
        };
        check(
            &at(Processed::new("p", meta), |p| p.timestamp = T),
            processed("p", m),
        );
        // Kind::Typed, Err, with and without a result.
        let e = "no such pid";
        let m = json!({"msg": e, "type": "process.stop", "success": false, "exit_code": 1,
                       "duration_ms": 0u64, "truncated": false, "error": e});
        let meta = ProcessedMeta {
            msg: e.into(),
            ty: "process.stop".into(),
            exit_code: Some(1),
            error: Some(e.into()),
            ..ProcessedMeta::default()
        };
        check(
            &at(Processed::new("s", meta.clone()), |p| p.timestamp = T),
            processed("s", m.clone()),
        );
        let rolled = json!({"name": "a", "version": "2", "previous": "1", "rolled_back": true});
        let mut m2 = m;
        m2["result"] = rolled.clone();
        let meta2 = ProcessedMeta {
            result: Some(rolled),
            ..meta
        };
        check(
            &at(Processed::new("s", meta2), |p| p.timestamp = T),
            processed("s", m2),
        );
    }

    #[test]
    fn processed_error_that_ran_nothing() {
        // jobs::processed_error
        let (id, ty, error) = (
            "j9",
            "unknown",
            "interrupted: socketman stopped while the job ran",
        );
        let expected = json!({"id": id, "timestamp": T, "app": "socketman", "event_type": "PROCESSED",
               "meta": {"msg": error, "type": ty, "success": false, "exit_code": null, "duration_ms": 0, "truncated": false, "error": error}});
        check(
            &at(Processed::new(id, ProcessedMeta::failure(ty, error)), |p| {
                p.timestamp = T
            }),
            expected,
        );
    }

    #[test]
    fn processed_of_agent_update() {
        // services::selfupdate::processed, success and failure.
        let (version, previous) = ("0.2.0", "0.1.0");
        let mut meta = json!({
            "msg": format!("updated from {previous} to {version}"),
            "type": "agent.update",
            "success": true,
            "exit_code": null,
            "duration_ms": 3000u64,
            "truncated": false,
        });
        meta["result"] = json!({"version": version, "previous": previous});
        let ok = ProcessedMeta {
            msg: format!("updated from {previous} to {version}"),
            ty: "agent.update".into(),
            success: true,
            duration_ms: 3000,
            result: Some(json!({"version": version, "previous": previous})),
            ..ProcessedMeta::default()
        };
        check(
            &at(Processed::new("u", ok), |p| p.timestamp = T),
            processed("u", meta),
        );
        let e = "update to 0.2.0 failed: x";
        let mut meta = json!({
            "msg": e, "type": "agent.update", "success": false, "exit_code": null,
            "duration_ms": 0u64, "truncated": false,
        });
        meta["error"] = json!(e);
        let bad = ProcessedMeta::failure("agent.update", e);
        check(
            &at(Processed::new("u", bad), |p| p.timestamp = T),
            processed("u", meta),
        );
    }

    #[test]
    fn processed_reads_leniently() {
        // An unknown key (a newer agent), and missing ones (app, truncated, type, …).
        let p = Processed::from_value(json!({"id": "j", "timestamp": 1, "event_type": "PROCESSED",
            "extra": [1], "meta": {"success": true, "exit_code": null, "error": "timeout", "new_key": {}}}))
        .unwrap();
        assert_eq!(p.app, "socketman");
        assert_eq!(p.meta.exit_code, None);
        assert_eq!(p.meta.error.as_deref(), Some("timeout"));
        assert_eq!(p.meta.ty, "cmd");
        assert!(p.meta.success && !p.meta.truncated);
        // `result: null` is no result.
        let p = Processed::from_value(
            json!({"id": "j", "timestamp": 1, "event_type": "PROCESSED", "meta": {"result": null}}),
        )
        .unwrap();
        assert_eq!(p.meta.result, None);
        // Wrong types and a missing id do not read.
        assert!(Processed::from_value(json!({"id": "j", "timestamp": 1, "event_type": "PROCESSED", "meta": {"exit_code": "3"}})).is_err());
        assert!(Processed::from_value(
            json!({"timestamp": 1, "event_type": "PROCESSED", "meta": {}})
        )
        .is_err());
    }

    #[test]
    fn rejected_with_and_without_id() {
        // jobs::publish_rejected with Rejection::message().
        let e = JobError::new(ErrorCode::Busy, "8 jobs already waiting");
        let r = at(Rejected::new(Some("j1"), &e), |r| r.timestamp = T);
        check(
            &r,
            json!({"id": Some("j1"), "timestamp": T, "app": "socketman", "event_type": "REJECTED", "meta": {"error": "busy: 8 jobs already waiting"}}),
        );
        assert_eq!(r.meta.job_error(), Some(e));
        let e = JobError::new(ErrorCode::Invalid, "not JSON: expected value");
        let r = at(Rejected::new(None, &e), |r| r.timestamp = T);
        check(
            &r,
            json!({"id": None::<&str>, "timestamp": T, "app": "socketman", "event_type": "REJECTED", "meta": {"error": "invalid: not JSON: expected value"}}),
        );
        assert!(r.to_json().contains(r#""id":null"#));
        // A newer agent's code still reads, as text.
        let r = Rejected::from_slice(br#"{"id":"j","timestamp":1,"event_type":"REJECTED","meta":{"error":"quota: over","why":1}}"#).unwrap();
        assert_eq!(r.meta.error, "quota: over");
        assert_eq!(r.meta.job_error(), None);
    }

    #[test]
    fn rest_body() {
        // jobs::rest::body
        let p = at(
            Processed::new(
                "x",
                ProcessedMeta {
                    msg: "out".into(),
                    success: true,
                    exit_code: Some(0),
                    ..ProcessedMeta::default()
                },
            ),
            |p| p.timestamp = T,
        );
        let pv = p.to_value();
        let m = &pv["meta"];
        let expected = json!({
            "success": m["success"],
            "msg": m["msg"],
            "output": m["msg"],
            "exit_code": m["exit_code"],
            "type": m["type"],
        });
        assert_eq!(
            expected,
            json!({"success":true,"msg":"out","output":"out","exit_code":0,"type":"cmd"})
        );
        check(&RestResult::from(&p), expected.clone());
        assert_eq!(RestResult::of(&pv), RestResult::from(&p));
        let timed_out = RestResult::from(&ProcessedMeta {
            error: Some("timeout".into()),
            ..ProcessedMeta::default()
        });
        check(
            &timed_out,
            json!({"success": false, "msg": "", "output": "", "exit_code": null, "type": "cmd"}),
        );
    }
}
