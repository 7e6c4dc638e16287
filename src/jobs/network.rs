//! The `network` job type (also `networking`, `all`; SPEC §4.4): a shell job with network
//! safety. Before the command: a connectivity check and a copy of every existing
//! `network_backup_files` entry into `state_dir/network-backup/`. After it: re-checks for up
//! to 60 s (stopping as soon as the device is online). If it was online before and is not
//! after, the copies are restored byte for byte (atomically, with their modes),
//! `network_restart_cmd` runs and connectivity is checked again.
//!
//! Runs in a job worker thread; the worker makes such jobs run alone. While one runs, the
//! [`crate::net::RecoveryPause`] is set so the monitor thread pauses its recovery timers
//! (the job is changing the network on purpose and handles its own rollback). The re-check
//! window comes from [`crate::runtime::Timings`] (60 s; test builds shorten it).
#![forbid(unsafe_code)]

use super::Context;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Re-check window after the command (SPEC §4.4).
pub const RECHECK_WINDOW: Duration = Duration::from_secs(60);
/// Directory in `state_dir` holding the copies.
pub const BACKUP_DIR: &str = "network-backup";

/// When the re-checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Longest time to wait for the device to be online again.
    pub window: Duration,
    /// Pause before the first re-check: `network restart` and `ubus` calls return before
    /// netifd has taken the old link down, so an immediate check would see the old state.
    pub settle: Duration,
    /// Pause between re-checks.
    pub interval: Duration,
}

impl Timing {
    /// The settle and interval that go with `window`.
    pub fn for_window(window: Duration) -> Self {
        Timing {
            window,
            settle: (window / 12).min(Duration::from_secs(5)),
            interval: (window / 20).min(Duration::from_secs(3)),
        }
    }
}

/// One saved file.
#[derive(Debug, Clone)]
struct Backup {
    original: PathBuf,
    copy: PathBuf,
    mode: u32,
}

/// `/etc/config/network` → `0-etc_config_network` (unique by index, readable by name).
fn copy_name(index: usize, original: &str) -> String {
    let flat: String = original
        .trim_start_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    format!("{index}-{flat}")
}

/// Copies every existing file of `files` into `dir` (emptied first). Files that do not
/// exist are skipped; files that cannot be read are logged and skipped.
fn backup(files: &[String], dir: &Path) -> Vec<Backup> {
    if let Ok(old) = fs::read_dir(dir) {
        for e in old.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    if let Err(e) = crate::platform::fs::ensure_dir(dir) {
        log::error!("network job: backup directory {}: {e}", dir.display());
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let original = PathBuf::from(f);
        let meta = match fs::metadata(&original) {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                log::warn!("network job: {f} is not a regular file; not backed up");
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                log::warn!("network job: {f}: {e}; not backed up");
                continue;
            }
        };
        let copy = dir.join(copy_name(i, f));
        let saved =
            fs::read(&original).and_then(|bytes| crate::platform::fs::write_atomic(&copy, &bytes));
        match saved {
            Ok(()) => out.push(Backup {
                original,
                copy,
                mode: meta.permissions().mode() & 0o7777,
            }),
            Err(e) => log::warn!("network job: backing up {f}: {e}"),
        }
    }
    log::info!(
        "network job: backed up {} file(s) to {}",
        out.len(),
        dir.display()
    );
    out
}

/// Puts every copy back (atomically, with the original mode). Returns how many were restored.
fn restore(backups: &[Backup]) -> usize {
    let mut n = 0;
    for b in backups {
        let r = fs::read(&b.copy)
            .and_then(|bytes| crate::platform::fs::write_atomic_mode(&b.original, &bytes, b.mode));
        match r {
            Ok(()) => n += 1,
            Err(e) => log::error!(
                "network job: restoring {} from {}: {e}",
                b.original.display(),
                b.copy.display()
            ),
        }
    }
    n
}

/// Checks until online or `t.window` has passed; `sleep` returns true when a stop was
/// requested (then one last check decides).
fn recheck(
    t: Timing,
    online: &mut impl FnMut() -> bool,
    sleep: &mut impl FnMut(Duration) -> bool,
) -> bool {
    let start = Instant::now();
    if sleep(t.settle) {
        return online();
    }
    loop {
        if online() {
            return true;
        }
        let left = t.window.saturating_sub(start.elapsed());
        if left.is_zero() {
            return false;
        }
        if sleep(t.interval.min(left)) {
            return online();
        }
    }
}

