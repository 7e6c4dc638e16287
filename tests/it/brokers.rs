//! Issue 15: reaching the brokers fleets use — client certificates (mosquitto
//! `require_certificate`), MQTT over WebSockets (ws and wss), an HTTP CONNECT proxy, failover
//! between two brokers, a broker ACL that refuses `status/…`, answers cut to fit a broker
//! with a packet size limit, and brokers that refuse by dropping the connection (mosquitto's
//! `max_packet_size`; a relay that drops it at a publish to `status/…`, as AWS IoT does for a
//! denied topic). Certificates are made by the test with `openssl`.
//!
//! Debian's mosquitto is built without websockets (a `protocol websockets` listener fails with
//! "Unable to start any listening sockets"), so the WebSocket endpoint is websockify (Debian
//! package, RFC 6455, TLS with --cert) in front of mosquitto's TCP listener, selecting the
//! `mqtt` subprotocol Paho asks for.

use crate::support::{
    free_port, make_ca, now, unique, wait_port, Agent, Broker, Client, TestCa, Topic,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
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
}

/// A client certificate signed by the CA `name` of [`make_ca`] in `dir`: (cert, key, the
/// same key encrypted with `pass`).
fn make_client(dir: &Path, name: &str, pass: &str) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=device",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            &format!("{name}-ca.crt"),
            "-CAkey",
            &format!("{name}-ca.key"),
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
        ],
    );
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            "client.key",
            "-aes256",
            "-passout",
            &format!("pass:{pass}"),
            "-out",
            "client-enc.key",
        ],
    );
    for f in ["client.key", "client-enc.key"] {
        let _ = Command::new("chmod").arg("600").arg(dir.join(f)).status();
    }
    (
        dir.join("client.crt"),
        dir.join("client.key"),
        dir.join("client-enc.key"),
    )
}

/// mosquitto with a plain listener and a TLS listener that wants a client certificate.
fn mtls_broker() -> (Broker, u16, TestCa, (PathBuf, PathBuf, PathBuf)) {
    let tls_port = free_port();
    let mut parts = None;
    let b = Broker::start_custom(|dir| {
        let ca = make_ca(dir, "m");
        let client = make_client(dir, "m", "s3cret-pw");
        let conf = format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            ca.ca.display(),
            ca.cert.display(),
            ca.key.display()
        );
        parts = Some((ca, client));
        (conf, vec![tls_port])
    });
    let (ca, client) = parts.unwrap();
    (b, tls_port, ca, client)
}

fn tls_config(c: &mut Value, port: u16, ca: &Path) {
    c["tls"] = json!(true);
    c["port"] = json!(port);
    c["cacrt"] = json!(ca);
}

