//! The heartbeat watchdog (SPEC §8.2): UDP datagrams on `127.0.0.1:watchdog_port`, a table of
//! heartbeating processes, KILL and restart of the silent ones, HEARTBEAT_LOST events.
//!
//! Threads: one `watchdog` thread ([`spawn`]) receives datagrams (1 s read timeout, so it
//! sees the stop request), keeps the table in [`Shared`] (`agent.control.watchdog`, also read
//! by healthz and the supervisor) and acts on expired entries. The timing is the pure
//! [`Table`], driven with `Instant`s.
//!
//! Timing: each beat gives its process `watchdog_timeout` seconds until the next one is due.
//! After socketman restarted a process, the new one gets a first grace of the same length
//! before that: it is restarted again when no beat came `2 × watchdog_timeout` after the
//! restart.
#![forbid(unsafe_code)]

use crate::agent::Agent;
use crate::platform::process::{self, Leftovers, Spec, Streams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One parsed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub process_name: String,
    pub pid: i32,
    pub run_command: Option<String>,
    /// `"major.minor.patch"`.
    pub version: Option<String>,
}

/// Parses a datagram in either SPEC form; `Err` says why it is malformed.
pub fn parse(data: &[u8]) -> Result<Beat, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let pid_key = match o.get("command") {
        None => "pid",
        Some(Value::String(c)) if c == "heart_beat" => "pid_of_process",
        Some(c) => return Err(format!("unknown command {c}")),
    };
    let name = o
        .get("process_name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("missing or empty \"process_name\"")?;
    let pid = o
        .get(pid_key)
        .and_then(Value::as_i64)
        .filter(|p| *p > 1 && *p <= i64::from(i32::MAX))
        .ok_or_else(|| format!("missing or invalid \"{pid_key}\""))? as i32;
    let run_command = match o.get("run_command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"run_command\" is not a string".into()),
    };
    let version = match o.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Object(vo)) => {
            let part = |k: &str| -> Result<u64, String> {
                match vo.get(k) {
                    None => Ok(0),
                    Some(n) => n
                        .as_u64()
                        .ok_or_else(|| format!("\"version.{k}\" is not a number")),
                }
            };
            Some(format!(
                "{}.{}.{}",
                part("major")?,
                part("minor")?,
                part("patch")?
            ))
        }
        Some(_) => return Err("\"version\" is not an object".into()),
    };
    Ok(Beat {
        process_name: name.to_string(),
        pid,
        run_command,
        version,
    })
}

/// One heartbeating process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pid: i32,
    pub run_command: Option<String>,
    pub version: Option<String>,
    /// Unix time of the last beat.
    pub last_seen: u64,
    pub restarts: u64,
    /// Start time (clock ticks after boot) of `pid` when known: a KILL only goes to the same
    /// process, never to one that got its pid later.
    pub pid_start: Option<u64>,
    /// When it is considered lost.
    pub deadline: Instant,
    /// It was lost and could not be restarted: nothing more until it beats again.
    pub lost: bool,
}

/// The heartbeat table. Pure: every call takes `now`.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub entries: BTreeMap<String, Entry>,
}

impl Table {
    /// Records a beat at `now` (`unix`: the same moment as Unix time); `pid_start` is the
    /// start time of the beat's pid, when it could be read.
    pub fn beat(
        &mut self,
        b: Beat,
        pid_start: Option<u64>,
        timeout: Duration,
        now: Instant,
        unix: u64,
    ) {
        let deadline = now + timeout;
        match self.entries.get_mut(&b.process_name) {
            Some(e) => {
                e.pid = b.pid;
                e.pid_start = pid_start;
                if b.run_command.is_some() {
                    e.run_command = b.run_command;
                }
                if b.version.is_some() {
                    e.version = b.version;
                }
                e.last_seen = unix;
                e.deadline = deadline;
                e.lost = false;
            }
            None => {
                self.entries.insert(
                    b.process_name,
                    Entry {
                        pid: b.pid,
                        run_command: b.run_command,
                        version: b.version,
                        last_seen: unix,
                        restarts: 0,
                        pid_start,
                        deadline,
                        lost: false,
                    },
                );
            }
        }
    }

