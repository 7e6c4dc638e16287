//! The durable, bounded stats cache (SPEC §5, §11) in `cache_dir`.
//!
//! Records are NDJSON lines in append-only segment files `seg-<16 digits>.ndjson` (0600, in a
//! 0700 directory). Each append is one `write` of the whole line followed by `fdatasync`, so
//! a power cut or kill -9 loses at most the record being written; a torn last line (no `\n`,
//! or not JSON) is skipped on read with a log line. New segments start when the current one
//! reaches `min(256 KiB, cache_max_bytes / 16)`, and every segment found at start-up is
//! sealed (appends go to a new one), so a torn tail is never glued to a new record.
//!
//! Bound: when the segments together exceed `cache_max_bytes`, whole segments are dropped,
//! oldest first, until they fit (at most 1/16 of the bound goes at once). The number of
//! dropped records is kept in `cache_dir/dropped` (written atomically) and reported in the
//! next record's `device.dropped`; the collector subtracts what it reported once that record
//! is durably appended ([`Spool::report_dropped`]). Drops that a dropped record was carrying
//! are counted again. Segments of the batch being uploaded are skipped by the bound until
//! the batch is acked or released, so a record is never both delivered and counted dropped.
//!
//! Upload: [`Spool::next_batch`] returns the oldest whole segments whose lines fit in the
//! given size (at least one segment), sealing the segment being appended to when it is
//! included; [`Spool::ack`] deletes exactly those files. Deleting a sent batch is therefore a
//! few `unlink`s, never a rewrite of the cache.
//!
//! Shared: one `Spool` lives behind a mutex in [`crate::stats::upload::Stats`]; the collector thread
//! appends, the uploader thread takes batches and acks, healthz reads [`Spool::stats`].
#![forbid(unsafe_code)]

use serde_json::Value;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Upper limit of one segment file.
pub const SEGMENT_MAX: u64 = 256 * 1024;
/// Upper limit of a batch before compression (SPEC §5).
pub const BATCH_MAX: usize = 1 << 20;

const DROPPED_FILE: &str = "dropped";

#[derive(Debug, Clone)]
struct Seg {
    id: u64,
    bytes: u64,
    records: u64,
}

/// Counters for healthz (`meta.cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub records: u64,
    pub bytes: u64,
    pub dropped: u64,
}

/// Records taken for one upload.
#[derive(Debug, Clone)]
pub struct Batch {
    ids: Vec<u64>,
    /// Valid NDJSON lines, each ending in `\n`.
    pub body: Vec<u8>,
    /// Number of lines in `body`.
    pub records: usize,
}

/// The cache. See the module doc.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segs: VecDeque<Seg>,
    /// The segment appended to (always the last of `segs`) and its file.
    active: Option<(u64, File)>,
    next_id: u64,
    /// Segments of the batch being uploaded: the bound drops other segments first.
    inflight: Vec<u64>,
    dropped: u64,
}

