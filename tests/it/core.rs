//! Issue 2: the core loop against a real mosquitto — round trips, failures, truncation,
//! timeouts, concurrency, malformed payloads, duplicates, offline delivery, broker restart,
//! last will, signed jobs, REST mode, TLS, command line, signals.

use crate::http::HttpServer;
use crate::support::{self, now, run_bin, Agent, Broker, Topic};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

#[test]
fn readme_job_round_trip_has_every_field() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    a.send_job(&json!({"id": "your-job-id", "timestamp": 1484484398, "meta": {"msg": "echo hello; uname -s", "type": "your-job-type"}}));
    let p = a.answer("your-job-id", T);
    let d = a.wait_msg(Topic::Delivery, |v| v["id"] == "your-job-id", T);
    assert_eq!(d["event_type"], "DELIVERED");
    assert_eq!(d["app"], "socketman");
    assert_eq!(d["meta"]["delivered"], true);
    assert!(d["timestamp"].as_u64().unwrap() >= now() - 60);
    assert_eq!(p["event_type"], "PROCESSED");
    assert_eq!(p["app"], "socketman");
    assert!(p["timestamp"].as_u64().unwrap() >= now() - 60);
    let m = &p["meta"];
    assert_eq!(m["msg"], "hello\nLinux\n");
    assert_eq!(m["type"], "your-job-type");
    assert_eq!(m["success"], true);
    assert_eq!(m["exit_code"], 0);
    assert_eq!(m["truncated"], false);
    assert!(m["duration_ms"].as_u64().is_some());
    // The online CONNECT is retained and carries client id and version.
    let c = a.wait_msg(Topic::Status, |v| v["event_type"] == "CONNECT", T);
    assert_eq!(
        c["meta"]["client_id"],
        format!("sm-{}", a.mac.replace('-', ""))
    );
    assert_eq!(c["meta"]["version"], env!("CARGO_PKG_VERSION"));
    let retained = a
        .client
        .all()
        .into_iter()
        .any(|m| m.topic == Topic::Status && m.json["event_type"] == "CONNECT");
    assert!(retained);
}

#[test]
fn failing_command_reports_exit_code_and_stderr() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let p = a.run("fail-1", "echo to-stderr >&2; exit 7");
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(p["meta"]["exit_code"], 7);
    assert_eq!(p["meta"]["msg"], "to-stderr\n");
    let p = a.run("fail-2", "/no/such/program");
    assert_eq!(p["meta"]["exit_code"], 127);
    assert!(p["meta"]["msg"].as_str().unwrap().contains("not found"));
}

#[test]
fn output_is_truncated_at_job_output_max() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_output_max"] = json!(1000));
    let p = a.run("trunc", "yes abcdefgh | head -c 50000");
    assert_eq!(p["meta"]["truncated"], true);
    assert_eq!(p["meta"]["msg"].as_str().unwrap().len(), 1000);
    assert_eq!(p["meta"]["success"], true);
}

#[test]
fn timeout_kills_the_job_and_its_children() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let pidfile = a.dir.path().join("child.pid");
    let cmd = format!(
        "sh -c 'sleep 600' & echo $! > {}; sleep 600",
        pidfile.display()
    );
    a.send_job(&json!({"id": "slow", "meta": {"msg": cmd, "timeout": 1}}));
    let p = a.answer("slow", T);
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(p["meta"]["exit_code"], Value::Null);
    assert_eq!(p["meta"]["error"], "timeout");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(300));
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false);
    assert!(!alive, "child {pid} of the timed-out job survived");
}

#[test]
fn two_jobs_run_side_by_side() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_workers"] = json!(2));
    let start = Instant::now();
    a.send_job(&json!({"id": "par-1", "meta": {"msg": "sleep 2; echo one"}}));
    a.send_job(&json!({"id": "par-2", "meta": {"msg": "sleep 2; echo two"}}));
    let p1 = a.answer("par-1", T);
    let p2 = a.answer("par-2", T);
    assert_eq!(
        (p1["meta"]["msg"].as_str(), p2["meta"]["msg"].as_str()),
        (Some("one\n"), Some("two\n"))
    );
    assert!(
        start.elapsed() < Duration::from_millis(3900),
        "ran one after the other: {:?}",
        start.elapsed()
    );
}

