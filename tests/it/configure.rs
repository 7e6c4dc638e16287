//! Issue 18, `agent.configure` / `agent.config`: the real agent and a real mosquitto.
//! `ping-interval` merged and applied in place; `mqtt_host` moved to a dead address and
//! rolled back (the old config answers the failure); `topic` moved and the answer arriving
//! on the new topic; an invalid config answered with the key, nothing written. Secrets stay
//! masked in every answer and out of the log. `smctl configure` follows a topic change.

use crate::support::{now, Agent, Broker, Client, Topic};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const SECRET: &str = "hunter2-not-for-logs";

fn with_secret(c: &mut Value) {
    c["username"] = json!("dev");
    c["password"] = json!(SECRET);
}

fn configure(a: &Agent, id: &str, args: Value) {
    a.send_job(
        &json!({"id": id, "timestamp": now(), "meta": {"type": "agent.configure", "args": args}}),
    );
}

fn bak(a: &Agent) -> std::path::PathBuf {
    a.config_path.with_file_name("config.json.bak")
}

fn marker(a: &Agent) -> std::path::PathBuf {
    a.dir.path().join("state/pending-config.json")
}

#[test]
fn configure_merge_applies_ping_interval_in_place() {
    let b = Broker::start();
    let a = Agent::start(&b, with_secret);
    let pid = a.pid();
    let before = std::fs::read(&a.config_path).unwrap();
    let t0 = Instant::now();
    configure(
        &a,
        "cfg-ping",
        json!({"config": {"ping-interval": 45}, "mode": "merge"}),
    );
    let p = a.answer("cfg-ping", T);
    eprintln!(
        "timeline: ping-interval answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], true, "{p}");
    let r = &p["meta"]["result"];
    assert_eq!(r["restarted"], false);
    assert_eq!(r["mode"], "merge");
    assert_eq!(r["config"]["ping-interval"], 45);
    assert_eq!(r["config"]["password"], "***");
    // Applied: the effective config says so, the file too (0600), the old one is .bak.
    let eff = a.job("agent.config", json!({}));
    assert_eq!(eff["meta"]["result"]["config"]["ping-interval"], 45);
    assert_eq!(eff["meta"]["result"]["config"]["password"], "***");
    assert_eq!(a.config()["ping-interval"], 45);
    assert_eq!(
        a.config()["password"],
        SECRET,
        "the file keeps the real secret"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a.config_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read(bak(&a)).unwrap(), before);
    assert!(!marker(&a).exists());
    assert_eq!(a.pid(), pid);
    assert_eq!(a.log().matches("starting as").count(), 1, "no restart");
    for m in a.client.all() {
        assert!(
            !String::from_utf8_lossy(&m.payload).contains(SECRET),
            "secret sent"
        );
    }
    assert!(!a.log().contains(SECRET), "secret in the log");
}

#[test]
fn configure_dead_broker_is_rolled_back_and_answered_by_the_old_config() {
    let b = Broker::start();
    let a = Agent::start(&b, with_secret);
    let before = std::fs::read(&a.config_path).unwrap();
    let t0 = Instant::now();
    // 127.0.0.2: loopback, but the broker listens on 127.0.0.1 only.
    configure(
        &a,
        "cfg-dead",
        json!({"config": {"mqtt_host": "127.0.0.2"}, "confirm_s": 3}),
    );
    let p = a.answer("cfg-dead", T);
    let secs = t0.elapsed().as_secs_f32();
    eprintln!("timeline: dead broker rollback answered {secs:.1} s after the job");
    assert_eq!(p["meta"]["success"], false, "{p}");
    assert_eq!(
        p["meta"]["error"],
        "no broker connection within 3 s with the new config; the previous config was restored"
    );
    assert!(secs >= 3.0, "answered only after confirm_s");
    assert_eq!(
        std::fs::read(&a.config_path).unwrap(),
        before,
        "old file back"
    );
    let log = a.log();
    assert_eq!(
        log.matches("starting as").count(),
        3,
        "new config, then the old one\n{log}"
    );
    assert!(!marker(&a).exists());
    a.wait_online(2);
    assert_eq!(
        a.job("agent.config", json!({}))["meta"]["result"]["config"]["mqtt_host"],
        "127.0.0.1"
    );
    assert!(!log.contains(SECRET));
}

#[test]
fn configure_new_topic_answers_on_the_new_topic() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let new_topic = format!("{}moved", a.topic);
    let moved = Client::connect(b.port, &new_topic, &a.key, &a.mac);
    let t0 = Instant::now();
    configure(
        &a,
        "cfg-topic",
        json!({"config": {"topic": new_topic}, "confirm_s": 20}),
    );
    let end = Instant::now() + T;
    let p = loop {
        if let Some(m) = moved
            .all()
            .into_iter()
            .find(|m| m.topic == Topic::Pub && m.json["id"] == "cfg-topic")
        {
            break m.json;
        }
        assert!(
            Instant::now() < end,
            "no answer on the new topic\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "timeline: topic change answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(p["meta"]["result"]["restarted"], true);
    assert_eq!(p["meta"]["result"]["config"]["topic"], new_topic);
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "cfg-topic"),
        0,
        "not on the old topic"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker(&a).exists());
    assert_eq!(a.config()["topic"], new_topic);
}

#[test]
fn configure_invalid_config_names_the_key_and_writes_nothing() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let before = std::fs::read(&a.config_path).unwrap();
    let t0 = Instant::now();
    configure(&a, "cfg-bad", json!({"config": {"port": "eighty"}}));
    let p = a.answer("cfg-bad", T);
    eprintln!(
        "timeline: invalid config answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(
        p["meta"]["error"],
        "invalid config: key \"port\": expected an integer, found \"eighty\""
    );
    assert_eq!(
        p["meta"]["result"],
        json!({"key": "port", "reason": "expected an integer, found \"eighty\""})
    );
    // replace without the required keys.
    configure(
        &a,
        "cfg-bad2",
        json!({"config": {"debug": 1}, "mode": "replace"}),
    );
    let p = a.answer("cfg-bad2", T);
    assert_eq!(p["meta"]["result"]["key"], "topic");
    assert_eq!(std::fs::read(&a.config_path).unwrap(), before);
    assert!(!bak(&a).exists());
    assert!(!marker(&a).exists());
}

#[test]
fn smctl_configure_follows_a_topic_change() {
    let b = Broker::start();
    let a = Agent::start(&b, with_secret);
    let new_topic = format!("{}smctl", a.topic);
    let mut args = crate::smctl::to(&a);
    let set = format!("topic={new_topic}");
    args.extend(
        [
            "configure",
            "--mac",
            &a.mac,
            "--set",
            &set,
            "--set",
            "ping-interval=90",
            "--confirm",
            "20",
            "--timeout",
            "30",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let (code, out, err) = crate::smctl::smctl(&refs);
    eprintln!(
        "timeline: smctl configure ended {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(code, 0, "{out}\n{err}\n{}", a.log());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["topic"], new_topic);
    assert_eq!(v["config"]["ping-interval"], 90);
    assert_eq!(v["config"]["password"], "***");
    assert_eq!(v["restarted"], true);
    assert!(!out.contains(SECRET) && !err.contains(SECRET));
    for step in ["delivered", "offline", "answered after"] {
        assert!(err.contains(step), "{step:?} in progress:\n{err}");
    }
}
