//! Wireless parts of a stats record (SPEC §5 `ssids`, `stations`, `survey`), from the tools an
//! OpenWrt router or a Raspberry Pi has: `iw` (nl80211, on both) and, on OpenWrt,
//! `ubus call iwinfo …` (rpcd's iwinfo plugin). Runs on the collector thread; shares nothing.
//!
//! Where each field comes from:
//! - interfaces: `iw dev` (name, `addr`, `ssid`, `type`, `channel N (F MHz)`, `txpower`);
//!   without `iw`, `ubus call iwinfo devices`.
//! - `ssids`: one entry per interface with an SSID (AP, mesh) or a link (managed).
//!   `interface`, `ssid`, `channel`, `frequency`, `tx_power` (dBm) from `iw dev`; `bssid` is the
//!   interface address for an AP, the AP's address from `iw dev X link` for a client;
//!   `signal` (dBm) and `bitrate` (Mbit/s, the link's tx bitrate) from `iw dev X link` on a
//!   client. When `ubus` is present, `ubus call iwinfo info {"device":X}` supplies `signal`,
//!   `noise` (dBm; iwinfo's 0 = unknown becomes null), `bitrate` (kbit/s → Mbit/s), `quality`,
//!   `quality_max`, and any of the above that `iw` did not give. Without ubus, `noise`,
//!   `quality` and `quality_max` are null.
//! - `stations`: `iw dev X station dump` on AP and mesh interfaces (`signal` dBm,
//!   `inactive_time` ms, `conn_time` s, `tx_bitrate`/`rx_bitrate` Mbit/s, counters);
//!   without `iw`, `ubus call iwinfo assoclist {"device":X}`. `ssid` is the interface's.
//! - `survey`: once per radio, `ubus call iwinfo scan {"device":X}` when ubus is present
//!   (works on AP interfaces), else `iw dev X scan`. `signal` dBm, `last_seen` ms ago (iw
//!   only; null from ubus), `encryption` a string such as `"WPA2 PSK"`, `"WPA/WPA2 PSK"`,
//!   `"WPA3 SAE"`, `"WPA2 802.1X"`, `"WEP"`, `"none"`.
//!
//! Every parser takes the tool's text and skips what it does not understand; a missing tool
//! gives empty lists. Tools are found on `PATH` (plus the usual sbin directories), and each
//! run is killed after a timeout so a hung driver cannot stall the collector.
//!
//! Files: this one has the tool runner, the shared `Station`/`Bss` types and [`read`], which
//! puts the parts together; [`iw`] parses `iw` text, [`ubus`] parses `ubus call iwinfo` JSON.
#![forbid(unsafe_code)]

pub mod iw;
pub mod ubus;

pub use iw::*;
pub use ubus::*;

use crate::platform::process::{self, Capture, RunOpts, Spec};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Runs an external tool and returns its stdout, `None` when absent, failed or timed out.
pub trait Tools {
    fn run(&self, prog: &str, args: &[&str], timeout: Duration) -> Option<String>;
    fn has(&self, prog: &str) -> bool;
}

/// The real tools of this system.
pub struct SystemTools;

const EXTRA_PATH: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
const OUTPUT_MAX: u64 = 4 << 20;

fn find_program(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(EXTRA_PATH.iter().copied())
        .map(|d| PathBuf::from(d).join(prog))
        .find(|p| p.is_file())
}

impl Tools for SystemTools {
    fn has(&self, prog: &str) -> bool {
        find_program(prog).is_some()
    }

    fn run(&self, prog: &str, args: &[&str], timeout: Duration) -> Option<String> {
        let path = find_program(prog)?;
        // Own process group, killed as a group (KILL, no grace) on timeout; a child of the
        // tool that keeps stdout open holds the collector for 1 s at most.
        let opts = RunOpts::new(timeout)
            .capture(Capture::Stdout {
                max: OUTPUT_MAX as usize,
            })
            .drain(Duration::from_secs(1));
        let o = match process::run(&Spec::new(&path).args(args), &opts, &|_| {}) {
            Ok(o) => o,
            Err(e) => {
                log::debug!("stats: cannot run {}: {}", path.display(), e.error);
                return None;
            }
        };
        if o.timed_out {
            log::warn!(
                "stats: {prog} {} did not finish within {timeout:?}; killed",
                args.join(" ")
            );
            return None;
        }
        match &o.status {
            Ok(st) if st.success() => Some(o.output_lossy()),
            Ok(st) => {
                log::debug!("stats: {prog} {} exited with {st}", args.join(" "));
                None
            }
            Err(e) => {
                log::debug!("stats: {prog} {}: {e}", args.join(" "));
                None
            }
        }
    }
}

const TOOL_TIMEOUT: Duration = Duration::from_secs(3);
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

/// One associated station. Values are as the tool prints them; `None` when it does not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Station {
    pub interface: String,
    /// Upper case with colons (see [`mac_upper`]).
    pub mac: String,
    /// dBm.
    pub signal: Option<i64>,
    pub signal_avg: Option<i64>,
    pub beacon_signal_avg: Option<i64>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub rx_packets: Option<u64>,
    pub tx_packets: Option<u64>,
    pub tx_retries: Option<u64>,
    pub tx_failed: Option<u64>,
    pub beacon_loss: Option<u64>,
    pub beacon_rx: Option<u64>,
    /// µs (`Toffset`, mesh peers); unsigned as nl80211 gives it (a wrapped negative is huge).
    pub t_offset: Option<u64>,
    /// ms.
    pub inactive_time: Option<u64>,
    /// s.
    pub conn_time: Option<u64>,
    /// Mbit/s as printed (`390.0`, `57.8`).
    pub tx_bitrate: Option<f64>,
    pub rx_bitrate: Option<f64>,
    /// The HT MCS index of the tx rate (`MCS 14`); VHT/HE/EHT rates have none, as in nl80211.
    pub mcs: Option<u64>,
    /// Expected throughput, kbit/s (nl80211's unit; iw prints it as `N.NMbps`).
    pub expected_tput_kbps: Option<u64>,
    pub authorized: Option<bool>,
    pub authenticated: Option<bool>,
    pub associated: Option<bool>,
    pub wmm: Option<bool>,
    pub mfp: Option<bool>,
    pub tdls: Option<bool>,
    /// 1 short, 2 long (the C agent's numbers).
    pub preamble: Option<u8>,
}

