//! Issue 5: process, daemon and service control, the heartbeat watchdog, healthz and usage,
//! with the real binary, a real mosquitto, real processes, real init scripts and real UDP.

use crate::support::{unsafe_free_kill, Agent, Broker, Topic};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Kills the processes it was given when dropped, so that a failing test leaves nothing
/// behind. Each pid is remembered with its start time and only killed while that still
/// matches: pids wrap quickly on a busy machine and a reused one belongs to someone else.
pub(crate) struct Reap(Vec<(u32, u64)>);

fn start_ticks(pid: u32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    t[t.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

impl Reap {
    pub(crate) fn new() -> Reap {
        Reap(Vec::new())
    }

    /// Remembers `pid` when its command line contains `needle` (proof that it is ours).
    pub(crate) fn add(&mut self, pid: u32, needle: &str) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if let (true, Some(t)) = (cmdline.contains(needle), start_ticks(pid)) {
            self.0.push((pid, t));
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        for (p, t) in &self.0 {
            if start_ticks(*p) == Some(*t) {
                unsafe_free_kill(*p, 9);
            }
        }
    }
}

pub(crate) fn ok(p: &Value) -> &Value {
    assert_eq!(p["meta"]["success"], true, "job failed: {p}");
    &p["meta"]["result"]
}

pub(crate) fn err(p: &Value) -> String {
    assert_eq!(p["meta"]["success"], false, "job should fail: {p}");
    p["meta"]["error"].as_str().unwrap_or_default().to_string()
}

/// Field 3 of /proc/<pid>/stat, read by the test itself.
fn proc_state(pid: u32) -> Option<char> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    t[t.rfind(')')? + 1..].trim().chars().next()
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn service_events(a: &Agent, name: &str) -> Vec<Value> {
    a.find(Topic::Status, |v| {
        v["event_type"] == "SERVICE" && v["meta"]["name"] == name
    })
    .into_iter()
    .map(|v| v["meta"].clone())
    .collect()
}

#[test]
fn process_start_list_pause_resume_info_stop_status() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let r = a.job(
        "process.start",
        json!({"path": "/bin/sleep", "args": ["60"]}),
    );
    let pid = ok(&r)["pid"].as_u64().unwrap() as u32;
    let mut reap = Reap::new();
    reap.add(pid, "sleep");
    assert_eq!(proc_state(pid).map(|s| s == 'S' || s == 'R'), Some(true));

    let list = a.job("process.list", json!({}));
    let l = ok(&list);
    assert!(l["started_by_agent"]
        .as_array()
        .unwrap()
        .contains(&json!(pid)));
    let procs = l["processes"].as_array().unwrap();
    let me = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("sleep in process.list");
    assert_eq!(me["name"], "sleep");
    assert_eq!(me["ppid"], a.pid().unwrap());
    for k in [
        "state",
        "user",
        "rss_bytes",
        "cpu_user_ms",
        "cpu_system_ms",
        "started",
    ] {
        assert!(!me[k].is_null(), "{k} missing in {me}");
    }
    let started = me["started"].as_u64().unwrap();
    assert!(
        started.abs_diff(crate::support::now()) < 30,
        "started {started}"
    );
    assert!(procs.iter().any(|p| p["pid"] == 1));

    // Pause: the kernel shows state T.
    ok(&a.job("process.signal", json!({"pid": pid, "signal": "SIGSTOP"})));
    wait_until("state T", T, || proc_state(pid) == Some('T'));
    let info = a.job("process.info", json!({"pid": pid}));
    let i = ok(&info);
    assert_eq!(i["state"], "T");
    assert_eq!(i["pid"], pid);
    assert_eq!(i["name"], "sleep");
    assert_eq!(i["cmdline"], json!(["/bin/sleep", "60"]));
    assert!(i["memory"]["rss"].as_u64().unwrap() > 0);
    assert!(i["cpu_usage"].as_f64().unwrap() >= 0.0);
    assert!(i["cpu_time"]["user"].as_u64().is_some());
    assert!(i["cpu_time"]["system"].as_u64().is_some());
    assert!(i["user"].as_str().is_some());
    assert_eq!(i["started"].as_u64().unwrap(), started);
    // Resume.
    ok(&a.job("process.signal", json!({"pid": pid, "signal": "SIGCONT"})));
    wait_until("state S", T, || proc_state(pid) == Some('S'));

    let st = a.job("process.status", json!({"pid": pid}));
    assert_eq!(ok(&st)["running"], true);
    let stop = a.job("process.stop", json!({"pid": pid, "grace": 3}));
    assert_eq!(ok(&stop), &json!({"exit_code": null, "signal": "SIGTERM"}));
    assert_eq!(proc_state(pid), None, "stopped process is gone (reaped)");
    let st = a.job("process.status", json!({"pid": pid}));
    assert_eq!(ok(&st)["running"], false);
    let list = a.job("process.list", json!({}));
    assert!(!ok(&list)["started_by_agent"]
        .as_array()
        .unwrap()
        .contains(&json!(pid)));

    // Exit codes of processes it started, env passed, no shell.
    let r = a.job(
        "process.start",
        json!({"path": "/bin/sh", "args": ["-c", "exit $CODE"], "env": {"CODE": "7"}}),
    );
    let pid2 = ok(&r)["pid"].as_u64().unwrap();
    wait_until("exit 7", T, || {
        let st = a.job("process.status", json!({"pid": pid2}));
        st["meta"]["result"]["running"] == false && st["meta"]["result"]["exit_code"] == 7
    });
    let r = a.job(
        "process.start",
        json!({"path": "/bin/echo", "args": ["$HOME; rm -rf /x"]}),
    );
    ok(&r);
}

#[test]
fn process_stop_kills_after_grace() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let ready = a.dir.path().join("ready");
    let script = format!(
        "trap '' TERM; touch {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let r = a.job(
        "process.start",
        json!({"path": "/bin/sh", "args": ["-c", script]}),
    );
    let pid = ok(&r)["pid"].as_u64().unwrap() as u32;
    let mut reap = Reap::new();
    reap.add(pid, "trap");
    wait_until("TERM trapped", T, || ready.exists());
    let t0 = Instant::now();
    let stop = a.job("process.stop", json!({"pid": pid, "grace": 1}));
    assert_eq!(ok(&stop), &json!({"exit_code": null, "signal": "SIGKILL"}));
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(proc_state(pid), None);
}

