//! Connectivity check and network recovery (SPEC §6).
//!
//! [`check`] computes the connectivity CODE (default route 1, TCP to `health_url:health_port`
//! +3, DNS lookup of `dns_check` +5) and the WAN facts; any thread may call it (the `network`
//! job, healthz, stats). The `monitor` thread started by [`spawn`] runs it every `monitor`
//! seconds, publishes the result through the [`NetStatus`] watch, feeds the pure state
//! machine of [`crate::net::recovery`] and performs its actions: `network_restart_cmd`, the
//! reboot sequence (`state_dir/reboot.json`, the `before_reboot` hook — the stats cache
//! flush —, `reboot_cmd`, forced `reboot(2)` 60 s later), and the RECOVERY events on
//! `status/…` through the outbox. At start it publishes a `reboot.json` left by the previous
//! run as RECOVERY rebooted and removes it.
//!
//! Reads the [`RecoveryPause`] set by the `network` job, so that recovery steps wait while a
//! job is changing the network on purpose. The check period and the forced reboot come from
//! [`Timings`] (test builds shorten the one and switch off the other).
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::link::outbox::Outbox;
use crate::net::recovery::{self, Action, Recovery};
use crate::net::{NetStatus, RecoveryPause};
use crate::runtime::{ConfigHandle, Shutdown, Timings, Watch};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
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

/// The check period: `monitor` seconds, or the test override (at least 50 ms).
pub fn period(cfg: &Config, t: &Timings) -> Duration {
    match t.monitor {
        Some(d) => d.max(Duration::from_millis(50)),
        None => t.monitor_period(cfg),
    }
}

/// What the `monitor` thread is given.
pub struct Monitor {
    pub cfg: ConfigHandle,
    pub outbox: Outbox,
    pub shutdown: Shutdown,
    /// Written here after every check.
    pub status: Watch<NetStatus>,
    pub pause: RecoveryPause,
    pub timings: Timings,
    /// Runs right before `reboot_cmd` (the agent flushes the stats cache there).
    pub before_reboot: Box<dyn Fn() + Send>,
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

/// The body of the `monitor` thread.
pub fn body(m: Monitor) -> impl FnOnce() + Send + 'static {
    move || run(&m)
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

fn run(m: &Monitor) {
    publish_reboot_marker(&m.cfg.get(), &m.outbox);
    let mut machine = Recovery::new(m.cfg.get().reboot, boot_instant());
    let mut last_code: Option<u8> = None;
    let mut paused_logged = false;
    log::info!(
        "monitor: connectivity check every {} ms",
        period(&m.cfg.get(), &m.timings).as_millis()
    );
    loop {
        let cfg = m.cfg.get();
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
        m.status.set(status);
        if m.pause.is_set() {
            if !paused_logged {
                log::info!("monitor: recovery paused while a network job runs");
                paused_logged = true;
            }
        } else {
            paused_logged = false;
            for action in machine.observe(at, code) {
                perform(m, &cfg, action);
                if m.shutdown.is_set() {
                    return;
                }
            }
        }
        if m.shutdown.wait_timeout(period(&cfg, &m.timings)) {
            return;
        }
    }
}

fn perform(m: &Monitor, cfg: &Config, action: Action) {
    match action {
        Action::PublishOnline { offline_s } => {
            log::info!("connectivity back after {offline_s} s offline");
            m.outbox.status_event(
                "RECOVERY",
                serde_json::to_value(crate::proto::RecoveryMeta::online(offline_s))
                    .unwrap_or(Value::Null),
            );
        }
        Action::RunRestart { offline_s } => {
            log::warn!(
                "offline for {offline_s} s: running network_restart_cmd {:?}",
                cfg.network_restart_cmd
            );
            // The restart must be over before the reboot step is due.
            let limit = cfg.job_timeout.min(cfg.reboot / 2).max(10);
            let (ok, detail) = crate::platform::shell::run_summary(
                &cfg.network_restart_cmd,
                Duration::from_secs(limit),
                cfg.job_output_max,
            );
            log_cmd("network_restart_cmd", ok, &detail);
        }
        Action::Reboot { offline_s } => reboot_sequence(m, cfg, offline_s),
    }
}

fn log_cmd(what: &str, ok: bool, detail: &str) {
    if ok {
        log::info!("{what} finished: {detail}");
    } else {
        log::warn!("{what} failed: {detail}");
    }
}

/// Path of the reboot marker for `cfg`.
pub fn marker_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join(REBOOT_MARKER)
}

