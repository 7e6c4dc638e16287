//! The running agent: wiring only. [`run`] loads the config, builds the narrow handles
//! (config, stop token, outbox, link-state and connectivity watches, stats, supervisor,
//! heartbeat table), gives each thread the ones it needs, then runs the main loop, which
//! receives [`Control`] messages: signals (from the `signals` thread), a new config from
//! re-provisioning, a re-exec request from the self-update. That loop is the ONE place where
//! a config is applied ([`apply`]: HUP and re-provisioning alike) and the ONE place where the
//! process re-executes itself (a changed MQTT connection, `agent.update`, its rollback),
//! always after the clean stop of SPEC §10, which joins every thread it started.
//!
//! Threads: `signals`, `mqtt-link`, `mqtt-out`, `job-worker-N`, `rest-notify`,
//! `stats-collect`, `stats-upload`, `monitor`, `supervisor`, `watchdog` (when on),
//! `selfupdate`, `firmware` and `configure` (when an update, a flash or a config change
//! is pending). Every wait in them ends on the stop token.
//!
//! A panic anywhere is logged once and aborts the process ([`install_panic_hook`]), so that
//! procd or systemd start a fresh one instead of leaving a live process with a dead thread.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::error::Fatal;
use crate::healthz::Sources;
use crate::jobs::typed::Handlers;
use crate::jobs::Jobs;
use crate::link::outbox::Outbox;
use crate::link::LinkDeps;
use crate::net::monitor::Monitor;
use crate::net::{NetStatus, RecoveryPause};
use crate::runtime::{ConfigHandle, Control, Shutdown, Threads, Timings, Watch};
use crate::services::heartbeats::Heartbeats;
use crate::services::supervisor::Supervisor;
use crate::stats::upload::{Stats, StatsCtx};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads the config for start-up: the file, or provisioning with `-b` (SPEC §7.1).
/// `Ok(None)` when a stop was requested while provisioning.
fn initial_config(
    path: &Path,
    init_url: Option<&str>,
    stop: &Shutdown,
    timings: &Timings,
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
                let root = Path::new("/");
                let d = Config::default();
                let mac = crate::platform::identity::discover_mac(None, &d.mac_file, root)
                    .unwrap_or_else(|| "unknown".into());
                let machine = crate::platform::identity::machine_type(root);
                let firmware = crate::platform::identity::firmware(root);
                match crate::provision::provision(
                    url,
                    path,
                    (&mac, &machine, &firmware),
                    timings.provision_retry,
                    stop,
                ) {
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

/// True when going from `old` to `new` changes what only a fresh start can apply: the MQTT
/// connection (hosts, port, TLS, CA, client certificate and key — their paths or the files'
/// contents —, ALPN, transport, proxy, credentials, topic, key, MAC), `job_workers`,
/// `state_dir`, `cache_dir` or `watchdog_port`.
pub fn needs_restart(old: &Config, new: &Config) -> bool {
    old.mqtt_host != new.mqtt_host
        || old.mqtt_hosts != new.mqtt_hosts
        || old.port != new.port
        || old.client_crt != new.client_crt
        || old.client_key != new.client_key
        || old.client_key_password != new.client_key_password
        || (old.tls_files_stamp.is_some()
            && new.tls_files_stamp.is_some()
            && old.tls_files_stamp != new.tls_files_stamp)
        || old.alpn != new.alpn
        || old.transport != new.transport
        || old.ws_path != new.ws_path
        || old.proxy != new.proxy
        || old.tls != new.tls
        || old.cacrt != new.cacrt
        || old.username != new.username
        || old.password != new.password
        || old.topic != new.topic
        || old.key != new.key
        || old.mac != new.mac
        || old.job_workers != new.job_workers
        || old.state_dir != new.state_dir
        || old.cache_dir != new.cache_dir
        || old.watchdog_port != new.watchdog_port
}

/// The one config-apply path (HUP and re-provisioning): swaps the config in and returns true
/// when the caller must stop cleanly and re-execute to apply it ([`needs_restart`]).
fn apply(cfg: &ConfigHandle, outbox: &Outbox, new: Config, from: &str) -> bool {
    let old = cfg.get();
    let restart = needs_restart(&old, &new);
    crate::logging::set_level(new.debug);
    outbox.set_status_qos(new.qos);
    cfg.set(new);
    if restart {
        log::warn!(
            "{from}: config {} changes the MQTT connection, job_workers, state_dir, cache_dir or watchdog_port; restarting in place to apply it",
            cfg.path().display()
        );
    } else {
        log::info!("{from}: config {} reloaded", cfg.path().display());
    }
    restart
}

/// Replaces this process with `exe` and the same arguments (after a clean stop). Returns
/// only on failure.
fn exec_in_place(exe: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    crate::platform::sys::cloexec_from_3();
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(a0) = args.next() {
        cmd.arg0(a0);
    }
    log::info!("re-executing {}", exe.display());
    cmd.args(args).exec()
}

/// A panic anywhere is logged once and aborts the process (whatever the build's panic
/// strategy: the OpenWrt feed builds with `panic=unwind`), so that procd or systemd restart
/// socketman instead of keeping a process whose MQTT link or worker thread died.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        log::error!("panic in thread {name}: {info}; aborting so that socketman is restarted");
        log::logger().flush();
        std::process::abort();
    }));
}

