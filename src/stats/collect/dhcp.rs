//! `dhcp` of a stats record (SPEC §5): the leases in the dnsmasq lease file (`lease_file`,
//! default `/tmp/dhcp.leases`). Runs on the collector thread.
//!
//! Line format: `<expiry> <mac> <ip> <hostname|*> <client-id|*>`. `expires` is the first
//! field as written (an epoch, or on some firmware a relative time; not interpreted). A
//! `duid <server-duid>` line starts dnsmasq's DHCPv6 section, whose second field is an IAID,
//! not a MAC: those lines are skipped. `name` is the hostname field as the lease file has it,
//! `"*"` included (dnsmasq's "no name"), as the C agent sends it; `mac` is upper case like every
//! MAC in a record. Missing file: empty list; malformed lines are skipped.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;

/// One lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub mac: String,
    pub ip: String,
    /// As written, `*` for none.
    pub name: String,
    pub expires: u64,
}

impl Lease {
    pub fn to_json(&self) -> Value {
        json!({"mac": self.mac, "ip": self.ip, "name": self.name, "expires": self.expires})
    }
}

/// Reads `lease_file` (an absolute path, taken under `root`).
pub fn read(root: &Path, lease_file: &str) -> Vec<Lease> {
    match std::fs::read(root.join(lease_file.trim_start_matches('/'))) {
        Ok(b) => parse(&String::from_utf8_lossy(&b)),
        Err(_) => Vec::new(),
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() >= 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses lease file text.
pub fn parse(text: &str) -> Vec<Lease> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"duid") {
            break; // the DHCPv6 section follows
        }
        if f.len() < 4 {
            continue;
        }
        let (Ok(expires), true, Ok(ip)) =
            (f[0].parse::<u64>(), is_mac(f[1]), f[2].parse::<IpAddr>())
        else {
            continue;
        };
        out.push(Lease {
            mac: f[1].to_ascii_uppercase(),
            ip: ip.to_string(),
            name: f[3].to_string(),
            expires,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fx {
        ($f:literal) => {
            include_str!(concat!("../../../tests/fixtures/", $f))
        };
    }

    #[test]
    fn pihole_with_duid_section() {
        let t = fx!("dhcp.leases-pihole-ipv6-duid");
        let l = parse(t);
        assert_eq!(l.len(), 15, "{l:?}");
        assert_eq!(
            l[0],
            Lease {
                mac: "5C:97:F3:C1:E6:E0".into(),
                ip: "192.168.1.164".into(),
                name: "Joes-iPad".into(),
                expires: 1604612357
            }
        );
        assert!(l.iter().all(|x| x.ip.contains('.')), "no DHCPv6 lines");
        assert!(
            l.iter().any(|x| x.name == "*"),
            "`*` hostname kept as C sends it"
        );
        let j = l.iter().find(|x| x.name == "*").unwrap().to_json();
        assert_eq!(j["name"], "*", "a string, not null");
    }

    #[test]
    fn openwrt_variants() {
        assert_eq!(parse(fx!("dhcp.leases-openwisp-1")).len(), 1);
        let irr = parse(fx!("dhcp.leases-openwisp-irregular"));
        assert_eq!(irr.len(), 1);
        assert_eq!(irr[0].name, "*");
        assert_eq!(
            parse(fx!("dhcp.leases-openwrt-tessel2"))[0].name,
            "android-72d96d29a805b447"
        );
        let old = parse(fx!("dhcp.leases-openwrt-hotspot-2000clock"));
        assert!(old.len() >= 3 && old[0].expires == 946914517);
        assert_eq!(
            parse(fx!("dhcp.leases-tg799vac-relative-expiry"))[0].expires,
            5924
        );
        let lede = parse(fx!("dhcp.leases-lede-minstrel-3lines"));
        assert_eq!(lede.len(), 3);
        assert_eq!(
            (lede[0].name.as_str(), lede[1].name.as_str()),
            ("*", "apfel")
        );
    }

    #[test]
    fn truncated_garbage_missing() {
        let t = fx!("dhcp.leases-lede-minstrel-3lines");
        let cut = &t[..t.find("apfel").unwrap()];
        assert_eq!(parse(cut).len(), 1, "the torn second line is skipped");
        assert!(
            parse("\u{0}\u{ff}garbage\n1 2 3 4\nabc 00:11:22:33:44:55 1.2.3.4 x *\n").is_empty()
        );
        let d = tempfile::tempdir().unwrap();
        assert!(read(d.path(), "/tmp/dhcp.leases").is_empty());
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        std::fs::write(
            d.path().join("tmp/dhcp.leases"),
            fx!("dhcp.leases-openwisp-1"),
        )
        .unwrap();
        assert_eq!(read(d.path(), "/tmp/dhcp.leases").len(), 1);
        assert_eq!(
            read(d.path(), "/tmp/dhcp.leases")[0].to_json()["ip"],
            "192.168.1.136"
        );
    }
}
