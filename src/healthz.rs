//! The `healthz` status document (SPEC §4.7) and the `usage` job (disks and memory).
//!
//! Everything comes from real state: the supervisor's table, the watchdog's heartbeats, the
//! MQTT link flag, the monitor's last connectivity check, `iw dev`. A part this build does not
//! know (no wireless client interface; no stats cache before the collector runs) is left out,
//! never made up. `meta.cache` is the stats spool's `{records, bytes, dropped}`.
//! `daemons` is filled only when `daemons` is configured (one init script call per daemon is
//! cheap for a short allow-list, too slow for a whole `init_dir`).
//!
//! Threads: runs in the job worker that calls it. It reads snapshots only, through the
//! [`Sources`] the agent plugs in: the views below (implemented by the supervisor, the
//! heartbeat table and the daemon manager), the link and connectivity watches and the stats
//! handle.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::net::NetStatus;
use crate::runtime::{ConfigHandle, Watch};
use crate::stats::upload::Stats;
use serde_json::{json, Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// socketman's own services, as healthz and `service.list` show them.
pub trait ServicesView: Send + Sync {
    fn service_entries(&self) -> Vec<Value>;
}

/// The watchdog's heartbeat table.
pub trait HeartbeatsView: Send + Sync {
    fn heartbeat_entries(&self) -> Vec<Value>;
    /// (beats accepted, malformed datagrams dropped, well-formed beats refused).
    fn counters(&self) -> (usize, usize, usize);
}

/// The system's daemons (`daemon.list`).
pub trait DaemonsView: Send + Sync {
    /// The error is only logged (healthz then leaves `daemons` out).
    fn daemon_entries(
        &self,
        cfg: &Config,
    ) -> Result<Vec<Value>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Why the `usage` job failed. The `Display` text is the job's `meta.error`.
#[derive(Debug)]
pub enum HealthError {
    /// A `/proc` file (`/proc/mounts`, `/proc/meminfo`) could not be read.
    Read {
        path: &'static str,
        err: std::io::Error,
    },
    /// A `/proc` file was read but lacks the fields needed (`MemTotal`, `MemFree`).
    Parse { path: &'static str },
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::Read { path, err } => write!(f, "cannot read {path}: {err}"),
            HealthError::Parse { path } => write!(f, "cannot parse {path}"),
        }
    }
}

impl std::error::Error for HealthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HealthError::Read { err, .. } => Some(err),
            HealthError::Parse { .. } => None,
        }
    }
}

impl crate::jobs::typed::JobFailure for HealthError {}

/// What the healthz document is made of.
#[derive(Clone)]
pub struct Sources {
    pub cfg: ConfigHandle,
    /// When this process started.
    pub started: Instant,
    pub link: Watch<bool>,
    /// The broker URI connected to (`mqtt_status.host`).
    pub broker: Watch<Option<String>>,
    pub net: Watch<NetStatus>,
    pub stats: Arc<Stats>,
    pub services: Arc<dyn ServicesView>,
    pub heartbeats: Arc<dyn HeartbeatsView>,
    pub daemons: Arc<dyn DaemonsView>,
}

/// Wireless client state from `iw dev` output: `None` without a managed (station) interface;
/// else connected when one has an `ssid` line, with that ESSID.
pub fn parse_iw_dev_wifi(text: &str) -> Option<(bool, Option<String>)> {
    let mut managed = false;
    let mut found: Option<String> = None;
    let mut cur_ssid: Option<String> = None;
    let mut cur_managed = false;
    let mut flush = |ssid: &mut Option<String>, m: &mut bool| {
        if *m {
            managed = true;
            if found.is_none() {
                found = ssid.take();
            }
        }
        *ssid = None;
        *m = false;
    };
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Interface ") || l.starts_with("phy#") {
            flush(&mut cur_ssid, &mut cur_managed);
        } else if let Some(s) = l.strip_prefix("ssid ") {
            cur_ssid = Some(s.to_string());
        } else if l == "type managed" {
            cur_managed = true;
        }
    }
    flush(&mut cur_ssid, &mut cur_managed);
    managed.then(|| (found.is_some(), found))
}

