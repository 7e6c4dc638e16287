//! `smctl`: the operator's command line for a socketman fleet (issue 8). One process, one
//! thread, one synchronous Paho `Client` (clean session, client id `smctl-<pid>-<n>`):
//! `send` (shell job, exit with the remote exit code), `op` (typed job, pretty result),
//! `watch` (stream status/delivery/pub), `devices` (retained CONNECTs), `fleet` (fan-out with
//! a summary). Broker, topic, key, MAC and `job_secret` come from socketman's own config file
//! (`--config`, read with `socketman::config::load`) and/or flags; jobs are signed as SPEC §4.3
//! when a `job_secret` is known. Shares nothing with the agent at run time; the payload shapes
//! and topic names come from the library (`socketman::proto::Topics`, `jobs::intake::sign`).
#![forbid(unsafe_code)]

use getopts::{Matches, Options};
use paho_mqtt as mqtt;
use serde_json::{json, Value};
use socketman::config::Config;
use socketman::proto::Topics;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Usage error, bad option or config file.
const EXIT_USAGE: i32 = 64;
/// The broker could not be reached (connect, subscribe or publish failed).
const EXIT_BROKER: i32 = 69;
/// No answer (PROCESSED) within `--timeout`; for `fleet`: some device did not answer.
const EXIT_NO_ANSWER: i32 = 75;
/// The device REJECTED the job (its error is printed on stderr).
const EXIT_REJECTED: i32 = 76;
/// The job ran on the device and was killed there by its timeout (`error: "timeout"`).
const EXIT_REMOTE_TIMEOUT: i32 = 124;

const USAGE: &str = "\
Usage: smctl [BROKER OPTIONS] COMMAND [OPTIONS] [-- WORDS…]

Commands:
  send [--mac M] [--type T] [--timeout S] -- COMMAND…
        run a shell command on one device (words joined by spaces, run by /bin/sh -c there);
        prints its output and exits with its exit code
  op [--mac M] [--timeout S] TYPE [JSON-ARGS]
        run a typed job (ping, healthz, process.list, …); prints the result as pretty JSON
  watch [--mac M] [--json] [--count N] [--for S]
        stream CONNECT/PING/events, DELIVERED, PROCESSED and REJECTED of one device (or all)
  devices [--json] [--wait S]
        list devices from the retained CONNECT messages: MAC, online/offline, client id,
        version, since
  fleet (--macs FILE | --all-online) [--timeout S] [--show-output] [--json] -- COMMAND…
        run one shell command on many devices; live progress on stderr (when a terminal),
        then a summary: ok / failed / rejected / no answer, time to results, slowest device

Broker options (flags override the config file):
  -c, --config FILE   socketman config file: mqtt_host, port, tls, cacrt, username, password,
                      topic, key, mac (the default --mac) and job_secret (jobs are then signed)
      --host H        broker host (default localhost)
      --port P        broker port (default 1883, 8883 with --tls)
      --tls           MQTT over TLS, broker certificate verified
      --cacrt FILE    CA file for --tls (default: the system bundle)
      --username U, --password P
      --topic T, --key K   topic parts: sub/T/K/MAC, pub/T/K/MAC, … (required)
  -h, --help          this text

Exit codes:
  send: the remote exit code (0-255); 124 the job timed out on the device
  op: 0 success, 1 the job failed (success:false, its error on stderr)
  fleet: 0 all ok, 1 some failed or were rejected, 75 some did not answer
  all: 64 usage or config error, 69 broker unreachable, 75 no answer within --timeout,
       76 job REJECTED by the device (its error on stderr)
";

/// A failure that ends the program: message for stderr, exit code.
#[derive(Debug)]
struct Fail(i32, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(EXIT_USAGE, msg.into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            eprintln!("smctl: {msg}");
            if code == EXIT_USAGE {
                eprintln!("Try 'smctl --help'.");
            }
            code
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn options() -> Options {
    let mut o = Options::new();
    o.optopt("c", "config", "socketman config file", "FILE");
    o.optopt("", "host", "broker host", "H");
    o.optopt("", "port", "broker port", "P");
    o.optflag("", "tls", "MQTT over TLS");
    o.optopt("", "cacrt", "CA file", "FILE");
    o.optopt("", "username", "MQTT user", "U");
    o.optopt("", "password", "MQTT password", "P");
    o.optopt("", "topic", "topic part T", "T");
    o.optopt("", "key", "topic part K", "K");
    o.optopt("m", "mac", "device MAC", "M");
    o.optopt("t", "type", "job type (send)", "T");
    o.optopt("", "timeout", "seconds to wait for answers", "S");
    o.optflag("", "json", "JSON output");
    o.optopt("", "count", "watch: stop after N messages", "N");
    o.optopt("", "for", "watch: stop after S seconds", "S");
    o.optopt("", "wait", "devices: seconds to collect", "S");
    o.optopt("", "macs", "fleet: file of MACs", "FILE");
    o.optflag("", "all-online", "fleet: every online device");
    o.optflag("", "show-output", "fleet: print each device's output");
    o.optflag("h", "help", "help");
    o
}

/// Which options each command accepts (besides the broker options).
fn allowed(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "send" => &["mac", "type", "timeout"],
        "op" => &["mac", "timeout"],
        "watch" => &["mac", "json", "count", "for"],
        "devices" => &["json", "wait"],
        "fleet" => &["macs", "all-online", "timeout", "show-output", "json"],
        _ => &[],
    }
}

const COMMAND_OPTIONS: &[&str] = &[
    "mac",
    "type",
    "timeout",
    "json",
    "count",
    "for",
    "wait",
    "macs",
    "all-online",
    "show-output",
];

fn run(args: &[String]) -> Result<i32, Fail> {
    let m = options().parse(args).map_err(|e| usage(format!("{e}")))?;
    if m.opt_present("help") {
        print!("{USAGE}");
        return Ok(0);
    }
    let Some(cmd) = m.free.first().cloned() else {
        return Err(usage("no command given (send, op, watch, devices, fleet)"));
    };
    if allowed(&cmd).is_empty() {
        return Err(usage(format!("unknown command '{cmd}'")));
    }
    for o in COMMAND_OPTIONS {
        if m.opt_present(o) && !allowed(&cmd).contains(o) {
            return Err(usage(format!("--{o} does not apply to '{cmd}'")));
        }
    }
    let target = Target::from_matches(&m)?;
    let words = &m.free[1..];
    match cmd.as_str() {
        "send" => cmd_send(&target, &m, words),
        "op" => cmd_op(&target, &m, words),
        "watch" => cmd_watch(&target, &m, words),
        "devices" => cmd_devices(&target, &m, words),
        _ => cmd_fleet(&target, &m, words),
    }
}

/// Where and how to reach the devices.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    cfg: Config,
    /// `job_secret`: jobs are wrapped and signed when set.
    secret: Option<String>,
}

