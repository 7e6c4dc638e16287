//! `send` (a shell job on one device; output on stdout, exit with the remote exit code) and
//! `op` (a typed job; its result as pretty JSON), over [`one_job`]; and the jobs smctl sends
//! ([`job`], [`new_job_id`], also used by `fleet`), as `socketman::proto::Job`s.

use crate::conn::{Conn, Target};
use crate::{parse_secs, usage, Fail, EXIT_NO_ANSWER, EXIT_REJECTED, EXIT_REMOTE_TIMEOUT};
use getopts::Matches;
use serde_json::{json, Value};
use socketman::proto::{Incoming, Job, JobMeta, Processed, ProcessedMeta};
use std::io::Write;
use std::time::{Duration, Instant};

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A job id unique across smctl runs: `smctl-<unix ms>-<pid>-<n>`.
pub fn new_job_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("smctl-{ms}-{}-{n}", std::process::id())
}

/// The job of `send`/`fleet`/`op`.
pub fn job(id: &str, ty: Option<&str>, msg: Option<&str>, args: Option<Value>) -> Job {
    Job::new(
        id,
        JobMeta {
            args,
            msg: msg.map(str::to_string),
            timeout: None,
            ty: ty.map(str::to_string),
        },
    )
}

/// What came back for one job on one device.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Processed(Processed),
    /// The REJECTED's `meta.error`.
    Rejected(String),
}

/// Publishes `job` to one device and waits for its PROCESSED or REJECTED.
pub fn one_job(t: &Target, mac: &str, job: &Job, timeout: Duration) -> Result<Answer, Fail> {
    let id = job.id.as_str();
    let topics = t.topics(mac);
    let conn = Conn::open(t)?;
    conn.subscribe(&[topics.delivery.clone(), topics.publ.clone()])?;
    conn.publish(&topics.sub, t.wrap(job))?;
    let deadline = Instant::now() + timeout;
    let mut delivered = false;
    while let Some(msg) = conn.next(deadline)? {
        let Some(answer) = Incoming::parse(msg.payload()) else {
            continue;
        };
        if answer.job_id() != Some(id) {
            continue;
        }
        match answer {
            Incoming::Delivered(_) => delivered = true,
            Incoming::Processed(p) => {
                conn.close();
                return Ok(Answer::Processed(p));
            }
            Incoming::Rejected(r) => {
                conn.close();
                let e = match r.meta.error.as_str() {
                    "" => "(no error given)".to_string(),
                    e => e.to_string(),
                };
                return Ok(Answer::Rejected(e));
            }
            _ => {}
        }
    }
    conn.close();
    let secs = timeout.as_secs_f64();
    Err(Fail(
        EXIT_NO_ANSWER,
        if delivered {
            format!("job {id} was delivered to {mac} but no result came within {secs} s")
        } else {
            format!("no answer from {mac} within {secs} s (is it online? smctl devices)")
        },
    ))
}

/// The exit code `send` ends with for a PROCESSED.
pub fn send_exit_code(meta: &ProcessedMeta) -> i32 {
    match meta.exit_code {
        Some(c) => c & 0xff,
        None if meta.error.as_deref() == Some("timeout") => EXIT_REMOTE_TIMEOUT,
        None if meta.success => 0,
        None => 1,
    }
}

pub fn cmd_send(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if words.is_empty() {
        return Err(usage("send: no command given (smctl send -- COMMAND…)"));
    }
    let mac = t.mac()?;
    let timeout = parse_secs(m, "timeout", 60.0)?;
    let ty = m.opt_str("type");
    let cmd = words.join(" ");
    let j = job(&new_job_id(), ty.as_deref(), Some(&cmd), None);
    match one_job(t, &mac, &j, timeout)? {
        Answer::Rejected(e) => Err(Fail(EXIT_REJECTED, format!("{mac} rejected the job: {e}"))),
        Answer::Processed(p) => {
            let meta = &p.meta;
            let mut so = std::io::stdout();
            let _ = so.write_all(meta.msg.as_bytes());
            let _ = so.flush();
            if meta.truncated {
                eprintln!("smctl: output was cut at the device's job_output_max");
            }
            let code = send_exit_code(meta);
            if code == EXIT_REMOTE_TIMEOUT {
                eprintln!("smctl: the job timed out on {mac} and was killed");
            } else if let (None, Some(e)) = (meta.exit_code, &meta.error) {
                eprintln!("smctl: {e}");
            }
            Ok(code)
        }
    }
}

pub fn cmd_op(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    let (ty, args) = match words {
        [ty] => (ty.clone(), json!({})),
        [ty, a] => {
            let v: Value = serde_json::from_str(a)
                .map_err(|e| usage(format!("op: JSON-ARGS is not valid JSON: {e}")))?;
            if !v.is_object() {
                return Err(usage("op: JSON-ARGS must be a JSON object"));
            }
            (ty.clone(), v)
        }
        [] => return Err(usage("op: no job type given (smctl op TYPE [JSON-ARGS])")),
        _ => return Err(usage("op: too many words (quote the JSON arguments)")),
    };
    let mac = t.mac()?;
    let timeout = parse_secs(m, "timeout", 60.0)?;
    let j = job(&new_job_id(), Some(&ty), None, Some(args));
    match one_job(t, &mac, &j, timeout)? {
        Answer::Rejected(e) => Err(Fail(EXIT_REJECTED, format!("{mac} rejected the job: {e}"))),
        Answer::Processed(p) => {
            let meta = &p.meta;
            let shown = match &meta.result {
                Some(r) if !r.is_null() => serde_json::to_string_pretty(r).unwrap_or_default(),
                _ => meta.msg.trim_end().to_string(),
            };
            if !shown.is_empty() {
                println!("{shown}");
            }
            if meta.success {
                Ok(0)
            } else {
                let e = meta.error.as_deref().unwrap_or("the job failed");
                eprintln!("smctl: {ty} failed on {mac}: {e}");
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_of_processed() {
        let p = |meta: Value| serde_json::from_value::<ProcessedMeta>(meta).unwrap();
        assert_eq!(
            send_exit_code(&p(json!({"exit_code": 3, "success": false}))),
            3
        );
        assert_eq!(
            send_exit_code(&p(json!({"exit_code": 0, "success": true}))),
            0
        );
        assert_eq!(
            send_exit_code(&p(json!({"exit_code": null, "error": "timeout"}))),
            EXIT_REMOTE_TIMEOUT
        );
        assert_eq!(
            send_exit_code(&p(json!({"success": true, "result": {}}))),
            0
        );
        assert_eq!(
            send_exit_code(&p(json!({"success": false, "error": "x"}))),
            1
        );
    }
}
