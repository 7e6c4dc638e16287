//! Issue 3: stats collection, spool and upload with the real binary and real local HTTP
//! servers: request shape (method, query, multipart, gzip NDJSON), outage and recovery with
//! every record arriving exactly once, connection refused, a server that never answers, 401,
//! kill -9 with a full spool, a tiny cache bound with counted drops, a day of backlog,
//! `no-cache`, USR1, the `stats` job and `--collect-once`.
//!
//! Periods are shortened with the test-only variables `SOCKETMAN_TEST_MONITOR_MS`,
//! `SOCKETMAN_TEST_HEARTBEAT_MS` and `SOCKETMAN_TEST_HTTP_TIMEOUT_MS` (see `src/collect/mod.rs`,
//! `src/upload.rs`).
//!
//! "Exactly once" is checked by counting: the agent logs one `stats: record cached` line per
//! record it stores; at the end every record is either in what the server accepted (2xx) or
//! still in the cache files, and the two add up to the number stored, with `created_at`
//! never going backwards in what was accepted.

use crate::http::{HttpServer, Request};
use crate::stats_wire as wire;
use crate::support::{self, run_bin, Agent, Broker, Topic};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

const DEVICE_KEYS: &[&str] = &[
    "v",
    "mac",
    "machine_type",
    "firmware",
    "uptime",
    "load_1",
    "load_5",
    "load_15",
    "total_ram",
    "free_ram",
    "procs",
    "wan_name",
    "wan_ip",
    "wan_gateway",
    "tx_bytes",
    "rx_bytes",
    "status",
    "connected",
    "dropped",
    "smv",
];

/// A stats API whose answer the test switches; keeps the records of the requests it
/// answered 2xx.
struct Api {
    srv: HttpServer,
    code: Arc<Mutex<Option<u16>>>,
    accepted: Arc<Mutex<Vec<Value>>>,
}

fn records_of(r: &Request) -> Vec<Value> {
    wire::records(r.header("content-type").unwrap_or(""), &r.body)
}

impl Api {
    /// `Some(code)` answers with it; `None` never answers.
    fn start(code: Option<u16>) -> Api {
        let code = Arc::new(Mutex::new(code));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (c, a) = (code.clone(), accepted.clone());
        let srv = HttpServer::start(move |r| {
            let now = *c.lock().unwrap();
            if let Some(n) = now {
                if (200..300).contains(&n) {
                    a.lock().unwrap().extend(records_of(r));
                }
            }
            now.map(|n| (n, "{}".to_string()))
        });
        Api {
            srv,
            code,
            accepted,
        }
    }

    fn set(&self, code: Option<u16>) {
        *self.code.lock().unwrap() = code;
    }

    fn url(&self) -> String {
        self.srv.url("/v1/stats")
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }

