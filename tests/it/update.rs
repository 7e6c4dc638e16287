//! Issue 6: updates with rollback, against a real mosquitto, a real local HTTP server serving
//! artifacts built in the test, real service processes and the real socketman binary.
//! `service.update`: good update (single executable and .tar.gz), bad checksum, `../` archive,
//! dead URL, a version that crashes at once (rolled back). `agent.update`: to a copy of the
//! freshly built binary (re-exec, PROCESSED exactly once, not applied twice), and to a file
//! that fails `--version` (refused, old binary untouched); the rollbacks of a new binary
//! that cannot reach the broker (timer) or crash-loops.

use crate::support::{now, Agent, Broker, Topic};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A tiny HTTP/1.1 (or HTTPS) server for binary artifacts: GET path → 200 with the bytes,
/// else 404.
struct Artifacts {
    port: u16,
    scheme: &'static str,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

fn serve_one<S: Read + Write>(mut s: S, files: &Files) {
    let path = {
        let mut r = BufReader::new(&mut s);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
        }
        line.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    let body = files.lock().unwrap().get(&path).cloned();
    let (status, body) = match body {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", b"no such artifact".to_vec()),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(&body);
    let _ = s.flush();
}

impl Artifacts {
    fn start() -> Artifacts {
        Self::start_with(None)
    }

    /// HTTPS with the server certificate of `ca`.
    fn start_tls(ca: &crate::support::TestCa) -> Artifacts {
        let cert = std::fs::read(&ca.cert).unwrap();
        let key = std::fs::read(&ca.key).unwrap();
        let id = native_tls::Identity::from_pkcs8(&cert, &key).unwrap();
        Self::start_with(Some(Arc::new(native_tls::TlsAcceptor::new(id).unwrap())))
    }

    fn start_with(tls: Option<Arc<native_tls::TlsAcceptor>>) -> Artifacts {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let files: Files = Arc::default();
        let f2 = files.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (files, tls) = (f2.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    // A failed handshake (client refused the certificate) just ends here.
                    Some(acc) => {
                        if let Ok(t) = acc.accept(s) {
                            serve_one(t, &files);
                        }
                    }
                    None => serve_one(s, &files),
                });
            }
        });
        Artifacts {
            port,
            scheme,
            files,
        }
    }

    /// Serves `data` at `path`; returns (url, sha256).
    fn put(&self, path: &str, data: &[u8]) -> (String, String) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), data.to_vec());
        (
            format!("{}://127.0.0.1:{}{path}", self.scheme, self.port),
            sha(data),
        )
    }
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A service script: records its version and pid in `out`, then sleeps (or crashes).
fn svc_script(version: &str, out: &Path, crash: bool) -> Vec<u8> {
    let tail = if crash { "exit 3" } else { "exec sleep 1000" };
    format!(
        "#!/bin/sh\necho \"{version} $$ $(pwd)\" >> {}\n{tail}\n",
        out.display()
    )
    .into_bytes()
}

