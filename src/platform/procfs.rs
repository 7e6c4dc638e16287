//! Readers of `/proc`: `Key:\tvalue` texts (`/proc/<pid>/status`, `/proc/meminfo`), shared
//! by the `process.*` jobs, healthz and the stats; the owner of a loopback UDP socket
//! (`/proc/net/udp{,6}`, for the heartbeat sender check); credentials of a process; and the
//! pids socketman must never signal for someone else ([`protected`]). The parsers are pure
//! functions of the text; the readers read the real `/proc`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Value of `key` in a `/proc/<pid>/status`-style text (`Key:\tvalue`).
pub fn status_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// Real uid from a `/proc/<pid>/status` text.
pub fn status_uid(text: &str) -> Option<u32> {
    status_value(text, "Uid")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `kB` value of a `/proc/<pid>/status` or `/proc/meminfo` text, in bytes.
pub fn kb_value(text: &str, key: &str) -> Option<u64> {
    let v = status_value(text, key)?;
    let n: u64 = v.split_whitespace().next()?.parse().ok()?;
    Some(n * 1024)
}

/// One UDP socket of `/proc/net/udp{,6}`: its owner and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOwner {
    pub uid: u32,
    pub inode: u64,
}

/// The address of a `/proc/net/udp{,6}` line (`0100007F:1F90`: each 32-bit word printed in
/// the host's byte order, the port big-endian).
fn parse_sock_addr(field: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Sockets of a `/proc/net/udp{,6}` text bound to `from`'s port on `from`'s address (or on
/// the wildcard, or the v4-mapped form): the candidates that sent a datagram from `from`.
pub fn parse_udp_owners(text: &str, from: SocketAddr) -> Vec<UdpOwner> {
    let matches_ip = |ip: IpAddr| match (ip, from.ip()) {
        (IpAddr::V4(a), IpAddr::V4(f)) => a == f || a.is_unspecified(),
        (IpAddr::V6(a), IpAddr::V4(f)) => a.is_unspecified() || a.to_ipv4_mapped() == Some(f),
        (IpAddr::V6(a), IpAddr::V6(f)) => a == f || a.is_unspecified(),
        (IpAddr::V4(a), IpAddr::V6(f)) => a.is_unspecified() && f.to_ipv4_mapped().is_some(),
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, port) = parse_sock_addr(f.get(1)?)?;
            if port != from.port() || !matches_ip(ip) {
                return None;
            }
            Some(UdpOwner {
                uid: f.get(7)?.parse().ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The owner of the loopback UDP socket that sent from `from`, from `/proc/net/udp` and
/// `/proc/net/udp6`. `None` when no socket matches (the sender closed it already) or when
/// sockets of different users share the port.
pub fn udp_sender(from: SocketAddr) -> Option<UdpOwner> {
    let mut all = Vec::new();
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(t) = std::fs::read_to_string(f) {
            all.extend(parse_udp_owners(&t, from));
        }
    }
    let first = *all.first()?;
    all.iter().all(|o| o.uid == first.uid).then_some(first)
}

/// A process holding the socket `inode` open (a scan of `/proc/*/fd`), if any still does.
pub fn socket_holder(inode: u64) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// Who a process is, from its `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Thread group id: equals the pid for a process, differs for a thread.
    pub tgid: i32,
    /// Real, effective, saved and file-system uid.
    pub uids: [u32; 4],
    /// Real gid.
    pub gid: u32,
    pub groups: Vec<u32>,
}

fn ids<const N: usize>(v: &str) -> Option<[u32; N]> {
    let mut out = [0u32; N];
    let mut it = v.split_whitespace();
    for o in out.iter_mut() {
        *o = it.next()?.parse().ok()?;
    }
    Some(out)
}

/// [`Creds`] from a `/proc/<pid>/status` text.
pub fn parse_creds(text: &str) -> Option<Creds> {
    Some(Creds {
        tgid: status_value(text, "Tgid")?.parse().ok()?,
        uids: ids::<4>(status_value(text, "Uid")?)?,
        gid: ids::<1>(status_value(text, "Gid")?)?[0],
        groups: status_value(text, "Groups")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    })
}

/// [`Creds`] of `pid` (also of a thread id: `/proc/<tid>` exists, unlisted).
pub fn creds(pid: i32) -> Option<Creds> {
    parse_creds(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Why socketman refuses to signal or kill a pid on someone else's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protected {
    /// pid 1 (or below).
    Init,
    /// socketman's own pid.
    Socketman,
    /// A thread of socketman: a signal to it goes to the whole agent.
    SocketmanThread,
    /// The leader of socketman's process group: stopping it would signal the group.
    SocketmanGroup,
}

impl std::fmt::Display for Protected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protected::Init => "init (pid 1)",
            Protected::Socketman => "socketman itself",
            Protected::SocketmanThread => "a thread of socketman",
            Protected::SocketmanGroup => "the leader of socketman's process group",
        })
    }
}