fn seg_name(id: u64) -> String {
    format!("seg-{id:016}.ndjson")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".ndjson")?
        .parse()
        .ok()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Spool {
    /// Opens (creating) the cache in `dir`, bounded by `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        crate::platform::fs::ensure_dir(dir)?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        let mut ids: Vec<u64> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| parse_seg_name(&e.file_name().to_string_lossy()))
            .collect();
        ids.sort_unstable();
        let mut segs = VecDeque::new();
        for id in ids {
            let data = match fs::read(dir.join(seg_name(id))) {
                Ok(d) => d,
                Err(e) => {
                    log::warn!(
                        "stats cache {}: {e}; skipped",
                        dir.join(seg_name(id)).display()
                    );
                    continue;
                }
            };
            let records = data.iter().filter(|b| **b == b'\n').count() as u64;
            segs.push_back(Seg {
                id,
                bytes: data.len() as u64,
                records,
            });
        }
        let next_id = segs.back().map_or(1, |s| s.id + 1);
        let dropped = fs::read_to_string(dir.join(DROPPED_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let s = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segs,
            active: None,
            next_id,
            inflight: Vec::new(),
            dropped,
        };
        if !s.segs.is_empty() {
            let st = s.stats();
            log::info!(
                "stats cache {}: {} records ({} bytes) waiting from before",
                dir.display(),
                st.records,
                st.bytes
            );
        }
        Ok(s)
    }

    /// Changes the bound (config reload).
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    /// The directory of the cache.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_limit(&self) -> u64 {
        (self.max_bytes / 16).clamp(1, SEGMENT_MAX)
    }

    /// Appends one record durably (written and synced before this returns), then applies the
    /// bound.
    pub fn append(&mut self, record: &Value) -> io::Result<()> {
        let mut line = record.to_string().into_bytes();
        line.push(b'\n');
        let limit = self.segment_limit();
        let need_new = match (&self.active, self.segs.back()) {
            (Some((id, _)), Some(last)) if *id == last.id => {
                last.bytes > 0 && last.bytes + line.len() as u64 > limit
            }
            _ => true,
        };
        if need_new {
            let id = self.next_id;
            let path = self.dir.join(seg_name(id));
            let f = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            sync_dir(&self.dir);
            self.next_id += 1;
            self.segs.push_back(Seg {
                id,
                bytes: 0,
                records: 0,
            });
            self.active = Some((id, f));
        }
        let Some((id, file)) = self.active.as_mut() else {
            return Err(io::Error::other("stats cache: no segment open"));
        };
        let id = *id;
        let res = file.write_all(&line).and_then(|_| file.sync_data());
        if let Err(e) = res {
            // The segment may now end in a partial line: seal it, so the next record goes to a
            // fresh file; the torn line is skipped when read.
            self.active = None;
            if let Some(seg) = self.segs.back_mut() {
                if let Ok(m) = fs::metadata(self.dir.join(seg_name(seg.id))) {
                    seg.bytes = m.len();
                }
            }
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.dir.join(seg_name(id)).display()),
            ));
        }
        if let Some(seg) = self.segs.back_mut() {
            seg.bytes += line.len() as u64;
            seg.records += 1;
        }
        self.enforce_bound();
        Ok(())
    }

    fn total_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.bytes).sum()
    }

    fn enforce_bound(&mut self) {
        let mut n = 0u64;
        let mut carried = 0u64;
        while self.total_bytes() > self.max_bytes && self.segs.len() > 1 {
            // The oldest segment that is not being uploaded (never the one just written).
            let last = self.segs.len() - 1;
            let Some(i) = (0..last).find(|i| !self.inflight.contains(&self.segs[*i].id)) else {
                break;
            };
            let Some(seg) = self.segs.remove(i) else {
                break;
            };
            let path = self.dir.join(seg_name(seg.id));
            // Drops that the dropped records were reporting are counted again, so that no
            // drop is lost when the record carrying its count goes too.
            carried += fs::read(&path).map(|d| carried_drops(&d)).unwrap_or(0);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("stats cache: cannot remove {}: {e}", path.display());
                }
            }
            n += seg.records;
        }
        if n > 0 {
            self.dropped += n + carried;
            self.persist_dropped();
            log::warn!(
                "stats cache over cache_max_bytes ({}): dropped the {n} oldest records ({} dropped since last reported)",
                self.max_bytes,
                self.dropped
            );
        }
    }

    fn persist_dropped(&self) {
        let path = self.dir.join(DROPPED_FILE);
        if let Err(e) =
            crate::platform::fs::write_atomic(&path, self.dropped.to_string().as_bytes())
        {
            log::warn!("stats cache: cannot write {}: {e}", path.display());
        }
    }

    /// Syncs the segment being appended to and the directory; returns the counters.
    pub fn sync(&mut self) -> io::Result<SpoolStats> {
        if let Some((_, f)) = self.active.as_ref() {
            f.sync_all()?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(self.stats())
    }

    /// Records dropped by the bound and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// A record carrying `device.dropped = n` is now durable (spooled or delivered): those
    /// drops are reported.
    pub fn report_dropped(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped = self.dropped.saturating_sub(n);
        self.persist_dropped();
    }

    /// Counts drops that happened outside the spool (a record that could not be stored).
    pub fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
        self.persist_dropped();
    }

    /// `{records, bytes, dropped}`.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.segs.iter().map(|s| s.records).sum(),
            bytes: self.total_bytes(),
            dropped: self.dropped,
        }
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.segs.iter().all(|s| s.records == 0 && s.bytes == 0)
    }

    /// The oldest records, whole segments up to `max` bytes of valid lines (at least one
    /// segment). `None` when the cache is empty.
    pub fn next_batch(&mut self, max: usize) -> io::Result<Option<Batch>> {
        let mut batch = Batch {
            ids: Vec::new(),
            body: Vec::new(),
            records: 0,
        };
        self.inflight.clear();
        let ids: Vec<u64> = self.segs.iter().map(|s| s.id).collect();
        for id in ids {
            let path = self.dir.join(seg_name(id));
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    batch.ids.push(id);
                    continue;
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            };
            let (lines, count) = valid_lines(&data, &path);
            if !batch.ids.is_empty() && batch.body.len() + lines.len() > max {
                break;
            }
            if matches!(&self.active, Some((a, _)) if *a == id) {
                self.active = None; // sealed: new records go to a new segment
            }
            batch.ids.push(id);
            batch.body.extend_from_slice(&lines);
            batch.records += count;
        }
        self.inflight = batch.ids.clone();
        Ok((!batch.ids.is_empty()).then_some(batch))
    }

    /// The batch taken last was not delivered: its segments may be dropped by the bound again.
    pub fn release(&mut self) {
        self.inflight.clear();
    }

    /// Deletes the segments of a batch that was delivered.
    pub fn ack(&mut self, batch: &Batch) -> io::Result<()> {
        for id in &batch.ids {
            if matches!(&self.active, Some((a, _)) if a == id) {
                self.active = None;
            }
            match fs::remove_file(self.dir.join(seg_name(*id))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.dir.join(seg_name(*id)).display()),
                    ))
                }
            }
            self.segs.retain(|s| s.id != *id);
            self.inflight.retain(|i| i != id);
        }
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Sum of `device.dropped` over the records of a segment.
fn carried_drops(data: &[u8]) -> u64 {
    data.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|v| v.get("device")?.get("dropped")?.as_u64())
        .sum()
}

