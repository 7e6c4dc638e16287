//! `fleet`: one shell job to many devices (`--macs FILE` or `--all-online`), answers taken as
//! they come, live progress on stderr, then a summary (ok / failed / rejected / no answer,
//! time to results, slowest device) as text or JSON.

use crate::conn::{mac_of, Conn, Target};
use crate::devices::collect_devices;
use crate::send::{job, new_job_id, Answer};
use crate::watch::or_null;
use crate::{parse_secs, usage, Fail, EXIT_NO_ANSWER};
use getopts::Matches;
use paho_mqtt as mqtt;
use serde_json::{json, Value};
use socketman::proto::Incoming;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// MACs of a `--macs` file: one per line; blank lines and `#` comments are skipped.
pub fn parse_macs(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if !l.is_empty() && !out.iter().any(|m| m == l) {
            out.push(l.to_string());
        }
    }
    out
}

/// How one device of a fleet job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Rejected,
    NoAnswer,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
            Outcome::NoAnswer => "no answer",
        }
    }
}

/// One device of a fleet job.
#[derive(Debug, Clone)]
pub struct Slot {
    mac: String,
    sent: Option<Instant>,
    delivered: bool,
    /// Time from this device's publish to its answer, and the answer.
    answer: Option<(Duration, Answer)>,
}

impl Slot {
    pub fn outcome(&self) -> Outcome {
        match &self.answer {
            None => Outcome::NoAnswer,
            Some((_, Answer::Rejected(_))) => Outcome::Rejected,
            Some((_, Answer::Processed(p))) if p.meta.success => Outcome::Ok,
            Some(_) => Outcome::Failed,
        }
    }
}

/// The `q` quantile (0–1) of sorted `xs` (nearest rank).
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let rank = (q * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

/// The summary of a finished fleet job.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    total: usize,
    ok: usize,
    failed: usize,
    rejected: usize,
    no_answer: usize,
    /// Of the unanswered: how many had said DELIVERED.
    delivered_only: usize,
    p50: f64,
    p99: f64,
    max: f64,
    slowest: Option<String>,
}

pub fn summarize(slots: &[Slot]) -> Summary {
    let count = |o: Outcome| slots.iter().filter(|s| s.outcome() == o).count();
    let mut lat: Vec<(f64, &str)> = slots
        .iter()
        .filter_map(|s| {
            s.answer
                .as_ref()
                .map(|(d, _)| (d.as_secs_f64(), s.mac.as_str()))
        })
        .collect();
    lat.sort_by(|a, b| a.0.total_cmp(&b.0));
    let xs: Vec<f64> = lat.iter().map(|l| l.0).collect();
    Summary {
        total: slots.len(),
        ok: count(Outcome::Ok),
        failed: count(Outcome::Failed),
        rejected: count(Outcome::Rejected),
        no_answer: count(Outcome::NoAnswer),
        delivered_only: slots
            .iter()
            .filter(|s| s.answer.is_none() && s.delivered)
            .count(),
        p50: quantile(&xs, 0.5),
        p99: quantile(&xs, 0.99),
        max: xs.last().copied().unwrap_or(0.0),
        slowest: lat.last().map(|l| l.1.to_string()),
    }
}

pub fn summary_text(s: &Summary, all_answered_after: Option<f64>) -> String {
    let mut out = format!(
        "fleet: {} devices: ok {}, failed {}, rejected {}, no answer {}",
        s.total, s.ok, s.failed, s.rejected, s.no_answer
    );
    if s.delivered_only > 0 {
        out.push_str(&format!(" ({} delivered but unfinished)", s.delivered_only));
    }
    out.push('\n');
    if let Some(slow) = &s.slowest {
        out.push_str(&format!(
            "time to result: p50 {:.3} s, p99 {:.3} s, max {:.3} s (slowest {slow})\n",
            s.p50, s.p99, s.max
        ));
    }
    if let Some(t) = all_answered_after {
        out.push_str(&format!(
            "all answered {t:.3} s after the first job was sent\n"
        ));
    }
    out
}

