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
#![forbid(unsafe_code)]

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

/// An interface as `iw dev` describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IwIface {
    pub phy: Option<String>,
    pub name: String,
    pub addr: Option<String>,
    pub ssid: Option<String>,
    pub kind: Option<String>,
    pub channel: Option<u32>,
    pub frequency: Option<u32>,
    pub tx_power: Option<f64>,
}

/// Splits `key<sep>value` on the first `:` and trims both (tabs and spaces vary).
fn kv(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim(), v.trim()))
}

fn first_num<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.split_whitespace().next()?.parse().ok()
}

/// First number of a string, as a float rounded to the nearest integer (`-43.01` → -43).
fn first_int(s: &str) -> Option<i64> {
    let f: f64 = first_num(s)?;
    f.is_finite().then(|| f.round() as i64)
}

/// `iw dev` (or `iw dev X info`) output.
pub fn parse_iw_dev(text: &str) -> Vec<IwIface> {
    let mut out: Vec<IwIface> = Vec::new();
    let mut phy: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(p) = line.strip_prefix("phy#") {
            phy = Some(format!("phy{}", p.trim()));
            continue;
        }
        if let Some(name) = line.strip_prefix("Interface ") {
            out.push(IwIface {
                phy: phy.clone(),
                name: name.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        let (key, rest) = match line.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => continue,
        };
        match key {
            "addr" => cur.addr = Some(rest.to_ascii_lowercase()),
            "ssid" => cur.ssid = Some(line["ssid".len()..].trim_start().to_string()),
            "type" => cur.kind = Some(rest.to_string()),
            "wiphy" if cur.phy.is_none() => cur.phy = Some(format!("phy{rest}")),
            "channel" => {
                cur.channel = first_num(rest);
                cur.frequency = rest
                    .split_once('(')
                    .and_then(|(_, f)| first_num::<f64>(f))
                    .map(|f| f.round() as u32);
            }
            "txpower" => cur.tx_power = first_num(rest),
            _ => {}
        }
    }
    out
}

/// `iw dev X link`: the AP a client interface is connected to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    pub bssid: String,
    pub ssid: Option<String>,
    pub frequency: Option<u32>,
    pub signal: Option<i64>,
    pub tx_bitrate: Option<f64>,
}

/// `iw dev X link` output; `None` for `Not connected.` or garbage.
pub fn parse_iw_link(text: &str) -> Option<Link> {
    let mut lines = text.lines();
    let first = lines.next()?.trim();
    let rest = first.strip_prefix("Connected to ")?;
    let bssid = rest.split_whitespace().next()?.to_ascii_lowercase();
    let mut l = Link {
        bssid,
        ..Default::default()
    };
    for line in lines {
        let Some((k, v)) = kv(line) else { continue };
        match k {
            "SSID" => l.ssid = Some(v.to_string()),
            "freq" => l.frequency = first_num::<f64>(v).map(|f| f.round() as u32),
            "signal" => l.signal = first_int(v),
            "tx bitrate" => l.tx_bitrate = first_num(v),
            _ => {}
        }
    }
    Some(l)
}

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

/// `iw dev X station dump` (or `station get`) output. Field order does not matter.
pub fn parse_station_dump(text: &str) -> Vec<Station> {
    let mut out: Vec<Station> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Station ") {
            let mut it = rest.split_whitespace();
            let Some(mac) = it.next() else { continue };
            let iface = rest
                .split_once("(on ")
                .and_then(|(_, r)| r.split(')').next())
                .unwrap_or("")
                .to_string();
            out.push(Station {
                interface: iface,
                mac: mac.to_ascii_lowercase(),
                ..Default::default()
            });
            continue;
        }
        let Some(s) = out.last_mut() else { continue };
        let Some((k, v)) = kv(t) else { continue };
        match k {
            "inactive time" => s.inactive_time = first_num(v),
            "rx bytes" => s.rx_bytes = first_num(v),
            "tx bytes" => s.tx_bytes = first_num(v),
            "rx packets" => s.rx_packets = first_num(v),
            "tx packets" => s.tx_packets = first_num(v),
            "signal" => s.signal = first_int(v),
            "tx bitrate" => s.tx_bitrate = first_num(v),
            "rx bitrate" => s.rx_bitrate = first_num(v),
            "connected time" => s.conn_time = first_num(v),
            _ => {}
        }
    }
    out
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
        4910..=5895 => Some((f - 5000) / 5),
        _ => None,
    }
}

