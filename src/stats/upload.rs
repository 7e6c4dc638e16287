//! Stats upload (SPEC §5) and the shared stats handle [`Stats`] (spool + upload trigger),
//! created by the agent and given to the collector, the uploader, healthz and the USR1
//! handler.
//!
//! Thread `stats-upload` ([`uploader`]): every `heartbeat` seconds, and at once when
//! [`Stats::trigger`] is called (USR1, SPEC §10), it sends the spooled records oldest first in batches of ≤ 1 MiB before
//! compression: `POST <stats_url>?access_token=<token>&mac=<MAC>`, `multipart/form-data` with
//! one file field `data` (filename `archive.gz` as the C agent names it, `application/gzip`)
//! holding the gzip of the NDJSON lines.
//! - 2xx: the batch is deleted from the spool.
//! - 401: the batch is kept, the cycle stops, and the hook set with
//!   [`Stats::set_on_unauthorized`] is called; the agent installs re-provisioning there
//!   (SPEC §7, with `-b`).
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

use crate::config::Config;
use crate::runtime::{ConfigHandle, Shutdown, Timings};
use crate::stats::spool::{Spool, SpoolStats, BATCH_MAX};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;
use std::io::Write;
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
    shutdown: Shutdown,
}

/// What the collector and the uploader are given.
#[derive(Clone)]
pub struct StatsCtx {
    pub stats: Arc<Stats>,
    pub cfg: ConfigHandle,
    pub mac: String,
    pub shutdown: Shutdown,
    pub timings: Timings,
}

impl StatsCtx {
    /// The current config.
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.get()
    }
}

