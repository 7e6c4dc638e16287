//! The last 1024 job ids (SPEC §4.2), kept across restarts in `state_dir/seen.json`, with the
//! PROCESSED message of each finished job while they fit in a byte budget (older results are
//! forgotten first; the id itself is kept). Written atomically on every change. Shared by the
//! link thread (intake) and the workers behind a `Mutex`.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

/// Ids remembered.
pub const MAX_IDS: usize = 1024;
/// Bytes of stored PROCESSED messages kept on disk (flash is small).
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// What the store knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    New,
    /// Seen before; the stored PROCESSED when known.
    Duplicate(Option<Value>),
}

pub struct SeenStore {
    path: Option<PathBuf>,
    order: VecDeque<String>,
    results: HashMap<String, Option<Value>>,
}

impl SeenStore {
    /// Loads the store (a missing or unreadable file gives an empty one, logged).
    pub fn open(path: Option<PathBuf>) -> Self {
        let mut s = SeenStore {
            path,
            order: VecDeque::new(),
            results: HashMap::new(),
        };
        if let Some(p) = &s.path {
            match crate::state::read_json(p) {
                Ok(Some(v)) => {
                    if let Some(ids) = v["ids"].as_array() {
                        for id in ids.iter().filter_map(Value::as_str) {
                            let r = v["results"].get(id).cloned().filter(|r| !r.is_null());
                            s.order.push_back(id.to_string());
                            s.results.insert(id.to_string(), r);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!(
                    "seen job ids {}: {e}; starting with an empty list",
                    p.display()
                ),
            }
        }
        s
    }

    pub fn check(&self, id: &str) -> Seen {
        match self.results.get(id) {
            None => Seen::New,
            Some(r) => Seen::Duplicate(r.clone()),
        }
    }

    /// Records a newly accepted id (no result yet).
    pub fn insert(&mut self, id: &str) {
        if self.results.contains_key(id) {
            return;
        }
        self.order.push_back(id.to_string());
        self.results.insert(id.to_string(), None);
        while self.order.len() > MAX_IDS {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
        self.save();
    }

    /// Forgets an id (a job accepted and then not run).
    pub fn remove(&mut self, id: &str) {
        if self.results.remove(id).is_some() {
            self.order.retain(|i| i != id);
            self.save();
        }
    }

    /// Stores the PROCESSED message of a finished job.
    pub fn set_result(&mut self, id: &str, processed: &Value) {
        if !self.results.contains_key(id) {
            self.order.push_back(id.to_string());
        }
        self.results.insert(id.to_string(), Some(processed.clone()));
        self.save();
    }

    /// Ids accepted earlier whose job never finished (the agent stopped while it ran).
    pub fn unfinished(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|id| matches!(self.results.get(*id), Some(None)))
            .cloned()
            .collect()
    }

    fn save(&self) {
        let Some(p) = &self.path else { return };
        let mut budget = MAX_RESULT_BYTES;
        let mut results = serde_json::Map::new();
        for id in self.order.iter().rev() {
            if let Some(Some(r)) = self.results.get(id) {
                let size = r.to_string().len();
                if size <= budget {
                    budget -= size;
                    results.insert(id.clone(), r.clone());
                }
            }
        }
        let doc = json!({"ids": self.order, "results": results});
        if let Err(e) = crate::state::write_atomic(p, doc.to_string().as_bytes()) {
            log::error!("cannot save seen job ids to {}: {e}", p.display());
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
        let mut s3 = SeenStore::open(Some(p));
        for i in 0..(MAX_IDS + 5) {
            s3.results.insert(format!("x{i}"), None);
            s3.order.push_back(format!("x{i}"));
        }
        s3.insert("last");
        assert_eq!(s3.order.len(), MAX_IDS);
        assert_eq!(s3.check("a"), Seen::New, "oldest forgotten");
        s3.remove("last");
        assert_eq!(s3.check("last"), Seen::New);
    }

    #[test]
    fn result_budget() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seen.json");
        let mut s = SeenStore::open(Some(p.clone()));
        let big = "x".repeat(100 * 1024);
        for i in 0..5 {
            s.set_result(&format!("j{i}"), &json!({ "msg": big }));
        }
        let s2 = SeenStore::open(Some(p.clone()));
        assert!(matches!(s2.check("j4"), Seen::Duplicate(Some(_))));
        assert_eq!(
            s2.check("j0"),
            Seen::Duplicate(None),
            "old result dropped, id kept"
        );
        assert!(std::fs::metadata(&p).unwrap().len() < (MAX_RESULT_BYTES + 4096) as u64);
    }
}
