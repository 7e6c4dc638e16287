//! The heartbeat table of the watchdog (SPEC §8.2): parsing of one datagram ([`parse`]), the
//! pure timing table ([`Table`], driven with `Instant`s) and the shared handle
//! [`Heartbeats`], written by the `watchdog` thread and read by healthz, the supervisor
//! (`last_heartbeat` of a service) and `service.update`.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest `process_name` accepted, in characters.
pub const MAX_NAME: usize = 64;

/// Most heartbeating processes in the table; beats for more new names are refused and
/// counted (`refused` in healthz).
pub const MAX_ENTRIES: usize = 256;

/// An entry silent for this many `watchdog_timeout`s is forgotten.
pub const PRUNE_AFTER: u32 = 10;

/// At most one HEARTBEAT_LOST event per name in this time; more restarts are counted.
pub const EVENT_EVERY: Duration = Duration::from_secs(60);

/// Who sent a beat (the owner of the sending socket) and with which groups a `run_command`
/// it registers runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Why a well-formed beat is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The sending socket is gone and no entry of that pid exists: a beat that registers
    /// or changes an entry needs a sender socket socketman can still see.
    UnknownSender,
    /// The pid does not exist.
    NoProcess,
    /// The pid is a thread, not a process.
    Thread { tgid: i32 },
    /// init, socketman, a thread of socketman, or its group leader.
    Protected(crate::platform::procfs::Protected),
    /// The pid belongs to another user than the sender.
    NotTheSendersProcess { owner: u32, sender: u32 },
    /// The name is registered by another user.
    NameTaken { owner: u32 },
    /// The name is a supervised service and the pid is not (in) that service.
    NotTheService,
    /// The table holds [`MAX_ENTRIES`] names.
    Full,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownSender => write!(
                f,
                "its sender is unknown (the socket was closed before socketman read the \
                 datagram; keep it open, e.g. `exec 3<>/dev/udp/...` or `nc -u -w1`)"
            ),
            Refusal::NoProcess => write!(f, "no such process"),
            Refusal::Thread { tgid } => write!(f, "it is a thread of process {tgid}"),
            Refusal::Protected(p) => write!(f, "it is {p}"),
            Refusal::NotTheSendersProcess { owner, sender } => write!(
                f,
                "the process belongs to uid {owner}, the sender is uid {sender}"
            ),
            Refusal::NameTaken { owner } => write!(f, "the name is registered by uid {owner}"),
            Refusal::NotTheService => write!(f, "the pid is not the supervised service's"),
            Refusal::Full => write!(f, "the table holds {MAX_ENTRIES} names already"),
        }
    }
}

/// One parsed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub process_name: String,
    pub pid: i32,
    pub run_command: Option<String>,
    /// `"major.minor.patch"`.
    pub version: Option<String>,
}

/// Why a heartbeat datagram is malformed (it is dropped and counted; the watchdog logs the
/// `Display` text).
#[derive(Debug)]
pub enum BeatError {
    /// The datagram is not JSON at all.
    NotJson(serde_json::Error),
    /// It is JSON but not an object.
    NotObject,
    /// `command` is there but is not `"heart_beat"` (`found`: the JSON value).
    UnknownCommand { found: String },
    /// `process_name` is absent, not a string, or empty.
    MissingName,
    /// `process_name` is longer than [`MAX_NAME`] characters or holds control characters.
    BadName,
    /// The pid (`key`: `pid`, or `pid_of_process` in the `heart_beat` form) is absent, not an
    /// integer, or not above 1.
    BadPid { key: &'static str },
    /// `run_command` is there but not a string.
    RunCommandNotString,
    /// `version` is there but not an object.
    VersionNotObject,
    /// `version.<part>` (`major`, `minor`, `patch`) is there but not a number.
    VersionPart { part: &'static str },
}

impl fmt::Display for BeatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BeatError::NotJson(e) => write!(f, "not JSON: {e}"),
            BeatError::NotObject => write!(f, "not a JSON object"),
            BeatError::UnknownCommand { found } => write!(f, "unknown command {found}"),
            BeatError::MissingName => write!(f, "missing or empty \"process_name\""),
            BeatError::BadName => write!(
                f,
                "\"process_name\" longer than {MAX_NAME} characters or with control characters"
            ),
            BeatError::BadPid { key } => write!(f, "missing or invalid \"{key}\""),
            BeatError::RunCommandNotString => write!(f, "\"run_command\" is not a string"),
            BeatError::VersionNotObject => write!(f, "\"version\" is not an object"),
            BeatError::VersionPart { part } => write!(f, "\"version.{part}\" is not a number"),
        }
    }
}