fn targz(entries: &[(&str, &[u8], u32)], raw_names: &[(&[u8], &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (p, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, *data).unwrap();
    }
    for (name, data) in raw_names {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// An agent with service `svc` (version 1.0 from `<dir>/app/svc`, started at once).
fn agent_with_service(b: &Broker) -> (Agent, PathBuf, tempfile::TempDir) {
    agent_with_service_cfg(b, |_| {})
}

/// As [`agent_with_service`], with more config changes.
fn agent_with_service_cfg(
    b: &Broker,
    edit: impl FnOnce(&mut Value),
) -> (Agent, PathBuf, tempfile::TempDir) {
    let app_dir = tempfile::tempdir().unwrap();
    let app = app_dir.path().to_path_buf();
    let out = app.join("runs.log");
    let script = app.join("svc");
    std::fs::write(&script, svc_script("1.0", &out, false)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = Agent::start(b, |c| {
        c["services"] = json!([{"name": "svc", "cmd": "exec ./svc", "dir": app, "version": "1.0",
                                "autostart": true, "restart": "always"}]);
        edit(c);
    });
    wait_service(&a, |s| s["status"] == "running" && s["version"] == "1.0");
    (a, out, app_dir)
}

fn service(a: &Agent) -> Value {
    let p = a.job("service.list", json!({}));
    assert_eq!(p["meta"]["success"], true, "{p}");
    p["meta"]["result"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "svc")
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_service(a: &Agent, pred: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = service(a);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "service never matched: {s}\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state(a: &Agent) -> PathBuf {
    a.dir.path().join("state")
}

fn current(a: &Agent) -> Option<PathBuf> {
    std::fs::read_link(state(a).join("services/svc/current")).ok()
}

fn update_job(a: &Agent, id: &str, args: Value) -> Value {
    a.send_job(
        &json!({"id": id, "timestamp": now(), "meta": {"type": "service.update", "args": args}}),
    );
    a.answer(id, T)
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn service_update_installs_reports_and_switches_current() {
    let b = Broker::start();
    let (a, out, _app) = agent_with_service(&b);
    let srv = Artifacts::start();

    // A single executable.
    let (url, sum) = srv.put("/svc-2.0", &svc_script("2.0", &out, false));
    let p = update_job(
        &a,
        "up-2",
        json!({"name": "svc", "url": url, "sha256": sum.to_uppercase(), "version": "2.0"}),
    );
    assert_eq!(p["meta"]["success"], true, "{p}\n{}", a.log());
    assert_eq!(
        p["meta"]["result"],
        json!({"name": "svc", "version": "2.0", "previous": "1.0", "rolled_back": false})
    );
    assert_eq!(current(&a), Some(PathBuf::from("2.0")));
    let s = service(&a);
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["version"], "2.0", "{s}");
    let runs = std::fs::read_to_string(&out).unwrap();
    let last = runs.lines().last().unwrap().to_string();
    assert!(last.starts_with(&format!("2.0 {} ", s["pid"])), "{runs}");
    assert!(
        last.ends_with("services/svc/current") || last.ends_with("services/svc/2.0"),
        "runs in the installed version: {runs}"
    );
    let h = a.job("healthz", json!({}));
    let hs = &h["meta"]["result"]["data"]["services"][0];
    assert_eq!(
        (hs["name"].as_str(), hs["version"].as_str()),
        (Some("svc"), Some("2.0")),
        "{h}"
    );
    let ev = a.find(Topic::Status, |v| {
        v["event_type"] == "SERVICE" && v["meta"]["status"] == "updating"
    });
    assert!(
        !ev.is_empty(),
        "status updating was published during the update"
    );

    // A .tar.gz with a subdirectory.
    let tgz = targz(
        &[
            ("svc", &svc_script("3.0", &out, false), 0o755),
            ("share/readme.txt", b"three", 0o644),
        ],
        &[],
    );
    let (url, sum) = srv.put("/svc-3.0.tar.gz", &tgz);
    let p = update_job(
        &a,
        "up-3",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "3.0"}),
    );
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(p["meta"]["result"]["previous"], "2.0");
    assert_eq!(current(&a), Some(PathBuf::from("3.0")));
    let dir = state(&a).join("services/svc");
    assert_eq!(
        std::fs::read(dir.join("current/share/readme.txt")).unwrap(),
        b"three"
    );
    assert!(dir.join("2.0/svc").exists(), "the previous version is kept");
    let s = wait_service(&a, |s| s["status"] == "running");
    assert_eq!(s["version"], "3.0");
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .starts_with("3.0 "));
}

#[test]
fn refused_updates_change_nothing() {
    let b = Broker::start();
    let (a, out, _app) = agent_with_service(&b);
    let before = service(&a);
    let srv = Artifacts::start();

    // Bad checksum.
    let (url, sum) = srv.put("/svc-2.0", &svc_script("2.0", &out, false));
    let wrong = format!(
        "{}{}",
        &sum[..63],
        if sum.ends_with('0') { "1" } else { "0" }
    );
    let p = update_job(
        &a,
        "bad-sum",
        json!({"name": "svc", "url": url, "sha256": wrong, "version": "2.0"}),
    );
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(
        p["meta"]["error"],
        format!("checksum mismatch: expected {wrong}, got {sum}")
    );

    // An archive with a ../ entry.
    let evil = targz(
        &[("svc", &svc_script("2.1", &out, false), 0o755)],
        &[(b"../../evil", b"x")],
    );
    let (url, sum) = srv.put("/svc-2.1.tgz", &evil);
    let p = update_job(
        &a,
        "bad-tar",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.1"}),
    );
    assert_eq!(p["meta"]["success"], false);
    let e = p["meta"]["error"].as_str().unwrap();
    assert!(e.contains("../../evil") && e.contains("'..'"), "{e}");

    // A dead URL.
    let port = crate::support::free_port();
    let p = update_job(
        &a,
        "dead",
        json!({"name": "svc", "url": format!("http://127.0.0.1:{port}/svc"), "sha256": sum, "version": "2.2"}),
    );
    assert_eq!(p["meta"]["success"], false);
    let e = p["meta"]["error"].as_str().unwrap();
    assert!(
        e.starts_with(&format!("download http://127.0.0.1:{port}/svc: ")),
        "{e}"
    );

    // A 404.
    let p = update_job(
        &a,
        "404",
        json!({"name": "svc", "url": format!("http://127.0.0.1:{}/nothing", srv.port), "sha256": sum, "version": "2.3"}),
    );
    assert!(
        p["meta"]["error"].as_str().unwrap().contains("HTTP 404"),
        "{p}"
    );

    // Bad args and an unknown service.
    let p = update_job(
        &a,
        "args",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "../x"}),
    );
    assert!(
        p["meta"]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid args"),
        "{p}"
    );
    let p = update_job(
        &a,
        "nosvc",
        json!({"name": "nope", "url": url, "sha256": sum, "version": "2"}),
    );
    assert_eq!(p["meta"]["error"], "no such service: nope");

    // Nothing changed: same process, no current, nothing left in the service directory.
    assert_eq!(current(&a), None);
    let after = service(&a);
    assert_eq!(after["pid"], before["pid"], "{after}");
    assert_eq!(after["status"], "running");
    assert_eq!(after["version"], "1.0");
    assert!(!a.dir.path().join("state/evil").exists() && !a.dir.path().join("evil").exists());
    let left: Vec<_> = std::fs::read_dir(state(&a).join("services/svc"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        1,
        "never restarted"
    );
}

#[test]
fn crashing_version_is_rolled_back() {
    let b = Broker::start();
    let (a, out, _app) = agent_with_service(&b);
    let srv = Artifacts::start();
    let (url, sum) = srv.put("/svc-2.0", &svc_script("2.0", &out, false));
    let p = update_job(
        &a,
        "good",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.0"}),
    );
    assert_eq!(p["meta"]["success"], true, "{p}");

    let (url, sum) = srv.put("/svc-bad", &svc_script("2.5", &out, true));
    let p = update_job(
        &a,
        "crash",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.5"}),
    );
    assert_eq!(p["meta"]["success"], false, "{p}");
    assert_eq!(
        p["meta"]["result"],
        json!({"name": "svc", "version": "2.5", "previous": "2.0", "rolled_back": true})
    );
    let e = p["meta"]["error"].as_str().unwrap();
    assert!(
        e.starts_with("new version did not stay up") && e.ends_with("rolled back to 2.0"),
        "{e}"
    );
    assert_eq!(current(&a), Some(PathBuf::from("2.0")));
    let s = wait_service(&a, |s| s["status"] == "running");
    assert_eq!(s["version"], "2.0");
    let runs = std::fs::read_to_string(&out).unwrap();
    assert!(runs.contains("\n2.5 "), "the new version did run: {runs}");
    let last = runs.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("2.0 {} ", s["pid"])),
        "old version running again: {runs}"
    );
    assert!(pid_alive(s["pid"].as_u64().unwrap()));
}

