//! REST notifications (SPEC §4.6): with `rest` on, a job's result is sent as
//! `PATCH <api_url>/operations/<id>?access_token=<token>` instead of on `pub/…`. Every pending
//! notification is a file in `state_dir/rest/` (written atomically before the first try), so
//! it survives restarts; the `rest-notify` thread retries with back-off until the API answers
//! 2xx (done) or 4xx (refused for good, logged), then deletes the file.
#![forbid(unsafe_code)]

use crate::backoff::Backoff;
use crate::config::Config;
use crate::runtime::Shutdown;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directory of pending notifications.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("rest")
}

/// The PATCH body for a PROCESSED message ([`crate::proto::RestResult`], a superset of the
/// C SocketMan's body).
pub fn body(processed: &Value) -> Value {
    serde_json::to_value(crate::proto::RestResult::of(processed)).unwrap_or(Value::Null)
}

/// Most notifications waiting on flash; beyond it the oldest is dropped (logged, counted).
pub const MAX_QUEUED: usize = 1000;
/// Most bytes of notifications waiting on flash.
pub const MAX_QUEUED_BYTES: u64 = 4 << 20;

/// Notifications dropped because the queue was full, since start (healthz `meta.rest`).
pub static DROPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The pending files, oldest first (names start with the Unix time), with their sizes.
fn queued(state_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = match std::fs::read_dir(dir(state_dir)) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// (notifications waiting, their bytes).
pub fn queue_stats(state_dir: &Path) -> (usize, u64) {
    let q = queued(state_dir);
    (q.len(), q.iter().map(|(_, n)| n).sum())
}

fn file_name(id: &str) -> String {
    // Ids are free text: keep the name safe, short and unique.
    let safe: String = id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}-{}-{}.json",
        crate::proto::now(),
        safe,
        crate::jobs::intake::hex(&crate::backoff::random_u64().to_le_bytes()[..4])
    )
}

/// Queues the notification for job `id` durably. When [`MAX_QUEUED`] notifications or
/// [`MAX_QUEUED_BYTES`] wait already (the API has been unreachable for long), the oldest
/// are dropped first, each logged and counted in [`DROPPED`].
pub fn enqueue(state_dir: &Path, id: &str, processed: &Value) -> std::io::Result<()> {
    enqueue_capped(state_dir, id, processed, (MAX_QUEUED, MAX_QUEUED_BYTES))
}

fn enqueue_capped(
    state_dir: &Path,
    id: &str,
    processed: &Value,
    (max_files, max_bytes): (usize, u64),
) -> std::io::Result<()> {
    let doc = serde_json::to_string(&crate::proto::RestNotification {
        id: id.to_string(),
        body: crate::proto::RestResult::of(processed),
    })
    .unwrap_or_default();
    let size = doc.len() as u64;
    let files = queued(state_dir);
    let mut count = files.len();
    let mut bytes: u64 = files.iter().map(|(_, n)| n).sum();
    for (old, n) in files {
        if count < max_files && bytes + size <= max_bytes {
            break;
        }
        if std::fs::remove_file(&old).is_ok() {
            let d = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            log::warn!(
                "REST queue full ({count} notifications, {bytes} bytes): dropped the oldest, {} \
                 ({d} dropped so far)",
                old.file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
            );
        }
        count -= 1;
        bytes = bytes.saturating_sub(n);
    }
    crate::platform::fs::write_atomic(&dir(state_dir).join(file_name(id)), doc.as_bytes())
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq)]
enum Attempt {
    Done,
    Refused(u16),
    Retry(String),
}

fn send(
    http: &crate::http::Client,
    api_url: &str,
    token: Option<&str>,
    id: &str,
    body: &Value,
) -> Attempt {
    let base = format!(
        "{}/operations/{}",
        api_url.trim_end_matches('/'),
        crate::http::encode(id)
    );
    let url = match token {
        Some(t) => crate::http::with_query(&base, &[("access_token", t)]),
        None => base,
    };
    match http.send(
        "PATCH",
        &url,
        "application/json",
        body.to_string().as_bytes(),
    ) {
        Ok(_) => Attempt::Done,
        Err(crate::http::HttpError::Status { code, .. }) if (400..500).contains(&code) => {
            Attempt::Refused(code)
        }
        // 5xx, a redirect not followed, no answer: kept and retried.
        Err(e) => Attempt::Retry(
            e.to_string()
                .replace(url.as_str(), &crate::http::redact(&url)),
        ),
    }
}

