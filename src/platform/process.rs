//! The one way socketman starts a child process. Every child runs in its OWN process group
//! (`process_group(0)`, so its pgid is its pid), with stdin on `/dev/null`, and is always
//! reaped by a thread that blocks in `wait()`: nothing here polls with `try_wait`.
//!
//! Two kinds of children:
//!
//! - **Runs** ([`run`]): start, wait up to a timeout, return an [`Outcome`]. Output is either
//!   not captured ([`Capture::None`]: stdout/stderr as the [`Spec`]'s [`Streams`]), stdout only
//!   ([`Capture::Stdout`]) or stdout and stderr interleaved through one pipe as produced
//!   ([`Capture::Combined`]); the first `max` bytes are kept, the rest is read and thrown away
//!   so the child never blocks on a full pipe, and [`Outcome::truncated`] says so. On timeout
//!   the whole group gets TERM, then KILL after the call site's grace (or KILL at once with a
//!   zero grace), and after the leader ended the group gets KILL again so that no member
//!   outlives a timed-out run. After the leader exited, the caller waits at most
//!   [`RunOpts::drain`] for the pipe to close: a background grandchild that keeps the pipe
//!   open does not hold the caller. `on_spawn(pgid)` is called as soon as the child runs (the
//!   job runner records the group for its clean stop).
//! - **Supervised children** ([`spawn_supervised`]): long-running, started in their own group;
//!   the exit is delivered by the reaper thread, to a callback the caller gives (which may
//!   just send on the caller's channel), and to the returned [`Supervised`] handle, on which
//!   [`terminate`] blocks: TERM (+CONT) to each group, wait up to a grace for the leaders'
//!   exits, KILL to the groups that are left, then KILL to every group (leftover members).
//!
//! Threads: per child, one `proc-wait` (runs) or `proc-reaper` (supervised) thread that spawns
//! the child, blocks in `wait()` and reports the status over a channel or the callback; per
//! captured run, one `proc-output` thread that reads the pipe until it closes. The threads
//! end with the child (the reader: when the last holder of the pipe closes it). The caller of
//! [`run`] blocks in `recv_timeout` on the waiter's channel until the deadline.
//!
//! How the supervisor (services/supervisor.rs) uses it:
//! - start: `spawn_supervised(&Spec::shell(&cmd).envs(&env).current_dir(dir)
//!   .streams(Streams::Inherit), Leftovers::Kill, &|_| {}, move |e| { let _ = tx.send(e); })`
//!   where `tx` is a `Sender<Exited>` whose receiver the supervisor thread owns;
//!   [`Leftovers::Kill`] KILLs what the leader left in its group right after it was reaped
//!   (what `tick` does today). Keep the [`Supervised`] in the table in place of the `Child`;
//!   its [`Supervised::pid`] is the pid and the pgid.
//! - exits: the supervisor thread blocks in `rx.recv_timeout(until the next due restart)`
//!   and finds the service by [`Exited::pid`] (ignore a pid no longer in the table: a stopped
//!   service's exit also arrives there). [`Supervised::exited`] answers without blocking.
//! - stop: take the [`Supervised`] out of the table (clone it if the table keeps it), release
//!   the lock, call [`terminate`]`(&[handle], STOP_GRACE)`; it returns each pid with its
//!   [`Exited`] (`None`: still not reaped after KILL).
#![forbid(unsafe_code)]

use crate::platform::sys;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Default for [`RunOpts::drain`]: how long to wait for the output pipe to close after the
/// child exited.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How long to wait for a child to be reaped after KILL before giving up on it (a process in
/// uninterruptible sleep, e.g. in a hung driver, dies only when it leaves the kernel). Its
/// reaper thread keeps waiting and reaps it whenever it ends.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// The status text when a waiter thread vanished without a status (it panicked).
const WAITER_GONE: &str = "the waiter thread ended without an exit status";

/// Where the child's stdout and stderr go when they are not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streams {
    /// `/dev/null`.
    #[default]
    Null,
    /// socketman's own stdout and stderr.
    Inherit,
}