/// The handles the typed-job handlers are made of.
struct Parts {
    config: ConfigHandle,
    supervisor: Supervisor,
    heartbeats: Heartbeats,
    stats_ctx: StatsCtx,
    net: Watch<NetStatus>,
    link: Watch<bool>,
    broker: Watch<Option<String>>,
    started: Instant,
    control: crate::runtime::ControlSender,
    outbox: Outbox,
    shutdown: Shutdown,
    /// Flushes the stats cache (before a reboot or a flash).
    flush_stats: Arc<dyn Fn() + Send + Sync>,
}

/// Plugs the owning modules into the typed-job traits.
fn handlers(p: &Parts) -> Handlers {
    let daemons = crate::services::daemons::Daemons(p.config.clone());
    Handlers {
        processes: Arc::new(crate::services::procs::Processes::default()),
        daemons: Arc::new(daemons.clone()),
        services: Arc::new(p.supervisor.clone()),
        agent_update: Arc::new(crate::services::selfupdate::SelfUpdate {
            cfg: p.config.clone(),
            control: p.control.clone(),
        }),
        firmware: Arc::new(crate::services::firmware::FirmwareJob {
            cfg: p.config.clone(),
            outbox: p.outbox.clone(),
            link: p.link.clone(),
            shutdown: p.shutdown.clone(),
            before_flash: p.flush_stats.clone(),
        }),
        agent_config: Arc::new(crate::services::configure::ConfigJob {
            cfg: p.config.clone(),
            link: p.link.clone(),
            shutdown: p.shutdown.clone(),
            control: p.control.clone(),
            needs_restart,
        }),
        stats: Arc::new(crate::stats::StatsJob {
            ctx: p.stats_ctx.clone(),
            net: p.net.clone(),
        }),
        health: Arc::new(Sources {
            cfg: p.config.clone(),
            started: p.started,
            link: p.link.clone(),
            broker: p.broker.clone(),
            net: p.net.clone(),
            stats: p.stats_ctx.stats.clone(),
            services: Arc::new(p.supervisor.clone()),
            heartbeats: Arc::new(p.heartbeats.clone()),
            daemons: Arc::new(daemons),
        }),
    }
}

/// How the main loop ended.
enum End {
    Stop,
    Reexec {
        exe: PathBuf,
        on_fail: Box<dyn FnOnce(&std::io::Error) + Send>,
    },
}

