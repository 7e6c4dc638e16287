//! Connectivity check and network recovery (SPEC §6).
//!
//! [`check`] computes the connectivity CODE (default route 1, TCP to `health_url:health_port`
//! +3, DNS lookup of `dns_check` +5) and the WAN facts; any thread may call it (the `network`
//! job, healthz, stats). The `monitor` thread started by [`spawn`] runs it every `monitor`
//! seconds, stores the result in `agent.net`, feeds the pure state machine of
//! `src/recovery.rs` and performs its actions: `network_restart_cmd`, the reboot sequence
//! (`state_dir/reboot.json`, cache flush, `reboot_cmd`, forced `reboot(2)` 60 s later), and
//! the RECOVERY events on `status/…` through `agent.outbox`. At start it publishes a
//! `reboot.json` left by the previous run as RECOVERY rebooted and removes it.
//!
//! Shared: `agent.net` (written here), `agent.monitor` ([`Shared`]: set by the `network` job
//! so that recovery steps wait while a job is changing the network on purpose).
//!
//! Test-only environment variables (never set them on a device):
//! - `SOCKETMAN_TEST_MONITOR_MS`: check period in milliseconds instead of `monitor` seconds
//!   (whose minimum of 15 s makes integration tests slow).
//! - `SOCKETMAN_NO_FORCE_REBOOT`: when set, the forced `sync` + `reboot(2)` that follows a
//!   `reboot_cmd` that did not reboot is skipped with a log line, so that a test running the
//!   real binary can never reboot the machine it runs on.
#![forbid(unsafe_code)]

use crate::agent::{Agent, NetStatus};
use crate::config::Config;
use crate::net::recovery::{self, Action, Recovery};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Limit of the TCP and of the DNS part of a check (SPEC §6).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long socketman waits for `reboot_cmd` to take the device down before forcing it.
pub const FORCE_REBOOT_AFTER: Duration = Duration::from_secs(60);
/// Name of the reboot marker in `state_dir`.
pub const REBOOT_MARKER: &str = "reboot.json";

/// Lookups still running in helper threads after their timeout (a hung resolver); beyond
/// this many, further lookups fail at once instead of piling up threads.
const MAX_STUCK_LOOKUPS: usize = 4;
static LOOKUPS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Monitor state other threads may touch (one field of `Agent`).
#[derive(Debug, Default)]
pub struct Shared {
    /// True while a `network` job runs: its own re-check and rollback handle the network,
    /// so the recovery timers are paused (checks still run and update `agent.net`).
    pub network_job: AtomicBool,
}

/// The check period: `monitor` seconds, or `SOCKETMAN_TEST_MONITOR_MS` (test-only).
pub fn period(cfg: &Config) -> Duration {
    if let Some(ms) = std::env::var("SOCKETMAN_TEST_MONITOR_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_millis(ms.max(50));
    }
    Duration::from_secs(cfg.monitor.max(1))
}

/// One connectivity check of SPEC §6 against the live system. Takes up to about 3 s.
pub fn check(cfg: &Config) -> NetStatus {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    check_with_route(cfg, &route)
}

/// [`check`] with the text of `/proc/net/route` given.
pub fn check_with_route(cfg: &Config, route_text: &str) -> NetStatus {
    let Some((iface, gateway)) = crate::platform::identity::parse_default_route(route_text) else {
        return NetStatus {
            code: Some(0),
            ..NetStatus::default()
        };
    };
    let deadline = Instant::now() + CHECK_TIMEOUT;
    // DNS runs in its helper thread while this one tries TCP: a check takes ≤ 3 s in all.
    let dns = lookup_async(cfg.dns_check.clone(), 0);
    let tcp = tcp_ok(&cfg.health_url, cfg.health_port, deadline);
    let dns = dns.is_some_and(|rx| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map(|r| r.is_some_and(|a| !a.is_empty()))
            .unwrap_or(false)
    });
    let code = 1 + if tcp { 3 } else { 0 } + if dns { 5 } else { 0 };
    let wan_ip = match crate::platform::sys::ipv4_addrs_of(&iface) {
        Ok(a) => a.first().map(|ip| ip.to_string()),
        Err(e) => {
            log::debug!("addresses of {iface}: {e}");
            None
        }
    };
    NetStatus {
        code: Some(code),
        wan_name: Some(iface),
        wan_ip,
        wan_gateway: Some(gateway),
    }
}

