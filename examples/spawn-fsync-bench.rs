//! The two system costs of a job (scripts/bench.sh), measured in the same run as the MQTT
//! floor: what socketman's job round trip cannot go below besides MQTT.
//!
//! - `spawn N`: fork+exec of `/bin/sh -c true` through `std::process::Command` (stdin, stdout
//!   and stderr on /dev/null, own process group, as the job shell), waited for; N times.
//! - `fsync N DIR`: one append of a small JSON line to `DIR/spawn-fsync-bench.log`, the way
//!   the seen-id journal records a job (open with O_APPEND, one `write`, `fdatasync`, close);
//!   N times. The file is removed at the end.
//!
//! Each mode does 5 untimed warm-up iterations, then prints one JSON line:
//! `{"mode", "n", "p50_ms", "p99_ms", "mean_ms", "max_ms"}` (p50/p99 by nearest rank, as
//! `job-bench`). Not part of the shipped binary:
//! `cargo build --release --example spawn-fsync-bench`.
//!
//! Usage: `spawn-fsync-bench spawn N` | `spawn-fsync-bench fsync N DIR`
#![forbid(unsafe_code)]

use serde_json::json;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const WARMUP: usize = 5;

fn die(msg: String) -> ! {
    eprintln!("spawn-fsync-bench: {msg}");
    std::process::exit(1);
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let rank = (q * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

/// Runs `once` WARMUP + n times and returns the n timed durations in ms.
fn time_n(n: usize, mut once: impl FnMut(usize) -> Result<(), String>) -> Vec<f64> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let t0 = Instant::now();
        once(i).unwrap_or_else(|e| die(e));
        if i >= WARMUP {
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms
}

fn spawn_once() -> Result<(), String> {
    let st = Command::new("/bin/sh")
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("/bin/sh -c true: {st}"))
    }
}

fn append_once(path: &Path, i: usize) -> Result<(), String> {
    // About the size of a journal line: an id, or an id with a short PROCESSED.
    let line = json!({"id": format!("bench-{i}"), "result": {"id": format!("bench-{i}"),
        "event_type": "PROCESSED", "meta": {"msg": "", "success": true, "exit_code": 0}}});
    let mut text = line.to_string();
    text.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| format!("append to {}: {e}", path.display()))
}

fn usage() -> ! {
    die("usage: spawn-fsync-bench spawn N | spawn-fsync-bench fsync N DIR".into())
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = match a.get(1).map(|s| s.parse()) {
        Some(Ok(n)) if n > 0 => n,
        _ => usage(),
    };
    let mut ms = match (a[0].as_str(), a.get(2)) {
        ("spawn", None) => time_n(n, |_| spawn_once()),
        ("fsync", Some(dir)) => {
            let path = Path::new(dir).join("spawn-fsync-bench.log");
            let ms = time_n(n, |i| append_once(&path, i));
            let _ = std::fs::remove_file(&path);
            ms
        }
        _ => usage(),
    };
    ms.sort_by(|x, y| x.total_cmp(y));
    println!(
        "{}",
        json!({"mode": a[0], "n": n, "p50_ms": quantile(&ms, 0.5), "p99_ms": quantile(&ms, 0.99),
            "mean_ms": ms.iter().sum::<f64>() / n as f64,
            "max_ms": ms.last().copied().unwrap_or(0.0)})
    );
}