/// Runs the agent until TERM/INT (SPEC §7 start-up, §10 signals).
pub fn run(config_path: PathBuf, init_url: Option<String>) -> Result<(), Fatal> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    install_panic_hook();
    let timings = Timings::current();
    if timings != Timings::default() {
        log::warn!("test build: timings overridden by SOCKETMAN_TEST_* ({timings:?})");
    }
    // Signals first, so that a TERM during start-up is not lost. TERM/INT also end a
    // provisioning wait at start (`boot_stop`).
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| Fatal::Other(format!("cannot install signal handlers: {e}")))?;
    let signal_handle = signals.handle();
    let (control_tx, control_rx) = mpsc::channel::<Control>();
    let boot_stop = Shutdown::new();
    let signal_thread = {
        let (tx, boot_stop) = (control_tx.clone(), boot_stop.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == SIGTERM || sig == SIGINT {
                        boot_stop.trigger();
                    }
                    if tx.send(Control::Signal(sig)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Fatal::Other(format!("cannot start the signal thread: {e}")))?
    };
    let Some(cfg) = initial_config(&config_path, init_url.as_deref(), &boot_stop, &timings)? else {
        log::info!("stopped while provisioning");
        return Ok(());
    };
    if cfg.insecure {
        log::warn!("insecure is on: HTTPS certificates are not verified");
    }
    for d in [&cfg.state_dir, &cfg.cache_dir] {
        crate::platform::fs::ensure_dir(d)
            .map_err(|e| Fatal::Other(format!("cannot create {}: {e}", d.display())))?;
    }
    let mac =
        crate::platform::identity::discover_mac(cfg.mac.as_deref(), &cfg.mac_file, Path::new("/"))
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
    let link = crate::link::Link::new(&cfg, &mac).map_err(|e| Fatal::Other(e.to_string()))?;
    crate::provision::boot(&cfg, &mac);
    match crate::stats::spool::restore(&cfg.cache_dir, &cfg.state_dir) {
        Ok(0) => {}
        Ok(n) => log::info!("stats: {n} cache files saved before the last stop or reboot put back"),
        Err(e) => log::error!(
            "stats: cache saved in {} could not be put back: {e}",
            cfg.state_dir.display()
        ),
    }

    // --- handles ---
    let started = Instant::now();
    let shutdown = Shutdown::new();
    let outbox = Outbox::new(cfg.qos);
    let stats = Stats::open(&cfg, &shutdown);
    let state_dir = cfg.state_dir.clone();
    let config = ConfigHandle::new(cfg, config_path.clone());
    let link_state = Watch::new(false, &shutdown);
    let broker = Watch::new(None, &shutdown);
    let net = Watch::new(NetStatus::default(), &shutdown);
    let pause = RecoveryPause::default();
    let heartbeats = Heartbeats::default();
    let supervisor = Supervisor::new(
        config.clone(),
        outbox.clone(),
        shutdown.clone(),
        heartbeats.clone(),
        timings.backoff_unit,
    );
    let stats_ctx = StatsCtx {
        stats: stats.clone(),
        cfg: config.clone(),
        mac: mac.clone(),
        shutdown: shutdown.clone(),
        timings,
    };
    // 401 from the stats API: re-provision with `-b` (SPEC §5, §7) on the uploader thread;
    // the new config goes through the main loop like a HUP.
    match init_url.clone() {
        Some(url) => {
            let (tx, cfg, mac) = (control_tx.clone(), config.clone(), mac.clone());
            stats.set_on_unauthorized(move || {
                if let Some(new) = crate::provision::reprovision(
                    &url,
                    cfg.path(),
                    &mac,
                    &cfg.get(),
                    timings.http_timeout,
                ) {
                    log::info!("stats: re-provisioned after 401; applying the new config");
                    let _ = tx.send(Control::NewConfig {
                        cfg: Box::new(new),
                        from: "re-provisioning after 401",
                    });
                }
            });
        }
        None => stats.set_on_unauthorized(|| {
            log::warn!("stats: 401 and no -b given: records kept until the token is fixed")
        }),
    }
    let handlers = handlers(&Parts {
        config: config.clone(),
        supervisor: supervisor.clone(),
        heartbeats: heartbeats.clone(),
        stats_ctx: stats_ctx.clone(),
        net: net.clone(),
        link: link_state.clone(),
        broker: broker.clone(),
        started,
        control: control_tx.clone(),
        outbox: outbox.clone(),
        shutdown: shutdown.clone(),
        flush_stats: {
            let (stats, cfg) = (stats.clone(), config.clone());
            Arc::new(move || crate::stats::upload::flush(&stats, &cfg.get()))
        },
    });

    // --- threads ---
    let jobs = Jobs::start(crate::jobs::Context {
        cfg: config.clone(),
        outbox: outbox.clone(),
        shutdown: shutdown.clone(),
        timings,
        net: net.clone(),
        pause: pause.clone(),
        handlers,
    })
    .map_err(|e| Fatal::Other(format!("cannot start job workers: {e}")))?;
    // Unfinished jobs: not started ones run, started ones are answered as interrupted. The
    // job of a pending self-update, firmware upgrade or config change is answered by the
    // on_start of its module instead.
    let owed: Vec<String> = [
        crate::services::selfupdate::pending_job_id(&state_dir),
        crate::services::firmware::pending_job_id(&state_dir),
        crate::services::configure::pending_job_id(&state_dir),
    ]
    .into_iter()
    .flatten()
    .collect();
    jobs.resume_unfinished(&owed);
    let mut link_threads = Threads::new();
    {
        let net = net.clone();
        link.spawn(
            LinkDeps {
                cfg: config.clone(),
                outbox: outbox.clone(),
                shutdown: shutdown.clone(),
                state: link_state.clone(),
                broker: broker.clone(),
                inbound: jobs.clone(),
                ping_status: Box::new(move || net.get().code),
            },
            &mut link_threads,
        )
        .map_err(|e| Fatal::Other(format!("cannot start the MQTT link: {e}")))?;
    }
    let mut collector = Threads::new();
    let mut threads = Threads::new();
    // Records from before this start go out at once; decided before the first collection.
    let backlog = stats.cache_stats().records > 0;
    let spawned = collector
        .spawn(
            "stats-collect",
            crate::stats::collect::collector(stats_ctx.clone(), net.clone()),
        )
        .and_then(|()| {
            threads.spawn(
                "stats-upload",
                crate::stats::upload::uploader(stats_ctx.clone(), backlog),
            )
        });
    if let Err(e) = spawned {
        log::error!("stats: cannot start the collector/uploader threads: {e}");
    }
    if let Err(e) = threads.spawn(
        "supervisor",
        crate::services::supervisor::run(supervisor.clone()),
    ) {
        log::error!("cannot start the supervisor thread: {e}");
    }
    crate::services::watchdog::start(
        crate::services::watchdog::Watchdog {
            cfg: config.clone(),
            outbox: outbox.clone(),
            shutdown: shutdown.clone(),
            heartbeats: heartbeats.clone(),
            supervisor: supervisor.clone(),
        },
        &mut threads,
    );
    {
        let (stats, cfg) = (stats.clone(), config.clone());
        let monitor = Monitor {
            cfg: config.clone(),
            outbox: outbox.clone(),
            shutdown: shutdown.clone(),
            status: net.clone(),
            pause,
            timings,
            before_reboot: Box::new(move || crate::stats::upload::flush(&stats, &cfg.get())),
        };
        threads
            .spawn("monitor", crate::net::monitor::body(monitor))
            .map_err(|e| Fatal::Other(format!("cannot start the monitor thread: {e}")))?;
    }
    let resume = crate::services::pending::Resume {
        cfg: config.clone(),
        jobs: jobs.clone(),
        link: link_state.clone(),
        shutdown: shutdown.clone(),
        control: control_tx.clone(),
        started,
        crash_after_answer: timings.crash_after_answer,
    };
    crate::services::selfupdate::on_start(resume.clone(), timings.update_deadline, &mut threads);
    crate::services::firmware::on_start(resume.clone(), &mut threads);
    crate::services::configure::on_start(resume, &mut threads);
    drop(control_tx);

    // --- the main loop: the one config-apply and re-exec path ---
    let mut why = "signal".to_string();
    let mut end = End::Stop;
    for c in control_rx.iter() {
        match c {
            Control::Signal(SIGTERM) => {
                why = "TERM".into();
                break;
            }
            Control::Signal(SIGINT) => {
                why = "INT".into();
                break;
            }
            Control::Signal(SIGHUP) => match crate::config::load(config.path()) {
                Ok((new, notes)) => {
                    for n in notes {
                        log::warn!("{n}");
                    }
                    if apply(&config, &outbox, new, "HUP") {
                        why = "HUP".into();
                        end = reexec_self()?;
                        break;
                    }
                    crate::services::supervisor::config_changed(&supervisor);
                }
                Err(e) => log::error!("HUP: {e}; keeping the running config"),
            },
            Control::Signal(SIGUSR1) => {
                log::info!("stats: upload requested");
                stats.trigger();
            }
            Control::Signal(_) => {}
            Control::NewConfig { cfg, from } => {
                if apply(&config, &outbox, *cfg, from) {
                    why = from.into();
                    end = reexec_self()?;
                    break;
                }
                crate::services::supervisor::config_changed(&supervisor);
            }
            Control::Reexec {
                exe,
                why: w,
                on_fail,
            } => {
                why = w;
                end = End::Reexec { exe, on_fail };
                break;
            }
        }
    }

    // --- clean stop (SPEC §10), within 15 s ---
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs(14);
    log::info!(
        "{why}: stopping (jobs get {} s)",
        crate::jobs::STOP_GRACE.as_secs()
    );
    let phase = |what: &str| log::debug!("stop: {what} after {} ms", begin.elapsed().as_millis());
    jobs.stop(deadline - Duration::from_secs(3));
    phase("jobs stopped");
    crate::services::supervisor::stop_all_by(&supervisor, deadline - Duration::from_secs(2));
    phase("services stopped");
    // Results and events still queued go out while the link is up.
    outbox.wait_drained(deadline - Duration::from_secs(2), || link_state.get());
    phase("outbox drained");
    shutdown.trigger();
    outbox.close();
    link_threads.join_all(deadline);
    // Stats: the collector finishes the record it may be writing, then the cache is synced.
    collector.join_all(deadline);
    crate::stats::upload::flush(&stats, &config.get());
    threads.join_all(deadline);
    jobs.join(deadline);
    signal_handle.close();
    let _ = signal_thread.join();
    phase("threads joined");
    log::info!("stopped in {:.1} s", begin.elapsed().as_secs_f32());
    match end {
        End::Stop => Ok(()),
        End::Reexec { exe, on_fail } => {
            let err = exec_in_place(&exe);
            on_fail(&err);
            Err(Fatal::Other(format!(
                "cannot re-execute {}: {err}",
                exe.display()
            )))
        }
    }
}

