//! The only `unsafe` in socketman: thin wrappers over libc, each with a SAFETY note.

use std::io;

/// Sends `sig` to the whole process group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal group <= 1",
        ));
    }
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    let rc = unsafe { libc::kill(-pgid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// socketman's process group id.
pub fn own_pgrp() -> i32 {
    // SAFETY: getpgrp takes no arguments and cannot fail.
    unsafe { libc::getpgrp() }
}

/// Makes `cmd`'s child drop to `uid`, `gid` and the supplementary `groups` before exec (in
/// that order: groups and gid while it still may). Only socketman as root can change them;
/// when socketman is not root and `uid`/`gid` are its own, nothing changes (any other
/// combination makes the start fail with EPERM).
pub fn run_as(cmd: &mut std::process::Command, uid: u32, gid: u32, groups: Vec<u32>) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<libc::gid_t> = groups.into_iter().collect();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe calls geteuid/getegid/setgroups/setgid/setuid on memory allocated
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let root = libc::geteuid() == 0;
            if root && libc::setgroups(groups.len() as _, groups.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if (root || libc::getegid() != gid) && libc::setgid(gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            if (root || libc::geteuid() != uid) && libc::setuid(uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"));
    }
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when a process (or group, for negative ids) with this id exists.
pub fn exists(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Clock ticks per second (for /proc/<pid>/stat times).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Name of the user with this uid, from /etc/passwd (no NSS in a static binary).
pub fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split(':');
        let name = it.next()?;
        let _pw = it.next()?;
        let id: u32 = it.next()?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Filesystem sizes of the mount at `path`: (total, free for root, available) in bytes.
pub fn statvfs(path: &str) -> io::Result<(u64, u64, u64)> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: zeroed statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated string and st a valid, writable struct.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let f = st.f_frsize as u64;
    Ok((
        st.f_blocks as u64 * f,
        st.f_bfree as u64 * f,
        st.f_bavail as u64 * f,
    ))
}

/// `sync(2)` then `reboot(2)`: the last resort of SPEC §6.
pub fn force_reboot() -> io::Error {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    io::Error::last_os_error()
}

/// IPv4 addresses of network interface `iface` (getifaddrs(3)), in the kernel's order.
/// Used for `wan_ip` (SPEC §5, §6): the address of the default-route interface.
pub fn ipv4_addrs_of(iface: &str) -> io::Result<Vec<std::net::Ipv4Addr>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .filter(|(n, _, _)| n == iface)
        .map(|(_, a, _)| a)
        .collect())
}

/// The IPv4 addresses of every interface, from `getifaddrs(3)`, in the kernel's order:
/// (interface name, address, prefix length). The stats collector lists them per interface;
/// IPv6 comes from `/proc/net/if_inet6`.
pub fn ipv4_addresses() -> io::Result<Vec<(String, std::net::Ipv4Addr, u8)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocates into `head`.
    let rc = unsafe { libc::getifaddrs(&mut head) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, which stays
        // valid until freeifaddrs below; its fields are read, never written.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of at least the family field.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET the kernel stores a sockaddr_in at ifa_addr; read_unaligned
        // does not assume the alignment of sockaddr_in.
        let sin = unsafe { std::ptr::read_unaligned(ifa.ifa_addr as *const libc::sockaddr_in) };
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in as well.
            let m =
                unsafe { std::ptr::read_unaligned(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(m.sin_addr.s_addr).count_ones() as u8
        };
        // SAFETY: ifa_name is a non-null NUL-terminated C string owned by the list; it is
        // copied before the list is freed.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push((
            name,
            std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            prefix,
        ));
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Marks every open descriptor from 3 up close-on-exec (self-update re-exec, SPEC §9): the
/// new image must not inherit sockets or files that libraries opened without `O_CLOEXEC`.
/// Returns how many descriptors were looked at.
pub fn cloexec_from_3() -> usize {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .filter(|fd| *fd >= 3)
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in &fds {
        // SAFETY: fcntl(2) F_GETFD/F_SETFD on an integer descriptor has no memory effects;
        // a descriptor that is not open just gives EBADF.
        unsafe {
            let flags = libc::fcntl(*fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(*fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    fds.len()
}

/// True when `path` is on a RAM file system (tmpfs, ramfs), which a reboot empties.
pub fn is_ram_fs(path: &std::path::Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid value of a plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated string and st a valid, writable struct.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    rc == 0 && (t == TMPFS_MAGIC || t == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        assert!(exists(std::process::id() as i32));
        assert!(kill_group(1, 0).is_err());
        assert!(clock_ticks() > 0);
        assert!(page_size() >= 4096);
        assert_eq!(user_name(0).as_deref(), Some("root"));
        let (total, _, avail) = statvfs("/").unwrap();
        assert!(total > 0 && avail <= total);
        assert!(
            is_ram_fs(std::path::Path::new("/dev/shm"))
                || !std::path::Path::new("/dev/shm").exists()
        );
        assert!(!is_ram_fs(std::path::Path::new("/proc")));
        assert_eq!(
            ipv4_addrs_of("lo").unwrap().first(),
            Some(&std::net::Ipv4Addr::LOCALHOST)
        );
        assert!(ipv4_addrs_of("no-such-if0").unwrap().is_empty());
        let v4 = ipv4_addresses().unwrap();
        assert!(v4
            .iter()
            .any(|(n, a, p)| n == "lo" && a.is_loopback() && *p == 8));
    }

    #[test]
    fn children_of_the_runner_inherit_no_descriptor_opened_without_cloexec() {
        // SAFETY: dup/close on descriptors this test owns.
        let fd = unsafe { libc::dup(2) };
        assert!(fd >= 3);
        let spec = crate::platform::process::Spec::shell(&format!("test -e /proc/self/fd/{fd}"));
        let o = crate::platform::process::run(
            &spec,
            &crate::platform::process::RunOpts::new(std::time::Duration::from_secs(10)),
            &|_| {},
        )
        .unwrap();
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        assert_eq!(o.code(), Some(1), "the child saw descriptor {fd}");
    }

    #[test]
    fn cloexec_marks_inherited_descriptors() {
        // SAFETY: dup/fcntl/close on descriptors this test owns.
        unsafe {
            let fd = libc::dup(2);
            assert!(fd >= 3);
            assert_eq!(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            assert!(cloexec_from_3() >= 1);
            assert_ne!(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
            libc::close(fd);
        }
    }
}
