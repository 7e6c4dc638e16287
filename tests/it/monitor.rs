//! Integration tests of connectivity, recovery, `network` jobs and provisioning (SPEC §6, §7,
//! §4.4) with the real `socketman` binary, a real mosquitto, real TCP listeners as health
//! targets, real shell scripts as `network_restart_cmd`/`reboot_cmd`, and a real HTTP server.
//!
//! Every agent runs with `SOCKETMAN_NO_FORCE_REBOOT=1` (the forced reboot(2) is skipped) and
//! `reboot_cmd` pointing at a recording script: no test can reboot the machine it runs on.
//! Test-only knobs used: `SOCKETMAN_TEST_MONITOR_MS` (check period), `SOCKETMAN_TEST_NETWORK_RECHECK_MS`
//! (network job re-check window), `SOCKETMAN_TEST_PROVISION_RETRY_MS` (provisioning retry).
//!
//! The helpers here start the binary themselves because these tests need things a plain
//! start does not give: extra environment variables, `-b` without a config, a second start on
//! the same state directory, and a network-namespace prefix.

use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A mosquitto on a free loopback port (or on `bind`), killed on drop.
struct Mosq {
    child: Child,
    port: u16,
    host: String,
    _dir: tempfile::TempDir,
}

impl Mosq {
    fn start_on(bind: &str) -> Mosq {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("m.conf");
        fs::write(
            &conf,
            format!("listener {port} {bind}\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            TcpStream::connect((bind, port)).ok()
        });
        Mosq {
            child,
            port,
            host: bind.to_string(),
            _dir: dir,
        }
    }

    fn start() -> Mosq {
        Mosq::start_on("127.0.0.1")
    }
}

impl Drop for Mosq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message on `status/#` and `pub/#`, received by a `mosquitto_sub` child.
struct Watch {
    child: Child,
    msgs: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Watch {
    fn start(b: &Mosq) -> Watch {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", &b.host, "-p", &b.port.to_string(), "-v", "-q", "1"])
            .args(["-t", "status/#", "-t", "pub/#"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some((topic, payload)) = line.split_once(' ') {
                    let v = serde_json::from_str(payload).unwrap_or(Value::Null);
                    m.lock().unwrap().push((topic.to_string(), v));
                }
            }
        });
        thread::sleep(Duration::from_millis(300));
        Watch { child, msgs }
    }

