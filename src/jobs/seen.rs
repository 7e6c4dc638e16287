//! The last 1024 job ids (SPEC §4.2), kept across restarts in `state_dir`, with the PROCESSED
//! message of each finished job while they fit in a byte budget (older results are forgotten
//! first, in memory and on disk; the id itself is kept).
//!
//! On disk: a snapshot `seen.json` (written atomically) plus a journal `seen.log` of one JSON
//! line per change, appended and `fdatasync`ed, so a job costs two or three small appends
//! (accepted, started — one line when a free worker takes it at once — and its result) rather
//! than rewrites of the whole list. When the journal passes [`JOURNAL_MAX`] it is folded into a
//! new snapshot and removed. Replaying a journal over a snapshot is idempotent, so a crash
//! between the two steps is harmless; a torn last line (power cut) is skipped.
//! Shared by the link thread (intake) and the workers behind a `Mutex`.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Ids remembered.
pub const MAX_IDS: usize = 1024;
/// Bytes of stored PROCESSED messages kept (in memory and on disk: flash and RAM are small).
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// Bytes of messages of accepted, not yet started jobs kept for a run after a crash; a job
/// beyond it is kept without its message (after a crash it is answered as interrupted).
pub const MAX_PENDING_BYTES: usize = 512 * 1024;
/// Journal size at which it is folded into the snapshot.
pub const JOURNAL_MAX: u64 = 1 << 20;

/// What the store knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    New,
    /// Seen before; the stored PROCESSED when known.
    Duplicate(Option<Value>),
}

/// A job accepted and not finished (SPEC §4.2; issue 14: jobs not started when socketman
/// stopped run after the restart).
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Its type (`cmd` for shell jobs), for the answer if it is interrupted.
    pub ty: String,
    /// The message as received, until it starts (`None` once started, or from an older
    /// journal that did not keep it).
    pub payload: Option<String>,
    pub started: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// Accepted, not finished.
    Pending(Pending),
    /// Finished; the PROCESSED and its size, while within the budget.
    Done(Option<(Value, usize)>),
}

pub struct SeenStore {
    path: Option<PathBuf>,
    order: VecDeque<String>,
    entries: HashMap<String, Entry>,
    result_bytes: usize,
    journal_bytes: u64,
}

/// A [`Pending`] from a journal line or snapshot entry (`{"id","type","job","started"}`;
/// an older store wrote only the id: type unknown, not re-runnable).
fn pending_of(v: &Value) -> Pending {
    let started = v["started"] == true;
    Pending {
        ty: v["type"].as_str().unwrap_or("unknown").to_string(),
        payload: (!started)
            .then(|| v["job"].as_str().map(str::to_string))
            .flatten(),
        started,
    }
}

