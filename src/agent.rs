//! The running agent: one [`Agent`] shared (behind `Arc`) by every thread, and [`run`], which
//! loads the config, starts the threads, waits for signals in the main thread and performs
//! the clean stop of SPEC §10.
//!
//! Threads: `mqtt-link` (connect, inbound jobs), `mqtt-out` (publishes the outbox),
//! `job-worker-N`, `pinger`, `rest-notify` (when `rest`), plus those of the collector,
//! uploader, monitor, supervisor and watchdog. Each waits with a timeout on the shutdown
//! signal, so the stop is bounded.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::link::outbox::Outbox;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// What the monitor last found (SPEC §6); `None` fields are not known yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetStatus {
    pub code: Option<u8>,
    pub wan_name: Option<String>,
    pub wan_ip: Option<String>,
    pub wan_gateway: Option<String>,
}

/// State shared by all threads.
pub struct Agent {
    config: RwLock<Arc<Config>>,
    /// `--config` path (re-read on HUP, written by provisioning).
    pub config_path: PathBuf,
    /// `-b` provisioning URL.
    pub init_url: Option<String>,
    /// The device MAC as used in topics.
    pub mac: String,
    /// When this process started (monotonic).
    pub started: Instant,
    shutdown: (Mutex<bool>, Condvar),
    /// Messages to the broker.
    pub outbox: Outbox,
    /// True while the MQTT link is up.
    pub mqtt_connected: AtomicBool,
    /// Last connectivity check.
    pub net: Mutex<NetStatus>,
    /// Stats spool and upload trigger (issue 3; `crate::stats::upload::handle` creates it on first
    /// use): healthz reads the cache counters, USR1 calls `crate::stats::upload::upload_now`.
    pub stats: OnceLock<Arc<crate::stats::upload::Stats>>,
    /// Process control (issue 5): processes started by jobs, supervised services, heartbeats.
    pub control: crate::services::procs::Control,
    /// Monitor/recovery state shared with the `network` job (src/monitor.rs).
    pub monitor: crate::net::monitor::Shared,
}

impl Agent {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        init_url: Option<String>,
        mac: String,
    ) -> Arc<Agent> {
        let outbox = Outbox::new(config.qos);
        Arc::new(Agent {
            config: RwLock::new(Arc::new(config)),
            config_path,
            init_url,
            mac,
            started: Instant::now(),
            shutdown: (Mutex::new(false), Condvar::new()),
            outbox,
            mqtt_connected: AtomicBool::new(false),
            net: Mutex::new(NetStatus::default()),
            stats: OnceLock::new(),
            control: crate::services::procs::Control::default(),
            monitor: crate::net::monitor::Shared::default(),
        })
    }

    /// The current config (cheap: an `Arc` clone).
    pub fn cfg(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swaps in a new config (HUP).
    pub fn set_config(&self, c: Config) {
        self.outbox.set_status_qos(c.qos);
        match self.config.write() {
            Ok(mut g) => *g = Arc::new(c),
            Err(p) => *p.into_inner() = Arc::new(c),
        }
    }

    /// True once a stop was requested.
    pub fn stopping(&self) -> bool {
        self.shutdown.0.lock().map(|g| *g).unwrap_or(true)
    }

    /// Asks every thread to stop.
    pub fn request_stop(&self) {
        if let Ok(mut g) = self.shutdown.0.lock() {
            *g = true;
        }
        self.shutdown.1.notify_all();
    }

    /// Sleeps up to `d`; returns early with `true` when a stop is requested.
    pub fn wait_stop(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let (lock, cv) = &self.shutdown;
        let mut g = match lock.lock() {
            Ok(g) => g,
            Err(_) => return true,
        };
        while !*g {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return true,
            };
        }
        true
    }

    /// Seconds since this process started.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Last connectivity CODE, when known.
    pub fn net_code(&self) -> Option<u8> {
        self.net.lock().ok().and_then(|n| n.code)
    }

    /// True while the MQTT link is up.
    pub fn is_connected(&self) -> bool {
        self.mqtt_connected.load(Ordering::Relaxed)
    }
}

/// Called by the MQTT link after every successful connect (and subscribe).
pub fn on_connected(agent: &Arc<Agent>) {
    let _ = agent;
}