    fn wait(&self, what: &str, a: &Agent, pred: impl Fn(&Api) -> bool) {
        let end = Instant::now() + T;
        while !pred(self) {
            assert!(
                Instant::now() < end,
                "{what}: not within {T:?}; {} requests, {} accepted\n{}",
                self.srv.requests().len(),
                self.accepted().len(),
                a.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn dead_url() -> String {
    format!("http://127.0.0.1:{}/dead", crate::support::free_port())
}

fn wait_until(a: &Agent, what: &str, pred: impl Fn(&Agent) -> bool) {
    let end = Instant::now() + T;
    while !pred(a) {
        assert!(
            Instant::now() < end,
            "{what}: not within {T:?}\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prepares an agent that collects every 200 ms and uploads every 500 ms.
fn prepare(b: &Broker, stats_url: &str, edit: impl FnOnce(&mut Value)) -> Agent {
    let url = stats_url.to_string();
    let mut a = Agent::prepare(b, |c| {
        c["stats_url"] = json!(url);
        c["token"] = json!("t0k3n-secret");
        c["debug"] = json!(true);
        edit(c);
    });
    a.env
        .push(("SOCKETMAN_TEST_MONITOR_MS".into(), "200".into()));
    a.env
        .push(("SOCKETMAN_TEST_HEARTBEAT_MS".into(), "500".into()));
    a.env
        .push(("SOCKETMAN_TEST_HTTP_TIMEOUT_MS".into(), "1000".into()));
    a
}

fn start(b: &Broker, stats_url: &str, edit: impl FnOnce(&mut Value)) -> Agent {
    let mut a = prepare(b, stats_url, edit);
    a.spawn();
    a.wait_online(1);
    a
}

fn cached_count(a: &Agent) -> usize {
    a.log().matches("stats: record cached").count()
}

/// The complete records still in the cache files.
fn cached_records(a: &Agent) -> Vec<Value> {
    let dir = a.dir.path().join("cache");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        if e.file_name().to_string_lossy().starts_with("seg-") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                out.push(serde_json::from_str(l).unwrap());
            }
        }
    }
    out
}

fn spooled(a: &Agent) -> usize {
    cached_records(a).len()
}

/// Stops uploads from succeeding, lets any in-flight one finish, and stops the agent:
/// (stored, accepted, still cached).
fn settle(api: &Api, a: &mut Agent) -> (usize, usize, usize) {
    api.set(Some(503));
    std::thread::sleep(Duration::from_millis(2500));
    let (st, _) = a.term();
    assert!(st.success(), "{}", a.log());
    (cached_count(a), api.accepted().len(), spooled(a))
}

/// [`settle`], then: stored = accepted + still cached, accepted oldest first.
fn settle_exactly_once(api: &Api, a: &mut Agent) -> (usize, usize, usize) {
    let (stored, accepted, left) = settle(api, a);
    assert_eq!(
        stored,
        accepted + left,
        "stored {stored} = accepted {accepted} + still cached {left}\n{}",
        a.log()
    );
    let times: Vec<u64> = api
        .accepted()
        .iter()
        .map(|r| r["created_at"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    (stored, accepted, left)
}

#[test]
fn stats_post_has_the_spec_shape() {
    let b = Broker::start();
    let api = Api::start(Some(200));
    let a = start(&b, &api.url(), |_| {});
    api.wait("first upload", &a, |x| !x.accepted().is_empty());
    let r = &api.srv.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path(), "/v1/stats");
    let q = r.query();
    assert_eq!(q["access_token"], "t0k3n-secret");
    assert_eq!(q["mac"], a.mac);
    let ct = r.header("content-type").unwrap();
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let parts = wire::multipart_parts(ct, &r.body);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].name.as_deref(), Some("data"));
    assert_eq!(
        parts[0].filename.as_deref(),
        Some("archive.gz"),
        "issue 16: the C agent's filename"
    );
    assert_eq!(parts[0].content_type.as_deref(), Some("application/gzip"));
    let text = String::from_utf8(wire::gunzip(&parts[0].data)).unwrap();
    assert!(text.ends_with('\n'));
    let rec: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(rec["created_at"].as_u64().unwrap() >= crate::support::now() - 60);
    let dev = &rec["device"];
    for k in DEVICE_KEYS {
        assert!(dev.get(*k).is_some(), "device.{k} in {rec}");
    }
    assert_eq!(dev["v"], "5");
    assert_eq!(dev["mac"], a.mac);
    assert_eq!(dev["smv"], env!("CARGO_PKG_VERSION"));
    assert_eq!(dev["dropped"], 0);
    assert!(dev["uptime"].as_u64().unwrap() > 0);
    assert!(dev["total_ram"].as_u64().unwrap() > 0);
    for k in ["interfaces", "ssids", "stations", "survey", "dhcp"] {
        assert!(rec[k].is_array(), "{k}");
    }
    let ifs = rec["interfaces"].as_array().unwrap();
    assert!(!ifs.is_empty());
    for k in [
        "name",
        "mac",
        "up",
        "mtu",
        "rx_bytes",
        "tx_bytes",
        "rx_packets",
        "tx_packets",
        "rx_errors",
        "tx_errors",
        "addresses",
    ] {
        assert!(ifs[0].get(k).is_some(), "interfaces[0].{k}");
    }
    assert!(
        !a.log().contains("t0k3n-secret"),
        "the token is never logged"
    );
}

/// Issue 16: what a server written for the C agent reads arrives at a real HTTP server with
/// C's names, places and types: `archive.gz`, `device.created_at`, `dhcp.name` `"*"` from a
/// real lease file, upper-case MACs in every list, `v` "5".
#[test]
fn stats_upload_is_a_superset_of_the_c_record() {
    let b = Broker::start();
    let api = Api::start(Some(200));
    let leases = tempfile::tempdir().unwrap();
    let lease_file = leases.path().join("dhcp.leases");
    std::fs::write(
        &lease_file,
        include_str!("../fixtures/dhcp.leases-pihole-ipv6-duid"),
    )
    .unwrap();
    let lf = lease_file.to_string_lossy().into_owned();
    let a = start(&b, &api.url(), |c| c["lease_file"] = json!(lf));
    api.wait("first upload", &a, |x| !x.accepted().is_empty());
    let r = &api.srv.requests()[0];
    let parts = wire::multipart_parts(r.header("content-type").unwrap(), &r.body);
    assert_eq!(parts[0].name.as_deref(), Some("data"), "C's part name");
    assert_eq!(
        parts[0].filename.as_deref(),
        Some("archive.gz"),
        "C's filename"
    );
    let rec = &api.accepted()[0];
    let dev = &rec["device"];
    assert!(dev["created_at"].is_u64(), "C's device.created_at: {dev}");
    assert_eq!(dev["created_at"], rec["created_at"]);
    assert!(dev["online"].is_boolean());
    assert_eq!(dev["v"], "5");
    let dhcp = rec["dhcp"].as_array().unwrap();
    assert_eq!(dhcp.len(), 15, "the IPv4 leases of the fixture");
    assert!(dhcp.iter().any(|l| l["name"] == "*"), "`*` kept: {dhcp:?}");
    let first = dhcp.iter().find(|l| l["ip"] == "192.168.1.164").unwrap();
    assert_eq!(first["mac"], "5C:97:F3:C1:E6:E0");
    assert_eq!(first["name"], "Joes-iPad");
    for l in dhcp {
        for k in ["mac", "ip", "name"] {
            assert!(l[k].is_string(), "dhcp.{k} is a string: {l}");
        }
    }
    for i in rec["interfaces"].as_array().unwrap() {
        if let Some(m) = i["mac"].as_str() {
            assert_eq!(m, m.to_ascii_uppercase(), "upper-case MAC: {i}");
        }
    }
}

#[test]
fn stats_outage_then_recovery_every_record_exactly_once() {
    let b = Broker::start();
    let api = Api::start(Some(500));
    let dead = dead_url();
    let mut a = start(&b, &api.url(), |c| c["backup_stats_url"] = json!(dead));
    // Several failing cycles: the API answers 500 and the backup refuses connections.
    api.wait("4 failed cycles", &a, |x| x.srv.requests().len() >= 4);
    assert!(a.log().contains("to backup"), "{}", a.log());
    assert!(api.accepted().is_empty());
    let during = cached_count(&a);
    assert!(during >= 4, "{during}");
    api.set(Some(200));
    api.wait("backlog delivered", &a, |x| x.accepted().len() >= during);
    let (stored, accepted, _) = settle_exactly_once(&api, &mut a);
    assert!(accepted >= during && stored >= accepted);
}

#[test]
fn stats_refused_then_config_reload_to_a_live_api() {
    let b = Broker::start();
    let api = Api::start(Some(200));
    let dead = dead_url();
    let mut a = start(&b, &dead, |_| {});
    wait_until(&a, "3 refused uploads", |a| {
        a.log().matches("failed:").count() >= 3
    });
    assert!(spooled(&a) >= 3, "records stay cached while refused");
    let mut cfg = a.config();
    cfg["stats_url"] = json!(api.url());
    a.write_config(&cfg);
    a.signal(1); // HUP
    let before = cached_count(&a);
    api.wait("records after reload", &a, |x| x.accepted().len() >= before);
    settle_exactly_once(&api, &mut a);
}

#[test]
fn stats_silent_api_times_out_to_the_backup() {
    let b = Broker::start();
    let api = Api::start(None);
    let backup = Api::start(Some(200));
    let mut a = start(&b, &api.url(), |c| {
        c["backup_stats_url"] = json!(backup.url())
    });
    backup.wait("records at the backup", &a, |x| x.accepted().len() >= 3);
    assert!(!api.srv.requests().is_empty());
    assert!(api.accepted().is_empty());
    let log = a.log().to_ascii_lowercase();
    assert!(
        log.contains("timed out") || log.contains("timeout"),
        "{log}"
    );
    backup.set(Some(503));
    std::thread::sleep(Duration::from_millis(3000));
    let (st, _) = a.term();
    assert!(st.success());
    assert_eq!(
        cached_count(&a),
        backup.accepted().len() + spooled(&a),
        "{}",
        a.log()
    );
}

#[test]
fn stats_401_keeps_records_until_authorized() {
    let b = Broker::start();
    let api = Api::start(Some(401));
    let backup = Api::start(Some(200));
    let mut a = start(&b, &api.url(), |c| {
        c["backup_stats_url"] = json!(backup.url())
    });
    api.wait("3 answers 401", &a, |x| x.srv.requests().len() >= 3);
    assert!(
        backup.srv.requests().is_empty(),
        "401 does not go to the backup"
    );
    assert!(spooled(&a) >= 3);
    assert!(a.log().contains("401"));
    let kept = cached_count(&a);
    api.set(Some(200));
    api.wait("kept records delivered", &a, |x| x.accepted().len() >= kept);
    backup.set(Some(503));
    let (stored, accepted, left) = settle_exactly_once(&api, &mut a);
    assert!(stored >= kept && accepted >= kept && left <= stored);
    assert!(backup.accepted().is_empty(), "{}", a.log());
}

#[test]
fn stats_401_with_init_url_reprovisions_and_resumes() {
    let b = Broker::start();
    // The API takes only the new token; the old one gets 401.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let acc = accepted.clone();
    let api = HttpServer::start(move |r| {
        if r.query().get("access_token").map(String::as_str) == Some("new-token") {
            acc.lock().unwrap().extend(records_of(r));
            Some((200, "{}".into()))
        } else {
            Some((401, "{}".into()))
        }
    });
    let mut a = prepare(&b, &api.url("/v1/stats"), |c| {
        c["token"] = json!("old-token")
    });
    let mut fresh = a.config();
    fresh["token"] = json!("new-token");
    let body = fresh.to_string();
    let init = HttpServer::start(move |_| Some((200, body.clone())));
    a.extra_args = vec!["-b".into(), init.url("/init")];
    a.spawn();
    a.wait_online(1);
    wait_until(&a, "records delivered with the new token", |_| {
        !accepted.lock().unwrap().is_empty()
    });
    assert!(!init.requests().is_empty());
    assert_eq!(init.requests()[0].query()["mac"], a.mac);
    assert_eq!(a.config()["token"], "new-token", "new config written");
    let log = a.log();
    assert!(log.contains("re-provisioned after 401"), "{log}");
    assert!(!log.contains("old-token") && !log.contains("new-token"));
    let _ = a.term();
}

#[test]
fn reprovisioning_that_changes_the_topic_answers_on_the_new_topic() {
    // One config-apply path: a 401 re-provisioning whose config moves the device to another
    // topic must re-execute the agent (as a HUP would), not log "applied" and keep the old
    // topics.
    let b = Broker::start();
    let api = HttpServer::start(move |r| {
        if r.query().get("access_token").map(String::as_str) == Some("new-token") {
            Some((200, "{}".into()))
        } else {
            Some((401, "{}".into()))
        }
    });
    let mut a = prepare(&b, &api.url("/v1/stats"), |c| {
        c["token"] = json!("old-token")
    });
    let new_topic = format!("moved{}", support::unique());
    let mut fresh = a.config();
    fresh["token"] = json!("new-token");
    fresh["topic"] = json!(new_topic);
    let body = fresh.to_string();
    let init = HttpServer::start(move |_| Some((200, body.clone())));
    a.extra_args = vec!["-b".into(), init.url("/init")];
    let moved = support::Client::connect(b.port, &new_topic, &a.key, &a.mac);
    a.spawn();
    a.wait_online(1);
    let pid = a.pid();
    // The old topic hears the clean stop's offline CONNECT, the new one the online CONNECT.
    wait_until(&a, "offline CONNECT on the old topic", |x| {
        x.count(Topic::Status, |v| {
            v["event_type"] == "CONNECT" && v["meta"]["online"] == "0"
        }) >= 1
    });
    let end = Instant::now() + Duration::from_secs(30);
    while !moved
        .all()
        .iter()
        .any(|m| m.json["event_type"] == "CONNECT" && m.json["meta"]["online"] == "1")
    {
        assert!(
            Instant::now() < end,
            "not online on the new topic\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.pid(), pid, "re-executed in place (same pid)");
    moved.send_raw(
        json!({"id": "after-move", "timestamp": support::now(), "meta": {"msg": "echo moved"}})
            .to_string()
            .as_bytes(),
    );
    let end = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(m) = moved
            .all()
            .into_iter()
            .find(|m| m.topic == Topic::Pub && m.json["id"] == "after-move")
        {
            break m.json;
        }
        assert!(
            Instant::now() < end,
            "no answer on the new topic\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(answer["meta"]["msg"], "moved\n");
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "after-move"),
        0,
        "nothing on the old topic"
    );
    assert_eq!(a.config()["topic"], json!(new_topic), "new config written");
    assert!(a.log().contains("restarting in place"), "{}", a.log());
    let _ = a.term();
}

#[test]
fn stats_kill9_with_records_cached_then_restart_delivers() {
    let b = Broker::start();
    let api = Api::start(Some(500));
    let mut a = start(&b, &api.url(), |_| {});
    wait_until(&a, "5 records cached", |a| spooled(a) >= 5);
    a.kill9();
    // The kill may land between a record's fsync and its log line: the files are the truth.
    let logged_before = cached_count(&a);
    let in_files = spooled(&a);
    assert!(
        in_files == logged_before || in_files == logged_before + 1,
        "every stored record survived kill -9: {in_files} in the files, {logged_before} logged"
    );
    api.set(Some(200));
    a.spawn();
    a.wait_online(2);
    api.wait("records from before the kill", &a, |x| {
        x.accepted().len() >= in_files
    });
    assert!(a.log().contains("waiting from before"), "{}", a.log());
    let (logged_total, accepted, left) = settle(&api, &mut a);
    let stored = in_files + (logged_total - logged_before);
    assert_eq!(
        stored,
        accepted + left,
        "stored {stored} = accepted {accepted} + still cached {left}\n{}",
        a.log()
    );
}

#[test]
fn stats_tiny_cache_drops_are_counted_and_reported() {
    let b = Broker::start();
    let api = Api::start(Some(500));
    let mut a = start(&b, &api.url(), |c| c["cache_max_bytes"] = json!(4000));
    wait_until(&a, "records dropped", |a| a.log().contains("dropped the"));
    api.set(Some(200));
    api.wait("a record reporting drops", &a, |x| {
        x.accepted()
            .iter()
            .any(|r| r["device"]["dropped"].as_u64().unwrap_or(0) > 0)
    });
    let (stored, accepted, left) = settle(&api, &mut a);
    let sum = |v: &[Value]| -> u64 {
        v.iter()
            .map(|r| r["device"]["dropped"].as_u64().unwrap())
            .sum()
    };
    let reported = sum(&api.accepted());
    let reported_in_cache = sum(&cached_records(&a));
    let pending: u64 = std::fs::read_to_string(a.dir.path().join("cache/dropped"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    assert!(reported > 0);
    // Every stored record was delivered, is still cached, or was dropped and counted: in a
    // delivered record, in a record still cached, or in the counter not yet reported.
    assert_eq!(
        stored as u64,
        accepted as u64 + left as u64 + reported + reported_in_cache + pending,
        "stored {stored}, accepted {accepted}, cached {left}, dropped: reported {reported} \
         + in cache {reported_in_cache} + pending {pending}\n{}",
        a.log()
    );
}

#[test]
fn stats_day_of_backlog_goes_out_in_batches_under_1mib() {
    let b = Broker::start();
    let api = Api::start(Some(200));
    let mut a = prepare(&b, &api.url(), |c| {
        c["cache_max_bytes"] = json!(100_000_000)
    });
    // One day of records (5760 at 15 s) already in the cache, in the spool's file format.
    let (rc, line, _) = run_bin(&["--collect-once"]);
    assert_eq!(rc, 0);
    let mut rec: Value = serde_json::from_str(line.trim()).unwrap();
    let cache = a.dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut seg = String::new();
    let mut id = 1;
    let t0 = 1_700_000_000u64;
    for i in 0..5760u64 {
        rec["created_at"] = json!(t0 + i * 15);
        seg.push_str(&rec.to_string());
        seg.push('\n');
        if seg.len() > 200_000 || i == 5759 {
            std::fs::write(cache.join(format!("seg-{id:016}.ndjson")), &seg).unwrap();
            seg.clear();
            id += 1;
        }
    }
    a.spawn();
    a.wait_online(1);
    let old = |x: &Api| -> Vec<u64> {
        x.accepted()
            .iter()
            .map(|r| r["created_at"].as_u64().unwrap())
            .filter(|t| *t < t0 + 5760 * 15)
            .collect()
    };
    api.wait("the whole day", &a, |x| old(x).len() >= 5760);
    assert_eq!(
        old(&api),
        (0..5760).map(|i| t0 + i * 15).collect::<Vec<_>>()
    );
    let reqs = api.srv.requests();
    assert!(reqs.len() >= 5, "{}", reqs.len());
    for r in &reqs {
        let parts = wire::multipart_parts(r.header("content-type").unwrap(), &r.body);
        let raw = wire::gunzip(&parts[0].data);
        assert!(raw.len() <= 1 << 20, "batch of {} bytes", raw.len());
    }
    let _ = a.term();
}

#[test]
fn stats_no_cache_posts_json_per_record() {
    let b = Broker::start();
    let api = Api::start(Some(200));
    let mut a = start(&b, &api.url(), |c| c["no-cache"] = json!(1));
    api.wait("3 JSON records", &a, |x| x.accepted().len() >= 3);
    let r = &api.srv.requests()[0];
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.query()["mac"], a.mac);
    assert_eq!(records_of(r)[0]["device"]["v"], "5");
    // Failures join the cache and go out as gzip batches later.
    api.set(Some(500));
    wait_until(&a, "2 records cached", |a| spooled(a) >= 2);
    api.set(Some(200));
    api.wait("a gzip batch", &a, |x| {
        x.srv.requests().iter().any(|r| {
            r.header("content-type")
                .is_some_and(|c| c.starts_with("multipart/form-data"))
        })
    });
    let _ = a.term();
}

#[test]
fn stats_usr1_uploads_now_and_cmd_bodies_are_ignored() {
    let b = Broker::start();
    let marker = std::env::temp_dir().join(format!("socketman-pwned-{}", std::process::id()));
    let cmd = format!("{{\"cmd\":\"touch {}\"}}", marker.display());
    let srv = HttpServer::start(move |_| Some((200, cmd.clone())));
    let mut a = prepare(&b, &srv.url("/s"), |c| c["heartbeat"] = json!(3600));
    a.env.retain(|(k, _)| k != "SOCKETMAN_TEST_HEARTBEAT_MS");
    a.spawn();
    a.wait_online(1);
    wait_until(&a, "a record cached", |a| spooled(a) >= 1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(srv.requests().is_empty(), "heartbeat is an hour");
    a.signal(10); // USR1
    let end = Instant::now() + Duration::from_secs(10);
    while srv.requests().is_empty() {
        assert!(Instant::now() < end, "USR1 did not upload\n{}", a.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until(&a, "cmd logged as ignored", |a| {
        a.log().contains("`cmd`; ignored")
    });
    assert!(!marker.exists());
    let _ = a.term();
}

#[test]
fn healthz_reports_the_cache() {
    let b = Broker::start();
    let dead = dead_url();
    let a = start(&b, &dead, |_| {});
    wait_until(&a, "3 records cached", |a| spooled(a) >= 3);
    let h = a.job("healthz", json!({}));
    let c = &h["meta"]["result"]["meta"]["cache"];
    assert!(c["records"].as_u64().unwrap() >= 3, "{h}");
    assert!(c["bytes"].as_u64().unwrap() > 1000, "{h}");
    assert_eq!(c["dropped"], 0);
}

#[test]
fn stats_job_returns_a_fresh_record() {
    let b = Broker::start();
    let a = Agent::start(&b, |_| {});
    let p = a.job("stats", json!({}));
    assert_eq!(p["meta"]["success"], true, "{p}");
    let rec = &p["meta"]["result"];
    for k in DEVICE_KEYS {
        assert!(rec["device"].get(*k).is_some(), "device.{k}");
    }
    assert_eq!(rec["device"]["mac"], a.mac);
}

#[test]
fn collect_once_prints_one_record_line() {
    let (rc, out, err) = run_bin(&["--collect-once"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(out.lines().count(), 1);
    let rec: Value = serde_json::from_str(out.trim()).unwrap();
    for k in DEVICE_KEYS {
        assert!(rec["device"].get(*k).is_some(), "device.{k}");
    }
    for k in ["interfaces", "ssids", "stations", "survey", "dhcp"] {
        assert!(rec[k].is_array(), "{k}");
    }
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("c.json");
    std::fs::write(&bad, "{ nope").unwrap();
    let (rc, _, err) = run_bin(&["--collect-once", &format!("--config={}", bad.display())]);
    assert_eq!(rc, 2, "{err}");
}

/// A cache in RAM (tmpfs, as `/tmp` on OpenWrt) is saved to `state_dir` at the clean stop
/// and put back at the next start, so a reboot (here: the tmpfs directory wiped) loses nothing.
#[test]
fn stats_ram_cache_survives_a_reboot_through_state_dir() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("NOT RUN: no /dev/shm tmpfs on this machine");
        return;
    }
    let ram = tempfile::tempdir_in(shm).unwrap();
    let cache = ram.path().join("cache");
    let b = Broker::start();
    let api = Api::start(Some(500));
    let c2 = cache.clone();
    let mut a = start(&b, &api.url(), move |c| c["cache_dir"] = json!(c2));
    wait_until(&a, "4 records cached", |a| {
        a.log().matches("stats: record cached").count() >= 4
    });
    let (st, _) = a.term();
    assert!(st.success());
    let stored = cached_count(&a);
    let saved = a.dir.path().join("state/cache-rescue");
    assert!(saved.is_dir(), "no rescue copy in state_dir\n{}", a.log());
    // The "reboot": tmpfs comes back empty.
    std::fs::remove_dir_all(&cache).unwrap();
    api.set(Some(200));
    a.spawn();
    a.wait_online(2);
    api.wait("records from before the reboot", &a, |x| {
        x.accepted().len() >= stored
    });
    assert!(!saved.exists(), "rescue copy removed once put back");
    let times: Vec<u64> = api
        .accepted()
        .iter()
        .map(|r| r["created_at"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
}

#[test]
fn stats_redirects_neither_crash_the_agent_nor_lose_records() {
    // Issue 14: a 302 to file:///etc/shadow made ureq panic (the whole agent aborted every
    // upload), and a 301 to another server turned the POST into a GET that was counted as
    // sent. Now: neither is followed, records stay, jobs keep running; a 307 re-sends the
    // same POST to the new place.
    let b = Broker::start();
    let other = Api::start(Some(200));
    let srv = HttpServer::start(|_| Some((302, "file:///etc/shadow".into())));
    let mut a = start(&b, &srv.url("/s"), |_| {});
    let pid = a.pid();
    wait_until(&a, "3 refused uploads", |_| srv.requests().len() >= 3);
    assert_eq!(a.pid(), pid);
    let p = a.run("alive", "echo still here");
    assert_eq!(p["meta"]["msg"], "still here\n");
    assert!(
        a.log().contains("not followed: only http and https"),
        "{}",
        a.log()
    );
    let other_url = other.url();
    srv.set_handler(move |_| Some((301, other_url.clone())));
    let n = srv.requests().len();
    wait_until(&a, "3 more refused uploads", |_| {
        srv.requests().len() >= n + 3
    });
    assert!(
        other.srv.requests().is_empty(),
        "no GET to the other server"
    );
    assert!(spooled(&a) >= 3, "records stay cached");
    // 307: the same POST, with its body, to the new place; then the backlog is delivered.
    let other_url = other.url();
    srv.set_handler(move |_| Some((307, other_url.clone())));
    let during = cached_count(&a);
    other.wait("backlog delivered through the 307", &a, |x| {
        x.accepted().len() >= during
    });
    assert!(other.srv.requests().iter().all(|r| r.method == "POST"));
    let (stored, accepted, left) = settle(&other, &mut a);
    assert_eq!(stored, accepted + left, "{}", a.log());
}