/// The complete JSON lines of a segment; a torn or garbage line is skipped with a log line.
fn valid_lines(data: &[u8], path: &Path) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len());
    let mut n = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let (line, complete) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let l = &rest[..i];
                rest = &rest[i + 1..];
                (l, true)
            }
            None => {
                let l = rest;
                rest = &[];
                (l, false)
            }
        };
        if line.is_empty() {
            continue;
        }
        if complete && serde_json::from_slice::<Value>(line).is_ok() {
            out.extend_from_slice(line);
            out.push(b'\n');
            n += 1;
        } else {
            log::warn!(
                "stats cache {}: skipped a {} line of {} bytes (interrupted write)",
                path.display(),
                if complete { "malformed" } else { "torn" },
                line.len()
            );
        }
    }
    (out, n)
}

/// Where a RAM-backed cache is saved (in `state_dir`) at a clean stop and before a reboot.
pub const RESCUE_DIR: &str = "cache-rescue";

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n == DROPPED_FILE || (n.starts_with("seg-") && n.ends_with(".ndjson"))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// "Write the cache" (SPEC §10) when `cache_dir` is on tmpfs (the default `/tmp` on OpenWrt)
/// and `state_dir` is not: copies the unsent records to `state_dir/cache-rescue/` so that a
/// reboot does not lose them. Written once per stop or reboot, not per record, to spare the
/// flash. Returns the number of files saved.
pub fn rescue(cache_dir: &Path, state_dir: &Path) -> io::Result<usize> {
    if !crate::platform::sys::is_ram_fs(cache_dir) || crate::platform::sys::is_ram_fs(state_dir) {
        return Ok(0);
    }
    rescue_to(cache_dir, &state_dir.join(RESCUE_DIR))
}

fn rescue_to(cache_dir: &Path, to: &Path) -> io::Result<usize> {
    let files = cache_files(cache_dir);
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    if files.is_empty() {
        return Ok(0);
    }
    crate::platform::fs::ensure_dir(to)?;
    for f in &files {
        let data = fs::read(f)?;
        if let Some(name) = f.file_name() {
            crate::platform::fs::write_atomic(&to.join(name), &data)?;
        }
    }
    Ok(files.len())
}

/// Puts records saved by [`rescue`] back into `cache_dir` (files already there — a restart
/// without a reboot — are kept as they are), then removes the rescue copy. Call before
/// [`Spool::open`]. Returns the number of files restored.
pub fn restore(cache_dir: &Path, state_dir: &Path) -> io::Result<usize> {
    restore_from(&state_dir.join(RESCUE_DIR), cache_dir)
}

