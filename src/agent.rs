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
use crate::events::Outbox;
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
    /// Stats spool and upload trigger (issue 3; `crate::upload::handle` creates it on first
    /// use): healthz reads the cache counters, USR1 calls `crate::upload::upload_now`.
    pub stats: OnceLock<Arc<crate::upload::Stats>>,
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