#[test]
fn process_errors_are_job_errors() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    // A pid that cannot exist (above pid_max): never one that existed, which may be reused.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = pid_max + 1;
    assert_eq!(
        err(&a.job("process.status", json!({"pid": gone}))),
        format!("no such pid: {gone}")
    );
    assert_eq!(
        err(&a.job("process.info", json!({"pid": gone}))),
        format!("no such pid: {gone}")
    );
    assert_eq!(
        err(&a.job("process.stop", json!({"pid": gone}))),
        format!("no such pid: {gone}")
    );
    assert_eq!(
        err(&a.job("process.signal", json!({"pid": gone, "signal": "SIGTERM"}))),
        format!("no such pid: {gone}")
    );
    assert_eq!(
        err(&a.job("process.signal", json!({"pid": 1, "signal": "SIGBOGUS"}))),
        "unknown signal: SIGBOGUS"
    );
    assert_eq!(
        err(&a.job("process.signal", json!({"pid": 1, "signal": "TERM"}))),
        "unknown signal: TERM"
    );
    assert_eq!(
        err(&a.job("process.start", json!({"path": "/no/such/prog"}))),
        "cannot start /no/such/prog: No such file or directory"
    );
    assert!(err(&a.job("process.start", json!({"path": "/etc/passwd"})))
        .starts_with("cannot start /etc/passwd: "));
    assert!(err(&a.job("process.status", json!({}))).contains("pid"));
    assert!(err(&a.job("process.status", json!({"pid": "12"}))).contains("pid"));
    assert!(err(&a.job("process.start", json!({"path": 5}))).contains("path"));
    assert!(
        err(&a.job("process.start", json!({"path": "/bin/true", "args": [{}]}))).contains("args")
    );
    // The agent itself is off limits.
    let own = a.pid().unwrap();
    assert!(
        err(&a.job("process.signal", json!({"pid": own, "signal": "SIGSTOP"})))
            .starts_with("forbidden")
    );
    // Still alive and answering.
    assert_eq!(a.job("ping", json!({}))["meta"]["success"], true);
}