// --- agent.update --------------------------------------------------------------------

/// An agent (not started) that will run from a copy of the freshly built binary in its
/// temp dir, with a service `svc` (`sleep`).
fn prepare_from_copy(b: &Broker) -> (Agent, PathBuf, Vec<u8>) {
    let mut a = Agent::prepare(b, |c| {
        c["services"] = json!([{"name": "svc", "cmd": "exec sleep 1000", "autostart": true}]);
    });
    let bin_dir = a.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let exe = bin_dir.join("socketman");
    let bytes = std::fs::read(env!("CARGO_BIN_EXE_socketman")).unwrap();
    std::fs::write(&exe, &bytes).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    a.bin = exe.clone();
    (a, exe, bytes)
}

/// As [`prepare_from_copy`], started and online.
fn agent_from_copy(b: &Broker) -> (Agent, PathBuf, Vec<u8>) {
    let (mut a, exe, bytes) = prepare_from_copy(b);
    a.spawn();
    a.wait_online(1);
    (a, exe, bytes)
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn agent_update_reexecutes_and_answers_once() {
    let b = Broker::start();
    let (a, exe, bytes) = agent_from_copy(&b);
    let pid = a.pid().unwrap();
    let svc_before = wait_service(&a, |s| s["status"] == "running")["pid"]
        .as_u64()
        .unwrap();
    let srv = Artifacts::start();
    // The "new" build is another copy of this binary, marked so the switch is visible.
    let mut new = bytes.clone();
    new.extend_from_slice(b"\n-- new build --\n");
    let (url, sum) = srv.put("/socketman-next", &new);
    let version = env!("CARGO_PKG_VERSION");
    let job = json!({"id": "self-1", "timestamp": now(),
                     "meta": {"type": "agent.update", "args": {"url": url, "sha256": sum, "version": version}}});
    a.send_job(&job);
    let p = a.answer("self-1", T);
    assert_eq!(p["meta"]["success"], true, "{p}\n{}", a.log());
    assert_eq!(
        p["meta"]["result"],
        json!({"version": version, "previous": version})
    );
    a.wait_online(2);
    // Re-executed in place: same pid, a second start in the log, the new file in place.
    assert_eq!(a.pid(), Some(pid));
    assert!(pid_alive(pid as u64));
    let log = a.log();
    assert_eq!(log.matches("starting as").count(), 2, "{log}");
    assert_eq!(std::fs::read(&exe).unwrap(), new);
    assert_eq!(
        std::fs::read(exe.with_file_name("socketman.bak")).unwrap(),
        bytes
    );
    assert_eq!(
        dir_names(exe.parent().unwrap()),
        vec!["socketman", "socketman.bak"]
    );
    assert!(!a.dir.path().join("state/pending-update.json").exists());
    // The service was stopped before the re-exec and started by the new process.
    let svc_after = wait_service(&a, |s| s["status"] == "running")["pid"]
        .as_u64()
        .unwrap();
    assert_ne!(svc_after, svc_before);
    assert!(!pid_alive(svc_before), "no orphan of the old process");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "self-1"),
        1,
        "exactly one PROCESSED"
    );
    // The job is remembered: sent again, it is a duplicate and nothing is applied twice.
    a.send_job(&job);
    a.wait_msg(
        Topic::Delivery,
        |v| v["id"] == "self-1" && v["meta"]["duplicate"] == true,
        T,
    );
    let ping = a.job("ping", json!({}));
    assert_eq!(ping["meta"]["success"], true);
    std::thread::sleep(Duration::from_secs(1));
    let answers = a.count(Topic::Pub, |v| {
        v["id"] == "self-1" && v["event_type"] == "PROCESSED"
    });
    assert_eq!(
        answers, 2,
        "one PROCESSED, and the stored one again for the duplicate"
    );
    assert_eq!(
        a.count(Topic::Delivery, |v| v["id"] == "self-1"
            && v["meta"]["duplicate"] != true),
        1
    );
    assert_eq!(a.log().matches("re-executing /").count(), 1, "{}", a.log());
}

