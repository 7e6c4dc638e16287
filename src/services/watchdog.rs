//! The heartbeat watchdog (SPEC §8.2): UDP datagrams on `127.0.0.1:watchdog_port`, a table of
//! heartbeating processes, KILL and restart of the silent ones, HEARTBEAT_LOST events.
//!
//! Threads: one `watchdog` thread ([`start`]) receives datagrams, keeps the table in
//! [`Heartbeats`] (also read by healthz and the supervisor) and acts on expired entries,
//! restarting supervised services through the [`Supervisor`]. It blocks in `recv_from` with
//! a 1 s read timeout (the expiry check's resolution); the stop wakes it at once with an
//! empty datagram to its own socket. The timing is the pure
//! [`crate::services::heartbeats::Table`], driven with `Instant`s.
//!
//! Timing: each beat gives its process `watchdog_timeout` seconds until the next one is due.
//! After socketman restarted a process, the new one gets a first grace of the same length
//! before that: it is restarted again when no beat came `2 × watchdog_timeout` after the
//! restart.
#![forbid(unsafe_code)]

use crate::link::outbox::Outbox;
use crate::platform::process::{self, Leftovers, Spec, Streams};
use crate::platform::procfs;
use crate::runtime::{ConfigHandle, Shutdown, Threads};
pub use crate::services::heartbeats::{parse, Beat, Heartbeats, Refusal, Sender};
use crate::services::supervisor::Supervisor;
use serde_json::Value;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What the `watchdog` thread is given.
#[derive(Clone)]
pub struct Watchdog {
    pub cfg: ConfigHandle,
    pub outbox: Outbox,
    pub shutdown: Shutdown,
    pub heartbeats: Heartbeats,
    pub supervisor: Supervisor,
}

fn timeout_of(w: &Watchdog) -> Duration {
    Duration::from_secs(w.cfg.get().watchdog_timeout.max(1))
}

/// A heartbeating process's `run_command` could not be started.
#[derive(Debug)]
pub struct RunCommandError {
    pub cmd: String,
    pub err: std::io::Error,
}

impl std::fmt::Display for RunCommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot run {:?}: {}", self.cmd, self.err)
    }
}

impl std::error::Error for RunCommandError {}

/// Starts `/bin/sh -c cmd` as `who` (the user that registered it; never root for another
/// user), in its own process group, with a clean environment; a thread reaps it.
fn run_command(cmd: &str, who: &Sender) -> Result<i32, RunCommandError> {
    // Its own group, socketman's stdout/stderr; the reaper thread only reaps it.
    let spec = Spec::shell(cmd)
        .streams(Streams::Inherit)
        .clean_env()
        .run_as(who.uid, who.gid, who.groups.clone());
    process::spawn_supervised(&spec, Leftovers::Keep, &|_| {}, |_| {})
        .map(|c| c.pid())
        .map_err(|e| RunCommandError {
            cmd: cmd.to_string(),
            err: e.error,
        })
}

