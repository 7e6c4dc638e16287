//! Jobs (SPEC §4): intake on the MQTT link thread ([`Jobs::on_message`]: parse, verify,
//! dedupe, DELIVERED or REJECTED), a bounded queue, `job_workers` worker threads that run the
//! job and send exactly one PROCESSED (on `pub/…`, or by REST), and the clean stop.
//!
//! Shared state: the seen-id store (`Mutex`), a gate (`RwLock`) that lets `network` jobs run
//! alone, and the process groups of running shell jobs (to kill them on stop). The workers
//! get a [`Context`] of narrow handles: config, outbox, stop token, timings, the connectivity
//! watch (for `network` jobs) and the typed-job [`typed::Handlers`]. The link hands
//! messages in through [`crate::link::Inbound`]; nothing here names the agent.

pub mod intake;
pub mod network;
pub mod rest;
pub mod seen;
pub mod typed;

use crate::link::outbox::Outbox;
use crate::net::{NetStatus, RecoveryPause};
use crate::proto::{
    now, Delivered, ErrorCode, JobError, Processed, ProcessedMeta, Rejected, Topic, Wire,
};
use crate::runtime::{lock, ConfigHandle, Shutdown, Timings, Watch};
use intake::{Job, Kind};
use seen::{Seen, SeenStore};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Running jobs get this long on a clean stop before they are killed (SPEC §10).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the job workers are given.
#[derive(Clone)]
pub struct Context {
    pub cfg: ConfigHandle,
    pub outbox: Outbox,
    pub shutdown: Shutdown,
    pub timings: Timings,
    /// Written by `network` jobs' checks too.
    pub net: Watch<NetStatus>,
    pub pause: RecoveryPause,
    pub handlers: typed::Handlers,
}

/// The job machinery shared by the link thread and the workers.
pub struct Jobs {
    ctx: Context,
    /// Notified whenever `queued` or `active` drops (the clean stop waits on it).
    idle: (Mutex<()>, Condvar),
    tx: Mutex<Option<Sender<Job>>>,
    rx: Mutex<Receiver<Job>>,
    queued: AtomicUsize,
    active: AtomicUsize,
    /// Workers waiting for a job.
    waiting: AtomicUsize,
    /// `network` jobs queued or running (shell jobs wait behind them).
    network: AtomicUsize,
    accepting: AtomicBool,
    seen: Mutex<SeenStore>,
    gate: RwLock<()>,
    running: Mutex<HashMap<String, i32>>,
    rest_wake: Mutex<Option<Sender<()>>>,
    threads: Mutex<crate::runtime::Threads>,
}

impl Jobs {
    /// Opens the seen-id store in `state_dir` and starts `job_workers` workers (and the REST
    /// notifier when `rest` is on).
    pub fn start(ctx: Context) -> std::io::Result<Arc<Jobs>> {
        let cfg = ctx.cfg.get();
        let (tx, rx) = mpsc::channel();
        let jobs = Arc::new(Jobs {
            ctx: ctx.clone(),
            idle: (Mutex::new(()), Condvar::new()),
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(rx),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            network: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            seen: Mutex::new(SeenStore::open(Some(cfg.state_dir.join("seen.json")))),
            gate: RwLock::new(()),
            running: Mutex::new(HashMap::new()),
            rest_wake: Mutex::new(None),
            threads: Mutex::new(crate::runtime::Threads::new()),
        });
        let (wake_tx, wake_rx) = mpsc::channel();
        // The stop wakes the notifier too (it then finishes what is queued and ends).
        let stop_wake = wake_tx.clone();
        ctx.shutdown.on_trigger(move || {
            let _ = stop_wake.send(());
        });
        *lock(&jobs.rest_wake) = Some(wake_tx);
        let mut threads = lock(&jobs.threads);
        threads.spawn(
            "rest-notify",
            rest::notifier(
                ctx.cfg.clone(),
                ctx.shutdown.clone(),
                ctx.timings.http_timeout,
                wake_rx,
            ),
        )?;
        for i in 0..cfg.job_workers {
            let j = jobs.clone();
            threads.spawn(&format!("job-worker-{i}"), move || j.worker())?;
        }
        drop(threads);
        Ok(jobs)
    }