#[test]
fn agent_update_refuses_a_binary_that_fails_version() {
    let b = Broker::start();
    let (a, exe, bytes) = agent_from_copy(&b);
    let srv = Artifacts::start();
    let (url, sum) = srv.put("/broken", b"#!/bin/sh\necho 'cannot start' >&2\nexit 3\n");
    let p = a.job(
        "agent.update",
        json!({"url": url, "sha256": sum, "version": "9.9.9"}),
    );
    assert_eq!(p["meta"]["success"], false, "{p}");
    let e = p["meta"]["error"].as_str().unwrap();
    assert!(
        e.contains("--version failed") && e.contains("cannot start"),
        "{e}"
    );
    // Wrong checksum.
    let p = a.job(
        "agent.update",
        json!({"url": url, "sha256": "0".repeat(64), "version": "9.9.9"}),
    );
    assert!(
        p["meta"]["error"]
            .as_str()
            .unwrap()
            .starts_with("checksum mismatch"),
        "{p}"
    );
    // Old binary untouched, nothing left behind, still the first process.
    assert_eq!(std::fs::read(&exe).unwrap(), bytes);
    assert_eq!(dir_names(exe.parent().unwrap()), vec!["socketman"]);
    assert!(!a.dir.path().join("state/pending-update.json").exists());
    assert_eq!(a.log().matches("starting as").count(), 1);
    let ping = a.job("ping", json!({}));
    assert_eq!(ping["meta"]["success"], true);
}

