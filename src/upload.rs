//! Stats upload (SPEC §5) and the shared stats handle [`Stats`] (`Agent::stats`).
//!
//! Thread `stats-upload`: every `heartbeat` seconds, and at once when [`upload_now`] is called
//! (USR1, SPEC §10), it sends the spooled records oldest first in batches of ≤ 1 MiB before
//! compression: `POST <stats_url>?access_token=<token>&mac=<MAC>`, `multipart/form-data` with
//! one file field `data` (`data.gz`, `application/gzip`) holding the gzip of the NDJSON lines.
//! - 2xx: the batch is deleted from the spool.
//! - 401: the batch is kept, the cycle stops, and the hook set with [`set_on_unauthorized`]
//!   is called (re-provisioning, SPEC §7; without a hook only a log line).
//! - anything else, or no answer within 15 s: the same batch goes to `backup_stats_url` (if
//!   set); if that fails too the records stay and the cycle stops until the next period.
//!
//! With `no-cache` the collector calls [`store`], which POSTs each record at once as
//! `application/json` (backup URL on failure); a record that could not be delivered joins the
//! spool. A 2xx body that is JSON with a `cmd` key is logged and ignored. The token never
//! reaches a log line (URLs are logged through [`crate::http::redact`]).
//!
//! Test-only environment overrides, read here only: `SOCKETMAN_TEST_HEARTBEAT_MS` (upload
//! period) and `SOCKETMAN_HTTP_TIMEOUT_MS` (HTTP timeout instead of 15 s). Not for production.
#![forbid(unsafe_code)]

use crate::agent::Agent;
use crate::config::Config;
use crate::spool::{Spool, SpoolStats, BATCH_MAX};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Hook = Box<dyn Fn() + Send + Sync>;

/// The stats state shared by the collector, the uploader, healthz and the signal handler.
pub struct Stats {
    spool: Mutex<Option<Spool>>,
    cache_dir: Mutex<(PathBuf, u64)>,
    trigger: (Mutex<bool>, Condvar),
    on_unauthorized: Mutex<Option<Hook>>,
}

impl Stats {
    /// Opens the spool in `cfg.cache_dir`. If it cannot be opened now, that is logged and
    /// retried on every use.
    pub fn open(cfg: &Config) -> Arc<Stats> {
        let s = Stats {
            spool: Mutex::new(None),
            cache_dir: Mutex::new((cfg.cache_dir.clone(), cfg.cache_max_bytes)),
            trigger: (Mutex::new(false), Condvar::new()),
            on_unauthorized: Mutex::new(None),
        };
        drop(s.spool());
        Arc::new(s)
    }

    /// The spool, opened on first use; `None` while `cache_dir` is unusable.
    fn spool(&self) -> MutexGuard<'_, Option<Spool>> {
        let mut g = match self.spool.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (dir, max) = match self.cache_dir.lock() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if g.as_ref().is_some_and(|s| s.dir() != dir) {
            *g = None; // cache_dir changed on reload
        }
        match g.as_mut() {
            Some(s) => s.set_max_bytes(max),
            None => match Spool::open(&dir, max) {
                Ok(s) => *g = Some(s),
                Err(e) => log::error!("stats cache {}: cannot open: {e}", dir.display()),
            },
        }
        g
    }

    /// Takes the current `cache_dir`/`cache_max_bytes` (config reload).
    pub fn apply_config(&self, cfg: &Config) {
        if let Ok(mut d) = self.cache_dir.lock() {
            *d = (cfg.cache_dir.clone(), cfg.cache_max_bytes);
        }
    }

    /// `{records, bytes, dropped}` of the cache (healthz `meta.cache`).
    pub fn cache_stats(&self) -> SpoolStats {
        self.spool().as_ref().map(Spool::stats).unwrap_or_default()
    }

    /// Drops not yet reported in a record.
    pub fn dropped(&self) -> u64 {
        self.spool().as_ref().map_or(0, Spool::dropped)
    }

    /// Wakes the uploader now.
    pub fn trigger(&self) {
        if let Ok(mut g) = self.trigger.0.lock() {
            *g = true;
        }
        self.trigger.1.notify_all();
    }

    /// Waits up to `d` for a trigger; `false` when the agent is stopping.
    fn wait_trigger(&self, agent: &Agent, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let Ok(mut g) = self.trigger.0.lock() else {
            return !agent.wait_stop(d);
        };
        loop {
            if agent.stopping() {
                return false;
            }
            if *g {
                *g = false;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            let step = (deadline - now).min(Duration::from_millis(250));
            g = match self.trigger.1.wait_timeout(g, step) {
                Ok((g, _)) => g,
                Err(_) => return !agent.wait_stop(deadline - now),
            };
        }
    }

    fn unauthorized(&self) {
        let g = match self.on_unauthorized.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.as_ref() {
            Some(f) => f(),
            None => log::warn!("stats: re-provisioning is not available (no -b); records kept"),
        }
    }
}

/// The agent's stats handle, created on first use.
pub fn handle(agent: &Agent) -> Arc<Stats> {
    agent
        .stats
        .get_or_init(|| Stats::open(&agent.cfg()))
        .clone()
}

