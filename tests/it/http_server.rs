//! A tiny real HTTP/1.1 server for tests (std `TcpListener`, a thread per connection): records
//! every request, answers through a swappable handler, and decodes what the stats uploader
//! sends (multipart/form-data → gzip → NDJSON records). Shared by the integration tests and
//! (through `#[path]`) by the unit tests of `src/upload.rs`.
#![allow(dead_code)]

use flate2::read::GzDecoder;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// One part of a multipart body.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: Option<String>,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// What the handler answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, String),
    /// Read the request, then never answer (until the server is dropped).
    Hang,
}

type Handler = Box<dyn Fn(&Request) -> Reply + Send + Sync>;

pub struct HttpServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    handler: Arc<Mutex<Handler>>,
    stop: Arc<AtomicBool>,
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut it = line.split_whitespace();
    let method = it.next()?.to_string();
    let target = it.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

impl HttpServer {
    /// Starts on a free loopback port answering 200 `{}`.
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Handler>> =
            Arc::new(Mutex::new(Box::new(|_| Reply::Status(200, "{}".into()))));
        let stop = Arc::new(AtomicBool::new(false));
        let (rq, h, st) = (requests.clone(), handler.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = conn else { continue };
                let (rq, h, st) = (rq.clone(), h.clone(), st.clone());
                std::thread::spawn(move || {
                    while let Some(req) = read_request(&stream) {
                        let reply = (h.lock().unwrap())(&req);
                        rq.lock().unwrap().push(req);
                        match reply {
                            Reply::Status(code, body) => {
                                let msg = format!(
                                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                if stream.write_all(msg.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Reply::Hang => {
                                while !st.load(Ordering::Relaxed) {
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        HttpServer {
            port,
            requests,
            handler,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Replaces the handler.
    pub fn set(&self, f: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Box::new(f);
    }

    /// Answers every request with `code`.
    pub fn reply(&self, code: u16) {
        self.set(move |_| Reply::Status(code, "{}".into()));
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the requests so far.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.requests();
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "HTTP server: condition not met within {timeout:?}; {} requests",
                r.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The parts of a multipart/form-data request.
pub fn multipart_parts(req: &Request) -> Vec<Part> {
    let ct = req.headers.get("content-type").cloned().unwrap_or_default();
    let Some(boundary) = ct.split("boundary=").nth(1) else {
        return Vec::new();
    };
    let boundary = boundary.trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let body = &req.body;
    let mut idx = Vec::new();
    let mut i = 0;
    while i + delim.len() <= body.len() {
        if body[i..i + delim.len()] == delim[..] {
            idx.push(i);
            i += delim.len();
        } else {
            i += 1;
        }
    }
    let mut parts = Vec::new();
    for w in idx.windows(2) {
        let chunk = &body[w[0] + delim.len()..w[1]];
        let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
        let chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
        let Some(split) = chunk.windows(4).position(|x| x == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&chunk[..split]).into_owned();
        let data = chunk[split + 4..].to_vec();
        let mut p = Part {
            name: None,
            filename: None,
            content_type: None,
            data,
        };
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            match k.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for attr in v.split(';') {
                        let attr = attr.trim();
                        if let Some(n) = attr.strip_prefix("name=") {
                            p.name = Some(n.trim_matches('"').to_string());
                        }
                        if let Some(n) = attr.strip_prefix("filename=") {
                            p.filename = Some(n.trim_matches('"').to_string());
                        }
                    }
                }
                "content-type" => p.content_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
        parts.push(p);
    }
    parts
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}

/// The stats records of an upload request: a multipart `data` gzip of NDJSON, or (no-cache)
/// one JSON body.
pub fn records(req: &Request) -> Vec<serde_json::Value> {
    let ct = req.headers.get("content-type").cloned().unwrap_or_default();
    if ct.starts_with("application/json") {
        return vec![serde_json::from_slice(&req.body).unwrap()];
    }
    let parts = multipart_parts(req);
    let data = parts
        .iter()
        .find(|p| p.name.as_deref() == Some("data"))
        .expect("a `data` part");
    String::from_utf8(gunzip(&data.data))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
