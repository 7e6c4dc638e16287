//! Test support: a real mosquitto per test on a free loopback port (plain, and TLS with a CA
//! made at test time by the `openssl` command), the real `socketman` binary with its own temp
//! dir, topic, key and MAC, and an MQTT test client that records every message of the device.
//! Every wait has a timeout; the agent's log is printed when a test fails.
#![allow(dead_code)]

use paho_mqtt as mqtt;
use serde_json::{json, Value};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique in this test run.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 10_000) * 1000
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn mosquitto_path() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: run scripts/test.sh, which installs it");
}

pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Paths of a test CA and a server certificate for 127.0.0.1/localhost.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a server certificate signed by it in `dir` (openssl command).
pub fn make_ca(dir: &Path, name: &str) -> TestCa {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = format!("{name}-ca.crt");
    let ca_key = format!("{name}-ca.key");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    TestCa {
        ca: dir.join(ca),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

/// A real mosquitto broker.
pub struct Broker {
    pub port: u16,
    /// TLS listener port, when started with [`Broker::start_tls`].
    pub tls_port: Option<u16>,
    pub ca: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    /// More listener ports to wait for (see [`Broker::start_custom`]).
    pub extra_ports: Vec<u16>,
    child: Option<Child>,
}

impl Broker {
    /// A plain listener (for the test clients) plus the config lines `extra` returns for the
    /// broker's dir (more listeners, an ACL…) and the ports of those listeners.
    pub fn start_custom(extra: impl FnOnce(&Path) -> (String, Vec<u16>)) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let (more, extra_ports) = extra(dir.path());
        let conf = format!("user root\nper_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type all\n{more}\nlistener {port} 127.0.0.1\n", dir.path().join("mosquitto.log").display());
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("conf");
        let mut b = Broker {
            port,
            tls_port: None,
            ca: None,
            dir,
            extra_ports,
            child: None,
        };
        b.spawn();
        b
    }

    /// The broker's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn start() -> Broker {
        Self::launch(false)
    }

    /// Plain listener plus a TLS listener with a test CA.
    pub fn start_tls() -> Broker {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = format!("user root\nper_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type all\nlistener {port} 127.0.0.1\n", dir.path().join("mosquitto.log").display());
        let (mut tls_port, mut ca) = (None, None);
        if tls {
            let t = make_ca(dir.path(), "good");
            let p = free_port();
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            ));
            tls_port = Some(p);
            ca = Some(t.ca);
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("conf");
        let mut b = Broker {
            port,
            tls_port,
            ca,
            dir,
            extra_ports: Vec::new(),
            child: None,
        };
        b.spawn();
        b
    }

    /// Starts the (stopped) broker again on its ports.
    pub fn spawn(&mut self) {
        let child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "mosquitto did not listen on {}",
            self.port
        );
        if let Some(p) = self.tls_port {
            assert!(
                wait_port(p, Duration::from_secs(10)),
                "mosquitto TLS did not listen on {p}"
            );
        }
        for p in &self.extra_ports {
            assert!(
                wait_port(*p, Duration::from_secs(10)),
                "mosquitto did not listen on {p}"
            );
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts the broker on the same port (sessions are lost: persistence off).
    pub fn restart(&mut self) {
        self.stop();
        std::thread::sleep(Duration::from_millis(300));
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which topic of the device a message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Delivery,
    Pub,
    Status,
}

/// One message seen by the test client.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: Topic,
    pub retained: bool,
    pub payload: Vec<u8>,
    pub json: Value,
}

/// An MQTT client recording every message on the device's `delivery/`, `pub/`, `status/`.
pub struct Client {
    pub cli: mqtt::Client,
    pub log: Arc<Mutex<Vec<Seen>>>,
    prefix: String,
}

