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

/// One associated station.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Station {
    pub interface: String,
    pub mac: String,
    pub signal: Option<i64>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub rx_packets: Option<u64>,
    pub tx_packets: Option<u64>,
    pub inactive_time: Option<u64>,
    pub conn_time: Option<u64>,
    pub tx_bitrate: Option<f64>,
    pub rx_bitrate: Option<f64>,
}

impl Station {
    fn to_json(&self, ssid: Option<&str>) -> Value {
        json!({
            "interface": self.interface, "ssid": ssid, "mac": self.mac, "signal": self.signal,
            "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets, "tx_packets": self.tx_packets,
            "inactive_time": self.inactive_time, "conn_time": self.conn_time,
            "tx_bitrate": self.tx_bitrate, "rx_bitrate": self.rx_bitrate,
        })
    }
}

/// One neighbouring BSS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bss {
    pub mac: String,
    pub ssid: Option<String>,
    pub channel: Option<u32>,
    pub frequency: Option<u32>,
    pub signal: Option<i64>,
    pub encryption: String,
    pub last_seen: Option<u64>,
}

impl Bss {
    fn to_json(&self) -> Value {
        json!({
            "mac": self.mac, "ssid": self.ssid, "channel": self.channel,
            "frequency": self.frequency, "signal": self.signal,
            "encryption": self.encryption, "last_seen": self.last_seen,
        })
    }
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
            if ssid_now.is_some() || link.is_some() || info.is_some() {
                let bssid = if managed {
                    link.as_ref().map(|l| l.bssid.clone())
                } else {
                    i.addr.clone()
                }
                .or_else(|| info_ref.and_then(|u| u.bssid.clone()));
                w.ssids.push(json!({
                    "interface": i.name,
                    "ssid": ssid_now,
                    "bssid": bssid,
                    "channel": i.channel.or_else(|| info_ref.and_then(|u| u.channel)),
                    "frequency": i.frequency
                        .or_else(|| link.as_ref().and_then(|l| l.frequency))
                        .or_else(|| info_ref.and_then(|u| u.frequency)),
                    "tx_power": i.tx_power.or_else(|| info_ref.and_then(|u| u.tx_power)),
                    "signal": info_ref.and_then(|u| u.signal).or_else(|| link.as_ref().and_then(|l| l.signal)),
                    "noise": info_ref.and_then(|u| u.noise),
                    "bitrate": info_ref.and_then(|u| u.bitrate).or_else(|| link.as_ref().and_then(|l| l.tx_bitrate)),
                    "quality": info_ref.and_then(|u| u.quality),
                    "quality_max": info_ref.and_then(|u| u.quality_max),
                }));
            }
            if !managed {
                let stations = if use_iw {
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
                for mut s in stations {
                    if s.interface.is_empty() {
                        s.interface = i.name.clone();
                    }
                    w.stations.push(s.to_json(ssid.as_deref()));
                }
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

    #[test]
    fn iw_link_fixtures() {
        let a = parse_iw_link(fx!("iw-link-rpi-2-tabs.txt")).unwrap();
        assert_eq!(a.bssid, "70:8b:cd:e7:ac:d0");
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

    #[test]
    fn station_dumps_all_fixtures() {
        let mt = parse_station_dump(fx!("iw-station-dump-openwrt-mt7916.txt"));
        assert_eq!(
            mt,
            vec![Station {
                interface: "phy1-ap0".into(),
                mac: "ae:d0:e6:3c:90:ec".into(),
                signal: Some(-53),
                rx_bytes: Some(9158),
                tx_bytes: Some(8317),
                rx_packets: Some(119),
                tx_packets: Some(80),
                inactive_time: Some(140),
                conn_time: Some(6),
                tx_bitrate: Some(390.0),
                rx_bitrate: Some(6.0),
            }]
        );
        let w0 = parse_station_dump(fx!("iw-station-dump-wlan0-2chain-2016.txt"));
        assert_eq!(w0.len(), 5);
        assert_eq!((w0[0].signal, w0[0].tx_bitrate), (Some(-55), Some(130.0)));
        assert_eq!(
            parse_station_dump(fx!("iw-station-dump-wlan1-3chain-2016.txt")).len(),
            3
        );
        let four = parse_station_dump(fx!("iw-station-dump-openwrt-4chain-3sta-spaces.txt"));
        assert_eq!(four.len(), 3);
        assert!(four
            .iter()
            .all(|s| s.signal.is_some() && s.rx_bytes.is_some()));
        let tessel = parse_station_dump(fx!("iw-station-dump-openwrt-tessel2-mt7628-1sta.txt"));
        assert_eq!(
            (tessel[0].interface.as_str(), tessel[0].conn_time),
            ("wlan0", None)
        );
        let mesh = parse_station_dump(fx!("iw-station-dump-mesh-libremesh-iw6-flags-first.txt"));
        assert_eq!(mesh[0].tx_bytes, Some(15062972181), "counters above 2^32");
        assert_eq!(
            (mesh[0].signal, mesh[0].inactive_time),
            (Some(-90), Some(70))
        );
        let get = parse_station_dump(fx!("iw-station-get-mesh-ath9k-tlwdr3600.txt"));
        assert_eq!(get.len(), 1);
        assert_eq!(get[0].interface, "wlan0-mesh");
        let eht = parse_station_dump(fx!("iw-station-dump-sta-ath12k-eht.txt"));
        assert_eq!(
            (eht[0].tx_bitrate, eht[0].rx_bitrate),
            (Some(1441.1), Some(1801.4))
        );
    }

    #[test]
    fn station_dump_truncated_and_garbage() {
        let t = fx!("iw-station-dump-wlan0-2chain-2016.txt");
        let cut = &t[..t.len() / 2];
        let v = parse_station_dump(cut);
        assert!(!v.is_empty() && v.len() < 5);
        assert!(parse_station_dump("signal: -40 dBm\n\u{0}\u{1}\n").is_empty());
        let v = parse_station_dump(
            "Station 00:11:22:33:44:55 (on wlan0)\n\tsignal: x dBm\n\trx bytes: -1\n",
        );
        assert_eq!((v[0].signal, v[0].rx_bytes), (None, None));
        assert!(parse_station_dump("").is_empty());
    }

    #[test]
    fn iw_scans() {
        let a = parse_iw_scan(fx!("iw-scan-rpi0w-brcmfmac-11bss-wps-wpa1.txt"));
        assert_eq!(a.len(), 11);
        assert_eq!(
            a[0],
            Bss {
                mac: "4e:66:41:a0:5b:35".into(),
                ssid: Some("Android AP8905".into()),
                channel: Some(6),
                frequency: Some(2437),
                signal: Some(-43),
                encryption: "WPA2 PSK".into(),
                last_seen: Some(13740),
            }
        );
        assert_eq!(a[2].encryption, "none", "no Privacy bit, no RSN");
        let assoc = a.iter().find(|b| b.mac == "24:65:11:89:1c:28").unwrap();
        assert_eq!(assoc.encryption, "WPA/WPA2 PSK");
        let b = parse_iw_scan(fx!("iw-scan-rpi-brcmfmac-18bss.txt"));
        assert_eq!(b.len(), 18);
        assert_eq!(b[0].last_seen, Some(0), "the `N ms ago` form, not boottime");
        assert_eq!(b[1].encryption, "WPA2 802.1X");
        assert!(b
            .iter()
            .all(|x| x.frequency.is_some() && x.channel.is_some() && x.signal.is_some()));
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
        assert!(parse_iw_scan("\u{0}garbage\n\tfreq: 2412\n").is_empty());
        assert_eq!(freq_to_channel(2412), Some(1));
        assert_eq!(freq_to_channel(5180), Some(36));
        assert_eq!(freq_to_channel(5955), Some(1));
        assert_eq!(freq_to_channel(2484), Some(14));
        assert_eq!(freq_to_channel(100), None);
        // 4.9 GHz (Japan): channel 184 at 4920 MHz; 4990 used to underflow `f - 5000`.
        assert_eq!(freq_to_channel(4920), Some(184));
        assert_eq!(freq_to_channel(4990), None);
    }

    #[test]
    fn ubus_json_fixtures() {
        let i = parse_ubus_info(fx!("ubus-iwinfo-info-openwrt-mt7981-1.json")).unwrap();
        assert_eq!(i.bssid.as_deref(), Some("c8:75:f4:74:c6:92"));
        assert_eq!(
            (i.signal, i.noise, i.quality, i.quality_max),
            (Some(-22), Some(-83), Some(70), Some(70))
        );
        assert_eq!(
            (i.bitrate, i.channel, i.frequency),
            (Some(229.4), Some(1), Some(2412))
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
        assert_eq!(
            a,
            vec![Station {
                interface: "phy0-ap0".into(),
                mac: "22:d3:75:23:7c:55".into(),
                signal: Some(-22),
                rx_bytes: Some(33375),
                tx_bytes: Some(10723),
                rx_packets: Some(510),
                tx_packets: Some(102),
                inactive_time: Some(1320),
                conn_time: Some(425),
                tx_bitrate: Some(229.4),
                rx_bitrate: Some(286.7),
            }]
        );
        let s = parse_ubus_scan(fx!("ubus-iwinfo-scan-openwrt-mt7981-1.json"));
        assert!(s.len() > 3);
        assert_eq!(s[0].mac, "00:ad:d5:ef:0f:49");
        assert_eq!(
            (s[0].channel, s[0].frequency, s[0].signal),
            (Some(1), Some(2412), Some(-78))
        );
        assert_eq!(s[0].encryption, "WPA2 PSK");
        assert_eq!(s[1].encryption, "WPA/WPA2 PSK");
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
        assert_eq!(s["interface"], "phy0-ap0");
        assert_eq!(s["ssid"], "OpenWrt");
        assert_eq!(s["bssid"], "00:15:61:21:eb:62");
        assert_eq!(
            (s["channel"].as_u64(), s["frequency"].as_u64()),
            (Some(36), Some(5180))
        );
        assert_eq!(
            (s["noise"].as_i64(), s["quality_max"].as_i64()),
            (Some(-83), Some(70))
        );
        assert_eq!(w.stations.len(), 3);
        assert!(w.stations.iter().all(|st| st["ssid"] == "OpenWrt"));
        assert!(w.survey.len() > 3);
        for k in [
            "mac",
            "ssid",
            "channel",
            "frequency",
            "signal",
            "encryption",
            "last_seen",
        ] {
            assert!(w.survey[0].get(k).is_some(), "{k}");
        }
        let w = read(false, false, &t);
        assert!(w.ssids.is_empty() && w.survey.is_empty());
        let w = read(true, false, &t);
        assert!(w.survey.is_empty() && !w.stations.is_empty());
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
        assert_eq!(w.ssids[0]["bssid"], "70:8b:cd:e7:ac:d0");
        assert_eq!(w.ssids[0]["signal"], -21);
        assert_eq!(w.ssids[0]["bitrate"], 24.0);
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
        assert_eq!(w.ssids[0]["bssid"], "c8:75:f4:74:c6:92");
        assert_eq!(w.stations.len(), 1);
        assert_eq!(w.stations[0]["mac"], "22:d3:75:23:7c:55");
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