#[test]
fn malformed_payloads_are_rejected_and_the_agent_stays_up() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let big = format!(
        r#"{{"id":"big","meta":{{"msg":"{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "invalid: not JSON"),
        (b"".to_vec(), "invalid: empty"),
        (vec![0, 159, 146, 150, 255], "invalid: not UTF-8"),
        (b"[1,2]".to_vec(), "invalid: expected a JSON object"),
        (
            br#"{"meta":{"msg":"id"}}"#.to_vec(),
            "invalid: \"id\" is missing",
        ),
        (
            br#"{"id":42,"meta":{"msg":"x"}}"#.to_vec(),
            "invalid: \"id\" must be a string",
        ),
        (
            format!(r#"{{"id":"{}","meta":{{"msg":"x"}}}}"#, "i".repeat(100)).into_bytes(),
            "invalid: \"id\" is 100 characters",
        ),
        (big.into_bytes(), "invalid: message is"),
        (deep.into_bytes(), "invalid: not JSON"),
        (
            br#"{"id":"nometa"}"#.to_vec(),
            "invalid: \"meta\" is missing",
        ),
        (
            br#"{"id":"nomsg","meta":{}}"#.to_vec(),
            "invalid: \"meta.msg\"",
        ),
        (
            br#"{"id":"badtype","meta":{"msg":"x","type":[]}}"#.to_vec(),
            "invalid: \"meta.type\"",
        ),
        (
            br#"{"id":"dotted","meta":{"type":"nope.nothing"}}"#.to_vec(),
            "unknown_type:",
        ),
        (br#"null"#.to_vec(), "invalid: expected a JSON object"),
    ];
    for (payload, _) in &cases {
        a.send_raw(payload);
    }
    a.wait_msg(
        Topic::Pub,
        |v| {
            v["meta"]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("invalid: expected a JSON object, found null"))
        },
        T,
    );
    let rejected = a.find(Topic::Pub, |v| v["event_type"] == "REJECTED");
    for (payload, want) in &cases {
        assert!(
            rejected.iter().any(|r| r["meta"]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(want))),
            "no REJECTED starting with {want:?} for {:?}; got {rejected:#?}",
            String::from_utf8_lossy(&payload[..payload.len().min(40)])
        );
    }
    assert_eq!(rejected.len(), cases.len());
    assert!(rejected
        .iter()
        .all(|r| r["app"] == "socketman" && r["timestamp"].is_u64()));
    let nomsg = rejected
        .iter()
        .find(|r| r["id"] == "nomsg")
        .expect("REJECTED carries the id when valid");
    assert!(nomsg["meta"]["error"].is_string());
    assert_eq!(
        a.count(Topic::Delivery, |_| true),
        0,
        "nothing was DELIVERED"
    );
    assert_eq!(a.run("after", "echo alive")["meta"]["msg"], "alive\n");
}

#[test]
fn repeated_id_is_not_rerun_also_across_restart() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    let marker = a.dir.path().join("runs");
    let cmd = format!("echo x >> {}; echo done", marker.display());
    let first = a.run("dup-1", &cmd);
    a.send_job(&json!({"id": "dup-1", "meta": {"msg": cmd}}));
    a.wait_msg(
        Topic::Delivery,
        |v| v["id"] == "dup-1" && v["meta"]["duplicate"] == true,
        T,
    );
    let end = Instant::now() + T;
    while a.count(Topic::Pub, |v| v["id"] == "dup-1") < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let answers = a.find(Topic::Pub, |v| v["id"] == "dup-1");
    assert_eq!(answers.len(), 2, "the stored PROCESSED is sent again");
    assert_eq!(answers[1]["meta"], first["meta"]);
    a.term();
    a.spawn();
    a.wait_online(2);
    a.send_job(&json!({"id": "dup-1", "meta": {"msg": cmd}}));
    a.wait_msg(
        Topic::Delivery,
        |v| v["id"] == "dup-1" && v["meta"]["duplicate"] == true,
        T,
    );
    a.run("dup-2", "true");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "x\n",
        "ran exactly once"
    );
}