/// A re-exec of the running binary (to apply a config change).
fn reexec_self() -> Result<End, Fatal> {
    let exe = std::env::current_exe()
        .map_err(|e| Fatal::Other(format!("cannot restart: path of the running binary: {e}")))?;
    Ok(End::Reexec {
        exe,
        on_fail: Box::new(|_| {}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::typed::{all_types, is_typed, run_job};
    use serde_json::json;

    #[test]
    fn restart_needed_only_for_what_a_fresh_start_applies() {
        let old = Config::default();
        let mut new = old.clone();
        new.monitor = 99;
        new.debug = !old.debug;
        assert!(!needs_restart(&old, &new));
        new.topic = "other".into();
        assert!(needs_restart(&old, &new));
        let mut new = old.clone();
        new.job_workers += 1;
        assert!(needs_restart(&old, &new));
    }

    #[test]
    fn every_listed_type_has_an_arm() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            topic: "t".into(),
            key: "k".into(),
            mqtt_host: "h".into(),
            state_dir: d.path().join("state"),
            cache_dir: d.path().join("cache"),
            init_dir: d.path().join("init.d").display().to_string(),
            ..Config::default()
        };
        let shutdown = Shutdown::new();
        let config = ConfigHandle::new(cfg.clone(), d.path().join("c.json"));
        let outbox = Outbox::new(1);
        let stats = Stats::open(&cfg, &shutdown);
        let net = Watch::new(NetStatus::default(), &shutdown);
        let heartbeats = Heartbeats::default();
        let supervisor = Supervisor::new(
            config.clone(),
            outbox.clone(),
            shutdown.clone(),
            heartbeats.clone(),
            Duration::from_secs(1),
        );
        let (tx, _rx) = mpsc::channel();
        let h = handlers(&Parts {
            config: config.clone(),
            supervisor,
            heartbeats,
            stats_ctx: StatsCtx {
                stats,
                cfg: config,
                mac: "02-00-00-00-00-09".into(),
                shutdown: shutdown.clone(),
                timings: Timings::default(),
            },
            link: Watch::new(false, &shutdown),
            broker: Watch::new(None, &shutdown),
            net,
            started: Instant::now(),
            control: tx,
            outbox: outbox.clone(),
            shutdown: shutdown.clone(),
            flush_stats: Arc::new(|| {}),
        });
        let mut n = 0;
        for ty in all_types() {
            assert!(is_typed(ty));
            // Empty args: every job either answers or names what is missing — never "unknown".
            if let Err(f) = run_job(&h, "id-1", ty, &json!({})) {
                assert!(!f.error.starts_with("unknown_type"), "{ty}: {}", f.error);
            }
            n += 1;
        }
        assert_eq!(
            n, 27,
            "the 24 typed jobs of SPEC §4.4 and firmware.upgrade, agent.configure, agent.config"
        );
        assert!(!is_typed("process.explode") && !is_typed("cmd"));
    }
}
