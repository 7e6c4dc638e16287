//! The small handles every thread is given instead of one shared agent:
//! - [`Shutdown`]: the stop token. Clone it freely; [`Shutdown::wait_timeout`] sleeps until
//!   a deadline or the stop, and every waiter (also those waiting on a [`Watch`] or on
//!   another condvar registered with [`Shutdown::on_trigger`]) wakes at once when it fires.
//! - [`ConfigHandle`]: the current config, read by everyone, swapped only by the agent's main
//!   loop (the one config-apply path).
//! - [`Watch`]: a value one thread publishes and others read or wait on (link state,
//!   connectivity status).
//! - [`Timings`]: the durations tests shorten. The overrides are read from `SOCKETMAN_TEST_*`
//!   environment variables only in builds with the `test-hooks` feature (or unit tests); a
//!   release build has none of them, so nothing inherited on a device can change a timer or
//!   disable the last-resort reboot.
#![forbid(unsafe_code)]

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// Locks a mutex, taking the data of a poisoned one (a panic aborts the process anyway).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

type Waker = Box<dyn Fn() + Send + Sync>;

struct ShutdownInner {
    set: Mutex<bool>,
    cv: Condvar,
    wakers: Mutex<Vec<Waker>>,
}

/// The stop token (SPEC §10): set once, wakes every waiter.
#[derive(Clone)]
pub struct Shutdown(Arc<ShutdownInner>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown(Arc::new(ShutdownInner {
            set: Mutex::new(false),
            cv: Condvar::new(),
            wakers: Mutex::new(Vec::new()),
        }))
    }

    /// Asks every thread to stop and wakes all waiters.
    pub fn trigger(&self) {
        *lock(&self.0.set) = true;
        self.0.cv.notify_all();
        for w in lock(&self.0.wakers).iter() {
            w();
        }
    }

    /// True once a stop was requested.
    pub fn is_set(&self) -> bool {
        *lock(&self.0.set)
    }

    /// Sleeps up to `d`; returns `true` at once when (or as soon as) a stop is requested.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.0.set);
        while !*g {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.0.cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Runs `f` when the stop is requested (at once when it already was): used by handles
    /// that wait on a condvar of their own, so that the stop wakes them too. `f` must only
    /// notify, never block.
    pub fn on_trigger(&self, f: impl Fn() + Send + Sync + 'static) {
        {
            let mut w = lock(&self.0.wakers);
            if !*lock(&self.0.set) {
                w.push(Box::new(f));
                return;
            }
        }
        f();
    }
}

/// What the agent's main loop acts on: the one place where a config is applied and where
/// the process re-executes itself.
pub enum Control {
    /// A signal caught by the signal thread (TERM, INT, HUP, USR1).
    Signal(i32),
    /// A new config (re-provisioning after a 401 wrote it to the config file already).
    NewConfig {
        cfg: Box<Config>,
        from: &'static str,
    },
    /// Stop cleanly, then replace this process with `exe` (same arguments, same pid).
    /// `on_fail` runs when the exec fails; the process then exits 1.
    Reexec {
        exe: PathBuf,
        why: String,
        on_fail: Box<dyn FnOnce(&std::io::Error) + Send>,
    },
}

/// Where subsystems send [`Control`] requests.
pub type ControlSender = std::sync::mpsc::Sender<Control>;

/// Threads of one subsystem, joined at stop with a deadline: each thread reports its end on
/// a channel, so [`Threads::join_all`] blocks on that channel instead of polling.
pub struct Threads {
    handles: Vec<std::thread::JoinHandle<()>>,
    done_tx: std::sync::mpsc::Sender<()>,
    done_rx: std::sync::mpsc::Receiver<()>,
}

impl Default for Threads {
    fn default() -> Self {
        Threads::new()
    }
}

/// Sends on the channel when dropped: at the end of the thread's closure, also on unwind.
struct DoneGuard(std::sync::mpsc::Sender<()>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Threads {
    pub fn new() -> Self {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        Threads {
            handles: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    /// Starts a named thread running `f`.
    pub fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let guard = DoneGuard(self.done_tx.clone());
        let h = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _guard = guard;
                f()
            })?;
        self.handles.push(h);
        Ok(())
    }

    /// Waits until every thread ended or `deadline` passed, and joins those that ended.
    /// Returns the names of threads still running at the deadline (logged by the caller).
    pub fn join_all(self, deadline: Instant) -> Vec<String> {
        let mut ended = 0;
        let reporting = self.handles.len();
        while ended < reporting {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(()) => ended += 1,
                Err(_) => break,
            }
        }
        let mut late = Vec::new();
        for h in self.handles {
            if ended >= reporting || h.is_finished() {
                let _ = h.join();
            } else {
                late.push(h.thread().name().unwrap_or("?").to_string());
            }
        }
        for n in &late {
            log::warn!("stop: thread {n} still busy at the stop deadline");
        }
        late
    }
}

