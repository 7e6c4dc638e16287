//! Start-up and provisioning (SPEC §7).
//!
//! [`provision`] is the `-b INIT_URL` flow, run by `agent::run` in the main thread before any
//! other thread exists: it asks the provisioning server for a config until it gets a valid
//! one, writes it atomically (mode 0600) to the `--config` path and returns it.
//! [`reprovision`] is the same request made once from the uploader thread when the stats API
//! answers 401; a valid answer is written and returned, and the caller hands it to the
//! agent's main loop, which applies it exactly like a HUP (one config-apply path: a new
//! `mqtt_host`, `topic` or `key` re-executes the agent). [`boot`] performs the `boot_url` GET
//! and runs `boot_cmd`, in the main thread, before the other threads start. Shares nothing
//! but the config file. The retry period comes from [`crate::runtime::Timings`].
#![forbid(unsafe_code)]

use crate::config::{self, Config};
use crate::runtime::Shutdown;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Retry period of SPEC §7 (jittered by up to a quarter more).
pub const RETRY: Duration = Duration::from_secs(15);

/// Why provisioning gave up.
#[derive(Debug)]
pub enum ProvisionError {
    /// A stop was requested (TERM/INT) before a valid config arrived.
    Stopped,
    /// A valid config arrived but could not be written to the `--config` path.
    Write { path: String, msg: String },
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionError::Stopped => write!(f, "provisioning: stopped before a config arrived"),
            ProvisionError::Write { path, msg } => {
                write!(f, "provisioning: cannot write config {path}: {msg}")
            }
        }
    }
}

impl std::error::Error for ProvisionError {}

/// `period` plus a random quarter of it at most, so a fleet does not retry in step.
fn jittered(period: Duration) -> Duration {
    period - period / 4 + crate::backoff::jitter(period / 2)
}

/// The provisioning request URL: `<init_url>?mac=..&machine=..&firmware=..`.
pub fn request_url(init_url: &str, mac: &str, machine: &str, firmware: &str) -> String {
    crate::http::with_query(
        init_url,
        &[("mac", mac), ("machine", machine), ("firmware", firmware)],
    )
}

/// Why one provisioning request gave no config (retried; the URL is shown with its token
/// masked).
#[derive(Debug)]
enum FetchError {
    /// The server answered an error status.
    Status { url: String, code: u16 },
    /// No answer: connection, DNS, TLS, timeout.
    Transport { url: String, msg: String },
    /// A success status other than 200/201.
    Unexpected { url: String, status: u16 },
    /// The body could not be read.
    Read { url: String, err: std::io::Error },
    /// The body is not a valid config.
    Invalid { url: String, msg: String },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Status { url, code } => write!(f, "{url}: HTTP {code}"),
            FetchError::Transport { url, msg } => write!(f, "{url}: {msg}"),
            FetchError::Unexpected { url, status } => {
                write!(f, "{url}: HTTP {status} (want 200 or 201)")
            }
            FetchError::Read { url, err } => write!(f, "{url}: reading the answer: {err}"),
            FetchError::Invalid { url, msg } => {
                write!(f, "{url}: the answer is not a valid config: {msg}")
            }
        }
    }
}

/// One provisioning request: the config and the body it was parsed from, or why not.
/// Nothing is written here.
fn fetch(
    http: &crate::http::Client,
    url: &str,
    config_path: &Path,
) -> Result<(Config, String), FetchError> {
    let shown = crate::http::redact(url);
    let resp = match http.get(url) {
        Ok(r) => r,
        Err(crate::http::HttpError::Status { code, .. }) => {
            return Err(FetchError::Status { url: shown, code })
        }
        Err(e) => {
            return Err(FetchError::Transport {
                url: shown,
                msg: e.to_string(),
            })
        }
    };
    let status = resp.status();
    if status != 200 && status != 201 {
        return Err(FetchError::Unexpected { url: shown, status });
    }
    let body = resp.into_string().map_err(|err| FetchError::Read {
        url: shown.clone(),
        err,
    })?;
    let file = config_path.display().to_string();
    let (cfg, notes) = config::parse(&body, &file).map_err(|e| FetchError::Invalid {
        url: shown.clone(),
        msg: e.to_string(),
    })?;
    for n in notes {
        log::warn!("provisioned config: {n}");
    }
    Ok((cfg, body))
}

