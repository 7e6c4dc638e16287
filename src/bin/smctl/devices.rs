//! `devices`: every device of the topic and key as its retained CONNECT (a
//! `socketman::proto::Connect`) tells (MAC,
//! online/offline, client id, version, since), as a table or JSON; [`collect_devices`] is
//! also `fleet --all-online`.

use crate::conn::{mac_of, Conn, Target};
use crate::watch::utc;
use crate::{parse_secs, usage, Fail};
use getopts::Matches;
use serde_json::{json, Value};
use socketman::proto::Incoming;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One device as its retained CONNECT tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub mac: String,
    pub online: bool,
    pub client_id: String,
    pub version: String,
    pub since: i64,
}

/// Every device with a CONNECT on `status/T/K/+` within `wait` (retained ones arrive at once).
pub fn collect_devices(t: &Target, wait: Duration) -> Result<Vec<Device>, Fail> {
    let conn = Conn::open(t)?;
    conn.subscribe(&[t.wildcard("status")])?;
    let deadline = Instant::now() + wait;
    let mut devs: BTreeMap<String, Device> = BTreeMap::new();
    while let Some(msg) = conn.next(deadline)? {
        let Some(Incoming::Connect(c)) = Incoming::parse(msg.payload()) else {
            continue;
        };
        let mac = mac_of(msg.topic()).to_string();
        devs.insert(
            mac.clone(),
            Device {
                mac,
                online: c.meta.online,
                client_id: c.meta.client_id,
                version: c.meta.version.unwrap_or_default(),
                since: i64::try_from(c.timestamp).unwrap_or(0),
            },
        );
    }
    conn.close();
    Ok(devs.into_values().collect())
}

pub fn cmd_devices(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if !words.is_empty() {
        return Err(usage(format!("devices: unexpected '{}'", words.join(" "))));
    }
    let wait = parse_secs(m, "wait", 1.0)?;
    let devs = collect_devices(t, wait)?;
    if m.opt_present("json") {
        let list: Vec<Value> = devs
            .iter()
            .map(|d| {
                json!({"mac": d.mac, "online": d.online, "client_id": d.client_id,
                       "version": if d.version.is_empty() { Value::Null } else { json!(d.version) },
                       "since": d.since})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(0);
    }
    print!("{}", devices_table(&devs));
    Ok(0)
}

pub fn devices_table(devs: &[Device]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<20} {:<10} {}\n",
        "MAC", "STATE", "CLIENT_ID", "VERSION", "SINCE"
    );
    for d in devs {
        let state = if d.online { "online" } else { "offline" };
        let ver = if d.version.is_empty() {
            "-"
        } else {
            &d.version
        };
        let since = if d.since > 0 {
            utc(d.since)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<20} {:<8} {:<20} {:<10} {since}\n",
            d.mac, state, d.client_id, ver
        ));
    }
    let online = devs.iter().filter(|d| d.online).count();
    out.push_str(&format!(
        "{} devices: {online} online, {} offline\n",
        devs.len(),
        devs.len() - online
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_table_lists_state() {
        let d = |mac: &str, online| Device {
            mac: mac.into(),
            online,
            client_id: format!("sm-{mac}"),
            version: if online {
                "0.1.0".into()
            } else {
                String::new()
            },
            since: 0,
        };
        let t = devices_table(&[d("AA", true), d("BB", false)]);
        assert!(t.contains("AA                   online   sm-AA"), "{t}");
        assert!(t.contains("BB                   offline"), "{t}");
        assert!(t.ends_with("2 devices: 1 online, 1 offline\n"), "{t}");
    }
}