/// Loads the config for start-up: the file, or provisioning with `-b` (SPEC §7.1).
/// `Ok(None)` when a stop was requested while provisioning.
fn initial_config(
    path: &std::path::Path,
    init_url: Option<&str>,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Config>, Fatal> {
    match crate::config::load(path) {
        Ok((cfg, notes)) => {
            crate::logging::set_level(cfg.debug);
            for n in notes {
                log::warn!("{n}");
            }
            Ok(Some(cfg))
        }
        Err(e) => match init_url {
            None => Err(Fatal::Config(format!(
                "{e} (and no -b INIT_URL was given to fetch one)"
            ))),
            Some(url) => {
                log::warn!("{e}; provisioning from -b");
                let root = std::path::Path::new("/");
                let d = Config::default();
                let mac = crate::platform::identity::discover_mac(None, &d.mac_file, root)
                    .unwrap_or_else(|| "unknown".into());
                let machine = crate::platform::identity::machine_type(root);
                let firmware = crate::platform::identity::firmware(root);
                match crate::provision::provision(url, path, &mac, &machine, &firmware, stop) {
                    Ok(cfg) => {
                        crate::logging::set_level(cfg.debug);
                        Ok(Some(cfg))
                    }
                    Err(crate::provision::ProvisionError::Stopped) => Ok(None),
                    Err(e) => Err(Fatal::Other(e.to_string())),
                }
            }
        },
    }
}

/// Points OpenSSL at the system CA bundle when `SSL_CERT_FILE` is not set: a vendored
/// OpenSSL's compiled-in path does not exist on the device. Must run before any thread starts.
fn setup_ca_bundle() {
    if std::env::var_os("SSL_CERT_FILE").is_some() {
        return;
    }
    match crate::link::system_ca_bundle() {
        Some(b) => {
            log::info!("TLS trust store: {b}");
            std::env::set_var("SSL_CERT_FILE", &b);
        }
        None => log::warn!(
            "no system CA bundle found ({}); TLS needs cacrt",
            crate::link::CA_BUNDLES.join(", ")
        ),
    }
}

/// Re-reads the config on HUP, keeping the old one when the new one is invalid. Returns true
/// when the new config changes what only a fresh start can apply (the MQTT connection,
/// `job_workers`, `state_dir`, `cache_dir`, `watchdog_port`): the caller then stops cleanly
/// and re-executes itself with the same arguments.
pub fn reload(agent: &Arc<Agent>) -> bool {
    match crate::config::load(&agent.config_path) {
        Ok((new, notes)) => {
            for n in notes {
                log::warn!("{n}");
            }
            let old = agent.cfg();
            let mqtt_changed = old.mqtt_host != new.mqtt_host
                || old.port != new.port
                || old.tls != new.tls
                || old.cacrt != new.cacrt
                || old.username != new.username
                || old.password != new.password
                || old.topic != new.topic
                || old.key != new.key
                || old.mac != new.mac;
            let restart = mqtt_changed
                || old.job_workers != new.job_workers
                || old.state_dir != new.state_dir
                || old.cache_dir != new.cache_dir
                || old.watchdog_port != new.watchdog_port;
            crate::logging::set_level(new.debug);
            agent.set_config(new);
            if restart {
                log::warn!(
                    "HUP: config {} changes the MQTT connection, job_workers, state_dir, cache_dir or watchdog_port; restarting in place to apply it",
                    agent.config_path.display()
                );
            } else {
                log::info!("HUP: config {} reloaded", agent.config_path.display());
            }
            restart
        }
        Err(e) => {
            log::error!("HUP: {e}; keeping the running config");
            false
        }
    }
}

/// Replaces this process with a fresh start of the same binary and arguments (after a clean
/// stop). Returns only on failure.
fn restart_in_place() -> Fatal {
    use std::os::unix::process::CommandExt;
    crate::platform::sys::cloexec_from_3();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Fatal::Other(format!("cannot restart: path of the running binary: {e}")),
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(&exe);
    if let Some(a0) = args.next() {
        cmd.arg0(a0);
    }
    log::info!("restarting {}", exe.display());
    let err = cmd.args(args).exec();
    Fatal::Other(format!("cannot restart {}: {err}", exe.display()))
}

use crate::cli::Fatal;

/// Runs the agent until TERM/INT (SPEC §7 start-up, §10 signals).
pub fn run(config_path: PathBuf, init_url: Option<String>) -> Result<(), Fatal> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    // Signals first, so that a TERM during start-up is not lost.
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| Fatal::Other(format!("cannot install signal handlers: {e}")))?;
    let signals = std::cell::RefCell::new(signals);
    let stop_asked = || {
        signals
            .borrow_mut()
            .pending()
            .any(|s| s == SIGTERM || s == SIGINT)
    };
    let Some(cfg) = initial_config(&config_path, init_url.as_deref(), &stop_asked)? else {
        log::info!("stopped while provisioning");
        return Ok(());
    };
    let mut signals = signals.into_inner();
    if cfg.insecure {
        log::warn!("insecure is on: HTTPS certificates are not verified");
    }
    for d in [&cfg.state_dir, &cfg.cache_dir] {
        crate::platform::fs::ensure_dir(d)
            .map_err(|e| Fatal::Other(format!("cannot create {}: {e}", d.display())))?;
    }
    let mac = crate::platform::identity::discover_mac(
        cfg.mac.as_deref(),
        &cfg.mac_file,
        std::path::Path::new("/"),
    )
    .ok_or_else(|| {
        Fatal::Config(format!(
            "config {}: no \"mac\" set, none in {}, and no default-route interface to take it from",
            config_path.display(),
            cfg.mac_file
        ))
    })?;
    setup_ca_bundle();
    log::info!(
        "{} starting as {} (config {})",
        crate::version_line(),
        Config::client_id(&mac),
        config_path.display()
    );
    let link = crate::link::Link::new(&cfg, &mac).map_err(Fatal::Other)?;
    let agent = Agent::new(cfg, config_path, init_url, mac);
    crate::provision::boot(&agent);

    let jobs = crate::jobs::Jobs::start(&agent)
        .map_err(|e| Fatal::Other(format!("cannot start job workers: {e}")))?;
    // A pending self-update's job is answered by selfupdate::on_start, not as interrupted.
    let pending_update = crate::services::selfupdate::pending_job_id(&agent.cfg().state_dir);
    jobs.answer_unfinished(&agent, pending_update.as_deref());
    let (link_thread, out_thread) = link
        .spawn(&agent, jobs.clone())
        .map_err(|e| Fatal::Other(format!("cannot start the MQTT link: {e}")))?;

    // --- subsystems ---
    if let Err(e) = crate::stats::collect::spawn(&agent) {
        log::error!("stats: cannot start the collector/uploader threads: {e}");
    }
    crate::services::supervisor::spawn(&agent);
    crate::services::watchdog::spawn(&agent);
    crate::net::monitor::spawn(&agent)
        .map_err(|e| Fatal::Other(format!("cannot start the monitor thread: {e}")))?;
    crate::services::selfupdate::on_start(&agent, &jobs);

    let mut why = "signal";
    let mut restart = false;
    for sig in signals.forever() {
        match sig {
            SIGTERM => {
                why = "TERM";
                break;
            }
            SIGINT => {
                why = "INT";
                break;
            }
            // HUP reloads; a change only a fresh start can apply ends the loop.
            SIGHUP if reload(&agent) => {
                why = "HUP";
                restart = true;
                break;
            }
            SIGUSR1 => crate::stats::upload::upload_now(&agent),
            _ => {}
        }
    }

    // Clean stop (SPEC §10), within 15 s.
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(14);
    log::info!(
        "{why}: stopping (jobs get {} s)",
        crate::jobs::STOP_GRACE.as_secs()
    );
    let phase = |what: &str| log::debug!("stop: {what} after {} ms", begin.elapsed().as_millis());
    jobs.stop(deadline - Duration::from_secs(3));
    phase("jobs stopped");
    // --- subsystems stop ---
    crate::services::supervisor::stop_all_by(&agent, deadline - Duration::from_secs(2));
    while !agent.outbox.is_empty()
        && agent.is_connected()
        && Instant::now() < deadline - Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    agent.request_stop();
    agent.outbox.close();
    for h in [link_thread, out_thread] {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    crate::stats::collect::wait_stopped(&agent, deadline); // stats: finish the record being written
    phase("threads joined");
    log::info!("stopped in {:.1} s", begin.elapsed().as_secs_f32());
    if restart {
        return Err(restart_in_place());
    }
    Ok(())
}
