//! The MQTT link (SPEC §3), on the Paho C library (bundled) with OpenSSL.
//!
//! Two threads: `mqtt-link` connects (client id `sm-<MAC>`, persistent session, keep-alive
//! 30 s, the offline CONNECT as last will, TLS verified against `cacrt` or the system bundle),
//! subscribes to `sub/T/K/MAC` on every connect, publishes the retained online CONNECT, hands
//! each inbound job to the [`Inbound`] sink (the job intake) and sends PING every
//! `ping_interval`; on a lost connection it reconnects with jittered back-off 1–60 s. It
//! publishes the link state (connected or not) through a [`Watch`]. `mqtt-out` publishes the
//! [`outbox::Outbox`] while connected, in order, waiting for the broker's acknowledgement of
//! each QoS ≥ 1 message; a message that fails goes back to the front of the queue. The wait
//! for an acknowledgement lasts across lost connections (Paho resends the message on each
//! reconnect of the persistent session); after [`DROPS_BEFORE_GIVING_UP`] of them the
//! message is given up (an answer is sent once more cut to [`SHORT_ANSWER`]) and `mqtt-link`
//! reconnects with a fresh Paho client, which does not hold it any more.
//! TCP_NODELAY is set by Paho C on every socket.
//!
//! Both threads block on channels (Paho's callbacks and the stop token feed one channel of
//! [`Event`]s; the outbox and the link-state watch have condvars), never on a poll loop.
#![forbid(unsafe_code)]

pub mod outbox;

use crate::backoff::Backoff;
use crate::config::{Config, Transport};
use crate::proto::{Connect, PingMeta, Topics, Wire};
use crate::runtime::{ConfigHandle, Shutdown, Threads, Watch};
use outbox::{Outbox, Outgoing};
use paho_mqtt as mqtt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the link hands each message of `sub/…` (the job intake). Called on the
/// `mqtt-link` thread, so it must not block for long.
pub trait Inbound: Send + Sync {
    fn on_job(&self, payload: &[u8]);
}

/// What the link threads are given.
pub struct LinkDeps {
    pub cfg: ConfigHandle,
    pub outbox: Outbox,
    pub shutdown: Shutdown,
    /// Set true while connected (and subscribed), false otherwise.
    pub state: Watch<bool>,
    /// The URI of the broker connected to (`mqtt_host` may list several), `None` while down.
    pub broker: Watch<Option<String>>,
    pub inbound: Arc<dyn Inbound>,
    /// The connectivity CODE for PING's `status` (SPEC §3), when known.
    pub ping_status: Box<dyn Fn() -> Option<u8> + Send + Sync>,
}