    /// Names of the processes whose deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.lost && e.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// `name` was restarted at `now` as `new_pid` (`None`: could not be restarted). The new
    /// process gets a grace of `timeout` plus the usual `timeout` for its first beat.
    pub fn restarted(
        &mut self,
        name: &str,
        new_pid: Option<i32>,
        pid_start: Option<u64>,
        timeout: Duration,
        now: Instant,
    ) {
        if let Some(e) = self.entries.get_mut(name) {
            match new_pid {
                Some(p) => {
                    e.pid = p;
                    e.pid_start = pid_start;
                    e.restarts += 1;
                    e.deadline = now + timeout * 2;
                }
                None => e.lost = true,
            }
        }
    }
}

/// The watchdog state shared with healthz and the supervisor.
#[derive(Default)]
pub struct Shared {
    table: Mutex<Table>,
    /// Malformed datagrams dropped so far. (Counters are `AtomicUsize`: 32-bit MIPS, the
    /// usual OpenWrt CPU, has no `AtomicU64`.)
    pub malformed: AtomicUsize,
    /// Datagrams accepted so far.
    pub beats: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Unix time of the last beat of `name`.
    pub fn last_seen(&self, name: &str) -> Option<u64> {
        self.lock().entries.get(name).map(|e| e.last_seen)
    }

    /// healthz `heartbeats` entries.
    pub fn entries(&self) -> Vec<Value> {
        self.lock()
            .entries
            .iter()
            .map(|(n, e)| {
                json!({"process_name": n, "pid": e.pid, "version": e.version,
                       "last_seen": e.last_seen, "restarts": e.restarts})
            })
            .collect()
    }
}

fn timeout_of(agent: &Agent) -> Duration {
    Duration::from_secs(agent.cfg().watchdog_timeout.max(1))
}

/// Starts `/bin/sh -c cmd` in its own process group; a thread reaps it.
fn run_command(cmd: &str) -> Result<i32, String> {
    // Its own group, socketman's stdout/stderr; the reaper thread only reaps it.
    let spec = Spec::shell(cmd).streams(Streams::Inherit);
    process::spawn_supervised(&spec, Leftovers::Keep, &|_| {}, |_| {})
        .map(|c| c.pid())
        .map_err(|e| format!("cannot run {cmd:?}: {}", e.error))
}

/// Handles one lost process: KILL and restart (or restart through the supervisor).
fn recover(agent: &Agent, name: &str) {
    let timeout = timeout_of(agent);
    let entry = match agent.control.watchdog.lock().entries.get(name) {
        Some(e) => e.clone(),
        None => return,
    };
    let old = entry.pid;
    log::warn!(
        "watchdog: {name} (pid {old}) silent for {}s, restarting",
        timeout.as_secs()
    );
    let new_pid = if crate::services::supervisor::heartbeats(agent, name) {
        match crate::services::supervisor::restart(agent, name) {
            Ok(v) => v.get("pid").and_then(Value::as_i64).map(|p| p as i32),
            Err(e) => {
                log::error!("watchdog: restart of service {name} failed: {e}");
                None
            }
        }
    } else {
        let me = std::process::id() as i32;
        let same = matches!(crate::services::procs::read_stat(old),
            Ok(s) if Some(s.starttime) == entry.pid_start && s.state != 'Z');
        if old > 1 && old != me && same {
            if let Err(e) = crate::platform::sys::kill(old, libc::SIGKILL) {
                log::warn!("watchdog: KILL of {name} pid {old} failed: {e}");
            }
        } else {
            log::info!("watchdog: {name} pid {old} is gone (or its pid was reused): not killed");
        }
        match entry.run_command.as_deref() {
            Some(cmd) => match run_command(cmd) {
                Ok(p) => Some(p),
                Err(e) => {
                    log::error!("watchdog: {name}: {e}");
                    None
                }
            },
            None => {
                log::error!("watchdog: {name} sent no run_command, cannot restart it");
                None
            }
        }
    };
    let new_start = new_pid.and_then(|p| {
        crate::services::procs::read_stat(p)
            .ok()
            .map(|s| s.starttime)
    });
    agent
        .control
        .watchdog
        .lock()
        .restarted(name, new_pid, new_start, timeout, Instant::now());
    agent.outbox.status_event(
        "HEARTBEAT_LOST",
        json!({"process_name": name, "pid": old, "restarted_pid": new_pid}),
    );
}