#[test]
fn job_sent_while_stopped_runs_after_start() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    a.term();
    a.send_job(&json!({"id": "while-away", "meta": {"msg": "echo later"}}));
    std::thread::sleep(Duration::from_millis(300));
    a.spawn();
    let p = a.answer("while-away", T);
    assert_eq!(p["meta"]["msg"], "later\n");
}

#[test]
fn jobs_run_after_broker_restart() {
    let mut b = Broker::start();
    let a = Agent::start(&b, |_| {});
    assert_eq!(a.run("before", "echo 1")["meta"]["msg"], "1\n");
    b.restart();
    // The test client lost its session too: reconnect it.
    let mut a = a;
    a.client = support::Client::connect(b.port, &a.topic, &a.key, &a.mac);
    a.wait_online(1);
    assert_eq!(a.run("after-restart", "echo 2")["meta"]["msg"], "2\n");
}

#[test]
fn last_will_on_kill_9_and_offline_connect_on_term() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    a.kill9();
    // The broker notices the dead socket at once (connection reset) and sends the will.
    let will = a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "CONNECT" && v["meta"]["online"] == "0",
        Duration::from_secs(60),
    );
    assert_eq!(
        will["meta"]["client_id"],
        format!("sm-{}", a.mac.replace('-', ""))
    );
    a.spawn();
    a.wait_online(2);
    let (st, took) = a.term();
    assert_eq!(st.code(), Some(0));
    assert!(took < Duration::from_secs(15), "{took:?}");
    let offline = a.count(Topic::Status, |v| {
        v["event_type"] == "CONNECT" && v["meta"]["online"] == "0"
    });
    assert_eq!(offline, 2);
}

#[test]
fn term_gives_running_jobs_time_then_answers_them() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    a.send_job(&json!({"id": "long", "meta": {"msg": "sleep 60"}}));
    a.wait_msg(Topic::Delivery, |v| v["id"] == "long", T);
    std::thread::sleep(Duration::from_millis(300));
    let (st, took) = a.term();
    assert_eq!(st.code(), Some(0));
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let p = a.answer("long", T);
    assert_eq!(p["meta"]["success"], false);
    assert!(
        p["meta"]["error"].as_str().unwrap().contains("stopping"),
        "{p}"
    );
}

#[test]
fn signed_jobs() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_secret"] = json!("s3cret"));
    let sign = |inner: &Value, key: &str| {
        let text = inner.to_string();
        json!({"signed": text, "sig": socketman::jobs::intake::sign(key, &text)})
    };
    let good = json!({"id": "s-good", "timestamp": now(), "meta": {"msg": "echo signed"}});
    a.send_job(&sign(&good, "s3cret"));
    assert_eq!(a.answer("s-good", T)["meta"]["msg"], "signed\n");
    a.send_job(&sign(
        &json!({"id": "s-bad", "timestamp": now(), "meta": {"msg": "echo no"}}),
        "wrong",
    ));
    assert!(a.answer("s-bad", T)["meta"]["error"]
        .as_str()
        .unwrap()
        .starts_with("bad_signature"));
    a.send_job(&json!({"id": "s-none", "timestamp": now(), "meta": {"msg": "echo no"}}));
    assert!(a.answer("s-none", T)["meta"]["error"]
        .as_str()
        .unwrap()
        .starts_with("unsigned"));
    a.send_job(&sign(
        &json!({"id": "s-old", "timestamp": now() - 3600, "meta": {"msg": "echo no"}}),
        "s3cret",
    ));
    assert!(a.answer("s-old", T)["meta"]["error"]
        .as_str()
        .unwrap()
        .starts_with("expired"));
    assert_eq!(a.count(Topic::Delivery, |_| true), 1);
}

