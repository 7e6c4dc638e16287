//! Parsers of `iw` output (`iw dev`, `iw dev X link`, `station dump`, `scan`). Pure: text in,
//! values out; what is not understood is skipped.
#![forbid(unsafe_code)]

use super::{freq_to_channel, Bss, Station};
use std::collections::BTreeSet;

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
    let bssid = super::mac_upper(rest.split_whitespace().next()?);
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

fn yes_no(v: &str) -> Option<bool> {
    match v.split_whitespace().next()? {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// `short`/`long` → the C agent's 1/2.
pub(super) fn preamble(v: &str) -> Option<u8> {
    match v.split_whitespace().next()? {
        "short" => Some(1),
        "long" => Some(2),
        _ => None,
    }
}

/// The HT MCS index of a rate line (`130.0 MBit/s MCS 14 short GI` → 14). `VHT-MCS 9`,
/// `HE-MCS 11`, `EHT-MCS 13` are other attributes in nl80211 and give `None`.
fn ht_mcs(v: &str) -> Option<u64> {
    let w: Vec<&str> = v.split_whitespace().collect();
    w.iter()
        .position(|x| *x == "MCS")
        .and_then(|i| w.get(i + 1))
        .and_then(|n| n.parse().ok())
}

/// iw's `expected throughput:\t%u.%uMbps` (kbit/s / 1000 and kbit/s % 1000, the remainder
/// not zero-padded) → kbit/s: `25.882Mbps` → 25882, `30.29Mbps` → 30029.
fn expected_kbps(v: &str) -> Option<u64> {
    let n = v.trim().strip_suffix("Mbps")?.trim();
    let (a, b) = n.split_once('.').unwrap_or((n, "0"));
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (b < 1000).then(|| a * 1000 + b)
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
                mac: super::mac_upper(mac),
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
            "tx retries" => s.tx_retries = first_num(v),
            "tx failed" => s.tx_failed = first_num(v),
            "beacon loss" => s.beacon_loss = first_num(v),
            "beacon rx" => s.beacon_rx = first_num(v),
            "signal" => s.signal = first_int(v),
            "signal avg" => s.signal_avg = first_int(v),
            "beacon signal avg" => s.beacon_signal_avg = first_int(v),
            "Toffset" => s.t_offset = first_num(v),
            "tx bitrate" => {
                s.tx_bitrate = first_num(v);
                s.mcs = ht_mcs(v);
            }
            "rx bitrate" => s.rx_bitrate = first_num(v),
            "expected throughput" => s.expected_tput_kbps = expected_kbps(v),
            "connected time" => s.conn_time = first_num(v),
            "authorized" => s.authorized = yes_no(v),
            "authenticated" => s.authenticated = yes_no(v),
            "associated" => s.associated = yes_no(v),
            "WMM/WME" => s.wmm = yes_no(v),
            "MFP" => s.mfp = yes_no(v),
            "TDLS peer" => s.tdls = yes_no(v),
            "preamble" => s.preamble = preamble(v),
            _ => {}
        }
    }
    out
}

/// Encryption label from protocol versions and authentication suites.
pub(super) fn encryption_label(
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
    let auth = suites_in_c_order(suites);
    if auth.is_empty() {
        protos.join("/")
    } else {
        format!("{} {}", protos.join("/"), auth.join("/"))
    }
}

/// Authentication suites in the C agent's order (`PSK`, `802.1X`), then the ones it did
/// not know (`SAE`, `FT/PSK`, …) alphabetically.
pub(super) fn suites_in_c_order(suites: &BTreeSet<String>) -> Vec<&str> {
    let known = ["PSK", "802.1X"];
    let mut v: Vec<&str> = known
        .iter()
        .copied()
        .filter(|k| suites.contains(*k))
        .collect();
    v.extend(
        suites
            .iter()
            .map(String::as_str)
            .filter(|s| !known.contains(s)),
    );
    v
}

/// `iw`/iwinfo cipher names → the C agent's (`ccmp` → `CCMP`, `wep-40` → `WEP-40`).
pub(super) fn cipher_name(s: &str) -> String {
    s.trim().to_ascii_uppercase()
}

/// The C agent's encryption string: the label, then the union of pairwise and group
/// ciphers in parentheses, in C's order (WEP-40, WEP-104, TKIP, CCMP, WRAP, AES-OCB, CKIP;
/// others such as GCMP after, alphabetically): `WPA2 PSK (CCMP)`, `WPA/WPA2 PSK (TKIP, CCMP)`.
/// `none` stays `none`; a label without known ciphers has no parentheses.
pub(super) fn with_ciphers(label: String, ciphers: &BTreeSet<String>) -> String {
    if label == "none" || ciphers.is_empty() {
        return label;
    }
    let order = [
        "WEP-40", "WEP-104", "TKIP", "CCMP", "WRAP", "AES-OCB", "CKIP",
    ];
    let mut v: Vec<&str> = order
        .iter()
        .copied()
        .filter(|c| ciphers.contains(*c))
        .collect();
    v.extend(
        ciphers
            .iter()
            .map(String::as_str)
            .filter(|c| !order.contains(c)),
    );
    format!("{label} ({})", v.join(", "))
}

pub(super) fn suite_name(s: &str) -> String {
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
        ciphers: BTreeSet<String>,
    }
    fn finish(a: Acc) -> Bss {
        let mut b = a.bss;
        if b.channel.is_none() {
            b.channel = b.frequency.and_then(freq_to_channel);
        }
        let sae_only = !a.rsn_suites.is_empty() && a.rsn_suites.iter().all(|s| s == "SAE");
        let label = encryption_label(a.wpa1, a.rsn, sae_only, &a.suites, a.privacy);
        b.encryption = with_ciphers(label, &a.ciphers);
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
                        mac: super::mac_upper(&mac),
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
        if (section == "RSN" || section == "WPA")
            && (k == "Group cipher" || k == "Pairwise ciphers")
        {
            a.ciphers.extend(v.split_whitespace().map(cipher_name));
        }
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
pub(super) fn split_suites(v: &str) -> Vec<String> {
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