impl Stats {
    /// Opens the spool in `cfg.cache_dir`. If it cannot be opened now, that is logged and
    /// retried on every use. The stop token wakes the uploader's wait.
    pub fn open(cfg: &Config, shutdown: &Shutdown) -> Arc<Stats> {
        let s = Arc::new(Stats {
            spool: Mutex::new(None),
            cache_dir: Mutex::new((cfg.cache_dir.clone(), cfg.cache_max_bytes)),
            trigger: (Mutex::new(false), Condvar::new()),
            on_unauthorized: Mutex::new(None),
            shutdown: shutdown.clone(),
        });
        drop(s.spool());
        let weak = Arc::downgrade(&s);
        shutdown.on_trigger(move || {
            if let Some(s) = weak.upgrade() {
                let _g = crate::runtime::lock(&s.trigger.0);
                s.trigger.1.notify_all();
            }
        });
        s
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
    fn wait_trigger(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = crate::runtime::lock(&self.trigger.0);
        loop {
            if self.shutdown.is_set() {
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
            g = match self.trigger.1.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Sets what runs when the stats API answers 401 (SPEC §5, §7): the agent installs its
    /// re-provision trigger here. Called on the uploader thread (or the collector's in
    /// `no-cache` mode) at most once per upload attempt.
    pub fn set_on_unauthorized(&self, f: impl Fn() + Send + Sync + 'static) {
        *crate::runtime::lock(&self.on_unauthorized) = Some(Box::new(f));
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

/// Before a reboot or stop: waits for an append in progress, then syncs the cache files and
/// directory. Every record is already synced when appended; this only closes the window of
/// the record being written. When `cache_dir` is on tmpfs (`/tmp` on OpenWrt) the records are
/// also copied to `state_dir` ([`crate::stats::spool::rescue`]) and put back at the next start.
pub fn flush(s: &Stats, cfg: &Config) {
    let mut g = s.spool();
    match g.as_mut().map(|sp| sp.sync()) {
        Some(Ok(st)) => log::info!(
            "stats cache flushed: {} records ({} bytes) kept",
            st.records,
            st.bytes
        ),
        Some(Err(e)) => log::error!("stats cache flush: {e}"),
        None => {}
    }
    drop(g);
    match crate::stats::spool::rescue(&cfg.cache_dir, &cfg.state_dir) {
        Ok(0) => {}
        Ok(n) => log::info!(
            "stats cache is in RAM ({}): {n} files saved to {} for after a reboot",
            cfg.cache_dir.display(),
            cfg.state_dir
                .join(crate::stats::spool::RESCUE_DIR)
                .display()
        ),
        Err(e) => log::error!(
            "stats cache could not be saved to {}: {e}",
            cfg.state_dir.display()
        ),
    }
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
    /// A redirect that is not followed (the text says which and why).
    Redirect(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Unauthorized => write!(f, "HTTP 401"),
            PostError::Status(c) => write!(f, "HTTP {c}"),
            PostError::Transport(e) => write!(f, "no answer: {e}"),
            PostError::Redirect(e) => write!(f, "{e}"),
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
/// (filename `archive.gz`, the C agent's name, `application/gzip`). The boundary is random
/// and checked against the content.
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
            "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"archive.gz\"\r\n\
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
    http: &crate::http::Client,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(), PostError> {
    match http.send("POST", url, content_type, body) {
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
        Err(crate::http::HttpError::Status { code: 401, .. }) => Err(PostError::Unauthorized),
        Err(crate::http::HttpError::Status { code, .. }) => Err(PostError::Status(code)),
        // A redirect that is not followed (a 301/302/303 to a POST, another scheme, https to
        // http, too many) is a failure: the records stay and the backup URL is tried.
        Err(e @ crate::http::HttpError::Redirect { .. })
        | Err(e @ crate::http::HttpError::TooManyRedirects) => {
            Err(PostError::Redirect(e.to_string()))
        }
        Err(crate::http::HttpError::Transport(t)) => Err(PostError::Transport(t)),
    }
}

/// The error text with every `access_token=` value masked (ureq's messages may hold the URL).
fn redact_err(e: &PostError) -> String {
    crate::http::redact_text(&e.to_string())
}

/// Result of sending one body to `stats_url`, then `backup_stats_url`.
enum Sent {
    Ok,
    Unauthorized,
    Failed,
}

fn send_with_backup(
    http: &crate::http::Client,
    cfg: &Config,
    mac: &str,
    content_type: &str,
    body: &[u8],
    what: &str,
) -> Sent {
    let Some(primary) = cfg.stats_url.as_deref().filter(|u| !u.is_empty()) else {
        return Sent::Failed;
    };
    let url = stats_target(primary, cfg, mac);
    match post(http, &url, content_type, body) {
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
    match post(http, &url, content_type, body) {
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
pub fn store(ctx: &StatsCtx, cfg: &Config, record: Value, dropped: u64) {
    let stats = &ctx.stats;
    if cfg.no_cache && cfg.stats_url.is_some() {
        let body = record.to_string();
        let http = crate::http::Client::new(cfg, ctx.timings.http_timeout);
        match send_with_backup(
            &http,
            cfg,
            &ctx.mac,
            "application/json",
            body.as_bytes(),
            "record",
        ) {
            Sent::Ok => {
                log::debug!("stats: record sent (no-cache)");
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
            Ok(()) => {
                s.report_dropped(dropped);
                log::debug!("stats: record cached ({} waiting)", s.stats().records);
            }
            Err(e) => {
                log::error!("stats: record not cached: {e}");
                s.count_dropped(1);
            }
        },
        None => log::error!("stats: record lost: the cache is not available"),
    }
}

fn release(stats: &Stats) {
    if let Some(s) = stats.spool().as_mut() {
        s.release();
    }
}

/// Sends every cached batch, oldest first, until the cache is empty or a send fails.
/// Returns the number of records delivered.
pub fn upload_cycle(ctx: &StatsCtx, cfg: &Config) -> usize {
    let stats = &ctx.stats;
    if !matches!(cfg.stats_url.as_deref(), Some(u) if !u.is_empty()) {
        log::debug!("stats: no stats_url; records stay cached");
        return 0;
    }
    // One client per cycle: connections are reused between batches.
    let http = crate::http::Client::new(cfg, ctx.timings.http_timeout);
    let mut delivered = 0;
    while !ctx.shutdown.is_set() {
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
            match send_with_backup(&http, cfg, &ctx.mac, &ct, &body, &what) {
                Sent::Ok => log::info!("stats: sent {what}"),
                Sent::Unauthorized => {
                    release(stats);
                    stats.unauthorized();
                    break;
                }
                Sent::Failed => {
                    release(stats);
                    break;
                }
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

/// The body of the `stats-upload` thread; with `backlog` the first upload runs at once.
pub fn uploader(ctx: StatsCtx, backlog: bool) -> impl FnOnce() + Send + 'static {
    move || {
        log::info!("stats: uploader started");
        let mut wait = !backlog;
        loop {
            let cfg = ctx.cfg();
            ctx.stats.apply_config(&cfg);
            if wait && !ctx.stats.wait_trigger(ctx.timings.heartbeat_period(&cfg)) {
                break;
            }
            wait = true;
            upload_cycle(&ctx, &ctx.cfg());
        }
        log::info!("stats: uploader stopped");
    }
}

/// The integration tests' HTTP server and upload decoding, reused by the unit tests below.
#[cfg(test)]
#[path = "../../tests/it/http.rs"]
mod test_http;
#[cfg(test)]
#[path = "../../tests/it/stats_wire.rs"]
mod test_wire;

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    use super::test_http::{HttpServer, Request};
    use super::test_wire as wire;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn setup(urls: (&str, Option<&str>)) -> (tempfile::TempDir, StatsCtx, Arc<Stats>) {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            stats_url: Some(urls.0.to_string()),
            backup_stats_url: urls.1.map(str::to_string),
            token: Some("tok&en".into()),
            cache_dir: d.path().join("cache"),
            ..Config::default()
        };
        let shutdown = Shutdown::new();
        let stats = Stats::open(&cfg, &shutdown);
        let ctx = StatsCtx {
            stats: stats.clone(),
            cfg: ConfigHandle::new(cfg, d.path().join("c.json")),
            mac: "AA-BB-CC-00-11-22".into(),
            shutdown,
            timings: Timings::default(),
        };
        (d, ctx, stats)
    }

    fn add(agent: &StatsCtx, _stats: &Stats, from: u64, n: u64) {
        for i in from..from + n {
            let r = json!({"created_at": 1_700_000_000 + i, "seq": i, "device": {"pad": "y".repeat(1500)}});
            store(agent, &agent.cfg(), r, 0);
        }
    }

    fn recs(r: &Request) -> Vec<Value> {
        wire::records(r.header("content-type").unwrap_or(""), &r.body)
    }

    fn seqs(reqs: &[Request]) -> Vec<u64> {
        reqs.iter()
            .flat_map(recs)
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/dead")
    }

    #[test]
    fn batch_post_shape() {
        let srv = HttpServer::start(|_| Some((200, "{}".into())));
        let (_d, agent, stats) = setup((&srv.url("/v1/stats"), None));
        add(&agent, &stats, 0, 3);
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 3);
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!((r.method.as_str(), r.path()), ("POST", "/v1/stats"));
        assert_eq!(r.query()["access_token"], "tok&en");
        assert_eq!(r.query()["mac"], "AA-BB-CC-00-11-22");
        let ct = r.header("content-type").unwrap();
        assert!(ct.starts_with("multipart/form-data; boundary="));
        let parts = wire::multipart_parts(ct, &r.body);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name.as_deref(), Some("data"));
        assert_eq!(
            parts[0].filename.as_deref(),
            Some("archive.gz"),
            "the C agent's filename"
        );
        assert_eq!(parts[0].content_type.as_deref(), Some("application/gzip"));
        assert_eq!(seqs(&reqs), vec![0, 1, 2]);
        assert_eq!(stats.cache_stats().records, 0);
    }

    #[test]
    fn outage_then_recovery_exactly_once() {
        let srv = HttpServer::start(|_| Some((200, "{}".into())));
        srv.set_handler(|_| Some((500, "{}".into())));
        let dead = dead_url();
        let (_d, agent, stats) = setup((&srv.url("/s"), Some(&dead)));
        for cycle in 0..4 {
            add(&agent, &stats, cycle * 5, 5);
            assert_eq!(upload_cycle(&agent, &agent.cfg()), 0);
        }
        assert_eq!(stats.cache_stats().records, 20);
        srv.set_handler(|_| Some((200, "{\"cmd\":\"reboot\"}".into())));
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 20);
        let ok: Vec<_> = srv.requests().into_iter().skip(4).collect();
        assert_eq!(seqs(&ok), (0..20).collect::<Vec<_>>());
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 0, "nothing sent twice");
    }

    #[test]
    fn backup_takes_over_and_401_keeps() {
        let api = HttpServer::start(|_| Some((200, "{}".into())));
        let backup = HttpServer::start(|_| Some((200, "{}".into())));
        api.set_handler(|_| Some((503, "{}".into())));
        let (_d, agent, stats) = setup((&api.url("/s"), Some(&backup.url("/b"))));
        add(&agent, &stats, 0, 2);
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 2);
        assert_eq!(seqs(&backup.requests()), vec![0, 1]);
        assert_eq!(backup.requests()[0].query()["mac"], "AA-BB-CC-00-11-22");

        api.set_handler(|_| Some((401, "{}".into())));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        agent.stats.set_on_unauthorized(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        add(&agent, &stats, 2, 2);
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 0);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            backup.requests().len(),
            1,
            "401 is not a reason for the backup"
        );
        assert_eq!(stats.cache_stats().records, 2);
        api.set_handler(|_| Some((200, "{}".into())));
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 2);
    }

    #[test]
    fn redirects_never_lose_records_nor_crash() {
        // Whatever the "other" server gets, it answers 200: a redirected upload that reached
        // it as a GET without body would be counted as sent.
        let other = HttpServer::start(|_| Some((200, "{}".into())));
        let api = HttpServer::start(|_| Some((200, "{}".into())));
        let (_d, agent, stats) = setup((&api.url("/s"), None));
        add(&agent, &stats, 0, 2);
        for location in [
            other.url("/moved"),
            "file:///etc/shadow".to_string(),
            "gopher://127.0.0.1/x".to_string(),
            "http://".to_string(),
        ] {
            for code in [301, 302, 303] {
                let l = location.clone();
                api.set_handler(move |_| Some((code, l.clone())));
                assert_eq!(upload_cycle(&agent, &agent.cfg()), 0, "{code} {location}");
                assert_eq!(stats.cache_stats().records, 2, "{code} {location}");
            }
        }
        assert!(
            other.requests().is_empty(),
            "a POST is never turned into a GET"
        );
        // A redirect loop ends after 5 hops.
        let own = api.url("/s");
        api.set_handler(move |_| Some((307, own.clone())));
        let before = api.requests().len();
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 0);
        assert_eq!(
            api.requests().len() - before,
            6,
            "the request and 5 redirects"
        );
        assert_eq!(stats.cache_stats().records, 2);
        // 307/308 re-send the same POST: delivered once, to the new place.
        for code in [307, 308] {
            let l = other.url(&format!("/new{code}"));
            api.set_handler(move |_| Some((code, l.clone())));
            add(&agent, &stats, 10 + u64::from(code), 1);
            assert!(upload_cycle(&agent, &agent.cfg()) >= 1);
            let got = other.requests();
            let last = got.last().unwrap();
            assert_eq!(last.method, "POST");
            assert_eq!(last.path(), format!("/new{code}"));
            assert!(!recs(last).is_empty());
        }
        assert_eq!(stats.cache_stats().records, 0);
        assert_eq!(seqs(&other.requests()), vec![0, 1, 317, 318]);
    }

    #[test]
    fn refused_and_silent_servers_keep_records() {
        let silent = HttpServer::start(|_| Some((200, "{}".into())));
        silent.set_handler(|_| None);
        let dead = dead_url();
        let (_d, mut agent, stats) = setup((&dead, Some(&silent.url("/b"))));
        agent.timings.http_timeout = Duration::from_millis(1500);
        add(&agent, &stats, 0, 3);
        let t = Instant::now();
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 0);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(silent.requests().len(), 1);
        assert_eq!(stats.cache_stats().records, 3);
    }

    #[test]
    fn no_cache_posts_json_and_spools_failures() {
        let srv = HttpServer::start(|_| Some((200, "{}".into())));
        let (_d, agent, stats) = setup((&srv.url("/s"), None));
        let mut cfg = (*agent.cfg()).clone();
        cfg.no_cache = true;
        agent.cfg.set(cfg);
        store(&agent, &agent.cfg(), json!({"seq": 1}), 0);
        let r = &srv.requests()[0];
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.query()["access_token"], "tok&en");
        assert_eq!(recs(r)[0]["seq"], 1);
        assert_eq!(stats.cache_stats().records, 0);
        srv.set_handler(|_| Some((500, "{}".into())));
        store(&agent, &agent.cfg(), json!({"seq": 2}), 0);
        assert_eq!(
            stats.cache_stats().records,
            1,
            "failed record joins the cache"
        );
        srv.set_handler(|_| Some((200, "{}".into())));
        assert_eq!(upload_cycle(&agent, &agent.cfg()), 1);
        assert_eq!(seqs(&srv.requests()[2..]), vec![2]);
    }

    #[test]
    fn day_backlog_drains_in_1mib_batches() {
        let srv = HttpServer::start(|_| Some((200, "{}".into())));
        let (_d, agent, stats) = setup((&srv.url("/s"), None));
        {
            let mut g = stats.spool();
            let s = g.as_mut().unwrap();
            s.set_max_bytes(100_000_000);
            for i in 0..5760u64 {
                s.append(&json!({"created_at": i, "seq": i, "device": {"pad": "z".repeat(1500)}}))
                    .unwrap();
            }
        }
        let mut cfg = (*agent.cfg()).clone();
        cfg.cache_max_bytes = 100_000_000;
        stats.apply_config(&cfg);
        assert_eq!(upload_cycle(&agent, &cfg), 5760);
        let reqs = srv.requests();
        assert!(reqs.len() >= 8, "{}", reqs.len());
        for r in &reqs {
            let parts = wire::multipart_parts(r.header("content-type").unwrap(), &r.body);
            assert!(wire::gunzip(&parts[0].data).len() <= BATCH_MAX);
        }
        assert_eq!(seqs(&reqs), (0..5760).collect::<Vec<_>>());
    }

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
            "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"archive.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
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