#[test]
fn allow_list_ping_and_queue_limits() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| {
        c["job_types"] = json!(["cmd", "ping"]);
        c["job_workers"] = json!(1);
        c["job_queue"] = json!(1);
    });
    let p = a.job("ping", json!({}));
    assert_eq!(p["meta"]["success"], true);
    assert_eq!(p["meta"]["result"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(p["meta"]["result"]["uptime"].as_u64().unwrap() > 0);
    a.send_job(&json!({"id": "net", "meta": {"type": "network", "msg": "true"}}));
    assert!(a.answer("net", T)["meta"]["error"]
        .as_str()
        .unwrap()
        .starts_with("forbidden"));
    // One running, one queued, the third is busy.
    let started = a.dir.path().join("q0-started");
    a.send_job(
        &json!({"id": "q0", "meta": {"msg": format!("touch {}; sleep 5", started.display())}}),
    );
    let end = Instant::now() + T;
    while !started.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    a.send_job(&json!({"id": "q1", "meta": {"msg": "sleep 1"}}));
    a.wait_msg(Topic::Delivery, |v| v["id"] == "q1", T);
    a.send_job(&json!({"id": "q2", "meta": {"msg": "sleep 1"}}));
    let busy = a.answer("q2", T);
    assert_eq!(busy["event_type"], "REJECTED");
    assert!(busy["meta"]["error"].as_str().unwrap().starts_with("busy"));
    assert_eq!(a.answer("q1", T)["meta"]["success"], true);
}

#[test]
fn rest_mode_patches_the_api_and_retries_while_it_is_down() {
    let api = HttpServer::start(|_| Some((503, "{}".into())));
    let b = Broker::start();
    let url = api.url("/v1");
    let mut a = Agent::start(&b, |c| {
        c["rest"] = json!(1);
        c["api_url"] = json!(url);
        c["token"] = json!("tok-123");
    });
    a.send_job(&json!({"id": "rest/1", "meta": {"msg": "echo via rest"}}));
    a.wait_msg(Topic::Delivery, |v| v["id"] == "rest/1", T);
    let end = Instant::now() + T;
    while api.requests().len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        api.requests().len() >= 2,
        "retried while the API answers 503"
    );
    // The API stays down across a restart of the agent: the notification is kept on disk.
    a.term();
    api.set_handler(|_| Some((200, "{}".into())));
    a.spawn();
    let end = Instant::now() + T;
    loop {
        let ok = api
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .count();
        if ok >= 3 || Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reqs = api.requests();
    let last = reqs.last().expect("a request");
    assert_eq!(last.method, "PATCH");
    assert_eq!(last.path(), "/v1/operations/rest%2F1");
    assert_eq!(
        last.query().get("access_token").map(String::as_str),
        Some("tok-123")
    );
    assert_eq!(last.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    // Issue 16: a C-era API reads `success` and `msg`; `output` (the C README's name) carries
    // the same text, `exit_code` and `type` are socketman's additions.
    assert_eq!(
        body,
        json!({"success": true, "msg": "via rest\n", "output": "via rest\n", "exit_code": 0, "type": "cmd"})
    );
    assert!(body["success"].is_boolean() && body["msg"].is_string());
    assert_eq!(body["msg"], body["output"]);
    std::thread::sleep(Duration::from_millis(1500));
    let n = api.requests().len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(api.requests().len(), n, "no more requests after a 2xx");
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "rest/1"),
        0,
        "result went by REST, not MQTT"
    );
    assert!(!a.log().contains("tok-123"), "token leaked into the log");
}

