//! The wire protocol (SPEC §3, §4): topic names and the payloads socketman sends and reads.
//! Pure types and functions, shared by the agent and `smctl`.
//!
//! - [`job`]: what is sent to a device: [`Job`], [`Signed`].
//! - [`answer`]: its answers: [`Delivered`], [`Processed`], [`Rejected`], the REST body
//!   [`RestResult`].
//! - [`error`]: [`JobError`] and its [`ErrorCode`]s, the `meta.error` of a REJECTED.
//! - [`event`](mod@event): the [`Event`] envelope of `status/…` and its metas (CONNECT, PING, SERVICE,
//!   HEARTBEAT_LOST, RECOVERY).
//! - [`incoming`]: [`Incoming`], any message sorted by `event_type`, for readers.
//!
//! The fields of every wire struct are declared in the alphabetical order of their JSON keys:
//! serialised, a value is byte for byte the text `serde_json::Value` gives for the same
//! object (its maps are sorted), i.e. what the agent sent when it built its payloads with
//! `json!`. Serialise with [`Wire`].
#![forbid(unsafe_code)]

pub mod answer;
pub mod error;
pub mod event;
pub mod incoming;
pub mod job;

pub use answer::{
    Delivered, DeliveredMeta, Processed, ProcessedMeta, Rejected, RejectedMeta, RestNotification,
    RestResult,
};
pub use error::{ErrorCode, JobError};
pub use event::{
    Connect, ConnectMeta, Event, EventMeta, HeartbeatLostMeta, Ping, PingMeta, RecoveryMeta,
    ServiceMeta,
};
pub use incoming::Incoming;
pub use job::{Job, JobMeta, Signed};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// `"app"` of every outgoing message.
pub const APP: &str = "socketman";

/// JSON in and out for the payload types of this module.
pub trait Wire: Serialize + DeserializeOwned {
    /// The payload as sent. (Cannot fail for these types: their maps have string keys.)
    fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// [`Wire::to_vec`] as text.
    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The payload as a `Value` (for the agent's outbox, which takes `Value`s).
    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn from_slice(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    fn from_value(v: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v)
    }
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `{"app":"socketman","timestamp":now,"event_type":…,"meta":…}`.
pub fn event(event_type: &str, meta: Value) -> Value {
    json!({"app": "socketman", "timestamp": now(), "event_type": event_type, "meta": meta})
}

/// Which of the four topics of SPEC §3 a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `delivery/T/K/MAC`: DELIVERED.
    Delivery,
    /// `pub/T/K/MAC`: PROCESSED, REJECTED.
    Pub,
    /// `status/T/K/MAC`: CONNECT, PING and events.
    Status,
}

/// The four topics of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Topics {
    pub sub: String,
    pub delivery: String,
    pub publ: String,
    pub status: String,
}

impl Topics {
    pub fn new(cfg: &crate::config::Config, mac: &str) -> Self {
        let tail = format!("{}/{}/{}", cfg.topic, cfg.key, mac);
        Topics {
            sub: format!("sub/{tail}"),
            delivery: format!("delivery/{tail}"),
            publ: format!("pub/{tail}"),
            status: format!("status/{tail}"),
        }
    }

    pub fn of(&self, t: Topic) -> &str {
        match t {
            Topic::Delivery => &self.delivery,
            Topic::Pub => &self.publ,
            Topic::Status => &self.status,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fmt::Debug;

    /// `actual` serialises to exactly `expected` (as a value and byte for byte), reads back
    /// from it, and still reads with unknown keys added (a newer agent).
    pub(crate) fn check<T: Wire + PartialEq + Debug>(actual: &T, expected: Value) {
        assert_eq!(actual.to_value(), expected);
        assert_eq!(actual.to_json(), expected.to_string());
        assert_eq!(actual.to_vec(), expected.to_string().into_bytes());
        assert_eq!(&T::from_value(expected.clone()).unwrap(), actual);
        let mut newer = expected;
        if let Some(o) = newer.as_object_mut() {
            o.insert("zz_added_later".into(), json!({"x": 1}));
            if let Some(Value::Object(m)) = o.get_mut("meta") {
                m.insert("aa_added_later".into(), json!([1]));
            }
        }
        assert_eq!(
            &T::from_slice(newer.to_string().as_bytes()).unwrap(),
            actual
        );
    }

    #[test]
    fn event_envelope() {
        let e = event("PING", json!({"uptime": 5, "status": 9}));
        assert_eq!(e["app"], "socketman");
        assert_eq!(e["event_type"], "PING");
        assert!(e["timestamp"].as_u64().unwrap_or(0) > 1_600_000_000);
        assert_eq!(e["meta"]["status"], 9);
    }
}
