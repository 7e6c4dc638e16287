//! `interfaces` of a stats record (SPEC §5): every network interface in `/sys/class/net`
//! except `lo`, with MAC, up, MTU, counters and addresses. Runs on the collector thread.
//!
//! Addresses: IPv6 from `/proc/net/if_inet6` (under the root path); IPv4 from
//! `getifaddrs(3)` ([`crate::platform::sys::ipv4_addresses`]), which the caller passes in so tests can
//! use fixture trees. Each address is `"addr/prefix"`. A missing directory or file gives an
//! empty list or `null` fields, never an error.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::fs;
use std::net::Ipv6Addr;
use std::path::Path;

/// IFF_UP in `/sys/class/net/X/flags`.
const IFF_UP: u64 = 0x1;

/// One interface as read from sysfs.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub up: bool,
    pub mtu: Option<u64>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub rx_packets: Option<u64>,
    pub tx_packets: Option<u64>,
    pub rx_errors: Option<u64>,
    pub tx_errors: Option<u64>,
    pub addresses: Vec<String>,
}

impl Interface {
    /// The SPEC §5 JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name, "mac": self.mac, "up": self.up, "mtu": self.mtu,
            "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets, "tx_packets": self.tx_packets,
            "rx_errors": self.rx_errors, "tx_errors": self.tx_errors,
            "addresses": self.addresses,
        })
    }
}

fn read_trim(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

/// A counter from `/sys/class/net/<name>/statistics/<counter>`.
pub fn counter(root: &Path, name: &str, counter: &str) -> Option<u64> {
    read_u64(
        &root
            .join("sys/class/net")
            .join(name)
            .join("statistics")
            .join(counter),
    )
}

/// Reads all interfaces under `root`. `v4` holds (interface, address, prefix) triples.
pub fn read(root: &Path, v4: &[(String, std::net::Ipv4Addr, u8)]) -> Vec<Interface> {
    let base = root.join("sys/class/net");
    let mut names: Vec<String> = match fs::read_dir(&base) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo" && !n.starts_with('.'))
            .collect(),
        Err(_) => return Vec::new(),
    };
    names.sort();
    let v6 = fs::read_to_string(root.join("proc/net/if_inet6"))
        .map(|t| parse_if_inet6(&t))
        .unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let dir = base.join(&name);
            let operstate = read_trim(&dir.join("operstate")).unwrap_or_default();
            let flags = read_trim(&dir.join("flags"))
                .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0);
            let up = operstate == "up" || (operstate == "unknown" && flags & IFF_UP != 0);
            let mut addresses: Vec<String> = v4
                .iter()
                .filter(|(n, _, _)| *n == name)
                .map(|(_, a, p)| format!("{a}/{p}"))
                .collect();
            addresses.extend(
                v6.iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, a)| a.clone()),
            );
            Interface {
                // Upper case, the C agent's form for every MAC in a record.
                mac: read_trim(&dir.join("address")).map(|m| m.to_ascii_uppercase()),
                up,
                mtu: read_u64(&dir.join("mtu")),
                rx_bytes: counter(root, &name, "rx_bytes"),
                tx_bytes: counter(root, &name, "tx_bytes"),
                rx_packets: counter(root, &name, "rx_packets"),
                tx_packets: counter(root, &name, "tx_packets"),
                rx_errors: counter(root, &name, "rx_errors"),
                tx_errors: counter(root, &name, "tx_errors"),
                addresses,
                name,
            }
        })
        .collect()
}

/// `/proc/net/if_inet6` lines (`addr32hex ifindex prefix scope flags name`) →
/// (interface, `"addr/prefix"`). Malformed lines are skipped.
pub fn parse_if_inet6(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[0].len() != 32 {
                return None;
            }
            let raw = u128::from_str_radix(f[0], 16).ok()?;
            let prefix = u8::from_str_radix(f[2], 16).ok().filter(|p| *p <= 128)?;
            Some((
                f[5].to_string(),
                format!("{}/{prefix}", Ipv6Addr::from(raw)),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn if_inet6_lines() {
        let text = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n\
                    fd000000000000000000000000000002 04 40 00 82     eth0\n\
                    00000000000000000000000000000001 01 80 10 80       lo\n\
                    garbage\n\
                    fe80 04 40 20 80 eth1\n\
                    fe8000000000000000fc00fffe000001 04 zz 20 80 eth2\n\
                    fe8000000000000000fc00fffe0000";
        let v = parse_if_inet6(text);
        assert_eq!(
            v,
            vec![
                ("eth0".to_string(), "fe80::fc:ff:fe00:1/64".to_string()),
                ("eth0".to_string(), "fd00::2/64".to_string()),
                ("lo".to_string(), "::1/128".to_string()),
            ]
        );
    }

    #[test]
    fn sysfs_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert!(read(root, &[]).is_empty());
        let eth = root.join("sys/class/net/eth0");
        fs::create_dir_all(eth.join("statistics")).unwrap();
        fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();
        fs::create_dir_all(root.join("sys/class/net/wlan0")).unwrap();
        fs::write(eth.join("address"), "52:54:00:12:34:56\n").unwrap();
        fs::write(eth.join("operstate"), "up\n").unwrap();
        fs::write(eth.join("mtu"), "1500\n").unwrap();
        fs::write(eth.join("statistics/rx_bytes"), "15062972181\n").unwrap();
        fs::write(eth.join("statistics/tx_errors"), "garbage\n").unwrap();
        fs::create_dir_all(root.join("proc/net")).unwrap();
        fs::write(
            root.join("proc/net/if_inet6"),
            "fd000000000000000000000000000002 04 40 00 82     eth0\n",
        )
        .unwrap();
        let v4 = [("eth0".to_string(), Ipv4Addr::new(192, 0, 2, 10), 24)];
        let ifs = read(root, &v4);
        assert_eq!(ifs.len(), 2, "lo is left out");
        let e = &ifs[0];
        assert_eq!(e.name, "eth0");
        assert_eq!(e.mac.as_deref(), Some("52:54:00:12:34:56"));
        fs::write(eth.join("address"), "ae:d0:e6:3c:90:ec\n").unwrap();
        assert_eq!(read(root, &v4)[0].mac.as_deref(), Some("AE:D0:E6:3C:90:EC"));
        assert!(e.up);
        assert_eq!(e.mtu, Some(1500));
        assert_eq!(e.rx_bytes, Some(15062972181));
        assert_eq!(e.tx_errors, None);
        assert_eq!(e.addresses, vec!["192.0.2.10/24", "fd00::2/64"]);
        let w = &ifs[1];
        assert_eq!(
            (w.name.as_str(), w.up, w.mac.clone()),
            ("wlan0", false, None)
        );
        let j = e.to_json();
        for k in [
            "name",
            "mac",
            "up",
            "mtu",
            "rx_bytes",
            "tx_bytes",
            "rx_packets",
            "tx_packets",
            "rx_errors",
            "tx_errors",
            "addresses",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn this_machine() {
        let v4 = crate::platform::sys::ipv4_addresses().unwrap();
        let ifs = read(Path::new("/"), &v4);
        assert!(ifs.iter().all(|i| i.name != "lo"));
    }
}
