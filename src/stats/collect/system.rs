//! System part of a stats record (SPEC §5 `device`): uptime, load averages, RAM, process
//! count, read from `/proc/uptime`, `/proc/loadavg` and `/proc/meminfo` under a root path.
//! Runs on the collector thread (and in `--collect-once`/the `stats` job); shares nothing.
//! Every reader tolerates a missing or malformed file and gives `None` for what it can't read.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

/// What the system files say; `None` where a file is missing or unreadable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct System {
    /// Whole seconds since boot.
    pub uptime: Option<u64>,
    pub load_1: Option<f64>,
    pub load_5: Option<f64>,
    pub load_15: Option<f64>,
    /// Bytes (`MemTotal`).
    pub total_ram: Option<u64>,
    /// Bytes (`MemFree`, as `sysinfo(2)` `freeram` in the original agent).
    pub free_ram: Option<u64>,
    /// Scheduling entities (processes and threads) that exist now: the number after the
    /// `/` in `/proc/loadavg` (the same count as `sysinfo(2)` `procs` in the original);
    /// else the number of numeric directories in `/proc`.
    pub procs: Option<u64>,
}

/// Reads everything under `root` (`/` on a device).
pub fn read(root: &Path) -> System {
    let mut s = System::default();
    if let Ok(t) = fs::read_to_string(root.join("proc/uptime")) {
        s.uptime = parse_uptime(&t);
    }
    if let Ok(t) = fs::read_to_string(root.join("proc/loadavg")) {
        if let Some(l) = parse_loadavg(&t) {
            s.load_1 = Some(l.0);
            s.load_5 = Some(l.1);
            s.load_15 = Some(l.2);
            s.procs = l.3;
        }
    }
    if let Ok(t) = fs::read_to_string(root.join("proc/meminfo")) {
        let (total, free) = parse_meminfo(&t);
        s.total_ram = total;
        s.free_ram = free;
    }
    if s.procs.is_none() {
        s.procs = count_pids(&root.join("proc"));
    }
    s
}

/// First field of `/proc/uptime`, whole seconds.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let f: f64 = text.split_whitespace().next()?.parse().ok()?;
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

/// `/proc/loadavg`: (1, 5, 15 minute load, total scheduling entities if present).
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64, Option<u64>)> {
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() < 3 {
        return None;
    }
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    let procs = f
        .get(3)
        .and_then(|p| p.split_once('/'))
        .and_then(|(_, total)| total.parse().ok());
    Some((num(f[0])?, num(f[1])?, num(f[2])?, procs))
}

/// (`MemTotal`, `MemFree`) in bytes from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k.trim() != key {
                return None;
            }
            let mut it = v.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            match it.next() {
                Some("kB") | Some("KB") | Some("kb") => n.checked_mul(1024),
                None => Some(n),
                Some(_) => None,
            }
        })
    };
    (field("MemTotal"), field("MemFree"))
}

fn count_pids(proc_dir: &Path) -> Option<u64> {
    let rd = fs::read_dir(proc_dir).ok()?;
    let n = rd
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
        .count() as u64;
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOADAVG: &str = include_str!("../../../tests/fixtures/proc-loadavg-linux-procfs.txt");
    const MEM_X86: &str =
        include_str!("../../../tests/fixtures/proc-meminfo-linux-x86_64-procfs.txt");
    const MEM_ECONET: &str =
        include_str!("../../../tests/fixtures/proc-meminfo-openwrt-econet-en7580.txt");
    const MEM_2_6: &str =
        include_str!("../../../tests/fixtures/proc-meminfo-openwrt-wrt610n-2.6.txt");

    #[test]
    fn loadavg_fixture() {
        let (a, b, c, p) = parse_loadavg(LOADAVG).unwrap();
        assert_eq!((a, b, c), (0.02, 0.04, 0.05));
        assert_eq!(p, Some(497));
        assert_eq!(parse_loadavg("0.1 0.2"), None);
        assert_eq!(parse_loadavg("x y z"), None);
        assert_eq!(parse_loadavg("0.1 0.2 0.3").unwrap().3, None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn meminfo_fixtures() {
        let (t, f) = parse_meminfo(MEM_2_6);
        assert_eq!(t, Some(62336 * 1024));
        assert_eq!(f, Some(54104 * 1024));
        for text in [MEM_X86, MEM_ECONET] {
            let (t, f) = parse_meminfo(text);
            assert!(t.unwrap() > f.unwrap(), "{t:?} {f:?}");
        }
        // Truncated in the middle of the file: what is there is still read.
        let cut = &MEM_2_6[..MEM_2_6.find("Buffers").unwrap()];
        assert_eq!(parse_meminfo(cut), (Some(62336 * 1024), Some(54104 * 1024)));
        let cut = &MEM_2_6[..10];
        assert_eq!(parse_meminfo(cut), (None, None));
        assert_eq!(
            parse_meminfo("\u{0}garbage:\n:::\nMemTotal: lots kB"),
            (None, None)
        );
    }

    #[test]
    fn uptime_values() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 2"), None);
        assert_eq!(parse_uptime("NaN 2"), None);
    }

    #[test]
    fn read_fixture_tree_and_empty_root() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), System::default());
        std::fs::create_dir_all(d.path().join("proc/1")).unwrap();
        std::fs::create_dir_all(d.path().join("proc/22")).unwrap();
        std::fs::create_dir_all(d.path().join("proc/self")).unwrap();
        assert_eq!(read(d.path()).procs, Some(2));
        std::fs::write(d.path().join("proc/loadavg"), LOADAVG).unwrap();
        std::fs::write(d.path().join("proc/meminfo"), MEM_ECONET).unwrap();
        std::fs::write(d.path().join("proc/uptime"), "12.5 3.0\n").unwrap();
        let s = read(d.path());
        assert_eq!(s.uptime, Some(12));
        assert_eq!(s.load_15, Some(0.05));
        assert_eq!(s.procs, Some(497));
        assert!(s.total_ram.is_some());
    }

    #[test]
    fn this_machine() {
        let s = read(Path::new("/"));
        assert!(s.uptime.is_some() && s.total_ram.is_some() && s.procs.is_some());
    }
}