/// Writes the reboot marker, flushes the cache, runs `reboot_cmd`, and forces a reboot when
/// the device is still up [`FORCE_REBOOT_AFTER`] later (unless a test build switched that off).
fn reboot_sequence(m: &Monitor, cfg: &Config, offline_s: u64) {
    log::error!(
        "offline for {offline_s} s: rebooting with reboot_cmd {:?}",
        cfg.reboot_cmd
    );
    // The marker is the RECOVERY meta the next start publishes.
    let marker = crate::proto::RecoveryMeta {
        at: Some(crate::proto::now()),
        offline_s: Some(offline_s),
        reason: Some("offline".into()),
        state: "rebooted".into(),
    };
    let path = marker_path(cfg);
    let bytes = serde_json::to_vec(&marker).unwrap_or_default();
    if let Err(e) = crate::platform::fs::write_atomic(&path, &bytes) {
        log::error!("reboot marker {}: {e}", path.display());
    }
    (m.before_reboot)();
    let (ok, detail) = crate::platform::shell::run_summary(
        &cfg.reboot_cmd,
        Duration::from_secs(cfg.job_timeout.clamp(10, 60)),
        cfg.job_output_max,
    );
    log_cmd("reboot_cmd", ok, &detail);
    if !m.timings.force_reboot {
        log::warn!(
            "test build with the forced reboot switched off: no forced reboot follows reboot_cmd"
        );
        return;
    }
    if m.shutdown.wait_timeout(FORCE_REBOOT_AFTER) {
        return; // the system is shutting us down: the reboot is under way
    }
    log::error!(
        "still running {} s after reboot_cmd: forcing sync + reboot(2)",
        FORCE_REBOOT_AFTER.as_secs()
    );
    let e = crate::platform::sys::force_reboot();
    log::error!("forced reboot failed: {e}");
}

/// Publishes a `reboot.json` left by the previous run once, as
/// `RECOVERY {"state":"rebooted", …file fields}`, and removes it. Returns the event meta.
pub fn publish_reboot_marker(cfg: &Config, outbox: &Outbox) -> Option<Value> {
    let path = marker_path(cfg);
    let meta = reboot_marker_meta(&path)?;
    outbox.status_event("RECOVERY", meta.clone());
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
    let rebooted = crate::proto::RecoveryMeta {
        at: None,
        offline_s: None,
        reason: None,
        state: "rebooted".into(),
    };
    let meta = match crate::platform::fs::read_json(path) {
        Ok(None) => return None,
        Ok(Some(v)) => match serde_json::from_value::<crate::proto::RecoveryMeta>(v) {
            Ok(m) => crate::proto::RecoveryMeta {
                state: "rebooted".into(),
                ..m
            },
            Err(e) => {
                log::warn!("reboot marker {}: {e}", path.display());
                rebooted
            }
        },
        Err(e) => {
            log::warn!("reboot marker {}: {e}", path.display());
            rebooted
        }
    };
    serde_json::to_value(meta).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
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
        let c = Config {
            monitor: 20,
            ..Config::default()
        };
        assert_eq!(period(&c, &Timings::default()), Duration::from_secs(20));
        let fast = Timings {
            monitor: Some(Duration::from_millis(5)),
            ..Timings::default()
        };
        assert_eq!(
            period(&c, &fast),
            Duration::from_millis(50),
            "at least 50 ms"
        );
    }
}