fn parse_num<T: std::str::FromStr>(m: &Matches, name: &str) -> Result<Option<T>, Fail> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|_| usage(format!("--{name}: '{s}' is not a valid number"))),
    }
}

fn parse_secs(m: &Matches, name: &str, default: f64) -> Result<Duration, Fail> {
    let v = parse_num::<f64>(m, name)?.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v < 1e7) {
        return Err(usage(format!(
            "--{name}: must be a positive number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Target {
    fn from_matches(m: &Matches) -> Result<Target, Fail> {
        let mut cfg = match m.opt_str("config") {
            Some(path) => {
                let (cfg, _notes) = socketman::config::load(Path::new(&path))
                    .map_err(|e| usage(format!("config: {e}")))?;
                cfg
            }
            None => Config {
                mqtt_host: "localhost".into(),
                port: 0,
                ..Config::default()
            },
        };
        let from_file = m.opt_present("config");
        if let Some(h) = m.opt_str("host") {
            cfg.mqtt_host = h;
        }
        if m.opt_present("tls") {
            cfg.tls = true;
        }
        if let Some(p) = parse_num::<u16>(m, "port")? {
            cfg.port = p;
        } else if !from_file {
            cfg.port = if cfg.tls { 8883 } else { 1883 };
        }
        if let Some(c) = m.opt_str("cacrt") {
            cfg.cacrt = Some(c);
        }
        if let Some(u) = m.opt_str("username") {
            cfg.username = Some(u);
        }
        if let Some(p) = m.opt_str("password") {
            cfg.password = Some(p);
        }
        if let Some(t) = m.opt_str("topic") {
            cfg.topic = t;
        }
        if let Some(k) = m.opt_str("key") {
            cfg.key = k;
        }
        if let Some(mac) = m.opt_str("mac") {
            cfg.mac = Some(mac);
        }
        for (name, v) in [("topic", &cfg.topic), ("key", &cfg.key)] {
            if v.is_empty() {
                return Err(usage(format!("--{name} is required (or --config FILE)")));
            }
            if v.contains(['/', '+', '#']) {
                return Err(usage(format!(
                    "--{name} '{v}' may not contain '/', '+' or '#'"
                )));
            }
        }
        if cfg.mqtt_host.is_empty() {
            return Err(usage("--host is required"));
        }
        let secret = cfg.job_secret.clone().filter(|s| !s.is_empty());
        Ok(Target { cfg, secret })
    }

    /// The MAC of `--mac` or the config's `mac`.
    fn mac(&self) -> Result<String, Fail> {
        match &self.cfg.mac {
            Some(m) if !m.is_empty() => {
                if m.contains(['/', '+', '#']) {
                    Err(usage(format!(
                        "--mac '{m}' may not contain '/', '+' or '#'"
                    )))
                } else {
                    Ok(m.clone())
                }
            }
            _ => Err(usage("--mac is required (or a config file with \"mac\")")),
        }
    }

    fn topics(&self, mac: &str) -> Topics {
        Topics::new(&self.cfg, mac)
    }

    /// `kind/T/K/+`.
    fn wildcard(&self, kind: &str) -> String {
        format!("{kind}/{}/{}/+", self.cfg.topic, self.cfg.key)
    }

    /// The payload for `job`: the job itself, or the signed wrapper of SPEC §4.3.
    fn wrap(&self, job: &Value) -> String {
        let text = job.to_string();
        match &self.secret {
            Some(s) => {
                json!({"signed": text, "sig": socketman::jobs::intake::sign(s, &text)}).to_string()
            }
            None => text,
        }
    }
}

/// A connected client and its message stream.
struct Conn {
    cli: mqtt::Client,
    rx: mqtt::SyncReceiver<Option<mqtt::Message>>,
}

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A job id unique across smctl runs: `smctl-<unix ms>-<pid>-<n>`.
fn new_job_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("smctl-{ms}-{}-{n}", std::process::id())
}

impl Conn {
    fn open(t: &Target) -> Result<Conn, Fail> {
        let uri = socketman::link::server_uri(&t.cfg);
        let bfail = |what: &str, e: mqtt::Error| Fail(EXIT_BROKER, format!("{what} {uri}: {e}"));
        let client_id = format!(
            "smctl-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let cli = mqtt::Client::new(
            mqtt::CreateOptionsBuilder::new_v3()
                .server_uri(&uri)
                .client_id(client_id)
                .persistence(mqtt::PersistenceType::None)
                .finalize(),
        )
        .map_err(|e| bfail("cannot create an MQTT client for", e))?;
        let mut cli = cli;
        cli.set_timeout(Duration::from_secs(15));
        let rx = cli.start_consuming();
        let mut b = mqtt::ConnectOptionsBuilder::new_v3();
        b.clean_session(true)
            .keep_alive_interval(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if let Some(u) = &t.cfg.username {
            b.user_name(u);
            if let Some(p) = &t.cfg.password {
                b.password(p.as_str());
            }
        }
        if t.cfg.tls {
            let mut ssl = mqtt::SslOptionsBuilder::new();
            ssl.enable_server_cert_auth(true).verify(true);
            if let Some(ca) = t
                .cfg
                .cacrt
                .clone()
                .or_else(socketman::link::system_ca_bundle)
            {
                ssl.trust_store(&ca)
                    .map_err(|e| Fail(EXIT_USAGE, format!("CA file {ca}: {e}")))?;
            }
            b.ssl_options(ssl.finalize());
        }
        cli.connect(b.finalize())
            .map_err(|e| bfail("cannot connect to", e))?;
        Ok(Conn { cli, rx })
    }

    fn subscribe(&self, topics: &[String]) -> Result<(), Fail> {
        let qos = vec![1; topics.len()];
        self.cli
            .subscribe_many(topics, &qos)
            .map(|_| ())
            .map_err(|e| {
                Fail(
                    EXIT_BROKER,
                    format!("cannot subscribe to {}: {e}", topics.join(", ")),
                )
            })
    }

    fn publish(&self, topic: &str, payload: String) -> Result<(), Fail> {
        self.cli
            .publish(mqtt::Message::new(topic, payload, 1))
            .map_err(|e| Fail(EXIT_BROKER, format!("cannot publish to {topic}: {e}")))
    }

    /// The next message before `deadline`; `Ok(None)` when the deadline passed.
    fn next(&self, deadline: Instant) -> Result<Option<mqtt::Message>, Fail> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match self.rx.recv_timeout(left) {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => Err(Fail(EXIT_BROKER, "connection to the broker lost".into())),
            Err(mqtt::sync_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(mqtt::sync_channel::RecvTimeoutError::Disconnected) => {
                Err(Fail(EXIT_BROKER, "connection to the broker lost".into()))
            }
        }
    }

    fn close(self) {
        let _ = self.cli.disconnect(None);
    }
}

/// The last topic level (the MAC) of `kind/T/K/MAC`.
fn mac_of(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or("")
}

/// The job of `send`/`fleet`/`op`.
fn job(id: &str, ty: Option<&str>, msg: Option<&str>, args: Option<Value>) -> Value {
    let mut meta = serde_json::Map::new();
    if let Some(m) = msg {
        meta.insert("msg".into(), json!(m));
    }
    if let Some(t) = ty {
        meta.insert("type".into(), json!(t));
    }
    if let Some(a) = args {
        meta.insert("args".into(), a);
    }
    json!({"id": id, "timestamp": socketman::proto::now(), "meta": meta})
}

/// What came back for one job on one device.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Processed(Value),
    Rejected(String),
}

/// Publishes `job` to one device and waits for its PROCESSED or REJECTED.
fn one_job(t: &Target, mac: &str, job: &Value, timeout: Duration) -> Result<Answer, Fail> {
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let topics = t.topics(mac);
    let conn = Conn::open(t)?;
    conn.subscribe(&[topics.delivery.clone(), topics.publ.clone()])?;
    conn.publish(&topics.sub, t.wrap(job))?;
    let deadline = Instant::now() + timeout;
    let mut delivered = false;
    while let Some(msg) = conn.next(deadline)? {
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        if v["id"] != id.as_str() {
            continue;
        }
        match v["event_type"].as_str() {
            Some("DELIVERED") => delivered = true,
            Some("PROCESSED") => {
                conn.close();
                return Ok(Answer::Processed(v));
            }
            Some("REJECTED") => {
                conn.close();
                let e = v["meta"]["error"].as_str().unwrap_or("(no error given)");
                return Ok(Answer::Rejected(e.to_string()));
            }
            _ => {}
        }
    }
    conn.close();
    let secs = timeout.as_secs_f64();
    Err(Fail(
        EXIT_NO_ANSWER,
        if delivered {
            format!("job {id} was delivered to {mac} but no result came within {secs} s")
        } else {
            format!("no answer from {mac} within {secs} s (is it online? smctl devices)")
        },
    ))
}

/// The exit code `send` ends with for a PROCESSED.
fn send_exit_code(p: &Value) -> i32 {
    let meta = &p["meta"];
    match meta["exit_code"].as_i64() {
        Some(c) => (c & 0xff) as i32,
        None if meta["error"] == "timeout" => EXIT_REMOTE_TIMEOUT,
        None if meta["success"] == true => 0,
        None => 1,
    }
}

fn cmd_send(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if words.is_empty() {
        return Err(usage("send: no command given (smctl send -- COMMAND…)"));
    }
    let mac = t.mac()?;
    let timeout = parse_secs(m, "timeout", 60.0)?;
    let ty = m.opt_str("type");
    let cmd = words.join(" ");
    let j = job(&new_job_id(), ty.as_deref(), Some(&cmd), None);
    match one_job(t, &mac, &j, timeout)? {
        Answer::Rejected(e) => Err(Fail(EXIT_REJECTED, format!("{mac} rejected the job: {e}"))),
        Answer::Processed(p) => {
            let meta = &p["meta"];
            let out = meta["msg"].as_str().unwrap_or_default();
            let mut so = std::io::stdout();
            let _ = so.write_all(out.as_bytes());
            let _ = so.flush();
            if meta["truncated"] == true {
                eprintln!("smctl: output was cut at the device's job_output_max");
            }
            let code = send_exit_code(&p);
            if code == EXIT_REMOTE_TIMEOUT {
                eprintln!("smctl: the job timed out on {mac} and was killed");
            } else if let (None, Some(e)) = (meta["exit_code"].as_i64(), meta["error"].as_str()) {
                eprintln!("smctl: {e}");
            }
            Ok(code)
        }
    }
}

fn cmd_op(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    let (ty, args) = match words {
        [ty] => (ty.clone(), json!({})),
        [ty, a] => {
            let v: Value = serde_json::from_str(a)
                .map_err(|e| usage(format!("op: JSON-ARGS is not valid JSON: {e}")))?;
            if !v.is_object() {
                return Err(usage("op: JSON-ARGS must be a JSON object"));
            }
            (ty.clone(), v)
        }
        [] => return Err(usage("op: no job type given (smctl op TYPE [JSON-ARGS])")),
        _ => return Err(usage("op: too many words (quote the JSON arguments)")),
    };
    let mac = t.mac()?;
    let timeout = parse_secs(m, "timeout", 60.0)?;
    let j = job(&new_job_id(), Some(&ty), None, Some(args));
    match one_job(t, &mac, &j, timeout)? {
        Answer::Rejected(e) => Err(Fail(EXIT_REJECTED, format!("{mac} rejected the job: {e}"))),
        Answer::Processed(p) => {
            let meta = &p["meta"];
            let shown = match meta.get("result") {
                Some(r) if !r.is_null() => serde_json::to_string_pretty(r).unwrap_or_default(),
                _ => meta["msg"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_end()
                    .to_string(),
            };
            if !shown.is_empty() {
                println!("{shown}");
            }
            if meta["success"] == true {
                Ok(0)
            } else {
                let e = meta["error"].as_str().unwrap_or("the job failed");
                eprintln!("smctl: {ty} failed on {mac}: {e}");
                Ok(1)
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SSZ` of a Unix time.
fn utc(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// First line of `s`, cut at `max` characters, with `…` when anything was left out.
fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let more = s.trim_end().lines().nth(1).is_some() || line.chars().count() > max;
    let mut out: String = line.chars().take(max).collect();
    if more {
        out.push('…');
    }
    out
}

/// The readable line of `watch` for one message.
fn describe(topic: &str, retained: bool, v: &Value) -> String {
    let kind = topic.split('/').next().unwrap_or("");
    let mac = mac_of(topic);
    let ts = v["timestamp"]
        .as_i64()
        .unwrap_or_else(|| socketman::proto::now() as i64);
    let meta = &v["meta"];
    let id = v["id"].as_str().unwrap_or("-");
    let ev = v["event_type"].as_str().unwrap_or("?");
    let text = match (kind, ev) {
        (_, "CONNECT") => {
            let state = if meta["online"] == "1" {
                "online"
            } else {
                "offline"
            };
            let mut s = format!(
                "CONNECT {state} {}",
                meta["client_id"].as_str().unwrap_or("?")
            );
            if let Some(ver) = meta["version"].as_str() {
                s.push_str(&format!(" v{ver}"));
            }
            s
        }
        (_, "PING") => format!(
            "PING uptime {} s, status {}",
            meta["uptime"], meta["status"]
        ),
        (_, "DELIVERED") => {
            let dup = if meta["duplicate"] == true {
                " (duplicate)"
            } else {
                ""
            };
            format!("DELIVERED {id}{dup}")
        }
        (_, "PROCESSED") => {
            let ok = if meta["success"] == true {
                "ok"
            } else {
                "FAILED"
            };
            let mut s = format!(
                "PROCESSED {id} {} {ok} exit {} in {} ms",
                meta["type"].as_str().unwrap_or("cmd"),
                meta["exit_code"],
                meta["duration_ms"]
            );
            if let Some(e) = meta["error"].as_str() {
                s.push_str(&format!(" error: {e}"));
            }
            let out = first_line(meta["msg"].as_str().unwrap_or(""), 60);
            if !out.is_empty() {
                s.push_str(&format!(": {out}"));
            }
            s
        }
        (_, "REJECTED") => format!(
            "REJECTED {id}: {}",
            meta["error"].as_str().unwrap_or("(no error given)")
        ),
        (_, "?") if v.is_null() => "(not JSON)".to_string(),
        (_, other) => format!("{other} {}", meta),
    };
    let r = if retained { " (retained)" } else { "" };
    format!("{}  {mac}  {text}{r}", utc(ts))
}

fn cmd_watch(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if !words.is_empty() {
        return Err(usage(format!("watch: unexpected '{}'", words.join(" "))));
    }
    let mac = t.cfg.mac.clone().unwrap_or_else(|| "+".into());
    let count = parse_num::<u64>(m, "count")?;
    let deadline = match m.opt_str("for") {
        Some(_) => Instant::now() + parse_secs(m, "for", 1.0)?,
        None => Instant::now() + Duration::from_secs(100 * 365 * 86_400),
    };
    let conn = Conn::open(t)?;
    let tail = format!("{}/{}/{mac}", t.cfg.topic, t.cfg.key);
    conn.subscribe(&["status", "delivery", "pub"].map(|k| format!("{k}/{tail}")))?;
    let json_out = m.opt_present("json");
    let mut seen = 0u64;
    let mut so = std::io::stdout();
    while count.is_none_or(|c| seen < c) {
        let Some(msg) = conn.next(deadline)? else {
            break;
        };
        seen += 1;
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        let line = if json_out {
            let payload = if v.is_null() {
                json!(String::from_utf8_lossy(msg.payload()))
            } else {
                v
            };
            json!({"topic": msg.topic(), "retained": msg.retained(), "payload": payload})
                .to_string()
        } else {
            describe(msg.topic(), msg.retained(), &v)
        };
        if writeln!(so, "{line}").and_then(|_| so.flush()).is_err() {
            break; // stdout closed (e.g. `| head`)
        }
    }
    conn.close();
    Ok(0)
}

/// One device as its retained CONNECT tells.
#[derive(Debug, Clone, PartialEq)]
struct Device {
    mac: String,
    online: bool,
    client_id: String,
    version: String,
    since: i64,
}

/// Every device with a CONNECT on `status/T/K/+` within `wait` (retained ones arrive at once).
fn collect_devices(t: &Target, wait: Duration) -> Result<Vec<Device>, Fail> {
    let conn = Conn::open(t)?;
    conn.subscribe(&[t.wildcard("status")])?;
    let deadline = Instant::now() + wait;
    let mut devs: BTreeMap<String, Device> = BTreeMap::new();
    while let Some(msg) = conn.next(deadline)? {
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        if v["event_type"] != "CONNECT" {
            continue;
        }
        let meta = &v["meta"];
        let mac = mac_of(msg.topic()).to_string();
        devs.insert(
            mac.clone(),
            Device {
                mac,
                online: meta["online"] == "1" || meta["online"] == 1 || meta["online"] == true,
                client_id: meta["client_id"].as_str().unwrap_or("").to_string(),
                version: meta["version"].as_str().unwrap_or("").to_string(),
                since: v["timestamp"].as_i64().unwrap_or(0),
            },
        );
    }
    conn.close();
    Ok(devs.into_values().collect())
}

fn cmd_devices(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if !words.is_empty() {
        return Err(usage(format!("devices: unexpected '{}'", words.join(" "))));
    }
    let wait = parse_secs(m, "wait", 1.0)?;
    let devs = collect_devices(t, wait)?;
    if m.opt_present("json") {
        let list: Vec<Value> = devs
            .iter()
            .map(|d| {
                json!({"mac": d.mac, "online": d.online, "client_id": d.client_id,
                       "version": if d.version.is_empty() { Value::Null } else { json!(d.version) },
                       "since": d.since})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(0);
    }
    print!("{}", devices_table(&devs));
    Ok(0)
}

fn devices_table(devs: &[Device]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<20} {:<10} {}\n",
        "MAC", "STATE", "CLIENT_ID", "VERSION", "SINCE"
    );
    for d in devs {
        let state = if d.online { "online" } else { "offline" };
        let ver = if d.version.is_empty() {
            "-"
        } else {
            &d.version
        };
        let since = if d.since > 0 {
            utc(d.since)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<20} {:<8} {:<20} {:<10} {since}\n",
            d.mac, state, d.client_id, ver
        ));
    }
    let online = devs.iter().filter(|d| d.online).count();
    out.push_str(&format!(
        "{} devices: {online} online, {} offline\n",
        devs.len(),
        devs.len() - online
    ));
    out
}

/// MACs of a `--macs` file: one per line; blank lines and `#` comments are skipped.
fn parse_macs(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if !l.is_empty() && !out.iter().any(|m| m == l) {
            out.push(l.to_string());
        }
    }
    out
}

/// How one device of a fleet job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Rejected,
    NoAnswer,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
            Outcome::NoAnswer => "no answer",
        }
    }
}

/// One device of a fleet job.
#[derive(Debug, Clone)]
struct Slot {
    mac: String,
    sent: Option<Instant>,
    delivered: bool,
    /// Time from this device's publish to its answer, and the answer.
    answer: Option<(Duration, Answer)>,
}

impl Slot {
    fn outcome(&self) -> Outcome {
        match &self.answer {
            None => Outcome::NoAnswer,
            Some((_, Answer::Rejected(_))) => Outcome::Rejected,
            Some((_, Answer::Processed(p))) if p["meta"]["success"] == true => Outcome::Ok,
            Some(_) => Outcome::Failed,
        }
    }
}

/// The `q` quantile (0–1) of sorted `xs` (nearest rank).
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let rank = (q * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

/// The summary of a finished fleet job.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    total: usize,
    ok: usize,
    failed: usize,
    rejected: usize,
    no_answer: usize,
    /// Of the unanswered: how many had said DELIVERED.
    delivered_only: usize,
    p50: f64,
    p99: f64,
    max: f64,
    slowest: Option<String>,
}

fn summarize(slots: &[Slot]) -> Summary {
    let count = |o: Outcome| slots.iter().filter(|s| s.outcome() == o).count();
    let mut lat: Vec<(f64, &str)> = slots
        .iter()
        .filter_map(|s| {
            s.answer
                .as_ref()
                .map(|(d, _)| (d.as_secs_f64(), s.mac.as_str()))
        })
        .collect();
    lat.sort_by(|a, b| a.0.total_cmp(&b.0));
    let xs: Vec<f64> = lat.iter().map(|l| l.0).collect();
    Summary {
        total: slots.len(),
        ok: count(Outcome::Ok),
        failed: count(Outcome::Failed),
        rejected: count(Outcome::Rejected),
        no_answer: count(Outcome::NoAnswer),
        delivered_only: slots
            .iter()
            .filter(|s| s.answer.is_none() && s.delivered)
            .count(),
        p50: quantile(&xs, 0.5),
        p99: quantile(&xs, 0.99),
        max: xs.last().copied().unwrap_or(0.0),
        slowest: lat.last().map(|l| l.1.to_string()),
    }
}

fn summary_text(s: &Summary, all_answered_after: Option<f64>) -> String {
    let mut out = format!(
        "fleet: {} devices: ok {}, failed {}, rejected {}, no answer {}",
        s.total, s.ok, s.failed, s.rejected, s.no_answer
    );
    if s.delivered_only > 0 {
        out.push_str(&format!(" ({} delivered but unfinished)", s.delivered_only));
    }
    out.push('\n');
    if let Some(slow) = &s.slowest {
        out.push_str(&format!(
            "time to result: p50 {:.3} s, p99 {:.3} s, max {:.3} s (slowest {slow})\n",
            s.p50, s.p99, s.max
        ));
    }
    if let Some(t) = all_answered_after {
        out.push_str(&format!(
            "all answered {t:.3} s after the first job was sent\n"
        ));
    }
    out
}

fn cmd_fleet(t: &Target, m: &Matches, words: &[String]) -> Result<i32, Fail> {
    if words.is_empty() {
        return Err(usage(
            "fleet: no command given (smctl fleet --macs FILE -- COMMAND…)",
        ));
    }
    let timeout = parse_secs(m, "timeout", 60.0)?;
    let macs = match (m.opt_str("macs"), m.opt_present("all-online")) {
        (Some(f), false) => {
            let text =
                std::fs::read_to_string(&f).map_err(|e| usage(format!("--macs {f}: {e}")))?;
            let macs = parse_macs(&text);
            if let Some(bad) = macs.iter().find(|m| m.contains(['/', '+', '#', ' '])) {
                return Err(usage(format!("--macs {f}: '{bad}' is not a MAC")));
            }
            macs
        }
        (None, true) => collect_devices(t, Duration::from_secs(1))?
            .into_iter()
            .filter(|d| d.online)
            .map(|d| d.mac)
            .collect(),
        _ => {
            return Err(usage(
                "fleet: give exactly one of --macs FILE and --all-online",
            ))
        }
    };
    if macs.is_empty() {
        return Err(usage("fleet: no devices to send to"));
    }
    let cmd = words.join(" ");
    let id = new_job_id();
    let payload = t.wrap(&job(&id, None, Some(&cmd), None));
    let conn = Conn::open(t)?;
    conn.subscribe(&[t.wildcard("delivery"), t.wildcard("pub")])?;
    let mut slots: Vec<Slot> = macs
        .iter()
        .map(|m| Slot {
            mac: m.clone(),
            sent: None,
            delivered: false,
            answer: None,
        })
        .collect();
    let index: HashMap<String, usize> = macs
        .iter()
        .enumerate()
        .map(|(i, m)| (m.clone(), i))
        .collect();
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut answered = 0usize;
    let handle = |slots: &mut Vec<Slot>, msg: &mqtt::Message, answered: &mut usize| {
        let Some(&i) = index.get(mac_of(msg.topic())) else {
            return;
        };
        let v: Value = serde_json::from_slice(msg.payload()).unwrap_or(Value::Null);
        if v["id"] != id.as_str() || slots[i].answer.is_some() {
            return;
        }
        let took = slots[i].sent.map(|s| s.elapsed()).unwrap_or_default();
        match v["event_type"].as_str() {
            Some("DELIVERED") => slots[i].delivered = true,
            Some("PROCESSED") => {
                slots[i].answer = Some((took, Answer::Processed(v)));
                *answered += 1;
            }
            Some("REJECTED") => {
                let e = v["meta"]["error"].as_str().unwrap_or("").to_string();
                slots[i].answer = Some((took, Answer::Rejected(e)));
                *answered += 1;
            }
            _ => {}
        }
    };
    // Publish to every device; answers that arrive meanwhile are taken in between.
    for i in 0..slots.len() {
        let topic = t.topics(&slots[i].mac).sub;
        slots[i].sent = Some(Instant::now());
        conn.publish(&topic, payload.clone())?;
        while let Ok(Some(msg)) = conn.rx.try_recv() {
            handle(&mut slots, &msg, &mut answered);
        }
    }
    let publish_s = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + timeout;
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    let mut all_after = None;
    while answered < slots.len() {
        if tty && last_progress.elapsed() >= Duration::from_millis(200) {
            last_progress = Instant::now();
            let s = summarize(&slots);
            eprint!(
                "\r\x1b[Kfleet: {answered}/{} answered (ok {}, failed {}, rejected {}), {:.1} s",
                slots.len(),
                s.ok,
                s.failed,
                s.rejected,
                start.elapsed().as_secs_f64()
            );
        }
        let tick = (Instant::now() + Duration::from_millis(200)).min(deadline);
        match conn.next(tick)? {
            Some(msg) => handle(&mut slots, &msg, &mut answered),
            None if Instant::now() >= deadline => break,
            None => {}
        }
        if answered == slots.len() {
            all_after = Some(start.elapsed().as_secs_f64());
        }
    }
    if slots.len() == answered && all_after.is_none() {
        all_after = Some(start.elapsed().as_secs_f64());
    }
    conn.close();
    if tty {
        eprint!("\r\x1b[K");
    }
    let s = summarize(&slots);
    if m.opt_present("json") {
        let devices: Vec<Value> = slots
            .iter()
            .map(|sl| {
                let (lat, exit_code, output, error) = match &sl.answer {
                    Some((d, Answer::Processed(p))) => (
                        json!(d.as_secs_f64()),
                        p["meta"]["exit_code"].clone(),
                        p["meta"]["msg"].clone(),
                        p["meta"]["error"].clone(),
                    ),
                    Some((d, Answer::Rejected(e))) => {
                        (json!(d.as_secs_f64()), Value::Null, Value::Null, json!(e))
                    }
                    None => (Value::Null, Value::Null, Value::Null, Value::Null),
                };
                json!({"mac": sl.mac, "outcome": sl.outcome().name(), "delivered": sl.delivered,
                       "latency_s": lat, "exit_code": exit_code, "output": output, "error": error})
            })
            .collect();
        let out = json!({"id": id, "total": s.total, "ok": s.ok, "failed": s.failed,
            "rejected": s.rejected, "no_answer": s.no_answer, "p50_s": s.p50, "p99_s": s.p99,
            "max_s": s.max, "slowest": s.slowest, "publish_s": publish_s,
            "all_answered_s": all_after, "devices": devices});
        println!("{out}");
    } else {
        if m.opt_present("show-output") {
            for sl in &slots {
                let head = match &sl.answer {
                    Some((d, Answer::Processed(p))) => format!(
                        "{}, exit {}, {:.3} s",
                        sl.outcome().name(),
                        p["meta"]["exit_code"],
                        d.as_secs_f64()
                    ),
                    Some((_, Answer::Rejected(e))) => format!("rejected: {e}"),
                    None if sl.delivered => "no answer (delivered)".into(),
                    None => "no answer".into(),
                };
                println!("== {} ({head})", sl.mac);
                if let Some((_, Answer::Processed(p))) = &sl.answer {
                    let o = p["meta"]["msg"].as_str().unwrap_or("");
                    print!("{o}");
                    if !o.is_empty() && !o.ends_with('\n') {
                        println!();
                    }
                }
            }
        }
        print!("{}", summary_text(&s, all_after));
        for o in [Outcome::Failed, Outcome::Rejected, Outcome::NoAnswer] {
            let list: Vec<&str> = slots
                .iter()
                .filter(|sl| sl.outcome() == o)
                .map(|sl| sl.mac.as_str())
                .collect();
            if !list.is_empty() {
                println!("{}: {}", o.name(), list.join(" "));
            }
        }
    }
    Ok(if s.no_answer > 0 {
        EXIT_NO_ANSWER
    } else if s.failed + s.rejected > 0 {
        1
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Matches {
        options().parse(args).unwrap()
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_484_484_398), "2017-01-15 12:46:38Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn quantiles_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 50.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn macs_file() {
        let m = parse_macs("# fleet\nAA-01\n\n  AA-02  # kitchen\nAA-01\n");
        assert_eq!(m, vec!["AA-01", "AA-02"]);
    }

    #[test]
    fn target_from_flags_and_defaults() {
        let t = Target::from_matches(&parse(&[
            "send", "--topic", "T", "--key", "K", "--mac", "M",
        ]))
        .unwrap();
        assert_eq!(socketman::link::server_uri(&t.cfg), "tcp://localhost:1883");
        assert_eq!(t.topics(&t.mac().unwrap()).sub, "sub/T/K/M");
        assert_eq!(t.wildcard("pub"), "pub/T/K/+");
        let t = Target::from_matches(&parse(&["devices", "--tls", "--topic", "T", "--key", "K"]))
            .unwrap();
        assert_eq!(socketman::link::server_uri(&t.cfg), "ssl://localhost:8883");
        assert!(t.mac().is_err());
        assert!(Target::from_matches(&parse(&["devices", "--key", "K"])).is_err());
        assert!(
            Target::from_matches(&parse(&["devices", "--topic", "a/b", "--key", "K"])).is_err()
        );
    }

    #[test]
    fn config_file_gives_broker_mac_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.json");
        std::fs::write(
            &f,
            r#"{"mqtt_host":"b.example","port":1999,"topic":"T","key":"K","mac":"AA","job_secret":"s3"}"#,
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let t = Target::from_matches(&parse(&["send", "--config", path])).unwrap();
        assert_eq!(socketman::link::server_uri(&t.cfg), "tcp://b.example:1999");
        assert_eq!(t.mac().unwrap(), "AA");
        let wrapped: Value = serde_json::from_str(&t.wrap(&json!({"id": "x"}))).unwrap();
        let inner = wrapped["signed"].as_str().unwrap();
        assert_eq!(wrapped["sig"], socketman::jobs::intake::sign("s3", inner));
        // Flags override the file.
        let t = Target::from_matches(&parse(&["send", "-c", path, "--mac", "BB", "--port", "7"]))
            .unwrap();
        assert_eq!(t.mac().unwrap(), "BB");
        assert_eq!(t.cfg.port, 7);
        // Unsigned without a secret.
        let t = Target::from_matches(&parse(&["send", "--topic", "T", "--key", "K"])).unwrap();
        assert_eq!(t.wrap(&json!({"id": "x"})), r#"{"id":"x"}"#);
    }

    #[test]
    fn options_checked_per_command() {
        let r = run(&["devices".into(), "--macs".into(), "f".into()]);
        assert!(matches!(r, Err(Fail(EXIT_USAGE, m)) if m.contains("--macs")));
        assert!(matches!(run(&["nope".into()]), Err(Fail(EXIT_USAGE, _))));
        assert!(matches!(run(&[]), Err(Fail(EXIT_USAGE, _))));
        assert!(matches!(run(&["--help".into()]), Ok(0)));
    }

    #[test]
    fn exit_codes_of_processed() {
        let p = |meta: Value| json!({"meta": meta});
        assert_eq!(
            send_exit_code(&p(json!({"exit_code": 3, "success": false}))),
            3
        );
        assert_eq!(
            send_exit_code(&p(json!({"exit_code": 0, "success": true}))),
            0
        );
        assert_eq!(
            send_exit_code(&p(json!({"exit_code": null, "error": "timeout"}))),
            EXIT_REMOTE_TIMEOUT
        );
        assert_eq!(
            send_exit_code(&p(json!({"success": true, "result": {}}))),
            0
        );
        assert_eq!(
            send_exit_code(&p(json!({"success": false, "error": "x"}))),
            1
        );
    }

    #[test]
    fn readable_watch_lines() {
        let c = json!({"timestamp": 0, "event_type": "CONNECT",
                       "meta": {"online": "1", "client_id": "sm-AA", "version": "0.1.0"}});
        assert_eq!(
            describe("status/T/K/AA", true, &c),
            "1970-01-01 00:00:00Z  AA  CONNECT online sm-AA v0.1.0 (retained)"
        );
        let p = json!({"id": "j1", "timestamp": 0, "event_type": "PROCESSED",
                       "meta": {"type": "cmd", "success": false, "exit_code": 3,
                                "duration_ms": 5, "msg": "line1\nline2\n"}});
        assert_eq!(
            describe("pub/T/K/AA", false, &p),
            "1970-01-01 00:00:00Z  AA  PROCESSED j1 cmd FAILED exit 3 in 5 ms: line1…"
        );
        let r = json!({"id": null, "timestamp": 0, "event_type": "REJECTED",
                       "meta": {"error": "invalid: not JSON"}});
        assert!(describe("pub/T/K/AA", false, &r).ends_with("REJECTED -: invalid: not JSON"));
    }

    #[test]
    fn fleet_summary_counts_and_slowest() {
        let slot = |mac: &str, ms: Option<u64>, ok: Option<bool>, delivered: bool| Slot {
            mac: mac.into(),
            sent: None,
            delivered,
            answer: ms.map(|ms| {
                let a = match ok {
                    Some(ok) => Answer::Processed(json!({"meta": {"success": ok}})),
                    None => Answer::Rejected("busy: x".into()),
                };
                (Duration::from_millis(ms), a)
            }),
        };
        let slots = vec![
            slot("A", Some(100), Some(true), true),
            slot("B", Some(300), Some(false), true),
            slot("C", Some(200), None, false),
            slot("D", None, None, true),
            slot("E", None, None, false),
        ];
        let s = summarize(&slots);
        assert_eq!(
            (s.ok, s.failed, s.rejected, s.no_answer, s.delivered_only),
            (1, 1, 1, 2, 1)
        );
        assert_eq!(s.slowest.as_deref(), Some("B"));
        assert!((s.max - 0.3).abs() < 1e-9);
        assert!((s.p50 - 0.2).abs() < 1e-9);
        let text = summary_text(&s, None);
        assert!(
            text.contains("no answer 2 (1 delivered but unfinished)"),
            "{text}"
        );
        assert!(text.contains("slowest B"), "{text}");
    }

    #[test]
    fn devices_table_lists_state() {
        let d = |mac: &str, online| Device {
            mac: mac.into(),
            online,
            client_id: format!("sm-{mac}"),
            version: if online {
                "0.1.0".into()
            } else {
                String::new()
            },
            since: 0,
        };
        let t = devices_table(&[d("AA", true), d("BB", false)]);
        assert!(t.contains("AA                   online   sm-AA"), "{t}");
        assert!(t.contains("BB                   offline"), "{t}");
        assert!(t.ends_with("2 devices: 1 online, 1 offline\n"), "{t}");
    }
}