/// Encryption label from protocol versions and authentication suites.
fn encryption_label(
    wpa1: bool,
    rsn: bool,
    sae_only: bool,
    suites: &BTreeSet<String>,
    privacy: bool,
) -> String {
    let mut protos = Vec::new();
    if wpa1 {
        protos.push("WPA");
    }
    if rsn {
        if sae_only {
            protos.push("WPA3");
        } else if suites.contains("SAE") {
            protos.push("WPA2/WPA3");
        } else {
            protos.push("WPA2");
        }
    }
    if protos.is_empty() {
        return if privacy { "WEP".into() } else { "none".into() };
    }
    let auth: Vec<&str> = suites.iter().map(String::as_str).collect();
    if auth.is_empty() {
        protos.join("/")
    } else {
        format!("{} {}", protos.join("/"), auth.join("/"))
    }
}

fn suite_name(s: &str) -> String {
    match s.trim() {
        "IEEE 802.1X" | "802.1x" | "8021x" => "802.1X".into(),
        "sae" => "SAE".into(),
        "psk" => "PSK".into(),
        other => other.to_string(),
    }
}

/// `iw dev X scan` output.
pub fn parse_iw_scan(text: &str) -> Vec<Bss> {
    #[derive(Default)]
    struct Acc {
        bss: Bss,
        wpa1: bool,
        rsn: bool,
        privacy: bool,
        suites: BTreeSet<String>,
        rsn_suites: BTreeSet<String>,
    }
    fn finish(a: Acc) -> Bss {
        let mut b = a.bss;
        if b.channel.is_none() {
            b.channel = b.frequency.and_then(freq_to_channel);
        }
        let sae_only = !a.rsn_suites.is_empty() && a.rsn_suites.iter().all(|s| s == "SAE");
        b.encryption = encryption_label(a.wpa1, a.rsn, sae_only, &a.suites, a.privacy);
        b
    }
    let mut out = Vec::new();
    let mut cur: Option<Acc> = None;
    let mut section = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("BSS ") {
            if let Some(a) = cur.take() {
                out.push(finish(a));
            }
            let mac: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == ':')
                .collect();
            if mac.len() == 17 {
                cur = Some(Acc {
                    bss: Bss {
                        mac: mac.to_ascii_lowercase(),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            }
            section.clear();
            continue;
        }
        let Some(a) = cur.as_mut() else { continue };
        // Top-level lines have one level of indent; deeper ones belong to `section`.
        let indent = line.len() - line.trim_start().len();
        let deeper = line.starts_with("\t\t") || (indent > 1 && !line.starts_with('\t'));
        let t = line.trim();
        let item = t.trim_start_matches('*').trim();
        if !deeper {
            let Some((k, v)) = kv(t) else { continue };
            section = k.to_string();
            match k {
                "freq" => a.bss.frequency = first_num::<f64>(v).map(|f| f.round() as u32),
                "signal" => a.bss.signal = first_int(v),
                "last seen" if v.ends_with("ms ago") => a.bss.last_seen = first_num(v),
                "SSID" => a.bss.ssid = Some(v.to_string()),
                "DS Parameter set" => a.bss.channel = v.strip_prefix("channel").and_then(first_num),
                "capability" => a.privacy = v.split_whitespace().any(|w| w == "Privacy"),
                "RSN" => a.rsn = true,
                "WPA" => a.wpa1 = true,
                _ => {}
            }
            // `RSN:\t * Version: 1`: the first item sits on the section line.
            if let Some((_, inner)) = t.split_once(":") {
                let inner = inner.trim().trim_start_matches('*').trim();
                if let Some((ik, iv)) = kv(inner) {
                    section_item(a, &section, ik, iv);
                }
            }
        } else if let Some((k, v)) = kv(item) {
            let sec = section.clone();
            section_item(a, &sec, k, v);
        }
    }
    fn section_item(a: &mut Acc, section: &str, k: &str, v: &str) {
        if (section == "RSN" || section == "WPA") && k == "Authentication suites" {
            let names: Vec<String> = split_suites(v);
            for n in names {
                if section == "RSN" {
                    a.rsn_suites.insert(n.clone());
                }
                a.suites.insert(n);
            }
        }
    }
    if let Some(a) = cur.take() {
        out.push(finish(a));
    }
    out
}

/// `PSK`, `IEEE 802.1X`, `SAE`, `FT/PSK`, … separated by spaces.
fn split_suites(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words: Vec<&str> = v.split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "IEEE" && i + 1 < words.len() {
            out.push(suite_name(&format!("IEEE {}", words[i + 1])));
            i += 2;
        } else {
            out.push(suite_name(words[i]));
            i += 1;
        }
    }
    out
}

/// What `ubus call iwinfo info` says about one interface.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UbusInfo {
    pub ssid: Option<String>,
    pub bssid: Option<String>,
    pub channel: Option<u32>,
    pub frequency: Option<u32>,
    pub tx_power: Option<f64>,
    pub signal: Option<i64>,
    pub noise: Option<i64>,
    pub bitrate: Option<f64>,
    pub quality: Option<i64>,
    pub quality_max: Option<i64>,
}

