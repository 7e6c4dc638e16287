//! Stats benchmark (issue 3): figures, not asserts. Run through `scripts/bench-stats.sh`
//! (release build). Prints:
//! - CPU and wall time of one collection on this machine (mean over N runs),
//! - gzip ratio and bytes on the wire per record (one hour of records in one batch),
//! - time to drain a 5760-record (one day) backlog to a local HTTP server.
//!
//! CPU time is this thread's on-CPU time from `/proc/thread-self/schedstat` plus the CPU
//! time of waited-for children (`/proc/self/stat` cutime+cstime, for `iw`/`ubus` when present).

#[path = "../tests/it/http.rs"]
mod http;

use serde_json::Value;
use socketman::config::Config;
use socketman::net::NetStatus;
use std::path::Path;
use std::time::{Duration, Instant};

fn thread_cpu() -> Duration {
    let t = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: u64 = t
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn children_cpu() -> Duration {
    let t = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = t.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm field: index 0 is state (field 3); cutime is field 16, cstime 17.
    let ticks: u64 = [13, 14]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 1000 / socketman::platform::sys::clock_ticks())
}

/// `iw`/`ubus` answering from the OpenWrt fixtures (ath10k AP, 3 stations, iwinfo info and scan).
struct FixtureTools(&'static str);
impl socketman::stats::collect::wireless::Tools for FixtureTools {
    fn run(&self, prog: &str, args: &[&str], _t: Duration) -> Option<String> {
        let file = match (prog, args) {
            ("iw", ["dev"]) => "iw-dev-openwrt-ath10k-qca6174.txt",
            ("iw", [_, _, "station", "dump"]) => "iw-station-dump-openwrt-4chain-3sta-spaces.txt",
            ("ubus", [_, _, "info", _]) => "ubus-iwinfo-info-openwrt-mt7981-1.json",
            ("ubus", [_, _, "scan", _]) => "ubus-iwinfo-scan-openwrt-mt7981-1.json",
            _ => return None,
        };
        std::fs::read_to_string(format!("{}{file}", self.0)).ok()
    }
    fn has(&self, prog: &str) -> bool {
        prog == "iw" || prog == "ubus"
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m
    }
}

/// Record `i` of a series: time, uptime, load, free RAM, counters and station signals move.
fn vary(r: &mut Value, i: u64, rnd: &mut Rng) {
    r["created_at"] = (1_700_000_000 + i * 15).into();
    r["device"]["uptime"] = (1000 + i * 15).into();
    r["device"]["load_1"] = (rnd.next(300) as f64 / 100.0).into();
    r["device"]["free_ram"] = (40_000_000 + rnd.next(8_000_000)).into();
    for list in ["interfaces", "stations"] {
        if let Some(a) = r[list].as_array_mut() {
            for it in a {
                for k in ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
                    let v = it[k].as_u64().unwrap_or(0) + rnd.next(2_000_000);
                    it[k] = v.into();
                }
            }
        }
    }
    if let Some(a) = r["stations"].as_array_mut() {
        for st in a {
            st["signal"] = (-40 - rnd.next(40) as i64).into();
            st["inactive_time"] = rnd.next(5000).into();
        }
    }
}

