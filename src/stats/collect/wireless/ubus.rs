//! Parsers of `ubus call iwinfo …` JSON (rpcd's iwinfo plugin on OpenWrt): `info`,
//! `assoclist`, `scan`, `devices`. Pure but for [`ubus_info`], which runs the call.
#![forbid(unsafe_code)]

use super::iw::{cipher_name, preamble, suite_name, suites_in_c_order, with_ciphers};
use super::{freq_to_channel, mac_upper, Bss, Station, Tools, TOOL_TIMEOUT};
use serde_json::{json, Value};
use std::collections::BTreeSet;

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
    /// kbit/s, as iwinfo gives it.
    pub bitrate_kbps: Option<u64>,
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
fn jbool(v: &Value, k: &str) -> Option<bool> {
    v.get(k)?.as_bool()
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
        bssid: jstr(&v, "bssid").map(|b| mac_upper(&b)),
        channel: ju32(&v, "channel"),
        frequency: ju32(&v, "frequency"),
        tx_power: v.get("txpower").and_then(Value::as_f64),
        signal: ji64(&v, "signal"),
        noise: ji64(&v, "noise").filter(|n| *n != 0),
        bitrate_kbps: ju64(&v, "bitrate"),
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
            let mac = mac_upper(&jstr(s, "mac")?);
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
                tx_retries: ju64(&tx, "retries"),
                tx_failed: ju64(&tx, "failed"),
                signal_avg: ji64(s, "signal_avg"),
                inactive_time: ju64(s, "inactive"),
                conn_time: ju64(s, "connected_time"),
                tx_bitrate: kbit_to_mbit(&tx, "rate"),
                rx_bitrate: kbit_to_mbit(&rx, "rate"),
                // iwinfo's `mcs` is HT, VHT or HE; only the HT one is nl80211's MCS.
                mcs: ju64(&tx, "mcs").filter(|_| jbool(&tx, "ht") == Some(true)),
                expected_tput_kbps: ju64(s, "thr"),
                authorized: jbool(s, "authorized"),
                authenticated: jbool(s, "authenticated"),
                associated: jbool(s, "associated"),
                wmm: jbool(s, "wme"),
                mfp: jbool(s, "mfp"),
                tdls: jbool(s, "tdls"),
                preamble: jstr(s, "preamble").and_then(|p| preamble(&p)),
                ..Default::default()
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
            let mac = mac_upper(&jstr(b, "bssid")?);
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
            let ciphers: BTreeSet<String> = enc
                .get("ciphers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(cipher_name)
                        .collect()
                })
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
                let auth = suites_in_c_order(&suites);
                if auth.is_empty() {
                    protos.join("/")
                } else {
                    format!("{} {}", protos.join("/"), auth.join("/"))
                }
            };
            let encryption = with_ciphers(encryption, &ciphers);
            let frequency = ju32(b, "mhz");
            Some(Bss {
                mac,
                ssid: jstr(b, "ssid"),
                channel: ju32(b, "channel").or_else(|| frequency.and_then(freq_to_channel)),
                frequency,
                signal: ji64(b, "signal"),
                encryption,
                last_seen: None,
                quality: ji64(b, "quality"),
                quality_max: ji64(b, "quality_max"),
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

pub(super) fn ubus_info(tools: &dyn Tools, iface: &str) -> Option<UbusInfo> {
    let arg = json!({ "device": iface }).to_string();
    parse_ubus_info(&tools.run("ubus", &["call", "iwinfo", "info", &arg], TOOL_TIMEOUT)?)
}
