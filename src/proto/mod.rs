//! The wire protocol (SPEC §3, §4): topic names and the payloads socketman sends and reads.
//! Pure types and functions, shared by the agent and `smctl`.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

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
mod tests {
    use super::*;

    #[test]
    fn event_envelope() {
        let e = event("PING", json!({"uptime": 5, "status": 9}));
        assert_eq!(e["app"], "socketman");
        assert_eq!(e["event_type"], "PING");
        assert!(e["timestamp"].as_u64().unwrap_or(0) > 1_600_000_000);
        assert_eq!(e["meta"]["status"], 9);
    }
}