impl Client {
    pub fn connect(port: u16, topic: &str, key: &str, mac: &str) -> Client {
        let cli = mqtt::Client::new(
            mqtt::CreateOptionsBuilder::new_v3()
                .server_uri(format!("tcp://127.0.0.1:{port}"))
                .client_id(format!("test-{}", unique()))
                .persistence(mqtt::PersistenceType::None)
                .finalize(),
        )
        .expect("client");
        let rx = cli.start_consuming();
        let opts = mqtt::ConnectOptionsBuilder::new_v3()
            .clean_session(true)
            .finalize();
        // Under load a fresh broker may be slow to accept: a few tries before failing.
        let mut tries = 0;
        while let Err(e) = cli.connect(opts.clone()) {
            tries += 1;
            assert!(tries < 10, "test client connect to 127.0.0.1:{port}: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let tail = format!("{topic}/{key}/{mac}");
        for t in ["delivery", "pub", "status"] {
            cli.subscribe(&format!("{t}/{tail}"), 1).expect("subscribe");
        }
        let log: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for m in rx.iter().flatten() {
                let topic = match m.topic().split('/').next() {
                    Some("delivery") => Topic::Delivery,
                    Some("pub") => Topic::Pub,
                    _ => Topic::Status,
                };
                let json = serde_json::from_slice(m.payload()).unwrap_or(Value::Null);
                l2.lock().unwrap().push(Seen {
                    topic,
                    retained: m.retained(),
                    payload: m.payload().to_vec(),
                    json,
                });
            }
        });
        Client {
            cli,
            log,
            prefix: tail,
        }
    }

    /// Publishes raw bytes to `sub/T/K/MAC` at QoS 1.
    pub fn send_raw(&self, payload: &[u8]) {
        let m = mqtt::Message::new(format!("sub/{}", self.prefix), payload.to_vec(), 1);
        self.cli.publish(m).expect("publish job");
    }

    pub fn all(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

/// A running `socketman` with its own temp dir and identity.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub topic: String,
    pub key: String,
    pub mac: String,
    pub port: u16,
    pub client: Client,
    pub child: Option<Child>,
    pub bin: PathBuf,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    runs: u32,
}

/// The base config of a test agent (fast, quiet, self-contained).
pub fn base_config(dir: &Path, port: u16, topic: &str, key: &str, mac: &str) -> Value {
    json!({
        "topic": topic, "key": key, "mqtt_host": "127.0.0.1", "port": port, "mac": mac,
        "state_dir": dir.join("state"), "cache_dir": dir.join("cache"),
        "reboot": 0, "no-ping": 1, "watchdog_port": 0, "health_url": "127.0.0.1", "health_port": 9,
        "dns_check": "localhost", "lease_file": dir.join("dhcp.leases"), "mac_file": dir.join("mac"),
        "init_dir": dir.join("init.d"), "network_backup_files": [],
    })
}

impl Agent {
    /// Starts an agent on `broker`; `edit` may change the config first. Waits until online.
    pub fn start(broker: &Broker, edit: impl FnOnce(&mut Value)) -> Agent {
        let mut a = Self::prepare(broker, edit);
        a.spawn();
        a.wait_online(1);
        a
    }