/// Starts the watchdog thread when `watchdog_port` is not 0.
pub fn spawn(agent: &Arc<Agent>) {
    let port = agent.cfg().watchdog_port;
    if port == 0 {
        log::info!("watchdog: off (watchdog_port 0)");
        return;
    }
    let sock = match UdpSocket::bind(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => {
            log::error!("watchdog: cannot listen on 127.0.0.1:{port}/udp: {e}");
            return;
        }
    };
    if let Err(e) = sock.set_read_timeout(Some(Duration::from_secs(1))) {
        log::error!("watchdog: cannot set a read timeout: {e}");
        return;
    }
    log::info!("watchdog: listening on 127.0.0.1:{port}/udp");
    let a = Arc::clone(agent);
    let r = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || serve(&a, &sock));
    if let Err(e) = r {
        log::error!("cannot start the watchdog thread: {e}");
    }
}

fn serve(agent: &Agent, sock: &UdpSocket) {
    let mut buf = [0u8; 2048];
    while !agent.stopping() {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => match parse(&buf[..n]) {
                Ok(b) => {
                    log::debug!("watchdog: beat from {} pid {}", b.process_name, b.pid);
                    agent.control.watchdog.beats.fetch_add(1, Ordering::Relaxed);
                    let start = crate::services::procs::read_stat(b.pid)
                        .ok()
                        .map(|s| s.starttime);
                    agent.control.watchdog.lock().beat(
                        b,
                        start,
                        timeout_of(agent),
                        Instant::now(),
                        crate::proto::now(),
                    );
                }
                Err(e) => {
                    let c = agent
                        .control
                        .watchdog
                        .malformed
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    log::warn!(
                        "watchdog: malformed datagram from {from} dropped ({e}); {c} so far"
                    );
                }
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log::warn!("watchdog: receive failed: {e}");
                if agent.wait_stop(Duration::from_millis(500)) {
                    break;
                }
            }
        }
        let expired = agent.control.watchdog.lock().expired(Instant::now());
        for name in expired {
            if agent.stopping() {
                break;
            }
            recover(agent, &name);
        }
    }
    log::info!("watchdog: stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn beat(name: &str, pid: i32) -> Beat {
        Beat {
            process_name: name.into(),
            pid,
            run_command: Some("true".into()),
            version: None,
        }
    }

    #[test]
    fn silent_process_is_killed_and_restarted() {
        let d = tempfile::tempdir().unwrap();
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = crate::config::Config {
            watchdog_port: port,
            watchdog_timeout: 2,
            state_dir: d.path().join("state"),
            ..Default::default()
        };
        let a = Agent::new(cfg, d.path().join("c.json"), None, "AA-BB".into());
        spawn(&a);
        let mut victim = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let marker = d.path().join("restarted");
        let hb = json!({"command":"heart_beat","process_name":"p","pid_of_process":victim.id(),
            "run_command": format!("echo yes > {}; exec sleep 30", marker.display()),
            "version":{"major":1,"minor":2,"patch":3}})
        .to_string();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Beats and garbage for 3 s (longer than the timeout): nothing happens.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            tx.send_to(hb.as_bytes(), ("127.0.0.1", port)).unwrap();
            tx.send_to(b"{garbage", ("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(a.outbox.drain().is_empty());
        assert!(victim.try_wait().unwrap().is_none());
        assert!(a.control.watchdog.malformed.load(Ordering::Relaxed) >= 5);
        // Silence.
        let lost = loop {
            let m = a
                .outbox
                .pop(Duration::from_secs(5))
                .expect("HEARTBEAT_LOST");
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            if v["event_type"] == "HEARTBEAT_LOST" {
                break v["meta"].clone();
            }
        };
        assert_eq!(lost["process_name"], "p");
        assert_eq!(lost["pid"], victim.id());
        let status = victim.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let new_pid = lost["restarted_pid"].as_i64().unwrap() as i32;
        assert!(crate::services::procs::alive(new_pid));
        for _ in 0..100 {
            if marker.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(marker.exists());
        let e = a.control.watchdog.entries();
        assert_eq!(e[0]["version"], "1.2.3");
        assert_eq!(e[0]["restarts"], 1);
        assert_eq!(e[0]["pid"], new_pid);
        a.request_stop();
        crate::platform::sys::kill_group(new_pid, libc::SIGKILL).unwrap();
    }

    #[test]
    fn both_forms() {
        let a = parse(br#"{"process_name":"ocr","pid":444,"run_command":"python3 x.py","version":{"major":1,"minor":0,"patch":2}}"#).unwrap();
        assert_eq!(
            a,
            Beat {
                process_name: "ocr".into(),
                pid: 444,
                run_command: Some("python3 x.py".into()),
                version: Some("1.0.2".into())
            }
        );
        let b = parse(br#"{"command":"heart_beat","process_name":"ocr","pid_of_process":445,"run_command":"x","version":{"major":2,"minor":10,"patch":0}}"#).unwrap();
        assert_eq!(b.pid, 445);
        assert_eq!(b.version.as_deref(), Some("2.10.0"));
        let c = parse(br#"{"process_name":"p","pid":9}"#).unwrap();
        assert_eq!((c.run_command, c.version), (None, None));
    }

    #[test]
    fn malformed() {
        for d in [
            &b"garbage"[..],
            b"[1,2]",
            b"{}",
            br#"{"process_name":"x"}"#,
            br#"{"process_name":"","pid":5}"#,
            br#"{"process_name":"x","pid":"5"}"#,
            br#"{"process_name":"x","pid":1}"#,
            br#"{"process_name":"x","pid":-3}"#,
            br#"{"command":"heart_beat","process_name":"x","pid":5}"#,
            br#"{"command":"reboot","process_name":"x","pid":5}"#,
            br#"{"process_name":"x","pid":5,"version":"1.0"}"#,
            br#"{"process_name":"x","pid":5,"version":{"major":"1"}}"#,
            br#"{"process_name":"x","pid":5,"run_command":3}"#,
            b"\xff\xfe",
        ] {
            assert!(parse(d).is_err(), "{}", String::from_utf8_lossy(d));
        }
    }

    #[test]
    fn silence_expires_after_timeout() {
        let t0 = Instant::now();
        let to = Duration::from_secs(10);
        let mut t = Table::default();
        t.beat(beat("a", 100), None, to, t0, 1000);
        assert!(t.expired(t0 + Duration::from_secs(9)).is_empty());
        t.beat(beat("a", 100), None, to, t0 + Duration::from_secs(9), 1009);
        assert!(t.expired(t0 + Duration::from_secs(18)).is_empty());
        assert_eq!(
            t.expired(t0 + Duration::from_secs(19)),
            vec!["a".to_string()]
        );
        assert_eq!(t.entries["a"].last_seen, 1009);
    }

    #[test]
    fn restarted_process_gets_a_grace() {
        let t0 = Instant::now();
        let to = Duration::from_secs(10);
        let mut t = Table::default();
        t.beat(beat("a", 100), None, to, t0, 1000);
        let lost = t0 + Duration::from_secs(10);
        assert_eq!(t.expired(lost).len(), 1);
        t.restarted("a", Some(200), None, to, lost);
        assert_eq!(t.entries["a"].restarts, 1);
        assert_eq!(t.entries["a"].pid, 200);
        assert!(t.expired(lost + Duration::from_secs(19)).is_empty());
        assert_eq!(t.expired(lost + Duration::from_secs(20)).len(), 1);
        // A beat of the new process puts it back on the normal schedule.
        t.beat(
            beat("a", 200),
            None,
            to,
            lost + Duration::from_secs(5),
            1015,
        );
        assert!(t.expired(lost + Duration::from_secs(14)).is_empty());
        assert_eq!(t.expired(lost + Duration::from_secs(15)).len(), 1);
    }

    #[test]
    fn unrestartable_is_not_retried_until_it_beats() {
        let t0 = Instant::now();
        let to = Duration::from_secs(1);
        let mut t = Table::default();
        t.beat(beat("a", 100), None, to, t0, 1000);
        t.restarted("a", None, None, to, t0 + to);
        assert!(t.expired(t0 + Duration::from_secs(100)).is_empty());
        t.beat(
            beat("a", 101),
            None,
            to,
            t0 + Duration::from_secs(100),
            1100,
        );
        assert_eq!(t.expired(t0 + Duration::from_secs(101)).len(), 1);
    }

    #[test]
    fn beats_keep_the_last_known_version_and_command() {
        let t0 = Instant::now();
        let to = Duration::from_secs(1);
        let mut t = Table::default();
        let mut b = beat("a", 100);
        b.version = Some("1.2.3".into());
        t.beat(b, None, to, t0, 1);
        t.beat(
            Beat {
                process_name: "a".into(),
                pid: 100,
                run_command: None,
                version: None,
            },
            Some(7),
            to,
            t0,
            2,
        );
        assert_eq!(t.entries["a"].version.as_deref(), Some("1.2.3"));
        assert_eq!(t.entries["a"].pid_start, Some(7));
        assert_eq!(t.entries["a"].run_command.as_deref(), Some("true"));
    }
}
