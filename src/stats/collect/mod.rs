//! Stats records (SPEC §5): [`collect`] builds one record from the sources in this folder;
//! [`spawn`] starts the collector thread (`stats-collect`: one record right after start, then
//! every `monitor` seconds, appended to the spool or, with `no-cache`, POSTed at once) and the
//! uploader thread ([`crate::upload`]). Shares the [`crate::stats::upload::Stats`] handle (spool +
//! upload trigger) through `Agent::stats`.
//!
//! `device.connected` is the number of associated wireless stations in the same record
//! (`stations.len()`), 0 without wireless. `device.status` is the monitor's CODE (SPEC §6)
//! when known; until the monitor has run, the route part only: 1 with a default route, else 0.
//!
//! Test-only: the environment variable `SOCKETMAN_TEST_MONITOR_MS` overrides the collection
//! period in milliseconds (the config clamps `monitor` to ≥ 15 s). It is read here only and is
//! not meant for production use.
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod interfaces;
pub mod system;
pub mod wan;
pub mod wireless;

use crate::agent::{Agent, NetStatus};
use crate::config::Config;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Builds one record of the live system (`root` is `/` on a device).
pub fn collect(cfg: &Config, mac: &str, net: &NetStatus, dropped: u64, root: &Path) -> Value {
    let v4 = match crate::platform::sys::ipv4_addresses() {
        Ok(v) => v,
        Err(e) => {
            log::debug!("stats: getifaddrs failed: {e}; no IPv4 addresses in the record");
            Vec::new()
        }
    };
    collect_with(cfg, mac, net, dropped, root, &v4, &wireless::SystemTools)
}

/// [`collect`] with the IPv4 address list and the wireless tools given (tests).
pub fn collect_with(
    cfg: &Config,
    mac: &str,
    net: &NetStatus,
    dropped: u64,
    root: &Path,
    v4: &[(String, Ipv4Addr, u8)],
    tools: &dyn wireless::Tools,
) -> Value {
    let sys = system::read(root);
    let wan = wan::read(root, v4);
    let ifaces: Vec<Value> = interfaces::read(root, v4)
        .iter()
        .map(interfaces::Interface::to_json)
        .collect();
    let leases: Vec<Value> = dhcp::read(root, &cfg.lease_file)
        .iter()
        .map(dhcp::Lease::to_json)
        .collect();
    let wl = wireless::read(cfg.scan, cfg.survey, tools);
    let status = net
        .code
        .unwrap_or(if wan.has_default_route() { 1 } else { 0 });
    json!({
        "created_at": crate::proto::now(),
        "device": {
            "v": "5",
            "mac": mac,
            "machine_type": crate::platform::identity::machine_type(root),
            "firmware": crate::platform::identity::firmware(root),
            "uptime": sys.uptime,
            "load_1": sys.load_1,
            "load_5": sys.load_5,
            "load_15": sys.load_15,
            "total_ram": sys.total_ram,
            "free_ram": sys.free_ram,
            "procs": sys.procs,
            "wan_name": wan.name.clone().or_else(|| net.wan_name.clone()),
            "wan_ip": wan.ip.clone().or_else(|| net.wan_ip.clone()),
            "wan_gateway": wan.gateway.clone().or_else(|| net.wan_gateway.clone()),
            "tx_bytes": wan.tx_bytes,
            "rx_bytes": wan.rx_bytes,
            "status": status,
            "connected": wl.stations.len(),
            "dropped": dropped,
            "smv": crate::VERSION,
        },
        "interfaces": ifaces,
        "ssids": wl.ssids,
        "stations": wl.stations,
        "survey": wl.survey,
        "dhcp": leases,
    })
}

/// `--collect-once`: one record of this device as one JSON line (no network, no spool).
pub fn collect_once(cfg: &Config) -> String {
    let root = Path::new("/");
    let mac = crate::platform::identity::discover_mac(cfg.mac.as_deref(), &cfg.mac_file, root)
        .unwrap_or_default();
    collect(cfg, &mac, &NetStatus::default(), 0, root).to_string()
}

/// The `stats` job (SPEC §4.4): a fresh record (not spooled). `dropped` is what the spool
/// would report next, without resetting it.
pub fn job_record(agent: &Agent) -> Value {
    let net = agent.net.lock().map(|n| n.clone()).unwrap_or_default();
    let dropped = agent.stats.get().map(|s| s.dropped()).unwrap_or(0);
    collect(&agent.cfg(), &agent.mac, &net, dropped, Path::new("/"))
}

/// The collection period: `monitor` seconds, or `SOCKETMAN_TEST_MONITOR_MS` (tests only).
pub fn monitor_period(cfg: &Config) -> Duration {
    test_override_ms("SOCKETMAN_TEST_MONITOR_MS")
        .unwrap_or_else(|| Duration::from_secs(cfg.monitor.max(1)))
}

