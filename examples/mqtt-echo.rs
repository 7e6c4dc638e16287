//! The benchmark floor (scripts/bench.sh): a bare MQTT responder that does the MQTT half of
//! what socketman does for a job and nothing else. It subscribes to `sub/T/K/MAC` (QoS 1) and
//! answers every message with a DELIVERED on `delivery/…` and a PROCESSED-shaped message on
//! `pub/…` (both QoS 1, each waiting for its PUBACK, as socketman's publisher does), without
//! parsing beyond the id, checking, recording or running anything. One thread, one sync Paho
//! client. Not part of the shipped binary: `cargo build --release --example mqtt-echo`.
//!
//! Usage: `mqtt-echo PORT TOPIC KEY MAC [SECONDS]` (stops by itself after SECONDS, default 600).
#![forbid(unsafe_code)]

use paho_mqtt as mqtt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn die(msg: String) -> ! {
    eprintln!("mqtt-echo: {msg}");
    std::process::exit(1);
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 {
        die("usage: mqtt-echo PORT TOPIC KEY MAC [SECONDS]".into());
    }
    let (port, topic, key, mac) = (&a[0], &a[1], &a[2], &a[3]);
    let life: u64 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(600);
    let tail = format!("{topic}/{key}/{mac}");
    let cli = mqtt::Client::new(
        mqtt::CreateOptionsBuilder::new_v3()
            .server_uri(format!("tcp://127.0.0.1:{port}"))
            .client_id(format!("echo-{}", std::process::id()))
            .persistence(mqtt::PersistenceType::None)
            .finalize(),
    )
    .unwrap_or_else(|e| die(format!("client: {e}")));
    let rx = cli.start_consuming();
    let opts = mqtt::ConnectOptionsBuilder::new_v3()
        .clean_session(true)
        .finalize();
    cli.connect(opts)
        .unwrap_or_else(|e| die(format!("connect to port {port}: {e}")));
    cli.subscribe(&format!("sub/{tail}"), 1)
        .unwrap_or_else(|e| die(format!("subscribe: {e}")));
    let status = json!({"app":"socketman","event_type":"CONNECT",
        "meta":{"online":"1","client_id":"echo","version":"echo"}});
    let _ = cli.publish(mqtt::Message::new_retained(
        format!("status/{tail}"),
        status.to_string(),
        1,
    ));
    let (delivery, publ) = (format!("delivery/{tail}"), format!("pub/{tail}"));
    let end = Instant::now() + Duration::from_secs(life);
    while Instant::now() < end {
        let msg = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(m)) => m,
            Ok(None) => die("connection lost".into()),
            Err(_) => continue,
        };
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        let id = v["id"].clone();
        let d = json!({"id": id, "app": "socketman", "timestamp": 0,
            "event_type": "DELIVERED", "meta": {"delivered": true}});
        let p = json!({"id": id, "timestamp": 0, "app": "socketman", "event_type": "PROCESSED",
            "meta": {"msg": "", "type": "cmd", "success": true, "exit_code": 0,
                     "duration_ms": 0, "truncated": false}});
        for (t, m) in [(&delivery, d), (&publ, p)] {
            if let Err(e) = cli.publish(mqtt::Message::new(t.as_str(), m.to_string(), 1)) {
                die(format!("publish to {t}: {e}"));
            }
        }
    }
    let _ = cli.disconnect(None);
}