#[test]
fn agent_update_version_check_leaves_no_child_behind() {
    // Issue 14: a new binary whose `--version` starts a child and then hangs: the check
    // times out, and its whole process group goes, the child included.
    let b = Broker::start();
    let (a, exe, bytes) = agent_from_copy(&b);
    let srv = Artifacts::start();
    let pidfile = a.dir.path().join("child.pid");
    let script = format!(
        "#!/bin/sh\nsleep 60 &\necho $! > {}\necho 'socketman 9.9.9'\nsleep 60\n",
        pidfile.display()
    );
    let (url, sum) = srv.put("/hangs", script.as_bytes());
    let p = a.job(
        "agent.update",
        json!({"url": url, "sha256": sum, "version": "9.9.9"}),
    );
    assert_eq!(p["meta"]["success"], false, "{p}");
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{child}")).exists()
        && std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < end,
            "the --version child {child} still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&exe).unwrap(), bytes);
}

fn marker(a: &Agent, exe: &Path, sha256: &str, extra: Value) -> PathBuf {
    let mut m = json!({"job_id": "self-9", "version": "9.9.9", "previous": env!("CARGO_PKG_VERSION"),
                       "path": exe, "at": now(), "sha256": sha256});
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    let p = a.dir.path().join("state/pending-update.json");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, m.to_string()).unwrap();
    p
}

#[test]
fn old_binary_reports_a_failed_update_once() {
    let b = Broker::start();
    // The marker of an update the new binary gave up on (no broker within 120 s).
    let (mut a, exe, _) = prepare_from_copy(&b);
    let why = "update to 9.9.9 failed: no broker connection within 120 s; rolled back";
    let p = marker(&a, &exe, &"ab".repeat(32), json!({"failed": why}));
    a.spawn();
    let ans = a.answer("self-9", T);
    assert_eq!(ans["meta"]["success"], false);
    assert_eq!(ans["meta"]["type"], "agent.update");
    assert_eq!(ans["meta"]["error"], why);
    assert!(!p.exists());
    // A marker for a binary that never took over (another sha256).
    a.term();
    marker(&a, &exe, &"cd".repeat(32), json!({"job_id": "self-10"}));
    a.spawn();
    let ans = a.answer("self-10", T);
    let e = ans["meta"]["error"].as_str().unwrap();
    assert!(e.contains("did not take over"), "{e}");
    a.term();
    a.spawn();
    a.wait_online(3);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "self-9"),
        1,
        "answered once"
    );
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "self-10"),
        1,
        "answered once"
    );
}

#[test]
fn new_binary_in_a_crash_loop_rolls_back_to_bak() {
    let b = Broker::start();
    let (mut a, exe, bytes) = prepare_from_copy(&b);
    // This start is the fourth of the "new" binary without reaching the broker.
    let bak = exe.with_file_name("socketman.bak");
    let mut old = bytes.clone();
    old.extend_from_slice(b"\n-- old build --\n");
    std::fs::write(&bak, &old).unwrap();
    std::fs::set_permissions(&bak, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = marker(&a, &exe, &sha(&bytes), json!({"starts": 3}));
    a.spawn();
    let ans = a.answer("self-9", T);
    assert_eq!(ans["meta"]["success"], false, "{ans}");
    let e = ans["meta"]["error"].as_str().unwrap();
    assert!(
        e.contains("started 3 times") && e.ends_with("rolled back"),
        "{e}"
    );
    assert_eq!(std::fs::read(&exe).unwrap(), old, ".bak is back in place");
    assert!(!bak.exists());
    assert!(!m.exists());
    let log = a.log();
    assert_eq!(log.matches("re-executing /").count(), 1, "{log}");
    assert_eq!(log.matches("starting as").count(), 2, "{log}");
}

/// Serves `data` once at `/next` and holds the answer until the test says go: the test
/// learns that the agent has started the download and can pull the broker away first.
fn gated_artifact(
    data: Vec<u8>,
) -> (
    String,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/next", l.local_addr().unwrap().port());
    let (asked_tx, asked_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let files: Files = Arc::default();
        files.lock().unwrap().insert("/next".into(), data);
        if let Ok((s, _)) = l.accept() {
            let _ = asked_tx.send(());
            if go_rx.recv().is_ok() {
                serve_one(s, &files);
            }
        }
    });
    (url, asked_rx, go_tx)
}