/// Mbit/s (float) → the C agent's integer Mbit/s (nl80211's 100 kbit/s units / 10, truncated).
fn mbit_int(v: Option<f64>) -> Option<i64> {
    v.filter(|f| f.is_finite()).map(|f| f.trunc() as i64)
}

impl Station {
    /// The record's station object: the C agent's 28 keys (same names, types and units) and
    /// socketman's additions (`tx_bitrate_mbps`, `rx_bitrate_mbps`, `expected_tput_kbps`).
    /// Every key is always present; a value the tool did not print is `null`.
    pub fn to_json(&self, ssid: Option<&str>) -> Value {
        json!({
            "interface": self.interface, "ssid": ssid, "mac": self.mac,
            "inactive_time": self.inactive_time,
            "rx_packets": self.rx_packets, "tx_packets": self.tx_packets,
            "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
            "beacon_rx": self.beacon_rx, "tx_retries": self.tx_retries,
            "tx_failed": self.tx_failed, "beacon_loss": self.beacon_loss,
            "signal": self.signal, "signal_avg": self.signal_avg,
            "beacon_signal_avg": self.beacon_signal_avg, "t_offset": self.t_offset,
            "tx_bitrate": mbit_int(self.tx_bitrate), "rx_bitrate": mbit_int(self.rx_bitrate),
            "authorized": self.authorized, "authenticated": self.authenticated,
            "associated": self.associated, "wmm": self.wmm, "mfp": self.mfp, "tdls": self.tdls,
            "preamble": self.preamble, "conn_time": self.conn_time,
            "expected_tput": self.expected_tput_kbps.map(|k| k * 1000 / 1024),
            "mcs": self.mcs,
            "tx_bitrate_mbps": self.tx_bitrate, "rx_bitrate_mbps": self.rx_bitrate,
            "expected_tput_kbps": self.expected_tput_kbps,
        })
    }
}

/// One neighbouring BSS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bss {
    /// Upper case with colons.
    pub mac: String,
    pub ssid: Option<String>,
    pub channel: Option<u32>,
    pub frequency: Option<u32>,
    /// dBm.
    pub signal: Option<i64>,
    /// The C agent's form: `"WPA2 PSK (CCMP)"`, `"WPA/WPA2 PSK (TKIP, CCMP)"`, `"none"`.
    pub encryption: String,
    /// ms.
    pub last_seen: Option<u64>,
    /// 0–70 (iwinfo's scale; computed from `signal` when the tool gives none).
    pub quality: Option<i64>,
    pub quality_max: Option<i64>,
}

impl Bss {
    fn to_json(&self) -> Value {
        let quality = self.quality.or_else(|| self.signal.map(quality_of));
        let quality_max = self.quality_max.or_else(|| quality.map(|_| QUALITY_MAX));
        json!({
            "mac": self.mac, "ssid": self.ssid, "channel": self.channel,
            "frequency": self.frequency, "signal": self.signal,
            "quality": quality, "quality_max": quality_max,
            "encryption": self.encryption, "last_seen": self.last_seen,
        })
    }
}

/// The top of the quality scale (iwinfo's and the C agent's, from cfg80211's wext range).
pub const QUALITY_MAX: i64 = 70;

/// Link quality of a signal in dBm as iwinfo and the C agent compute it: the signal clamped
/// to -110…-40 dBm, plus 110 (so 0…70).
pub fn quality_of(signal_dbm: i64) -> i64 {
    signal_dbm.clamp(-110, -40) + 110
}

/// A MAC as the C agent prints it: upper case hex with colons (`AE:D0:E6:3C:90:EC`).
pub fn mac_upper(s: &str) -> String {
    s.trim().to_ascii_uppercase()
}

/// The 802.11 channel number of a centre frequency in MHz.
pub fn freq_to_channel(f: u32) -> Option<u32> {
    match f {
        2484 => Some(14),
        2412..=2472 => Some((f - 2407) / 5),
        5955..=7115 => Some((f - 5950) / 5),
        // 4.9 GHz (Japan) channels count from 4000 MHz, as in iw; `f - 5000` underflowed.
        4910..=4980 => Some((f - 4000) / 5),
        5000..=5895 => Some((f - 5000) / 5),
        _ => None,
    }
}

fn mean(it: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = it.fold((0u32, 0.0), |(n, s), v| (n + 1, s + v));
    (n > 0).then(|| sum / f64::from(n))
}

/// The three wireless lists of a record.
#[derive(Debug, Clone, Default)]
pub struct Wireless {
    pub ssids: Vec<Value>,
    pub stations: Vec<Value>,
    pub survey: Vec<Value>,
}

fn is_ap(kind: Option<&str>) -> bool {
    matches!(
        kind.map(str::to_ascii_lowercase).as_deref(),
        Some("ap") | Some("mesh point") | Some("p2p-go") | Some("master")
    )
}