impl std::error::Error for BeatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BeatError::NotJson(e) => Some(e),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for BeatError {
    fn from(e: serde_json::Error) -> Self {
        BeatError::NotJson(e)
    }
}

/// Parses a datagram in either SPEC form; `Err` says why it is malformed.
pub fn parse(data: &[u8]) -> Result<Beat, BeatError> {
    let v: Value = serde_json::from_slice(data)?;
    let o = v.as_object().ok_or(BeatError::NotObject)?;
    let pid_key = match o.get("command") {
        None => "pid",
        Some(Value::String(c)) if c == "heart_beat" => "pid_of_process",
        Some(c) => {
            return Err(BeatError::UnknownCommand {
                found: c.to_string(),
            })
        }
    };
    let name = o
        .get("process_name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(BeatError::MissingName)?;
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(BeatError::BadName);
    }
    let pid = o
        .get(pid_key)
        .and_then(Value::as_i64)
        .filter(|p| *p > 1 && *p <= i64::from(i32::MAX))
        .ok_or(BeatError::BadPid { key: pid_key })? as i32;
    let run_command = match o.get("run_command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(BeatError::RunCommandNotString),
    };
    let version = match o.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Object(vo)) => {
            let part = |part: &'static str| -> Result<u64, BeatError> {
                match vo.get(part) {
                    None => Ok(0),
                    Some(n) => n.as_u64().ok_or(BeatError::VersionPart { part }),
                }
            };
            Some(format!(
                "{}.{}.{}",
                part("major")?,
                part("minor")?,
                part("patch")?
            ))
        }
        Some(_) => return Err(BeatError::VersionNotObject),
    };
    Ok(Beat {
        process_name: name.to_string(),
        pid,
        run_command,
        version,
    })
}

/// One heartbeating process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pid: i32,
    pub run_command: Option<String>,
    pub version: Option<String>,
    /// Unix time of the last beat.
    pub last_seen: u64,
    pub restarts: u64,
    /// Start time (clock ticks after boot) of `pid` when known: a KILL only goes to the same
    /// process, never to one that got its pid later.
    pub pid_start: Option<u64>,
    /// When it is considered lost.
    pub deadline: Instant,
    /// It was lost and could not be restarted: nothing more until it beats again.
    pub lost: bool,
    /// Who registered it: its `run_command` runs with these ids.
    pub owner: Sender,
    /// The last beat.
    pub seen: Instant,
    /// The last HEARTBEAT_LOST event, and restarts since without one.
    pub last_event: Option<Instant>,
    pub unreported: u64,
}

/// The heartbeat table. Pure: every call takes `now`.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub entries: BTreeMap<String, Entry>,
}

