//! The [`Outbox`]: the one way any thread sends a message to the broker. A cheap clonable
//! handle; the `mqtt-out` thread owns the connection and drains it. While the link is down,
//! messages wait in a bounded queue (results are never dropped from it; status events are,
//! oldest first, with a log line).
#![forbid(unsafe_code)]

use crate::proto::{event, Topic};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// One message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: Topic,
    pub payload: Vec<u8>,
    pub qos: i32,
    pub retain: bool,
    /// Failed publishes of this message so far (the broker refused or dropped it).
    pub attempts: u32,
}

/// Status events kept while the link is down; older ones are dropped beyond this.
const MAX_QUEUED_EVENTS: usize = 256;

#[derive(Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// A message was taken by [`Outbox::pop`] and is not yet [`Outbox::done`] or back.
    in_flight: bool,
    closed: bool,
    dropped_events: u64,
}

/// Clonable handle to the outgoing queue.
#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<(Mutex<Queue>, Condvar)>,
    status_qos: Arc<std::sync::atomic::AtomicI32>,
}

impl Outbox {
    pub fn new(status_qos: i32) -> Self {
        let o = Outbox::default();
        o.set_status_qos(status_qos);
        o
    }

    /// QoS of PING and events (`qos` config key); changes on HUP.
    pub fn set_status_qos(&self, qos: i32) {
        self.status_qos
            .store(qos, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues `payload` for `topic`.
    pub fn publish(&self, topic: Topic, payload: &Value, qos: i32, retain: bool) {
        let msg = Outgoing {
            topic,
            payload: payload.to_string().into_bytes(),
            qos,
            retain,
            attempts: 0,
        };
        let (lock, cv) = &*self.inner;
        let mut q = match lock.lock() {
            Ok(q) => q,
            Err(p) => p.into_inner(),
        };
        if topic == Topic::Status {
            let events = q.items.iter().filter(|m| m.topic == Topic::Status).count();
            if events >= MAX_QUEUED_EVENTS {
                if let Some(pos) = q.items.iter().position(|m| m.topic == Topic::Status) {
                    q.items.remove(pos);
                    q.dropped_events += 1;
                    // The queue fills while the broker is unreachable, or while events
                    // come faster than they are published: say which, and only sparingly.
                    let n = q.dropped_events;
                    if n <= 10 || n.is_multiple_of(1000) {
                        log::warn!(
                            "status event queue full ({MAX_QUEUED_EVENTS} waiting, {}): oldest \
                             event dropped ({n} so far)",
                            if q.in_flight {
                                "publishing"
                            } else {
                                "not being published: broker unreachable?"
                            }
                        );
                    }
                }
            }
        }
        q.items.push_back(msg);
        cv.notify_all();
    }

    /// Publishes a status event (`status/…`, `qos` from the config, not retained).
    pub fn status_event(&self, event_type: &str, meta: Value) {
        let qos = self.status_qos.load(std::sync::atomic::Ordering::Relaxed);
        self.publish(Topic::Status, &event(event_type, meta), qos, false);
    }

    /// Takes the oldest message, waiting up to `timeout`. `None` on timeout or when closed.
    /// The caller reports the message [`Outbox::done`] or puts it back with
    /// [`Outbox::unpop`].
    pub fn pop(&self, timeout: Duration) -> Option<Outgoing> {
        let deadline = std::time::Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut q = crate::runtime::lock(lock);
        while q.items.is_empty() && !q.closed {
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            q = match cv.wait_timeout(q, deadline - now) {
                Ok((q, _)) => q,
                Err(p) => p.into_inner().0,
            };
        }
        let m = q.items.pop_front();
        q.in_flight = m.is_some();
        m
    }

    /// Takes the oldest message, waiting for one; `None` once closed.
    pub fn pop_wait(&self) -> Option<Outgoing> {
        let (lock, cv) = &*self.inner;
        let mut q = crate::runtime::lock(lock);
        while q.items.is_empty() && !q.closed {
            q = match cv.wait(q) {
                Ok(q) => q,
                Err(p) => p.into_inner(),
            };
        }
        let m = q.items.pop_front();
        q.in_flight = m.is_some();
        m
    }

    /// The message taken last was published (or given up).
    pub fn done(&self) {
        let (lock, cv) = &*self.inner;
        crate::runtime::lock(lock).in_flight = false;
        cv.notify_all();
    }

    /// Puts a message that could not be published back at the front.
    pub fn unpop(&self, msg: Outgoing) {
        let (lock, cv) = &*self.inner;
        let mut q = crate::runtime::lock(lock);
        q.items.push_front(msg);
        q.in_flight = false;
        cv.notify_all();
    }

    /// Wakes the waiters of [`Outbox::wait_drained`] (the link went down).
    pub fn wake(&self) {
        let (lock, cv) = &*self.inner;
        let _g = crate::runtime::lock(lock);
        cv.notify_all();
    }

    /// Waits until every queued message is published (`true`), or until `deadline` or
    /// `up()` turns false (`false`: the link is down, nothing more will go out). The link
    /// calls [`Outbox::wake`] when it goes down.
    pub fn wait_drained(&self, deadline: std::time::Instant, up: impl Fn() -> bool) -> bool {
        let (lock, cv) = &*self.inner;
        let mut q = crate::runtime::lock(lock);
        loop {
            if q.items.is_empty() && !q.in_flight {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline || !up() {
                return false;
            }
            q = match cv.wait_timeout(q, deadline - now) {
                Ok((q, _)) => q,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        let (lock, _) = &*self.inner;
        lock.lock().map(|q| q.items.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every message waiting, removed (tests; shutdown).
    pub fn drain(&self) -> Vec<Outgoing> {
        let (lock, _) = &*self.inner;
        match lock.lock() {
            Ok(mut q) => q.items.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Wakes anyone waiting in [`Outbox::pop`] for good.
    pub fn close(&self) {
        let (lock, cv) = &*self.inner;
        if let Ok(mut q) = lock.lock() {
            q.closed = true;
        }
        cv.notify_all();
    }
}

/// `msg` made to fit in `max` bytes: an answer on `pub/…` has its `meta.msg` cut (and, if
/// that is not enough, its `meta.result` dropped), with `meta.truncated: true`. `Err` (why)
/// for anything else that does not fit.
pub fn fit(msg: Outgoing, max: usize) -> Result<Outgoing, String> {
    if msg.payload.len() <= max {
        return Ok(msg);
    }
    let size = msg.payload.len();
    let too_big = || format!("{size} bytes, more than mqtt_max_payload ({max})");
    if msg.topic != Topic::Pub {
        return Err(too_big());
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&msg.payload) else {
        return Err(too_big());
    };
    let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) else {
        return Err(too_big());
    };
    meta.insert("truncated".into(), Value::Bool(true));
    let text = meta
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let with = |meta_msg: &str, result: bool, v: &Value| -> Vec<u8> {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
            m.insert("msg".into(), Value::String(meta_msg.to_string()));
            if !result {
                m.remove("result");
            }
        }
        v.to_string().into_bytes()
    };
    for keep_result in [true, false] {
        // The longest prefix of `msg` that fits, by bisection on its byte length.
        let (mut lo, mut hi) = (0usize, text.len());
        let mut best: Option<Vec<u8>> = None;
        while lo <= hi {
            let mid = (lo + hi) / 2;
            let mut end = mid;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let p = with(&text[..end], keep_result, &v);
            if p.len() <= max {
                best = Some(p);
                lo = mid + 1;
            } else if mid == 0 {
                break;
            } else {
                hi = mid - 1;
            }
        }
        if let Some(payload) = best {
            return Ok(Outgoing { payload, ..msg });
        }
    }
    Err(too_big())
}

/// An answer on `pub/…` without its `meta.result` (and with `meta.truncated: true`), for a
/// second try after the broker refused it; `None` when there is no result to leave out.
pub fn without_result(msg: &Outgoing) -> Option<Outgoing> {
    if msg.topic != Topic::Pub {
        return None;
    }
    let mut v = serde_json::from_slice::<Value>(&msg.payload).ok()?;
    let meta = v.get_mut("meta")?.as_object_mut()?;
    meta.remove("result")?;
    meta.insert("truncated".into(), Value::Bool(true));
    Some(Outgoing {
        payload: v.to_string().into_bytes(),
        ..msg.clone()
    })
}

/// An answer on `pub/…` cut to at most `max` bytes (see [`fit`]), for one more try after
/// the broker dropped the connection for it; `None` for anything else, or when it is no
/// longer than `max` already (sending the same again would change nothing).
pub fn cut_short(msg: &Outgoing, max: usize) -> Option<Outgoing> {
    if msg.topic != Topic::Pub || msg.payload.len() <= max {
        return None;
    }
    fit(msg.clone(), max).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn queue_order_and_event_bound() {
        let o = Outbox::new(1);
        o.publish(Topic::Pub, &json!({"id": "a"}), 1, false);
        for i in 0..(MAX_QUEUED_EVENTS + 10) {
            o.status_event("PING", json!({ "i": i }));
        }
        o.publish(Topic::Pub, &json!({"id": "b"}), 1, false);
        let all = o.drain();
        assert_eq!(all.len(), MAX_QUEUED_EVENTS + 2);
        assert_eq!(all[0].topic, Topic::Pub, "results are never dropped");
        assert_eq!(all.last().map(|m| m.topic), Some(Topic::Pub));
        let first_event: Value = serde_json::from_slice(&all[1].payload).unwrap();
        assert_eq!(first_event["meta"]["i"], 10, "oldest events went first");
    }

    fn answer(msg: &str, result: Option<Value>) -> Outgoing {
        let mut meta = json!({"msg": msg, "success": true, "truncated": false, "type": "cmd"});
        if let Some(r) = result {
            meta["result"] = r;
        }
        Outgoing {
            topic: Topic::Pub,
            payload: json!({"id": "j1", "event_type": "PROCESSED", "meta": meta})
                .to_string()
                .into_bytes(),
            qos: 1,
            retain: false,
            attempts: 0,
        }
    }

    #[test]
    fn fit_cuts_answers_and_refuses_big_events() {
        let small = answer("hi", None);
        assert_eq!(fit(small.clone(), 1000), Ok(small));
        // Control characters grow sixfold when escaped: the cut is on the escaped size.
        let big = answer(&"\u{1}é".repeat(3000), None);
        let f = fit(big, 2000).unwrap();
        assert!(
            f.payload.len() <= 2000 && f.payload.len() > 1900,
            "{}",
            f.payload.len()
        );
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(v["meta"]["truncated"], true);
        assert_eq!(v["id"], "j1");
        assert!(v["meta"]["msg"].as_str().unwrap().starts_with("\u{1}é"));
        // A result too big on its own is dropped.
        let r = answer("x", Some(json!({"blob": "y".repeat(5000)})));
        let v: Value = serde_json::from_slice(&fit(r, 1000).unwrap().payload).unwrap();
        assert!(v["meta"].get("result").is_none());
        assert_eq!(v["meta"]["msg"], "x");
        let ev = Outgoing {
            topic: Topic::Status,
            ..answer(&"z".repeat(3000), None)
        };
        assert!(fit(ev, 1000).unwrap_err().contains("mqtt_max_payload"));
    }

    #[test]
    fn cut_short_only_for_long_answers() {
        let long = answer(&"y".repeat(5000), Some(json!({"k": "v"})));
        let short = cut_short(&long, 1024).unwrap();
        assert!(short.payload.len() <= 1024, "{}", short.payload.len());
        let v: Value = serde_json::from_slice(&short.payload).unwrap();
        assert_eq!(v["meta"]["truncated"], true);
        assert_eq!(v["id"], "j1");
        assert!(v["meta"]["msg"].as_str().unwrap().starts_with("yyy"));
        assert!(cut_short(&answer("small", None), 1024).is_none());
        let event = Outgoing {
            topic: Topic::Status,
            ..long
        };
        assert!(cut_short(&event, 1024).is_none());
    }

    #[test]
    fn without_result_only_for_answers_with_one() {
        assert_eq!(without_result(&answer("a", None)), None);
        let s = without_result(&answer("a", Some(json!([1, 2])))).unwrap();
        let v: Value = serde_json::from_slice(&s.payload).unwrap();
        assert!(v["meta"].get("result").is_none());
        assert_eq!(
            (v["meta"]["truncated"].clone(), v["meta"]["msg"].clone()),
            (json!(true), json!("a"))
        );
    }

    #[test]
    fn pop_times_out_when_empty() {
        let o = Outbox::new(0);
        assert!(o.pop(Duration::from_millis(10)).is_none());
        o.status_event("X", json!({}));
        assert_eq!(o.pop(Duration::from_millis(10)).map(|m| m.qos), Some(0));
    }
}
