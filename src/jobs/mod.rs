//! Jobs (SPEC §4): intake on the MQTT link thread ([`Jobs::on_message`]: parse, verify,
//! dedupe, DELIVERED or REJECTED), a bounded queue, `job_workers` worker threads that run the
//! job and send exactly one PROCESSED (on `pub/…`, or by REST), and the clean stop.
//!
//! Shared state: the seen-id store (`Mutex`), a gate (`RwLock`) that lets `network` jobs run
//! alone, and the process groups of running shell jobs (to kill them on stop).

pub mod intake;
pub mod network;
pub mod rest;
pub mod seen;
pub mod shell;
pub mod typed;

use crate::agent::Agent;
use crate::proto::{now, Topic};
use intake::{Job, Kind};
use seen::{Seen, SeenStore};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Running jobs get this long on a clean stop before they are killed (SPEC §10).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The job machinery shared by the link thread and the workers.
pub struct Jobs {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Mutex<Receiver<Job>>,
    queued: AtomicUsize,
    active: AtomicUsize,
    accepting: AtomicBool,
    seen: Mutex<SeenStore>,
    gate: RwLock<()>,
    running: Mutex<HashMap<String, i32>>,
    rest_wake: Mutex<Option<Sender<()>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Jobs {
    /// Opens the seen-id store in `state_dir` and starts `job_workers` workers (and the REST
    /// notifier when `rest` is on).
    pub fn start(agent: &Arc<Agent>) -> std::io::Result<Arc<Jobs>> {
        let cfg = agent.cfg();
        let (tx, rx) = mpsc::channel();
        let jobs = Arc::new(Jobs {
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(rx),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            seen: Mutex::new(SeenStore::open(Some(cfg.state_dir.join("seen.json")))),
            gate: RwLock::new(()),
            running: Mutex::new(HashMap::new()),
            rest_wake: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
        });
        let (wake_tx, wake_rx) = mpsc::channel();
        *lock(&jobs.rest_wake) = Some(wake_tx);
        rest::spawn(agent, wake_rx)?;
        let mut handles = Vec::new();
        for i in 0..cfg.job_workers {
            let (a, j) = (agent.clone(), jobs.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("job-worker-{i}"))
                    .spawn(move || j.worker(&a))?,
            );
        }
        *lock(&jobs.workers) = handles;
        Ok(jobs)
    }

