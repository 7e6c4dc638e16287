//! The events on `status/T/K/MAC` (SPEC §3, §6, §8): the [`Event`] envelope
//! `{"app":"socketman","timestamp","event_type","meta"}` and the `meta` of each event —
//! CONNECT, PING, SERVICE, HEARTBEAT_LOST, RECOVERY.

use super::{Wire, APP};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A `meta` type that knows its `event_type`.
pub trait EventMeta {
    const EVENT_TYPE: &'static str;
}

/// `{"app":"socketman","timestamp":now,"event_type":…,"meta":…}`. `M` is one of the meta
/// types below, or `serde_json::Value` for any event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<M> {
    #[serde(default = "app")]
    pub app: String,
    pub event_type: String,
    pub meta: M,
    /// 0 when a sender left it out (readers stay lenient: an old or foreign CONNECT without
    /// a timestamp still counts).
    #[serde(default)]
    pub timestamp: u64,
}

fn app() -> String {
    APP.to_string()
}

impl<M: EventMeta> Event<M> {
    /// The event of `meta`, stamped now.
    pub fn new(meta: M) -> Event<M> {
        Event::with_type(M::EVENT_TYPE, meta)
    }
}

impl<M> Event<M> {
    /// An event named `event_type` (for `meta` types without an [`EventMeta`], e.g. `Value`).
    pub fn with_type(event_type: impl Into<String>, meta: M) -> Event<M> {
        Event {
            app: app(),
            event_type: event_type.into(),
            meta,
            timestamp: super::now(),
        }
    }
}

impl<M: Serialize + DeserializeOwned> Wire for Event<M> {}

/// The retained CONNECT: online when connected, offline as last will and on a clean stop.
pub type Connect = Event<ConnectMeta>;
/// The PING of every `ping` seconds.
pub type Ping = Event<PingMeta>;

/// `{"online":"1","client_id":"sm-…","version":"x.y.z"}`, or `{"online":"0","client_id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectMeta {
    #[serde(default)]
    pub client_id: String,
    /// Sent as the string `"1"` or `"0"`; read as online from `"1"`, `1` or `true`.
    #[serde(with = "online_flag", default)]
    pub online: bool,
    /// Only in the online CONNECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl EventMeta for ConnectMeta {
    const EVENT_TYPE: &'static str = "CONNECT";
}

impl Connect {
    /// The online CONNECT (retained) of `client_id`, running `version`.
    pub fn online(client_id: impl Into<String>, version: impl Into<String>) -> Connect {
        Event::new(ConnectMeta {
            client_id: client_id.into(),
            online: true,
            version: Some(version.into()),
        })
    }

    /// The offline CONNECT: last will and clean stop (retained).
    pub fn offline(client_id: impl Into<String>) -> Connect {
        Event::new(ConnectMeta {
            client_id: client_id.into(),
            online: false,
            version: None,
        })
    }
}

/// `online` as the strings `"1"`/`"0"` of the original agent.
mod online_flag {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(online: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *online { "1" } else { "0" })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(v == "1" || v == 1 || v == true)
    }
}

/// `{"uptime":S,"status":CODE}`: system uptime in seconds and the network status code of
/// SPEC §6 (`null` before the first check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingMeta {
    pub status: Option<u8>,
    pub uptime: u64,
}

impl EventMeta for PingMeta {
    const EVENT_TYPE: &'static str = "PING";
}

/// SERVICE (SPEC §8): a supervised service changed status.
/// `{"name","status","pid":N or null,"exit_code":N or null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMeta {
    /// Of the last exit; `null` when it was killed by a signal or has not exited.
    pub exit_code: Option<i32>,
    pub name: String,
    pub pid: Option<i32>,
    /// `running`, `stopped`, `starting`, `backoff`, `fatal`, `updating`, `unknown`.
    pub status: String,
}

impl EventMeta for ServiceMeta {
    const EVENT_TYPE: &'static str = "SERVICE";
}

/// HEARTBEAT_LOST (SPEC §8): a watched process went silent and was restarted.
/// `{"process_name","pid","restarted_pid":N or null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatLostMeta {
    /// The silent process.
    pub pid: i32,
    pub process_name: String,
    /// `null` when it could not be restarted.
    pub restarted_pid: Option<i32>,
}

impl EventMeta for HeartbeatLostMeta {
    const EVENT_TYPE: &'static str = "HEARTBEAT_LOST";
}

/// RECOVERY (SPEC §6): `{"state":"online","offline_s":S}` when connectivity is back, or
/// `{"state":"rebooted","reason","offline_s","at"}` after a recovery reboot (the fields of
/// the reboot marker; only `state` when the marker was unreadable). Absent keys are omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryMeta {
    /// Unix time of the reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `online` or `rebooted` (the reboot marker file may leave it out).
    #[serde(default)]
    pub state: String,
}

impl EventMeta for RecoveryMeta {
    const EVENT_TYPE: &'static str = "RECOVERY";
}