/// A test-only duration override: the environment variable `var` in milliseconds (> 0), or
/// `None` when unset, empty, zero or not a number.
pub(crate) fn test_override_ms(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// Starts the collector and uploader threads and installs the shared [`crate::stats::upload::Stats`]
/// in `agent.stats`. Call once, from `agent::run`.
pub fn spawn(agent: &Arc<Agent>) -> std::io::Result<()> {
    let cfg = agent.cfg();
    match crate::stats::spool::restore(&cfg.cache_dir, &cfg.state_dir) {
        Ok(0) => {}
        Ok(n) => log::info!("stats: {n} cache files saved before the last stop or reboot put back"),
        Err(e) => log::error!(
            "stats: cache saved in {} could not be put back: {e}",
            cfg.state_dir.display()
        ),
    }
    let stats = crate::stats::upload::Stats::open(&cfg);
    let stats = agent.stats.get_or_init(|| stats).clone();
    // 401 from the stats API: re-provision with `-b` (SPEC §5, §7), on the uploader thread.
    let weak = Arc::downgrade(agent);
    crate::stats::upload::set_on_unauthorized(agent, move || {
        let Some(agent) = weak.upgrade() else { return };
        if agent.init_url.is_none() {
            log::warn!("stats: 401 and no -b given: records kept until the token is fixed");
        } else if crate::provision::reprovision(&agent) {
            log::info!("stats: re-provisioned after 401; the next upload uses the new config");
        }
    });
    // Records from before this start go out at once; decided before the first collection.
    let backlog = stats.cache_stats().records > 0;
    let a = agent.clone();
    let st = stats.clone();
    let h = std::thread::Builder::new()
        .name("stats-collect".into())
        .spawn(move || collector_loop(&a, &st))?;
    stats.set_collector(h);
    crate::stats::upload::spawn(agent, backlog)?;
    Ok(())
}

/// Clean stop (SPEC §10, "write the cache"): after `agent.request_stop()`, waits (until
/// `deadline`) for the collector to finish the record it may be writing, then flushes.
pub fn wait_stopped(agent: &Agent, deadline: std::time::Instant) {
    if let Some(stats) = agent.stats.get() {
        stats.join_collector(deadline);
        crate::stats::upload::flush(agent);
    }
}

fn collector_loop(agent: &Arc<Agent>, stats: &Arc<crate::stats::upload::Stats>) {
    log::info!("stats: collector started");
    loop {
        let cfg = agent.cfg();
        let net = agent.net.lock().map(|n| n.clone()).unwrap_or_default();
        let dropped = stats.dropped();
        let record = collect(&cfg, &agent.mac, &net, dropped, Path::new("/"));
        crate::stats::upload::store(agent, stats, &cfg, record, dropped);
        if agent.wait_stop(monitor_period(&cfg)) {
            break;
        }
    }
    log::info!("stats: collector stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoTools;
    impl wireless::Tools for NoTools {
        fn run(&self, _: &str, _: &[&str], _: Duration) -> Option<String> {
            None
        }
        fn has(&self, _: &str) -> bool {
            false
        }
    }

    const DEVICE_KEYS: &[&str] = &[
        "v",
        "mac",
        "machine_type",
        "firmware",
        "uptime",
        "load_1",
        "load_5",
        "load_15",
        "total_ram",
        "free_ram",
        "procs",
        "wan_name",
        "wan_ip",
        "wan_gateway",
        "tx_bytes",
        "rx_bytes",
        "status",
        "connected",
        "dropped",
        "smv",
    ];

    #[test]
    fn record_shape_on_empty_root() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        let r = collect_with(
            &cfg,
            "AA-BB-CC-DD-EE-FF",
            &NetStatus::default(),
            7,
            d.path(),
            &[],
            &NoTools,
        );
        assert!(r["created_at"].as_u64().unwrap() > 1_600_000_000);
        let dev = &r["device"];
        for k in DEVICE_KEYS {
            assert!(dev.get(*k).is_some(), "device.{k}");
        }
        assert_eq!(dev["v"], "5");
        assert_eq!(dev["mac"], "AA-BB-CC-DD-EE-FF");
        assert_eq!(dev["status"], 0);
        assert_eq!(dev["dropped"], 7);
        assert_eq!(dev["connected"], 0);
        assert_eq!(dev["smv"], crate::VERSION);
        for k in ["interfaces", "ssids", "stations", "survey", "dhcp"] {
            assert_eq!(r[k], json!([]), "{k}");
        }
    }

    #[test]
    fn status_from_monitor_or_route() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc/net")).unwrap();
        std::fs::write(
            d.path().join("proc/net/route"),
            include_str!("../../../tests/fixtures/proc-net-route-linux-desktop-default.txt"),
        )
        .unwrap();
        let cfg = Config::default();
        let r = collect_with(&cfg, "m", &NetStatus::default(), 0, d.path(), &[], &NoTools);
        assert_eq!(r["device"]["status"], 1);
        assert!(r["device"]["wan_gateway"].is_string());
        let net = NetStatus {
            code: Some(9),
            ..Default::default()
        };
        let r = collect_with(&cfg, "m", &net, 0, d.path(), &[], &NoTools);
        assert_eq!(r["device"]["status"], 9);
    }

    #[test]
    fn live_record() {
        let cfg = Config::default();
        let line = collect_once(&cfg);
        assert!(!line.contains('\n'));
        let r: Value = serde_json::from_str(&line).unwrap();
        assert!(r["device"]["uptime"].as_u64().unwrap() > 0);
        assert!(!r["interfaces"].as_array().unwrap().is_empty());
    }
}