    /// Handles one message from `sub/…`.
    pub fn on_message(&self, payload: &[u8]) {
        let ctx = &self.ctx;
        let cfg = ctx.cfg.get();
        let job = match intake::parse(payload, &cfg, now()) {
            Ok(j) => j,
            Err(r) => {
                log::warn!(
                    "job {} rejected: {}",
                    r.id.as_deref().unwrap_or("(no id)"),
                    r.message()
                );
                publish_rejected(&ctx.outbox, r.id.as_deref(), &r.error());
                return;
            }
        };
        if !self.accepting.load(Ordering::SeqCst) {
            publish_rejected(
                &ctx.outbox,
                Some(&job.id),
                &JobError::new(ErrorCode::Busy, "socketman is stopping"),
            );
            return;
        }
        let seen = lock(&self.seen).check(&job.id);
        if let Seen::Duplicate(stored) = seen {
            log::info!("job {}: duplicate id, not run again", job.id);
            ctx.outbox.publish(
                Topic::Delivery,
                &Delivered::new(&job.id, true).to_value(),
                1,
                false,
            );
            if let Some(p) = stored {
                self.send_result(&job.id, &p, false);
            }
            return;
        }
        if self.queued.load(Ordering::SeqCst) >= cfg.job_queue {
            log::warn!(
                "job {} rejected: queue full ({} waiting)",
                job.id,
                cfg.job_queue
            );
            publish_rejected(
                &ctx.outbox,
                Some(&job.id),
                &JobError::new(
                    ErrorCode::Busy,
                    format!("{} jobs already waiting", cfg.job_queue),
                ),
            );
            return;
        }
        // A shell job that a waiting worker takes at once is recorded as started with its
        // acceptance: one fdatasync less. A crash in between answers it "interrupted", as a
        // crash between the "started" line and the spawn would.
        let at_once = job.kind() == Kind::Shell
            && self.network.load(Ordering::SeqCst) == 0
            && self.waiting.load(Ordering::SeqCst) > self.queued.load(Ordering::SeqCst);
        lock(&self.seen).insert(&job.id, &job.ty, payload, at_once);
        ctx.outbox.publish(
            Topic::Delivery,
            &Delivered::new(&job.id, false).to_value(),
            1,
            false,
        );
        log::info!("job {} ({}) accepted", job.id, job.ty);
        self.enqueue(job, "cmd");
    }