/// The network-safety procedure around `run`, with every effect given: `online` performs a
/// connectivity check, `restart` runs `network_restart_cmd`, `sleep` waits (true = stop).
/// Returns what `run` returned and the job's `result` object.
pub fn guarded<T>(
    backup_files: &[String],
    backup_dir: &Path,
    timing: Timing,
    mut online: impl FnMut() -> bool,
    run: impl FnOnce() -> T,
    restart: impl FnOnce(),
    mut sleep: impl FnMut(Duration) -> bool,
) -> (T, Value) {
    let online_before = online();
    log::info!(
        "network job: {} before the command",
        if online_before { "online" } else { "offline" }
    );
    let backups = backup(backup_files, backup_dir);
    let out = run();
    let online_after = recheck(timing, &mut online, &mut sleep);
    let mut result = json!({
        "online_before": online_before,
        "online_after": online_after,
        "rolled_back": false,
    });
    if online_before && !online_after {
        log::warn!(
            "network job: offline for {} s after the command; rolling back",
            timing.window.as_secs()
        );
        let n = restore(&backups);
        log::warn!(
            "network job: restored {n} of {} file(s); running network_restart_cmd",
            backups.len()
        );
        restart();
        let again = recheck(timing, &mut online, &mut sleep);
        log::info!(
            "network job: {} after the rollback",
            if again { "online" } else { "still offline" }
        );
        result["rolled_back"] = json!(true);
        result["online_after_rollback"] = json!(again);
    }
    (out, result)
}

/// Clears the recovery pause when dropped.
struct Pause<'a>(&'a crate::net::RecoveryPause);

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// [`guarded`] for a live agent: checks with `monitor::check` (also publishing the status),
/// restarts with `network_restart_cmd`, and pauses the monitor's recovery meanwhile.
pub fn run_guarded<T>(ctx: &Context, run: impl FnOnce() -> T) -> (T, Value) {
    let cfg = ctx.cfg.get();
    ctx.pause.set(true);
    let _pause = Pause(&ctx.pause);
    let online = || {
        let st = crate::net::monitor::check(&cfg);
        let code = st.code.unwrap_or(0);
        ctx.net.set(st);
        log::debug!("network job: connectivity CODE {code}");
        !crate::net::recovery::is_offline(code)
    };
    let restart = || {
        let (ok, detail) = crate::platform::shell::run_summary(
            &cfg.network_restart_cmd,
            Duration::from_secs(cfg.job_timeout),
            cfg.job_output_max,
        );
        if ok {
            log::info!("network job: network_restart_cmd finished: {detail}");
        } else {
            log::warn!("network job: network_restart_cmd failed: {detail}");
        }
    };
    guarded(
        &cfg.network_backup_files,
        &cfg.state_dir.join(BACKUP_DIR),
        Timing::for_window(ctx.timings.network_recheck),
        online,
        run,
        restart,
        |d| ctx.shutdown.wait_timeout(d),
    )
}