/// `Some(why)` when `pid` is init, socketman, one of its threads or its group leader.
pub fn protected(pid: i32) -> Option<Protected> {
    let me = std::process::id() as i32;
    if pid <= 1 {
        Some(Protected::Init)
    } else if pid == me {
        Some(Protected::Socketman)
    } else if std::path::Path::new(&format!("/proc/self/task/{pid}")).exists()
        || creds(pid).is_some_and(|c| c.tgid == me)
    {
        Some(Protected::SocketmanThread)
    } else if pid == crate::platform::sys::own_pgrp() {
        Some(Protected::SocketmanGroup)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let t = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_value(t, "Name"), Some("sh"));
        assert_eq!(status_uid(t), Some(1000));
        assert_eq!(kb_value(t, "VmRSS"), Some(2048 * 1024));
        assert_eq!(kb_value(t, "VmSwap"), None);
        assert_eq!(status_value(t, "Nam"), None);
    }

    #[test]
    fn udp_owners_from_real_proc_net_udp() {
        // Lines as the kernel prints them on a little-endian host (x86_64 / aarch64).
        let v4 = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 1034: 0100007F:B17A 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 998877 2 0000000000000000 0\n\
 1035: 00000000:B17B 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 998878 2 0000000000000000 0\n\
 1036: 0200007F:B17C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 998879 2 0000000000000000 0\n";
        if cfg!(target_endian = "little") {
            let from = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
            assert_eq!(
                parse_udp_owners(v4, from(0xB17A)),
                vec![UdpOwner {
                    uid: 65534,
                    inode: 998877
                }]
            );
            // Bound to 0.0.0.0: still the sender of 127.0.0.1:port.
            assert_eq!(parse_udp_owners(v4, from(0xB17B))[0].uid, 1000);
            // Bound to 127.0.0.2: not a sender from 127.0.0.1.
            assert!(parse_udp_owners(v4, from(0xB17C)).is_empty());
            let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  100: 0000000000000000FFFF00000100007F:B17D 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 55 2 0000000000000000 0\n";
            assert_eq!(parse_udp_owners(v6, from(0xB17D))[0].uid, 1001);
        }
        assert!(
            parse_udp_owners("header\n garbage line\n", "127.0.0.1:1".parse().unwrap()).is_empty()
        );
    }

    #[test]
    fn the_real_sender_of_a_datagram_is_found() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut b = [0u8; 4];
        let (_, from) = rx.recv_from(&mut b).unwrap();
        let owner = udp_sender(from).expect("the sending socket");
        let me = creds(std::process::id() as i32).unwrap();
        assert_eq!(owner.uid, me.uids[1]);
        assert_eq!(socket_holder(owner.inode), Some(std::process::id() as i32));
        // Another port: nobody.
        let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let nobody = free.local_addr().unwrap();
        drop(free);
        assert_eq!(udp_sender(nobody), None);
        drop(tx);
    }

    #[test]
    fn creds_and_protected_pids() {
        let t = "Name:\tsh\nTgid:\t42\nPid:\t43\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24 27 \n";
        let c = parse_creds(t).unwrap();
        assert_eq!((c.tgid, c.uids, c.gid), (42, [1000; 4], 100));
        assert_eq!(c.groups, vec![4, 24, 27]);
        assert!(parse_creds("Name:\tx\n").is_none());
        assert_eq!(protected(1), Some(Protected::Init));
        assert_eq!(protected(0), Some(Protected::Init));
        let me = std::process::id() as i32;
        assert_eq!(protected(me), Some(Protected::Socketman));
        // A thread of this process.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse::<i32>().ok());
            tx.send(tid).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap().expect("thread id");
        assert_eq!(protected(tid), Some(Protected::SocketmanThread));
        done_tx.send(()).unwrap();
        h.join().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(protected(child.id() as i32), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