    /// Hands an accepted job to the workers; when they are gone (stopping) it is answered
    /// as cancelled, with `ty` as its type.
    fn enqueue(&self, job: Job, ty: &str) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let network = job.kind() == Kind::Network;
        if network {
            self.network.fetch_add(1, Ordering::SeqCst);
        }
        let id = job.id.clone();
        let sent = lock(&self.tx)
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            if network {
                self.network.fetch_sub(1, Ordering::SeqCst);
            }
            let p = processed_error(&id, ty, "cancelled: socketman is stopping");
            self.finish(&id, &p);
        }
    }

    /// Wakes [`Jobs::stop`] after `queued` or `active` dropped.
    fn notify_idle(&self) {
        let _g = lock(&self.idle.0);
        self.idle.1.notify_all();
    }

    fn worker(&self) {
        let ctx = &self.ctx;
        loop {
            // Blocks until a job arrives or the sender is dropped at stop.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let next = lock(&self.rx).recv();
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            let Ok(job) = next else { return };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let network = job.kind() == Kind::Network;
            if !self.accepting.load(Ordering::SeqCst) {
                let p = processed_error(
                    &job.id,
                    &job.ty,
                    "cancelled: socketman is stopping before the job started",
                );
                self.finish(&job.id, &p);
                if network {
                    self.network.fetch_sub(1, Ordering::SeqCst);
                }
                self.notify_idle();
                continue;
            }
            self.active.fetch_add(1, Ordering::SeqCst);
            // On disk before anything runs: after a crash from here on, the job is answered
            // as interrupted; before it, it runs after the restart.
            lock(&self.seen).started(&job.id);
            let processed = if network {
                let _alone = match self.gate.write() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                self.execute(ctx, &job)
            } else {
                let _shared = match self.gate.read() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                self.execute(ctx, &job)
            };
            if let Some(processed) = processed {
                self.finish(&job.id, &processed);
            }
            if network {
                self.network.fetch_sub(1, Ordering::SeqCst);
            }
            self.active.fetch_sub(1, Ordering::SeqCst);
            self.notify_idle();
        }
    }

    /// Runs a job and builds its PROCESSED message (`None`: answered by the next process).
    fn execute(&self, ctx: &Context, job: &Job) -> Option<Value> {
        let cfg = ctx.cfg.get();
        let started = Instant::now();
        log::info!("job {} ({}) running", job.id, job.ty);
        let meta = match job.kind() {
            Kind::Shell | Kind::Network => {
                let cmd = job.msg.clone().unwrap_or_default();
                let id = job.id.clone();
                let run = || {
                    crate::platform::shell::run_shell_tracked(
                        &cmd,
                        Duration::from_secs(job.timeout),
                        cfg.output_limit(),
                        &|pgid| {
                            lock(&self.running).insert(id.clone(), pgid);
                        },
                    )
                };
                // Network jobs: backup, re-check and rollback around the command (SPEC §4.4).
                let (out, network_result) = if job.kind() == Kind::Network {
                    let (out, result) = network::run_guarded(ctx, run);
                    (out, Some(result))
                } else {
                    (run(), None)
                };
                lock(&self.running).remove(&job.id);
                let error = if out.timed_out {
                    Some("timeout".to_string())
                } else if let Some(e) = out.spawn_error.clone() {
                    Some(e)
                } else {
                    out.signal.map(|sig| {
                        if self.accepting.load(Ordering::SeqCst) {
                            format!("killed by signal {sig}")
                        } else {
                            format!("killed by signal {sig}: socketman is stopping")
                        }
                    })
                };
                ProcessedMeta {
                    success: out.success(),
                    exit_code: out.exit_code,
                    duration_ms: out.duration.as_millis() as u64,
                    truncated: out.truncated,
                    msg: out.output,
                    ty: job.ty.clone(),
                    result: network_result,
                    error,
                }
            }
            Kind::Typed => match typed::run_job(&ctx.handlers, &job.id, &job.ty, &job.args) {
                Ok(typed::Done::AnsweredLater) => {
                    log::info!("job {} ({}): answered by the next process", job.id, job.ty);
                    return None;
                }
                Ok(typed::Done::Result(result)) => {
                    let (msg, truncated) = cut(&result.to_string(), cfg.output_limit());
                    ProcessedMeta {
                        msg,
                        ty: job.ty.clone(),
                        success: true,
                        exit_code: Some(0),
                        duration_ms: started.elapsed().as_millis() as u64,
                        truncated,
                        result: Some(result),
                        error: None,
                    }
                }
                // A failure may carry a result to report anyway (a rolled-back update).
                Err(typed::Failure { error: e, result }) => ProcessedMeta {
                    msg: e.clone(),
                    ty: job.ty.clone(),
                    success: false,
                    exit_code: Some(1),
                    duration_ms: started.elapsed().as_millis() as u64,
                    truncated: false,
                    result,
                    error: Some(e),
                },
            },
        };
        log::info!(
            "job {} ({}) finished: success={} exit_code={} in {} ms",
            job.id,
            job.ty,
            meta.success,
            meta.exit_code.map_or("null".to_string(), |c| c.to_string()),
            meta.duration_ms
        );
        Some(Processed::new(&job.id, meta).to_value())
    }

    /// Stores and sends the one PROCESSED of a job.
    pub fn finish(&self, id: &str, processed: &Value) {
        lock(&self.seen).set_result(id, processed);
        self.send_result(id, processed, true);
    }

    /// True when job `id` already has its PROCESSED stored (it was answered, possibly by an
    /// earlier process: the seen-id journal survives restarts).
    pub fn answered(&self, id: &str) -> bool {
        matches!(lock(&self.seen).check(id), Seen::Duplicate(Some(_)))
    }

    /// [`Jobs::finish`], then waits until the outbox handed everything to the broker (QoS 1:
    /// acknowledged) or `deadline` passes or `up()` turns false. True when acknowledged. For
    /// answers owed across a restart: their marker is removed only after this.
    pub fn finish_acked(
        &self,
        id: &str,
        processed: &Value,
        deadline: Instant,
        up: impl Fn() -> bool,
    ) -> bool {
        self.finish(id, processed);
        self.ctx.outbox.wait_drained(deadline, up)
    }

    fn send_result(&self, id: &str, processed: &Value, log_errors: bool) {
        let ctx = &self.ctx;
        let cfg = ctx.cfg.get();
        if cfg.rest && cfg.api_url.is_some() {
            if let Err(e) = rest::enqueue(&cfg.state_dir, id, processed) {
                if log_errors {
                    log::error!("job {id}: cannot queue the REST notification ({e}); sending on MQTT instead");
                }
                ctx.outbox.publish(Topic::Pub, processed, 1, false);
                return;
            }
            if let Some(w) = lock(&self.rest_wake).as_ref() {
                let _ = w.send(());
            }
        } else {
            ctx.outbox.publish(Topic::Pub, processed, 1, false);
        }
    }

    /// Jobs accepted before a restart that never finished: those that had started are
    /// answered once as interrupted (with their type); those that had not are queued again,
    /// in their order, checked again as a new message would be (signature, `job_max_age`):
    /// nothing of them ran, so they run now. `except`: answered elsewhere (a self-update, a
    /// firmware upgrade or a config change owed by this start).
    pub fn resume_unfinished(&self, except: &[String]) {
        let pending = lock(&self.seen).unfinished();
        let cfg = self.ctx.cfg.get();
        for (id, p) in pending.into_iter().filter(|(i, _)| !except.contains(i)) {
            let payload = match p.payload {
                Some(payload) if !p.started => payload,
                _ => {
                    log::warn!(
                        "job {id} ({}) was interrupted by a restart of socketman; answering it \
                         as failed",
                        p.ty
                    );
                    let e = processed_error(
                        &id,
                        &p.ty,
                        "interrupted: socketman stopped while the job ran",
                    );
                    self.finish(&id, &e);
                    continue;
                }
            };
            match intake::parse(payload.as_bytes(), &cfg, now()) {
                Ok(job) if job.id == id => {
                    log::info!(
                        "job {id} ({}) was accepted but had not started when socketman \
                         stopped; running it now",
                        job.ty
                    );
                    self.enqueue(job, &p.ty);
                }
                Ok(_) => {
                    let e = processed_error(&id, &p.ty, "not run after the restart: id changed");
                    self.finish(&id, &e);
                }
                Err(r) => {
                    log::warn!(
                        "job {id} had not started when socketman stopped and is no longer \
                         valid: {}",
                        r.message()
                    );
                    let e = processed_error(
                        &id,
                        &p.ty,
                        &format!("not run after the restart: {}", r.message()),
                    );
                    self.finish(&id, &e);
                }
            }
        }
    }

    /// Remembers `id` with its PROCESSED (jobs answered outside the workers, e.g. updates).
    pub fn record(&self, id: &str, processed: &Value) {
        lock(&self.seen).set_result(id, processed);
    }

    /// Clean stop (SPEC §10): no new jobs; queued ones are answered as cancelled; running ones
    /// get [`STOP_GRACE`], then their process groups are killed; waits for every answer.
    pub fn stop(&self, deadline: Instant) {
        self.accepting.store(false, Ordering::SeqCst);
        let grace_end = (Instant::now() + STOP_GRACE).min(deadline);
        let busy =
            || self.active.load(Ordering::SeqCst) > 0 || self.queued.load(Ordering::SeqCst) > 0;
        let mut g = lock(&self.idle.0);
        while busy() {
            let now = Instant::now();
            if now >= grace_end {
                break;
            }
            g = match self.idle.1.wait_timeout(g, grace_end - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(g);
        let groups: Vec<(String, i32)> = lock(&self.running)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (id, pgid) in groups {
            log::warn!("job {id}: still running at stop; killing its process group {pgid}");
            let _ = crate::platform::sys::kill_group(pgid, libc::SIGKILL);
        }
        *lock(&self.tx) = None;
        // Killed and queued jobs are answered by their workers: wait for those answers.
        let mut g = lock(&self.idle.0);
        while busy() {
            let now = Instant::now();
            if now >= deadline {
                log::warn!("stop: jobs still unanswered at the stop deadline");
                break;
            }
            g = match self.idle.1.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(g);
        *lock(&self.rest_wake) = None;
    }

    /// Joins the workers and the REST notifier (after [`Jobs::stop`] and the stop token),
    /// waiting at most until `deadline`.
    pub fn join(&self, deadline: Instant) {
        let threads = std::mem::take(&mut *lock(&self.threads));
        threads.join_all(deadline);
    }

    /// Jobs waiting and running (healthz).
    pub fn load(&self) -> (usize, usize) {
        (
            self.queued.load(Ordering::SeqCst),
            self.active.load(Ordering::SeqCst),
        )
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), true)
}

/// A failed PROCESSED that ran nothing.
pub fn processed_error(id: &str, ty: &str, error: &str) -> Value {
    Processed::new(id, ProcessedMeta::failure(ty, error)).to_value()
}

/// Publishes a REJECTED on `pub/…`.
pub fn publish_rejected(outbox: &Outbox, id: Option<&str>, error: &JobError) {
    outbox.publish(Topic::Pub, &Rejected::new(id, error).to_value(), 1, false);
}

impl crate::link::Inbound for Jobs {
    fn on_job(&self, payload: &[u8]) {
        self.on_message(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("héllo", 2), ("h".to_string(), true));
        assert_eq!(cut("abc", 3), ("abc".to_string(), false));
    }
}
