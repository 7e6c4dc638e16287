//! Who this device is: MAC (SPEC §2 `mac`), machine type and firmware (SPEC §5), and the
//! free RAM a firmware image must fit in.
//! Every function takes the root of the file system so tests can point it at a fixture tree;
//! [`root`] is the one the running agent uses.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// The root the running agent reads its identity (machine type, firmware, RAM) and stats
/// from: `/`. Test builds (`test-hooks`) take `SOCKETMAN_TEST_ROOT` instead when set, a
/// fake device tree (`etc/openwrt_version`, `proc/meminfo`, …) that a stand-in
/// `sysupgrade` can "flash"; a release build has no such override.
pub fn root() -> PathBuf {
    #[cfg(any(test, feature = "test-hooks"))]
    if let Some(r) = std::env::var_os("SOCKETMAN_TEST_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(r);
    }
    PathBuf::from("/")
}

/// True on OpenWrt (`/etc/openwrt_release` exists).
pub fn is_openwrt(root: &Path) -> bool {
    root.join("etc/openwrt_release").is_file()
}

/// RAM available for new data (an image in the tmpfs `/tmp`), in bytes, from
/// `/proc/meminfo`: `MemAvailable`, or on kernels before 3.14 (no such line)
/// `MemFree + Buffers + Cached`. `None` when unreadable.
pub fn mem_available(root: &Path) -> Option<u64> {
    let text = fs::read_to_string(root.join("proc/meminfo")).ok()?;
    parse_mem_available(&text)
}

/// [`mem_available`] of a `/proc/meminfo` text.
pub fn parse_mem_available(text: &str) -> Option<u64> {
    use crate::platform::procfs::kb_value;
    kb_value(text, "MemAvailable").or_else(|| {
        let free = kb_value(text, "MemFree")?;
        Some(free + kb_value(text, "Buffers").unwrap_or(0) + kb_value(text, "Cached").unwrap_or(0))
    })
}

/// The MAC as configured; else the first line of `mac_file`; else the MAC of the
/// default-route interface formatted `AA-BB-CC-DD-EE-FF`.
pub fn discover_mac(configured: Option<&str>, mac_file: &str, root: &Path) -> Option<String> {
    if let Some(m) = configured.filter(|m| !m.trim().is_empty()) {
        return Some(m.trim().to_string());
    }
    if let Ok(text) = fs::read_to_string(root.join(mac_file.trim_start_matches('/'))) {
        if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
            return Some(line.to_string());
        }
    }
    let iface = default_route_interface(root)?;
    let raw = fs::read_to_string(root.join("sys/class/net").join(&iface).join("address")).ok()?;
    format_mac(raw.trim())
}

/// `aa:bb:cc:dd:ee:ff` → `AA-BB-CC-DD-EE-FF`; `None` for anything that is not a MAC.
pub fn format_mac(raw: &str) -> Option<String> {
    let parts: Vec<&str> = raw.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join("-").to_ascii_uppercase())
}

/// The interface of the first default route (destination 0, mask 0) in `/proc/net/route`.
pub fn default_route_interface(root: &Path) -> Option<String> {
    let text = fs::read_to_string(root.join("proc/net/route")).ok()?;
    parse_default_route(&text).map(|(iface, _)| iface)
}

/// (interface, gateway as dotted quad) of the default route in `/proc/net/route` text.
pub fn parse_default_route(text: &str) -> Option<(String, String)> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 {
            return None;
        }
        let dest = u32::from_str_radix(f[1], 16).ok()?;
        let mask = u32::from_str_radix(f[7], 16).ok()?;
        if dest != 0 || mask != 0 {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        let b = gw.to_le_bytes();
        Some((
            f[0].to_string(),
            format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]),
        ))
    })
}

fn first_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let l = text
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .lines()
        .next()?
        .trim()
        .to_string();
    (!l.is_empty()).then_some(l)
}

/// A `KEY=value` from an os-release style file, unquoted.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_string())
        })
        .filter(|v| !v.is_empty())
}

