//! What is sent to a device on `sub/T/K/MAC` (SPEC §4.1, §4.3): [`Job`] and its
//! [`Signed`] wrapper. Built by `smctl`; the agent's intake (`jobs::intake`) reads jobs more
//! leniently than these types (string timestamps, `meta.timeout` as text, …).

use super::Wire;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"id","timestamp","meta":{…}}`. Fields in key order, see [`super`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// 1–64 characters.
    pub id: String,
    pub meta: JobMeta,
    /// Unix seconds; checked against `job_max_age`. Omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// The `meta` of a job; every key is omitted when `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobMeta {
    /// Arguments of a typed job (SPEC §4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The shell command of a shell job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// Seconds the device lets the job run (clamped to its `job_timeout_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// `meta.type`; the device takes `cmd` when absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
}

impl Job {
    /// A job stamped with the current time.
    pub fn new(id: impl Into<String>, meta: JobMeta) -> Job {
        Job {
            id: id.into(),
            meta,
            timestamp: Some(super::now()),
        }
    }
}

impl Wire for Job {}

/// `{"signed":"<the job JSON as text>","sig":"<lower-case hex HMAC-SHA256(job_secret, signed)>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub sig: String,
    pub signed: String,
}

impl Signed {
    /// Wraps `job`: `signed` is its JSON text and `sig` what `sign` makes of that text (the
    /// HMAC is `jobs::intake::sign(job_secret, text)`; it stays there, next to the check).
    pub fn new(job: &Job, sign: impl FnOnce(&str) -> String) -> Signed {
        let signed = job.to_json();
        Signed {
            sig: sign(&signed),
            signed,
        }
    }

    /// The inner job, if `signed` is one.
    pub fn job(&self) -> Result<Job, serde_json::Error> {
        serde_json::from_str(&self.signed)
    }
}

impl Wire for Signed {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tests::check;
    use serde_json::json;

    /// The job as `smctl` built it with `json!` before these types.
    fn smctl_job(id: &str, ty: Option<&str>, msg: Option<&str>, args: Option<Value>) -> Value {
        let mut meta = serde_json::Map::new();
        if let Some(m) = msg {
            meta.insert("msg".into(), json!(m));
        }
        if let Some(t) = ty {
            meta.insert("type".into(), json!(t));
        }
        if let Some(a) = args {
            meta.insert("args".into(), a);
        }
        json!({"id": id, "timestamp": 1_700_000_000u64, "meta": meta})
    }

    #[test]
    fn jobs_as_smctl_sends_them() {
        let shell = Job {
            id: "j1".into(),
            meta: JobMeta {
                msg: Some("uptime".into()),
                ..JobMeta::default()
            },
            timestamp: Some(1_700_000_000),
        };
        check(&shell, smctl_job("j1", None, Some("uptime"), None));
        let typed = Job {
            id: "j2".into(),
            meta: JobMeta {
                ty: Some("process.stop".into()),
                args: Some(json!({"pid": 42, "grace": 2})),
                ..JobMeta::default()
            },
            timestamp: Some(1_700_000_000),
        };
        check(
            &typed,
            smctl_job(
                "j2",
                Some("process.stop"),
                None,
                Some(json!({"pid": 42, "grace": 2})),
            ),
        );
        let typed_shell = Job {
            id: "j3".into(),
            meta: JobMeta {
                ty: Some("network".into()),
                msg: Some("true".into()),
                timeout: Some(30),
                ..JobMeta::default()
            },
            timestamp: None,
        };
        check(
            &typed_shell,
            json!({"id": "j3", "meta": {"type": "network", "msg": "true", "timeout": 30}}),
        );
        let j = Job::new("x", JobMeta::default());
        assert!(j.timestamp.unwrap_or(0) > 1_600_000_000);
    }

    #[test]
    fn the_readme_job_reads() {
        let j = Job::from_slice(br#"{"id":"your-job-id","timestamp":1484484398,"meta":{"msg":"uptime","type":"your-job-type"}}"#).unwrap();
        assert_eq!(j.id, "your-job-id");
        assert_eq!(j.timestamp, Some(1484484398));
        assert_eq!(j.meta.ty.as_deref(), Some("your-job-type"));
        assert_eq!(j.meta.msg.as_deref(), Some("uptime"));
    }

    #[test]
    fn signed_wraps_the_exact_text() {
        let j = Job {
            id: "j1".into(),
            meta: JobMeta {
                msg: Some("true".into()),
                ..JobMeta::default()
            },
            timestamp: Some(5),
        };
        let s = Signed::new(&j, |text| format!("sig of {text}"));
        let text = r#"{"id":"j1","meta":{"msg":"true"},"timestamp":5}"#;
        assert_eq!(s.signed, text);
        assert_eq!(s.sig, format!("sig of {text}"));
        check(&s, json!({"signed": text, "sig": format!("sig of {text}")}));
        assert_eq!(s.job().unwrap(), j);
    }
}