/// Resolves `host:port` in a helper thread; the receiver yields the addresses (or `None`
/// on failure). `None` here when too many earlier lookups are still stuck.
fn lookup_async(host: String, port: u16) -> Option<mpsc::Receiver<Option<Vec<SocketAddr>>>> {
    if LOOKUPS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_STUCK_LOOKUPS {
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        log::warn!("DNS lookup of {host} skipped: {MAX_STUCK_LOOKUPS} earlier lookups still hang");
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("dns-lookup".into())
        .spawn(move || {
            let r = (host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>());
            if let Err(e) = &r {
                log::debug!("DNS lookup of {host}: {e}");
            }
            LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(r.ok());
        });
    if let Err(e) = spawned {
        LOOKUPS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        log::warn!("DNS lookup thread: {e}");
        return None;
    }
    Some(rx)
}

/// True when a TCP connection to `host:port` opens before `deadline`.
fn tcp_ok(host: &str, port: u16, deadline: Instant) -> bool {
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let Some(rx) = lookup_async(host.to_string(), port) else {
                return false;
            };
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Some(a)) => a,
                _ => {
                    log::debug!("health_url {host} did not resolve in time");
                    return false;
                }
            }
        }
    };
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(_) => return true,
            Err(e) => log::debug!("health check TCP {a}: {e}"),
        }
    }
    false
}

/// Starts the `monitor` thread.
pub fn spawn(agent: &Arc<Agent>) -> std::io::Result<thread::JoinHandle<()>> {
    let agent = agent.clone();
    thread::Builder::new()
        .name("monitor".into())
        .spawn(move || run(&agent))
}

/// The instant the system booted, from `/proc/uptime` (now when unknown: the boot grace
/// then counts from socketman's start, the safe side).
fn boot_instant() -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_secs(
        crate::platform::identity::system_uptime(),
    ))
    .unwrap_or(now)
}

fn run(agent: &Arc<Agent>) {
    publish_reboot_marker(agent);
    let mut machine = Recovery::new(agent.cfg().reboot, boot_instant());
    let mut last_code: Option<u8> = None;
    let mut paused_logged = false;
    log::info!(
        "monitor: connectivity check every {} ms",
        period(&agent.cfg()).as_millis()
    );
    loop {
        let cfg = agent.cfg();
        machine.set_reboot(cfg.reboot);
        let at = Instant::now();
        let status = check(&cfg);
        let code = status.code.unwrap_or(0);
        if last_code != Some(code) {
            log::info!(
                "connectivity CODE {code} ({}), route via {} gateway {}",
                if recovery::is_offline(code) {
                    "offline"
                } else {
                    "online"
                },
                status.wan_name.as_deref().unwrap_or("-"),
                status.wan_gateway.as_deref().unwrap_or("-")
            );
            last_code = Some(code);
        }
        match agent.net.lock() {
            Ok(mut n) => *n = status,
            Err(p) => *p.into_inner() = status,
        }
        if agent.monitor.network_job.load(Ordering::SeqCst) {
            if !paused_logged {
                log::info!("monitor: recovery paused while a network job runs");
                paused_logged = true;
            }
        } else {
            paused_logged = false;
            for action in machine.observe(at, code) {
                perform(agent, &cfg, action);
                if agent.stopping() {
                    return;
                }
            }
        }
        if agent.wait_stop(period(&cfg)) {
            return;
        }
    }
}