#[test]
fn new_binary_without_broker_rolls_back_when_the_timer_fires() {
    let mut b = Broker::start();
    let (mut a, exe, bytes) = prepare_from_copy(&b);
    // 3 s instead of 120 s, inherited by the re-executed process.
    a.env
        .push(("SOCKETMAN_TEST_UPDATE_DEADLINE_MS".into(), "3000".into()));
    a.spawn();
    a.wait_online(1);
    let pid = a.pid().unwrap();
    let mut new = bytes.clone();
    new.extend_from_slice(b"\n-- new build --\n");
    let sum = sha(&new);
    let (url, asked, go) = gated_artifact(new.clone());
    let version = env!("CARGO_PKG_VERSION");
    a.send_job(&json!({"id": "self-2", "timestamp": now(),
                       "meta": {"type": "agent.update", "args": {"url": url, "sha256": sum, "version": version}}}));
    asked
        .recv_timeout(T)
        .expect("the agent downloads the update");
    // The broker goes away before the new binary can reach it.
    b.stop();
    go.send(()).unwrap();
    // The new binary starts, waits 3 s, restores .bak and re-executes the old one.
    let end = Instant::now() + T;
    while a.log().matches("starting as").count() < 3 {
        assert!(Instant::now() < end, "no rollback\n{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = a.log();
    assert!(
        log.contains("no broker connection within 3 s; rolled back; restoring"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(&exe).unwrap(),
        bytes,
        "old binary back in place"
    );
    assert_eq!(dir_names(exe.parent().unwrap()), vec!["socketman"]);
    assert_eq!(a.pid(), Some(pid), "re-executed in place both times");
    assert!(pid_alive(pid as u64));
    // The broker comes back: the old binary answers the job, once, with the reason.
    b.restart();
    a.client = crate::support::Client::connect(b.port, &a.topic, &a.key, &a.mac);
    let ans = a.answer("self-2", T);
    assert_eq!(ans["meta"]["success"], false, "{ans}");
    assert_eq!(ans["meta"]["type"], "agent.update");
    assert_eq!(
        ans["meta"]["error"],
        format!("update to {version} failed: no broker connection within 3 s; rolled back")
    );
    assert!(!a.dir.path().join("state/pending-update.json").exists());
    let ping = a.job("ping", json!({}));
    assert_eq!(ping["meta"]["success"], true);
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "self-2"),
        1,
        "answered exactly once"
    );
    assert_eq!(a.log().matches("re-executing /").count(), 2, "{}", a.log());
}

#[test]
fn heartbeating_service_must_beat_after_the_update() {
    let b = Broker::start();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp);
    let app_dir = tempfile::tempdir().unwrap();
    let out = app_dir.path().join("runs.log");
    let script = app_dir.path().join("svc");
    std::fs::write(&script, svc_script("1.0", &out, false)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = Agent::start(&b, |c| {
        c["watchdog_port"] = json!(port);
        c["watchdog_timeout"] = json!(12);
        c["services"] = json!([{"name": "svc", "cmd": "exec ./svc", "dir": app_dir.path(),
                                "version": "1.0", "heartbeat": true}]);
    });
    wait_service(&a, |s| s["status"] == "running");
    // The test plays the heartbeats of version 2.0, once it runs.
    let beating = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (flag, runs) = (beating.clone(), out.clone());
    let beater = std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = 0;
        while flag.load(std::sync::atomic::Ordering::SeqCst) {
            let text = std::fs::read_to_string(&runs).unwrap_or_default();
            if let Some(line) = text.lines().last().filter(|l| l.starts_with("2.0 ")) {
                let pid: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
                let beat = json!({"process_name": "svc", "pid": pid, "run_command": "./svc",
                                  "version": {"major": 2, "minor": 0, "patch": 0}});
                sock.send_to(beat.to_string().as_bytes(), ("127.0.0.1", port))
                    .unwrap();
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        sent
    });
    let srv = Artifacts::start();
    let (url, sum) = srv.put("/svc-2.0", &svc_script("2.0", &out, false));
    let p = update_job(
        &a,
        "hb-2",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.0"}),
    );
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(p["meta"]["result"]["rolled_back"], false);
    beating.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(beater.join().unwrap() > 0);
    let s = service(&a);
    assert!(s["last_heartbeat"].as_u64().is_some(), "{s}");

    // 3.0 runs but never heartbeats: rolled back.
    let (url, sum) = srv.put("/svc-3.0", &svc_script("3.0", &out, false));
    let p = update_job(
        &a,
        "hb-3",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "3.0"}),
    );
    assert_eq!(p["meta"]["success"], false, "{p}");
    assert_eq!(p["meta"]["result"]["rolled_back"], true);
    let e = p["meta"]["error"].as_str().unwrap();
    assert!(
        e.starts_with("new version did not stay up") && e.ends_with("rolled back to 2.0"),
        "{e}"
    );
    assert_eq!(current(&a), Some(PathBuf::from("2.0")));
}

