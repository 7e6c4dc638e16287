//! Issue 8: the `smctl` binary against a real mosquitto and real agents — send with the remote
//! exit code, op, watch, devices online/offline (last will after kill -9), fleet with a MAC
//! that has no agent, signed jobs through `--config` with `job_secret`, REJECTED and timeout
//! exit codes.

use crate::support::{prepare_sharing, Agent, Broker};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs smctl with `args` to completion: (exit code, stdout, stderr). Bounded by the smctl
/// `--timeout`s given in the tests; a hung smctl is killed after 60 s.
pub(crate) fn smctl(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smctl");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("smctl {args:?} did not end within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The broker options that reach `a`'s device.
pub(crate) fn to(a: &Agent) -> Vec<String> {
    vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        a.port.to_string(),
        "--topic".into(),
        a.topic.clone(),
        "--key".into(),
        a.key.clone(),
    ]
}

fn run(a: &Agent, rest: &[&str]) -> (i32, String, String) {
    let mut args = to(a);
    args.extend(rest.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    smctl(&refs)
}

#[test]
fn send_prints_output_and_exits_with_the_remote_code() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let (code, out, err) = run(
        &a,
        &[
            "send",
            "--mac",
            &a.mac,
            "--timeout",
            "20",
            "--",
            "echo",
            "hello;",
            "exit",
            "3",
        ],
    );
    assert_eq!(code, 3, "stderr: {err}");
    assert_eq!(out, "hello\n");
    let (code, out, _) = run(
        &a,
        &[
            "send",
            "--mac",
            &a.mac,
            "--",
            "printf 'a b\\n'; echo err >&2",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "a b\nerr\n");
    // The job went through the agent: DELIVERED and PROCESSED on its topics.
    assert!(
        a.count(crate::support::Topic::Delivery, |v| v["event_type"]
            == "DELIVERED")
            >= 2
    );
}

#[test]
fn send_reports_remote_timeout_rejection_and_no_answer() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_types"] = json!(["ping"]));
    // Type not in job_types: REJECTED forbidden → 76 with the device's error.
    let (code, out, err) = run(
        &a,
        &["send", "--mac", &a.mac, "--type", "other", "--", "true"],
    );
    assert_eq!(code, 76, "stderr: {err}");
    assert!(out.is_empty());
    assert!(err.contains("forbidden"), "{err}");
    // A MAC without an agent: no answer within --timeout → 75.
    let start = Instant::now();
    let (code, _, err) = run(
        &a,
        &[
            "send",
            "--mac",
            "02-00-00-DE-AD-00",
            "--timeout",
            "1",
            "--",
            "true",
        ],
    );
    assert_eq!(code, 75, "stderr: {err}");
    assert!(err.contains("no answer from 02-00-00-DE-AD-00"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15));
    // Usage errors: 64, nothing sent.
    let (code, _, err) = run(&a, &["send", "--mac", &a.mac]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = smctl(&["send", "--mac", "X", "--", "true"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--topic is required"), "{err}");
}

#[test]
fn send_with_remote_job_timeout_exits_124() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_timeout"] = json!(1));
    let (code, out, err) = run(
        &a,
        &[
            "send",
            "--mac",
            &a.mac,
            "--timeout",
            "30",
            "--",
            "echo started; sleep 30",
        ],
    );
    assert_eq!(code, 124, "stderr: {err}");
    assert_eq!(out, "started\n");
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn op_ping_prints_the_pretty_result() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let (code, out, err) = run(&a, &["op", "--mac", &a.mac, "ping"]);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("\n  \"version\": \""), "not pretty: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime"].as_u64().is_some());
    let (code, _, err) = run(&a, &["op", "--mac", &a.mac, "ping", "[1]"]);
    assert_eq!(code, 64, "{err}");
    // An unknown dotted type is REJECTED unknown_type.
    let (code, _, err) = run(&a, &["op", "--mac", &a.mac, "no.such", "{}"]);
    assert_eq!(code, 76, "{err}");
    assert!(err.contains("unknown_type"), "{err}");
}