const INIT_SCRIPT: &str = r#"#!/bin/sh
# A procd-style test init script; its state lives next to it.
S="$(dirname "$0")/$(basename "$0").state"
case "$1" in
  start) touch "$S" ;;
  stop) rm -f "$S" ;;
  restart) rm -f "$S"; touch "$S" ;;
  reload) test -e "$S" ;;
  running) test -e "$S" ;;
  enable) touch "$S.enabled" ;;
  disable) rm -f "$S.enabled" ;;
  enabled) test -e "$S.enabled" ;;
  *) echo "usage" >&2; exit 1 ;;
esac
"#;

#[test]
fn daemons_through_init_scripts() {
    let b = Broker::start();
    let a = Agent::prepare(&b, |c| {
        c["service_manager"] = json!("initd");
        c["daemons"] = json!(["alpha", "beta", "ghost"]);
    });
    let init = a.dir.path().join("init.d");
    std::fs::create_dir_all(&init).unwrap();
    write_exec(&init.join("alpha"), INIT_SCRIPT);
    write_exec(
        &init.join("beta"),
        "#!/bin/sh\ncase \"$1\" in status) exit 0;; *) exit 1;; esac\n",
    );
    write_exec(&init.join("gamma"), INIT_SCRIPT);
    let mut a = a;
    a.spawn();
    a.wait_online(1);

    let l = a.job("daemon.list", json!({}));
    assert_eq!(
        ok(&l),
        &json!({"daemons": [{"name": "alpha", "status": "stopped"}, {"name": "beta", "status": "running"}]})
    );
    assert_eq!(
        ok(&a.job("daemon.start", json!({"name": "alpha"}))),
        &json!({"name": "alpha", "status": "running"})
    );
    assert!(init.join("alpha.state").exists());
    let i = a.job("daemon.info", json!({"name": "alpha"}));
    assert_eq!(ok(&i)["status"], "running");
    assert_eq!(ok(&i)["enabled"], false);
    assert_eq!(
        ok(&a.job("daemon.enable", json!({"name": "alpha"})))["name"],
        "alpha"
    );
    assert_eq!(
        ok(&a.job("daemon.info", json!({"name": "alpha"})))["enabled"],
        true
    );
    ok(&a.job("daemon.disable", json!({"name": "alpha"})));
    assert_eq!(
        ok(&a.job("daemon.info", json!({"name": "alpha"})))["enabled"],
        false
    );
    assert_eq!(
        ok(&a.job("daemon.reload", json!({"name": "alpha"})))["status"],
        "running"
    );
    assert_eq!(
        ok(&a.job("daemon.restart", json!({"name": "alpha"})))["status"],
        "running"
    );
    assert_eq!(
        ok(&a.job("daemon.stop", json!({"name": "alpha"}))),
        &json!({"name": "alpha", "status": "stopped"})
    );
    assert!(!init.join("alpha.state").exists());
    // A failing action is an error naming the daemon.
    assert!(err(&a.job("daemon.reload", json!({"name": "alpha"}))).contains("alpha"));

    // Refusals.
    for bad in ["../alpha", "a/b", "..", "gamma"] {
        let e = err(&a.job("daemon.start", json!({"name": bad})));
        assert!(e.starts_with("forbidden:"), "{bad}: {e}");
    }
    assert!(!init.join("gamma.state").exists());
    assert!(err(&a.job("daemon.info", json!({"name": "ghost"}))).starts_with("no such daemon"));
    assert!(err(&a.job("daemon.start", json!({}))).contains("name"));

    // healthz lists the configured daemons.
    let h = a.job("healthz", json!({}));
    assert_eq!(
        ok(&h)["data"]["daemons"],
        json!([{"name": "alpha", "status": "stopped"}, {"name": "beta", "status": "running"}])
    );
}