#[test]
fn https_downloads_verify_the_certificate_unless_insecure() {
    let b = Broker::start();
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::support::make_ca(certs.path(), "art");
    let srv = Artifacts::start_tls(&ca);

    // Trusted through cacrt.
    let (a, out, _app) = agent_with_service_cfg(&b, |c| c["cacrt"] = json!(ca.ca));
    let (url, sum) = srv.put("/svc-2.0", &svc_script("2.0", &out, false));
    assert!(url.starts_with("https://"));
    let p = update_job(
        &a,
        "tls-ok",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.0"}),
    );
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(current(&a), Some(PathBuf::from("2.0")));

    // Unknown CA: refused, nothing changed; with insecure (after HUP) it is accepted.
    let (a, out, _app) = agent_with_service(&b);
    let (url, sum) = srv.put("/svc-2.1", &svc_script("2.1", &out, false));
    let p = update_job(
        &a,
        "tls-bad",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.1"}),
    );
    assert_eq!(p["meta"]["success"], false, "{p}");
    let e = p["meta"]["error"].as_str().unwrap();
    assert!(e.starts_with(&format!("download {url}: ")), "{e}");
    assert_eq!(current(&a), None);
    let mut cfg = a.config();
    cfg["insecure"] = json!(1);
    a.write_config(&cfg);
    a.signal(1);
    let end = Instant::now() + Duration::from_secs(20);
    while !a.log().contains("reloaded") {
        assert!(Instant::now() < end, "no reload\n{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = update_job(
        &a,
        "tls-insecure",
        json!({"name": "svc", "url": url, "sha256": sum, "version": "2.1"}),
    );
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(current(&a), Some(PathBuf::from("2.1")));
}

#[test]
fn a_crash_between_the_answer_and_the_marker_removal_answers_once() {
    let b = Broker::start();
    // This start is the new binary confirming its update; it dies right after answering.
    let (mut a, exe, bytes) = prepare_from_copy(&b);
    let m = marker(&a, &exe, &sha(&bytes), json!({}));
    a.env
        .push(("SOCKETMAN_TEST_CRASH_AFTER_ANSWER".into(), "1".into()));
    a.spawn();
    let ans = a.answer("self-9", T);
    assert_eq!(ans["meta"]["success"], true, "{ans}");
    assert!(!a.wait_exit(T).success(), "the test build aborts");
    assert!(m.exists(), "the crash left the marker");
    // The next start finds the answer in the journal: the marker goes, no second answer.
    a.env.pop();
    a.spawn();
    a.wait_online(2);
    let ping = a.job("ping", json!({}));
    assert_eq!(ping["meta"]["success"], true);
    std::thread::sleep(Duration::from_secs(1));
    crate::support::assert_answered_once_across_crash(&a, "self-9", &m);
}