/// What to start: program, arguments, extra environment, working directory, streams.
/// The environment is socketman's plus [`Spec::env`]; stdin is always `/dev/null`.
#[derive(Debug, Clone)]
pub struct Spec {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    streams: Streams,
    /// Run as this uid, gid and supplementary groups instead of socketman's.
    run_as: Option<(u32, u32, Vec<u32>)>,
    /// Start from an empty environment (plus `PATH`, `HOME=/` and [`Spec::env`]).
    clean_env: bool,
}

impl Spec {
    /// `program` (a path, or a name looked up on `PATH`) without arguments.
    pub fn new(program: impl AsRef<OsStr>) -> Spec {
        Spec {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            streams: Streams::Null,
            run_as: None,
            clean_env: false,
        }
    }

    /// `/bin/sh -c cmd`.
    pub fn shell(cmd: &str) -> Spec {
        Spec::new("/bin/sh").arg("-c").arg(cmd)
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Spec {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets one environment variable (on top of socketman's environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> Spec {
        self.env
            .push((key.as_ref().to_owned(), val.as_ref().to_owned()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Spec
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Spec {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Runs the child as `uid`/`gid` with the supplementary `groups` (socketman as root
    /// drops to them before exec).
    pub fn run_as(mut self, uid: u32, gid: u32, groups: Vec<u32>) -> Spec {
        self.run_as = Some((uid, gid, groups));
        self
    }

    /// Starts the child with a clean environment: `PATH` (the OpenWrt default), `HOME=/`
    /// and what [`Spec::env`] sets; nothing of socketman's own.
    pub fn clean_env(mut self) -> Spec {
        self.clean_env = true;
        self
    }

    /// Where uncaptured stdout/stderr go (default [`Streams::Null`]).
    pub fn streams(mut self, s: Streams) -> Spec {
        self.streams = s;
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        if self.clean_env {
            c.env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", "/");
        }
        if let Some((uid, gid, groups)) = &self.run_as {
            crate::platform::sys::run_as(&mut c, *uid, *gid, groups.clone());
        }
        c.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if self.streams == Streams::Null {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
        c
    }

    fn error(&self, stage: Stage, error: io::Error) -> RunError {
        RunError {
            stage,
            program: self.program.to_string_lossy().into_owned(),
            error,
        }
    }
}

/// Which output of a run is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Nothing: stdout and stderr go where the [`Spec`]'s [`Streams`] say.
    None,
    /// stdout, its first `max` bytes; stderr goes where the [`Streams`] say.
    Stdout { max: usize },
    /// stdout and stderr interleaved as produced (one pipe for both), the first `max` bytes.
    Combined { max: usize },
}

/// How a [`run`] is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOpts {
    pub capture: Capture,
    /// From the start of the run to the TERM (or KILL) of the group.
    pub timeout: Duration,
    /// Between TERM and KILL on timeout; zero: KILL at once.
    pub grace: Duration,
    /// How long to wait for the output pipe to close after the child exited.
    pub drain: Duration,
    /// KILL whatever is left of the child's process group once it exited (a check that
    /// must leave nothing behind, e.g. `--version` of a downloaded binary).
    pub no_leftovers: bool,
}

impl RunOpts {
    /// No capture, KILL at once on `timeout`, [`DRAIN_AFTER_EXIT`].
    pub fn new(timeout: Duration) -> RunOpts {
        RunOpts {
            capture: Capture::None,
            timeout,
            grace: Duration::ZERO,
            drain: DRAIN_AFTER_EXIT,
            no_leftovers: false,
        }
    }

    /// See [`RunOpts::no_leftovers`].
    pub fn no_leftovers(mut self) -> RunOpts {
        self.no_leftovers = true;
        self
    }

    pub fn capture(mut self, c: Capture) -> RunOpts {
        self.capture = c;
        self
    }

    pub fn grace(mut self, g: Duration) -> RunOpts {
        self.grace = g;
        self
    }

    pub fn drain(mut self, d: Duration) -> RunOpts {
        self.drain = d;
        self
    }
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// The child's pid, also its process group id.
    pub pid: i32,
    /// The exit status; `Err` when waiting failed or the child was still not reaped
    /// [`KILL_WAIT`] after KILL (its reaper thread reaps it later).
    pub status: Result<ExitStatus, WaitError>,
    /// The timeout passed and the group was signalled.
    pub timed_out: bool,
    /// The captured output (empty without capture).
    pub output: Vec<u8>,
    /// More output came than was kept.
    pub truncated: bool,
    /// From the start to the return of [`run`].
    pub duration: Duration,
}

impl Outcome {
    /// The exit code; `None` when a signal ended the child or there is no status.
    pub fn code(&self) -> Option<i32> {
        self.status.as_ref().ok().and_then(ExitStatus::code)
    }

    /// The signal that ended the child, if any.
    pub fn signal(&self) -> Option<i32> {
        self.status.as_ref().ok().and_then(ExitStatus::signal)
    }

    /// The output as (lossy) UTF-8.
    pub fn output_lossy(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// The step at which starting a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Creating the output pipe.
    Pipe,
    /// Starting the reader or waiter thread (no child was started).
    Thread,
    /// `fork`/`exec` of the program.
    Spawn,
}

/// Starting a child failed; no child is left behind.
#[derive(Debug)]
pub struct RunError {
    pub stage: Stage,
    /// The program, as given to [`Spec::new`].
    pub program: String,
    /// The cause (e.g. `NotFound`, or `ETXTBSY` via `raw_os_error`).
    pub error: io::Error,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.stage {
            Stage::Pipe => write!(f, "cannot create pipe: {}", self.error),
            Stage::Thread => write!(
                f,
                "cannot start a thread for {}: {}",
                self.program, self.error
            ),
            Stage::Spawn => write!(f, "cannot start {}: {}", self.program, self.error),
        }
    }
}

impl std::error::Error for RunError {}

/// Why a started [`run`] has no exit status ([`Outcome::status`]). The child was started;
/// its reaper thread still reaps it whenever it ends.
#[derive(Debug)]
pub enum WaitError {
    /// `wait()` on the child failed.
    Wait(io::Error),
    /// The waiter thread ended without sending a status (it panicked).
    WaiterGone,
    /// The timeout passed and the child (pid and pgid `pid`) was still not reaped `after`
    /// the KILL ([`KILL_WAIT`]): a process in uninterruptible sleep.
    NotReaped { pid: i32, after: Duration },
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Wait(e) => write!(f, "{e}"),
            WaitError::WaiterGone => f.write_str(WAITER_GONE),
            WaitError::NotReaped { pid, after } => {
                write!(f, "pid {pid} still running {after:?} after KILL")
            }
        }
    }
}

impl std::error::Error for WaitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WaitError::Wait(e) => Some(e),
            WaitError::WaiterGone | WaitError::NotReaped { .. } => None,
        }
    }
}

impl From<io::Error> for WaitError {
    fn from(e: io::Error) -> Self {
        WaitError::Wait(e)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What [`spawn_supervised`]'s leader leaves in its group when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// Left alone (they live on in the group).
    Keep,
    /// KILLed by the reaper thread right after the leader was reaped.
    Kill,
}

/// Starts a thread that spawns `cmd`, reports its pid, blocks in `wait()`, then (once the
/// caller dropped the returned gate, i.e. after its `on_spawn`) calls `after(pid, status)`.
/// The child is spawned on that thread so that a thread that cannot be started leaves no
/// child without a reaper.
fn start_waiter<F>(
    mut cmd: Command,
    spec: &Spec,
    name: &str,
    leftovers: Leftovers,
    after: F,
) -> Result<(i32, mpsc::Sender<()>), RunError>
where
    F: FnOnce(i32, io::Result<ExitStatus>) + Send + 'static,
{
    let (pid_tx, pid_rx) = mpsc::channel::<io::Result<i32>>();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Libraries (Paho's MQTT socket) open descriptors without O_CLOEXEC after start:
            // no child may inherit them (a lingering child would hold the broker connection).
            sys::cloexec_from_3();
            let started = cmd.spawn();
            // The parent's copies of the pipe's write ends go with `cmd`, so that the reader
            // sees the end of the output when the child's side closes.
            drop(cmd);
            let mut child = match started {
                Ok(c) => c,
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                    return;
                }
            };
            let pid = child.id() as i32;
            let _ = pid_tx.send(Ok(pid));
            let status = child.wait();
            if leftovers == Leftovers::Kill {
                // Whatever the leader left behind in its group goes with it.
                let _ = sys::kill_group(pid, libc::SIGKILL);
            }
            if let Err(e) = &status {
                log::warn!("pid {pid}: wait failed: {e}");
            }
            // Returns when the caller is done with on_spawn (it drops the sender).
            let _ = gate_rx.recv();
            after(pid, status);
        });
    if let Err(e) = spawned {
        return Err(spec.error(Stage::Thread, e));
    }
    match pid_rx.recv() {
        Ok(Ok(pid)) => Ok((pid, gate_tx)),
        Ok(Err(e)) => Err(spec.error(Stage::Spawn, e)),
        Err(_) => Err(spec.error(Stage::Thread, io::Error::other(WAITER_GONE))),
    }
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    truncated: bool,
    /// The caller took the output: read and discard from now on.
    abandoned: bool,
}