    /// As [`Agent::start`] without starting the process.
    pub fn prepare(broker: &Broker, edit: impl FnOnce(&mut Value)) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = unique();
        let topic = format!("top{n}");
        let key = format!("key{n}");
        let mac = format!(
            "02-00-00-{:02X}-{:02X}-{:02X}",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let mut cfg = base_config(dir.path(), broker.port, &topic, &key, &mac);
        edit(&mut cfg);
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let client = Client::connect(broker.port, &topic, &key, &mac);
        Agent {
            dir,
            config_path,
            topic,
            key,
            mac,
            port: broker.port,
            client,
            child: None,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_socketman")),
            extra_args: Vec::new(),
            env: Vec::new(),
            runs: 0,
        }
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.config_path).unwrap()).unwrap()
    }

    pub fn write_config(&self, cfg: &Value) {
        std::fs::write(&self.config_path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts the process (appending to the log).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--config={}", self.config_path.display()))
            .args(&self.extra_args)
            .env("DEBUG", "1")
            .env("SOCKETMAN_TEST_NO_FORCE_REBOOT", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start socketman"));
        self.runs += 1;
    }

    /// Waits for the `n`-th online CONNECT since the test client subscribed.
    pub fn wait_online(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let count = self.count(Topic::Status, |v| {
                v["event_type"] == "CONNECT" && v["meta"]["online"] == "1"
            });
            if count >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent not online (#{n}) within 20 s\n{}", self.log());
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn send_job(&self, job: &Value) {
        self.client.send_raw(job.to_string().as_bytes());
    }

    pub fn send_raw(&self, payload: &[u8]) {
        self.client.send_raw(payload);
    }

    /// Messages on `topic` matching `pred`.
    pub fn find(&self, topic: Topic, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.client
            .all()
            .into_iter()
            .filter(|m| m.topic == topic && pred(&m.json))
            .map(|m| m.json)
            .collect()
    }

    pub fn count(&self, topic: Topic, pred: impl Fn(&Value) -> bool) -> usize {
        self.find(topic, pred).len()
    }

    /// The first message on `topic` matching `pred`, waiting up to `timeout`.
    pub fn wait_msg(
        &self,
        topic: Topic,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.find(topic, &pred).into_iter().next() {
                return v;
            }
            if Instant::now() > end {
                panic!(
                    "no matching message on {topic:?} within {timeout:?}\n--- agent log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The PROCESSED or REJECTED of job `id`.
    pub fn answer(&self, id: &str, timeout: Duration) -> Value {
        self.wait_msg(Topic::Pub, |v| v["id"] == id, timeout)
    }

    /// Sends a shell job and waits for its answer.
    pub fn run(&self, id: &str, cmd: &str) -> Value {
        self.send_job(&json!({"id": id, "timestamp": now(), "meta": {"msg": cmd}}));
        self.answer(id, Duration::from_secs(30))
    }

    /// Sends a typed job and waits for its answer.
    pub fn job(&self, ty: &str, args: Value) -> Value {
        let id = format!("{ty}-{}", unique());
        self.send_job(&json!({"id": id, "timestamp": now(), "meta": {"type": ty, "args": args}}));
        self.answer(&id, Duration::from_secs(60))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            unsafe_free_kill(pid, sig);
        }
    }

    /// Waits for the process to exit by itself (a reboot command, a test-build abort).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        let mut c = self.child.take().expect("agent not running");
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = c.kill();
                panic!("agent still alive after {timeout:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the exit (up to 20 s).
    pub fn term(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(15);
        let mut c = self.child.take().expect("agent not running");
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return (st, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                panic!("agent did not stop within 20 s of TERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// After a restart that found an owed answer (`agent.update`, `firmware.upgrade`) already
/// sent by the process that crashed: the marker is gone, job `id` has one answer, and the
/// log says why.
pub fn assert_answered_once_across_crash(a: &Agent, id: &str, marker: &Path) {
    assert!(!marker.exists(), "{} still there", marker.display());
    assert_eq!(a.count(Topic::Pub, |v| v["id"] == id), 1, "{}", a.log());
    assert!(
        a.log().contains("answered before the last stop"),
        "{}",
        a.log()
    );
}

/// kill(1) by command, to keep `unsafe` out of the tests.
pub fn unsafe_free_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut e = std::io::stderr();
            let _ = writeln!(
                e,
                "--- socketman log ({}) ---\n{}",
                self.config_path.display(),
                self.log()
            );
        }
        self.kill9();
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `socketman` with `args` to completion: (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_socketman"))
        .args(args)
        .env("DEBUG", "1")
        .output()
        .expect("run socketman");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (smctl tests) As [`Agent::prepare`], on the topic and key of `other`: several devices of
/// one fleet (`T/K`), each with its own MAC and test client.
pub fn prepare_sharing(broker: &Broker, other: &Agent, edit: impl FnOnce(&mut Value)) -> Agent {
    let (t, k) = (other.topic.clone(), other.key.clone());
    let (t2, k2) = (t.clone(), k.clone());
    let mut a = Agent::prepare(broker, move |c| {
        c["topic"] = json!(t2);
        c["key"] = json!(k2);
        edit(c)
    });
    a.topic = t;
    a.key = k;
    a.client = Client::connect(broker.port, &a.topic, &a.key, &a.mac);
    a
}
