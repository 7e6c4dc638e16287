//! The MQTT link (SPEC §3), on the Paho C library (bundled) with OpenSSL.
//!
//! Two threads: `mqtt-link` connects (client id `sm-<MAC>`, persistent session, keep-alive
//! 30 s, the offline CONNECT as last will, TLS verified against `cacrt` or the system bundle),
//! subscribes to `sub/T/K/MAC` on every connect, publishes the retained online CONNECT and hands
//! each inbound job to [`Jobs::on_message`]; on a lost connection it reconnects with jittered
//! back-off 1–60 s. `mqtt-out` publishes the [`crate::link::outbox::Outbox`] while connected, in order,
//! waiting for the broker's acknowledgement of each QoS ≥ 1 message; a message that fails goes
//! back to the front of the queue. TCP_NODELAY is set by Paho C on every socket.
#![forbid(unsafe_code)]

pub mod outbox;

use crate::agent::Agent;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::jobs::Jobs;
use crate::proto::{event, Topics};
use outbox::Outgoing;
use paho_mqtt as mqtt;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    event(
        "CONNECT",
        json!({"online": "1", "client_id": client_id, "version": crate::VERSION}),
    )
}

/// The offline CONNECT: last will and clean stop (retained).
pub fn offline_payload(client_id: &str) -> serde_json::Value {
    event("CONNECT", json!({"online": "0", "client_id": client_id}))
}

/// The link: owns the Paho client.
pub struct Link {
    client: mqtt::AsyncClient,
    topics: Topics,
    client_id: String,
}

impl Link {
    /// Creates the client (no network yet).
    pub fn new(cfg: &Config, mac: &str) -> Result<Link, String> {
        let client_id = Config::client_id(mac);
        let opts = mqtt::CreateOptionsBuilder::new_v3()
            .server_uri(server_uri(cfg))
            .client_id(&client_id)
            .persistence(mqtt::PersistenceType::None)
            .finalize();
        let client =
            mqtt::AsyncClient::new(opts).map_err(|e| format!("cannot create MQTT client: {e}"))?;
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

    /// Starts `mqtt-link` and `mqtt-out`.
    pub fn spawn(
        self,
        agent: &Arc<Agent>,
        jobs: Arc<Jobs>,
    ) -> std::io::Result<(JoinHandle<()>, JoinHandle<()>)> {
        let link = Arc::new(self);
        let rx = link.client.start_consuming();
        let out = {
            let (a, l) = (agent.clone(), link.clone());
            std::thread::Builder::new()
                .name("mqtt-out".into())
                .spawn(move || l.publisher(&a))?
        };
        let (a, l) = (agent.clone(), link.clone());
        let main = std::thread::Builder::new()
            .name("mqtt-link".into())
            .spawn(move || l.run(&a, &jobs, rx))?;
        Ok((main, out))
    }

    fn run(&self, agent: &Arc<Agent>, jobs: &Jobs, rx: mqtt::SyncReceiver<Option<mqtt::Message>>) {
        self.session(agent, jobs, rx);
        agent.mqtt_connected.store(false, Ordering::SeqCst);
        self.goodbye(&agent.cfg());
    }

    fn session(
        &self,
        agent: &Arc<Agent>,
        jobs: &Jobs,
        rx: mqtt::SyncReceiver<Option<mqtt::Message>>,
    ) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), true);
        let mut failures = 0u32;
        let mut last_ping = Instant::now();
        'outer: while !agent.stopping() {
            let cfg = agent.cfg();
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
                    if agent.wait_stop(delay) {
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
                if agent.wait_stop(backoff.next_delay()) {
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
            agent.mqtt_connected.store(true, Ordering::SeqCst);
            crate::agent::on_connected(agent);
            loop {
                if agent.stopping() {
                    break 'outer;
                }
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(Some(msg)) => {
                        if msg.topic() == self.topics.sub {
                            jobs.on_message(agent, msg.payload());
                        } else {
                            log::debug!("MQTT message on unexpected topic {} ignored", msg.topic());
                        }
                    }
                    Ok(None) => {
                        agent.mqtt_connected.store(false, Ordering::SeqCst);
                        log::warn!(
                            "MQTT connection to {} lost; reconnecting",
                            server_uri(&agent.cfg())
                        );
                        break;
                    }
                    Err(mqtt::sync_channel::RecvTimeoutError::Timeout) => {}
                    Err(mqtt::sync_channel::RecvTimeoutError::Disconnected) => {
                        agent.mqtt_connected.store(false, Ordering::SeqCst);
                        break;
                    }
                }
                if !self.client.is_connected() {
                    agent.mqtt_connected.store(false, Ordering::SeqCst);
                    log::warn!("MQTT connection lost; reconnecting");
                    break;
                }
                let cfg = agent.cfg();
                if !cfg.no_ping && last_ping.elapsed() >= Duration::from_secs(cfg.ping_interval) {
                    last_ping = Instant::now();
                    let status = agent
                        .net_code()
                        .map_or(serde_json::Value::Null, |c| json!(c));
                    agent.outbox.status_event(
                        "PING",
                        json!({"uptime": crate::platform::identity::system_uptime(), "status": status}),
                    );
                }
            }
            if agent.wait_stop(backoff.next_delay()) {
                break;
            }
        }
    }

    fn publisher(&self, agent: &Arc<Agent>) {
        loop {
            if agent.stopping() {
                return;
            }
            let Some(msg) = agent.outbox.pop(Duration::from_secs(1)) else {
                continue;
            };
            if !agent.is_connected() {
                agent.outbox.unpop(msg);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if let Err(e) = self.publish_now(&msg) {
                log::warn!(
                    "MQTT publish to {} failed ({e}); will retry",
                    self.topics.of(msg.topic)
                );
                if msg.qos > 0 {
                    agent.outbox.unpop(msg);
                }
                std::thread::sleep(Duration::from_millis(200));
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