struct Reader {
    sink: Arc<Mutex<Captured>>,
    /// Disconnected when the pipe closed (the thread ended).
    done: Receiver<()>,
}

fn start_reader(mut pipe: io::PipeReader, max: usize) -> io::Result<Reader> {
    let sink = Arc::new(Mutex::new(Captured::default()));
    let into = Arc::clone(&sink);
    let (tx, done) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("proc-output".into())
        .spawn(move || {
            let _tx = tx;
            let mut buf = vec![0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut g = lock(&into);
                        if g.abandoned {
                            continue;
                        }
                        let room = max.saturating_sub(g.kept.len());
                        if n > room {
                            g.truncated = true;
                        }
                        g.kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })?;
    Ok(Reader { sink, done })
}

/// Waits for the waiter's status until `deadline` (`None`: no deadline).
fn recv_until<T>(rx: &Receiver<T>, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
    match deadline {
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
    }
}

/// The waiter's answer as a status; `None` when it has not answered yet.
fn status_of(
    r: Result<io::Result<ExitStatus>, RecvTimeoutError>,
) -> Option<Result<ExitStatus, WaitError>> {
    match r {
        Ok(st) => Some(st.map_err(WaitError::from)),
        Err(RecvTimeoutError::Disconnected) => Some(Err(WaitError::WaiterGone)),
        Err(RecvTimeoutError::Timeout) => None,
    }
}

/// The timeout of a run passed: TERM (unless `grace` is zero), KILL after `grace`, and the
/// status once the waiter has it (at most [`KILL_WAIT`] after KILL).
fn stop_run(
    pgid: i32,
    rx: &Receiver<io::Result<ExitStatus>>,
    grace: Duration,
) -> Result<ExitStatus, WaitError> {
    if !grace.is_zero() {
        let _ = sys::kill_group(pgid, libc::SIGTERM);
        if let Some(st) = status_of(rx.recv_timeout(grace)) {
            return st;
        }
    }
    let _ = sys::kill_group(pgid, libc::SIGKILL);
    status_of(rx.recv_timeout(KILL_WAIT)).unwrap_or(Err(WaitError::NotReaped {
        pid: pgid,
        after: KILL_WAIT,
    }))
}

/// Runs `spec` to its end or its timeout (see the module header). `on_spawn(pgid)` is called
/// on this thread as soon as the child runs. `Err` only when it could not be started.
pub fn run(spec: &Spec, opts: &RunOpts, on_spawn: &dyn Fn(i32)) -> Result<Outcome, RunError> {
    let start = Instant::now();
    let mut cmd = spec.command();
    let reader = match opts.capture {
        Capture::None => None,
        Capture::Stdout { max } | Capture::Combined { max } => {
            let (r, w) = io::pipe().map_err(|e| spec.error(Stage::Pipe, e))?;
            if matches!(opts.capture, Capture::Combined { .. }) {
                let w2 = w.try_clone().map_err(|e| spec.error(Stage::Pipe, e))?;
                cmd.stderr(w2);
            }
            cmd.stdout(w);
            Some(start_reader(r, max).map_err(|e| spec.error(Stage::Thread, e))?)
        }
    };
    let (tx, rx) = mpsc::channel::<io::Result<ExitStatus>>();
    let (pid, gate) = start_waiter(cmd, spec, "proc-wait", Leftovers::Keep, move |_, st| {
        let _ = tx.send(st);
    })?;
    on_spawn(pid);
    drop(gate);

    let mut timed_out = false;
    let status = match status_of(recv_until(&rx, start.checked_add(opts.timeout))) {
        Some(st) => st,
        None => {
            timed_out = true;
            let st = stop_run(pid, &rx, opts.grace);
            // Whatever of the group is left goes too, so no child outlives a timed-out run.
            let _ = sys::kill_group(pid, libc::SIGKILL);
            st
        }
    };
    if opts.no_leftovers && !timed_out {
        // The group outlives its leader while a member runs, so its id is not reused yet.
        let _ = sys::kill_group(pid, libc::SIGKILL);
    }

    let (output, truncated) = match reader {
        None => (Vec::new(), false),
        Some(r) => {
            if r.done.recv_timeout(opts.drain) == Err(RecvTimeoutError::Timeout) {
                log::debug!(
                    "{} (pid {pid}): output pipe still open {:?} after it exited (a background \
                     child holds it); output so far kept",
                    spec.program.to_string_lossy(),
                    opts.drain
                );
            }
            let mut g = lock(&r.sink);
            g.abandoned = true;
            (std::mem::take(&mut g.kept), g.truncated)
        }
    };
    Ok(Outcome {
        pid,
        status,
        timed_out,
        output,
        truncated,
        duration: start.elapsed(),
    })
}

/// How a supervised child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// The child's pid (and pgid).
    pub pid: i32,
    /// `None` when waiting for it failed (logged).
    pub status: Option<ExitStatus>,
}

