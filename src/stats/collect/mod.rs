//! Stats records (SPEC §5): [`collect`] builds one record from the sources in this folder;
//! [`collector`] is the body of the `stats-collect` thread (one record right after start,
//! then every `monitor` seconds, appended to the spool or, with `no-cache`, POSTed at once).
//! It shares the [`crate::stats::upload::Stats`] handle (spool + upload trigger) with the
//! uploader and reads the monitor's [`NetStatus`] watch.
//!
//! `device.created_at` is the top-level `created_at` again (where the C agent put it);
//! `device.online` is the C agent's flag, `status > 1`. `device.connected` is the number of associated wireless stations in the same record
//! (`stations.len()`), 0 without wireless. `device.status` is the monitor's CODE (SPEC §6)
//! when known; until the monitor has run, the route part only: 1 with a default route, else 0.
//!
//! The collection period comes from [`crate::runtime::Timings`] (test builds shorten it; the
//! config clamps `monitor` to ≥ 15 s).
#![forbid(unsafe_code)]

pub mod dhcp;
pub mod interfaces;
pub mod system;
pub mod wan;
pub mod wireless;

use crate::config::Config;
use crate::net::NetStatus;
use crate::runtime::Watch;
use crate::stats::upload::StatsCtx;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::Path;

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
    let created_at = crate::proto::now();
    json!({
        "created_at": created_at,
        "device": {
            "v": "5",
            "created_at": created_at,
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
            "online": status > 1,
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
pub fn job_record(ctx: &StatsCtx, net: &Watch<NetStatus>) -> Value {
    collect(
        &ctx.cfg(),
        &ctx.mac,
        &net.get(),
        ctx.stats.dropped(),
        Path::new("/"),
    )
}

/// The body of the `stats-collect` thread. It ends at the stop after the record it may be
/// writing; the agent joins it before the final cache flush.
pub fn collector(ctx: StatsCtx, net: Watch<NetStatus>) -> impl FnOnce() + Send + 'static {
    move || {
        log::info!("stats: collector started");
        loop {
            let cfg = ctx.cfg();
            let dropped = ctx.stats.dropped();
            let record = collect(&cfg, &ctx.mac, &net.get(), dropped, Path::new("/"));
            crate::stats::upload::store(&ctx, &cfg, record, dropped);
            if ctx.shutdown.wait_timeout(ctx.timings.monitor_period(&cfg)) {
                break;
            }
        }
        log::info!("stats: collector stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        "created_at",
        "online",
    ];

    /// Issue 16, row 6: `dhcp` in a whole record keeps the lease file's `*` and has C's MACs.
    #[test]
    fn dhcp_in_the_record_as_c() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        std::fs::write(
            d.path().join("tmp/dhcp.leases"),
            include_str!("../../../tests/fixtures/dhcp.leases-lede-minstrel-3lines"),
        )
        .unwrap();
        let r = collect_with(
            &Config::default(),
            "m",
            &NetStatus::default(),
            0,
            d.path(),
            &[],
            &NoTools,
        );
        let l = r["dhcp"].as_array().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0]["name"], "*", "kept as the lease file has it");
        assert_eq!(l[1]["name"], "apfel");
        for x in l {
            for k in ["mac", "ip", "name"] {
                assert!(x[k].is_string(), "{k}: {x}");
            }
            let m = x["mac"].as_str().unwrap();
            assert_eq!(m, m.to_ascii_uppercase());
        }
    }

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
        // Issue 16, row 2: the C agent's `device.created_at`, the same value as the top level.
        assert_eq!(dev["created_at"], r["created_at"]);
        assert!(dev["created_at"].is_u64());
        assert_eq!(dev["online"], false, "C's `online`: CODE > 1");
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
        assert_eq!(r["device"]["online"], true);
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