fn restore_from(from: &Path, cache_dir: &Path) -> io::Result<usize> {
    if !from.is_dir() {
        return Ok(0);
    }
    crate::platform::fs::ensure_dir(cache_dir)?;
    let mut n = 0;
    for f in cache_files(from) {
        let Some(name) = f.file_name() else { continue };
        let dest = cache_dir.join(name);
        if !dest.exists() {
            crate::platform::fs::write_atomic(&dest, &fs::read(&f)?)?;
            n += 1;
        }
    }
    fs::remove_dir_all(from)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;

    fn rec(i: u64) -> Value {
        json!({"created_at": 1_700_000_000 + i, "seq": i, "device": {"pad": "x".repeat(1000)}})
    }

    fn seqs(body: &[u8]) -> Vec<u64> {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn drain(sp: &mut Spool) -> Vec<u64> {
        let mut all = Vec::new();
        while let Some(b) = sp.next_batch(BATCH_MAX).unwrap() {
            assert!(b.body.len() <= BATCH_MAX);
            all.extend(seqs(&b.body));
            sp.ack(&b).unwrap();
        }
        all
    }

    #[test]
    fn append_read_ack_modes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let mut sp = Spool::open(&dir, 5_000_000).unwrap();
        assert!(sp.next_batch(BATCH_MAX).unwrap().is_none());
        for i in 0..10 {
            sp.append(&rec(i)).unwrap();
        }
        assert_eq!(sp.stats().records, 10);
        assert_eq!(sp.sync().unwrap().records, 10);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        for e in fs::read_dir(&dir).unwrap() {
            assert_eq!(e.unwrap().metadata().unwrap().mode() & 0o777, 0o600);
        }
        let b = sp.next_batch(BATCH_MAX).unwrap().unwrap();
        assert_eq!(b.records, 10);
        // Appends during an upload go to a new segment and survive the ack.
        sp.append(&rec(10)).unwrap();
        sp.ack(&b).unwrap();
        assert_eq!(sp.stats().records, 1);
        assert_eq!(drain(&mut sp), vec![10]);
        assert!(sp.is_empty());
        assert_eq!(sp.stats(), SpoolStats::default());
    }

    #[test]
    fn torn_line_after_kill_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(d.path(), 5_000_000).unwrap();
        for i in 0..3 {
            sp.append(&rec(i)).unwrap();
        }
        drop(sp);
        // Simulate kill -9 / power cut in the middle of writing record 3.
        let seg = d.path().join(seg_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        let line = rec(3).to_string();
        f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        drop(f);
        let mut sp = Spool::open(d.path(), 5_000_000).unwrap();
        assert_eq!(sp.stats().records, 3, "the torn line is not counted");
        sp.append(&rec(4)).unwrap();
        assert_eq!(drain(&mut sp), vec![0, 1, 2, 4]);
        // Garbage in the middle of a segment is skipped too.
        let mut sp = Spool::open(d.path(), 5_000_000).unwrap();
        sp.append(&rec(5)).unwrap();
        drop(sp);
        let segs: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                parse_seg_name(&n)
            })
            .collect();
        let p = d.path().join(seg_name(segs[0]));
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"\x00garbage\n").unwrap();
        f.write_all(format!("{}\n", rec(6)).as_bytes()).unwrap();
        drop(f);
        let mut sp = Spool::open(d.path(), 5_000_000).unwrap();
        assert_eq!(drain(&mut sp), vec![5, 6]);
    }

    #[test]
    fn bound_drops_oldest_and_counts_persistently() {
        let d = tempfile::tempdir().unwrap();
        let one = rec(0).to_string().len() as u64 + 1;
        let max = one * 20;
        let mut sp = Spool::open(d.path(), max).unwrap();
        for i in 0..100 {
            sp.append(&rec(i)).unwrap();
            assert!(sp.stats().bytes <= max, "bound held after record {i}");
        }
        let st = sp.stats();
        assert_eq!(
            st.records + st.dropped,
            100,
            "every record is kept or counted"
        );
        // A dropped record that carried a drop count passes the count on.
        let mut sp2 = Spool::open(&d.path().join("b"), max).unwrap();
        let mut carrier = rec(0);
        carrier["device"]["dropped"] = json!(7);
        sp2.append(&carrier).unwrap();
        for i in 1..40 {
            sp2.append(&rec(i)).unwrap();
        }
        let st2 = sp2.stats();
        assert_eq!(st2.records + st2.dropped, 40 + 7);
        assert!(st.dropped >= 80);
        drop(sp);
        let mut sp = Spool::open(d.path(), max).unwrap();
        assert_eq!(sp.dropped(), st.dropped, "drop count survives a restart");
        // The oldest went: what is left is the newest, in order.
        let left = drain(&mut sp);
        assert_eq!(left, ((100 - st.records)..100).collect::<Vec<_>>());
        // Reporting: subtract what the record carried; later drops stay counted.
        let reported = sp.dropped();
        sp.count_dropped(2);
        sp.report_dropped(reported);
        assert_eq!(sp.dropped(), 2);
        drop(sp);
        assert_eq!(Spool::open(d.path(), max).unwrap().dropped(), 2);
    }

    #[test]
    fn day_of_records_in_batches_under_1mib() {
        let d = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(d.path(), 100_000_000).unwrap();
        for i in 0..5760 {
            sp.append(&rec(i)).unwrap();
        }
        assert_eq!(sp.stats().records, 5760);
        let mut batches = 0;
        let mut all = Vec::new();
        while let Some(b) = sp.next_batch(BATCH_MAX).unwrap() {
            assert!(b.body.len() <= BATCH_MAX, "{}", b.body.len());
            assert!(
                b.body.len() > BATCH_MAX / 2,
                "batches are filled: {}",
                b.body.len()
            );
            all.extend(seqs(&b.body));
            sp.ack(&b).unwrap();
            batches += 1;
        }
        assert_eq!(all, (0..5760).collect::<Vec<_>>());
        assert!(batches >= 6, "{batches}");
        assert_eq!(
            fs::read_dir(d.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("seg-")
                })
                .count(),
            0
        );
    }

    #[test]
    fn unack_keeps_records_for_retry() {
        let d = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(d.path(), 5_000_000).unwrap();
        for i in 0..5 {
            sp.append(&rec(i)).unwrap();
        }
        let b1 = sp.next_batch(BATCH_MAX).unwrap().unwrap();
        let b2 = sp.next_batch(BATCH_MAX).unwrap().unwrap();
        assert_eq!(seqs(&b1.body), seqs(&b2.body), "not acked = sent again");
        assert!(Spool::open(Path::new("/proc/no/such/dir"), 1).is_err());
    }

    #[test]
    fn batch_in_flight_is_not_dropped_by_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let one = rec(0).to_string().len() as u64 + 1;
        let mut sp = Spool::open(d.path(), one * 4).unwrap();
        for i in 0..4 {
            sp.append(&rec(i)).unwrap();
        }
        let b = sp.next_batch(one as usize).unwrap().unwrap();
        assert_eq!(seqs(&b.body), vec![0]);
        for i in 4..8 {
            sp.append(&rec(i)).unwrap();
        }
        assert_eq!(
            sp.dropped(),
            4,
            "records 1..5 dropped, not the one in flight"
        );
        sp.ack(&b).unwrap();
        assert_eq!(drain(&mut sp), vec![5, 6, 7]);
        // Released (not delivered): the bound may take it again.
        let mut sp = Spool::open(&d.path().join("r"), one * 4).unwrap();
        for i in 0..4 {
            sp.append(&rec(i)).unwrap();
        }
        let _b = sp.next_batch(one as usize).unwrap().unwrap();
        sp.release();
        sp.append(&rec(4)).unwrap();
        assert_eq!(drain(&mut sp), vec![1, 2, 3, 4]);
    }

    #[test]
    fn rescue_and_restore_keep_records_across_a_wiped_cache() {
        let d = tempfile::tempdir().unwrap();
        let (cache, saved) = (d.path().join("cache"), d.path().join("state/cache-rescue"));
        let mut sp = Spool::open(&cache, 5_000_000).unwrap();
        for i in 0..5 {
            sp.append(&rec(i)).unwrap();
        }
        sp.count_dropped(3);
        drop(sp);
        assert!(rescue_to(&cache, &saved).unwrap() >= 2);
        // A restart without a reboot: the cache is still there, nothing is doubled.
        assert_eq!(restore_from(&saved, &cache).unwrap(), 0);
        assert!(!saved.exists());
        let sp = Spool::open(&cache, 5_000_000).unwrap();
        assert_eq!(sp.stats().records, 5);
        drop(sp);
        // A reboot: tmpfs is empty again.
        rescue_to(&cache, &saved).unwrap();
        fs::remove_dir_all(&cache).unwrap();
        assert!(restore_from(&saved, &cache).unwrap() >= 2);
        let mut sp = Spool::open(&cache, 5_000_000).unwrap();
        assert_eq!(sp.stats().records, 5);
        assert_eq!(sp.dropped(), 3);
        assert_eq!(drain(&mut sp), vec![0, 1, 2, 3, 4]);
        // Nothing to save: an old rescue copy is removed.
        fs::create_dir_all(&saved).unwrap();
        fs::remove_dir_all(&cache).unwrap();
        assert_eq!(rescue_to(&cache, &saved).unwrap(), 0);
        assert!(!saved.exists());
        if !crate::platform::sys::is_ram_fs(d.path()) {
            assert_eq!(
                rescue(&cache, &d.path().join("state")).unwrap(),
                0,
                "only a RAM cache is rescued"
            );
        }
    }
}