impl Table {
    /// Records a beat at `now` (`unix`: the same moment as Unix time) sent by `sender`
    /// (`None`: its socket was gone), whose pid was checked to be `sender`'s; `pid_start` is
    /// the start time of the beat's pid, when it could be read. Without a known sender a
    /// beat only keeps an entry of the same pid alive.
    pub fn beat(
        &mut self,
        b: Beat,
        sender: Option<&Sender>,
        pid_start: Option<u64>,
        timeout: Duration,
        now: Instant,
        unix: u64,
    ) -> Result<(), Refusal> {
        let deadline = now + timeout;
        let Some(sender) = sender else {
            return match self.entries.get_mut(&b.process_name) {
                Some(e) if e.pid == b.pid && e.pid_start == pid_start => {
                    e.last_seen = unix;
                    e.seen = now;
                    e.deadline = deadline;
                    e.lost = false;
                    Ok(())
                }
                _ => Err(Refusal::UnknownSender),
            };
        };
        match self.entries.get_mut(&b.process_name) {
            Some(e) => {
                if e.owner.uid != sender.uid && sender.uid != 0 {
                    return Err(Refusal::NameTaken { owner: e.owner.uid });
                }
                e.pid = b.pid;
                e.pid_start = pid_start;
                if b.run_command.is_some() || e.owner.uid != sender.uid {
                    e.run_command = b.run_command;
                }
                if b.version.is_some() {
                    e.version = b.version;
                }
                e.owner = sender.clone();
                e.last_seen = unix;
                e.seen = now;
                e.deadline = deadline;
                e.lost = false;
            }
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    return Err(Refusal::Full);
                }
                self.entries.insert(
                    b.process_name,
                    Entry {
                        pid: b.pid,
                        run_command: b.run_command,
                        version: b.version,
                        last_seen: unix,
                        restarts: 0,
                        pid_start,
                        deadline,
                        lost: false,
                        owner: sender.clone(),
                        seen: now,
                        last_event: None,
                        unreported: 0,
                    },
                );
            }
        }
        Ok(())
    }

    /// Forgets the entries silent for [`PRUNE_AFTER`] × `timeout`; returns how many.
    pub fn prune(&mut self, timeout: Duration, now: Instant) -> usize {
        let before = self.entries.len();
        let keep = timeout * PRUNE_AFTER;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.seen) < keep);
        before - self.entries.len()
    }

    /// Whether a HEARTBEAT_LOST for `name` may be published at `now` (at most one per
    /// [`EVENT_EVERY`]); `Some(n)`: yes, with `n` restarts not reported since the last one.
    pub fn report(&mut self, name: &str, now: Instant) -> Option<u64> {
        let e = self.entries.get_mut(name)?;
        match e.last_event {
            Some(t) if now.saturating_duration_since(t) < EVENT_EVERY => {
                e.unreported += 1;
                None
            }
            _ => {
                e.last_event = Some(now);
                Some(std::mem::take(&mut e.unreported))
            }
        }
    }

    /// Names of the processes whose deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.lost && e.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// `name` was restarted at `now` as `new_pid` (`None`: could not be restarted). The new
    /// process gets a grace of `timeout` plus the usual `timeout` for its first beat.
    pub fn restarted(
        &mut self,
        name: &str,
        new_pid: Option<i32>,
        pid_start: Option<u64>,
        timeout: Duration,
        now: Instant,
    ) {
        if let Some(e) = self.entries.get_mut(name) {
            match new_pid {
                Some(p) => {
                    e.pid = p;
                    e.pid_start = pid_start;
                    e.restarts += 1;
                    e.deadline = now + timeout * 2;
                }
                None => e.lost = true,
            }
        }
    }
}

/// The table and counters, shared (cheap to clone) with healthz and the supervisor.
#[derive(Default, Clone)]
pub struct Heartbeats(Arc<Shared>);

impl std::ops::Deref for Heartbeats {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`Heartbeats`] holds.
#[derive(Default)]
pub struct Shared {
    table: Mutex<Table>,
    /// Malformed datagrams dropped so far. (Counters are `AtomicUsize`: 32-bit MIPS, the
    /// usual OpenWrt CPU, has no `AtomicU64`.)
    pub malformed: AtomicUsize,
    /// Datagrams accepted so far.
    pub beats: AtomicUsize,
    /// Well-formed beats refused (sender, pid or table checks) so far.
    pub refused: AtomicUsize,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Unix time of the last beat of `name`.
    pub fn last_seen(&self, name: &str) -> Option<u64> {
        self.lock().entries.get(name).map(|e| e.last_seen)
    }