/// Sets what runs when the stats API answers 401 (SPEC §5, §7): the provisioning code
/// installs its re-provision trigger here. Called on the uploader thread (or the collector's
/// in `no-cache` mode) at most once per upload attempt; it should only signal, not block.
pub fn set_on_unauthorized(agent: &Agent, f: impl Fn() + Send + Sync + 'static) {
    let s = handle(agent);
    let mut g = match s.on_unauthorized.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    *g = Some(Box::new(f));
}

/// USR1 (SPEC §10): send the cached stats now.
pub fn upload_now(agent: &Agent) {
    log::info!("stats: upload requested");
    handle(agent).trigger();
}

/// `{records, bytes, dropped}` for healthz.
pub fn cache_stats(agent: &Agent) -> SpoolStats {
    handle(agent).cache_stats()
}

/// The HTTP timeout: 15 s (SPEC §5), or `SOCKETMAN_HTTP_TIMEOUT_MS` (tests only).
pub fn http_timeout() -> Duration {
    crate::collect::test_override_ms("SOCKETMAN_HTTP_TIMEOUT_MS")
        .unwrap_or(crate::http::API_TIMEOUT)
}

/// The upload period: `heartbeat` seconds, or `SOCKETMAN_TEST_HEARTBEAT_MS` (tests only).
pub fn heartbeat_period(cfg: &Config) -> Duration {
    crate::collect::test_override_ms("SOCKETMAN_TEST_HEARTBEAT_MS")
        .unwrap_or_else(|| Duration::from_secs(cfg.heartbeat.max(1)))
}