impl RecoveryMeta {
    /// Connectivity is back after `offline_s` seconds.
    pub fn online(offline_s: u64) -> RecoveryMeta {
        RecoveryMeta {
            at: None,
            offline_s: Some(offline_s),
            reason: None,
            state: "online".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tests::check;
    use serde_json::{json, Value};

    const T: u64 = 1_700_000_000;

    fn at<M>(mut e: Event<M>) -> Event<M> {
        e.timestamp = T;
        e
    }

    /// `proto::event`, the envelope every event is built with today, at time `T`.
    fn event(event_type: &str, meta: Value) -> Value {
        let mut e = crate::proto::event(event_type, meta);
        e["timestamp"] = json!(T);
        e
    }

    #[test]
    fn connect_online_and_offline() {
        // link::online_payload / offline_payload
        let client_id = "sm-AABBCCDDEEFF";
        check(
            &at(Connect::online(client_id, crate::VERSION)),
            event(
                "CONNECT",
                json!({"online": "1", "client_id": client_id, "version": crate::VERSION}),
            ),
        );
        check(
            &at(Connect::offline(client_id)),
            event("CONNECT", json!({"online": "0", "client_id": client_id})),
        );
        assert!(Connect::offline("x").timestamp > 1_600_000_000);
    }

    #[test]
    fn connect_online_reads_leniently() {
        let read = |online: Value| {
            serde_json::from_value::<ConnectMeta>(json!({"online": online, "client_id": "c"}))
                .unwrap()
                .online
        };
        assert!(read(json!("1")) && read(json!(1)) && read(json!(true)));
        assert!(!read(json!("0")) && !read(json!(0)) && !read(json!(false)));
        assert!(!read(json!("yes")) && !read(Value::Null));
        let m: ConnectMeta = serde_json::from_value(json!({"future": 1})).unwrap();
        assert_eq!(
            m,
            ConnectMeta {
                client_id: String::new(),
                online: false,
                version: None
            }
        );
    }

    #[test]
    fn ping_with_and_without_status() {
        // link: json!({"uptime": system_uptime(), "status": status}), status Null before
        // the first check.
        let uptime: u64 = 12345;
        let status = Some(9u8).map_or(Value::Null, |c| json!(c));
        check(
            &at(Event::new(PingMeta {
                status: Some(9),
                uptime,
            })),
            event("PING", json!({"uptime": uptime, "status": status})),
        );
        let status = None::<u8>.map_or(Value::Null, |c| json!(c));
        let p = at(Event::new(PingMeta {
            status: None,
            uptime,
        }));
        check(
            &p,
            event("PING", json!({"uptime": uptime, "status": status})),
        );
        assert!(p.to_json().contains(r#""status":null"#));
    }

    #[test]
    fn service_event() {
        // services::supervisor::publish
        let (name, status, pid, exit_code) = ("web", "backoff", None::<i32>, Some(3));
        check(
            &at(Event::new(ServiceMeta {
                exit_code,
                name: name.into(),
                pid,
                status: status.into(),
            })),
            event(
                "SERVICE",
                json!({"name": name, "status": status, "pid": pid, "exit_code": exit_code}),
            ),
        );
        let (pid, exit_code) = (Some(77), None::<i32>);
        check(
            &at(Event::new(ServiceMeta {
                exit_code,
                name: name.into(),
                pid,
                status: "running".into(),
            })),
            event(
                "SERVICE",
                json!({"name": name, "status": "running", "pid": pid, "exit_code": exit_code}),
            ),
        );
    }

    #[test]
    fn heartbeat_lost_event() {
        // services::watchdog: restarted, or not.
        let (name, old) = ("p", 100);
        for new_pid in [Some(200), None] {
            check(
                &at(Event::new(HeartbeatLostMeta {
                    pid: old,
                    process_name: name.into(),
                    restarted_pid: new_pid,
                })),
                event(
                    "HEARTBEAT_LOST",
                    json!({"process_name": name, "pid": old, "restarted_pid": new_pid}),
                ),
            );
        }
    }

    #[test]
    fn recovery_events() {
        // net::monitor: back online, and the reboot marker's meta (whole and torn).
        let offline_s: u64 = 612;
        check(
            &at(Event::new(RecoveryMeta::online(offline_s))),
            event(
                "RECOVERY",
                json!({"state": "online", "offline_s": offline_s}),
            ),
        );
        let rebooted = RecoveryMeta {
            at: Some(1_700_000_000),
            offline_s: Some(612),
            reason: Some("offline".into()),
            state: "rebooted".into(),
        };
        check(
            &at(Event::new(rebooted)),
            event(
                "RECOVERY",
                json!({"state":"rebooted","reason":"offline","offline_s":612,"at":1700000000}),
            ),
        );
        let torn = RecoveryMeta {
            at: None,
            offline_s: None,
            reason: None,
            state: "rebooted".into(),
        };
        check(
            &at(Event::new(torn)),
            event("RECOVERY", json!({"state":"rebooted"})),
        );
    }

    #[test]
    fn any_event_as_value() {
        // (Not `check`: a `Value` meta keeps the keys a newer agent adds.)
        let e = at(Event::with_type("X_NEW", json!({"k": [1, 2]})));
        let expected = event("X_NEW", json!({"k": [1, 2]}));
        assert_eq!(e.to_value(), expected);
        assert_eq!(e.to_json(), expected.to_string());
        assert_eq!(Event::<Value>::from_value(expected).unwrap(), e);
    }
}
