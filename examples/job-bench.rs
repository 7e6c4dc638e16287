//! The benchmark driver (scripts/bench.sh): sends N shell jobs `true` to one device, keeping
//! at most WINDOW in flight (WINDOW 1 = sequential round trips), and prints one JSON line with
//! the round-trip times (publish → PROCESSED) and the throughput. One thread, one sync Paho
//! client; bounded by TIMEOUT seconds (default 300). Works against socketman or `mqtt-echo`.
//! Not part of the shipped binary: `cargo build --release --example job-bench`.
//!
//! Usage: `job-bench PORT TOPIC KEY MAC N WINDOW [TIMEOUT]`
#![forbid(unsafe_code)]

use paho_mqtt as mqtt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn die(msg: String) -> ! {
    eprintln!("job-bench: {msg}");
    std::process::exit(1);
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let rank = (q * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 6 {
        die("usage: job-bench PORT TOPIC KEY MAC N WINDOW [TIMEOUT]".into());
    }
    let num = |i: usize| -> usize {
        a[i].parse()
            .unwrap_or_else(|_| die(format!("'{}' is not a number", a[i])))
    };
    let (port, tail) = (&a[0], format!("{}/{}/{}", a[1], a[2], a[3]));
    let (n, window) = (num(4), num(5).max(1));
    let timeout = Duration::from_secs(a.get(6).and_then(|s| s.parse().ok()).unwrap_or(300));
    let cli = mqtt::Client::new(
        mqtt::CreateOptionsBuilder::new_v3()
            .server_uri(format!("tcp://127.0.0.1:{port}"))
            .client_id(format!("bench-{}", std::process::id()))
            .persistence(mqtt::PersistenceType::None)
            .finalize(),
    )
    .unwrap_or_else(|e| die(format!("client: {e}")));
    let rx = cli.start_consuming();
    cli.connect(
        mqtt::ConnectOptionsBuilder::new_v3()
            .clean_session(true)
            .finalize(),
    )
    .unwrap_or_else(|e| die(format!("connect to port {port}: {e}")));
    cli.subscribe(&format!("pub/{tail}"), 1)
        .unwrap_or_else(|e| die(format!("subscribe: {e}")));
    let sub = format!("sub/{tail}");
    let run = format!(
        "b{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut in_flight: HashMap<String, Instant> = HashMap::new();
    let mut lat_ms: Vec<f64> = Vec::with_capacity(n);
    let (mut next, mut failed, mut rejected) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    let deadline = start + timeout;
    while lat_ms.len() < n && Instant::now() < deadline {
        while next < n && in_flight.len() < window {
            let id = format!("{run}-{next}");
            let job = json!({"id": id, "meta": {"msg": "true"}});
            in_flight.insert(id, Instant::now());
            if let Err(e) = cli.publish(mqtt::Message::new(sub.as_str(), job.to_string(), 1)) {
                die(format!("publish: {e}"));
            }
            next += 1;
        }
        let msg = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(m)) => m,
            Ok(None) => die("connection lost".into()),
            Err(_) => continue,
        };
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        let Some(t0) = v["id"].as_str().and_then(|id| in_flight.remove(id)) else {
            continue;
        };
        lat_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if v["event_type"] == "REJECTED" {
            rejected += 1;
        } else if v["meta"]["success"] != true {
            failed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = cli.disconnect(None);
    let done = lat_ms.len();
    let mut sorted = lat_ms.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let mean = if done > 0 {
        sorted.iter().sum::<f64>() / done as f64
    } else {
        0.0
    };
    println!(
        "{}",
        json!({"n": n, "done": done, "failed": failed, "rejected": rejected, "window": window,
            "elapsed_s": elapsed, "jobs_per_s": done as f64 / elapsed.max(1e-9),
            "p50_ms": quantile(&sorted, 0.5), "p99_ms": quantile(&sorted, 0.99),
            "max_ms": sorted.last().copied().unwrap_or(0.0), "mean_ms": mean})
    );
    if done < n {
        die(format!(
            "only {done} of {n} jobs answered within {timeout:?}"
        ));
    }
}