/// Why a POST did not deliver.
#[derive(Debug)]
pub enum PostError {
    /// The server answered 401.
    Unauthorized,
    /// Another non-2xx status.
    Status(u16),
    /// No answer: connection refused, DNS, TLS, timeout.
    Transport(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Unauthorized => write!(f, "HTTP 401"),
            PostError::Status(c) => write!(f, "HTTP {c}"),
            PostError::Transport(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 6 + 64),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// (content type, body) of a `multipart/form-data` request with one file field `data`
/// (`data.gz`, `application/gzip`). The boundary is random and checked against the content.
pub fn multipart(gz: &[u8]) -> (String, Vec<u8>) {
    let boundary = loop {
        let b = format!(
            "socketman-{:016x}{:016x}",
            crate::backoff::random_u64(),
            crate::backoff::random_u64()
        );
        if !contains(gz, b.as_bytes()) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(gz.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data.gz\"\r\n\
             Content-Type: application/gzip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(gz);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn stats_target(base: &str, cfg: &Config, mac: &str) -> String {
    crate::http::with_query(
        base,
        &[
            ("access_token", cfg.token.as_deref().unwrap_or("")),
            ("mac", mac),
        ],
    )
}

/// One POST; `Ok` on 2xx (a JSON body with `cmd` is logged and ignored).
pub fn post(
    http: &ureq::Agent,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(), PostError> {
    match http
        .post(url)
        .set("Content-Type", content_type)
        .send_bytes(body)
    {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.into_string().unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v.get("cmd").is_some() {
                    log::warn!(
                        "stats: {} answered with a `cmd`; ignored (no remote shell over HTTP)",
                        crate::http::redact(url)
                    );
                }
            }
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(PostError::Status(status))
            }
        }
        Err(ureq::Error::Status(401, _)) => Err(PostError::Unauthorized),
        Err(ureq::Error::Status(code, _)) => Err(PostError::Status(code)),
        Err(ureq::Error::Transport(t)) => Err(PostError::Transport(t.to_string())),
    }
}

/// The error text with every `access_token=` value masked (ureq's messages may hold the URL).
fn redact_err(e: &PostError) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("access_token=") {
        let start = i + "access_token=".len();
        out.push_str(&rest[..start]);
        out.push_str("***");
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c == '&' || c == '"' || c == ')' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Result of sending one body to `stats_url`, then `backup_stats_url`.
enum Sent {
    Ok,
    Unauthorized,
    Failed,
}

fn send_with_backup(cfg: &Config, mac: &str, content_type: &str, body: &[u8], what: &str) -> Sent {
    let Some(primary) = cfg.stats_url.as_deref().filter(|u| !u.is_empty()) else {
        return Sent::Failed;
    };
    let http = crate::http::agent(cfg, http_timeout());
    let url = stats_target(primary, cfg, mac);
    match post(&http, &url, content_type, body) {
        Ok(()) => return Sent::Ok,
        Err(PostError::Unauthorized) => {
            log::warn!(
                "stats: {} answered 401 to {what}; records kept",
                crate::http::redact(&url)
            );
            return Sent::Unauthorized;
        }
        Err(e) => log::warn!(
            "stats: {what} to {} failed: {}",
            crate::http::redact(&url),
            redact_err(&e)
        ),
    }
    let Some(backup) = cfg.backup_stats_url.as_deref().filter(|u| !u.is_empty()) else {
        return Sent::Failed;
    };
    let url = stats_target(backup, cfg, mac);
    match post(&http, &url, content_type, body) {
        Ok(()) => Sent::Ok,
        Err(e) => {
            log::warn!(
                "stats: {what} to backup {} failed too: {}; records stay cached",
                crate::http::redact(&url),
                redact_err(&e)
            );
            Sent::Failed
        }
    }
}

/// Stores a freshly collected record that carries `device.dropped = dropped`: appended to the
/// spool, or with `no-cache` POSTed as JSON at once (spooled when that fails).
pub fn store(agent: &Agent, stats: &Stats, cfg: &Config, record: Value, dropped: u64) {
    if cfg.no_cache && cfg.stats_url.is_some() {
        let body = record.to_string();
        match send_with_backup(
            cfg,
            &agent.mac,
            "application/json",
            body.as_bytes(),
            "record",
        ) {
            Sent::Ok => {
                if let Some(s) = stats.spool().as_mut() {
                    s.report_dropped(dropped);
                }
                return;
            }
            Sent::Unauthorized => stats.unauthorized(),
            Sent::Failed => {}
        }
    }
    let mut g = stats.spool();
    match g.as_mut() {
        Some(s) => match s.append(&record) {
            Ok(()) => s.report_dropped(dropped),
            Err(e) => {
                log::error!("stats: record not cached: {e}");
                s.count_dropped(1);
            }
        },
        None => log::error!("stats: record lost: the cache is not available"),
    }
}

/// Sends every cached batch, oldest first, until the cache is empty or a send fails.
/// Returns the number of records delivered.
pub fn upload_cycle(agent: &Agent, stats: &Stats, cfg: &Config) -> usize {
    if cfg.stats_url.as_deref().map_or(true, str::is_empty) {
        log::debug!("stats: no stats_url; records stay cached");
        return 0;
    }
    let mut delivered = 0;
    while !agent.stopping() {
        let batch = match stats.spool().as_mut().map(|s| s.next_batch(BATCH_MAX)) {
            Some(Ok(Some(b))) => b,
            Some(Ok(None)) | None => break,
            Some(Err(e)) => {
                log::error!("stats cache: {e}");
                break;
            }
        };
        if batch.records > 0 {
            let gz = gzip(&batch.body);
            let (ct, body) = multipart(&gz);
            let what = format!(
                "batch of {} records ({} bytes, gzip {})",
                batch.records,
                batch.body.len(),
                gz.len()
            );
            match send_with_backup(cfg, &agent.mac, &ct, &body, &what) {
                Sent::Ok => log::info!("stats: sent {what}"),
                Sent::Unauthorized => {
                    stats.unauthorized();
                    break;
                }
                Sent::Failed => break,
            }
        }
        delivered += batch.records;
        let mut g = stats.spool();
        if let Some(s) = g.as_mut() {
            if let Err(e) = s.ack(&batch) {
                log::error!("stats cache: delivered batch not deleted: {e}");
                break;
            }
        }
    }
    delivered
}

/// Starts the `stats-upload` thread.
pub fn spawn(agent: &Arc<Agent>) -> io::Result<()> {
    let a = agent.clone();
    let stats = handle(agent);
    std::thread::Builder::new()
        .name("stats-upload".into())
        .spawn(move || {
            log::info!("stats: uploader started");
            // A backlog from before the start goes out at once.
            let mut wait = !stats.spool().as_ref().is_some_and(|s| !s.is_empty());
            loop {
                let cfg = a.cfg();
                stats.apply_config(&cfg);
                if wait && !stats.wait_trigger(&a, heartbeat_period(&cfg)) {
                    break;
                }
                wait = true;
                upload_cycle(&a, &stats, &a.cfg());
            }
            log::info!("stats: uploader stopped");
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn gzip_round_trip_and_multipart_shape() {
        let data = b"{\"a\":1}\n{\"a\":2}\n".repeat(100);
        let gz = gzip(&data);
        assert!(gz.len() < data.len() / 5);
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let (ct, body) = multipart(&gz);
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"data.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
        );
        assert!(body.starts_with(head.as_bytes()));
        assert!(body.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));
        assert_eq!(&body[head.len()..head.len() + gz.len()], &gz[..]);
        let (ct2, _) = multipart(&gz);
        assert_ne!(ct, ct2, "boundaries are random");
    }

    #[test]
    fn target_url_and_redaction() {
        let cfg = Config {
            token: Some("s3cret".into()),
            ..Config::default()
        };
        let u = stats_target("http://api/v1/stats", &cfg, "AA-BB-CC-DD-EE-FF");
        assert_eq!(
            u,
            "http://api/v1/stats?access_token=s3cret&mac=AA-BB-CC-DD-EE-FF"
        );
        assert!(!crate::http::redact(&u).contains("s3cret"));
        let e = PostError::Transport(format!(
            "http://x/?access_token=s3cret: Connection refused ({u})"
        ));
        let r = redact_err(&e);
        assert!(!r.contains("s3cret"), "{r}");
        assert!(
            r.contains("Connection refused") && r.contains("mac=AA-BB-CC-DD-EE-FF"),
            "{r}"
        );
    }
}