impl SeenStore {
    /// Loads the store from `path` (the snapshot; the journal sits beside it). A missing or
    /// unreadable file gives an empty store, logged.
    pub fn open(path: Option<PathBuf>) -> Self {
        let mut s = SeenStore {
            path,
            order: VecDeque::new(),
            entries: HashMap::new(),
            result_bytes: 0,
            journal_bytes: 0,
        };
        let Some(p) = s.path.clone() else { return s };
        match crate::platform::fs::read_json(&p) {
            Ok(Some(v)) => {
                for id in v["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    let pending = v["pending"]
                        .as_array()
                        .and_then(|p| p.iter().find(|x| *x == id || x["id"] == id));
                    match v["results"].get(id).filter(|r| !r.is_null()) {
                        Some(r) => s.apply_result(id, r.clone()),
                        None => match pending {
                            Some(p) => s.apply_insert(id, pending_of(p)),
                            None => s.apply_done_unknown(id),
                        },
                    }
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!(
                "seen job ids {}: {e}; starting with an empty list",
                p.display()
            ),
        }
        let journal = s.journal_path();
        if let Some(j) = journal {
            if let Ok(text) = std::fs::read_to_string(&j) {
                s.journal_bytes = text.len() as u64;
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<Value>(line) else {
                        log::warn!("seen job ids {}: a torn line skipped", j.display());
                        continue;
                    };
                    let Some(id) = v["id"].as_str() else { continue };
                    // {"id","result"}; {"id","type",…} accepted (maybe started at once);
                    // {"id","started"} started later; {"id"} from an older store.
                    match v.get("result") {
                        Some(r) => s.apply_result(id, r.clone()),
                        None if v.get("type").is_none() && v["started"] == true => {
                            s.apply_started(id)
                        }
                        None => s.apply_insert(id, pending_of(&v)),
                    }
                }
            }
        }
        s
    }

    fn journal_path(&self) -> Option<PathBuf> {
        self.path.as_ref().map(|p| p.with_extension("log"))
    }

    pub fn check(&self, id: &str) -> Seen {
        match self.entries.get(id) {
            None => Seen::New,
            Some(Entry::Pending(_)) | Some(Entry::Done(None)) => Seen::Duplicate(None),
            Some(Entry::Done(Some((r, _)))) => Seen::Duplicate(Some(r.clone())),
        }
    }

    fn push_id(&mut self, id: &str) {
        self.order.push_back(id.to_string());
        while self.order.len() > MAX_IDS {
            if let Some(old) = self.order.pop_front() {
                if let Some(Entry::Done(Some((_, n)))) = self.entries.remove(&old) {
                    self.result_bytes -= n;
                }
            }
        }
    }

    fn apply_insert(&mut self, id: &str, p: Pending) {
        if !self.entries.contains_key(id) {
            self.entries.insert(id.to_string(), Entry::Pending(p));
            self.push_id(id);
        }
    }

    fn apply_started(&mut self, id: &str) {
        if let Some(Entry::Pending(p)) = self.entries.get_mut(id) {
            p.started = true;
            p.payload = None;
        }
    }

    fn apply_done_unknown(&mut self, id: &str) {
        if !self.entries.contains_key(id) {
            self.entries.insert(id.to_string(), Entry::Done(None));
            self.push_id(id);
        }
    }

    fn apply_result(&mut self, id: &str, r: Value) {
        let size = r.to_string().len();
        if !self.entries.contains_key(id) {
            self.push_id(id);
        }
        if let Some(Entry::Done(Some((_, n)))) = self.entries.get(id) {
            self.result_bytes -= *n;
        }
        self.entries
            .insert(id.to_string(), Entry::Done(Some((r, size))));
        self.result_bytes += size;
        // Over the budget: forget the oldest results (never the newest one).
        if self.result_bytes > MAX_RESULT_BYTES {
            let ids: Vec<String> = self.order.iter().cloned().collect();
            for old in ids.iter().filter(|o| o.as_str() != id) {
                if self.result_bytes <= MAX_RESULT_BYTES {
                    break;
                }
                if let Some(e @ Entry::Done(Some(_))) = self.entries.get_mut(old) {
                    if let Entry::Done(Some((_, n))) = e {
                        self.result_bytes -= *n;
                    }
                    *e = Entry::Done(None);
                }
            }
        }
    }

    /// Records a newly accepted job (no result yet) of type `ty`, with the message as
    /// received so that it can run after a crash if it had not started. `started`: a free
    /// worker takes it at once, so it is recorded as started in the same line (one
    /// `fdatasync` instead of two; [`SeenStore::started`] is then a no-op).
    pub fn insert(&mut self, id: &str, ty: &str, payload: &[u8], started: bool) {
        if self.entries.contains_key(id) {
            return;
        }
        if started {
            self.log(&json!({ "id": id, "type": ty, "started": true }));
            self.apply_insert(
                id,
                Pending {
                    ty: ty.to_string(),
                    payload: None,
                    started: true,
                },
            );
            return;
        }
        let held: usize = self
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::Pending(p) => p.payload.as_ref().map(String::len),
                _ => None,
            })
            .sum();
        let payload = (held + payload.len() <= MAX_PENDING_BYTES)
            .then(|| String::from_utf8_lossy(payload).into_owned());
        self.log(&json!({ "id": id, "type": ty, "job": payload }));
        self.apply_insert(
            id,
            Pending {
                ty: ty.to_string(),
                payload,
                started: false,
            },
        );
    }

    /// Forgets an id (a job accepted and then not run).
    pub fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            if let Entry::Done(Some((_, n))) = e {
                self.result_bytes -= n;
            }
            self.order.retain(|i| i != id);
            self.snapshot();
        }
    }

    /// Stores the PROCESSED message of a finished job.
    pub fn set_result(&mut self, id: &str, processed: &Value) {
        self.apply_result(id, processed.clone());
        self.log(&json!({"id": id, "result": processed}));
    }

    /// Jobs accepted earlier that never finished (the agent stopped before or while they
    /// ran), oldest first.
    pub fn unfinished(&self) -> Vec<(String, Pending)> {
        self.order
            .iter()
            .filter_map(|id| match self.entries.get(id) {
                Some(Entry::Pending(p)) => Some((id.clone(), p.clone())),
                _ => None,
            })
            .collect()
    }

    /// Records that the job `id` starts now (before its process is spawned), so that after
    /// a crash it is answered as interrupted rather than run a second time.
    pub fn started(&mut self, id: &str) {
        if let Some(Entry::Pending(p)) = self.entries.get_mut(id) {
            if p.started {
                return;
            }
            p.started = true;
            p.payload = None;
            self.log(&json!({"id": id, "started": true}));
        }
    }

    /// Bytes of PROCESSED messages held (bounded by [`MAX_RESULT_BYTES`]).
    pub fn result_bytes(&self) -> usize {
        self.result_bytes
    }

    fn log(&mut self, line: &Value) {
        let Some(j) = self.journal_path() else { return };
        let mut text = line.to_string();
        text.push('\n');
        let res = (|| {
            if let Some(d) = j.parent() {
                crate::platform::fs::ensure_dir(d)?;
            }
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&j)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()
        })();
        match res {
            Ok(()) => self.journal_bytes += text.len() as u64,
            Err(e) => log::error!("cannot record job id in {}: {e}", j.display()),
        }
        if self.journal_bytes > JOURNAL_MAX {
            self.snapshot();
        }
    }

    /// Writes the whole store as the snapshot and removes the journal.
    fn snapshot(&mut self) {
        let (Some(p), Some(j)) = (self.path.clone(), self.journal_path()) else {
            return;
        };
        let mut results = serde_json::Map::new();
        let mut pending = Vec::new();
        for id in &self.order {
            match self.entries.get(id) {
                Some(Entry::Done(Some((r, _)))) => {
                    results.insert(id.clone(), r.clone());
                }
                Some(Entry::Pending(p)) => pending.push(json!({
                    "id": id, "type": p.ty, "job": p.payload, "started": p.started,
                })),
                _ => {}
            }
        }
        let doc = json!({"ids": self.order, "pending": pending, "results": results});
        match crate::platform::fs::write_atomic(&p, doc.to_string().as_bytes()) {
            Ok(()) => {
                let _ = std::fs::remove_file(&j);
                self.journal_bytes = 0;
            }
            Err(e) => log::error!("cannot save seen job ids to {}: {e}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: Vec<(String, Pending)>) -> Vec<String> {
        v.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn unstarted_jobs_keep_their_message_started_ones_only_their_type() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seen.json");
        let mut s = SeenStore::open(Some(p.clone()));
        s.insert("a", "cmd", br#"{"id":"a","meta":{"msg":"true"}}"#, false);
        s.insert(
            "b",
            "process.list",
            br#"{"id":"b","meta":{"type":"process.list"}}"#,
            false,
        );
        s.insert("c", "cmd", b"{}", false);
        // Taken by a free worker at once: accepted and started in one line.
        s.insert("d", "cmd", br#"{"id":"d"}"#, true);
        s.started("d");
        s.started("a");
        s.set_result("c", &json!({"id": "c"}));
        let lines = std::fs::read_to_string(p.with_extension("log")).unwrap();
        assert_eq!(lines.matches("\"d\"").count(), 1, "{lines}");
        for round in 0..2 {
            let mut s2 = SeenStore::open(Some(p.clone()));
            let u = s2.unfinished();
            assert_eq!(ids(u.clone()), vec!["a", "b", "d"], "round {round}");
            let started = Pending {
                ty: "cmd".into(),
                payload: None,
                started: true,
            };
            assert_eq!(u[0].1, started);
            assert_eq!(u[2].1, started);
            assert_eq!(u[1].1.ty, "process.list");
            assert!(!u[1].1.started);
            assert_eq!(
                u[1].1.payload.as_deref(),
                Some(r#"{"id":"b","meta":{"type":"process.list"}}"#)
            );
            // The same state from a snapshot as from the journal.
            s2.snapshot();
        }
        // Messages kept for a re-run are bounded in bytes.
        let d2 = tempfile::tempdir().unwrap();
        let mut s4 = SeenStore::open(Some(d2.path().join("seen.json")));
        let big = vec![b'x'; 200 * 1024];
        for i in 0..4 {
            s4.insert(&format!("big{i}"), "cmd", &big, false);
        }
        let kept: Vec<bool> = s4
            .unfinished()
            .iter()
            .map(|(_, p)| p.payload.is_some())
            .collect();
        assert_eq!(kept, vec![true, true, false, false]);
        // An older journal line (id only): type unknown, not re-runnable.
        std::fs::write(p.with_extension("log"), "{\"id\":\"old\"}\n").unwrap();
        let s3 = SeenStore::open(Some(p));
        let old = s3
            .unfinished()
            .into_iter()
            .find(|(i, _)| i == "old")
            .unwrap();
        assert_eq!(old.1.ty, "unknown");
        assert_eq!(old.1.payload, None);
    }

    #[test]
    fn remembers_across_reopen_and_bounds() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seen.json");
        let mut s = SeenStore::open(Some(p.clone()));
        assert_eq!(s.check("a"), Seen::New);
        s.insert("a", "cmd", b"{}", false);
        assert_eq!(s.check("a"), Seen::Duplicate(None));
        s.set_result("a", &json!({"id": "a", "event_type": "PROCESSED"}));
        s.insert("b", "cmd", b"{}", false);
        let s2 = SeenStore::open(Some(p.clone()));
        assert_eq!(
            s2.check("a"),
            Seen::Duplicate(Some(json!({"id": "a", "event_type": "PROCESSED"})))
        );
        assert_eq!(ids(s2.unfinished()), vec!["b".to_string()]);
        let mut s3 = SeenStore::open(Some(p.clone()));
        for i in 0..(MAX_IDS + 5) {
            s3.insert(&format!("x{i}"), "cmd", b"{}", false);
        }
        assert_eq!(s3.order.len(), MAX_IDS);
        assert_eq!(s3.check("a"), Seen::New, "oldest forgotten");
        s3.remove("x1028");
        assert_eq!(s3.check("x1028"), Seen::New);
        let s4 = SeenStore::open(Some(p));
        assert_eq!(s4.order.len(), MAX_IDS - 1);
        assert_eq!(s4.check("x1027"), Seen::Duplicate(None));
        assert_eq!(s4.check("x1028"), Seen::New);
        assert_eq!(s4.unfinished().len(), MAX_IDS - 1);
    }

    #[test]
    fn result_budget_in_memory_and_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seen.json");
        let mut s = SeenStore::open(Some(p.clone()));
        let big = "x".repeat(100 * 1024);
        for i in 0..5 {
            s.set_result(&format!("j{i}"), &json!({ "msg": big }));
        }
        assert!(s.result_bytes() <= MAX_RESULT_BYTES);
        assert!(matches!(s.check("j4"), Seen::Duplicate(Some(_))));
        assert_eq!(
            s.check("j0"),
            Seen::Duplicate(None),
            "old result dropped, id kept"
        );
        let s2 = SeenStore::open(Some(p.clone()));
        assert!(matches!(s2.check("j4"), Seen::Duplicate(Some(_))));
        assert_eq!(s2.check("j0"), Seen::Duplicate(None));
        assert!(s2.result_bytes() <= MAX_RESULT_BYTES);
    }

    #[test]
    fn journal_is_folded_and_a_torn_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seen.json");
        let mut s = SeenStore::open(Some(p.clone()));
        let out = "y".repeat(20 * 1024);
        for i in 0..80 {
            s.insert(&format!("k{i}"), "cmd", b"{}", false);
            s.set_result(&format!("k{i}"), &json!({ "msg": out }));
        }
        assert!(p.exists(), "journal folded into a snapshot");
        let journal = p.with_extension("log");
        assert!(std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0) <= JOURNAL_MAX);
        s.insert("last", "cmd", b"{}", false);
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"{\"id\":\"torn\",\"res").unwrap();
        let s2 = SeenStore::open(Some(p));
        assert_eq!(s2.check("last"), Seen::Duplicate(None));
        assert_eq!(s2.check("torn"), Seen::New);
        assert!(matches!(s2.check("k79"), Seen::Duplicate(Some(_))));
        assert_eq!(s2.check("k0"), Seen::Duplicate(None));
        assert_eq!(s2.order.len(), 81);
    }
}