/// A value published by one thread, read and waited on by others. Every waiter also wakes
/// on the [`Shutdown`] it was created with.
pub struct Watch<T> {
    inner: Arc<(Mutex<T>, Condvar)>,
    shutdown: Shutdown,
}

impl<T> Clone for Watch<T> {
    fn clone(&self) -> Self {
        Watch {
            inner: self.inner.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<T: Clone + PartialEq + Send + 'static> Watch<T> {
    pub fn new(v: T, shutdown: &Shutdown) -> Self {
        let inner = Arc::new((Mutex::new(v), Condvar::new()));
        let weak = Arc::downgrade(&inner);
        shutdown.on_trigger(move || {
            if let Some(i) = weak.upgrade() {
                let _g = lock(&i.0);
                i.1.notify_all();
            }
        });
        Watch {
            inner,
            shutdown: shutdown.clone(),
        }
    }

    /// The current value.
    pub fn get(&self) -> T {
        lock(&self.inner.0).clone()
    }

    /// Publishes `v` and wakes the waiters when it changed.
    pub fn set(&self, v: T) {
        let mut g = lock(&self.inner.0);
        if *g != v {
            *g = v;
            self.inner.1.notify_all();
        }
    }

    /// Waits until `pred` holds (returns `true`), `deadline` passes or a stop is requested
    /// (returns `false`). `None`: no deadline.
    pub fn wait_until(&self, deadline: Option<Instant>, pred: impl Fn(&T) -> bool) -> bool {
        let mut g = lock(&self.inner.0);
        loop {
            if pred(&g) {
                return true;
            }
            if self.shutdown.is_set() {
                return false;
            }
            g = match deadline {
                None => match self.inner.1.wait(g) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                },
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    match self.inner.1.wait_timeout(g, d - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    }
                }
            };
        }
    }
}

/// The current config and the file it came from. Readers get an `Arc` snapshot; only the
/// agent's main loop calls [`ConfigHandle::set`].
#[derive(Clone)]
pub struct ConfigHandle {
    current: Arc<RwLock<Arc<Config>>>,
    path: Arc<PathBuf>,
}

impl ConfigHandle {
    pub fn new(cfg: Config, path: PathBuf) -> Self {
        ConfigHandle {
            current: Arc::new(RwLock::new(Arc::new(cfg))),
            path: Arc::new(path),
        }
    }

    /// The current config (cheap: an `Arc` clone).
    pub fn get(&self) -> Arc<Config> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The `--config` path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Swaps in a new config (the agent's apply path only).
    pub fn set(&self, c: Config) {
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(c),
            Err(p) => *p.into_inner() = Arc::new(c),
        }
    }
}

/// The durations integration tests shorten. [`Timings::default`] is what a device runs
/// with; `from_env` exists only in `test-hooks` builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Stats collection and connectivity check period instead of `monitor` seconds.
    pub monitor: Option<Duration>,
    /// Stats upload period instead of `heartbeat` seconds.
    pub heartbeat: Option<Duration>,
    /// HTTP timeout of the stats, API and provisioning clients (SPEC §5: 15 s).
    pub http_timeout: Duration,
    /// One unit of the supervisor's restart back-off (1 s).
    pub backoff_unit: Duration,
    /// The self-update connect deadline (SPEC §9: 120 s).
    pub update_deadline: Duration,
    /// The `network` job's re-check window (SPEC §4.4: 60 s).
    pub network_recheck: Duration,
    /// Provisioning retry period (SPEC §7: 15 s).
    pub provision_retry: Duration,
    /// Whether the forced `reboot(2)` follows a `reboot_cmd` that did not reboot.
    pub force_reboot: bool,
    /// Test builds: abort right after an answer owed across a restart (`firmware.upgrade`,
    /// `agent.configure`) was acknowledged and before its marker is removed, to check that
    /// the next start does not answer again. Always false on a device.
    pub crash_after_answer: bool,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            monitor: None,
            heartbeat: None,
            http_timeout: crate::http::API_TIMEOUT,
            backoff_unit: Duration::from_secs(1),
            update_deadline: Duration::from_secs(120),
            network_recheck: Duration::from_secs(60),
            provision_retry: Duration::from_secs(15),
            force_reboot: true,
            crash_after_answer: false,
        }
    }
}