/// Collects `ssids`/`stations` (when `scan`) and `survey` (when `survey`).
pub fn read(scan: bool, survey: bool, tools: &dyn Tools) -> Wireless {
    let mut w = Wireless::default();
    if !scan && !survey {
        return w;
    }
    let has_ubus = tools.has("ubus");
    let ifaces: Vec<IwIface> = match tools.run("iw", &["dev"], TOOL_TIMEOUT) {
        Some(t) => parse_iw_dev(&t),
        None if has_ubus => tools
            .run("ubus", &["call", "iwinfo", "devices"], TOOL_TIMEOUT)
            .map(|t| parse_ubus_devices(&t))
            .unwrap_or_default()
            .into_iter()
            .map(|name| IwIface {
                name,
                ..Default::default()
            })
            .collect(),
        None => return w,
    };
    let use_iw = tools.has("iw");
    let mut surveyed_phys = BTreeSet::new();
    let mut seen_bss = BTreeSet::new();
    for i in &ifaces {
        let info = if has_ubus {
            ubus_info(tools, &i.name)
        } else {
            None
        };
        let info_ref = info.as_ref();
        let ssid = i
            .ssid
            .clone()
            .or_else(|| info_ref.and_then(|u| u.ssid.clone()));
        if scan {
            let managed = i.kind.as_deref() == Some("managed");
            let link = if managed && use_iw {
                tools
                    .run("iw", &["dev", &i.name, "link"], TOOL_TIMEOUT)
                    .and_then(|t| parse_iw_link(&t))
            } else {
                None
            };
            let ssid_now = ssid
                .clone()
                .or_else(|| link.as_ref().and_then(|l| l.ssid.clone()));
            let stations = if managed {
                Vec::new()
            } else if use_iw {
                if is_ap(i.kind.as_deref()) {
                    tools
                        .run("iw", &["dev", &i.name, "station", "dump"], TOOL_TIMEOUT)
                        .map(|t| parse_station_dump(&t))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                }
            } else {
                let arg = json!({ "device": i.name }).to_string();
                tools
                    .run("ubus", &["call", "iwinfo", "assoclist", &arg], TOOL_TIMEOUT)
                    .map(|t| parse_ubus_assoclist(&t, &i.name))
                    .unwrap_or_default()
            };
            if ssid_now.is_some() || link.is_some() || info.is_some() {
                let bssid = if managed {
                    link.as_ref().map(|l| l.bssid.clone())
                } else {
                    i.addr.clone()
                }
                .or_else(|| info_ref.and_then(|u| u.bssid.clone()))
                .map(|b| mac_upper(&b));
                // On an AP without iwinfo, signal and bitrate are the stations' means, as
                // the C agent computes them from the station list.
                let signal = info_ref
                    .and_then(|u| u.signal)
                    .or_else(|| link.as_ref().and_then(|l| l.signal))
                    .or_else(|| {
                        mean(stations.iter().filter_map(|s| s.signal.map(|v| v as f64)))
                            .map(|m| m.round() as i64)
                    });
                let bitrate_kbps = info_ref
                    .and_then(|u| u.bitrate_kbps)
                    .or_else(|| {
                        link.as_ref()
                            .and_then(|l| l.tx_bitrate)
                            .map(|m| (m * 1000.0).round() as u64)
                    })
                    .or_else(|| {
                        mean(stations.iter().filter_map(|s| s.tx_bitrate))
                            .map(|m| (m * 1000.0).round() as u64)
                    });
                let quality = info_ref
                    .and_then(|u| u.quality)
                    .or_else(|| signal.map(quality_of));
                w.ssids.push(json!({
                    "interface": i.name,
                    "ssid": ssid_now,
                    "bssid": bssid,
                    "channel": i.channel.or_else(|| info_ref.and_then(|u| u.channel)),
                    "frequency": i.frequency
                        .or_else(|| link.as_ref().and_then(|l| l.frequency))
                        .or_else(|| info_ref.and_then(|u| u.frequency)),
                    "tx_power": i.tx_power.or_else(|| info_ref.and_then(|u| u.tx_power)).filter(|p| p.is_finite()).map(|p| p.trunc() as i64),
                    "signal": signal,
                    "noise": info_ref.and_then(|u| u.noise),
                    "bitrate": bitrate_kbps,
                    "bitrate_mbps": bitrate_kbps.map(|k| k as f64 / 1000.0),
                    "quality": quality,
                    "quality_max": info_ref.and_then(|u| u.quality_max).unwrap_or(QUALITY_MAX),
                }));
            }
            for mut s in stations {
                if s.interface.is_empty() {
                    s.interface = i.name.clone();
                }
                w.stations.push(s.to_json(ssid.as_deref()));
            }
        }
        if survey {
            let phy = i.phy.clone().unwrap_or_else(|| i.name.clone());
            if !surveyed_phys.insert(phy) {
                continue;
            }
            let found = if has_ubus {
                let arg = json!({ "device": i.name }).to_string();
                tools
                    .run("ubus", &["call", "iwinfo", "scan", &arg], SCAN_TIMEOUT)
                    .map(|t| parse_ubus_scan(&t))
            } else {
                tools
                    .run("iw", &["dev", &i.name, "scan"], SCAN_TIMEOUT)
                    .map(|t| parse_iw_scan(&t))
            };
            for b in found.unwrap_or_default() {
                if seen_bss.insert((b.mac.clone(), b.frequency)) {
                    w.survey.push(b.to_json());
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Instant;

    macro_rules! fx {
        ($f:literal) => {
            include_str!(concat!("../../../../tests/fixtures/", $f))
        };
    }

    #[test]
    fn iw_dev_three_radios_tabs() {
        let v = parse_iw_dev(fx!("iw-dev-openwrt-3radio-ath10k.txt"));
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            IwIface {
                phy: Some("phy2".into()),
                name: "phy2-ap0".into(),
                addr: Some("c4:41:1e:2a:b8:f8".into()),
                ssid: Some("AltheaHome-5".into()),
                kind: Some("AP".into()),
                channel: Some(36),
                frequency: Some(5180),
                tx_power: Some(23.0),
            }
        );
        assert_eq!(v[1].ssid.as_deref(), Some("AltheaHome-2.4"));
        assert_eq!((v[2].channel, v[2].frequency), (Some(149), Some(5745)));
    }

    #[test]
    fn iw_dev_spaces_info_and_idle() {
        let v = parse_iw_dev(fx!("iw-dev-openwrt-ath10k-qca6174.txt"));
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].name.as_str(), v[0].ssid.as_deref()),
            ("phy0-ap0", Some("OpenWrt"))
        );
        assert_eq!(v[0].tx_power, Some(23.0));
        let info = parse_iw_dev(fx!("iw-dev-info-lede-ap.txt"));
        assert_eq!(info[0].phy.as_deref(), Some("phy0"));
        assert_eq!((info[0].channel, info[0].frequency), (Some(11), Some(2462)));
        assert_eq!(info[0].ssid.as_deref(), Some("LEDE-ctrl"));
        let idle = parse_iw_dev(fx!("iw-dev-info-lede-managed-idle.txt"));
        assert_eq!(idle[0].kind.as_deref(), Some("managed"));
        assert_eq!((idle[0].ssid.clone(), idle[0].channel), (None, None));
    }

    #[test]
    fn iw_dev_truncated_and_garbage() {
        let t = fx!("iw-dev-openwrt-3radio-ath10k.txt");
        let cut = &t[..t.find("channel 36 (51").unwrap() + 12];
        let v = parse_iw_dev(cut);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].channel, v[0].frequency), (Some(36), None));
        assert!(parse_iw_dev("\u{0}garbage\nssid x\n:::").is_empty());
        assert!(parse_iw_dev("").is_empty());
    }

    /// JSON types of the C agent's keys. `Int` must be a JSON integer (never `1.0`).
    #[derive(Clone, Copy, Debug)]
    enum K {
        Str,
        Int,
        Bool,
    }

    /// The C agent's station keys (collector.c `format_stations`) and their types.
    const C_STATION: &[(&str, K)] = &[
        ("interface", K::Str),
        ("ssid", K::Str),
        ("mac", K::Str),
        ("inactive_time", K::Int),
        ("rx_packets", K::Int),
        ("tx_packets", K::Int),
        ("rx_bytes", K::Int),
        ("tx_bytes", K::Int),
        ("beacon_rx", K::Int),
        ("tx_retries", K::Int),
        ("tx_failed", K::Int),
        ("beacon_loss", K::Int),
        ("signal", K::Int),
        ("signal_avg", K::Int),
        ("beacon_signal_avg", K::Int),
        ("t_offset", K::Int),
        ("tx_bitrate", K::Int),
        ("rx_bitrate", K::Int),
        ("authorized", K::Bool),
        ("authenticated", K::Bool),
        ("associated", K::Bool),
        ("wmm", K::Bool),
        ("mfp", K::Bool),
        ("tdls", K::Bool),
        ("preamble", K::Int),
        ("conn_time", K::Int),
        ("expected_tput", K::Int),
        ("mcs", K::Int),
    ];

    /// The C agent's ssid keys (`format_ssids`).
    const C_SSID: &[(&str, K)] = &[
        ("interface", K::Str),
        ("channel", K::Int),
        ("noise", K::Int),
        ("frequency", K::Int),
        ("signal", K::Int),
        ("quality", K::Int),
        ("bitrate", K::Int),
        ("quality_max", K::Int),
        ("bssid", K::Str),
        ("ssid", K::Str),
        ("tx_power", K::Int),
    ];

    /// The C agent's survey keys (`format_scan`).
    const C_SURVEY: &[(&str, K)] = &[
        ("mac", K::Str),
        ("channel", K::Int),
        ("ssid", K::Str),
        ("encryption", K::Str),
        ("signal", K::Int),
        ("quality", K::Int),
        ("quality_max", K::Int),
        ("frequency", K::Int),
        ("last_seen", K::Int),
    ];

    /// Every C key is present; its value is `null` (the tool did not print it) or of C's type.
    fn c_shape(obj: &Value, keys: &[(&str, K)]) {
        for (k, kind) in keys {
            let v = obj
                .get(*k)
                .unwrap_or_else(|| panic!("C key {k} missing in {obj}"));
            let ok = match kind {
                K::Str => v.is_string(),
                K::Int => v.is_i64() || v.is_u64(),
                K::Bool => v.is_boolean(),
            };
            assert!(
                v.is_null() || ok,
                "{k} must be {kind:?} or null: {v} in {obj}"
            );
        }
    }

    /// A MAC as C prints it: `%02X:` ×6.
    fn c_mac(v: &Value) {
        let m = v.as_str().unwrap_or_else(|| panic!("mac {v}"));
        assert_eq!(m.len(), 17, "{m}");
        assert!(
            m.split(':').all(|p| p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))),
            "upper-case MAC with colons: {m}"
        );
    }

    fn station_json(fixture: &str) -> Vec<Value> {
        parse_station_dump(fixture)
            .iter()
            .map(|s| s.to_json(Some("x")))
            .collect()
    }

    #[test]
    fn iw_link_fixtures() {
        let a = parse_iw_link(fx!("iw-link-rpi-2-tabs.txt")).unwrap();
        assert_eq!(a.bssid, "70:8B:CD:E7:AC:D0");
        assert_eq!(a.ssid.as_deref(), Some("ASUS-RT-N12-WAP-BUTTON"));
        assert_eq!(
            (a.frequency, a.signal, a.tx_bitrate),
            (Some(2437), Some(-21), Some(24.0))
        );
        let b = parse_iw_link(fx!("iw-link-rpi-1.txt")).unwrap();
        assert_eq!(
            (b.ssid.as_deref(), b.signal, b.tx_bitrate),
            (Some("test-os"), Some(-68), None)
        );
        assert_eq!(parse_iw_link("Not connected.\n"), None);
        assert_eq!(parse_iw_link(""), None);
        let t = fx!("iw-link-rpi-2-tabs.txt");
        let cut = parse_iw_link(&t[..t.find("signal").unwrap() + 9]).unwrap();
        assert_eq!(cut.signal, None);
    }

    /// Issue 16, row 3: all 28 C keys with C's names, types and units, from real dumps.
    #[test]
    fn station_dumps_all_fixtures() {
        let all = [
            fx!("iw-station-dump-openwrt-mt7916.txt"),
            fx!("iw-station-dump-wlan0-2chain-2016.txt"),
            fx!("iw-station-dump-wlan1-3chain-2016.txt"),
            fx!("iw-station-dump-openwrt-4chain-3sta-spaces.txt"),
            fx!("iw-station-dump-openwrt-tessel2-mt7628-1sta.txt"),
            fx!("iw-station-dump-mesh-libremesh-iw6-flags-first.txt"),
            fx!("iw-station-get-mesh-ath9k-tlwdr3600.txt"),
            fx!("iw-station-dump-sta-ath12k-eht.txt"),
        ];
        for f in all {
            let v = station_json(f);
            assert!(!v.is_empty());
            for st in &v {
                c_shape(st, C_STATION);
                c_mac(&st["mac"]);
                // Printed by every capture: never null.
                for k in ["signal", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets"] {
                    assert!(!st[k].is_null(), "{k} in {st}");
                }
            }
        }
        let mt = &station_json(fx!("iw-station-dump-openwrt-mt7916.txt"))[0];
        assert_eq!(mt["interface"], "phy1-ap0");
        assert_eq!(mt["mac"], "AE:D0:E6:3C:90:EC");
        assert_eq!(
            (mt["signal"].as_i64(), mt["signal_avg"].as_i64()),
            (Some(-53), Some(-52))
        );
        assert_eq!(mt["inactive_time"], 140, "ms");
        assert_eq!(mt["conn_time"], 6, "s");
        assert_eq!(
            (mt["rx_bytes"].as_u64(), mt["tx_packets"].as_u64()),
            (Some(9158), Some(80))
        );
        assert_eq!(
            (mt["tx_retries"].as_u64(), mt["tx_failed"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(mt["tx_bitrate"], json!(390), "integer Mbit/s as C");
        assert_eq!(mt["rx_bitrate"], json!(6));
        assert_eq!(mt["tx_bitrate_mbps"], json!(390.0));
        for (k, b) in [
            ("authorized", true),
            ("authenticated", true),
            ("associated", true),
            ("wmm", true),
            ("mfp", false),
            ("tdls", false),
        ] {
            assert_eq!(mt[k], json!(b), "{k}");
        }
        assert_eq!(mt["preamble"], 2, "long = 2 as C");
        assert!(mt["mcs"].is_null(), "a VHT rate has no HT MCS");
        assert!(
            mt["expected_tput"].is_null() && mt["beacon_rx"].is_null(),
            "not printed"
        );

        let w0 = station_json(fx!("iw-station-dump-wlan0-2chain-2016.txt"));
        assert_eq!(w0.len(), 5);
        assert_eq!(
            (w0[0]["tx_bitrate"].as_i64(), w0[0]["mcs"].as_u64()),
            (Some(130), Some(14))
        );
        assert_eq!(w0[0]["preamble"], 1, "short = 1 as C");
        assert_eq!(w0[1]["tx_bitrate"], 57, "57.8 Mbit/s truncated as C's /10");
        assert_eq!(w0[1]["tx_bitrate_mbps"], 57.8);
        assert_eq!(w0[1]["rx_bitrate"], 26);
        // iw prints kbit/s as `%u.%u`: 30.29Mbps is 30029 kbit/s; C sends kbit/s*1000/1024.
        assert_eq!(w0[1]["expected_tput_kbps"], 30029);
        assert_eq!(w0[1]["expected_tput"], 30029 * 1000 / 1024);
        assert_eq!(w0[0]["expected_tput"], 45117 * 1000 / 1024);
        assert_eq!(w0[0]["tx_retries"], 939435);

        let mesh = &station_json(fx!("iw-station-dump-mesh-libremesh-iw6-flags-first.txt"))[0];
        assert_eq!(mesh["tx_bytes"], 15062972181u64, "counters above 2^32");
        assert_eq!(
            (mesh["signal"].as_i64(), mesh["inactive_time"].as_u64()),
            (Some(-90), Some(70))
        );
        assert_eq!(mesh["t_offset"], 1051619735425u64, "µs");
        assert_eq!(
            (mesh["tx_bitrate"].as_i64(), mesh["mcs"].as_u64()),
            (Some(30), Some(8))
        );
        assert_eq!(mesh["rx_bitrate"], 7, "7.2 truncated");
        assert_eq!(mesh["expected_tput"], 25882 * 1000 / 1024);
        assert_eq!(mesh["tx_failed"], 148431);

        let get = &station_json(fx!("iw-station-get-mesh-ath9k-tlwdr3600.txt"))[0];
        assert_eq!(get["interface"], "wlan0-mesh");
        assert_eq!(
            get["t_offset"], 18446744073577465064u64,
            "unsigned as nl80211"
        );

        let eht = &station_json(fx!("iw-station-dump-sta-ath12k-eht.txt"))[0];
        assert_eq!(
            (eht["tx_bitrate"].as_i64(), eht["rx_bitrate"].as_i64()),
            (Some(1441), Some(1801))
        );
        assert_eq!(eht["tx_bitrate_mbps"], 1441.1);
        assert_eq!(
            (eht["beacon_rx"].as_u64(), eht["beacon_loss"].as_u64()),
            (Some(8925), Some(0))
        );
        assert_eq!(eht["beacon_signal_avg"], -18, "dBm");
        assert!(eht["mcs"].is_null(), "EHT-MCS is not the HT MCS");

        let tessel = &station_json(fx!("iw-station-dump-openwrt-tessel2-mt7628-1sta.txt"))[0];
        assert_eq!(tessel["interface"], "wlan0");
        assert!(tessel["conn_time"].is_null(), "not printed: null, key kept");
    }

    #[test]
    fn station_dump_truncated_and_garbage() {
        let t = fx!("iw-station-dump-wlan0-2chain-2016.txt");
        let cut = &t[..t.len() / 2];
        let v = parse_station_dump(cut);
        assert!(!v.is_empty() && v.len() < 5);
        assert!(parse_station_dump("signal: -40 dBm\n\u{0}\u{1}\n").is_empty());
        let v = parse_station_dump(
            "Station 00:11:22:33:44:55 (on wlan0)\n\tsignal: x dBm\n\trx bytes: -1\n\tauthorized: maybe\n\texpected throughput: 1.2345Mbps\n",
        );
        assert_eq!((v[0].signal, v[0].rx_bytes), (None, None));
        assert_eq!((v[0].authorized, v[0].expected_tput_kbps), (None, None));
        assert!(parse_station_dump("").is_empty());
    }

    /// Issue 16, row 5: survey with C's keys, `quality`/`quality_max`, ciphers, upper-case MAC.
    #[test]
    fn iw_scans() {
        let a = parse_iw_scan(fx!("iw-scan-rpi0w-brcmfmac-11bss-wps-wpa1.txt"));
        assert_eq!(a.len(), 11);
        assert_eq!(
            a[0],
            Bss {
                mac: "4E:66:41:A0:5B:35".into(),
                ssid: Some("Android AP8905".into()),
                channel: Some(6),
                frequency: Some(2437),
                signal: Some(-43),
                encryption: "WPA2 PSK (CCMP)".into(),
                last_seen: Some(13740),
                quality: None,
                quality_max: None,
            }
        );
        let j = a[0].to_json();
        c_shape(&j, C_SURVEY);
        assert_eq!(
            (j["quality"].as_i64(), j["quality_max"].as_i64()),
            (Some(-43 + 110), Some(70))
        );
        assert_eq!(a[2].encryption, "none", "no Privacy bit, no RSN");
        let assoc = a.iter().find(|b| b.mac == "24:65:11:89:1C:28").unwrap();
        assert_eq!(
            assoc.encryption, "WPA/WPA2 PSK (TKIP, CCMP)",
            "C's cipher order"
        );
        let b = parse_iw_scan(fx!("iw-scan-rpi-brcmfmac-18bss.txt"));
        assert_eq!(b.len(), 18);
        assert_eq!(b[0].last_seen, Some(0), "the `N ms ago` form, not boottime");
        assert_eq!(b[1].encryption, "WPA2 802.1X (CCMP)");
        for x in a.iter().chain(&b) {
            let j = x.to_json();
            c_shape(&j, C_SURVEY);
            c_mac(&j["mac"]);
            assert!(x.frequency.is_some() && x.channel.is_some() && x.signal.is_some());
            let q = j["quality"].as_i64().unwrap();
            assert!((0..=70).contains(&q), "{q}");
        }
    }

    #[test]
    fn iw_scan_truncated_and_garbage() {
        let t = fx!("iw-scan-rpi0w-brcmfmac-11bss-wps-wpa1.txt");
        let cut = &t[..t.find("BSS 5c:dc").unwrap() + 7];
        let v = parse_iw_scan(cut);
        assert_eq!(v.len(), 1, "the torn BSS line is not a BSS");
        let cut = &t[..t.find("SSID: Android").unwrap()];
        let v = parse_iw_scan(cut);
        assert_eq!((v.len(), v[0].ssid.clone()), (1, None));
        assert!(v[0].to_json()["quality"].is_i64());
        assert!(parse_iw_scan("\u{0}garbage\n\tfreq: 2412\n").is_empty());
        assert_eq!(freq_to_channel(2412), Some(1));
        assert_eq!(freq_to_channel(5180), Some(36));
        assert_eq!(freq_to_channel(5955), Some(1));
        assert_eq!(freq_to_channel(2484), Some(14));
        assert_eq!(freq_to_channel(100), None);
        assert_eq!(
            (quality_of(-20), quality_of(-120), quality_of(-78)),
            (70, 0, 32)
        );
        // 4.9 GHz (Japan): channel 184 at 4920 MHz; 4990 used to underflow `f - 5000`.
        assert_eq!(freq_to_channel(4920), Some(184));
        assert_eq!(freq_to_channel(4990), None);
    }

    #[test]
    fn ubus_json_fixtures() {
        let i = parse_ubus_info(fx!("ubus-iwinfo-info-openwrt-mt7981-1.json")).unwrap();
        assert_eq!(i.bssid.as_deref(), Some("C8:75:F4:74:C6:92"));
        assert_eq!(
            (i.signal, i.noise, i.quality, i.quality_max),
            (Some(-22), Some(-83), Some(70), Some(70))
        );
        assert_eq!(
            (i.bitrate_kbps, i.channel, i.frequency),
            (Some(229400), Some(1), Some(2412))
        );
        let m = parse_ubus_info(fx!("ubus-iwinfo-info-openwrt-mt7603e-mesh.json")).unwrap();
        assert_eq!(
            (m.ssid.as_deref(), m.noise),
            (Some("meshID"), None),
            "noise 0 = unknown"
        );
        let a = parse_ubus_assoclist(
            fx!("ubus-iwinfo-assoclist-openwrt-mt7981-1.json"),
            "phy0-ap0",
        );
        assert_eq!(a.len(), 1);
        let st = a[0].to_json(Some("OpenWrt"));
        c_shape(&st, C_STATION);
        assert_eq!(st["mac"], "22:D3:75:23:7C:55");
        assert_eq!(
            (st["signal"].as_i64(), st["signal_avg"].as_i64()),
            (Some(-22), Some(-23))
        );
        assert_eq!(
            (st["rx_bytes"].as_u64(), st["tx_packets"].as_u64()),
            (Some(33375), Some(102))
        );
        assert_eq!(
            (st["tx_retries"].as_u64(), st["tx_failed"].as_u64()),
            (Some(43), Some(44))
        );
        assert_eq!(
            (st["inactive_time"].as_u64(), st["conn_time"].as_u64()),
            (Some(1320), Some(425))
        );
        assert_eq!(
            (st["tx_bitrate"].as_i64(), st["rx_bitrate"].as_i64()),
            (Some(229), Some(286))
        );
        assert_eq!(st["tx_bitrate_mbps"], 229.4);
        assert_eq!(st["expected_tput"], 202384 * 1000 / 1024);
        assert_eq!(
            (
                st["wmm"].as_bool(),
                st["mfp"].as_bool(),
                st["tdls"].as_bool()
            ),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(st["preamble"], 1);
        assert!(st["mcs"].is_null(), "an HE rate has no HT MCS");
        let s = parse_ubus_scan(fx!("ubus-iwinfo-scan-openwrt-mt7981-1.json"));
        assert!(s.len() > 3);
        assert_eq!(s[0].mac, "00:AD:D5:EF:0F:49");
        assert_eq!(
            (s[0].channel, s[0].frequency, s[0].signal),
            (Some(1), Some(2412), Some(-78))
        );
        assert_eq!(s[0].encryption, "WPA2 PSK (CCMP)");
        assert_eq!(s[1].encryption, "WPA/WPA2 PSK (CCMP)");
        for b in &s {
            let j = b.to_json();
            c_shape(&j, C_SURVEY);
            c_mac(&j["mac"]);
        }
        let j = s[0].to_json();
        assert_eq!(
            (j["quality"].as_i64(), j["quality_max"].as_i64()),
            (Some(32), Some(70))
        );
        assert_eq!(quality_of(-78), 32, "iwinfo's and C's formula agree");
    }

    #[test]
    fn ubus_truncated_and_garbage() {
        let t = fx!("ubus-iwinfo-scan-openwrt-mt7981-1.json");
        assert!(parse_ubus_scan(&t[..t.len() / 2]).is_empty());
        assert_eq!(parse_ubus_info("garbage"), None);
        assert_eq!(parse_ubus_info("[1,2]"), None);
        assert!(parse_ubus_assoclist("{\"results\":[{\"nomac\":1}]}", "x").is_empty());
        assert!(parse_ubus_devices("{").is_empty());
        assert_eq!(
            parse_ubus_devices("{\"devices\":[\"phy0-ap0\",\"phy1-ap0\"]}").len(),
            2
        );
    }

    /// Tools answering from fixture text, keyed by the command line.
    struct FakeTools(HashMap<String, &'static str>);
    impl Tools for FakeTools {
        fn run(&self, prog: &str, args: &[&str], _t: Duration) -> Option<String> {
            let key = format!("{prog} {}", args.join(" "));
            self.0.get(&key).map(|s| s.to_string())
        }
        fn has(&self, prog: &str) -> bool {
            self.0.keys().any(|k| k.starts_with(&format!("{prog} ")))
        }
    }

    /// Issue 16, row 4: ssids `bitrate` integer kbit/s, `tx_power` integer, upper-case bssid.
    #[test]
    fn openwrt_iw_and_ubus() {
        let mut m = HashMap::new();
        m.insert(
            "iw dev".to_string(),
            fx!("iw-dev-openwrt-ath10k-qca6174.txt"),
        );
        m.insert(
            "iw dev phy0-ap0 station dump".to_string(),
            fx!("iw-station-dump-openwrt-4chain-3sta-spaces.txt"),
        );
        m.insert(
            "ubus call iwinfo info {\"device\":\"phy0-ap0\"}".to_string(),
            fx!("ubus-iwinfo-info-openwrt-mt7981-1.json"),
        );
        m.insert(
            "ubus call iwinfo scan {\"device\":\"phy0-ap0\"}".to_string(),
            fx!("ubus-iwinfo-scan-openwrt-mt7981-1.json"),
        );
        let t = FakeTools(m);
        let w = read(true, true, &t);
        assert_eq!(w.ssids.len(), 1);
        let s = &w.ssids[0];
        c_shape(s, C_SSID);
        assert_eq!(s["interface"], "phy0-ap0");
        assert_eq!(s["ssid"], "OpenWrt");
        assert_eq!(s["bssid"], "00:15:61:21:EB:62");
        assert_eq!(
            (s["channel"].as_u64(), s["frequency"].as_u64()),
            (Some(36), Some(5180))
        );
        assert_eq!(s["tx_power"], json!(23), "integer dBm, not 23.0");
        assert_eq!(s["bitrate"], json!(229400), "integer kbit/s as C");
        assert_eq!(s["bitrate_mbps"], json!(229.4), "the new Mbit/s key");
        assert_eq!(
            (
                s["noise"].as_i64(),
                s["quality"].as_i64(),
                s["quality_max"].as_i64()
            ),
            (Some(-83), Some(70), Some(70))
        );
        assert_eq!(w.stations.len(), 3);
        for st in &w.stations {
            assert_eq!(st["ssid"], "OpenWrt");
            c_shape(st, C_STATION);
            c_mac(&st["mac"]);
        }
        assert!(w.survey.len() > 3);
        for b in &w.survey {
            c_shape(b, C_SURVEY);
            c_mac(&b["mac"]);
        }
        let w = read(false, false, &t);
        assert!(w.ssids.is_empty() && w.survey.is_empty());
        let w = read(true, false, &t);
        assert!(w.survey.is_empty() && !w.stations.is_empty());
    }

    /// An AP with `iw` only: signal, bitrate and quality from the stations, as C does.
    #[test]
    fn openwrt_iw_only_ap() {
        let mut m = HashMap::new();
        m.insert(
            "iw dev".to_string(),
            fx!("iw-dev-openwrt-3radio-ath10k.txt"),
        );
        m.insert(
            "iw dev phy2-ap0 station dump".to_string(),
            fx!("iw-station-dump-wlan1-3chain-2016.txt"),
        );
        let w = read(true, false, &FakeTools(m));
        assert_eq!(w.ssids.len(), 3);
        let s = &w.ssids[0];
        c_shape(s, C_SSID);
        assert_eq!(s["bssid"], "C4:41:1E:2A:B8:F8");
        assert_eq!(s["tx_power"], 23);
        let sts: Vec<&Value> = w
            .stations
            .iter()
            .filter(|x| x["ssid"] == "AltheaHome-5")
            .collect();
        assert_eq!(sts.len(), 3);
        let sig: Vec<f64> = sts.iter().map(|x| x["signal"].as_f64().unwrap()).collect();
        let mean = (sig.iter().sum::<f64>() / 3.0).round() as i64;
        assert_eq!(s["signal"], mean);
        assert_eq!(s["quality"], quality_of(mean));
        assert!(
            s["bitrate"].as_u64().unwrap() > 1000,
            "kbit/s: {}",
            s["bitrate"]
        );
        assert!(s["noise"].is_null(), "no iwinfo: noise unknown");
        let idle = &w.ssids[1];
        assert!(
            idle["signal"].is_null() && idle["bitrate"].is_null(),
            "no stations"
        );
        assert_eq!(idle["quality_max"], 70);
    }

    #[test]
    fn pi_client_iw_only_and_nothing() {
        let mut m = HashMap::new();
        m.insert(
            "iw dev".to_string(),
            "phy#0\n\tInterface wlan0\n\t\taddr 06:32:de:8e:5c:5f\n\t\ttype managed\n",
        );
        m.insert(
            "iw dev wlan0 link".to_string(),
            fx!("iw-link-rpi-2-tabs.txt"),
        );
        m.insert(
            "iw dev wlan0 scan".to_string(),
            fx!("iw-scan-rpi-brcmfmac-18bss.txt"),
        );
        let w = read(true, true, &FakeTools(m));
        assert_eq!(w.ssids.len(), 1);
        c_shape(&w.ssids[0], C_SSID);
        assert_eq!(w.ssids[0]["bssid"], "70:8B:CD:E7:AC:D0");
        assert_eq!(w.ssids[0]["signal"], -21);
        assert_eq!(w.ssids[0]["bitrate"], json!(24000), "24.0 MBit/s as kbit/s");
        assert_eq!(w.ssids[0]["bitrate_mbps"], json!(24.0));
        assert_eq!(w.ssids[0]["quality"], quality_of(-21));
        assert!(w.ssids[0]["noise"].is_null());
        assert!(w.stations.is_empty(), "a client has no stations");
        assert_eq!(w.survey.len(), 18);
        let w = read(true, true, &FakeTools(HashMap::new()));
        assert!(w.ssids.is_empty() && w.stations.is_empty() && w.survey.is_empty());
    }

    #[test]
    fn ubus_only_openwrt() {
        let mut m = HashMap::new();
        m.insert(
            "ubus call iwinfo devices".to_string(),
            "{\"devices\":[\"phy0-ap0\"]}",
        );
        m.insert(
            "ubus call iwinfo info {\"device\":\"phy0-ap0\"}".to_string(),
            fx!("ubus-iwinfo-info-openwrt-mt7981-1.json"),
        );
        m.insert(
            "ubus call iwinfo assoclist {\"device\":\"phy0-ap0\"}".to_string(),
            fx!("ubus-iwinfo-assoclist-openwrt-mt7981-1.json"),
        );
        let w = read(true, false, &FakeTools(m));
        assert_eq!(w.ssids.len(), 1);
        c_shape(&w.ssids[0], C_SSID);
        assert_eq!(w.ssids[0]["bssid"], "C8:75:F4:74:C6:92");
        assert_eq!(w.ssids[0]["tx_power"], 20);
        assert_eq!(w.stations.len(), 1);
        assert_eq!(w.stations[0]["mac"], "22:D3:75:23:7C:55");
    }

    #[test]
    fn real_tools_absent_or_failing() {
        let t = SystemTools;
        assert!(!t.has("socketman-no-such-tool"));
        assert_eq!(t.run("socketman-no-such-tool", &[], TOOL_TIMEOUT), None);
        assert_eq!(
            t.run("sh", &["-c", "echo hi"], TOOL_TIMEOUT).as_deref(),
            Some("hi\n")
        );
        assert_eq!(t.run("sh", &["-c", "exit 3"], TOOL_TIMEOUT), None);
        let start = Instant::now();
        assert_eq!(
            t.run("sh", &["-c", "exec sleep 5"], Duration::from_millis(200)),
            None
        );
        assert!(start.elapsed() < Duration::from_secs(3));
        // This VM has no wireless: empty lists, no error.
        let w = read(true, true, &t);
        let _ = (w.ssids, w.stations, w.survey);
    }
}