#[test]
fn service_killed_from_outside_is_restarted_and_counted() {
    let b = Broker::start();
    let mut a = Agent::start(&b, |c| {
        c["services"] = json!([{"name": "web", "cmd": "exec sleep 120", "version": "1.4.0", "restart": "always"}]);
    });
    let ev = a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "SERVICE" && v["meta"]["status"] == "running",
        T,
    );
    assert_eq!(ev["meta"]["name"], "web");
    assert_eq!(ev["app"], "socketman");
    let pid1 = ev["meta"]["pid"].as_u64().unwrap() as u32;
    let mut reap = Reap::new();
    reap.add(pid1, "sleep");
    assert_eq!(proc_state(pid1).map(|s| s == 'S' || s == 'R'), Some(true));

    unsafe_free_kill(pid1, 9);
    wait_until("restart", T, || {
        service_events(&a, "web")
            .iter()
            .filter(|e| e["status"] == "running")
            .count()
            >= 2
    });
    let evs = service_events(&a, "web");
    let st: Vec<&str> = evs.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(st, vec!["running", "backoff", "running"]);
    let pid2 = evs[2]["pid"].as_u64().unwrap() as u32;
    reap.add(pid2, "sleep");
    assert_ne!(pid1, pid2);

    let l = a.job("service.list", json!({}));
    let s = &ok(&l)["services"][0];
    assert_eq!(s["name"], "web");
    assert_eq!(s["status"], "running");
    assert_eq!(s["pid"], pid2);
    assert_eq!(s["restarts"], 1);
    assert_eq!(s["version"], "1.4.0");
    assert!(s.get("last_heartbeat").is_some());

    let h = a.job("healthz", json!({}));
    let h = ok(&h);
    assert_eq!(h["data"]["services"][0]["restarts"], 1);
    assert_eq!(h["data"]["services"][0]["status"], "running");
    assert_eq!(h["meta"]["mqtt_status"]["is_connected"], true);
    assert_eq!(h["meta"]["agent"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["meta"]["agent"]["uptime"].as_u64().is_some());
    assert!(h["meta"]["network"].is_object());
    assert!(
        h["data"].get("daemons").is_none(),
        "no daemons allow-list: not listed"
    );

    // Jobs: stop, start, restart, unknown name.
    let s = a.job("service.stop", json!({"name": "web"}));
    assert_eq!(ok(&s)["status"], "stopped");
    assert_eq!(ok(&s)["pid"], Value::Null);
    assert_eq!(proc_state(pid2), None);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ok(&a.job("service.list", json!({})))["services"][0]["status"],
        "stopped",
        "stays stopped"
    );
    let s = a.job("service.start", json!({"name": "web"}));
    assert_eq!(ok(&s)["status"], "running");
    let pid3 = ok(&s)["pid"].as_u64().unwrap() as u32;
    reap.add(pid3, "sleep");
    let s = a.job("service.restart", json!({"name": "web"}));
    let pid4 = ok(&s)["pid"].as_u64().unwrap() as u32;
    reap.add(pid4, "sleep");
    assert_ne!(pid3, pid4);
    assert_eq!(ok(&s)["restarts"], 2);
    assert_eq!(
        err(&a.job("service.start", json!({"name": "nope"}))),
        "no such service: nope"
    );

    // A clean stop of the agent stops the service.
    let (st, _) = a.term();
    assert_eq!(st.code(), Some(0));
    assert_eq!(proc_state(pid4), None, "service stopped with the agent");
}