impl Timings {
    /// The stats collection / connectivity check period for `cfg`.
    pub fn monitor_period(&self, cfg: &Config) -> Duration {
        self.monitor
            .unwrap_or_else(|| Duration::from_secs(cfg.monitor.max(1)))
    }

    /// The stats upload period for `cfg`.
    pub fn heartbeat_period(&self, cfg: &Config) -> Duration {
        self.heartbeat
            .unwrap_or_else(|| Duration::from_secs(cfg.heartbeat.max(1)))
    }

    /// What this process runs with: the defaults, with `SOCKETMAN_TEST_*` overrides in
    /// `test-hooks` builds.
    pub fn current() -> Timings {
        #[cfg(any(test, feature = "test-hooks"))]
        {
            Timings::from_env(|k| std::env::var(k).ok())
        }
        #[cfg(not(any(test, feature = "test-hooks")))]
        {
            Timings::default()
        }
    }

    /// The overrides, read through `var` (milliseconds, > 0; anything else is ignored).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Timings {
        let ms = |k: &str| {
            var(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
        };
        let d = Timings::default();
        Timings {
            monitor: ms("SOCKETMAN_TEST_MONITOR_MS"),
            heartbeat: ms("SOCKETMAN_TEST_HEARTBEAT_MS"),
            http_timeout: ms("SOCKETMAN_TEST_HTTP_TIMEOUT_MS").unwrap_or(d.http_timeout),
            backoff_unit: ms("SOCKETMAN_TEST_BACKOFF_UNIT_MS").unwrap_or(d.backoff_unit),
            update_deadline: ms("SOCKETMAN_TEST_UPDATE_DEADLINE_MS").unwrap_or(d.update_deadline),
            network_recheck: ms("SOCKETMAN_TEST_NETWORK_RECHECK_MS").unwrap_or(d.network_recheck),
            provision_retry: ms("SOCKETMAN_TEST_PROVISION_RETRY_MS").unwrap_or(d.provision_retry),
            force_reboot: var("SOCKETMAN_TEST_NO_FORCE_REBOOT").is_none(),
            crash_after_answer: var("SOCKETMAN_TEST_CRASH_AFTER_ANSWER").is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_wakes_waiters_at_once() {
        let s = Shutdown::new();
        assert!(!s.wait_timeout(Duration::from_millis(5)));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait_timeout(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(
            t.join().unwrap(),
            "the waiter saw the stop, not its timeout"
        );
        assert!(s.is_set());
        assert!(s.wait_timeout(Duration::from_secs(60)));
    }

    #[test]
    fn watch_waits_for_value_and_for_stop() {
        let s = Shutdown::new();
        let w = Watch::new(false, &s);
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.wait_until(None, |v| *v));
        std::thread::sleep(Duration::from_millis(20));
        w.set(true);
        assert!(t.join().unwrap());
        assert!(!w.wait_until(Some(Instant::now() + Duration::from_millis(5)), |v| !*v));
        let w3 = w.clone();
        let t = std::thread::spawn(move || w3.wait_until(None, |v| !*v));
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(!t.join().unwrap(), "the stop ends a wait without deadline");
    }

    #[test]
    fn on_trigger_after_the_stop_runs_at_once() {
        let s = Shutdown::new();
        s.trigger();
        let hit = Arc::new(Mutex::new(false));
        let h = hit.clone();
        s.on_trigger(move || *lock(&h) = true);
        assert!(*lock(&hit));
    }

    #[test]
    fn timings_overrides() {
        let t = Timings::from_env(|k| match k {
            "SOCKETMAN_TEST_MONITOR_MS" => Some("250".into()),
            "SOCKETMAN_TEST_HTTP_TIMEOUT_MS" => Some("0".into()),
            "SOCKETMAN_TEST_BACKOFF_UNIT_MS" => Some("x".into()),
            "SOCKETMAN_TEST_NO_FORCE_REBOOT" => Some("1".into()),
            _ => None,
        });
        assert_eq!(t.monitor, Some(Duration::from_millis(250)));
        assert_eq!(t.http_timeout, Timings::default().http_timeout);
        assert_eq!(t.backoff_unit, Duration::from_secs(1));
        assert!(!t.force_reboot);
        let cfg = Config {
            monitor: 30,
            heartbeat: 20,
            ..Config::default()
        };
        assert_eq!(t.monitor_period(&cfg), Duration::from_millis(250));
        assert_eq!(t.heartbeat_period(&cfg), Duration::from_secs(20));
        assert_eq!(Timings::from_env(|_| None), Timings::default());
    }
}