    /// Handles one message from `sub/…`.
    pub fn on_message(&self, agent: &Agent, payload: &[u8]) {
        let cfg = agent.cfg();
        let job = match intake::parse(payload, &cfg, now()) {
            Ok(j) => j,
            Err(r) => {
                log::warn!(
                    "job {} rejected: {}",
                    r.id.as_deref().unwrap_or("(no id)"),
                    r.message()
                );
                publish_rejected(agent, r.id.as_deref(), &r.message());
                return;
            }
        };
        if !self.accepting.load(Ordering::SeqCst) {
            publish_rejected(agent, Some(&job.id), "busy: socketman is stopping");
            return;
        }
        let seen = lock(&self.seen).check(&job.id);
        if let Seen::Duplicate(stored) = seen {
            log::info!("job {}: duplicate id, not run again", job.id);
            agent.outbox.publish(
                Topic::Delivery,
                &json!({"id": job.id, "app": "socketman", "timestamp": now(), "event_type": "DELIVERED", "meta": {"delivered": true, "duplicate": true}}),
                1,
                false,
            );
            if let Some(p) = stored {
                self.send_result(agent, &job.id, &p, false);
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
                agent,
                Some(&job.id),
                &format!("busy: {} jobs already waiting", cfg.job_queue),
            );
            return;
        }
        lock(&self.seen).insert(&job.id);
        agent.outbox.publish(
            Topic::Delivery,
            &json!({"id": job.id, "app": "socketman", "timestamp": now(), "event_type": "DELIVERED", "meta": {"delivered": true}}),
            1,
            false,
        );
        log::info!("job {} ({}) accepted", job.id, job.ty);
        self.queued.fetch_add(1, Ordering::SeqCst);
        let id = job.id.clone();
        let sent = lock(&self.tx)
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let p = processed_error(&id, "cmd", "cancelled: socketman is stopping");
            self.finish(agent, &id, &p);
        }
    }

    fn worker(&self, agent: &Arc<Agent>) {
        loop {
            let next = lock(&self.rx).recv_timeout(Duration::from_secs(5));
            let job = match next {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if lock(&self.tx).is_none() {
                        return;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            if !self.accepting.load(Ordering::SeqCst) {
                let p = processed_error(
                    &job.id,
                    &job.ty,
                    "cancelled: socketman is stopping before the job started",
                );
                self.finish(agent, &job.id, &p);
                continue;
            }
            self.active.fetch_add(1, Ordering::SeqCst);
            let processed = if job.kind() == Kind::Network {
                let _alone = match self.gate.write() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                self.execute(agent, &job)
            } else {
                let _shared = match self.gate.read() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                self.execute(agent, &job)
            };
            self.finish(agent, &job.id, &processed);
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Runs a job and builds its PROCESSED message.
    fn execute(&self, agent: &Arc<Agent>, job: &Job) -> Value {
        let cfg = agent.cfg();
        let started = Instant::now();
        log::info!("job {} ({}) running", job.id, job.ty);
        let meta = match job.kind() {
            Kind::Shell | Kind::Network => {
                let cmd = job.msg.clone().unwrap_or_default();
                let id = job.id.clone();
                let run = || {
                    shell::run_shell_tracked(
                        &cmd,
                        Duration::from_secs(job.timeout),
                        cfg.job_output_max,
                        &|pgid| {
                            lock(&self.running).insert(id.clone(), pgid);
                        },
                    )
                };
                // Network jobs: backup, re-check and rollback around the command (SPEC §4.4).
                let (out, network_result) = if job.kind() == Kind::Network {
                    let (out, result) = network::run_guarded(agent, run);
                    (out, Some(result))
                } else {
                    (run(), None)
                };
                lock(&self.running).remove(&job.id);
                let mut m = json!({
                    "msg": out.output,
                    "type": job.ty,
                    "success": out.success(),
                    "exit_code": out.exit_code,
                    "duration_ms": out.duration.as_millis() as u64,
                    "truncated": out.truncated,
                });
                if let Some(r) = network_result {
                    m["result"] = r;
                }
                if out.timed_out {
                    m["error"] = json!("timeout");
                } else if let Some(e) = out.spawn_error {
                    m["error"] = json!(e);
                } else if let Some(sig) = out.signal {
                    m["error"] = json!(if self.accepting.load(Ordering::SeqCst) {
                        format!("killed by signal {sig}")
                    } else {
                        format!("killed by signal {sig}: socketman is stopping")
                    });
                }
                m
            }
            Kind::Typed => match typed::run_job(agent, &job.id, &job.ty, &job.args) {
                Ok(result) => {
                    let (msg, truncated) = cut(&result.to_string(), cfg.job_output_max);
                    json!({"msg": msg, "type": job.ty, "success": true, "exit_code": 0,
                           "duration_ms": started.elapsed().as_millis() as u64, "truncated": truncated, "result": result})
                }
                Err(typed::Failure { error: e, result }) => {
                    let mut m = json!({"msg": e, "type": job.ty, "success": false, "exit_code": 1,
                                 "duration_ms": started.elapsed().as_millis() as u64, "truncated": false, "error": e});
                    // A failure with a result to report anyway (issue 6: rolled-back update).
                    if let Some(r) = result {
                        m["result"] = r;
                    }
                    m
                }
            },
        };
        log::info!(
            "job {} ({}) finished: success={} exit_code={} in {} ms",
            job.id,
            job.ty,
            meta["success"],
            meta["exit_code"],
            meta["duration_ms"]
        );
        json!({"id": job.id, "timestamp": now(), "app": "socketman", "event_type": "PROCESSED", "meta": meta})
    }

    /// Stores and sends the one PROCESSED of a job.
    pub fn finish(&self, agent: &Agent, id: &str, processed: &Value) {
        lock(&self.seen).set_result(id, processed);
        self.send_result(agent, id, processed, true);
    }

    fn send_result(&self, agent: &Agent, id: &str, processed: &Value, log_errors: bool) {
        let cfg = agent.cfg();
        if cfg.rest && cfg.api_url.is_some() {
            if let Err(e) = rest::enqueue(&cfg.state_dir, id, processed) {
                if log_errors {
                    log::error!("job {id}: cannot queue the REST notification ({e}); sending on MQTT instead");
                }
                agent.outbox.publish(Topic::Pub, processed, 1, false);
                return;
            }
            if let Some(w) = lock(&self.rest_wake).as_ref() {
                let _ = w.send(());
            }
        } else {
            agent.outbox.publish(Topic::Pub, processed, 1, false);
        }
    }

    /// Answers jobs that were accepted before a restart and never finished, once.
    pub fn answer_unfinished(&self, agent: &Agent, except: Option<&str>) {
        let ids = lock(&self.seen).unfinished();
        for id in ids.into_iter().filter(|i| Some(i.as_str()) != except) {
            log::warn!(
                "job {id} was interrupted by a restart of socketman; answering it as failed"
            );
            let p = processed_error(
                &id,
                "unknown",
                "interrupted: socketman stopped while the job ran",
            );
            self.finish(agent, &id, &p);
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
        while Instant::now() < grace_end
            && (self.active.load(Ordering::SeqCst) > 0 || self.queued.load(Ordering::SeqCst) > 0)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let groups: Vec<(String, i32)> = lock(&self.running)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (id, pgid) in groups {
            log::warn!("job {id}: still running at stop; killing its process group {pgid}");
            let _ = crate::platform::sys::kill_group(pgid, libc::SIGKILL);
        }
        *lock(&self.tx) = None;
        let handles: Vec<JoinHandle<()>> = lock(&self.workers).drain(..).collect();
        for h in handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
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
    json!({"id": id, "timestamp": now(), "app": "socketman", "event_type": "PROCESSED",
           "meta": {"msg": error, "type": ty, "success": false, "exit_code": null, "duration_ms": 0, "truncated": false, "error": error}})
}

/// Publishes a REJECTED on `pub/…`.
pub fn publish_rejected(agent: &Agent, id: Option<&str>, error: &str) {
    agent.outbox.publish(
        Topic::Pub,
        &json!({"id": id, "timestamp": now(), "app": "socketman", "event_type": "REJECTED", "meta": {"error": error}}),
        1,
        false,
    );
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