#[test]
fn always_failing_service_goes_fatal_with_events() {
    let b = Broker::start();
    let mut a = Agent::prepare(&b, |c| {
        c["services"] =
            json!([{"name": "crash", "cmd": "echo crashing; exit 4", "restart": "on-failure"}]);
    });
    // Back-off units of 20 ms instead of 1 s, so that ten failures take a second.
    a.env
        .push(("SOCKETMAN_TEST_BACKOFF_UNIT_MS".into(), "20".into()));
    a.spawn();
    a.wait_online(1);
    let f = a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "SERVICE" && v["meta"]["status"] == "fatal",
        T,
    );
    assert_eq!(
        f["meta"],
        json!({"name": "crash", "status": "fatal", "pid": null, "exit_code": 4})
    );
    let evs = service_events(&a, "crash");
    assert_eq!(
        evs.iter().filter(|e| e["status"] == "running").count(),
        10,
        "{evs:?}"
    );
    assert_eq!(evs.iter().filter(|e| e["status"] == "backoff").count(), 9);
    assert!(evs
        .iter()
        .filter(|e| e["status"] == "backoff")
        .all(|e| e["exit_code"] == 4));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        service_events(&a, "crash").len(),
        evs.len(),
        "nothing more once fatal"
    );
    let l = a.job("service.list", json!({}));
    assert_eq!(ok(&l)["services"][0]["status"], "fatal");
    assert_eq!(ok(&l)["services"][0]["restarts"], 9);
    // A job starts it again.
    let s = a.job("service.start", json!({"name": "crash"}));
    assert_eq!(ok(&s)["status"], "running");
    wait_until("new failures", T, || {
        service_events(&a, "crash").len() > evs.len() + 1
    });
}

/// A heartbeating program: three beats (bash's /dev/udp, the socket held open on fd 3 so
/// that socketman can see who sent them), then silence with the same pid.
fn heartbeat_script(dir: &Path, port: u16, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.sh"));
    let starts = dir.join(format!("{name}.starts"));
    write_exec(
        &path,
        &format!(
            r#"#!/bin/bash
echo $$ >> {starts}
exec 3<>/dev/udp/127.0.0.1/{port}
for i in 1 2 3; do
  printf '{{"command":"heart_beat","process_name":"{name}","pid_of_process":%d,"run_command":"exec /bin/bash {path}","version":{{"major":1,"minor":2,"patch":3}}}}' $$ >&3
  sleep 0.3
done
exec 3>&-
exec -a {dir}/{name}-silent sleep 120
"#,
            dir = dir.display(),
            starts = starts.display(),
            path = path.display(),
        ),
    );
    path
}