impl Exited {
    /// The exit code when it exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The signal that ended it, if any.
    pub fn signal(&self) -> Option<i32> {
        self.status.and_then(|s| s.signal())
    }
}

#[derive(Debug, Default)]
struct ExitCell {
    exit: Mutex<Option<Exited>>,
    changed: Condvar,
}

/// A child started by [`spawn_supervised`]. Cloning shares the same child; dropping the
/// handle does not stop or forget the child (its reaper thread still reaps it).
#[derive(Debug, Clone)]
pub struct Supervised {
    pid: i32,
    cell: Arc<ExitCell>,
}

impl Supervised {
    /// The pid, which is also the process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit, once the child was reaped; does not block.
    pub fn exited(&self) -> Option<Exited> {
        *lock(&self.cell.exit)
    }

    /// Blocks up to `d` for the exit.
    pub fn wait_timeout(&self, d: Duration) -> Option<Exited> {
        self.wait_until(Instant::now().checked_add(d))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Option<Exited> {
        let mut g = lock(&self.cell.exit);
        loop {
            if let Some(e) = *g {
                return Some(e);
            }
            g = match deadline {
                None => match self.cell.changed.wait(g) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                },
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    match self.cell.changed.wait_timeout(g, left) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    }
                }
            };
        }
    }
}

