//! The last 1024 job ids (SPEC §4.2), kept across restarts in `state_dir`, with the PROCESSED
//! message of each finished job while they fit in a byte budget (older results are forgotten
//! first, in memory and on disk; the id itself is kept).
//!
//! On disk: a snapshot `seen.json` (written atomically) plus a journal `seen.log` of one JSON
//! line per change, appended and `fdatasync`ed, so a job costs two small appends rather than
//! two rewrites of the whole list. When the journal passes [`JOURNAL_MAX`] it is folded into a
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
/// Journal size at which it is folded into the snapshot.
pub const JOURNAL_MAX: u64 = 1 << 20;

/// What the store knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    New,
    /// Seen before; the stored PROCESSED when known.
    Duplicate(Option<Value>),
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// Accepted, not finished.
    Pending,
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
                    match v["results"].get(id).filter(|r| !r.is_null()) {
                        Some(r) => s.apply_result(id, r.clone()),
                        None if v["pending"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|x| x == id)) =>
                        {
                            s.apply_insert(id)
                        }
                        None => s.apply_done_unknown(id),
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
                    match v.get("result") {
                        Some(r) => s.apply_result(id, r.clone()),
                        None => s.apply_insert(id),
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
            Some(Entry::Pending) | Some(Entry::Done(None)) => Seen::Duplicate(None),
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

    fn apply_insert(&mut self, id: &str) {
        if !self.entries.contains_key(id) {
            self.entries.insert(id.to_string(), Entry::Pending);
            self.push_id(id);
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

    /// Records a newly accepted id (no result yet).
    pub fn insert(&mut self, id: &str) {
        if self.entries.contains_key(id) {
            return;
        }
        self.apply_insert(id);
        self.log(&json!({ "id": id }));
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

    /// Ids accepted earlier whose job never finished (the agent stopped while it ran).
    pub fn unfinished(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|id| matches!(self.entries.get(*id), Some(Entry::Pending)))
            .cloned()
            .collect()
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
                Some(Entry::Pending) => pending.push(id.clone()),
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

    #[test]
    fn remembers_across_reopen_and_bounds() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seen.json");
        let mut s = SeenStore::open(Some(p.clone()));
        assert_eq!(s.check("a"), Seen::New);
        s.insert("a");
        assert_eq!(s.check("a"), Seen::Duplicate(None));
        s.set_result("a", &json!({"id": "a", "event_type": "PROCESSED"}));
        s.insert("b");
        let s2 = SeenStore::open(Some(p.clone()));
        assert_eq!(
            s2.check("a"),
            Seen::Duplicate(Some(json!({"id": "a", "event_type": "PROCESSED"})))
        );
        assert_eq!(s2.unfinished(), vec!["b".to_string()]);
        let mut s3 = SeenStore::open(Some(p.clone()));
        for i in 0..(MAX_IDS + 5) {
            s3.insert(&format!("x{i}"));
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
            s.insert(&format!("k{i}"));
            s.set_result(&format!("k{i}"), &json!({ "msg": out }));
        }
        assert!(p.exists(), "journal folded into a snapshot");
        let journal = p.with_extension("log");
        assert!(std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0) <= JOURNAL_MAX);
        s.insert("last");
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