fn wifi_status() -> Option<Value> {
    use crate::platform::process::{self, Capture, RunOpts, Spec};
    let opts = RunOpts::new(Duration::from_secs(5))
        .capture(Capture::Stdout { max: 64 * 1024 })
        .drain(Duration::from_millis(500));
    let o = process::run(&Spec::new("iw").arg("dev"), &opts, &|_| {}).ok()?;
    if o.timed_out || o.code() != Some(0) {
        return None;
    }
    let (connected, essid) = parse_iw_dev_wifi(&o.output_lossy())?;
    let mut m = Map::new();
    m.insert("is_connected".into(), json!(connected));
    if let Some(e) = essid {
        m.insert("essid".into(), json!(e));
    }
    Some(Value::Object(m))
}

/// The healthz document.
pub fn healthz(src: &Sources) -> Value {
    let cfg = src.cfg.get();
    let mut data = Map::new();
    data.insert("services".into(), json!(src.services.service_entries()));
    if cfg.daemons.is_some() {
        match src.daemons.daemon_entries(&cfg) {
            Ok(v) => {
                data.insert("daemons".into(), json!(v));
            }
            Err(e) => log::warn!("healthz: daemons left out: {e}"),
        }
    }
    data.insert(
        "heartbeats".into(),
        json!(src.heartbeats.heartbeat_entries()),
    );

    let mut meta = Map::new();
    meta.insert(
        "agent".into(),
        json!({"version": crate::VERSION, "uptime": src.started.elapsed().as_secs()}),
    );
    meta.insert(
        "mqtt_status".into(),
        json!({"is_connected": src.link.get(), "host": src.broker.get()}),
    );
    let net = src.net.get();
    meta.insert(
        "network".into(),
        json!({
            "status": net.code,
            "online": net.code.map(|c| c > 1),
            "wan_ip": net.wan_ip,
            "wan_gateway": net.wan_gateway,
        }),
    );
    if let Some(w) = wifi_status() {
        meta.insert("wifi_status".into(), w);
    }
    let c = src.stats.cache_stats();
    meta.insert(
        "cache".into(),
        json!({"records": c.records, "bytes": c.bytes, "dropped": c.dropped}),
    );
    if cfg.rest {
        let (queued, bytes) = crate::jobs::rest::queue_stats(&cfg.state_dir);
        meta.insert(
            "rest".into(),
            json!({
                "queued": queued,
                "bytes": bytes,
                "dropped": crate::jobs::rest::DROPPED.load(std::sync::atomic::Ordering::Relaxed),
            }),
        );
    }
    let (beats, malformed, refused) = src.heartbeats.counters();
    meta.insert(
        "watchdog".into(),
        json!({
            "port": (cfg.watchdog_port != 0).then_some(cfg.watchdog_port),
            "beats": beats,
            "malformed": malformed,
            "refused": refused,
        }),
    );
    json!({"data": data, "meta": meta})
}

/// `(total, free, available)` bytes from a `/proc/meminfo` text. Kernels before 3.14 have no
/// `MemAvailable`; there it is estimated as `MemFree + Buffers + Cached`, as `free` does.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let kb = |k| crate::platform::procfs::kb_value(text, k);
    let total = kb("MemTotal")?;
    let free = kb("MemFree")?;
    let avail = kb("MemAvailable")
        .unwrap_or_else(|| free + kb("Buffers").unwrap_or(0) + kb("Cached").unwrap_or(0));
    Some((total, free, avail))
}

