//! `/bin/sh -c CMD` for shell jobs, `network_restart_cmd`, `reboot_cmd` and `boot_cmd`
//! ([`run_summary`]): in its own process group, stdout and stderr interleaved as produced
//! (one pipe for both), output kept up to a limit (the rest is read and thrown away so
//! the child never blocks), a timeout that kills the whole group (TERM, then KILL after 5 s).
//! Runs on [`crate::platform::process::run`]: the calling thread (a job worker) blocks until
//! the shell ends or times out; the runner adds a waiter and a reader thread per job.
#![forbid(unsafe_code)]

use crate::platform::process::{self, Capture, RunOpts, Spec};
use std::time::{Duration, Instant};

/// Time between TERM and KILL when a job times out (SPEC §4.2).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for the pipe to close after the shell exited (a background child that
/// keeps the pipe open must not hold the job).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What a shell job did.
#[derive(Debug, Clone, PartialEq)]
pub struct ShellOutcome {
    /// stdout and stderr as produced, cut at the output limit (lossy UTF-8).
    pub output: String,
    /// The exit code; `None` when killed by a signal or on timeout.
    pub exit_code: Option<i32>,
    /// The signal that ended the shell, if any.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration: Duration,
    /// Set when the command could not be started at all.
    pub spawn_error: Option<String>,
}

impl ShellOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// Runs `cmd` with `/bin/sh -c`. Never panics; a spawn failure is reported in the outcome.
pub fn run_shell(cmd: &str, timeout: Duration, output_max: usize) -> ShellOutcome {
    run_shell_tracked(cmd, timeout, output_max, &|_| {})
}

/// As [`run_shell`]; `on_spawn` gets the process group id as soon as the shell runs, so that
/// the caller can kill the job from outside (clean stop).
pub fn run_shell_tracked(
    cmd: &str,
    timeout: Duration,
    output_max: usize,
    on_spawn: &dyn Fn(i32),
) -> ShellOutcome {
    let start = Instant::now();
    let opts = RunOpts::new(timeout)
        .capture(Capture::Combined { max: output_max })
        .grace(KILL_GRACE)
        .drain(DRAIN_AFTER_EXIT);
    let o = match process::run(&Spec::shell(cmd), &opts, on_spawn) {
        Ok(o) => o,
        Err(e) => {
            return ShellOutcome {
                output: String::new(),
                exit_code: None,
                signal: None,
                timed_out: false,
                truncated: false,
                duration: start.elapsed(),
                spawn_error: Some(e.to_string()),
            }
        }
    };
    if let Err(e) = &o.status {
        log::error!("waiting for job shell (pid {}) failed: {e}", o.pid);
    }
    ShellOutcome {
        output: o.output_lossy(),
        exit_code: if o.timed_out { None } else { o.code() },
        signal: o.signal(),
        timed_out: o.timed_out,
        truncated: o.truncated,
        duration: start.elapsed(),
        spawn_error: None,
    }
}

/// Runs `cmd` with [`run_shell`] (own process group, killed after `timeout`).
/// Returns success (exit 0) and a one-line summary with the start of the output.
pub fn run_summary(cmd: &str, timeout: Duration, output_max: usize) -> (bool, String) {
    let out = run_shell(cmd, timeout, output_max);
    let head: String = out
        .output
        .lines()
        .take(3)
        .collect::<Vec<_>>()
        .join(" | ")
        .chars()
        .take(300)
        .collect();
    let status = match (&out.spawn_error, out.timed_out, out.exit_code, out.signal) {
        (Some(e), _, _, _) => format!("not started: {e}"),
        (None, true, _, _) => format!("timed out after {} s", timeout.as_secs()),
        (None, false, Some(c), _) => format!("exit code {c}"),
        (None, false, None, Some(sig)) => format!("killed by signal {sig}"),
        (None, false, None, None) => "no exit status".to_string(),
    };
    (out.success(), format!("{status}; output: {head:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_exit_code() {
        let o = run_shell(
            "echo out; echo err >&2; exit 3",
            Duration::from_secs(10),
            1000,
        );
        assert_eq!(o.exit_code, Some(3));
        assert!(
            o.output.contains("out\n") && o.output.contains("err\n"),
            "{:?}",
            o.output
        );
        assert!(!o.truncated && !o.timed_out && !o.success());
        assert!(run_shell("true", Duration::from_secs(5), 10).success());
    }

    #[test]
    fn interleaving_keeps_order() {
        let o = run_shell(
            "echo 1; echo 2 >&2; echo 3; echo 4 >&2",
            Duration::from_secs(10),
            1000,
        );
        assert_eq!(o.output, "1\n2\n3\n4\n");
    }

    #[test]
    fn truncation() {
        let o = run_shell(
            "head -c 100000 /dev/zero | tr '\\0' x",
            Duration::from_secs(10),
            100,
        );
        assert_eq!(o.output.len(), 100);
        assert!(o.truncated);
        assert_eq!(o.exit_code, Some(0));
    }

    #[test]
    fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let o = run_shell(&cmd, Duration::from_millis(500), 1000);
        assert!(o.timed_out);
        assert_eq!(o.exit_code, None);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "grandchild survived: {stat}"
        );
    }

    #[test]
    fn background_child_does_not_hold_the_job() {
        let o = run_shell("sleep 5 & echo started", Duration::from_secs(30), 100);
        assert!(o.duration < Duration::from_secs(4), "{:?}", o.duration);
        assert_eq!(o.exit_code, Some(0));
        assert_eq!(o.output, "started\n");
    }
}