/// Why the link could not be set up.
#[derive(Debug)]
pub enum LinkError {
    /// Paho refused the client options (bad server URI, client id).
    Create(mqtt::Error),
    /// A TLS file path Paho cannot take.
    Tls(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Create(e) => write!(f, "cannot create MQTT client: {e}"),
            LinkError::Tls(e) => write!(f, "MQTT TLS: {e}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// What wakes the `mqtt-link` thread.
enum Event {
    Message(mqtt::Message),
    Lost,
    /// The publisher wants a fresh Paho client (see [`Link::want_fresh_client`]).
    Fresh,
    Stop,
}

/// Where CA bundles live on the systems socketman runs on, in the order tried.
pub const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

/// The system CA bundle: `SSL_CERT_FILE` if set, else the first of [`CA_BUNDLES`] that exists.
pub fn system_ca_bundle() -> Option<String> {
    if let Ok(f) = std::env::var("SSL_CERT_FILE") {
        if Path::new(&f).is_file() {
            return Some(f);
        }
    }
    CA_BUNDLES
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
}

/// The broker URIs for the config, in the order tried (`mqtt_host` as a list):
/// `tcp://`/`ssl://` or, with `transport: ws`, `ws://`/`wss://` with `ws_path`.
pub fn server_uris(cfg: &Config) -> Vec<String> {
    let ws = cfg.transport == Transport::Ws;
    let scheme = match (ws, cfg.tls) {
        (false, false) => "tcp",
        (false, true) => "ssl",
        (true, false) => "ws",
        (true, true) => "wss",
    };
    let path = if ws { cfg.ws_path.as_str() } else { "" };
    cfg.brokers()
        .into_iter()
        .map(|(host, port)| {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("{scheme}://{host}:{port}{path}")
        })
        .collect()
}

/// The first broker URI (see [`server_uris`]).
pub fn server_uri(cfg: &Config) -> String {
    server_uris(cfg).into_iter().next().unwrap_or_default()
}

/// True when `host` is named by a `no_proxy` list (`*`, a name, or a `.suffix`).
fn no_proxy_for(host: &str) -> bool {
    let list = std::env::var("no_proxy")
        .or_else(|_| std::env::var("NO_PROXY"))
        .unwrap_or_default();
    list.split(',').map(str::trim).any(|e| {
        !e.is_empty()
            && (e == "*"
                || host == e.trim_start_matches('.')
                || (e.starts_with('.') && host.ends_with(e)))
    })
}

/// The proxy the MQTT link goes through: the `proxy` key for any transport; with
/// `transport: ws`, else `https_proxy`/`http_proxy` from the environment (not for hosts
/// of `no_proxy`).
pub fn mqtt_proxy(cfg: &Config) -> Option<String> {
    if cfg.proxy.is_some() {
        return cfg.proxy.clone();
    }
    if cfg.transport != Transport::Ws {
        return None;
    }
    let first = cfg.brokers().into_iter().next()?.0;
    cfg.effective_proxy().filter(|_| !no_proxy_for(&first))
}

/// Sets what every connection to the broker shares (the agent's link and smctl): the server
/// URIs, TLS (CA, client certificate and key, ALPN; SNI is the host name, set by Paho) and
/// the proxy. `Err`: a path Paho cannot take.
pub fn transport_options(
    cfg: &Config,
    b: &mut mqtt::ConnectOptionsBuilder,
) -> Result<(), LinkError> {
    let uris = server_uris(cfg);
    if uris.len() > 1 {
        b.server_uris(&uris);
        if !cfg.tls {
            // Paho C prints "checking URI" to stdout for a URI list without SSL options
            // (MQTTAsync.c); empty options silence it and are not used on tcp:// or ws://.
            b.ssl_options(mqtt::SslOptionsBuilder::new().finalize());
        }
    }
    if cfg.tls {
        let mut ssl = mqtt::SslOptionsBuilder::new();
        ssl.enable_server_cert_auth(true).verify(true);
        let ca = cfg.cacrt.clone().or_else(system_ca_bundle);
        let bad = |what: &str, p: &str, e: mqtt::Error| LinkError::Tls(format!("{what} {p}: {e}"));
        match ca {
            Some(ca) => {
                ssl.trust_store(&ca).map_err(|e| bad("CA file", &ca, e))?;
            }
            None => log::warn!("MQTT TLS: no cacrt and no system CA bundle found; the broker certificate cannot be verified"),
        }
        if let Some(crt) = &cfg.client_crt {
            ssl.key_store(crt).map_err(|e| bad("client_crt", crt, e))?;
            if let Some(key) = &cfg.client_key {
                ssl.private_key(key)
                    .map_err(|e| bad("client_key", key, e))?;
            }
            if let Some(pw) = &cfg.client_key_password {
                ssl.private_key_password(pw.as_str());
            }
        }
        if !cfg.alpn.is_empty() {
            let protos: Vec<&str> = cfg.alpn.iter().map(String::as_str).collect();
            ssl.alpn_protos(&protos);
        }
        b.ssl_options(ssl.finalize());
    }
    if let Some(p) = mqtt_proxy(cfg) {
        b.http_proxy(p.as_str()).https_proxy(p.as_str());
    }
    Ok(())
}

/// Failed publishes after which a message is given up (an answer first gets one more try
/// without its `result`).
pub const MAX_ATTEMPTS: u32 = 5;

/// The online CONNECT (retained).
pub fn online_payload(client_id: &str) -> serde_json::Value {
    Connect::online(client_id, crate::VERSION).to_value()
}

/// The offline CONNECT: last will and clean stop (retained).
pub fn offline_payload(client_id: &str) -> serde_json::Value {
    Connect::offline(client_id).to_value()
}

/// A connection that ends before its setup (subscribe, online CONNECT) or sooner than this
/// after it is "short": a broker that drops the connection for something sent on every
/// connect (a message Paho resends, the online CONNECT) makes only short ones.
const SHORT_SESSION: Duration = Duration::from_secs(5);

/// Short connections in a row after which the next connect starts a fresh Paho client
/// (whatever the old one would resend is given up).
const SHORT_SESSIONS_BEFORE_FRESH: u32 = 3;

/// Lost connections while one message waited for its acknowledgement after which it is
/// given up (the broker drops the connection for it).
pub const DROPS_BEFORE_GIVING_UP: u64 = 3;

/// How long a QoS >= 1 publish may wait for its acknowledgement on a connection that stays
/// up before it counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// An answer the broker dropped the connection for is sent once more cut to this size.
pub const SHORT_ANSWER: usize = 1024;

/// How one publish ended.
enum Delivery {
    Acked,
    /// Refused at once, or not acknowledged in time: not held by Paho any more.
    Failed(mqtt::Error),
    /// The connection was lost [`DROPS_BEFORE_GIVING_UP`] times while it waited.
    Dropped(u64),
    /// The Paho client was replaced while it waited: it is not held by Paho any more.
    Replaced,
    Stopped,
}

/// The link: owns the Paho client.
pub struct Link {
    /// Replaced by a fresh one (same client id and session) when the broker keeps dropping
    /// the connection for something the old one resends on every reconnect.
    client: std::sync::Mutex<mqtt::AsyncClient>,
    topics: Topics,
    client_id: String,
    /// Lost connections since start.
    drops: AtomicU64,
    /// Paho clients made since start.
    epoch: AtomicU64,
    /// The next connect starts with a fresh Paho client.
    fresh: AtomicBool,
    /// Paho's callbacks and the publisher feed `mqtt-link` through this.
    events: std::sync::Mutex<Option<mpsc::Sender<Event>>>,
}

fn create_client(cfg: &Config, client_id: &str) -> Result<mqtt::AsyncClient, LinkError> {
    let opts = mqtt::CreateOptionsBuilder::new_v3()
        .server_uri(server_uri(cfg))
        .client_id(client_id)
        .persistence(mqtt::PersistenceType::None)
        .finalize();
    mqtt::AsyncClient::new(opts).map_err(LinkError::Create)
}

/// Waits up to `max` for a token (`wait` waits on a clone of it for the time given), giving up
/// as soon as the connection is lost: Paho keeps such a token pending for the next connect.
fn wait_up(
    client: &mqtt::AsyncClient,
    max: Duration,
    mut wait: impl FnMut(Duration) -> Result<(), mqtt::Error>,
) -> Result<(), mqtt::Error> {
    let end = Instant::now() + max;
    loop {
        match wait(Duration::from_millis(200)) {
            Err(mqtt::Error::Timeout) => {}
            r => return r,
        }
        if !client.is_connected() {
            return Err(mqtt::Error::General("connection lost"));
        }
        if Instant::now() >= end {
            return Err(mqtt::Error::Timeout);
        }
    }
}

fn set_callbacks(client: &mqtt::AsyncClient, tx: &mpsc::Sender<Event>) {
    {
        let tx = tx.clone();
        client.set_message_callback(move |_, m| {
            if let Some(m) = m {
                let _ = tx.send(Event::Message(m));
            }
        });
    }
    let tx = tx.clone();
    client.set_connection_lost_callback(move |_| {
        let _ = tx.send(Event::Lost);
    });
}

impl Link {
    /// Creates the client (no network yet).
    pub fn new(cfg: &Config, mac: &str) -> Result<Link, LinkError> {
        let client_id = Config::client_id(mac);
        let client = create_client(cfg, &client_id)?;
        Ok(Link {
            client: std::sync::Mutex::new(client),
            topics: Topics::new(cfg, mac),
            client_id,
            drops: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            fresh: AtomicBool::new(false),
            events: std::sync::Mutex::new(None),
        })
    }

    /// The Paho client in use (a cheap handle).
    fn client(&self) -> mqtt::AsyncClient {
        crate::runtime::lock(&self.client).clone()
    }

    fn connect_options(&self, cfg: &Config) -> mqtt::ConnectOptions {
        let will = mqtt::Message::new_retained(
            &self.topics.status,
            offline_payload(&self.client_id).to_string(),
            cfg.qos.max(1),
        );
        let mut b = mqtt::ConnectOptionsBuilder::new_v3();
        b.keep_alive_interval(Duration::from_secs(30))
            .clean_session(false)
            .connect_timeout(Duration::from_secs(20))
            .will_message(will);
        match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => {
                b.user_name(u).password(p.as_str());
            }
            (Some(u), None) => {
                b.user_name(u);
            }
            (None, Some(_)) => log::warn!("MQTT: password given without username; MQTT 3.1.1 cannot send it, connecting without credentials"),
            (None, None) => {}
        }
        if let Err(e) = transport_options(cfg, &mut b) {
            log::error!("{e}");
        }
        b.finalize()
    }

    /// Starts `mqtt-link` and `mqtt-out` in `threads`.
    pub fn spawn(self, deps: LinkDeps, threads: &mut Threads) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel();
        set_callbacks(&self.client(), &tx);
        *crate::runtime::lock(&self.events) = Some(tx.clone());
        let stop_tx = std::sync::Mutex::new(tx);
        deps.shutdown.on_trigger(move || {
            let _ = crate::runtime::lock(&stop_tx).send(Event::Stop);
        });
        let link = Arc::new(self);
        let deps = Arc::new(deps);
        {
            let (l, d) = (link.clone(), deps.clone());
            threads.spawn("mqtt-out", move || l.publisher(&d))?;
        }
        threads.spawn("mqtt-link", move || link.run(&deps, rx))
    }

    fn run(&self, d: &LinkDeps, rx: mpsc::Receiver<Event>) {
        self.session(d, &rx);
        self.set_state(d, false);
        self.goodbye(&d.cfg.get());
    }

    fn set_state(&self, d: &LinkDeps, up: bool) {
        d.state.set(up);
        if !up {
            d.broker.set(None);
            d.outbox.wake();
        }
    }

    /// Asks `mqtt-link` to reconnect with a fresh Paho client, so that nothing the old one
    /// holds is resent (the session at the broker stays: same client id, no clean session).
    fn want_fresh_client(&self) {
        self.fresh.store(true, Ordering::SeqCst);
        if let Some(tx) = crate::runtime::lock(&self.events).as_ref() {
            let _ = tx.send(Event::Fresh);
        }
    }

    /// Replaces the Paho client by a new one with the same client id; the messages the old
    /// one was waiting to have acknowledged are forgotten with it.
    fn fresh_client(&self, cfg: &Config) {
        let Some(tx) = crate::runtime::lock(&self.events).clone() else {
            return;
        };
        let new = match create_client(cfg, &self.client_id) {
            Ok(c) => c,
            Err(e) => {
                log::error!("MQTT: {e}; keeping the old client");
                return;
            }
        };
        set_callbacks(&new, &tx);
        let old = std::mem::replace(&mut *crate::runtime::lock(&self.client), new);
        old.remove_message_callback();
        old.remove_connection_lost_callback();
        if old.is_connected() {
            let _ = old.disconnect(None).wait_for(Duration::from_secs(2));
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        log::info!("MQTT: fresh client for the next connect (same client id and session; messages the old one would have resent are given up)");
    }

    /// Book-keeping for a connection that ended (lost, or dropped during subscribe).
    /// `up_at`: when it was set up (subscribed, online CONNECT acknowledged), if it was.
    fn ended(&self, up_at: Option<Instant>, backoff: &mut Backoff, short: &mut u32) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        if up_at.is_some_and(|t| t.elapsed() >= SHORT_SESSION) {
            *short = 0;
            backoff.reset();
            return;
        }
        *short += 1;
        if *short >= SHORT_SESSIONS_BEFORE_FRESH {
            log::warn!(
                "MQTT broker dropped the connection {short} times in a row before or within {} s of its setup (it may refuse something sent on every connect: check its ACL and packet size limit)",
                SHORT_SESSION.as_secs()
            );
            *short = 0;
            self.fresh.store(true, Ordering::SeqCst);
        }
    }

    fn session(&self, d: &LinkDeps, rx: &mpsc::Receiver<Event>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), true);
        let mut failures = 0u32;
        let mut short = 0u32;
        let mut last_ping = Instant::now();
        'outer: while !d.shutdown.is_set() {
            let cfg = d.cfg.get();
            if self.fresh.swap(false, Ordering::SeqCst) {
                self.fresh_client(&cfg);
            }
            let client = self.client();
            match client
                .connect(self.connect_options(&cfg))
                .wait_for(Duration::from_secs(30))
            {
                Ok(rsp) => {
                    // Paho names the server without its scheme when there is only one.
                    let uris = server_uris(&cfg);
                    let uri = rsp
                        .connect_response()
                        .map(|c| c.server_uri)
                        .filter(|u| !u.is_empty())
                        .and_then(|u| {
                            uris.iter()
                                .find(|k| **k == u || k.split_once("://").map(|x| x.1) == Some(&u))
                                .cloned()
                        })
                        .unwrap_or_else(|| server_uri(&cfg));
                    if failures > 0 {
                        log::info!("MQTT connected to {uri} after {failures} failed attempts");
                    } else {
                        log::info!("MQTT connected to {uri} as {}", self.client_id);
                    }
                    d.broker.set(Some(uri));
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff.next_delay();
                    if failures == 1 || failures.is_multiple_of(10) {
                        log::warn!("MQTT connect to {} failed ({e}); retrying in {:.1} s (attempt {failures})", server_uris(&cfg).join(", "), delay.as_secs_f32());
                    }
                    if d.shutdown.wait_timeout(delay) {
                        break;
                    }
                    continue;
                }
            }
            let sub = client.subscribe(&self.topics.sub, 1);
            if let Err(e) = wait_up(&client, Duration::from_secs(10), |t| {
                sub.clone().wait_for(t).map(|_| ())
            }) {
                log::error!(
                    "MQTT subscribe to {} failed ({e}); reconnecting",
                    self.topics.sub
                );
                let _ = client.disconnect(None).wait_for(Duration::from_secs(2));
                d.broker.set(None);
                self.ended(None, &mut backoff, &mut short);
                if d.shutdown.wait_timeout(backoff.next_delay()) {
                    break;
                }
                continue;
            }
            let online = mqtt::Message::new_retained(
                &self.topics.status,
                online_payload(&self.client_id).to_string(),
                cfg.qos.max(1),
            );
            let tok = client.publish(online);
            let up_at = match wait_up(&client, Duration::from_secs(10), |t| {
                tok.clone().wait_for(t)
            }) {
                Ok(()) => Some(Instant::now()),
                Err(e) => {
                    log::warn!("MQTT online CONNECT not published: {e}");
                    None
                }
            };
            self.set_state(d, true);
            loop {
                if d.shutdown.is_set() {
                    break 'outer;
                }
                let cfg = d.cfg.get();
                let ping_every = Duration::from_secs(cfg.ping_interval);
                // Woken by a message, a lost connection, the stop, or the next PING due
                // (at least every 30 s, so that a HUP turning PINGs on is seen).
                let wait = if cfg.no_ping {
                    Duration::from_secs(30)
                } else {
                    ping_every.saturating_sub(last_ping.elapsed())
                };
                match rx.recv_timeout(wait) {
                    Ok(Event::Message(msg)) => {
                        if msg.topic() == self.topics.sub {
                            d.inbound.on_job(msg.payload());
                        } else {
                            log::debug!("MQTT message on unexpected topic {} ignored", msg.topic());
                        }
                    }
                    // A late callback of a client replaced since.
                    Ok(Event::Lost) if client.is_connected() => {}
                    Ok(Event::Lost) => {
                        let uri = d.broker.get().unwrap_or_else(|| server_uri(&d.cfg.get()));
                        self.set_state(d, false);
                        log::warn!("MQTT connection to {uri} lost; reconnecting");
                        self.ended(up_at, &mut backoff, &mut short);
                        break;
                    }
                    Ok(Event::Fresh) => {
                        if self.fresh.load(Ordering::SeqCst) {
                            self.set_state(d, false);
                            let _ = client.disconnect(None).wait_for(Duration::from_secs(2));
                            continue 'outer;
                        }
                    }
                    Ok(Event::Stop) => break 'outer,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break 'outer,
                }
                if !client.is_connected() {
                    self.set_state(d, false);
                    log::warn!("MQTT connection lost; reconnecting");
                    self.ended(up_at, &mut backoff, &mut short);
                    break;
                }
                if !cfg.no_ping && last_ping.elapsed() >= ping_every {
                    last_ping = Instant::now();
                    let ping = PingMeta {
                        status: (d.ping_status)(),
                        uptime: crate::platform::identity::system_uptime(),
                    };
                    d.outbox.status_event(
                        "PING",
                        serde_json::to_value(ping).unwrap_or(serde_json::Value::Null),
                    );
                }
            }
            if d.shutdown.wait_timeout(backoff.next_delay()) {
                break;
            }
        }
    }

    fn publisher(&self, d: &LinkDeps) {
        loop {
            // Nothing goes out while the link is down: the wait is on the link-state condvar
            // (the stop ends it), not a poll.
            if !d.state.wait_until(None, |up| *up) {
                return;
            }
            let Some(msg) = d.outbox.pop_wait() else {
                return;
            };
            if !d.state.get() {
                d.outbox.unpop(msg);
                continue;
            }
            let topic = self.topics.of(msg.topic);
            let msg = match outbox::fit(msg, d.cfg.get().mqtt_max_payload) {
                Ok(m) => m,
                Err(why) => {
                    log::error!("MQTT message to {topic} dropped: {why}");
                    d.outbox.done();
                    continue;
                }
            };
            let e = match self.deliver(d, &msg) {
                Delivery::Acked => {
                    d.outbox.done();
                    continue;
                }
                Delivery::Stopped => {
                    d.outbox.unpop(msg);
                    return;
                }
                Delivery::Dropped(n) => {
                    // Paho would send it again on every reconnect: a fresh client forgets it.
                    self.want_fresh_client();
                    let len = msg.payload.len();
                    match outbox::cut_short(&msg, SHORT_ANSWER)
                        .filter(|_| msg.attempts < MAX_ATTEMPTS)
                    {
                        Some(short) => {
                            log::error!("MQTT broker dropped the connection {n} times while a {len}-byte message to {topic} waited for its acknowledgement; sending it once more cut to {} bytes", short.payload.len());
                            d.outbox.unpop(Outgoing {
                                attempts: MAX_ATTEMPTS,
                                ..short
                            });
                        }
                        None => {
                            log::error!("MQTT broker dropped the connection {n} times while a {len}-byte message to {topic} waited for its acknowledgement; message dropped so that the rest can go out");
                            d.outbox.done();
                        }
                    }
                    continue;
                }
                Delivery::Replaced => mqtt::Error::from("the MQTT client was replaced"),
                Delivery::Failed(e) => e,
            };
            let mut msg = msg;
            msg.attempts += 1;
            let n = msg.attempts;
            if n < MAX_ATTEMPTS {
                log::warn!("MQTT publish to {topic} failed ({e}); will retry (attempt {n} of {MAX_ATTEMPTS})");
                d.outbox.unpop(msg);
            } else if let Some(stripped) =
                outbox::without_result(&msg).filter(|_| n == MAX_ATTEMPTS)
            {
                log::warn!("MQTT publish to {topic} refused {n} times ({e}); retrying once without its result");
                d.outbox.unpop(Outgoing {
                    attempts: n,
                    ..stripped
                });
            } else {
                log::error!(
                    "MQTT publish to {topic} refused {n} times ({e}); message of {} bytes dropped so that the rest can go out",
                    msg.payload.len()
                );
                d.outbox.done();
            }
            // Longer pauses for a message the broker keeps refusing.
            let pause = Duration::from_millis(200 << n.min(5));
            if d.shutdown.wait_timeout(pause) {
                return;
            }
        }
    }

    /// Publishes `msg` and, for QoS >= 1, waits for its acknowledgement: across lost
    /// connections (Paho resends it on reconnect), up to [`DROPS_BEFORE_GIVING_UP`] of them.
    fn deliver(&self, d: &LinkDeps, msg: &Outgoing) -> Delivery {
        let (epoch, drops) = (
            self.epoch.load(Ordering::SeqCst),
            self.drops.load(Ordering::SeqCst),
        );
        let client = self.client();
        let m = if msg.retain {
            mqtt::Message::new_retained(self.topics.of(msg.topic), msg.payload.clone(), msg.qos)
        } else {
            mqtt::Message::new(self.topics.of(msg.topic), msg.payload.clone(), msg.qos)
        };
        let tok = client.publish(m);
        if msg.qos == 0 {
            // Not acknowledged: handed to Paho is all there is.
            return Delivery::Acked;
        }
        let mut up_since = Instant::now();
        loop {
            match tok.clone().wait_for(Duration::from_secs(1)) {
                Ok(()) => return Delivery::Acked,
                Err(mqtt::Error::Timeout) => {}
                Err(e) => return Delivery::Failed(e),
            }
            if d.shutdown.is_set() {
                return Delivery::Stopped;
            }
            if self.epoch.load(Ordering::SeqCst) != epoch {
                return Delivery::Replaced;
            }
            let n = self.drops.load(Ordering::SeqCst).saturating_sub(drops);
            if n >= DROPS_BEFORE_GIVING_UP {
                return Delivery::Dropped(n);
            }
            if !client.is_connected() {
                up_since = Instant::now();
            } else if up_since.elapsed() >= ACK_TIMEOUT {
                // Still held by Paho: a fresh client forgets it before it is sent again.
                self.want_fresh_client();
                return Delivery::Failed(mqtt::Error::Timeout);
            }
        }
    }

    /// Publishes the retained offline CONNECT and disconnects (clean stop).
    pub fn goodbye(&self, cfg: &Config) {
        let client = self.client();
        if client.is_connected() {
            let off = mqtt::Message::new_retained(
                &self.topics.status,
                offline_payload(&self.client_id).to_string(),
                cfg.qos.max(1),
            );
            if let Err(e) = client.publish(off).wait_for(Duration::from_secs(3)) {
                log::warn!("offline CONNECT not published: {e}");
            }
            let opts = mqtt::DisconnectOptionsBuilder::new()
                .timeout(Duration::from_millis(500))
                .finalize();
            let t = Instant::now();
            let _ = client.disconnect(opts).wait_for(Duration::from_secs(3));
            log::debug!("MQTT disconnected in {} ms", t.elapsed().as_millis());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Topic;

    #[test]
    fn topics_and_uri() {
        let cfg = Config {
            topic: "T".into(),
            key: "K".into(),
            mqtt_host: "broker".into(),
            port: 8883,
            tls: true,
            ..Config::default()
        };
        let t = Topics::new(&cfg, "88-DC-96-00-11-22");
        assert_eq!(t.sub, "sub/T/K/88-DC-96-00-11-22");
        assert_eq!(t.of(Topic::Delivery), "delivery/T/K/88-DC-96-00-11-22");
        assert_eq!(t.of(Topic::Pub), "pub/T/K/88-DC-96-00-11-22");
        assert_eq!(t.of(Topic::Status), "status/T/K/88-DC-96-00-11-22");
        assert_eq!(server_uri(&cfg), "ssl://broker:8883");
        let v6 = Config {
            mqtt_host: "::1".into(),
            tls: false,
            port: 1883,
            ..cfg
        };
        assert_eq!(server_uri(&v6), "tcp://[::1]:1883");
        let ws = Config {
            mqtt_hosts: vec!["a:9001".into(), "b".into()],
            transport: Transport::Ws,
            ws_path: "/mqtt".into(),
            tls: true,
            port: 443,
            ..v6
        };
        assert_eq!(
            server_uris(&ws),
            vec![
                "wss://a:9001/mqtt".to_string(),
                "wss://b:443/mqtt".to_string()
            ]
        );
    }

    #[test]
    fn connect_payloads() {
        let on = online_payload("sm-1");
        assert_eq!(on["event_type"], "CONNECT");
        assert_eq!(on["meta"]["online"], "1");
        assert_eq!(on["meta"]["version"], crate::VERSION);
        let off = offline_payload("sm-1");
        assert_eq!(off["meta"]["online"], "0");
        assert_eq!(off["meta"]["client_id"], "sm-1");
    }
}