#[test]
fn tls_with_the_right_ca_and_refused_with_the_wrong_one() {
    let b = Broker::start_tls();
    let ca = b.ca.clone().unwrap();
    let tls_port = b.tls_port.unwrap();
    let a = Agent::start(&b, |c| {
        c["tls"] = json!(true);
        c["port"] = json!(tls_port);
        c["cacrt"] = json!(ca);
    });
    assert_eq!(a.run("tls-1", "echo secure")["meta"]["msg"], "secure\n");
    let other = tempfile::tempdir().unwrap();
    let wrong = support::make_ca(other.path(), "wrong").ca;
    let mut bad = Agent::prepare(&b, |c| {
        c["tls"] = json!(true);
        c["port"] = json!(tls_port);
        c["cacrt"] = json!(wrong);
    });
    bad.spawn();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        bad.count(Topic::Status, |v| v["event_type"] == "CONNECT"),
        0,
        "connected with the wrong CA"
    );
    assert!(
        bad.log().contains("MQTT connect to ssl://127.0.0.1"),
        "{}",
        bad.log()
    );
    bad.kill9();
}

#[test]
fn command_line_and_config_errors() {
    let (code, out, _) = run_bin(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("socketman {} (", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let (code, out, _) = run_bin(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--check-config") && out.contains("--init-url"));
    assert_eq!(run_bin(&[]).0, 2);
    assert_eq!(run_bin(&["--what"]).0, 2);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    std::fs::write(&p, r#"{"topic":"t","key":"k","mqtt_host":"h","password":"hunter2","token":"tok","job_secret":"js"}"#).unwrap();
    let ps = format!("--config={}", p.display());
    let (code, out, _) = run_bin(&[&ps, "--check-config"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["password"].as_str(),
            v["token"].as_str(),
            v["job_secret"].as_str()
        ),
        (Some("***"), Some("***"), Some("***"))
    );
    assert_eq!(v["monitor"], 15);
    std::fs::write(&p, "{\n \"topic\": \"t\",\n \"key\": \"k\",\n \"mqtt_host\": \"h\",\n \"monitor\": \"often\"\n}").unwrap();
    let (code, _, err) = run_bin(&[&ps, "--check-config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&p.display().to_string())
            && err.contains("\"monitor\"")
            && err.contains("line 5"),
        "{err}"
    );
    std::fs::write(&p, "{\"topic\": \"t\",,}").unwrap();
    let (code, _, err) = run_bin(&[&ps, "--check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("line 1, column"), "{err}");
    assert!(!err.contains("panicked"));
    let (code, _, err) = run_bin(&["--config=/nonexistent/c.json"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/c.json") && err.contains("-b"),
        "{err}"
    );
}

#[test]
fn hup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let b = Broker::start();
    let a = Agent::start(&b, |c| c["job_output_max"] = json!(100));
    let mut cfg = a.config();
    cfg["job_output_max"] = json!(5000);
    a.write_config(&cfg);
    a.signal(1);
    let end = Instant::now() + T;
    while !a.log().contains("reloaded") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = a.run("hup-1", "head -c 3000 /dev/zero | tr '\\0' x");
    assert_eq!(p["meta"]["msg"].as_str().unwrap().len(), 3000);
    std::fs::write(&a.config_path, "{ broken").unwrap();
    a.signal(1);
    let end = Instant::now() + T;
    while !a.log().contains("keeping the running config") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.log().contains("keeping the running config"));
    let p = a.run("hup-2", "head -c 3000 /dev/zero | tr '\\0' x");
    assert_eq!(
        p["meta"]["msg"].as_str().unwrap().len(),
        3000,
        "still the reloaded config"
    );
}

#[test]
fn hup_with_new_mqtt_settings_restarts_in_place_on_the_new_topic() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    let pid = a.pid();
    let new_key = format!("{}x", a.key);
    let mut cfg = a.config();
    cfg["key"] = json!(new_key);
    a.write_config(&cfg);
    let moved = support::Client::connect(b.port, &a.topic, &new_key, &a.mac);
    a.signal(1);
    a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "CONNECT" && v["meta"]["online"] == "0",
        T,
    );
    let _old = std::mem::replace(&mut a.client, moved);
    a.key = new_key;
    a.wait_online(1);
    assert_eq!(a.pid(), pid);
    assert!(
        a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the process re-executed itself, it did not exit"
    );
    assert_eq!(a.run("after-hup", "echo moved")["meta"]["msg"], "moved\n");
    assert!(a.log().contains("restarting in place"), "{}", a.log());
}

#[test]
fn a_panic_in_a_worker_ends_the_process_and_a_respawn_answers_the_job() {
    // Panic policy: a panic anywhere is logged once and aborts, so that procd/systemd start
    // a fresh process (a live process with a dead thread would hear nothing). The
    // `test.panic` job type exists only in test-hooks builds.
    let b = Broker::start();
    let mut a = Agent::start(&b, |_| {});
    a.send_job(&json!({"id": "boom", "timestamp": now(), "meta": {"type": "test.panic"}}));
    // The abort may come before the DELIVERED leaves the outbox (as with kill -9): the job
    // is in the seen-id journal all the same, so the next process answers it.
    let mut child = a.child.take().expect("running");
    let end = Instant::now() + T;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < end,
            "still running after the panic\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "aborted (SIGABRT): {status:?}");
    let log = a.log();
    assert_eq!(
        log.matches("panic in thread job-worker-").count(),
        1,
        "logged once\n{log}"
    );
    assert_eq!(a.count(Topic::Pub, |v| v["id"] == "boom"), 0);
    // What procd/systemd do: start it again. The interrupted job is answered once.
    a.spawn();
    let p = a.answer("boom", T);
    assert_eq!(p["event_type"], "PROCESSED");
    assert_eq!(p["meta"]["success"], false);
    assert!(
        p["meta"]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("interrupted"),
        "{p}"
    );
    assert_eq!(p["meta"]["type"], "test.panic", "the type is kept: {p}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "boom"),
        1,
        "answered once"
    );
    let _ = a.term();
}

#[test]
fn jobs_not_started_at_a_kill_run_after_the_restart_and_started_ones_are_interrupted() {
    // One worker: "long" runs, "q1" and "q2" wait behind it. kill -9, start again: "long"
    // is answered as interrupted (type kept), "q1" and "q2" run then, in order, once.
    let b = Broker::start();
    let mut a = Agent::start(&b, |c| c["job_workers"] = json!(1));
    let dir = a.dir.path().to_path_buf();
    let order = dir.join("order");
    a.send_job(&json!({"id": "long", "timestamp": now(), "meta": {"msg": "sleep 30"}}));
    a.wait_msg(Topic::Delivery, |v| v["id"] == "long", T);
    for q in ["q1", "q2"] {
        let cmd = format!("echo {q} $$ >> {}", order.display());
        a.send_job(&json!({"id": q, "timestamp": now(), "meta": {"msg": cmd}}));
        a.wait_msg(Topic::Delivery, |v| v["id"] == q, T);
    }
    assert!(a.log().contains("job long (cmd) running"));
    a.kill9();
    assert!(!order.exists(), "nothing of the queued jobs ran");
    a.spawn();
    let long = a.answer("long", T);
    assert_eq!(long["meta"]["success"], false);
    assert_eq!(long["meta"]["type"], "cmd", "{long}");
    assert!(long["meta"]["error"]
        .as_str()
        .unwrap_or("")
        .starts_with("interrupted"));
    for q in ["q1", "q2"] {
        let p = a.answer(q, T);
        assert_eq!(p["meta"]["success"], true, "{p}");
    }
    let ran: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(ran, vec!["q1", "q2"], "in order, once each");
    // Once: another restart answers nothing again and runs nothing again.
    let _ = a.term();
    let online = a.count(Topic::Status, |v| {
        v["event_type"] == "CONNECT" && v["meta"]["online"] == "1"
    });
    a.spawn();
    a.wait_online(online + 1);
    std::thread::sleep(Duration::from_millis(500));
    for id in ["long", "q1", "q2"] {
        assert_eq!(
            a.count(Topic::Pub, |v| v["id"] == id),
            1,
            "{id} answered once"
        );
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap().lines().count(), 2);
    let _ = a.term();
}