fn jstr(v: &Value, k: &str) -> Option<String> {
    v.get(k)?.as_str().map(str::to_string)
}
fn ju32(v: &Value, k: &str) -> Option<u32> {
    v.get(k)?.as_u64().and_then(|n| u32::try_from(n).ok())
}
fn ji64(v: &Value, k: &str) -> Option<i64> {
    v.get(k)?.as_i64()
}
fn ju64(v: &Value, k: &str) -> Option<u64> {
    v.get(k)?.as_u64()
}
/// iwinfo rates are kbit/s; the record uses Mbit/s.
fn kbit_to_mbit(v: &Value, k: &str) -> Option<f64> {
    v.get(k)?.as_f64().map(|r| r / 1000.0)
}

/// `ubus call iwinfo info {"device":X}` JSON.
pub fn parse_ubus_info(text: &str) -> Option<UbusInfo> {
    let v: Value = serde_json::from_str(text).ok()?;
    if !v.is_object() {
        return None;
    }
    Some(UbusInfo {
        ssid: jstr(&v, "ssid"),
        bssid: jstr(&v, "bssid").map(|b| b.to_ascii_lowercase()),
        channel: ju32(&v, "channel"),
        frequency: ju32(&v, "frequency"),
        tx_power: v.get("txpower").and_then(Value::as_f64),
        signal: ji64(&v, "signal"),
        noise: ji64(&v, "noise").filter(|n| *n != 0),
        bitrate: kbit_to_mbit(&v, "bitrate"),
        quality: ji64(&v, "quality"),
        quality_max: ji64(&v, "quality_max"),
    })
}

/// `ubus call iwinfo assoclist {"device":X}` JSON.
pub fn parse_ubus_assoclist(text: &str, interface: &str) -> Vec<Station> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let Some(list) = v.get("results").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| {
            let mac = jstr(s, "mac")?.to_ascii_lowercase();
            let rx = s.get("rx").cloned().unwrap_or(Value::Null);
            let tx = s.get("tx").cloned().unwrap_or(Value::Null);
            Some(Station {
                interface: interface.to_string(),
                mac,
                signal: ji64(s, "signal"),
                rx_bytes: ju64(&rx, "bytes"),
                tx_bytes: ju64(&tx, "bytes"),
                rx_packets: ju64(&rx, "packets"),
                tx_packets: ju64(&tx, "packets"),
                inactive_time: ju64(s, "inactive"),
                conn_time: ju64(s, "connected_time"),
                tx_bitrate: kbit_to_mbit(&tx, "rate"),
                rx_bitrate: kbit_to_mbit(&rx, "rate"),
            })
        })
        .collect()
}

/// `ubus call iwinfo scan {"device":X}` JSON.
pub fn parse_ubus_scan(text: &str) -> Vec<Bss> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let Some(list) = v.get("results").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|b| {
            let mac = jstr(b, "bssid")?.to_ascii_lowercase();
            let enc = b.get("encryption").cloned().unwrap_or(Value::Null);
            let enabled = enc.get("enabled").and_then(Value::as_bool).unwrap_or(false);
            let versions: Vec<u64> = enc
                .get("wpa")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let suites: BTreeSet<String> = enc
                .get("authentication")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(suite_name).collect())
                .unwrap_or_default();
            let encryption = if !enabled {
                "none".to_string()
            } else if versions.is_empty() {
                "WEP".to_string()
            } else {
                let protos: Vec<String> = versions
                    .iter()
                    .map(|n| {
                        if *n == 1 {
                            "WPA".into()
                        } else {
                            format!("WPA{n}")
                        }
                    })
                    .collect();
                let auth: Vec<&str> = suites.iter().map(String::as_str).collect();
                if auth.is_empty() {
                    protos.join("/")
                } else {
                    format!("{} {}", protos.join("/"), auth.join("/"))
                }
            };
            let frequency = ju32(b, "mhz");
            Some(Bss {
                mac,
                ssid: jstr(b, "ssid"),
                channel: ju32(b, "channel").or_else(|| frequency.and_then(freq_to_channel)),
                frequency,
                signal: ji64(b, "signal"),
                encryption,
                last_seen: None,
            })
        })
        .collect()
}

/// `ubus call iwinfo devices` JSON → interface names.
pub fn parse_ubus_devices(text: &str) -> Vec<String> {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("devices").and_then(Value::as_array).cloned())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
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

fn ubus_info(tools: &dyn Tools, iface: &str) -> Option<UbusInfo> {
    let arg = json!({ "device": iface }).to_string();
    parse_ubus_info(&tools.run("ubus", &["call", "iwinfo", "info", &arg], TOOL_TIMEOUT)?)
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
            include_str!(concat!("../../../tests/fixtures/", $f))
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
