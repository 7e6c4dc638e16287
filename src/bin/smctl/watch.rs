//! `watch`: streams CONNECT/PING/events, DELIVERED, PROCESSED and REJECTED of one device (or
//! all) as readable lines (read through `socketman::proto::Incoming`) or JSON as it came; and
//! how times and missing numbers are shown ([`utc`], [`or_null`]).

use crate::conn::{mac_of, Conn, Target};
use crate::{parse_num, parse_secs, usage, Fail};
use getopts::Matches;
use serde_json::{json, Value};
use socketman::proto::Incoming;
use std::io::Write;
use std::time::{Duration, Instant};

/// `YYYY-MM-DD HH:MM:SSZ` of a Unix time.
pub fn utc(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// First line of `s`, cut at `max` characters, with `…` when anything was left out.
pub fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let more = s.trim_end().lines().nth(1).is_some() || line.chars().count() > max;
    let mut out: String = line.chars().take(max).collect();
    if more {
        out.push('…');
    }
    out
}

/// `v`, or `null` (as the agent sends a missing exit code or status).
pub fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// The readable line of `watch` for one message (`Value::Null`: the payload was not JSON).
pub fn describe(topic: &str, retained: bool, v: &Value) -> String {
    let mac = mac_of(topic);
    let msg = Incoming::from_value(v.clone());
    let ts = msg
        .timestamp()
        .and_then(|t| i64::try_from(t).ok())
        .unwrap_or_else(|| socketman::proto::now() as i64);
    let text = match &msg {
        Incoming::Connect(c) => {
            let m = &c.meta;
            let state = if m.online { "online" } else { "offline" };
            let client_id = if m.client_id.is_empty() {
                "?"
            } else {
                &m.client_id
            };
            let mut s = format!("CONNECT {state} {client_id}");
            if let Some(ver) = &m.version {
                s.push_str(&format!(" v{ver}"));
            }
            s
        }
        Incoming::Ping(p) => format!(
            "PING uptime {} s, status {}",
            p.meta.uptime,
            or_null(p.meta.status)
        ),
        Incoming::Delivered(d) => {
            let dup = if d.meta.duplicate { " (duplicate)" } else { "" };
            format!("DELIVERED {}{dup}", d.id)
        }
        Incoming::Processed(p) => {
            let m = &p.meta;
            let ok = if m.success { "ok" } else { "FAILED" };
            let mut s = format!(
                "PROCESSED {} {} {ok} exit {} in {} ms",
                p.id,
                m.ty,
                or_null(m.exit_code),
                m.duration_ms
            );
            if let Some(e) = &m.error {
                s.push_str(&format!(" error: {e}"));
            }
            let out = first_line(&m.msg, 60);
            if !out.is_empty() {
                s.push_str(&format!(": {out}"));
            }
            s
        }
        Incoming::Rejected(r) => {
            let error = match r.meta.error.as_str() {
                "" => "(no error given)",
                e => e,
            };
            format!("REJECTED {}: {error}", r.id.as_deref().unwrap_or("-"))
        }
        Incoming::Other(Value::Null) => "(not JSON)".to_string(),
        // Other events (SERVICE, RECOVERY, …) as they came.
        Incoming::Other(other) => format!(
            "{} {}",
            other["event_type"].as_str().unwrap_or("?"),
            other["meta"]
        ),
    };
    let r = if retained { " (retained)" } else { "" };
    format!("{}  {mac}  {text}{r}", utc(ts))
}