#[test]
fn devices_show_online_then_offline_after_kill_9() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    let mut a2 = prepare_sharing(&b, &a, |_| {});
    a2.spawn();
    a2.wait_online(1);
    let (code, out, err) = run(&a, &["devices"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&a.mac))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" online "), "{line}");
    assert!(
        line.contains(&format!("sm-{}", a.mac.replace('-', ""))),
        "{line}"
    );
    assert!(line.contains(env!("CARGO_PKG_VERSION")), "{line}");
    assert!(out.contains("2 devices: 2 online, 0 offline"), "{out}");
    a.kill9();
    // The broker publishes the last will once it notices the dead connection (at once for a
    // closed socket).
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = run(&a, &["devices", "--json"]);
        let list: Vec<Value> = serde_json::from_str(&out).unwrap();
        let me = list.iter().find(|d| d["mac"] == a.mac.as_str()).unwrap();
        let other = list.iter().find(|d| d["mac"] == a2.mac.as_str()).unwrap();
        if me["online"] == false {
            assert_eq!(other["online"], true);
            assert_eq!(me["client_id"], format!("sm-{}", a.mac.replace('-', "")));
            break;
        }
        assert!(
            Instant::now() < end,
            "still online 20 s after kill -9: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn watch_streams_readable_and_json_lines() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let mut args = to(&a);
    args.extend(["watch", "--mac", &a.mac, "--for", "4"].map(String::from));
    let child = Command::new(env!("CARGO_BIN_EXE_smctl"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    a.run("w-1", "echo watched");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The retained CONNECT first; other status events (monitor) may come in between.
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("CONNECT online") && lines[0].ends_with("(retained)"),
        "{text}"
    );
    let pos = |pat: &str| {
        lines
            .iter()
            .position(|l| l.contains(&a.mac) && l.contains(pat))
    };
    let d = pos("DELIVERED w-1").unwrap_or_else(|| panic!("{text}"));
    let p = pos("PROCESSED w-1 cmd ok exit 0").unwrap_or_else(|| panic!("{text}"));
    assert!(d < p, "{text}");
    assert!(lines[p].ends_with(": watched"), "{text}");
    let (code, out, _) = run(&a, &["watch", "--json", "--count", "1", "--for", "5"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["topic"],
        format!("status/{}/{}/{}", a.topic, a.key, a.mac)
    );
    assert_eq!(v["retained"], true);
    assert_eq!(v["payload"]["event_type"], "CONNECT");
}

#[test]
fn fleet_summarizes_ok_failed_and_no_answer() {
    let b = Broker::start();
    let first = Agent::start(&b, |_| {});
    let mut agents = vec![];
    for i in 0..2 {
        let mut a = prepare_sharing(&b, &first, |_| {});
        // The last agent fails the job: it finds SMX=1 in its environment.
        a.env.push(("SMX".into(), i.to_string()));
        a.spawn();
        a.wait_online(1);
        agents.push(a);
    }
    agents.insert(0, first);
    let ghost = "02-00-00-00-0F-FF";
    let macs = agents[0].dir.path().join("macs.txt");
    let mut list: Vec<String> = agents.iter().map(|a| a.mac.clone()).collect();
    list.push(ghost.into());
    std::fs::write(&macs, format!("# test fleet\n{}\n", list.join("\n"))).unwrap();
    let m = macs.to_str().unwrap();
    let fail_mac = agents[2].mac.clone();
    let cmd = "echo on x; [ \"$SMX\" != 1 ] || exit 5";
    let (code, out, err) = run(
        &agents[0],
        &[
            "fleet",
            "--macs",
            m,
            "--timeout",
            "5",
            "--show-output",
            "--",
            cmd,
        ],
    );
    assert_eq!(code, 75, "some did not answer\n{out}\n{err}");
    assert!(
        out.contains("fleet: 4 devices: ok 2, failed 1, rejected 0, no answer 1"),
        "{out}"
    );
    assert!(out.contains(&format!("no answer: {ghost}")), "{out}");
    assert!(out.contains(&format!("failed: {fail_mac}")), "{out}");
    assert!(
        out.contains(&format!("== {} (ok, exit 0,", agents[0].mac)),
        "{out}"
    );
    assert!(
        out.contains(&format!("== {fail_mac} (failed, exit 5,")),
        "{out}"
    );
    assert!(out.contains("on x\n"), "{out}");
    assert!(out.contains("slowest "), "{out}");
    // All answering: exit 0; JSON has a latency per device.
    std::fs::write(&macs, list[..3].join("\n")).unwrap();
    let (code, out, err) = run(&agents[0], &["fleet", "--macs", m, "--json", "--", "true"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], 3);
    assert!(v["all_answered_s"].as_f64().unwrap() > 0.0);
    assert!(v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["latency_s"].as_f64().is_some()));
    // --all-online finds the same three.
    let (code, out, err) = run(&agents[0], &["fleet", "--all-online", "--", "true"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("fleet: 3 devices: ok 3"), "{out}");
}

#[test]
fn signed_jobs_through_config_with_job_secret() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_secret"] = json!("s3cret"));
    // The agent's own config file: broker, topic, key, mac and the secret.
    let cfg = a.config_path.to_str().unwrap();
    let (code, out, err) = smctl(&["--config", cfg, "send", "--", "echo signed"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "signed\n");
    // Without the secret the agent refuses: REJECTED unsigned → 76.
    let (code, _, err) = run(&a, &["send", "--mac", &a.mac, "--", "echo unsigned"]);
    assert_eq!(code, 76, "{err}");
    assert!(err.contains("unsigned"), "{err}");
    // A wrong secret: bad_signature.
    let mut other = a.config();
    other["job_secret"] = json!("wrong");
    let path = a.dir.path().join("wrong.json");
    std::fs::write(&path, other.to_string()).unwrap();
    let (code, _, err) = smctl(&["--config", path.to_str().unwrap(), "op", "ping"]);
    assert_eq!(code, 76, "{err}");
    assert!(err.contains("bad_signature"), "{err}");
}

#[test]
fn broker_unreachable_exits_69() {
    let port = crate::support::free_port().to_string();
    let (code, _, err) = smctl(&["--port", &port, "--topic", "T", "--key", "K", "devices"]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("cannot connect to tcp://localhost:"), "{err}");
}
