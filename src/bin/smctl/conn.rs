//! The broker side of `smctl`: [`Target`] (broker, topic, key, MAC and `job_secret` from the
//! config file and the flags; topic names; signing) and [`Conn`] (one synchronous Paho client
//! and its message stream).

use crate::{parse_num, usage, Fail, EXIT_BROKER, EXIT_USAGE};
use getopts::Matches;
use paho_mqtt as mqtt;
use socketman::config::Config;
use socketman::proto::{Job, Signed, Topics, Wire};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where and how to reach the devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub cfg: Config,
    /// `job_secret`: jobs are wrapped and signed when set.
    pub secret: Option<String>,
}

impl Target {
    pub fn from_matches(m: &Matches) -> Result<Target, Fail> {
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
            socketman::config::split_host_port(&h).map_err(|e| usage(format!("--host: {e}")))?;
            cfg.mqtt_hosts = vec![h.clone()];
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
    pub fn mac(&self) -> Result<String, Fail> {
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

    pub fn topics(&self, mac: &str) -> Topics {
        Topics::new(&self.cfg, mac)
    }

    /// `kind/T/K/+`.
    pub fn wildcard(&self, kind: &str) -> String {
        format!("{kind}/{}/{}/+", self.cfg.topic, self.cfg.key)
    }

    /// The payload for `job`: the job itself, or the signed wrapper of SPEC §4.3.
    pub fn wrap(&self, job: &Job) -> String {
        match &self.secret {
            Some(s) => Signed::new(job, |text| socketman::jobs::intake::sign(s, text)).to_json(),
            None => job.to_json(),
        }
    }
}

/// A connected client and its message stream.
pub struct Conn {
    cli: mqtt::Client,
    rx: mqtt::SyncReceiver<Option<mqtt::Message>>,
}

impl Conn {
    pub fn open(t: &Target) -> Result<Conn, Fail> {
        let uri = socketman::link::server_uris(&t.cfg).join(", ");
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
                .server_uri(socketman::link::server_uri(&t.cfg))
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
        // Same URIs, TLS (CA, client certificate, ALPN), WebSockets and proxy as the agent.
        socketman::link::transport_options(&t.cfg, &mut b)
            .map_err(|e| Fail(EXIT_USAGE, e.to_string()))?;
        cli.connect(b.finalize())
            .map_err(|e| bfail("cannot connect to", e))?;
        Ok(Conn { cli, rx })
    }

    pub fn subscribe(&self, topics: &[String]) -> Result<(), Fail> {
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

    pub fn publish(&self, topic: &str, payload: String) -> Result<(), Fail> {
        self.cli
            .publish(mqtt::Message::new(topic, payload, 1))
            .map_err(|e| Fail(EXIT_BROKER, format!("cannot publish to {topic}: {e}")))
    }

    /// The next message before `deadline`; `Ok(None)` when the deadline passed.
    pub fn next(&self, deadline: Instant) -> Result<Option<mqtt::Message>, Fail> {
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

    /// A message that has already arrived, if any.
    pub fn try_next(&self) -> Option<mqtt::Message> {
        self.rx.try_recv().ok().flatten()
    }

    pub fn close(self) {
        let _ = self.cli.disconnect(None);
    }
}

/// The last topic level (the MAC) of `kind/T/K/MAC`.
pub fn mac_of(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options;
    use socketman::proto::JobMeta;

    fn parse(args: &[&str]) -> Matches {
        options().parse(args).unwrap()
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
        let job = Job {
            id: "x".into(),
            meta: JobMeta::default(),
            timestamp: None,
        };
        let wrapped = Signed::from_slice(t.wrap(&job).as_bytes()).unwrap();
        assert_eq!(
            wrapped.sig,
            socketman::jobs::intake::sign("s3", &wrapped.signed)
        );
        assert_eq!(wrapped.job().unwrap(), job);
        // Flags override the file.
        let t = Target::from_matches(&parse(&["send", "-c", path, "--mac", "BB", "--port", "7"]))
            .unwrap();
        assert_eq!(t.mac().unwrap(), "BB");
        assert_eq!(t.cfg.port, 7);
        // Unsigned without a secret.
        let t = Target::from_matches(&parse(&["send", "--topic", "T", "--key", "K"])).unwrap();
        assert_eq!(t.wrap(&job), r#"{"id":"x","meta":{}}"#);
    }
}
