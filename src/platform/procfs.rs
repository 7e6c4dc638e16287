//! Readers of `/proc`-style `Key:\tvalue` texts (`/proc/<pid>/status`, `/proc/meminfo`),
//! shared by the `process.*` jobs, healthz and the stats. Pure functions of the text.
#![forbid(unsafe_code)]

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
}