pub fn cmd_watch(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if !words.is_empty() {
        return Err(usage(format!("watch: unexpected '{}'", words.join(" "))));
    }
    let mac = t.cfg.mac.clone().unwrap_or_else(|| "+".into());
    let count = parse_num::<u64>(m, "count")?;
    let deadline = match m.opt_str("for") {
        Some(_) => Instant::now() + parse_secs(m, "for", 1.0)?,
        None => Instant::now() + Duration::from_secs(100 * 365 * 86_400),
    };
    let conn = Conn::open(t)?;
    let tail = format!("{}/{}/{mac}", t.cfg.topic, t.cfg.key);
    conn.subscribe(&["status", "delivery", "pub"].map(|k| format!("{k}/{tail}")))?;
    let json_out = m.opt_present("json");
    let mut seen = 0u64;
    let mut so = std::io::stdout();
    while count.is_none_or(|c| seen < c) {
        let Some(msg) = conn.next(deadline)? else {
            break;
        };
        seen += 1;
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        let line = if json_out {
            let payload = if v.is_null() {
                json!(String::from_utf8_lossy(msg.payload()))
            } else {
                v
            };
            json!({"topic": msg.topic(), "retained": msg.retained(), "payload": payload})
                .to_string()
        } else {
            describe(msg.topic(), msg.retained(), &v)
        };
        if writeln!(so, "{line}").and_then(|_| so.flush()).is_err() {
            break; // stdout closed (e.g. `| head`)
        }
    }
    conn.close();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_484_484_398), "2017-01-15 12:46:38Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn readable_watch_lines() {
        let c = json!({"timestamp": 0, "event_type": "CONNECT",
                       "meta": {"online": "1", "client_id": "sm-AA", "version": "0.1.0"}});
        assert_eq!(
            describe("status/T/K/AA", true, &c),
            "1970-01-01 00:00:00Z  AA  CONNECT online sm-AA v0.1.0 (retained)"
        );
        let p = json!({"id": "j1", "timestamp": 0, "event_type": "PROCESSED",
                       "meta": {"type": "cmd", "success": false, "exit_code": 3,
                                "duration_ms": 5, "msg": "line1\nline2\n"}});
        assert_eq!(
            describe("pub/T/K/AA", false, &p),
            "1970-01-01 00:00:00Z  AA  PROCESSED j1 cmd FAILED exit 3 in 5 ms: line1…"
        );
        let r = json!({"id": null, "timestamp": 0, "event_type": "REJECTED",
                       "meta": {"error": "invalid: not JSON"}});
        assert!(describe("pub/T/K/AA", false, &r).ends_with("REJECTED -: invalid: not JSON"));
    }

    #[test]
    fn watch_lines_of_what_agents_send() {
        use socketman::proto::{
            Connect, Delivered, Event, PingMeta, Processed, ProcessedMeta, ServiceMeta, Wire,
        };
        let line = |topic: &str, v: Value| {
            let mut v = v;
            v["timestamp"] = json!(0);
            describe(topic, false, &v)
        };
        let head = "1970-01-01 00:00:00Z  AA  ";
        assert_eq!(
            line("status/T/K/AA", Connect::offline("sm-AA").to_value()),
            format!("{head}CONNECT offline sm-AA")
        );
        let ping = Event::new(PingMeta {
            status: None,
            uptime: 5,
        });
        assert_eq!(
            line("status/T/K/AA", ping.to_value()),
            format!("{head}PING uptime 5 s, status null")
        );
        assert_eq!(
            line("delivery/T/K/AA", Delivered::new("j1", true).to_value()),
            format!("{head}DELIVERED j1 (duplicate)")
        );
        let timed_out = ProcessedMeta {
            msg: "partial\n".into(),
            duration_ms: 5000,
            error: Some("timeout".into()),
            ..ProcessedMeta::default()
        };
        assert_eq!(
            line("pub/T/K/AA", Processed::new("j2", timed_out).to_value()),
            format!("{head}PROCESSED j2 cmd FAILED exit null in 5000 ms error: timeout: partial")
        );
        // Other events: the meta as JSON.
        let svc = Event::new(ServiceMeta {
            exit_code: None,
            name: "a".into(),
            pid: Some(1),
            status: "running".into(),
        });
        assert_eq!(
            line("status/T/K/AA", svc.to_value()),
            format!(r#"{head}SERVICE {{"exit_code":null,"name":"a","pid":1,"status":"running"}}"#)
        );
        assert!(describe("status/T/K/AA", false, &Value::Null).ends_with("  AA  (not JSON)"));
    }
}
