//! Issue 14: hostile local input. An unprivileged heartbeat sender (`setpriv` to nobody)
//! cannot make socketman kill a root process or run a command as root; heartbeats and
//! `process.*` jobs naming init, socketman or one of its threads are refused; the agent
//! keeps running. Every process a test could wrongly kill is one the test started itself
//! (checked by start time), so a failure cannot hit the machine.

use crate::procs::{err, free_udp_port, ok, wait_until, Reap};
use crate::support::{Agent, Broker, Topic};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const NOBODY: &str = "65534";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// `argv` as nobody (uid/gid 65534, no groups).
fn as_nobody(argv: &[&str]) -> Child {
    Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .args(argv)
        .spawn()
        .expect("setpriv")
}

/// A bash that sends `beat` three times from one socket it keeps open, then sleeps.
fn sender_script(port: u16, beat: &Value) -> String {
    format!(
        "exec 3<>/dev/udp/127.0.0.1/{port}; for i in 1 2 3; do printf '%s' '{beat}' >&3; sleep 0.2; done; sleep 30"
    )
}

fn beat(name: &str, pid: u32, run: &str) -> Value {
    json!({"command": "heart_beat", "process_name": name, "pid_of_process": pid, "run_command": run})
}

fn heartbeat_names(a: &Agent) -> Vec<String> {
    let h = a.job("healthz", json!({}));
    ok(&h)["data"]["heartbeats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["process_name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn refused(a: &Agent) -> u64 {
    let h = a.job("healthz", json!({}));
    ok(&h)["meta"]["watchdog"]["refused"].as_u64().unwrap()
}

#[test]
fn unprivileged_heartbeat_cannot_kill_root_nor_run_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root to run a sender as nobody");
        return;
    }
    let b = Broker::start();
    let port = free_udp_port();
    let a = Agent::start(&b, |c| {
        c["watchdog_port"] = json!(port);
        c["watchdog_timeout"] = json!(1);
    });
    // A directory nobody may write to, for what nobody's command leaves.
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let needle = out.path().display().to_string();
    let mut reap = Reap::new();

    // Root's process; nobody claims it with a command that would leave a root-owned file.
    let mut root_victim = Command::new("sleep").arg("60").spawn().unwrap();
    let root_mark = out.path().join("root-mark");
    let theirs = beat(
        "theirs",
        root_victim.id(),
        &format!("touch {}", root_mark.display()),
    );
    // nobody's own process, claimed by nobody: restarted, as nobody, in a clean environment.
    let who = out.path().join("who");
    let mut own_victim = as_nobody(&["bash", "-c", &format!("exec -a {needle}/own sleep 60")]);
    reap.add(own_victim.id(), &needle);
    std::thread::sleep(Duration::from_millis(100));
    let mine = beat(
        "mine",
        own_victim.id(),
        &format!(
            "id -u > {w}.tmp; id -G >> {w}.tmp; env >> {w}.tmp; mv {w}.tmp {w}; exec -a {needle}/restarted sleep 30",
            w = who.display()
        ),
    );
    let mut s1 = as_nobody(&["bash", "-c", &sender_script(port, &theirs)]);
    let mut s2 = as_nobody(&["bash", "-c", &sender_script(port, &mine)]);

    let lost = a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "HEARTBEAT_LOST" && v["meta"]["process_name"] == "mine",
        T,
    );
    reap.add(
        lost["meta"]["restarted_pid"].as_u64().unwrap_or(0) as u32,
        &needle,
    );
    // nobody's own process was killed and its command ran as nobody, without our env.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(own_victim.wait().unwrap().signal(), Some(9));
    wait_until("the restart's output", T, || who.exists());
    let text = std::fs::read_to_string(&who).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(NOBODY), "{text}");
    assert_eq!(lines.next(), Some(NOBODY), "gid and no other group: {text}");
    assert!(!text.contains("SOCKETMAN"), "clean environment: {text}");
    assert!(
        text.contains("PATH=/usr/sbin:/usr/bin:/sbin:/bin"),
        "{text}"
    );

    // Root's process is alive, no root file, its name never made it into the table.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        root_victim.try_wait().unwrap().is_none(),
        "root's process lives"
    );
    assert!(!root_mark.exists(), "no command ran for the root process");
    assert!(!heartbeat_names(&a).contains(&"theirs".to_string()));
    assert!(refused(&a) >= 3, "the three beats naming root's process");
    assert_eq!(
        a.count(Topic::Status, |v| v["event_type"] == "HEARTBEAT_LOST"
            && v["meta"]["process_name"] == "theirs"),
        0
    );
    assert!(a
        .log()
        .contains("the process belongs to uid 0, the sender is uid 65534"));
    for c in [&mut root_victim, &mut s1, &mut s2] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn heartbeats_and_jobs_naming_socketman_or_init_are_refused() {
    let b = Broker::start();
    let port = free_udp_port();
    let a = Agent::start(&b, |c| {
        c["watchdog_port"] = json!(port);
        c["watchdog_timeout"] = json!(1);
    });
    let me = a.pid().unwrap();
    let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{me}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|t| *t != me)
        .collect();
    assert!(tids.len() >= 3, "socketman runs threads: {tids:?}");
    // Heartbeats from root naming socketman, its threads and init: refused, nothing killed.
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut names = vec![("self".to_string(), me)];
    names.extend(tids.iter().map(|t| (format!("thread{t}"), *t)));
    for (name, pid) in &names {
        let b = beat(name, *pid, "true").to_string();
        tx.send_to(b.as_bytes(), ("127.0.0.1", port)).unwrap();
    }
    // And a flood of distinct names: the table stays bounded.
    let filler = Command::new("sleep").arg("30").spawn().unwrap();
    for i in 0..300 {
        let b = beat(&format!("n{i}"), filler.id(), "").to_string();
        tx.send_to(b.as_bytes(), ("127.0.0.1", port)).unwrap();
        // Paced: a burst would overflow the socket's receive buffer (the kernel drops).
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(2500));
    // Jobs: init and socketman's threads are forbidden.
    let e = err(&a.job("process.signal", json!({"pid": 1, "signal": "SIGCONT"})));
    assert_eq!(e, "forbidden: 1 is init (pid 1)");
    let e = err(&a.job("process.stop", json!({"pid": 1, "grace": 0})));
    assert_eq!(e, "forbidden: 1 is init (pid 1)");
    for t in &tids {
        let e = err(&a.job("process.signal", json!({"pid": t, "signal": "SIGSTOP"})));
        assert_eq!(e, format!("forbidden: {t} is a thread of socketman"));
    }
    let e = err(&a.job("process.signal", json!({"pid": me, "signal": "SIGSTOP"})));
    assert_eq!(e, format!("forbidden: {me} is socketman itself"));
    // Alive, answering, nothing of socketman in the table, at most 256 names.
    assert_eq!(a.pid(), Some(me));
    let names_now = heartbeat_names(&a);
    assert!(
        names_now.iter().all(|n| n.starts_with('n')),
        "{names_now:?}"
    );
    assert_eq!(names_now.len(), 256);
    assert!(refused(&a) >= (names.len() + 300 - 256) as u64);
    assert_eq!(
        a.count(Topic::Status, |v| v["event_type"] == "HEARTBEAT_LOST"
            && v["meta"]["pid"] == me),
        0
    );
    let mut filler = filler;
    let _ = filler.kill();
    let _ = filler.wait();
}

#[test]
fn a_job_id_with_a_newline_cannot_forge_a_log_line() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let id = "x\n1700000000 ERROR forged line";
    a.send_job(&json!({"id": id, "meta": {"msg": "true"}}));
    let p = a.answer(id, T);
    assert_eq!(p["meta"]["success"], true);
    let log = a.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("1700000000 ERROR forged")),
        "{log}"
    );
    assert!(
        log.contains("job x\\n1700000000 ERROR forged line (cmd) accepted"),
        "{log}"
    );
}

#[test]
fn a_fifo_as_config_is_an_error_at_once() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("config.json");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    let arg = format!("--config={}", fifo.display());
    let (code, _, err) = crate::support::run_bin(&[&arg, "--check-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}