/// Waits until `pred` holds on the agent's log.
fn wait_log(a: &Agent, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if pred(&a.log()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn client_certificate_mtls_plain_and_encrypted_key_refused_without() {
    let (b, tls_port, ca, (crt, key, enc)) = mtls_broker();
    // Plain key.
    let a = Agent::start(&b, |c| {
        tls_config(c, tls_port, &ca.ca);
        c["client_crt"] = json!(crt);
        c["client_key"] = json!(key);
    });
    assert_eq!(a.run("m1", "echo mtls")["meta"]["msg"], "mtls\n");
    // smctl with the same keys (the agent's own config file).
    let out = Command::new(env!("CARGO_BIN_EXE_smctl"))
        .args(["--config", a.config_path.to_str().unwrap()])
        .args(["send", "--timeout", "20", "--", "echo via-smctl"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-smctl\n",
        "smctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    drop(a);
    // Encrypted key with its password; the password is never logged.
    let a = Agent::start(&b, |c| {
        tls_config(c, tls_port, &ca.ca);
        c["client_crt"] = json!(crt);
        c["client_key"] = json!(enc);
        c["client_key_password"] = json!("s3cret-pw");
    });
    assert_eq!(a.run("m2", "echo enc")["meta"]["msg"], "enc\n");
    assert!(!a.log().contains("s3cret-pw"));
    drop(a);
    // Without a certificate the broker refuses the TLS handshake.
    let mut a = Agent::prepare(&b, |c| tls_config(c, tls_port, &ca.ca));
    a.spawn();
    assert!(
        wait_log(
            &a,
            |l| l.contains("MQTT connect to"),
            Duration::from_secs(15)
        ),
        "{}",
        a.log()
    );
    assert_eq!(
        a.count(Topic::Status, |v| v["meta"]["online"] == "1"),
        0,
        "connected without a client certificate"
    );
    assert!(b.log().contains("certificate"), "broker log: {}", b.log());
    a.kill9();
    // smctl without the certificate fails with the broker exit code, not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_smctl"))
        .args(["--config", a.config_path.to_str().unwrap()])
        .args(["send", "--timeout", "5", "--", "true"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn bad_client_key_files_are_config_errors_and_the_password_is_masked() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "x");
    let (crt, key, enc) = make_client(dir.path(), "x", "pw1");
    let other = tempfile::tempdir().unwrap();
    make_ca(other.path(), "y");
    let (_, other_key, _) = make_client(other.path(), "y", "pw2");
    let check = |extra: Value| {
        let mut c = json!({"topic": "t", "key": "k", "mqtt_host": "127.0.0.1", "tls": true,
            "client_crt": crt});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let f = dir.path().join(format!("c{}.json", unique()));
        std::fs::write(&f, c.to_string()).unwrap();
        crate::support::run_bin(&[&format!("--config={}", f.display()), "--check-config"])
    };
    let (code, out, err) = check(json!({"client_key": key}));
    assert_eq!(code, 0, "{err}");
    let (code, out2, _) = check(json!({"client_key": enc, "client_key_password": "pw1",
        "proxy": "http://user:hunter2@127.0.0.1:3128"}));
    assert_eq!(code, 0);
    assert!(!out2.contains("pw1") && !out2.contains("hunter2"), "{out2}");
    assert!(out2.contains("\"client_key_password\": \"***\""), "{out2}");
    assert!(out2.contains("http://user:***@127.0.0.1:3128"), "{out2}");
    assert!(out.contains("client_crt"));
    for (extra, key_named, file) in [
        (
            json!({"client_key": other_key}),
            "client_key",
            other_key.clone(),
        ),
        (json!({"client_key": enc}), "client_key", enc.clone()),
        (
            json!({"client_key": enc, "client_key_password": "wrong"}),
            "client_key",
            enc.clone(),
        ),
        (
            json!({"client_key": "/nonexistent/k.pem"}),
            "client_key",
            PathBuf::from("/nonexistent/k.pem"),
        ),
        (
            json!({"client_crt": "/nonexistent/c.pem"}),
            "client_crt",
            PathBuf::from("/nonexistent/c.pem"),
        ),
        (
            json!({"client_key": key, "client_crt": key}),
            "client_crt",
            key.clone(),
        ),
    ] {
        let (code, _, err) = check(extra.clone());
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(
            err.contains(key_named) && err.contains(file.to_str().unwrap()),
            "{extra}: {err}"
        );
        assert!(!err.contains("pw1") && !err.contains("wrong\""), "{err}");
    }
    // A scheme in mqtt_host is refused with the hint.
    let f = dir.path().join("ws.json");
    std::fs::write(
        &f,
        r#"{"topic":"t","key":"k","mqtt_host":"ws://b.example/mqtt"}"#,
    )
    .unwrap();
    let (code, _, err) =
        crate::support::run_bin(&[&format!("--config={}", f.display()), "--check-config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("transport") && err.contains("mqtt_host"),
        "{err}"
    );
    // A key readable by others is a warning.
    let _ = Command::new("chmod").arg("644").arg(&key).status();
    let (code, _, err) = check(json!({"client_key": key}));
    assert_eq!(code, 0);
    assert!(err.contains("readable by group or other"), "{err}");
}

/// websockify: a WebSocket endpoint (TLS when `cert` is given) in front of a TCP port.
struct WsBridge {
    port: u16,
    child: Child,
}

const WS_BRIDGE: &str = r#"
import sys
from websockify import websocketproxy, websockifyserver
class Mqtt(websockifyserver.CompatibleWebSocket):
    def select_subprotocol(self, protocols):
        return 'mqtt' if 'mqtt' in protocols else ''
class H(websocketproxy.ProxyRequestHandler):
    SocketClass = Mqtt
listen, target, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
kw = dict(RequestHandlerClass=H, listen_host='127.0.0.1', listen_port=listen,
          target_host='127.0.0.1', target_port=target)
if cert:
    kw.update(cert=cert, key=key, ssl_only=True)
websocketproxy.WebSocketProxy(**kw).start_server()
"#;

impl WsBridge {
    fn start(target: u16, tls: Option<&TestCa>) -> WsBridge {
        let port = free_port();
        let (cert, key) = match tls {
            Some(t) => (t.cert.display().to_string(), t.key.display().to_string()),
            None => (String::new(), String::new()),
        };
        // Debian's python3, which has the websockify package (not a pyenv one on PATH).
        let py = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let child = Command::new(py)
            .args([
                "-c",
                WS_BRIDGE,
                &port.to_string(),
                &target.to_string(),
                &cert,
                &key,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (websockify: run scripts/test.sh, which installs it)");
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "websockify did not listen"
        );
        WsBridge { port, child }
    }
}

impl Drop for WsBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ws_config(c: &mut Value, port: u16, tls: Option<&Path>) {
    c["transport"] = json!("ws");
    c["port"] = json!(port);
    if let Some(ca) = tls {
        c["tls"] = json!(true);
        c["cacrt"] = json!(ca);
    }
}

/// Round trip, persistent session (a job sent while the agent is down is run after its
/// restart) and the last will (kill -9) over the agent's transport.
fn session_and_will(a: &mut Agent) {
    assert_eq!(a.run("ws1", "echo over-ws")["meta"]["msg"], "over-ws\n");
    a.kill9();
    a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "CONNECT" && v["meta"]["online"] == "0",
        Duration::from_secs(20),
    );
    a.send_job(&json!({"id": "ws-offline", "timestamp": now(), "meta": {"msg": "echo queued"}}));
    a.spawn();
    assert_eq!(
        a.answer("ws-offline", Duration::from_secs(30))["meta"]["msg"],
        "queued\n"
    );
}

#[test]
fn websockets_ws_and_wss_round_trip_session_and_will() {
    let mut ca = None;
    let b = Broker::start_custom(|dir| {
        ca = Some(make_ca(dir, "w"));
        (String::new(), vec![])
    });
    let ca = ca.unwrap();
    let ws = WsBridge::start(b.port, None);
    let wss = WsBridge::start(b.port, Some(&ca));
    let mut a = Agent::start(&b, |c| ws_config(c, ws.port, None));
    assert!(a
        .log()
        .contains(&format!("ws://127.0.0.1:{}/mqtt", ws.port)));
    session_and_will(&mut a);
    drop(a);
    let mut a = Agent::start(&b, |c| {
        ws_config(c, wss.port, Some(&ca.ca));
        c["ws_path"] = json!("/custom");
    });
    assert!(a
        .log()
        .contains(&format!("wss://127.0.0.1:{}/custom", wss.port)));
    session_and_will(&mut a);
}

/// A small HTTP CONNECT proxy on loopback: records each request head, maps host names of
/// `names` to ports (so that a name only the proxy knows proves the agent went through it).
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(names: Vec<(String, u16)>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (seen, names) = (s2.clone(), names.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &seen, &names);
                });
            }
        });
        Proxy { port, seen }
    }
}

fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<String>>,
    names: &[(String, u16)],
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    seen.lock().unwrap().push(head.clone());
    let mut w = conn;
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if !head.starts_with("CONNECT ") {
        w.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")?;
        return Ok(());
    }
    let (host, port) = target.rsplit_once(':').unwrap_or((&target, "80"));
    let addr = match names.iter().find(|(n, _)| n == host) {
        Some((_, p)) => format!("127.0.0.1:{p}"),
        None => format!("{host}:{port}"),
    };
    let up = match TcpStream::connect(&addr) {
        Ok(s) => s,
        Err(_) => {
            w.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")?;
            return Ok(());
        }
    };
    w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    // Bytes the reader already buffered go first.
    let buffered = r.buffer().to_vec();
    let mut up_w = up.try_clone()?;
    up_w.write_all(&buffered)?;
    let mut up_r = up;
    let mut down_w = w.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut down_w);
        let _ = down_w.shutdown(std::net::Shutdown::Both);
    });
    let mut inner = r.into_inner();
    let mut buf = [0u8; 16384];
    loop {
        match inner.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if up_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = up_w.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
    Ok(())
}

#[test]
fn http_connect_proxy_in_front_of_websockets() {
    let b = Broker::start();
    let ws = WsBridge::start(b.port, None);
    let proxy = Proxy::start(vec![("broker.proxy-only.invalid".into(), ws.port)]);
    let a = Agent::start(&b, |c| {
        ws_config(c, ws.port, None);
        c["mqtt_host"] = json!("broker.proxy-only.invalid");
        c["proxy"] = json!(format!("http://dev:pr0xy-pw@127.0.0.1:{}", proxy.port));
    });
    assert_eq!(a.run("px1", "echo proxied")["meta"]["msg"], "proxied\n");
    let seen = proxy.seen.lock().unwrap().clone();
    let first = seen.first().expect("the proxy saw no request");
    assert!(
        first.starts_with(&format!("CONNECT broker.proxy-only.invalid:{}", ws.port)),
        "{first}"
    );
    // Basic credentials "dev:pr0xy-pw".
    assert!(first.contains("ZGV2OnByMHh5LXB3"), "{first}");
    assert!(!a.log().contains("pr0xy-pw"), "proxy password logged");
}