/// Writes the provisioned body atomically with mode 0600.
fn save(config_path: &Path, body: &str) -> Result<(), ProvisionError> {
    crate::platform::fs::write_atomic(config_path, body.as_bytes()).map_err(|e| {
        ProvisionError::Write {
            path: config_path.display().to_string(),
            msg: e.to_string(),
        }
    })
}

/// Asks `init_url` for a config until a valid one arrives (SPEC §7.1); writes it to
/// `config_path` (atomically, 0600) and returns it. Anything else — a connection error,
/// another status, a body that is not a valid config (not saved) — is retried every 15 s
/// with jitter (`retry`: 15 s). The stop token ends the wait: `Err(Stopped)`.
pub fn provision(
    init_url: &str,
    config_path: &Path,
    (mac, machine, firmware): (&str, &str, &str),
    retry: Duration,
    stop: &Shutdown,
) -> Result<Config, ProvisionError> {
    provision_every(
        init_url,
        config_path,
        (mac, machine, firmware),
        retry.max(Duration::from_millis(10)),
        stop,
    )
}

/// [`provision`] with the retry period given.
fn provision_every(
    init_url: &str,
    config_path: &Path,
    (mac, machine, firmware): (&str, &str, &str),
    period: Duration,
    stop: &Shutdown,
) -> Result<Config, ProvisionError> {
    let http = crate::http::Client::new(&Config::default(), crate::http::API_TIMEOUT);
    let url = request_url(init_url, mac, machine, firmware);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        log::info!(
            "provisioning: asking {} for a config (attempt {attempt})",
            crate::http::redact(&url)
        );
        match fetch(&http, &url, config_path) {
            Ok((cfg, body)) => {
                save(config_path, &body)?;
                log::info!(
                    "provisioning: config written to {} (mode 0600)",
                    config_path.display()
                );
                return Ok(cfg);
            }
            Err(e) => {
                let wait = jittered(period);
                log::warn!(
                    "provisioning failed: {e}; retrying in {} ms",
                    wait.as_millis()
                );
                if stop.wait_timeout(wait) {
                    return Err(ProvisionError::Stopped);
                }
            }
        }
        if stop.is_set() {
            return Err(ProvisionError::Stopped);
        }
    }
}

/// Re-provisioning after a stats 401 when `-b` was given: one request; a valid config is
/// written to `config_path` and returned for the caller to apply (the agent's one
/// config-apply path). `None`: failed (logged); the caller tries again at its next 401.
pub fn reprovision(
    init_url: &str,
    config_path: &Path,
    mac: &str,
    current: &Config,
    http_timeout: Duration,
) -> Option<Config> {
    let root = Path::new("/");
    let url = request_url(
        init_url,
        mac,
        &crate::platform::identity::machine_type(root),
        &crate::platform::identity::firmware(root),
    );
    let http = crate::http::Client::new(current, http_timeout);
    match fetch(&http, &url, config_path) {
        Ok((cfg, body)) => {
            if let Err(e) = save(config_path, &body) {
                log::error!("re-provisioning: {e}");
                return None;
            }
            log::info!(
                "re-provisioning: new config written to {}",
                config_path.display()
            );
            Some(cfg)
        }
        Err(e) => {
            log::warn!("re-provisioning failed: {e}");
            None
        }
    }
}