/// Sends every pending notification once, oldest first. Returns false if one must be retried.
pub fn flush(cfg: &Config, http_timeout: Duration) -> bool {
    let Some(api_url) = cfg.api_url.clone() else {
        return true;
    };
    let d = dir(&cfg.state_dir);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&d) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(_) => return true,
    };
    files.sort();
    let http = crate::http::Client::new(cfg, http_timeout);
    for f in files {
        let doc = match crate::platform::fs::read_json(&f) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                log::error!(
                    "REST notification {} is unreadable ({e}); removed",
                    f.display()
                );
                let _ = std::fs::remove_file(&f);
                continue;
            }
        };
        let id = doc["id"].as_str().unwrap_or_default().to_string();
        match send(&http, &api_url, cfg.token.as_deref(), &id, &doc["body"]) {
            Attempt::Done => {
                log::info!("job {id}: result sent to the API");
                let _ = std::fs::remove_file(&f);
            }
            Attempt::Refused(code) => {
                log::error!("job {id}: API refused the result with HTTP {code}; not retried");
                let _ = std::fs::remove_file(&f);
            }
            Attempt::Retry(why) => {
                log::warn!("job {id}: result not delivered to the API ({why}); will retry");
                return false;
            }
        }
    }
    true
}

/// The body of the `rest-notify` thread: flushes when woken (a result was queued, or the
/// stop) and retries with back-off 1 s … 5 min.
pub fn notifier(
    cfg: crate::runtime::ConfigHandle,
    shutdown: Shutdown,
    http_timeout: Duration,
    wake: std::sync::mpsc::Receiver<()>,
) -> impl FnOnce() + Send + 'static {
    {
        move || {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), true);
            // Files may be left from before a restart: flush at once, then when woken.
            while !shutdown.is_set() {
                if !flush(&cfg.get(), http_timeout) {
                    if shutdown.wait_timeout(backoff.next_delay()) {
                        break;
                    }
                    continue;
                }
                backoff.reset();
                if wake.recv().is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_queue_on_flash_is_bounded_oldest_dropped_first() {
        let d = tempfile::tempdir().unwrap();
        let p = |i: usize| json!({"id": format!("j{i}"), "meta": {"success": true, "msg": "x".repeat(100), "exit_code": 0, "type": "cmd"}});
        let before = DROPPED.load(std::sync::atomic::Ordering::Relaxed);
        let one = json!({"id": "j00000", "body": body(&p(0))})
            .to_string()
            .len() as u64;
        let (max, max_bytes) = (20, one * 22);
        for i in 0..max + 5 {
            enqueue_capped(d.path(), &format!("j{i:05}"), &p(i), (max, max_bytes)).unwrap();
        }
        let (n, bytes) = queue_stats(d.path());
        assert_eq!(n, max);
        assert!(bytes <= max_bytes);
        assert!(DROPPED.load(std::sync::atomic::Ordering::Relaxed) >= before + 5);
        // The newest are kept.
        let names: Vec<String> = queued(d.path())
            .iter()
            .map(|(f, _)| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names
            .iter()
            .any(|n| n.contains(&format!("j{:05}", max + 4))));
        // Bytes count too: big notifications push out more of the old ones.
        let big = json!({"id": "big", "meta": {"msg": "y".repeat(2000)}});
        enqueue_capped(d.path(), "big", &big, (max, max_bytes)).unwrap();
        assert!(queue_stats(d.path()).1 <= max_bytes);
        assert!(queue_stats(d.path()).0 < max);
        assert!(!names.iter().any(|n| n.contains("-j00000-")));
        // A 10 KiB id still gives a file name the file system takes.
        enqueue(d.path(), &"i".repeat(10_000), &p(0)).unwrap();
    }

    #[test]
    fn body_from_processed() {
        let p = json!({"id":"x","meta":{"msg":"out","type":"cmd","success":true,"exit_code":0}});
        assert_eq!(
            body(&p),
            json!({"success":true,"msg":"out","output":"out","exit_code":0,"type":"cmd"})
        );
        // No output at all: both keys are still there, as strings (a C-era API reads `msg`).
        let p = json!({"id":"x","meta":{"type":"cmd","success":false,"exit_code":3}});
        let b = body(&p);
        assert_eq!(
            (b["msg"].as_str(), b["output"].as_str()),
            (Some(""), Some(""))
        );
        assert_eq!(b["success"], false);
    }

    #[test]
    fn enqueue_writes_safe_names() {
        let d = tempfile::tempdir().unwrap();
        enqueue(d.path(), "../../etc/x", &json!({"meta":{}})).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(!names[0].to_string_lossy().contains('/'));
    }
}