    fn all(&self, pred: impl Fn(&str, &Value) -> bool) -> Vec<Value> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, v)| pred(t, v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&str, &Value) -> bool) -> Value {
        wait_until(what, timeout, || self.all(&pred).into_iter().next())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_event(t: &str, v: &Value, ty: &str) -> bool {
    t.starts_with("status/") && v["event_type"] == ty
}

/// A TCP health target on a fixed port that is listening while `closed` (a file) does not
/// exist and closed while it does, so that shell commands run by the agent can break and
/// heal connectivity.
struct Target {
    port: u16,
    control: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Target {
    fn start(dir: &Path, bind: &'static str) -> Target {
        let port = free_port();
        let control = dir.join("target-closed");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (c, s, a) = (control.clone(), stop.clone(), accepted.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut listener: Option<TcpListener> = None;
            let mut ready = Some(ready_tx);
            while !s.load(Ordering::SeqCst) {
                let want_open = !c.exists();
                if want_open && listener.is_none() {
                    let l = TcpListener::bind((bind, port)).expect("rebind target port");
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                } else if !want_open && listener.is_some() {
                    listener = None; // closed: connects are refused from now on
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                if let Some(l) = &listener {
                    while let Ok((conn, _)) = l.accept() {
                        a.fetch_add(1, Ordering::SeqCst);
                        drop(conn);
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        ready_rx.recv().unwrap();
        Target {
            port,
            control,
            stop,
            accepted,
        }
    }

    fn close(&self) {
        fs::write(&self.control, "").unwrap();
        wait_until("target to close", Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err().then_some(())
        });
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A recording script: appends `<name> <unix time with ns>` to `file` and runs `extra`.
fn recorder(file: &Path, name: &str, extra: &str) -> String {
    format!(
        "echo \"{name} $(date +%s.%N)\" >> '{}'; {extra}",
        file.display()
    )
}

fn records(file: &Path) -> Vec<(String, f64)> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_string(), t.parse().ok()?))
        })
        .collect()
}

/// The socketman binary running on a config in `dir`, stderr captured in `dir/agent.log`.
struct Sm {
    child: Child,
    log: PathBuf,
}

impl Sm {
    fn spawn(dir: &Path, args: &[&str], env: &[(&str, String)], prefix: &[&str]) -> Sm {
        let log = dir.join("agent.log");
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_socketman");
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .env("DEBUG", "1")
            .env("SOCKETMAN_NO_FORCE_REBOOT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Sm {
            child: cmd.spawn().expect("socketman binary"),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, timeout: Duration) {
        wait_until(&format!("log line {what:?}"), timeout, || {
            self.log().contains(what).then_some(())
        });
    }

    fn term(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("---- agent log {} ----\n{}", self.log.display(), self.log());
        }
    }
}

/// A config for `b` with unique topic parts, health check at `target`, `dir` for state.
fn config(b: &Mosq, dir: &Path, target_port: u16, mac: &str) -> Value {
    json!({
        "topic": format!("mon{}", std::process::id()),
        "key": "k",
        "mqtt_host": b.host,
        "port": b.port,
        "mac": mac,
        "health_url": "127.0.0.1",
        "health_port": target_port,
        // RFC 6761: .invalid never resolves, so only the TCP part makes the device online
        // (CODE 4) and closing the target takes it offline (CODE 1). `localhost` would keep
        // CODE 6 (route + DNS), which SPEC §6 counts as online.
        "dns_check": "socketman-test.invalid",
        "reboot": 30,
        "state_dir": dir.join("state"),
        "cache_dir": dir.join("cache"),
    })
}

fn write_config(dir: &Path, cfg: &Value) -> PathBuf {
    let p = dir.join("config.json");
    fs::write(&p, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    p
}

fn fast_env() -> Vec<(&'static str, String)> {
    vec![("SOCKETMAN_TEST_MONITOR_MS", "500".into())]
}

#[test]
fn outage_runs_restart_then_reboot_once_each_and_reports_the_reboot_after_restart() {
    let b = Mosq::start();
    let w = Watch::start(&b);
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path(), "127.0.0.1");
    let rec = d.path().join("calls");
    let mut cfg = config(&b, d.path(), target.port, "02-00-00-00-00-01");
    cfg["network_restart_cmd"] = json!(recorder(&rec, "restart", ""));
    cfg["reboot_cmd"] = json!(recorder(&rec, "reboot", ""));
    let path = write_config(d.path(), &cfg);
    let mut sm = Sm::spawn(d.path(), &["-c", path.to_str().unwrap()], &fast_env(), &[]);
    sm.wait_log("connectivity CODE 4 (online)", Duration::from_secs(20));
    w.wait("online CONNECT", Duration::from_secs(20), |t, v| {
        is_event(t, v, "CONNECT") && v["meta"]["online"] == "1"
    });
    assert!(
        target.accepted.load(Ordering::SeqCst) > 0,
        "the check connects to health_url:health_port"
    );

    let outage = wall();
    target.close();
    let calls = wait_until("restart and reboot", Duration::from_secs(60), || {
        let r = records(&rec);
        (r.len() >= 2).then_some(r)
    });
    // Ten more checks: nothing runs twice.
    thread::sleep(Duration::from_secs(5));
    let calls_after = records(&rec);
    assert_eq!(calls_after.len(), 2, "each step once: {calls_after:?}");
    assert_eq!(calls[0].0, "restart");
    assert_eq!(calls[1].0, "reboot");
    let to_restart = calls[0].1 - outage;
    let to_reboot = calls[1].1 - outage;
    println!(
        "recovery timeline (reboot=30, check every 0.5 s): outage -> network_restart_cmd {to_restart:.2} s, -> reboot_cmd {to_reboot:.2} s"
    );
    // Never early: the timer starts at the first offline check, after the outage.
    assert!(to_restart >= 15.0, "restart after {to_restart:.2} s");
    assert!(to_reboot >= 30.0, "reboot after {to_reboot:.2} s");
    assert!(to_restart < 25.0 && to_reboot < 45.0, "{to_restart} {to_reboot}");

    let marker = d.path().join("state/reboot.json");
    let m: Value = serde_json::from_slice(&fs::read(&marker).expect("reboot.json")).unwrap();
    assert_eq!(m["reason"], "offline");
    assert!(m["offline_s"].as_u64().unwrap() >= 30, "{m}");
    let at = m["at"].as_f64().unwrap();
    assert!((at - calls[1].1).abs() < 3.0, "at {at} vs reboot {}", calls[1].1);
    assert!(
        w.all(|t, v| is_event(t, v, "RECOVERY")).is_empty(),
        "no RECOVERY while still offline"
    );
    assert!(sm.log().contains("no forced reboot"), "force step skipped in tests");

    // "After the reboot": a new process on the same state dir reports it once and removes it.
    sm.term();
    let mut sm2 = Sm::spawn(d.path(), &["-c", path.to_str().unwrap()], &fast_env(), &[]);
    let ev = w.wait("RECOVERY rebooted", Duration::from_secs(20), |t, v| {
        is_event(t, v, "RECOVERY") && v["meta"]["state"] == "rebooted"
    });
    assert_eq!(ev["meta"]["reason"], "offline");
    assert_eq!(ev["meta"]["offline_s"], m["offline_s"]);
    assert_eq!(ev["meta"]["at"], m["at"]);
    assert!(!marker.exists(), "reboot.json removed after publishing");
    sm2.term();
    let mut sm3 = Sm::spawn(d.path(), &["-c", path.to_str().unwrap()], &fast_env(), &[]);
    sm3.wait_log("monitor: connectivity check", Duration::from_secs(20));
    thread::sleep(Duration::from_secs(1));
    sm3.term();
    let rebooted = w.all(|t, v| is_event(t, v, "RECOVERY") && v["meta"]["state"] == "rebooted");
    assert_eq!(rebooted.len(), 1, "published once: {rebooted:?}");
}

#[test]
fn restart_that_heals_resets_the_timers_and_a_second_outage_starts_fresh() {
    let b = Mosq::start();
    let w = Watch::start(&b);
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path(), "127.0.0.1");
    let rec = d.path().join("calls");
    let mut cfg = config(&b, d.path(), target.port, "02-00-00-00-00-02");
    // The "network restart" brings the target back.
    cfg["network_restart_cmd"] = json!(recorder(
        &rec,
        "restart",
        &format!("rm -f '{}'", target.control.display())
    ));
    cfg["reboot_cmd"] = json!(recorder(&rec, "reboot", ""));
    let path = write_config(d.path(), &cfg);
    let sm = Sm::spawn(d.path(), &["-c", path.to_str().unwrap()], &fast_env(), &[]);
    sm.wait_log("connectivity CODE 4 (online)", Duration::from_secs(20));

    for round in 1..=2 {
        let outage = wall();
        target.close();
        let ev = w.wait("RECOVERY online", Duration::from_secs(40), |t, v| {
            is_event(t, v, "RECOVERY")
                && v["meta"]["state"] == "online"
                && v["meta"]["offline_s"].as_u64().unwrap_or(0) >= 15
                && w.all(|t, v| is_event(t, v, "RECOVERY")).len() >= round
        });
        let r = records(&rec);
        assert_eq!(r.len(), round, "one restart per outage: {r:?}");
        assert!(r.iter().all(|(n, _)| n == "restart"), "no reboot: {r:?}");
        let to_restart = r[round - 1].1 - outage;
        println!(
            "outage {round}: network_restart_cmd after {to_restart:.2} s, RECOVERY online offline_s={}",
            ev["meta"]["offline_s"]
        );
        // A second outage that inherited the old timer would reboot at once.
        assert!(to_restart >= 15.0, "outage {round}: restart after {to_restart:.2} s");
        thread::sleep(Duration::from_secs(2));
    }
    let online = w.all(|t, v| is_event(t, v, "RECOVERY") && v["meta"]["state"] == "online");
    assert_eq!(online.len(), 2, "{online:?}");
    for ev in &online {
        let s = ev["meta"]["offline_s"].as_u64().unwrap();
        assert!((15..25).contains(&s), "offline_s {s}");
    }
    assert!(!d.path().join("state/reboot.json").exists());
}

/// Sends a job on `sub/T/K/MAC` with mosquitto_pub.
fn send_job(b: &Mosq, cfg: &Value, job: &Value) {
    let topic = format!(
        "sub/{}/{}/{}",
        cfg["topic"].as_str().unwrap(),
        cfg["key"].as_str().unwrap(),
        cfg["mac"].as_str().unwrap()
    );
    let st = Command::new("mosquitto_pub")
        .args(["-h", &b.host, "-p", &b.port.to_string(), "-q", "1"])
        .args(["-t", &topic, "-m", &job.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn processed(w: &Watch, id: &str, timeout: Duration) -> Value {
    w.wait(&format!("PROCESSED {id}"), timeout, |t, v| {
        t.starts_with("pub/") && v["id"] == id && v["event_type"] == "PROCESSED"
    })
}

#[test]
fn network_job_that_breaks_connectivity_is_rolled_back_byte_for_byte() {
    let b = Mosq::start();
    let w = Watch::start(&b);
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path(), "127.0.0.1");
    let rec = d.path().join("calls");
    let etc = d.path().join("etc/config");
    fs::create_dir_all(&etc).unwrap();
    let network = etc.join("network");
    let wireless = etc.join("wireless");
    let net_bytes = b"config interface 'wan'\n\toption proto 'dhcp'\n".to_vec();
    let wifi_bytes: Vec<u8> = (0..=255u8).rev().collect();
    fs::write(&network, &net_bytes).unwrap();
    fs::set_permissions(&network, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&wireless, &wifi_bytes).unwrap();

    let mut cfg = config(&b, d.path(), target.port, "02-00-00-00-00-03");
    cfg["reboot"] = json!(600);
    cfg["network_backup_files"] = json!([network, wireless, etc.join("absent")]);
    // The rollback's restart heals the network (the target opens again).
    cfg["network_restart_cmd"] = json!(recorder(
        &rec,
        "restart",
        &format!("rm -f '{}'", target.control.display())
    ));
    let path = write_config(d.path(), &cfg);
    let env = vec![
        ("SOCKETMAN_TEST_MONITOR_MS", "500".to_string()),
        ("SOCKETMAN_TEST_NETWORK_RECHECK_MS", "4000".to_string()),
    ];
    let sm = Sm::spawn(d.path(), &["-c", path.to_str().unwrap()], &env, &[]);
    sm.wait_log("connectivity CODE 4 (online)", Duration::from_secs(20));
    w.wait("online CONNECT", Duration::from_secs(20), |t, v| {
        is_event(t, v, "CONNECT") && v["meta"]["online"] == "1"
    });

    // A harmless network job: not rolled back, its change stays.
    send_job(
        &b,
        &cfg,
        &json!({"id": "net-ok", "meta": {"type": "networking",
            "msg": format!("echo harmless; printf '# edited\\n' >> '{}'", network.display())}}),
    );
    let p = processed(&w, "net-ok", Duration::from_secs(30));
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(
        p["meta"]["result"],
        json!({"online_before": true, "online_after": true, "rolled_back": false})
    );
    assert!(fs::read_to_string(&network).unwrap().ends_with("# edited\n"));
    fs::write(&network, &net_bytes).unwrap();
    assert!(records(&rec).is_empty());

    // A breaking one: closes the health target and rewrites both backed-up files.
    let breaking = format!(
        "touch '{}'; printf 'option proto broken' > '{}'; : > '{}'; echo broke it",
        target.control.display(),
        network.display(),
        wireless.display()
    );
    send_job(
        &b,
        &cfg,
        &json!({"id": "net-bad", "meta": {"type": "network", "msg": breaking}}),
    );
    let p = processed(&w, "net-bad", Duration::from_secs(60));
    assert_eq!(
        p["meta"]["result"],
        json!({"online_before": true, "online_after": false, "rolled_back": true,
               "online_after_rollback": true}),
        "{p}"
    );
    assert_eq!(p["meta"]["msg"], "broke it\n");
    assert_eq!(p["meta"]["type"], "network");
    assert_eq!(fs::read(&network).unwrap(), net_bytes, "network restored");
    assert_eq!(fs::read(&wireless).unwrap(), wifi_bytes, "wireless restored");
    let mode = fs::metadata(&network).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert!(!etc.join("absent").exists());
    let r = records(&rec);
    assert_eq!(r.len(), 1, "network_restart_cmd once, by the rollback: {r:?}");
    assert!(sm.log().contains("recovery paused while a network job runs"));
    assert!(d.path().join("state/network-backup").is_dir());
}

/// A tiny HTTP/1.1 server: answers the scripted responses in order (the last one forever),
/// recording each request line and whether `watch` existed when the request came in.
struct Http {
    url: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

fn http_server(answers: Vec<(u16, String)>, watch: PathBuf) -> Http {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/init", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            seen2
                .lock()
                .unwrap()
                .push((line.trim().to_string(), watch.exists()));
            let (code, body) = &answers[i.min(answers.len() - 1)];
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.flush();
            let _ = r.read(&mut [0u8; 1]);
        }
    });
    Http { url, seen }
}

#[test]
fn provisioning_retries_through_503_and_invalid_bodies_then_comes_online() {
    let b = Mosq::start();
    let w = Watch::start(&b);
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path(), "127.0.0.1");
    let path = d.path().join("etc/socketman.json");
    let cfg = config(&b, d.path(), target.port, "02-00-00-00-00-04");
    let body = serde_json::to_string_pretty(&cfg).unwrap();
    let srv = http_server(
        vec![
            (503, "try later".into()),
            (503, "try later".into()),
            (200, r#"{"topic":"t","mqtt_host":"h"}"#.into()), // no key: invalid
            (200, "{\"topic\": ".into()),                     // malformed
            (201, body.clone()),
        ],
        path.clone(),
    );
    let env = vec![("SOCKETMAN_TEST_PROVISION_RETRY_MS", "300".to_string())];
    let started = Instant::now();
    let sm = Sm::spawn(
        d.path(),
        &["-c", path.to_str().unwrap(), "-b", &srv.url],
        &env,
        &[],
    );
    let on = w.wait("online CONNECT", Duration::from_secs(30), |t, v| {
        is_event(t, v, "CONNECT") && v["meta"]["online"] == "1"
    });
    println!(
        "provisioned and online after {:.1} s",
        started.elapsed().as_secs_f32()
    );
    assert_eq!(on["meta"]["client_id"], "sm-020000000004");
    let seen = srv.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for (i, (line, existed)) in seen.iter().enumerate() {
        assert!(line.starts_with("GET /init?mac="), "{line}");
        assert!(line.contains("&machine=") && line.contains("&firmware="), "{line}");
        assert!(!existed, "request {i}: nothing saved before the valid answer");
    }
    assert_eq!(fs::read_to_string(&path).unwrap(), body, "saved as served");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(sm.log().contains("provisioning: config written"));
}

#[test]
fn missing_config_without_init_url_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_socketman"))
        .arg("-c")
        .arg(d.path().join("none.json"))
        .env("DEBUG", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none.json") && err.contains("-b"), "{err}");
}

#[test]
fn boot_url_and_boot_cmd_run_at_start() {
    let b = Mosq::start();
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path(), "127.0.0.1");
    let srv = http_server(vec![(500, "oops".into())], d.path().join("x"));
    let mut cfg = config(&b, d.path(), target.port, "02-00-00-00-00-05");
    cfg["boot_url"] = json!(srv.url);
    cfg["token"] = json!("s3cret-token");
    cfg["boot_cmd"] = json!(format!("echo booted > '{}'", d.path().join("boot").display()));
    let path = write_config(d.path(), &cfg);
    let sm = Sm::spawn(d.path(), &["-c", path.to_str().unwrap()], &fast_env(), &[]);
    sm.wait_log("connectivity CODE 4", Duration::from_secs(20));
    let seen = srv.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].0,
        "GET /init?access_token=s3cret-token&mac=02-00-00-00-00-05 HTTP/1.1"
    );
    assert_eq!(fs::read_to_string(d.path().join("boot")).unwrap(), "booted\n");
    let log = sm.log();
    assert!(log.contains("boot_url") && log.contains("HTTP 500"), "{log}");
    assert!(!log.contains("s3cret-token"), "token redacted in the log");
}