/// Filesystems worth reporting from a `/proc/mounts` text: block devices, overlay, tmpfs,
/// ubifs/jffs2/squashfs (OpenWrt flash). Pseudo filesystems (proc, sysfs, cgroup, devpts…)
/// are skipped, and each mount point is listed once.
pub fn parse_mounts(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut devices: Vec<&str> = Vec::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(dev), Some(mnt), Some(fs)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let keep = dev.starts_with('/')
            || matches!(
                fs,
                "overlay"
                    | "tmpfs"
                    | "ubifs"
                    | "jffs2"
                    | "squashfs"
                    | "ext4"
                    | "ext3"
                    | "ext2"
                    | "f2fs"
                    | "btrfs"
                    | "xfs"
                    | "vfat"
            );
        // Octal escapes of /proc/mounts (\040 for a space).
        let mnt = unescape_mount(mnt);
        // A block device mounted twice (bind mounts) is one disk: the first mount stands for it.
        let seen_device = dev.starts_with('/') && devices.contains(&dev);
        if keep
            && !seen_device
            && !out.contains(&mnt)
            && !mnt.starts_with("/proc")
            && !mnt.starts_with("/sys")
        {
            if dev.starts_with('/') {
                devices.push(dev);
            }
            out.push(mnt);
        }
    }
    out
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `{"disks":[{"mount","total","used","free"}],"memory":{"total","free","available"}}`.
pub fn usage() -> Result<Value, HealthError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|err| HealthError::Read { path, err })
    };
    let mounts = read("/proc/mounts")?;
    let disks: Vec<Value> = parse_mounts(&mounts)
        .into_iter()
        .filter_map(|m| {
            let (total, free_root, avail) = crate::platform::sys::statvfs(&m).ok()?;
            (total > 0).then(|| {
                json!({"mount": m, "total": total, "used": total.saturating_sub(free_root), "free": avail})
            })
        })
        .collect();
    let meminfo = read("/proc/meminfo")?;
    let (total, free, available) = parse_meminfo(&meminfo).ok_or(HealthError::Parse {
        path: "/proc/meminfo",
    })?;
    Ok(json!({
        "disks": disks,
        "memory": {"total": total, "free": free, "available": available},
    }))
}

impl crate::jobs::typed::Health for Sources {
    fn healthz(&self) -> Value {
        healthz(self)
    }

    fn usage(&self) -> Result<Value, crate::jobs::typed::Failure> {
        Ok(usage()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn iw_dev_wifi() {
        // Station interface, not associated.
        assert_eq!(
            parse_iw_dev_wifi(&fixture("iw-dev-info-lede-managed-idle.txt")),
            Some((false, None))
        );
        // Access points only: no client state to report.
        assert_eq!(
            parse_iw_dev_wifi(&fixture("iw-dev-openwrt-ath10k-qca6174.txt")),
            None
        );
        assert_eq!(
            parse_iw_dev_wifi(&fixture("iw-dev-openwrt-3radio-ath10k.txt")),
            None
        );
        assert_eq!(parse_iw_dev_wifi(""), None);
    }

    #[test]
    fn meminfo() {
        let (t, f, a) = parse_meminfo(&fixture("proc-meminfo-linux-x86_64-procfs.txt")).unwrap();
        assert!(t > 0 && f <= t && a <= t && a >= f);
        // 2.6 kernel without MemAvailable: free + buffers + cached.
        assert_eq!(
            parse_meminfo(&fixture("proc-meminfo-openwrt-wrt610n-2.6.txt")),
            Some((62336 * 1024, 54104 * 1024, (54104 + 944 + 3304) * 1024))
        );
        assert_eq!(parse_meminfo("garbage"), None);
    }

    #[test]
    fn mounts_of_this_machine() {
        // Captured from this machine at test time.
        let text = std::fs::read_to_string("/proc/mounts").unwrap();
        let m = parse_mounts(&text);
        assert!(m.contains(&"/".to_string()), "{m:?}");
        assert!(!m
            .iter()
            .any(|x| x.starts_with("/proc") || x.starts_with("/sys")));
        let u = usage().unwrap();
        let root = u["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["mount"] == "/")
            .unwrap();
        assert!(root["total"].as_u64().unwrap() >= root["used"].as_u64().unwrap());
        assert!(u["memory"]["total"].as_u64().unwrap() > 0);
    }

    #[test]
    fn usage_error_texts() {
        let e = HealthError::Read {
            path: "/proc/mounts",
            err: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            e.to_string(),
            "cannot read /proc/mounts: Permission denied (os error 13)"
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = HealthError::Parse {
            path: "/proc/meminfo",
        };
        assert_eq!(
            crate::jobs::typed::Failure::from(e).error,
            "cannot parse /proc/meminfo"
        );
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }
}