#[test]
fn failover_to_the_second_broker_and_back() {
    let mut first = Broker::start();
    let mut second = Broker::start();
    first.stop();
    let (p1, p2) = (first.port, second.port);
    let a = Agent::start(&second, |c| {
        c["mqtt_host"] = json!([format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")]);
    });
    assert!(a
        .log()
        .contains(&format!("connected to tcp://127.0.0.1:{p2}")));
    let h = a.job("healthz", json!({}));
    assert_eq!(
        h["meta"]["result"]["meta"]["mqtt_status"]["host"],
        format!("tcp://127.0.0.1:{p2}"),
        "{h}"
    );
    // First back, second gone: the agent moves to the first.
    first.spawn();
    let on_first = Client::connect(p1, &a.topic, &a.key, &a.mac);
    second.stop();
    let end = Instant::now() + Duration::from_secs(30);
    while on_first
        .all()
        .iter()
        .all(|m| m.json["meta"]["online"] != "1")
    {
        assert!(
            Instant::now() < end,
            "not back on the first broker\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    on_first.send_raw(
        json!({"id": "fo1", "timestamp": now(), "meta": {"msg": "echo first"}})
            .to_string()
            .as_bytes(),
    );
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = on_first
            .all()
            .into_iter()
            .find(|m| m.topic == Topic::Pub && m.json["id"] == "fo1")
        {
            assert_eq!(m.json["meta"]["msg"], "first\n");
            break;
        }
        assert!(
            Instant::now() < end,
            "no answer on the first broker\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a
        .log()
        .contains(&format!("connected to tcp://127.0.0.1:{p1}")));
}

#[test]
fn acl_refusing_status_does_not_hold_back_results() {
    let b = Broker::start_custom(|dir| {
        let acl = dir.join("acl");
        std::fs::write(
            &acl,
            "topic readwrite sub/#\ntopic readwrite pub/#\ntopic readwrite delivery/#\ntopic read status/#\n",
        )
        .unwrap();
        (format!("acl_file {}\n", acl.display()), vec![])
    });
    let mut a = Agent::prepare(&b, |c| {
        c["no-ping"] = json!(0);
        c["ping-interval"] = json!(30);
    });
    a.spawn();
    // No online CONNECT gets through: wait for the subscription at the broker instead.
    let end = Instant::now() + Duration::from_secs(20);
    while !b.log().contains("Received SUBSCRIBE from sm-") {
        assert!(Instant::now() < end, "agent did not subscribe\n{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..3 {
        let id = format!("acl{i}");
        a.send_job(&json!({"id": id, "timestamp": now(), "meta": {"msg": format!("echo {i}")}}));
        assert_eq!(
            a.answer(&id, Duration::from_secs(30))["meta"]["msg"],
            format!("{i}\n")
        );
    }
    assert_eq!(
        a.count(Topic::Status, |_| true),
        0,
        "the ACL let status through"
    );
    assert!(b.log().contains("Denied PUBLISH"), "{}", b.log());
}

#[test]
fn answers_are_cut_to_mqtt_max_payload_under_the_broker_limit() {
    let b = Broker::start_custom(|_| ("max_packet_size 6000\n".into(), vec![]));
    // Within mqtt_max_payload: the answer is cut with truncated:true.
    let a = Agent::start(&b, |c| {
        c["mqtt_max_payload"] = json!(5000);
        c["job_output_max"] = json!(100_000);
    });
    let v = a.run("big1", "head -c 20000 /dev/zero | tr '\\0' 'x'");
    assert_eq!(v["meta"]["truncated"], true);
    let len = v["meta"]["msg"].as_str().unwrap().len();
    assert!(len > 3000 && len < 5000, "{len}");
    // The broker would drop the connection for anything over 6000 bytes: the link is intact.
    assert!(!a.log().contains("lost; reconnecting"), "{}", a.log());
    assert_eq!(a.run("big-after", "echo ok")["meta"]["msg"], "ok\n");
}

/// Connect time and job round trip over each transport, measured in one run:
/// `cargo test --test it brokers::measure_transports -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_transports() {
    let tls_port = free_port();
    let mut parts = None;
    let b = Broker::start_custom(|dir| {
        let ca = make_ca(dir, "p");
        let client = make_client(dir, "p", "pw");
        let conf = format!(
            "listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {}\nkeyfile {}\nrequire_certificate false\n",
            ca.cert.display(),
            ca.key.display(),
            ca = ca.ca.display()
        );
        parts = Some((ca, client));
        (conf, vec![tls_port])
    });
    let (ca, (crt, key, _)) = parts.unwrap();
    let ws = WsBridge::start(b.port, None);
    let wss = WsBridge::start(b.port, Some(&ca));
    let proxy = Proxy::start(vec![]);
    type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        ("tcp", Box::new(|_| {})),
        ("tls", Box::new(|c| tls_config(c, tls_port, &ca.ca))),
        (
            "mtls",
            Box::new(|c| {
                tls_config(c, tls_port, &ca.ca);
                c["client_crt"] = json!(crt);
                c["client_key"] = json!(key);
            }),
        ),
        ("ws", Box::new(|c| ws_config(c, ws.port, None))),
        ("wss", Box::new(|c| ws_config(c, wss.port, Some(&ca.ca)))),
        (
            "ws+proxy",
            Box::new(|c| {
                ws_config(c, ws.port, None);
                c["proxy"] = json!(format!("http://127.0.0.1:{}", proxy.port));
            }),
        ),
    ];
    println!("transport | start to online CONNECT (ms) | job round trip median / max of 20 (ms)");
    for (name, edit) in cases {
        let mut a = Agent::prepare(&b, |c| edit(c));
        let t = Instant::now();
        a.spawn();
        a.wait_online(1);
        let connect = t.elapsed();
        let mut rt = Vec::new();
        for i in 0..20 {
            let t = Instant::now();
            a.run(&format!("{name}-{i}"), "true");
            rt.push(t.elapsed());
        }
        rt.sort();
        println!(
            "{name} | {:.1} | {:.1} / {:.1}",
            connect.as_secs_f64() * 1e3,
            rt[10].as_secs_f64() * 1e3,
            rt[19].as_secs_f64() * 1e3
        );
    }
}

/// A broker that refuses a message by dropping the connection (mosquitto closes it for a
/// packet over `max_packet_size`; AWS IoT does so for a denied or oversized publish): Paho
/// would send the message again on every reconnect of the persistent session. The link
/// gives up on it after a few drops, sends the answer once more cut short, and the answers
/// behind it still arrive.
#[test]
fn a_broker_dropping_the_connection_on_a_message_does_not_block_the_rest() {
    let b = Broker::start_custom(|_| ("max_packet_size 6000\n".into(), vec![]));
    let a = Agent::start(&b, |c| {
        c["job_output_max"] = json!(100_000);
    });
    let t0 = Instant::now();
    a.send_job(&json!({"id": "huge", "timestamp": now(), "meta": {"msg": "head -c 20000 /dev/zero | tr '\\0' 'x'"}}));
    a.send_job(&json!({"id": "small", "timestamp": now(), "meta": {"msg": "sleep 0.5; echo ok"}}));
    let small = a.answer("small", Duration::from_secs(90));
    assert_eq!(small["meta"]["msg"], "ok\n", "{}", a.log());
    let t_small = t0.elapsed();
    let huge = a.answer("huge", Duration::from_secs(30));
    eprintln!(
        "timeline: answer behind the dropped one {:.1} s, the dropped one cut short {:.1} s after the jobs",
        t_small.as_secs_f32(),
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(huge["meta"]["truncated"], true, "{huge}");
    let len = huge["meta"]["msg"].as_str().unwrap_or("").len();
    assert!(len < 6000, "{len}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.count(Topic::Pub, |v| v["id"] == "huge"), 1, "{}", a.log());
    assert!(a.log().contains("dropped the connection"), "{}", a.log());
    // Later answers go out at once.
    assert_eq!(a.run("after", "echo fine")["meta"]["msg"], "fine\n");
}

/// A relay in front of the broker that, while `deny` is set, drops the connection when the
/// client publishes to `status/…`: what AWS IoT does for a topic its policy denies (mosquitto
/// only drops such a message and acknowledges it).
struct Denier {
    port: u16,
    deny: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Denier {
    fn start(broker: u16) -> Denier {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let deny = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(AtomicUsize::new(0));
        let (d, n) = (deny.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                let d = d.clone();
                std::thread::spawn(move || {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", broker)) else {
                        return;
                    };
                    let (mut up_r, mut down_w) =
                        (up.try_clone().unwrap(), conn.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut up_r, &mut down_w);
                        let _ = down_w.shutdown(std::net::Shutdown::Both);
                    });
                    // Client to broker, packet by packet.
                    let (mut r, mut w) = (BufReader::new(conn), up);
                    loop {
                        let mut first = [0u8; 1];
                        if r.read_exact(&mut first).is_err() {
                            break;
                        }
                        let (mut len, mut shift, mut header) = (0usize, 0, vec![first[0]]);
                        loop {
                            let mut b = [0u8; 1];
                            if r.read_exact(&mut b).is_err() || shift > 21 {
                                let _ = w.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            header.push(b[0]);
                            len |= ((b[0] & 0x7f) as usize) << shift;
                            shift += 7;
                            if b[0] & 0x80 == 0 {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        if r.read_exact(&mut body).is_err() {
                            break;
                        }
                        let topic_len = body
                            .get(..2)
                            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                            .unwrap_or(0);
                        let denied = first[0] >> 4 == 3
                            && body
                                .get(2..2 + topic_len)
                                .is_some_and(|t| t.starts_with(b"status/"))
                            && d.load(Ordering::SeqCst);
                        if denied {
                            break;
                        }
                        header.extend_from_slice(&body);
                        if w.write_all(&header).is_err() {
                            break;
                        }
                    }
                    let _ = w.shutdown(std::net::Shutdown::Both);
                    let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Denier {
            port,
            deny,
            connections,
        }
    }
}

/// A broker that drops the connection at every online CONNECT (a policy denying `status/…`):
/// the link keeps its reconnects apart with a growing back-off instead of reconnecting every
/// second, starts a fresh client after three short connections, and works again once the
/// policy is fixed.
#[test]
fn a_broker_dropping_every_connection_gets_a_growing_back_off() {
    use std::sync::atomic::Ordering;
    let b = Broker::start();
    let relay = Denier::start(b.port);
    let mut a = Agent::prepare(&b, |c| c["port"] = json!(relay.port));
    a.spawn();
    let t0 = Instant::now();
    assert!(
        wait_log(
            &a,
            |l| l.contains("MQTT: fresh client"),
            Duration::from_secs(60)
        ),
        "{}",
        a.log()
    );
    assert!(a.log().contains("3 times in a row"), "{}", a.log());
    let n = relay.connections.load(Ordering::SeqCst);
    // Three short connections, 1 s and 2 s apart (the back-off doubles), then the fresh
    // client, 4 s later.
    assert!((3..=5).contains(&n), "{n} connections\n{}", a.log());
    eprintln!(
        "timeline: fresh client after {n} connections, {:.1} s after the start",
        t0.elapsed().as_secs_f32()
    );
    relay.deny.store(false, Ordering::SeqCst);
    a.wait_online(1);
    assert_eq!(a.run("fixed", "echo ok")["meta"]["msg"], "ok\n");
}