fn main() {
    let runs = 200;
    let mut cfg = Config {
        survey: true,
        ..Config::default()
    };
    let net = NetStatus::default();
    let root = Path::new("/");
    let mac = "52-54-00-00-00-01";
    let _ = socketman::stats::collect::collect(&cfg, mac, &net, 0, root); // warm up
    let (c0, k0, w0) = (thread_cpu(), children_cpu(), Instant::now());
    let mut record = Value::Null;
    for _ in 0..runs {
        record = socketman::stats::collect::collect(&cfg, mac, &net, 0, root);
    }
    let wall = w0.elapsed() / runs;
    let cpu = (thread_cpu() - c0 + (children_cpu() - k0)) / runs;
    let line = record.to_string();
    println!("one collection (mean of {runs}, scan+survey on): wall {wall:?}, CPU {cpu:?}");
    println!(
        "record size: {} bytes; {} interfaces, {} ssids, {} stations, {} survey, {} dhcp",
        line.len() + 1,
        record["interfaces"].as_array().map_or(0, Vec::len),
        record["ssids"].as_array().map_or(0, Vec::len),
        record["stations"].as_array().map_or(0, Vec::len),
        record["survey"].as_array().map_or(0, Vec::len),
        record["dhcp"].as_array().map_or(0, Vec::len),
    );

    // A router-like record: this machine plus the OpenWrt wireless and lease fixtures.
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let router_cfg = Config {
        survey: true,
        lease_file: format!("{fx}dhcp.leases-pihole-ipv6-duid"),
        ..Config::default()
    };
    let v4 = socketman::platform::sys::ipv4_addresses().unwrap_or_default();
    let router = socketman::stats::collect::collect_with(
        &router_cfg,
        mac,
        &net,
        0,
        root,
        &v4,
        &FixtureTools(fx),
    );
    println!(
        "router-like record (fixtures): {} bytes; {} ssids, {} stations, {} survey, {} dhcp",
        router.to_string().len() + 1,
        router["ssids"].as_array().map_or(0, Vec::len),
        router["stations"].as_array().map_or(0, Vec::len),
        router["survey"].as_array().map_or(0, Vec::len),
        router["dhcp"].as_array().map_or(0, Vec::len),
    );

    // One hour of records (240 at 15 s) in one batch: gzip ratio and bytes on the wire.
    // Counters, uptime, load and free RAM change from record to record as on a live device.
    let mut ndjson = Vec::new();
    let mut r = router.clone();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..240u64 {
        vary(&mut r, i, &mut rng);
        ndjson.extend_from_slice(r.to_string().as_bytes());
        ndjson.push(b'\n');
    }
    let t = Instant::now();
    let gz = socketman::stats::upload::gzip(&ndjson);
    let gz_time = t.elapsed();
    let (_, body) = socketman::stats::upload::multipart(&gz);
    println!(
        "gzip of 240 records: {} -> {} bytes (ratio {:.1}x, {gz_time:?}); on the wire {:.0} bytes/record (multipart body)",
        ndjson.len(),
        gz.len(),
        ndjson.len() as f64 / gz.len() as f64,
        body.len() as f64 / 240.0
    );

    // A day of records (5760) in the spool, drained to a local HTTP server.
    let dir = tempfile::tempdir().expect("temp dir");
    let srv = http::HttpServer::start(|_| Some((200, "{}".into())));
    cfg.stats_url = Some(srv.url("/stats"));
    cfg.token = Some("bench".into());
    cfg.cache_dir = dir.path().join("cache");
    cfg.cache_max_bytes = 100_000_000;
    let shutdown = socketman::runtime::Shutdown::new();
    let agent = socketman::stats::upload::StatsCtx {
        stats: socketman::stats::upload::Stats::open(&cfg, &shutdown),
        cfg: socketman::runtime::ConfigHandle::new(cfg.clone(), dir.path().join("c.json")),
        mac: mac.into(),
        shutdown,
        timings: socketman::runtime::Timings::default(),
    };
    let t = Instant::now();
    for i in 0..5760u64 {
        vary(&mut r, i, &mut rng);
        socketman::stats::upload::store(&agent, &cfg, r.clone(), 0);
    }
    let fill = t.elapsed();
    let t = Instant::now();
    let sent = socketman::stats::upload::upload_cycle(&agent, &cfg);
    let drain = t.elapsed();
    let reqs = srv.requests();
    let wire: usize = reqs.iter().map(|q| q.body.len()).sum();
    println!(
        "spooling 5760 records (fsync each): {fill:?} ({:?}/record)",
        fill / 5760
    );
    println!(
        "drain of 5760 records: {sent} sent in {} POSTs, {drain:?}, {} bytes on the wire ({:.0}/record)",
        reqs.len(),
        wire,
        wire as f64 / 5760.0
    );
}