/// Start-up steps 2 and 3 of SPEC §7: `boot_url` GET (result logged, failures ignored) and
/// `boot_cmd` with the job timeout. Runs before the other threads start.
pub fn boot(cfg: &Config, mac: &str) {
    if let Some(boot_url) = cfg.boot_url.as_deref().filter(|u| !u.is_empty()) {
        let url = crate::http::with_query(
            boot_url,
            &[
                ("access_token", cfg.token.as_deref().unwrap_or("")),
                ("mac", mac),
            ],
        );
        let shown = crate::http::redact(&url);
        let http = crate::http::Client::new(cfg, crate::http::API_TIMEOUT);
        match http.get(&url) {
            Ok(r) => log::info!("boot_url {shown}: HTTP {}", r.status()),
            Err(e) => log::warn!("boot_url {shown}: {e} (ignored)"),
        }
    }
    if let Some(cmd) = cfg.boot_cmd.as_deref().filter(|c| !c.trim().is_empty()) {
        log::info!("running boot_cmd");
        let (ok, detail) = crate::platform::shell::run_summary(
            cmd,
            Duration::from_secs(cfg.job_timeout),
            cfg.job_output_max,
        );
        if ok {
            log::info!("boot_cmd finished: {detail}");
        } else {
            log::warn!("boot_cmd failed: {detail}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    /// A tiny HTTP/1.1 server answering the scripted (status, body) in order, then the last
    /// one forever; records the request lines.
    fn serve(answers: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/init", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen2.lock().unwrap().push(line.trim().to_string());
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (code, body) = &answers[i.min(answers.len() - 1)];
                i += 1;
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = r.read(&mut [0u8; 1]);
            }
        });
        (url, seen)
    }

    const MS20: Duration = Duration::from_millis(20);
    const VALID: &str = r#"{"topic":"t","key":"k","mqtt_host":"127.0.0.1","monitor":20}"#;

    #[test]
    fn retries_until_a_valid_config_then_saves_it_0600() {
        let (url, seen) = serve(vec![
            (503, "busy".into()),
            (200, "{not json".into()),
            (200, r#"{"topic":"t"}"#.into()),
            (404, VALID.into()),
            (201, VALID.into()),
        ]);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("etc/config.json");
        let cfg = provision_every(
            &url,
            &path,
            ("AA-BB-CC-DD-EE-FF", "Pi 4 B/x", "23.05"),
            MS20,
            &Shutdown::new(),
        )
        .unwrap();
        assert_eq!(cfg.topic, "t");
        assert_eq!(cfg.monitor, 20);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), VALID);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(
            seen[0],
            "GET /init?mac=AA-BB-CC-DD-EE-FF&machine=Pi%204%20B%2Fx&firmware=23.05 HTTP/1.1"
        );
    }

    #[test]
    fn invalid_bodies_are_never_saved_and_stop_ends_the_wait() {
        let (url, seen) = serve(vec![(200, r#"{"topic":"t","key":"k"}"#.into())]);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("config.json");
        std::fs::write(&path, "old invalid").unwrap();
        let stop = Shutdown::new();
        let (s2, seen2) = (stop.clone(), seen.clone());
        let watcher = std::thread::spawn(move || {
            while seen2.lock().unwrap().len() < 3 {
                std::thread::sleep(Duration::from_millis(5));
            }
            s2.trigger();
        });
        let r = provision_every(&url, &path, ("m", "x", "y"), MS20, &stop);
        watcher.join().unwrap();
        assert!(matches!(r, Err(ProvisionError::Stopped)), "{r:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old invalid");
    }

    #[test]
    fn connection_refused_is_retried() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = tempfile::tempdir().unwrap();
        let stop = Shutdown::new();
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            s2.trigger();
        });
        let r = provision_every(
            &format!("http://127.0.0.1:{port}/"),
            &d.path().join("c.json"),
            ("m", "x", "y"),
            MS20,
            &stop,
        );
        t.join().unwrap();
        assert!(matches!(r, Err(ProvisionError::Stopped)));
        assert!(!d.path().join("c.json").exists());
    }

    #[test]
    fn reprovision_writes_and_applies_the_new_config() {
        let new = r#"{"topic":"t2","key":"k2","mqtt_host":"127.0.0.1","monitor":30}"#;
        let (url, seen) = serve(vec![(401, "no".into()), (200, new.into())]);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("config.json");
        std::fs::write(&path, VALID).unwrap();
        let (cfg, _) = config::parse(VALID, "x").unwrap();
        let again = || reprovision(&url, &path, "AA-BB-CC-DD-EE-FF", &cfg, MS20 * 50);
        assert!(
            again().is_none(),
            "a 401 from the init server changes nothing"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), VALID);
        let got = again().expect("the new config");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
        assert_eq!(got.topic, "t2");
        assert_eq!(got.monitor, 30);
        assert!(seen.lock().unwrap()[1].contains("mac=AA-BB-CC-DD-EE-FF&machine="));
    }

    #[test]
    fn jitter_bounds() {
        for _ in 0..100 {
            let j = jittered(RETRY);
            assert!(j >= RETRY && j <= RETRY + RETRY / 4, "{j:?}");
        }
    }
}
