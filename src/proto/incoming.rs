//! The reader's side: [`Incoming`] sorts any message of an agent by its `event_type` into
//! the typed answers and events, for `smctl`.

use super::answer::{DELIVERED, PROCESSED, REJECTED};
use super::event::EventMeta;
use super::{Connect, Ping};
use super::{ConnectMeta, Delivered, PingMeta, Processed, Rejected};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One message from `status/…`, `delivery/…` or `pub/…`.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Delivered(Delivered),
    Processed(Processed),
    Rejected(Rejected),
    Connect(Connect),
    Ping(Ping),
    /// Anything else, as it came: the other events (SERVICE, RECOVERY, …), a newer agent's
    /// kinds, a known kind whose fields do not read (wrong types, no `id` or `timestamp`),
    /// and JSON that is not a message at all.
    Other(Value),
}

impl Incoming {
    /// `None` when `payload` is not JSON.
    pub fn parse(payload: &[u8]) -> Option<Incoming> {
        serde_json::from_slice(payload)
            .ok()
            .map(Incoming::from_value)
    }

    pub fn from_value(v: Value) -> Incoming {
        fn read<T: DeserializeOwned>(v: &Value, f: fn(T) -> Incoming) -> Option<Incoming> {
            T::deserialize(v).ok().map(f)
        }
        let typed = match v.get("event_type").and_then(Value::as_str) {
            Some(DELIVERED) => read(&v, Incoming::Delivered),
            Some(PROCESSED) => read(&v, Incoming::Processed),
            Some(REJECTED) => read(&v, Incoming::Rejected),
            Some(ConnectMeta::EVENT_TYPE) => read(&v, Incoming::Connect),
            Some(PingMeta::EVENT_TYPE) => read(&v, Incoming::Ping),
            _ => None,
        };
        typed.unwrap_or(Incoming::Other(v))
    }

    /// The job id of a DELIVERED, PROCESSED or REJECTED (a REJECTED may have none).
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Incoming::Delivered(d) => Some(&d.id),
            Incoming::Processed(p) => Some(&p.id),
            Incoming::Rejected(r) => r.id.as_deref(),
            _ => None,
        }
    }

    /// `timestamp`, when there is a usable one.
    pub fn timestamp(&self) -> Option<u64> {
        match self {
            Incoming::Delivered(d) => Some(d.timestamp),
            Incoming::Processed(p) => Some(p.timestamp),
            Incoming::Rejected(r) => Some(r.timestamp),
            Incoming::Connect(c) => Some(c.timestamp),
            Incoming::Ping(p) => Some(p.timestamp),
            Incoming::Other(v) => v.get("timestamp").and_then(Value::as_u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ErrorCode, Event, JobError, ProcessedMeta, ServiceMeta, Wire};
    use serde_json::json;

    #[test]
    fn sorts_by_event_type() {
        let d = Delivered::new("j", true);
        assert_eq!(
            Incoming::parse(&d.to_vec()),
            Some(Incoming::Delivered(d.clone()))
        );
        let p = Processed::new("j", ProcessedMeta::failure("cmd", "x"));
        assert_eq!(
            Incoming::from_value(p.to_value()),
            Incoming::Processed(p.clone())
        );
        let r = Rejected::new(None, &JobError::new(ErrorCode::Busy, "x"));
        let got = Incoming::from_value(r.to_value());
        assert_eq!(got, Incoming::Rejected(r));
        assert_eq!(got.job_id(), None);
        let c = Connect::online("sm-A", "1.0");
        assert_eq!(
            Incoming::from_value(c.to_value()),
            Incoming::Connect(c.clone())
        );
        let ping = Event::new(PingMeta {
            status: None,
            uptime: 3,
        });
        assert_eq!(
            Incoming::from_value(ping.to_value()),
            Incoming::Ping(ping.clone())
        );
        assert_eq!(Incoming::from_value(d.to_value()).job_id(), Some("j"));
        assert_eq!(Incoming::from_value(p.to_value()).job_id(), Some("j"));
        assert_eq!(Incoming::from_value(c.to_value()).job_id(), None);
    }

    #[test]
    fn the_rest_is_other() {
        let s = Event::new(ServiceMeta {
            exit_code: None,
            name: "a".into(),
            pid: Some(1),
            status: "running".into(),
        })
        .to_value();
        assert_eq!(Incoming::from_value(s.clone()), Incoming::Other(s.clone()));
        assert_eq!(
            Incoming::from_value(s).timestamp().map(|t| t > 0),
            Some(true)
        );
        let bad = json!({"event_type": "PROCESSED", "id": "j", "timestamp": 1, "meta": {"exit_code": "x"}});
        assert_eq!(Incoming::from_value(bad.clone()), Incoming::Other(bad));
        // An event without timestamp (an old or foreign sender) still parses, stamped 0.
        let no_ts = json!({"event_type": "PING", "meta": {"uptime": 1, "status": null}});
        let got = Incoming::from_value(no_ts);
        assert!(matches!(got, Incoming::Ping(ref p) if p.timestamp == 0 && p.meta.uptime == 1));
        assert_eq!(
            Incoming::from_value(json!([1, 2])),
            Incoming::Other(json!([1, 2]))
        );
        assert_eq!(Incoming::parse(b"{nope"), None);
    }
}