/// `/tmp/sysinfo/model`, else `/proc/device-tree/model`, else `/etc/os-release` NAME.
pub fn machine_type(root: &Path) -> String {
    first_line(&root.join("tmp/sysinfo/model"))
        .or_else(|| first_line(&root.join("proc/device-tree/model")))
        .or_else(|| {
            fs::read_to_string(root.join("etc/os-release"))
                .ok()
                .and_then(|t| os_release_value(&t, "NAME"))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `/etc/openwrt_version`, else `/etc/os-release` VERSION_ID.
pub fn firmware(root: &Path) -> String {
    first_line(&root.join("etc/openwrt_version"))
        .or_else(|| {
            fs::read_to_string(root.join("etc/os-release"))
                .ok()
                .and_then(|t| os_release_value(&t, "VERSION_ID"))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// System uptime in whole seconds from `/proc/uptime`.
pub fn system_uptime() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map(|f| f as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_from_real_meminfo() {
        let econet = include_str!("../../tests/fixtures/proc-meminfo-openwrt-econet-en7580.txt");
        assert_eq!(parse_mem_available(econet), Some(160_248 * 1024));
        // Linux 2.6: no MemAvailable line; MemFree + Buffers + Cached.
        let old = include_str!("../../tests/fixtures/proc-meminfo-openwrt-wrt610n-2.6.txt");
        assert_eq!(
            parse_mem_available(old),
            Some((54_104 + 944 + 3_304) * 1024)
        );
        assert_eq!(parse_mem_available("garbage"), None);
        let d = tempfile::tempdir().unwrap();
        assert_eq!(mem_available(d.path()), None);
        assert!(!is_openwrt(d.path()));
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(
            format_mac("88:dc:96:00:11:22").as_deref(),
            Some("88-DC-96-00-11-22")
        );
        assert_eq!(
            format_mac("88-DC-96-00-11-22").as_deref(),
            Some("88-DC-96-00-11-22")
        );
        assert_eq!(format_mac("88:dc:96:00:11"), None);
        assert_eq!(format_mac("zz:dc:96:00:11:22"), None);
    }

    #[test]
    fn mac_discovery_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert_eq!(
            discover_mac(Some("AA-BB"), "/etc/mac", root).as_deref(),
            Some("AA-BB")
        );
        assert_eq!(discover_mac(None, "/etc/mac", root), None);
        fs::create_dir_all(root.join("proc/net")).unwrap();
        fs::write(
            root.join("proc/net/route"),
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             wan\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("sys/class/net/wan")).unwrap();
        fs::write(
            root.join("sys/class/net/wan/address"),
            "00:11:22:aa:bb:cc\n",
        )
        .unwrap();
        assert_eq!(
            discover_mac(None, "/etc/mac", root).as_deref(),
            Some("00-11-22-AA-BB-CC")
        );
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/mac"), "\n11-22-33-44-55-66\n").unwrap();
        assert_eq!(
            discover_mac(None, "/etc/mac", root).as_deref(),
            Some("11-22-33-44-55-66")
        );
    }

    #[test]
    fn default_route_from_real_fixtures() {
        let desktop = include_str!("../../tests/fixtures/proc-net-route-linux-desktop-default.txt");
        let (iface, gw) = parse_default_route(desktop).expect("default route");
        assert!(!iface.is_empty());
        assert_eq!(gw.split('.').count(), 4);
        let nodefault =
            include_str!("../../tests/fixtures/proc-net-route-embedded-nodefault-padded.txt");
        assert_eq!(parse_default_route(nodefault), None);
        assert_eq!(parse_default_route("garbage\n\u{0}\u{1}"), None);
    }

    #[test]
    fn machine_and_firmware_sources() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        assert_eq!(machine_type(root), "unknown");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/os-release"),
            "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        assert_eq!(machine_type(root), "Debian GNU/Linux");
        assert_eq!(firmware(root), "12");
        fs::create_dir_all(root.join("tmp/sysinfo")).unwrap();
        fs::write(
            root.join("tmp/sysinfo/model"),
            include_str!("../../tests/fixtures/sysinfo-model-openwrt-rpi3bplus"),
        )
        .unwrap();
        assert!(
            machine_type(root).starts_with("Raspberry Pi"),
            "{}",
            machine_type(root)
        );
        fs::write(
            root.join("etc/openwrt_version"),
            include_str!("../../tests/fixtures/openwrt_version-23.05-snapshot-x86_64"),
        )
        .unwrap();
        assert_eq!(
            firmware(root),
            include_str!("../../tests/fixtures/openwrt_version-23.05-snapshot-x86_64").trim()
        );
    }
}