/// Handles one lost process: KILL and restart (or restart through the supervisor).
fn recover(w: &Watchdog, name: &str) {
    let timeout = timeout_of(w);
    let entry = match w.heartbeats.lock().entries.get(name) {
        Some(e) => e.clone(),
        None => return,
    };
    let old = entry.pid;
    log::warn!(
        "watchdog: {name} (pid {old}) silent for {}s, restarting",
        timeout.as_secs()
    );
    let new_pid = if crate::services::supervisor::heartbeats(&w.supervisor, name) {
        match crate::services::supervisor::restart(&w.supervisor, name) {
            Ok(v) => v.get("pid").and_then(Value::as_i64).map(|p| p as i32),
            Err(e) => {
                log::error!("watchdog: restart of service {name} failed: {e}");
                None
            }
        }
    } else {
        let same = matches!(crate::services::procs::read_stat(old),
            Ok(s) if Some(s.starttime) == entry.pid_start && s.state != 'Z');
        // Still the registrant's process (a KILL for another user is never sent).
        let owned = procfs::creds(old).is_some_and(|c| {
            c.tgid == old && (entry.owner.uid == 0 || c.uids.iter().all(|u| *u == entry.owner.uid))
        });
        if same && owned && procfs::protected(old).is_none() {
            if let Err(e) = crate::platform::sys::kill(old, libc::SIGKILL) {
                log::warn!("watchdog: KILL of {name} pid {old} failed: {e}");
            }
        } else {
            log::info!("watchdog: {name} pid {old} is gone (or its pid was reused): not killed");
        }
        match entry.run_command.as_deref() {
            Some(cmd) => match run_command(cmd, &entry.owner) {
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
    let report = {
        let mut t = w.heartbeats.lock();
        t.restarted(name, new_pid, new_start, timeout, Instant::now());
        t.report(name, Instant::now())
    };
    match report {
        Some(unreported) => {
            if unreported > 0 {
                log::info!(
                    "watchdog: {name}: {unreported} earlier restart(s) had no HEARTBEAT_LOST \
                     event (at most one a minute per name)"
                );
            }
            w.outbox.status_event(
                "HEARTBEAT_LOST",
                serde_json::to_value(crate::proto::HeartbeatLostMeta {
                    pid: old,
                    process_name: name.to_string(),
                    restarted_pid: new_pid,
                })
                .unwrap_or(Value::Null),
            );
        }
        None => log::debug!("watchdog: {name}: HEARTBEAT_LOST held back (one a minute)"),
    }
}

/// Log the first ten of a kind, then every thousandth: a flood of bad datagrams from a local
/// user cannot flood the log.
fn noteworthy(count: usize) -> bool {
    count <= 10 || count.is_multiple_of(1000)
}

/// Checks a beat against its sender: `Ok(None)` when the sender's socket is already gone
/// (the table then only lets it keep an entry of the same pid alive), `Ok(Some(sender))`
/// when the sender may speak for the pid: it is root, or it owns the process (real,
/// effective and saved uid), which is a process (not a thread), not init and not socketman.
/// A supervised service's name is only taken for the service's pid or its process group.
fn admit(w: &Watchdog, b: &Beat, from: SocketAddr) -> Result<Option<Sender>, Refusal> {
    let owner = procfs::udp_sender(from);
    let c = procfs::creds(b.pid).ok_or(Refusal::NoProcess)?;
    if c.tgid != b.pid {
        return Err(Refusal::Thread { tgid: c.tgid });
    }
    if let Some(p) = procfs::protected(b.pid) {
        return Err(Refusal::Protected(p));
    }
    if crate::services::supervisor::heartbeats(&w.supervisor, &b.process_name) {
        let svc =
            crate::services::supervisor::info(&w.supervisor, &b.process_name).and_then(|i| i.pid);
        let in_group =
            |svc: i32| crate::services::procs::read_stat(b.pid).is_ok_and(|s| s.pgrp == svc);
        if !svc.is_some_and(|svc| svc == b.pid || in_group(svc)) {
            return Err(Refusal::NotTheService);
        }
    }
    let Some(owner) = owner else {
        return Ok(None);
    };
    if owner.uid != 0 {
        if let Some(other) = c.uids.iter().find(|u| **u != owner.uid) {
            return Err(Refusal::NotTheSendersProcess {
                owner: *other,
                sender: owner.uid,
            });
        }
    }
    // The groups of the process holding the socket (the sender); when it is gone already,
    // the uid's own group only (for root: 0) and no supplementary groups.
    let (gid, groups) = procfs::socket_holder(owner.inode)
        .and_then(procfs::creds)
        .filter(|h| h.uids[1] == owner.uid || owner.uid == 0)
        .map(|h| (h.gid, h.groups))
        .unwrap_or(if owner.uid == 0 {
            (0, Vec::new())
        } else {
            (NOGROUP, Vec::new())
        });
    Ok(Some(Sender {
        uid: owner.uid,
        gid,
        groups,
    }))
}

/// The group of a `run_command` whose sender's groups could not be read.
const NOGROUP: u32 = 65534;

/// Starts the watchdog thread in `threads` when `watchdog_port` is not 0.
pub fn start(w: Watchdog, threads: &mut Threads) {
    let port = w.cfg.get().watchdog_port;
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
    // The stop wakes the receive with an empty datagram, which the loop does not parse.
    if let Ok(me) = sock.local_addr() {
        w.shutdown.on_trigger(move || {
            if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
                let _ = s.send_to(&[], me);
            }
        });
    }
    log::info!("watchdog: listening on 127.0.0.1:{port}/udp");
    if let Err(e) = threads.spawn("watchdog", move || serve(&w, &sock)) {
        log::error!("cannot start the watchdog thread: {e}");
    }
}

/// Takes one well-formed beat into the table, or refuses it (counted, logged sparingly).
fn take(w: &Watchdog, b: Beat, from: SocketAddr) {
    let start = crate::services::procs::read_stat(b.pid)
        .ok()
        .map(|s| s.starttime);
    let (name, pid) = (b.process_name.clone(), b.pid);
    let r = admit(w, &b, from).and_then(|sender| {
        w.heartbeats.lock().beat(
            b,
            sender.as_ref(),
            start,
            timeout_of(w),
            Instant::now(),
            crate::proto::now(),
        )
    });
    match r {
        Ok(()) => {
            log::debug!("watchdog: beat from {name:?} pid {pid}");
            w.heartbeats.beats.fetch_add(1, Ordering::Relaxed);
        }
        Err(why) => {
            let c = w.heartbeats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if noteworthy(c) {
                log::warn!(
                    "watchdog: heartbeat {name:?} pid {pid} from {from} refused: {why}; \
                     {c} refused so far"
                );
            }
        }
    }
}

fn serve(w: &Watchdog, sock: &UdpSocket) {
    let mut buf = [0u8; 2048];
    while !w.shutdown.is_set() {
        match sock.recv_from(&mut buf) {
            Ok(_) if w.shutdown.is_set() => break,
            Ok((n, from)) => match parse(&buf[..n]) {
                Ok(b) => take(w, b, from),
                Err(e) => {
                    let c = w.heartbeats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if noteworthy(c) {
                        log::warn!(
                            "watchdog: malformed datagram from {from} dropped ({e}); {c} so far"
                        );
                    }
                }
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                log::warn!("watchdog: receive failed: {e}");
                if w.shutdown.wait_timeout(Duration::from_millis(500)) {
                    break;
                }
            }
        }
        let (expired, pruned) = {
            let mut t = w.heartbeats.lock();
            let pruned = t.prune(timeout_of(w), Instant::now());
            (t.expired(Instant::now()), pruned)
        };
        if pruned > 0 {
            log::info!(
                "watchdog: forgot {pruned} process(es) silent for {} × watchdog_timeout",
                crate::services::heartbeats::PRUNE_AFTER
            );
        }
        for name in expired {
            if w.shutdown.is_set() {
                break;
            }
            recover(w, &name);
        }
    }
    log::info!("watchdog: stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

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
        let cfg = ConfigHandle::new(cfg, d.path().join("c.json"));
        let outbox = Outbox::new(1);
        let shutdown = Shutdown::new();
        let heartbeats = Heartbeats::default();
        let a = Watchdog {
            supervisor: Supervisor::new(
                cfg.clone(),
                outbox.clone(),
                shutdown.clone(),
                heartbeats.clone(),
                Duration::from_secs(1),
            ),
            cfg,
            outbox,
            shutdown,
            heartbeats,
        };
        let mut threads = Threads::new();
        start(a.clone(), &mut threads);
        let mut victim = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let marker = d.path().join("restarted");
        let hb = serde_json::json!({"command":"heart_beat","process_name":"p","pid_of_process":victim.id(),
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
        assert!(a.heartbeats.malformed.load(Ordering::Relaxed) >= 5);
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
        let e = a.heartbeats.entries();
        assert_eq!(e[0]["version"], "1.2.3");
        assert_eq!(e[0]["restarts"], 1);
        assert_eq!(e[0]["pid"], new_pid);
        a.shutdown.trigger();
        assert!(
            threads
                .join_all(Instant::now() + Duration::from_secs(5))
                .is_empty(),
            "the stop wakes the watchdog thread"
        );
        crate::platform::sys::kill_group(new_pid, libc::SIGKILL).unwrap();
    }
}
