//! `firmware` (a `firmware.upgrade` job) and `configure` (an `agent.configure` job): jobs
//! whose answer comes from the device's next start, after a reboot or a restart. Both wait
//! for the final PROCESSED and show the progress on stderr as it happens: delivered, the
//! FIRMWARE `flashing` event, the device going offline and coming back (its retained
//! CONNECT). `configure` also listens on the new `topic`/`key` when the change moves them,
//! since the answer then comes from there.

use crate::conn::{Conn, Target};
use crate::send::{job, new_job_id};
use crate::{parse_secs, usage, Fail, EXIT_NO_ANSWER, EXIT_REJECTED};
use getopts::Matches;
use serde_json::{json, Map, Value};
use socketman::proto::{Incoming, Processed, Topics};
use std::time::{Duration, Instant};

/// The value of `--set key=value`: JSON when it reads as JSON (numbers, booleans, lists,
/// `null` to remove a key), else the text as a string.
pub fn set_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// `--set` words into the `config` object.
pub fn parse_sets(sets: &[String]) -> Result<Map<String, Value>, Fail> {
    let mut out = Map::new();
    for s in sets {
        let Some((k, v)) = s.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(usage(format!("--set {s:?}: expected key=value")));
        };
        out.insert(k.trim().to_string(), set_value(v));
    }
    Ok(out)
}

fn progress(mac: &str, what: &str) {
    eprintln!("smctl: {mac}: {what}");
}

/// Publishes `j` and follows the device until the PROCESSED of `j` comes, on the device's
/// own topics or on `also` (new topics after a change). Returns the PROCESSED.
fn follow(
    t: &Target,
    mac: &str,
    j: &socketman::proto::Job,
    also: Option<Topics>,
    timeout: Duration,
) -> Result<Processed, Fail> {
    let id = j.id.clone();
    let topics = t.topics(mac);
    let conn = Conn::open(t)?;
    let mut subs = vec![
        topics.delivery.clone(),
        topics.publ.clone(),
        topics.status.clone(),
    ];
    if let Some(a) = &also {
        subs.extend([a.publ.clone(), a.status.clone()]);
    }
    conn.subscribe(&subs)?;
    conn.publish(&topics.sub, t.wrap(j))?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut online: Option<bool> = None;
    let mut delivered = false;
    while let Some(msg) = conn.next(deadline)? {
        let secs = started.elapsed().as_secs();
        let Some(m) = Incoming::parse(msg.payload()) else {
            continue;
        };
        match m {
            Incoming::Delivered(d) if d.id == id => {
                delivered = true;
                progress(mac, &format!("job {id} delivered ({secs} s)"));
            }
            Incoming::Processed(p) if p.id == id => {
                conn.close();
                progress(mac, &format!("answered after {secs} s"));
                return Ok(p);
            }
            Incoming::Rejected(r) if r.id.as_deref() == Some(id.as_str()) => {
                conn.close();
                return Err(Fail(
                    EXIT_REJECTED,
                    format!("{mac} rejected the job: {}", r.meta.error),
                ));
            }
            Incoming::Connect(c) => {
                let was = online.replace(c.meta.online);
                if was.is_some() && was != Some(c.meta.online) {
                    let v = c.meta.version.as_deref().unwrap_or("?");
                    progress(
                        mac,
                        &if c.meta.online {
                            format!("back online (socketman {v}, {secs} s)")
                        } else {
                            format!("offline (restarting or rebooting, {secs} s)")
                        },
                    );
                }
            }
            Incoming::Other(v) if v["event_type"] == "FIRMWARE" => {
                let m = &v["meta"];
                progress(
                    mac,
                    &format!(
                        "firmware {}: {} -> {} ({secs} s)",
                        m["state"].as_str().unwrap_or("?"),
                        m["previous"].as_str().unwrap_or("?"),
                        m["version"].as_str().unwrap_or("?")
                    ),
                );
            }
            _ => {}
        }
    }
    conn.close();
    Err(Fail(
        EXIT_NO_ANSWER,
        if delivered {
            format!(
                "job {id} was delivered to {mac} but no final answer came within {} s",
                timeout.as_secs()
            )
        } else {
            format!(
                "no answer from {mac} within {} s (is it online? smctl devices)",
                timeout.as_secs()
            )
        },
    ))
}

/// Prints the result (or the error) of a final answer; 0 on success, 1 on failure.
fn report(mac: &str, ty: &str, p: &Processed) -> i32 {
    let meta = &p.meta;
    if let Some(r) = meta.result.as_ref().filter(|r| !r.is_null()) {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    }
    if meta.success {
        if meta.result.is_none() {
            println!("{}", meta.msg.trim_end());
        }
        0
    } else {
        let e = meta.error.as_deref().unwrap_or("the job failed");
        eprintln!("smctl: {ty} failed on {mac}: {e}");
        1
    }
}

fn required(m: &Matches, name: &str) -> Result<String, Fail> {
    m.opt_str(name)
        .ok_or_else(|| usage(format!("--{name} is required")))
}

pub fn cmd_firmware(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if !words.is_empty() {
        return Err(usage(
            "firmware: takes no words (--url, --sha256, --version)",
        ));
    }
    let mac = t.mac()?;
    let args = json!({
        "url": required(m, "url")?,
        "sha256": required(m, "sha256")?,
        "version": required(m, "version")?,
        "keep_settings": !m.opt_present("no-keep-settings"),
    });
    let timeout = parse_secs(m, "timeout", 900.0)?;
    let j = job(&new_job_id(), Some("firmware.upgrade"), None, Some(args));
    let p = follow(t, &mac, &j, None, timeout)?;
    Ok(report(&mac, "firmware.upgrade", &p))
}

pub fn cmd_configure(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if !words.is_empty() {
        return Err(usage("configure: takes no words (--set key=value …)"));
    }
    let sets = m.opt_strs("set");
    if sets.is_empty() {
        return Err(usage("configure: give at least one --set key=value"));
    }
    let config = parse_sets(&sets)?;
    let mac = t.mac()?;
    let confirm = crate::parse_num::<u64>(m, "confirm")?;
    // The answer of a change of topic or key comes on the new topics.
    let mut moved = t.cfg.clone();
    if let Some(Value::String(s)) = config.get("topic") {
        moved.topic = s.clone();
    }
    if let Some(Value::String(s)) = config.get("key") {
        moved.key = s.clone();
    }
    let also =
        (moved.topic != t.cfg.topic || moved.key != t.cfg.key).then(|| Topics::new(&moved, &mac));
    let mut args = json!({
        "config": config,
        "mode": if m.opt_present("replace") { "replace" } else { "merge" },
    });
    if let Some(c) = confirm {
        args["confirm_s"] = json!(c);
    }
    let default_wait =
        confirm.unwrap_or(socketman::services::configure::CONFIRM_DEFAULT) as f64 + 60.0;
    let timeout = parse_secs(m, "timeout", default_wait)?;
    let j = job(&new_job_id(), Some("agent.configure"), None, Some(args));
    let p = follow(t, &mac, &j, also, timeout)?;
    Ok(report(&mac, "agent.configure", &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_json_or_text() {
        let m = parse_sets(&[
            "ping-interval=60".into(),
            "mqtt_host=broker.example".into(),
            "debug=true".into(),
            "cacrt=null".into(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"ping-interval": 60, "mqtt_host": "broker.example", "debug": true, "cacrt": null})
        );
        assert!(parse_sets(&["novalue".into()]).is_err());
        assert!(parse_sets(&["=x".into()]).is_err());
    }
}