fn perform(agent: &Arc<Agent>, cfg: &Config, action: Action) {
    match action {
        Action::PublishOnline { offline_s } => {
            log::info!("connectivity back after {offline_s} s offline");
            agent.outbox.status_event(
                "RECOVERY",
                json!({"state": "online", "offline_s": offline_s}),
            );
        }
        Action::RunRestart { offline_s } => {
            log::warn!(
                "offline for {offline_s} s: running network_restart_cmd {:?}",
                cfg.network_restart_cmd
            );
            // The restart must be over before the reboot step is due.
            let limit = cfg.job_timeout.min(cfg.reboot / 2).max(10);
            let (ok, detail) = run_cmd(
                &cfg.network_restart_cmd,
                Duration::from_secs(limit),
                cfg.job_output_max,
            );
            log_cmd("network_restart_cmd", ok, &detail);
        }
        Action::Reboot { offline_s } => reboot_sequence(agent, cfg, offline_s),
    }
}

fn log_cmd(what: &str, ok: bool, detail: &str) {
    if ok {
        log::info!("{what} finished: {detail}");
    } else {
        log::warn!("{what} failed: {detail}");
    }
}

/// Runs `cmd` with `jobs::shell::run_shell` (own process group, killed after `timeout`).
/// Returns success (exit 0) and a one-line summary with the start of the output.
pub(crate) fn run_cmd(cmd: &str, timeout: Duration, output_max: usize) -> (bool, String) {
    let out = crate::jobs::shell::run_shell(cmd, timeout, output_max);
    let head: String = out
        .output
        .lines()
        .take(3)
        .collect::<Vec<_>>()
        .join(" | ")
        .chars()
        .take(300)
        .collect();
    let status = match (&out.spawn_error, out.timed_out, out.exit_code, out.signal) {
        (Some(e), _, _, _) => format!("not started: {e}"),
        (None, true, _, _) => format!("timed out after {} s", timeout.as_secs()),
        (None, false, Some(c), _) => format!("exit code {c}"),
        (None, false, None, Some(sig)) => format!("killed by signal {sig}"),
        (None, false, None, None) => "no exit status".to_string(),
    };
    (out.success(), format!("{status}; output: {head:?}"))
}

/// Path of the reboot marker for `cfg`.
pub fn marker_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join(REBOOT_MARKER)
}

/// Writes the reboot marker, flushes the cache, runs `reboot_cmd`, and forces a reboot when
/// the device is still up [`FORCE_REBOOT_AFTER`] later (unless `SOCKETMAN_NO_FORCE_REBOOT`).
fn reboot_sequence(agent: &Arc<Agent>, cfg: &Config, offline_s: u64) {
    log::error!(
        "offline for {offline_s} s: rebooting with reboot_cmd {:?}",
        cfg.reboot_cmd
    );
    let marker = json!({"reason": "offline", "offline_s": offline_s, "at": crate::proto::now()});
    let path = marker_path(cfg);
    if let Err(e) = crate::platform::fs::write_atomic(&path, marker.to_string().as_bytes()) {
        log::error!("reboot marker {}: {e}", path.display());
    }
    flush_before_reboot(agent);
    let (ok, detail) = run_cmd(
        &cfg.reboot_cmd,
        Duration::from_secs(cfg.job_timeout.clamp(10, 60)),
        cfg.job_output_max,
    );
    log_cmd("reboot_cmd", ok, &detail);
    if std::env::var_os("SOCKETMAN_NO_FORCE_REBOOT").is_some() {
        log::warn!(
            "SOCKETMAN_NO_FORCE_REBOOT is set (test mode): no forced reboot will follow reboot_cmd"
        );
        return;
    }
    if agent.wait_stop(FORCE_REBOOT_AFTER) {
        return; // the system is shutting us down: the reboot is under way
    }
    log::error!(
        "still running {} s after reboot_cmd: forcing sync + reboot(2)",
        FORCE_REBOOT_AFTER.as_secs()
    );
    let e = crate::platform::sys::force_reboot();
    log::error!("forced reboot failed: {e}");
}

/// Hook run right before a reboot: the stats cache is made durable (`upload::flush`).
pub fn flush_before_reboot(agent: &Arc<Agent>) {
    crate::stats::upload::flush(agent);
}