/// Starts a long-running child in its own group. `on_spawn(pid)` runs on this thread before
/// any exit is delivered (register the pid there); `on_exit` runs once on the reaper thread
/// when the child was reaped (after the handle saw the exit). With [`Leftovers::Kill`] the
/// reaper KILLs the rest of the group right after the leader was reaped.
pub fn spawn_supervised<F>(
    spec: &Spec,
    leftovers: Leftovers,
    on_spawn: &dyn Fn(i32),
    on_exit: F,
) -> Result<Supervised, RunError>
where
    F: FnOnce(Exited) + Send + 'static,
{
    let cell = Arc::new(ExitCell::default());
    let shared = Arc::clone(&cell);
    let (pid, gate) = start_waiter(
        spec.command(),
        spec,
        "proc-reaper",
        leftovers,
        move |pid, st| {
            let e = Exited {
                pid,
                status: st.ok(),
            };
            *lock(&shared.exit) = Some(e);
            shared.changed.notify_all();
            on_exit(e);
        },
    )?;
    on_spawn(pid);
    drop(gate);
    Ok(Supervised { pid, cell })
}

/// Stops supervised children: TERM and CONT to every group, waits up to `grace` for the
/// leaders (blocking on their exits), KILL to the groups whose leader is still there (and
/// waits up to [`KILL_WAIT`] for those), then KILL to every group for what the leaders left
/// behind. Returns each pid with its exit (`None`: not reaped even after KILL), in order.
pub fn terminate(children: &[Supervised], grace: Duration) -> Vec<(i32, Option<Exited>)> {
    for c in children {
        let _ = sys::kill_group(c.pid, libc::SIGTERM);
        let _ = sys::kill_group(c.pid, libc::SIGCONT);
    }
    let deadline = Instant::now().checked_add(grace);
    let mut out: Vec<(i32, Option<Exited>)> = children
        .iter()
        .map(|c| (c.pid, c.wait_until(deadline)))
        .collect();
    let mut killed = false;
    for (pid, e) in &out {
        if e.is_none() {
            log::warn!("pid {pid}: still alive {grace:?} after TERM, sending KILL");
            let _ = sys::kill_group(*pid, libc::SIGKILL);
            killed = true;
        }
    }
    if killed {
        let deadline = Instant::now().checked_add(KILL_WAIT);
        for (c, (pid, e)) in children.iter().zip(out.iter_mut()) {
            if e.is_none() {
                *e = c.wait_until(deadline);
                if e.is_none() {
                    log::error!("pid {pid}: still not reaped {KILL_WAIT:?} after KILL");
                }
            }
        }
    }
    // Leftover members of the groups (the leader is gone) get KILL too.
    for c in children {
        let _ = sys::kill_group(c.pid, libc::SIGKILL);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) -> Spec {
        Spec::shell(cmd)
    }

    fn combined(timeout: Duration, max: usize) -> RunOpts {
        RunOpts::new(timeout).capture(Capture::Combined { max })
    }

    /// True when `pid` is gone or a zombie that is not ours (an orphan whose reaper is init).
    fn dead(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z")
    }

    /// Waits up to 10 s for `pid` to be dead (a killed orphan is reaped by init, later).
    fn wait_dead(pid: i32) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while !dead(pid) {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn wait_file(p: &Path) {
        let end = Instant::now() + Duration::from_secs(10);
        while !p.exists() {
            assert!(Instant::now() < end, "{} never appeared", p.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn exit_codes_and_interleaved_output() {
        let o = run(
            &sh("echo 1; echo 2 >&2; echo 3; echo 4 >&2; exit 3"),
            &combined(Duration::from_secs(30), 1000),
            &|_| {},
        )
        .unwrap();
        assert_eq!(o.code(), Some(3));
        assert_eq!(o.signal(), None);
        assert_eq!(o.output_lossy(), "1\n2\n3\n4\n");
        assert!(!o.truncated && !o.timed_out);
        // The child was reaped before run returned.
        assert!(!Path::new(&format!("/proc/{}", o.pid)).exists());
        let o = run(
            &Spec::new("/bin/true"),
            &RunOpts::new(Duration::from_secs(30)),
            &|_| {},
        )
        .unwrap();
        assert_eq!(o.code(), Some(0));
        assert!(o.output.is_empty());
    }

    #[test]
    fn stdout_only_capture_env_and_cwd() {
        let d = tempfile::tempdir().unwrap();
        let spec = sh("echo \"$FOO\"; pwd; echo hidden >&2")
            .env("FOO", "bar")
            .current_dir(d.path());
        let o = run(
            &spec,
            &RunOpts::new(Duration::from_secs(30)).capture(Capture::Stdout { max: 1000 }),
            &|_| {},
        )
        .unwrap();
        let dir = d.path().canonicalize().unwrap();
        assert_eq!(o.output_lossy(), format!("bar\n{}\n", dir.display()));
    }

    #[test]
    fn signal_ends_the_child() {
        let o = run(
            &sh("kill -9 $$"),
            &RunOpts::new(Duration::from_secs(30)),
            &|_| {},
        )
        .unwrap();
        assert_eq!(o.signal(), Some(libc::SIGKILL));
        assert_eq!(o.code(), None);
        assert!(!o.timed_out);
    }

    #[test]
    fn output_cap_keeps_the_first_bytes_and_drains_the_rest() {
        // 1 MB through a 100-byte cap: the child would block on a full pipe if the rest
        // were not read.
        let o = run(
            &sh("printf abc; head -c 1000000 /dev/zero | tr '\\0' x"),
            &combined(Duration::from_secs(60), 100),
            &|_| {},
        )
        .unwrap();
        assert!(!o.timed_out);
        assert_eq!(o.code(), Some(0));
        assert!(o.truncated);
        assert_eq!(o.output.len(), 100);
        assert!(o.output_lossy().starts_with("abcxxx"));
        let exact = run(
            &sh("printf abc"),
            &combined(Duration::from_secs(30), 3),
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            (exact.output_lossy().as_str(), exact.truncated),
            ("abc", false)
        );
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let seen = Mutex::new(0);
        let o = run(
            &sh("sleep 300 & echo $!; wait"),
            &combined(Duration::from_millis(500), 1000).grace(Duration::from_secs(5)),
            &|pgid| *lock(&seen) = pgid,
        )
        .unwrap();
        assert!(o.timed_out);
        assert_eq!(*lock(&seen), o.pid);
        assert_eq!(o.signal(), Some(libc::SIGTERM));
        let grandchild: i32 = o.output_lossy().trim().parse().unwrap();
        assert!(wait_dead(grandchild), "grandchild {grandchild} survived");
        assert!(!Path::new(&format!("/proc/{}", o.pid)).exists());
    }

    #[test]
    fn timeout_kills_after_the_grace_when_term_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let ready = d.path().join("ready");
        let cmd = format!("trap '' TERM; : > {}; exec sleep 300", ready.display());
        let t0 = Instant::now();
        let o = run(
            &sh(&cmd),
            &RunOpts::new(Duration::from_secs(2)).grace(Duration::from_millis(300)),
            &|_| {},
        )
        .unwrap();
        assert!(ready.exists(), "the trap was not set before the timeout");
        assert!(o.timed_out);
        assert_eq!(o.signal(), Some(libc::SIGKILL));
        assert!(t0.elapsed() >= Duration::from_millis(2300));
        // Zero grace: KILL at once.
        let o = run(
            &sh("exec sleep 300"),
            &RunOpts::new(Duration::from_millis(200)),
            &|_| {},
        )
        .unwrap();
        assert!(o.timed_out);
        assert_eq!(o.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn background_child_holding_the_pipe_does_not_hold_the_caller() {
        let o = run(
            &sh("sleep 60 & echo $!"),
            &combined(Duration::from_secs(120), 100).drain(Duration::from_millis(300)),
            &|_| {},
        )
        .unwrap();
        let bg: i32 = o.output_lossy().trim().parse().unwrap();
        let alive = !dead(bg);
        let _ = sys::kill(bg, libc::SIGKILL);
        // Had run waited for the pipe, it would have taken the 60 s of the background child.
        assert!(
            alive,
            "background child ended early: the check proves nothing"
        );
        assert!(o.duration < Duration::from_secs(30), "{:?}", o.duration);
        assert_eq!(o.code(), Some(0));
        assert!(!o.timed_out);
    }

    #[test]
    fn no_leftovers_kills_the_rest_of_the_group() {
        let o = run(
            &sh("sleep 60 & echo $!"),
            &combined(Duration::from_secs(120), 100)
                .drain(Duration::from_millis(300))
                .no_leftovers(),
            &|_| {},
        )
        .unwrap();
        let bg: i32 = o.output_lossy().trim().parse().unwrap();
        assert_eq!(o.code(), Some(0));
        assert!(wait_dead(bg), "the background child of the check is gone");
    }

    #[test]
    fn wait_errors() {
        let e = status_of(Err(RecvTimeoutError::Disconnected))
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, WaitError::WaiterGone));
        assert_eq!(
            e.to_string(),
            "the waiter thread ended without an exit status"
        );
        let e = status_of(Ok(Err(io::Error::from_raw_os_error(libc::ECHILD))))
            .unwrap()
            .unwrap_err();
        assert!(matches!(&e, WaitError::Wait(io) if io.raw_os_error() == Some(libc::ECHILD)));
        assert_eq!(e.to_string(), "No child processes (os error 10)");
        assert!(status_of(Err(RecvTimeoutError::Timeout)).is_none());
        let e = WaitError::NotReaped {
            pid: 42,
            after: KILL_WAIT,
        };
        assert_eq!(e.to_string(), "pid 42 still running 2s after KILL");
    }

    #[test]
    fn spawn_failure_is_reported() {
        let e = run(
            &Spec::new("/nonexistent/prog").arg("x"),
            &combined(Duration::from_secs(5), 10),
            &|_| panic!("on_spawn called for a child that did not start"),
        )
        .unwrap_err();
        assert_eq!(e.stage, Stage::Spawn);
        assert_eq!(e.error.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "cannot start /nonexistent/prog: No such file or directory (os error 2)"
        );
        let e = spawn_supervised(
            &Spec::new("/nonexistent/prog"),
            Leftovers::Keep,
            &|_| {},
            |_| {},
        )
        .unwrap_err();
        assert_eq!(e.stage, Stage::Spawn);
    }

    #[test]
    fn supervised_exit_is_notified() {
        let (tx, rx) = mpsc::channel();
        let spawned = Arc::new(Mutex::new(0));
        let s2 = Arc::clone(&spawned);
        let order = Arc::new(Mutex::new(Vec::new()));
        let o2 = Arc::clone(&order);
        let c = spawn_supervised(
            &sh("exit 7"),
            Leftovers::Keep,
            &|pid| {
                *lock(&s2) = pid;
                lock(&order).push("spawn");
            },
            move |e| {
                lock(&o2).push("exit");
                let _ = tx.send(e);
            },
        )
        .unwrap();
        let e = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(e.pid, c.pid());
        assert_eq!(*lock(&spawned), c.pid());
        assert_eq!((e.code(), e.signal()), (Some(7), None));
        assert_eq!(*lock(&order), vec!["spawn", "exit"]);
        assert_eq!(c.exited(), Some(e));
        assert!(!Path::new(&format!("/proc/{}", c.pid())).exists());
    }

    #[test]
    fn supervised_leftovers_are_killed_with_the_leader() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("bg.pid");
        let cmd = format!(
            "sleep 300 & echo $! > {}.tmp; mv {0}.tmp {0}; exit 0",
            pidfile.display()
        );
        let c = spawn_supervised(&sh(&cmd), Leftovers::Kill, &|_| {}, |_| {}).unwrap();
        let e = c.wait_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(e.code(), Some(0));
        wait_file(&pidfile);
        let bg: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_dead(bg), "leftover {bg} survived its leader");
    }

    #[test]
    fn terminate_term_then_kill() {
        let d = tempfile::tempdir().unwrap();
        let ready = d.path().join("ready");
        let stubborn = spawn_supervised(
            &sh(&format!(
                "trap '' TERM; : > {}; exec sleep 300",
                ready.display()
            )),
            Leftovers::Keep,
            &|_| {},
            |_| {},
        )
        .unwrap();
        let polite =
            spawn_supervised(&sh("exec sleep 300"), Leftovers::Keep, &|_| {}, |_| {}).unwrap();
        wait_file(&ready);
        assert_eq!(stubborn.exited(), None);
        let t0 = Instant::now();
        let r = terminate(
            &[stubborn.clone(), polite.clone()],
            Duration::from_millis(500),
        );
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, stubborn.pid());
        assert_eq!(r[0].1.and_then(|e| e.signal()), Some(libc::SIGKILL));
        assert_eq!(r[1].0, polite.pid());
        assert_eq!(r[1].1.and_then(|e| e.signal()), Some(libc::SIGTERM));
        for c in [&stubborn, &polite] {
            assert!(!Path::new(&format!("/proc/{}", c.pid())).exists());
        }
    }
}