    /// healthz `heartbeats` entries.
    pub fn entries(&self) -> Vec<Value> {
        self.lock()
            .entries
            .iter()
            .map(|(n, e)| {
                json!({"process_name": n, "pid": e.pid, "version": e.version,
                       "last_seen": e.last_seen, "restarts": e.restarts, "uid": e.owner.uid})
            })
            .collect()
    }
}

impl crate::healthz::HeartbeatsView for Heartbeats {
    fn heartbeat_entries(&self) -> Vec<Value> {
        self.entries()
    }

    fn counters(&self) -> (usize, usize, usize) {
        (
            self.beats.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32) -> Sender {
        Sender {
            uid,
            gid: uid,
            groups: vec![],
        }
    }

    impl Table {
        /// A beat from root, which must be taken.
        fn beat_ok(&mut self, b: Beat, start: Option<u64>, to: Duration, now: Instant, u: u64) {
            self.beat(b, Some(&user(0)), start, to, now, u).unwrap();
        }
    }

    #[test]
    fn names_belong_to_their_user_and_strangers_only_keep_alive() {
        let t0 = Instant::now();
        let to = Duration::from_secs(10);
        let mut t = Table::default();
        // A sender whose socket is gone cannot register.
        assert_eq!(
            t.beat(beat("a", 100), None, None, to, t0, 1),
            Err(Refusal::UnknownSender)
        );
        t.beat(beat("a", 100), Some(&user(1000)), Some(5), to, t0, 1)
            .unwrap();
        assert_eq!(t.entries["a"].owner.uid, 1000);
        // Another user cannot take the name over (nor change its command).
        let mut evil = beat("a", 200);
        evil.run_command = Some("touch /tmp/x".into());
        assert_eq!(
            t.beat(evil.clone(), Some(&user(1001)), None, to, t0, 2),
            Err(Refusal::NameTaken { owner: 1000 })
        );
        // Without a known sender: only the same pid (same start) is kept alive.
        assert_eq!(
            t.beat(evil.clone(), None, None, to, t0, 2),
            Err(Refusal::UnknownSender)
        );
        let later = t0 + Duration::from_secs(8);
        let mut same = beat("a", 100);
        same.run_command = Some("touch /tmp/x".into());
        t.beat(same, None, Some(5), to, later, 9).unwrap();
        assert_eq!(t.entries["a"].run_command.as_deref(), Some("true"));
        assert!(t.expired(t0 + Duration::from_secs(17)).is_empty());
        // Root may take over; the command is then root's.
        t.beat(evil, Some(&user(0)), None, to, t0, 3).unwrap();
        assert_eq!(t.entries["a"].owner.uid, 0);
        assert_eq!(t.entries["a"].run_command.as_deref(), Some("touch /tmp/x"));
    }

    #[test]
    fn the_table_is_bounded_and_pruned() {
        let t0 = Instant::now();
        let to = Duration::from_secs(2);
        let mut t = Table::default();
        for i in 0..MAX_ENTRIES {
            t.beat(
                beat(&format!("p{i}"), 100),
                Some(&user(1000)),
                None,
                to,
                t0,
                1,
            )
            .unwrap();
        }
        assert_eq!(
            t.beat(beat("one-more", 100), Some(&user(1000)), None, to, t0, 1),
            Err(Refusal::Full)
        );
        // Known names still beat.
        t.beat(
            beat("p0", 100),
            Some(&user(1000)),
            None,
            to,
            t0 + Duration::from_secs(15),
            1,
        )
        .unwrap();
        assert_eq!(t.prune(to, t0 + Duration::from_secs(19)), 0);
        assert_eq!(t.prune(to, t0 + Duration::from_secs(20)), MAX_ENTRIES - 1);
        assert_eq!(t.entries.len(), 1);
        assert!(t
            .beat(beat("one-more", 100), Some(&user(1000)), None, to, t0, 1)
            .is_ok());
    }

    #[test]
    fn lost_events_are_rate_limited_per_name() {
        let t0 = Instant::now();
        let to = Duration::from_secs(1);
        let mut t = Table::default();
        t.beat_ok(beat("a", 100), None, to, t0, 1);
        t.beat_ok(beat("b", 100), None, to, t0, 1);
        assert_eq!(t.report("a", t0), Some(0));
        assert_eq!(t.report("b", t0), Some(0));
        assert_eq!(t.report("a", t0 + Duration::from_secs(5)), None);
        assert_eq!(t.report("a", t0 + Duration::from_secs(59)), None);
        assert_eq!(t.report("a", t0 + EVENT_EVERY), Some(2));
        assert_eq!(t.report("gone", t0), None);
    }

    #[test]
    fn long_or_control_names_are_malformed() {
        let long = format!(
            r#"{{"process_name":"{}","pid":5}}"#,
            "n".repeat(MAX_NAME + 1)
        );
        assert!(matches!(parse(long.as_bytes()), Err(BeatError::BadName)));
        let ok = format!(r#"{{"process_name":"{}","pid":5}}"#, "n".repeat(MAX_NAME));
        assert!(parse(ok.as_bytes()).is_ok());
        assert!(matches!(
            parse(br#"{"process_name":"a\nERROR forged","pid":5}"#),
            Err(BeatError::BadName)
        ));
    }

    fn beat(name: &str, pid: i32) -> Beat {
        Beat {
            process_name: name.into(),
            pid,
            run_command: Some("true".into()),
            version: None,
        }
    }

    #[test]
    fn both_forms() {
        let a = parse(br#"{"process_name":"ocr","pid":444,"run_command":"python3 x.py","version":{"major":1,"minor":0,"patch":2}}"#).unwrap();
        assert_eq!(
            a,
            Beat {
                process_name: "ocr".into(),
                pid: 444,
                run_command: Some("python3 x.py".into()),
                version: Some("1.0.2".into())
            }
        );
        let b = parse(br#"{"command":"heart_beat","process_name":"ocr","pid_of_process":445,"run_command":"x","version":{"major":2,"minor":10,"patch":0}}"#).unwrap();
        assert_eq!(b.pid, 445);
        assert_eq!(b.version.as_deref(), Some("2.10.0"));
        let c = parse(br#"{"process_name":"p","pid":9}"#).unwrap();
        assert_eq!((c.run_command, c.version), (None, None));
    }

    #[test]
    fn malformed() {
        // Each datagram with the exact text the watchdog logs for it.
        for (d, text) in [
            (
                &br#"{"process_name":"x"}"#[..],
                "missing or invalid \"pid\"",
            ),
            (b"{}", "missing or empty \"process_name\""),
            (b"[1,2]", "not a JSON object"),
            (
                br#"{"process_name":"","pid":5}"#,
                "missing or empty \"process_name\"",
            ),
            (
                br#"{"process_name":"x","pid":"5"}"#,
                "missing or invalid \"pid\"",
            ),
            (
                br#"{"process_name":"x","pid":1}"#,
                "missing or invalid \"pid\"",
            ),
            (
                br#"{"process_name":"x","pid":-3}"#,
                "missing or invalid \"pid\"",
            ),
            (
                br#"{"command":"heart_beat","process_name":"x","pid":5}"#,
                "missing or invalid \"pid_of_process\"",
            ),
            (
                br#"{"command":"reboot","process_name":"x","pid":5}"#,
                "unknown command \"reboot\"",
            ),
            (
                br#"{"process_name":"x","pid":5,"version":"1.0"}"#,
                "\"version\" is not an object",
            ),
            (
                br#"{"process_name":"x","pid":5,"version":{"major":"1"}}"#,
                "\"version.major\" is not a number",
            ),
            (
                br#"{"process_name":"x","pid":5,"run_command":3}"#,
                "\"run_command\" is not a string",
            ),
        ] {
            let e = parse(d).unwrap_err();
            assert_eq!(e.to_string(), text, "{}", String::from_utf8_lossy(d));
        }
        for d in [&b"garbage"[..], b"\xff\xfe", b""] {
            let e = parse(d).unwrap_err();
            assert!(matches!(e, BeatError::NotJson(_)), "{e:?}");
            assert!(e.to_string().starts_with("not JSON: "), "{e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        assert!(matches!(
            parse(br#"{"process_name":"x","pid":5,"version":{"major":1,"patch":-1}}"#),
            Err(BeatError::VersionPart { part: "patch" })
        ));
    }

    #[test]
    fn silence_expires_after_timeout() {
        let t0 = Instant::now();
        let to = Duration::from_secs(10);
        let mut t = Table::default();
        t.beat_ok(beat("a", 100), None, to, t0, 1000);
        assert!(t.expired(t0 + Duration::from_secs(9)).is_empty());
        t.beat_ok(beat("a", 100), None, to, t0 + Duration::from_secs(9), 1009);
        assert!(t.expired(t0 + Duration::from_secs(18)).is_empty());
        assert_eq!(
            t.expired(t0 + Duration::from_secs(19)),
            vec!["a".to_string()]
        );
        assert_eq!(t.entries["a"].last_seen, 1009);
    }

    #[test]
    fn restarted_process_gets_a_grace() {
        let t0 = Instant::now();
        let to = Duration::from_secs(10);
        let mut t = Table::default();
        t.beat_ok(beat("a", 100), None, to, t0, 1000);
        let lost = t0 + Duration::from_secs(10);
        assert_eq!(t.expired(lost).len(), 1);
        t.restarted("a", Some(200), None, to, lost);
        assert_eq!(t.entries["a"].restarts, 1);
        assert_eq!(t.entries["a"].pid, 200);
        assert!(t.expired(lost + Duration::from_secs(19)).is_empty());
        assert_eq!(t.expired(lost + Duration::from_secs(20)).len(), 1);
        // A beat of the new process puts it back on the normal schedule.
        t.beat_ok(
            beat("a", 200),
            None,
            to,
            lost + Duration::from_secs(5),
            1015,
        );
        assert!(t.expired(lost + Duration::from_secs(14)).is_empty());
        assert_eq!(t.expired(lost + Duration::from_secs(15)).len(), 1);
    }

    #[test]
    fn unrestartable_is_not_retried_until_it_beats() {
        let t0 = Instant::now();
        let to = Duration::from_secs(1);
        let mut t = Table::default();
        t.beat_ok(beat("a", 100), None, to, t0, 1000);
        t.restarted("a", None, None, to, t0 + to);
        assert!(t.expired(t0 + Duration::from_secs(100)).is_empty());
        t.beat_ok(
            beat("a", 101),
            None,
            to,
            t0 + Duration::from_secs(100),
            1100,
        );
        assert_eq!(t.expired(t0 + Duration::from_secs(101)).len(), 1);
    }

    #[test]
    fn beats_keep_the_last_known_version_and_command() {
        let t0 = Instant::now();
        let to = Duration::from_secs(1);
        let mut t = Table::default();
        let mut b = beat("a", 100);
        b.version = Some("1.2.3".into());
        t.beat_ok(b, None, to, t0, 1);
        t.beat_ok(
            Beat {
                process_name: "a".into(),
                pid: 100,
                run_command: None,
                version: None,
            },
            Some(7),
            to,
            t0,
            2,
        );
        assert_eq!(t.entries["a"].version.as_deref(), Some("1.2.3"));
        assert_eq!(t.entries["a"].pid_start, Some(7));
        assert_eq!(t.entries["a"].run_command.as_deref(), Some("true"));
    }
}