pub fn cmd_fleet(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if words.is_empty() {
        return Err(usage(
            "fleet: no command given (smctl fleet --macs FILE -- COMMAND…)",
        ));
    }
    let timeout = parse_secs(m, "timeout", 60.0)?;
    let macs = match (m.opt_str("macs"), m.opt_present("all-online")) {
        (Some(f), false) => {
            let text =
                std::fs::read_to_string(&f).map_err(|e| usage(format!("--macs {f}: {e}")))?;
            let macs = parse_macs(&text);
            if let Some(bad) = macs.iter().find(|m| m.contains(['/', '+', '#', ' '])) {
                return Err(usage(format!("--macs {f}: '{bad}' is not a MAC")));
            }
            macs
        }
        (None, true) => collect_devices(t, Duration::from_secs(1))?
            .into_iter()
            .filter(|d| d.online)
            .map(|d| d.mac)
            .collect(),
        _ => {
            return Err(usage(
                "fleet: give exactly one of --macs FILE and --all-online",
            ))
        }
    };
    if macs.is_empty() {
        return Err(usage("fleet: no devices to send to"));
    }
    let cmd = words.join(" ");
    let id = new_job_id();
    let payload = t.wrap(&job(&id, None, Some(&cmd), None));
    let conn = Conn::open(t)?;
    conn.subscribe(&[t.wildcard("delivery"), t.wildcard("pub")])?;
    let mut slots: Vec<Slot> = macs
        .iter()
        .map(|m| Slot {
            mac: m.clone(),
            sent: None,
            delivered: false,
            answer: None,
        })
        .collect();
    let index: HashMap<String, usize> = macs
        .iter()
        .enumerate()
        .map(|(i, m)| (m.clone(), i))
        .collect();
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut answered = 0usize;
    let handle = |slots: &mut Vec<Slot>, msg: &mqtt::Message, answered: &mut usize| {
        let Some(&i) = index.get(mac_of(msg.topic())) else {
            return;
        };
        let Some(answer) = Incoming::parse(msg.payload()) else {
            return;
        };
        if answer.job_id() != Some(id.as_str()) || slots[i].answer.is_some() {
            return;
        }
        let took = slots[i].sent.map(|s| s.elapsed()).unwrap_or_default();
        match answer {
            Incoming::Delivered(_) => slots[i].delivered = true,
            Incoming::Processed(p) => {
                slots[i].answer = Some((took, Answer::Processed(p)));
                *answered += 1;
            }
            Incoming::Rejected(r) => {
                slots[i].answer = Some((took, Answer::Rejected(r.meta.error)));
                *answered += 1;
            }
            _ => {}
        }
    };
    // Publish to every device; answers that arrive meanwhile are taken in between.
    for i in 0..slots.len() {
        let topic = t.topics(&slots[i].mac).sub;
        slots[i].sent = Some(Instant::now());
        conn.publish(&topic, payload.clone())?;
        while let Some(msg) = conn.try_next() {
            handle(&mut slots, &msg, &mut answered);
        }
    }
    let publish_s = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + timeout;
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    let mut all_after = None;
    while answered < slots.len() {
        if tty && last_progress.elapsed() >= Duration::from_millis(200) {
            last_progress = Instant::now();
            let s = summarize(&slots);
            eprint!(
                "\r\x1b[Kfleet: {answered}/{} answered (ok {}, failed {}, rejected {}), {:.1} s",
                slots.len(),
                s.ok,
                s.failed,
                s.rejected,
                start.elapsed().as_secs_f64()
            );
        }
        let tick = (Instant::now() + Duration::from_millis(200)).min(deadline);
        match conn.next(tick)? {
            Some(msg) => handle(&mut slots, &msg, &mut answered),
            None if Instant::now() >= deadline => break,
            None => {}
        }
        if answered == slots.len() {
            all_after = Some(start.elapsed().as_secs_f64());
        }
    }
    if slots.len() == answered && all_after.is_none() {
        all_after = Some(start.elapsed().as_secs_f64());
    }
    conn.close();
    if tty {
        eprint!("\r\x1b[K");
    }
    let s = summarize(&slots);
    if m.opt_present("json") {
        let devices: Vec<Value> = slots
            .iter()
            .map(|sl| {
                let (lat, exit_code, output, error) = match &sl.answer {
                    Some((d, Answer::Processed(p))) => (
                        json!(d.as_secs_f64()),
                        json!(p.meta.exit_code),
                        json!(p.meta.msg),
                        json!(p.meta.error),
                    ),
                    Some((d, Answer::Rejected(e))) => {
                        (json!(d.as_secs_f64()), Value::Null, Value::Null, json!(e))
                    }
                    None => (Value::Null, Value::Null, Value::Null, Value::Null),
                };
                json!({"mac": sl.mac, "outcome": sl.outcome().name(), "delivered": sl.delivered,
                       "latency_s": lat, "exit_code": exit_code, "output": output, "error": error})
            })
            .collect();
        let out = json!({"id": id, "total": s.total, "ok": s.ok, "failed": s.failed,
            "rejected": s.rejected, "no_answer": s.no_answer, "p50_s": s.p50, "p99_s": s.p99,
            "max_s": s.max, "slowest": s.slowest, "publish_s": publish_s,
            "all_answered_s": all_after, "devices": devices});
        println!("{out}");
    } else {
        if m.opt_present("show-output") {
            for sl in &slots {
                let head = match &sl.answer {
                    Some((d, Answer::Processed(p))) => format!(
                        "{}, exit {}, {:.3} s",
                        sl.outcome().name(),
                        or_null(p.meta.exit_code),
                        d.as_secs_f64()
                    ),
                    Some((_, Answer::Rejected(e))) => format!("rejected: {e}"),
                    None if sl.delivered => "no answer (delivered)".into(),
                    None => "no answer".into(),
                };
                println!("== {} ({head})", sl.mac);
                if let Some((_, Answer::Processed(p))) = &sl.answer {
                    let o = &p.meta.msg;
                    print!("{o}");
                    if !o.is_empty() && !o.ends_with('\n') {
                        println!();
                    }
                }
            }
        }
        print!("{}", summary_text(&s, all_after));
        for o in [Outcome::Failed, Outcome::Rejected, Outcome::NoAnswer] {
            let list: Vec<&str> = slots
                .iter()
                .filter(|sl| sl.outcome() == o)
                .map(|sl| sl.mac.as_str())
                .collect();
            if !list.is_empty() {
                println!("{}: {}", o.name(), list.join(" "));
            }
        }
    }
    Ok(if s.no_answer > 0 {
        EXIT_NO_ANSWER
    } else if s.failed + s.rejected > 0 {
        1
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketman::proto::{Processed, ProcessedMeta};

    #[test]
    fn quantiles_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn macs_file() {
        let m = parse_macs("# fleet\nAA-01\n\n  AA-02  # kitchen\nAA-01\n");
        assert_eq!(m, vec!["AA-01", "AA-02"]);
    }

    #[test]
    fn fleet_summary_counts_and_slowest() {
        let slot = |mac: &str, ms: Option<u64>, ok: Option<bool>, delivered: bool| Slot {
            mac: mac.into(),
            sent: None,
            delivered,
            answer: ms.map(|ms| {
                let a = match ok {
                    Some(success) => Answer::Processed(Processed::new(
                        "j",
                        ProcessedMeta {
                            success,
                            ..ProcessedMeta::default()
                        },
                    )),
                    None => Answer::Rejected("busy: x".into()),
                };
                (Duration::from_millis(ms), a)
            }),
        };
        let slots = vec![
            slot("A", Some(100), Some(true), true),
            slot("B", Some(300), Some(false), true),
            slot("C", Some(200), None, false),
            slot("D", None, None, true),
            slot("E", None, None, false),
        ];
        let s = summarize(&slots);
        assert_eq!(
            (s.ok, s.failed, s.rejected, s.no_answer, s.delivered_only),
            (1, 1, 1, 2, 1)
        );
        assert_eq!(s.slowest.as_deref(), Some("B"));
        assert!((s.max - 0.3).abs() < 1e-9);
        assert!((s.p50 - 0.2).abs() < 1e-9);
        let text = summary_text(&s, None);
        assert!(
            text.contains("no answer 2 (1 delivered but unfinished)"),
            "{text}"
        );
        assert!(text.contains("slowest B"), "{text}");
    }
}
