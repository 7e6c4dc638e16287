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
use crate::config::Config;
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
    pub inbound: Arc<dyn Inbound>,
    /// The connectivity CODE for PING's `status` (SPEC §3), when known.
    pub ping_status: Box<dyn Fn() -> Option<u8> + Send + Sync>,
}

/// Why the link could not be set up.
#[derive(Debug)]
pub enum LinkError {
    /// Paho refused the client options (bad server URI, client id).
    Create(mqtt::Error),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Create(e) => write!(f, "cannot create MQTT client: {e}"),
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

/// The broker URI for the config.
pub fn server_uri(cfg: &Config) -> String {
    let scheme = if cfg.tls { "ssl" } else { "tcp" };
    let host = if cfg.mqtt_host.contains(':') && !cfg.mqtt_host.starts_with('[') {
        format!("[{}]", cfg.mqtt_host)
    } else {
        cfg.mqtt_host.clone()
    };
    format!("{scheme}://{host}:{}", cfg.port)
}

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
        if cfg.tls {
            let mut ssl = mqtt::SslOptionsBuilder::new();
            ssl.enable_server_cert_auth(true).verify(true);
            let ca = cfg.cacrt.clone().or_else(system_ca_bundle);
            match ca {
                Some(ca) => {
                    if let Err(e) = ssl.trust_store(&ca) {
                        log::error!("MQTT TLS: CA file {ca}: {e}");
                    }
                }
                None => log::warn!("MQTT TLS: no cacrt and no system CA bundle found; the broker certificate cannot be verified"),
            }
            b.ssl_options(ssl.finalize());
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
                Ok(_) => {
                    if failures > 0 {
                        log::info!(
                            "MQTT connected to {} after {failures} failed attempts",
                            server_uri(&cfg)
                        );
                    } else {
                        log::info!(
                            "MQTT connected to {} as {}",
                            server_uri(&cfg),
                            self.client_id
                        );
                    }
                    failures = 0;
                    backoff.reset();
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff.next_delay();
                    if failures == 1 || failures.is_multiple_of(10) {
                        log::warn!("MQTT connect to {} failed ({e}); retrying in {:.1} s (attempt {failures})", server_uri(&cfg), delay.as_secs_f32());
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
                        self.set_state(d, false);
                        log::warn!(
                            "MQTT connection to {} lost; reconnecting",
                            server_uri(&d.cfg.get())
                        );
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
            // Nothing goes out while the link is down; the stop ends the wait.
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
            match self.publish_now(&msg) {
                Ok(()) => d.outbox.done(),
                Err(e) => {
                    log::warn!(
                        "MQTT publish to {} failed ({e}); will retry",
                        self.topics.of(msg.topic)
                    );
                    if msg.qos > 0 {
                        d.outbox.unpop(msg);
                    } else {
                        d.outbox.done();
                    }
                    if d.shutdown.wait_timeout(Duration::from_millis(200)) {
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
