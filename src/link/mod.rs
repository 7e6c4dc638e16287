//! The MQTT link (SPEC §3), on the Paho C library (bundled) with OpenSSL.
//!
//! Two threads: `mqtt-link` connects (client id `sm-<MAC>`, persistent session, keep-alive
//! 30 s, the offline CONNECT as last will, TLS verified against `cacrt` or the system bundle),
//! subscribes to `sub/T/K/MAC` on every connect, publishes the retained online CONNECT, hands
//! each inbound job to the [`Inbound`] sink (the job intake) and sends PING every
//! `ping_interval`; on a lost connection it reconnects with jittered back-off 1–60 s. It
//! publishes the link state (connected or not) through a [`Watch`]. `mqtt-out` publishes the
//! [`outbox::Outbox`] while connected, in order, waiting for the broker's acknowledgement of
//! each QoS ≥ 1 message; a message that fails goes back to the front of the queue.
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

/// The link: owns the Paho client.
pub struct Link {
    client: mqtt::AsyncClient,
    topics: Topics,
    client_id: String,
}

impl Link {
    /// Creates the client (no network yet).
    pub fn new(cfg: &Config, mac: &str) -> Result<Link, LinkError> {
        let client_id = Config::client_id(mac);
        let opts = mqtt::CreateOptionsBuilder::new_v3()
            .server_uri(server_uri(cfg))
            .client_id(&client_id)
            .persistence(mqtt::PersistenceType::None)
            .finalize();
        let client = mqtt::AsyncClient::new(opts).map_err(LinkError::Create)?;
        Ok(Link {
            client,
            topics: Topics::new(cfg, mac),
            client_id,
        })
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
        {
            let tx = tx.clone();
            self.client.set_message_callback(move |_, m| {
                if let Some(m) = m {
                    let _ = tx.send(Event::Message(m));
                }
            });
        }
        {
            let tx = tx.clone();
            self.client.set_connection_lost_callback(move |_| {
                let _ = tx.send(Event::Lost);
            });
        }
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

    fn session(&self, d: &LinkDeps, rx: &mpsc::Receiver<Event>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), true);
        let mut failures = 0u32;
        let mut last_ping = Instant::now();
        'outer: while !d.shutdown.is_set() {
            let cfg = d.cfg.get();
            match self
                .client
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
                    backoff.reset();
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
            if let Err(e) = self
                .client
                .subscribe(&self.topics.sub, 1)
                .wait_for(Duration::from_secs(10))
            {
                log::error!(
                    "MQTT subscribe to {} failed ({e}); reconnecting",
                    self.topics.sub
                );
                let _ = self
                    .client
                    .disconnect(None)
                    .wait_for(Duration::from_secs(2));
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
            if let Err(e) = self
                .client
                .publish(online)
                .wait_for(Duration::from_secs(10))
            {
                log::warn!("MQTT online CONNECT not published: {e}");
            }
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
                    Ok(Event::Lost) => {
                        let uri = d.broker.get().unwrap_or_else(|| server_uri(&d.cfg.get()));
                        self.set_state(d, false);
                        log::warn!("MQTT connection to {uri} lost; reconnecting");
                        break;
                    }
                    Ok(Event::Stop) => break 'outer,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break 'outer,
                }
                if !self.client.is_connected() {
                    self.set_state(d, false);
                    log::warn!("MQTT connection lost; reconnecting");
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
            match self.publish_now(&msg) {
                Ok(()) => d.outbox.done(),
                Err(e) if msg.qos == 0 => {
                    log::warn!("MQTT publish to {topic} failed ({e}); QoS 0, not retried");
                    d.outbox.done();
                }
                Err(e) => {
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
        }
    }

    fn publish_now(&self, msg: &Outgoing) -> Result<(), mqtt::Error> {
        let m = if msg.retain {
            mqtt::Message::new_retained(self.topics.of(msg.topic), msg.payload.clone(), msg.qos)
        } else {
            mqtt::Message::new(self.topics.of(msg.topic), msg.payload.clone(), msg.qos)
        };
        let tok = self.client.publish(m);
        if msg.qos > 0 {
            tok.wait_for(Duration::from_secs(10)).map(|_| ())
        } else {
            Ok(())
        }
    }

    /// Publishes the retained offline CONNECT and disconnects (clean stop).
    pub fn goodbye(&self, cfg: &Config) {
        if self.client.is_connected() {
            let off = mqtt::Message::new_retained(
                &self.topics.status,
                offline_payload(&self.client_id).to_string(),
                cfg.qos.max(1),
            );
            if let Err(e) = self.client.publish(off).wait_for(Duration::from_secs(3)) {
                log::warn!("offline CONNECT not published: {e}");
            }
            let opts = mqtt::DisconnectOptionsBuilder::new()
                .timeout(Duration::from_millis(500))
                .finalize();
            let t = Instant::now();
            let _ = self
                .client
                .disconnect(opts)
                .wait_for(Duration::from_secs(3));
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
