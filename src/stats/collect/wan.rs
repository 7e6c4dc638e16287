//! WAN part of a stats record (SPEC §5 `device.wan_name/wan_ip/wan_gateway/tx_bytes/rx_bytes`):
//! the interface of the default route in `/proc/net/route`, its first IPv4 address, the
//! gateway, and its byte counters from sysfs. Runs on the collector thread. No default route
//! gives all `None` (the device is offline), never an error.
#![forbid(unsafe_code)]

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

/// The WAN as seen now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wan {
    pub name: Option<String>,
    pub ip: Option<String>,
    pub gateway: Option<String>,
    pub tx_bytes: Option<u64>,
    pub rx_bytes: Option<u64>,
}

impl Wan {
    /// True when a default route exists (the route point of the connectivity CODE, SPEC §6).
    pub fn has_default_route(&self) -> bool {
        self.name.is_some()
    }
}

/// Reads the WAN under `root`; `v4` as in [`super::interfaces::read`].
pub fn read(root: &Path, v4: &[(String, Ipv4Addr, u8)]) -> Wan {
    let route = match fs::read_to_string(root.join("proc/net/route")) {
        Ok(t) => t,
        Err(_) => return Wan::default(),
    };
    let Some((name, gateway)) = crate::platform::identity::parse_default_route(&route) else {
        return Wan::default();
    };
    let ip = v4
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, a, _)| a.to_string());
    Wan {
        ip,
        tx_bytes: super::interfaces::counter(root, &name, "tx_bytes"),
        rx_bytes: super::interfaces::counter(root, &name, "rx_bytes"),
        gateway: Some(gateway),
        name: Some(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str =
        include_str!("../../../tests/fixtures/proc-net-route-linux-desktop-default.txt");
    const NODEFAULT: &str =
        include_str!("../../../tests/fixtures/proc-net-route-embedded-nodefault-padded.txt");

    fn tree(route: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("proc/net")).unwrap();
        fs::write(d.path().join("proc/net/route"), route).unwrap();
        d
    }

    #[test]
    fn default_route_fixture() {
        let d = tree(DEFAULT);
        let (iface, gw) = crate::platform::identity::parse_default_route(DEFAULT).unwrap();
        let st = d
            .path()
            .join("sys/class/net")
            .join(&iface)
            .join("statistics");
        fs::create_dir_all(&st).unwrap();
        fs::write(st.join("tx_bytes"), "1234\n").unwrap();
        fs::write(st.join("rx_bytes"), "5678\n").unwrap();
        let v4 = [
            ("other".to_string(), Ipv4Addr::new(10, 0, 0, 1), 8),
            (iface.clone(), Ipv4Addr::new(192, 168, 1, 50), 24),
        ];
        let w = read(d.path(), &v4);
        assert_eq!(w.name.as_deref(), Some(iface.as_str()));
        assert_eq!(w.gateway.as_deref(), Some(gw.as_str()));
        assert_eq!(w.ip.as_deref(), Some("192.168.1.50"));
        assert_eq!((w.tx_bytes, w.rx_bytes), (Some(1234), Some(5678)));
        assert!(w.has_default_route());
    }

    #[test]
    fn no_default_route_truncated_garbage_missing() {
        assert_eq!(read(tree(NODEFAULT).path(), &[]), Wan::default());
        let cut = &DEFAULT[..DEFAULT.len() / 3];
        let w = read(tree(cut).path(), &[]);
        assert!(w.name.is_none() || w.gateway.is_some());
        assert_eq!(
            read(tree("\u{0}\u{1}garbage\nx y z\n").path(), &[]),
            Wan::default()
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path(), &[]), Wan::default());
    }
}