/// Publishes a `reboot.json` left by the previous run once, as
/// `RECOVERY {"state":"rebooted", …file fields}`, and removes it. Returns the event meta.
pub fn publish_reboot_marker(agent: &Arc<Agent>) -> Option<Value> {
    let path = marker_path(&agent.cfg());
    let meta = reboot_marker_meta(&path)?;
    agent.outbox.status_event("RECOVERY", meta.clone());
    match std::fs::remove_file(&path) {
        Ok(()) => log::info!(
            "published RECOVERY rebooted from {} and removed it",
            path.display()
        ),
        Err(e) => log::error!("reboot marker {}: cannot remove: {e}", path.display()),
    }
    Some(meta)
}

/// The RECOVERY meta for the marker at `path`; `None` when there is no marker. A marker that
/// is not a JSON object (torn by a crash that `write_atomic` should prevent) still yields
/// `{"state":"rebooted"}` so that the reboot is not lost.
fn reboot_marker_meta(path: &Path) -> Option<Value> {
    let mut meta = serde_json::Map::new();
    match crate::platform::fs::read_json(path) {
        Ok(None) => return None,
        Ok(Some(Value::Object(fields))) => meta.extend(fields),
        Ok(Some(other)) => log::warn!("reboot marker {}: not an object: {other}", path.display()),
        Err(e) => log::warn!("reboot marker {}: {e}", path.display()),
    }
    meta.insert("state".into(), Value::String("rebooted".into()));
    Some(Value::Object(meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const ROUTE: &str =
        include_str!("../../tests/fixtures/proc-net-route-linux-desktop-default.txt");
    const NO_ROUTE: &str =
        include_str!("../../tests/fixtures/proc-net-route-embedded-nodefault-padded.txt");

    fn cfg(port: u16, dns: &str) -> Config {
        Config {
            health_url: "127.0.0.1".into(),
            health_port: port,
            dns_check: dns.into(),
            ..Config::default()
        }
    }

    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn codes_from_real_checks() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (iface, gw) = crate::platform::identity::parse_default_route(ROUTE).unwrap();

        let st = check_with_route(&cfg(port, "localhost"), ROUTE);
        assert_eq!(st.code, Some(9));
        assert_eq!(st.wan_name.as_deref(), Some(iface.as_str()));
        assert_eq!(st.wan_gateway.as_deref(), Some(gw.as_str()));

        // RFC 6761: .invalid never resolves.
        let st = check_with_route(&cfg(port, "socketman-check.invalid"), ROUTE);
        assert_eq!(st.code, Some(4));
        let dead = closed_port();
        assert_eq!(
            check_with_route(&cfg(dead, "localhost"), ROUTE).code,
            Some(6)
        );
        assert_eq!(
            check_with_route(&cfg(dead, "socketman-check.invalid"), ROUTE).code,
            Some(1)
        );
        let st = check_with_route(&cfg(port, "localhost"), NO_ROUTE);
        assert_eq!(
            st,
            NetStatus {
                code: Some(0),
                ..NetStatus::default()
            }
        );
    }

    #[test]
    fn health_url_by_name_and_wan_ip_of_the_route_interface() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = cfg(port, "localhost");
        c.health_url = "localhost".into();
        // A route whose interface is `lo`: wan_ip is its IPv4 address.
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     lo\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let st = check_with_route(&c, route);
        assert_eq!(st.code, Some(9), "{st:?}");
        assert_eq!(st.wan_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(st.wan_gateway.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn reboot_marker_meta_keeps_the_file_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(REBOOT_MARKER);
        assert_eq!(reboot_marker_meta(&p), None);
        std::fs::write(
            &p,
            r#"{"reason":"offline","offline_s":612,"at":1700000000}"#,
        )
        .unwrap();
        assert_eq!(
            reboot_marker_meta(&p),
            Some(json!({"state":"rebooted","reason":"offline","offline_s":612,"at":1700000000}))
        );
        std::fs::write(&p, "{torn").unwrap();
        assert_eq!(reboot_marker_meta(&p), Some(json!({"state":"rebooted"})));
    }

    #[test]
    fn test_period_override() {
        // Only the default path is checked here: the env var is process-wide.
        let c = Config {
            monitor: 20,
            ..Config::default()
        };
        if std::env::var_os("SOCKETMAN_TEST_MONITOR_MS").is_none() {
            assert_eq!(period(&c), Duration::from_secs(20));
        }
    }
}