/// A `network` job: `cmd` as a shell job (`platform::shell::run_shell`) inside [`run_guarded`].
/// Returns the shell outcome and the job's `result` object.
pub fn run_network_job(
    ctx: &Context,
    cmd: &str,
    timeout: Duration,
    output_max: usize,
) -> (crate::platform::shell::ShellOutcome, Value) {
    run_guarded(ctx, || {
        crate::platform::shell::run_shell(cmd, timeout, output_max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    const FAST: Timing = Timing {
        window: Duration::from_millis(50),
        settle: Duration::ZERO,
        interval: Duration::from_millis(5),
    };

    fn sleep(d: Duration) -> bool {
        std::thread::sleep(d);
        false
    }

    struct Files {
        _dir: tempfile::TempDir,
        paths: Vec<String>,
        backup_dir: PathBuf,
    }

    /// Two real files (one binary, one 0644) and one listed file that does not exist.
    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("etc/config/network");
        let wifi = dir.path().join("etc/config/wireless");
        fs::create_dir_all(net.parent().unwrap()).unwrap();
        fs::write(&net, b"config interface 'wan'\n\toption proto 'dhcp'\n").unwrap();
        fs::set_permissions(&net, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&wifi, [0u8, 159, 146, 150, 255, b'\n']).unwrap();
        let missing = dir.path().join("etc/config/dhcp");
        let backup_dir = dir.path().join("state").join(BACKUP_DIR);
        Files {
            paths: [net, wifi, missing]
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            backup_dir,
            _dir: dir,
        }
    }

    fn clobber(paths: &[String]) {
        fs::write(
            &paths[0],
            "config interface 'wan'\n\toption proto 'broken'\n",
        )
        .unwrap();
        fs::write(&paths[1], "").unwrap();
        fs::write(&paths[2], "created by the job").unwrap();
    }

    #[test]
    fn breaking_job_is_rolled_back_byte_for_byte() {
        let f = files();
        let before: Vec<Vec<u8>> = f.paths[..2].iter().map(|p| fs::read(p).unwrap()).collect();
        // Online until the command runs; offline after it until the restart.
        let up = Cell::new(true);
        let restarts = Cell::new(0);
        let checks = Cell::new(0);
        let (out, result) = guarded(
            &f.paths,
            &f.backup_dir,
            FAST,
            || {
                checks.set(checks.get() + 1);
                up.get()
            },
            || {
                clobber(&f.paths);
                up.set(false);
                "ran"
            },
            || {
                restarts.set(restarts.get() + 1);
                up.set(true);
            },
            sleep,
        );
        assert_eq!(out, "ran");
        assert_eq!(
            result,
            json!({"online_before":true,"online_after":false,"rolled_back":true,"online_after_rollback":true})
        );
        assert_eq!(restarts.get(), 1);
        assert!(checks.get() >= 3, "re-checked during the window");
        for (p, b) in f.paths[..2].iter().zip(&before) {
            assert_eq!(&fs::read(p).unwrap(), b, "{p} restored byte for byte");
        }
        let mode = fs::metadata(&f.paths[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "mode kept");
        // Files that had no copy are left as the job made them.
        assert_eq!(
            fs::read_to_string(&f.paths[2]).unwrap(),
            "created by the job"
        );
        assert_eq!(fs::read_dir(&f.backup_dir).unwrap().count(), 2);
    }

    #[test]
    fn harmless_job_is_not_rolled_back() {
        let f = files();
        let restarts = Cell::new(0);
        let (_, result) = guarded(
            &f.paths,
            &f.backup_dir,
            FAST,
            || true,
            || clobber(&f.paths),
            || restarts.set(1),
            sleep,
        );
        assert_eq!(
            result,
            json!({"online_before":true,"online_after":true,"rolled_back":false})
        );
        assert_eq!(restarts.get(), 0);
        assert!(fs::read_to_string(&f.paths[0]).unwrap().contains("broken"));
    }

    #[test]
    fn short_outage_within_the_window_is_not_rolled_back() {
        let f = files();
        // Offline for the first two re-checks, then online (e.g. netifd took a while).
        let seq = RefCell::new(vec![true, false, false, true].into_iter());
        let (_, result) = guarded(
            &f.paths,
            &f.backup_dir,
            Timing::for_window(Duration::from_secs(2)),
            || seq.borrow_mut().next().unwrap_or(true),
            || (),
            || panic!("no restart expected"),
            sleep,
        );
        assert_eq!(result["rolled_back"], false);
        assert_eq!(result["online_after"], true);
    }

    #[test]
    fn offline_before_means_no_rollback() {
        let f = files();
        let (_, result) = guarded(
            &f.paths,
            &f.backup_dir,
            FAST,
            || false,
            || clobber(&f.paths),
            || panic!("no restart expected"),
            sleep,
        );
        assert_eq!(
            result,
            json!({"online_before":false,"online_after":false,"rolled_back":false})
        );
        assert!(fs::read_to_string(&f.paths[0]).unwrap().contains("broken"));
    }

    #[test]
    fn stop_during_the_window_ends_it_quickly() {
        let f = files();
        let up = Cell::new(true);
        let t = Instant::now();
        let (_, result) = guarded(
            &f.paths,
            &f.backup_dir,
            Timing::for_window(Duration::from_secs(600)),
            || up.get(),
            || up.set(false),
            || up.set(true),
            |_| true,
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(
            result["rolled_back"], true,
            "rollback still happens on stop"
        );
        assert_eq!(result["online_after_rollback"], true);
    }

    #[test]
    fn timing_and_names() {
        let t = Timing::for_window(RECHECK_WINDOW);
        assert_eq!(t.settle, Duration::from_secs(5));
        assert_eq!(t.interval, Duration::from_secs(3));
        assert_eq!(copy_name(0, "/etc/config/network"), "0-etc_config_network");
    }
}