fn starts(dir: &Path, name: &str) -> Vec<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.starts")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn silent_heartbeat_process_is_killed_and_restarted() {
    let b = Broker::start();
    let port = free_udp_port();
    let mut a = Agent::start(&b, |c| {
        c["watchdog_port"] = json!(port);
        c["watchdog_timeout"] = json!(1);
    });
    let dir = a.dir.path().to_path_buf();
    let needle = dir.display().to_string();
    let script = heartbeat_script(&dir, port, "meter");
    let mut child = Command::new("/bin/bash").arg(&script).spawn().unwrap();
    let first = child.id();
    let mut reap = Reap::new();
    reap.add(first, &needle);
    // Garbage between the beats: counted, dropped, nothing else happens.
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for g in [
        &b"not json"[..],
        b"{\"process_name\":\"meter\"}",
        b"[]",
        b"{\"command\":\"heart_beat\",\"process_name\":\"x\",\"pid_of_process\":\"7\"}",
    ] {
        tx.send_to(g, ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let lost = a.wait_msg(Topic::Status, |v| v["event_type"] == "HEARTBEAT_LOST", T);
    assert_eq!(lost["meta"]["process_name"], "meter");
    assert_eq!(lost["meta"]["pid"], first);
    let new_pid = lost["meta"]["restarted_pid"]
        .as_u64()
        .expect("restarted_pid") as u32;
    reap.add(new_pid, &needle);
    assert_ne!(new_pid, first);
    // The silent one was killed with KILL.
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(9));
    // run_command ran again: the new process announced itself.
    wait_until("second start", T, || starts(&dir, "meter").len() >= 2);
    assert_eq!(starts(&dir, "meter")[1], new_pid);

    let h = a.job("healthz", json!({}));
    let h = ok(&h);
    let hb = h["data"]["heartbeats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["process_name"] == "meter")
        .unwrap()
        .clone();
    assert_eq!(hb["version"], "1.2.3");
    assert!(hb["restarts"].as_u64().unwrap() >= 1);
    assert!(hb["last_seen"].as_u64().unwrap() >= crate::support::now() - 60);
    assert_eq!(h["meta"]["watchdog"]["malformed"], 4);
    assert_eq!(
        a.count(Topic::Status, |v| v["event_type"] == "HEARTBEAT_LOST"
            && v["meta"]["pid"] == first),
        1
    );

    let _ = a.term();
    for p in starts(&dir, "meter") {
        reap.add(p, &needle);
    }
}

#[test]
fn silent_heartbeat_service_is_restarted_by_the_supervisor() {
    let b = Broker::start();
    let port = free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let needle = dir.path().display().to_string();
    let script = heartbeat_script(dir.path(), port, "hbsvc");
    let mut a = Agent::start(&b, |c| {
        c["watchdog_port"] = json!(port);
        c["watchdog_timeout"] = json!(1);
        c["services"] = json!([{"name": "hbsvc", "cmd": format!("exec /bin/bash {}", script.display()), "heartbeat": true}]);
    });
    let ev = a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "SERVICE" && v["meta"]["status"] == "running",
        T,
    );
    let pid1 = ev["meta"]["pid"].as_u64().unwrap() as u32;
    let mut reap = Reap::new();
    reap.add(pid1, &needle);
    let lost = a.wait_msg(Topic::Status, |v| v["event_type"] == "HEARTBEAT_LOST", T);
    assert_eq!(lost["meta"]["process_name"], "hbsvc");
    assert_eq!(lost["meta"]["pid"], pid1);
    let pid2 = lost["meta"]["restarted_pid"].as_u64().unwrap() as u32;
    reap.add(pid2, &needle);
    // The supervisor did it: a SERVICE event with the new pid, and the restart counted.
    a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "SERVICE" && v["meta"]["pid"] == pid2,
        T,
    );
    assert_eq!(proc_state(pid1), None);
    let l = a.job("service.list", json!({}));
    let s = &ok(&l)["services"][0];
    assert!(s["restarts"].as_u64().unwrap() >= 1);
    assert!(s["last_heartbeat"].as_u64().is_some());
    let _ = a.term();
    for p in starts(dir.path(), "hbsvc") {
        reap.add(p, &needle);
    }
}

#[test]
fn usage_reports_disks_and_memory() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let u = a.job("usage", json!({}));
    let u = ok(&u);
    let root = u["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mount"] == "/")
        .expect("/ listed")
        .clone();
    let (total, used, free) = (
        root["total"].as_u64().unwrap(),
        root["used"].as_u64().unwrap(),
        root["free"].as_u64().unwrap(),
    );
    assert!(total > 0 && used <= total && free <= total);
    let m = &u["memory"];
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(m["total"].as_u64().unwrap(), kb * 1024);
    assert!(m["available"].as_u64().unwrap() <= kb * 1024);
    assert!(m["free"].as_u64().unwrap() <= kb * 1024);
}

#[test]
fn healthz_reflects_the_connectivity_check() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let mut net = Value::Null;
    wait_until("a connectivity check in healthz", T, || {
        let h = a.job("healthz", json!({}));
        net = h["meta"]["result"]["meta"]["network"].clone();
        net["status"].is_u64()
    });
    let code = net["status"].as_u64().unwrap();
    assert_eq!(net["online"], code > 1, "{net}");
    assert!(net.get("wan_ip").is_some() && net.get("wan_gateway").is_some());
    // Nothing made up: no services, no heartbeats, no wifi without a station interface here.
    let h = a.job("healthz", json!({}));
    let h = ok(&h);
    assert_eq!(h["data"]["services"], json!([]));
    assert_eq!(h["data"]["heartbeats"], json!([]));
    assert_eq!(h["meta"]["watchdog"]["port"], Value::Null);
}
