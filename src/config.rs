//! The config file (SPEC §2): raw JSON text → validated, typed [`Config`].
//!
//! [`parse`] is a pure function of the text (no file system, no logging): it returns the
//! config plus the notes (unknown keys, clamped values) that the caller logs. Errors name the
//! file, the key and, where the JSON itself is broken or a key has the wrong type, the line
//! and column. Field-style values as found on devices are accepted: numbers as strings
//! (`"15"`), booleans as `0`/`1`, `"0"`/`"1"`, `"true"`/`"false"`.
#![forbid(unsafe_code)]

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// How daemons (system services) are driven (SPEC §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManager {
    Auto,
    Initd,
    Systemd,
}

/// Restart policy of a supervised service (SPEC §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// One entry of `services` (SPEC §8.1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub cmd: String,
    pub dir: Option<String>,
    pub version: Option<String>,
    pub autostart: bool,
    pub restart: RestartPolicy,
    pub heartbeat: bool,
    pub env: BTreeMap<String, String>,
}

/// The effective configuration. Field names are the SPEC keys with `-` written as `_`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub username: Option<String>,
    pub password: Option<String>,
    pub topic: String,
    pub key: String,
    pub mac: Option<String>,
    pub mac_file: String,
    pub mqtt_host: String,
    pub port: u16,
    pub tls: bool,
    pub cacrt: Option<String>,
    pub qos: i32,
    pub api_url: Option<String>,
    pub stats_url: Option<String>,
    pub backup_stats_url: Option<String>,
    pub token: Option<String>,
    pub monitor: u64,
    pub heartbeat: u64,
    pub scan: bool,
    pub survey: bool,
    #[serde(rename = "no-cache")]
    pub no_cache: bool,
    #[serde(rename = "no-ping")]
    pub no_ping: bool,
    #[serde(rename = "ping-interval")]
    pub ping_interval: u64,
    pub rest: bool,
    pub reboot: u64,
    pub health_url: String,
    pub health_port: u16,
    pub insecure: bool,
    pub boot_url: Option<String>,
    pub boot_cmd: Option<String>,
    pub debug: bool,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    pub state_dir: PathBuf,
    pub job_timeout: u64,
    pub job_timeout_max: u64,
    pub job_output_max: usize,
    pub job_workers: usize,
    pub job_queue: usize,
    pub job_secret: Option<String>,
    pub job_max_age: u64,
    pub job_types: Option<Vec<String>>,
    pub network_restart_cmd: String,
    pub reboot_cmd: String,
    pub network_backup_files: Vec<String>,
    pub lease_file: String,
    pub service_manager: ServiceManager,
    pub init_dir: String,
    pub daemons: Option<Vec<String>>,
    pub services: Vec<ServiceConfig>,
    pub dns_check: String,
    pub watchdog_port: u16,
    pub watchdog_timeout: u64,
    /// The firmware flasher of `firmware.upgrade` (`sysupgrade` on OpenWrt when unset).
    pub sysupgrade_cmd: Option<String>,
    /// Every broker of `mqtt_host` (a string or a list), in the order tried; entries are
    /// `host`, `host:port` or `[v6]:port`. `mqtt_host` is the first one.
    pub mqtt_hosts: Vec<String>,
    /// Client certificate (PEM, may hold the chain and the key) for mTLS, MQTT and HTTPS.
    pub client_crt: Option<String>,
    /// Client private key (PEM) when not in `client_crt`.
    pub client_key: Option<String>,
    /// Password of an encrypted `client_key` (secret: masked, never logged).
    pub client_key_password: Option<String>,
    /// ALPN protocols offered in the TLS handshake (e.g. `["x-amzn-mqtt-ca"]`).
    pub alpn: Vec<String>,
    /// `tcp` (MQTT over TCP/TLS) or `ws` (MQTT over WebSockets, `ws://` or `wss://` by `tls`).
    pub transport: Transport,
    /// HTTP path of the WebSocket endpoint (`transport: ws`).
    pub ws_path: String,
    /// HTTP proxy `http://[user:pass@]host:port` (credentials masked).
    pub proxy: Option<String>,
    /// Largest MQTT message the broker takes; answers are cut to fit (`truncated: true`).
    pub mqtt_max_payload: usize,
    /// Digest of the contents of `cacrt`, `client_crt` and `client_key` as read by [`load`]
    /// (a HUP with changed files reconnects).
    #[serde(skip)]
    pub tls_files_stamp: Option<String>,
}

/// How MQTT is carried (`transport` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Ws,
}

impl Default for Config {
    /// The SPEC defaults; `topic`, `key` and `mqtt_host` are empty (they are required in a file).
    fn default() -> Self {
        Config {
            username: None,
            password: None,
            topic: String::new(),
            key: String::new(),
            mac: None,
            mac_file: "/etc/mac".into(),
            mqtt_host: String::new(),
            port: 1883,
            tls: false,
            cacrt: None,
            qos: 1,
            api_url: None,
            stats_url: None,
            backup_stats_url: None,
            token: None,
            monitor: 15,
            heartbeat: 60,
            scan: true,
            survey: false,
            no_cache: false,
            no_ping: false,
            ping_interval: 180,
            rest: false,
            reboot: 600,
            health_url: "8.8.8.8".into(),
            health_port: 53,
            insecure: false,
            boot_url: None,
            boot_cmd: None,
            debug: false,
            cache_dir: "/tmp/socketman".into(),
            cache_max_bytes: 5_000_000,
            state_dir: "/etc/socketman/state".into(),
            job_timeout: 300,
            job_timeout_max: 3600,
            job_output_max: 51200,
            job_workers: 2,
            job_queue: 64,
            job_secret: None,
            job_max_age: 0,
            job_types: None,
            network_restart_cmd: "/etc/init.d/network restart".into(),
            reboot_cmd: "reboot".into(),
            network_backup_files: [
                "/etc/config/network",
                "/etc/config/wireless",
                "/etc/config/firewall",
                "/etc/config/dhcp",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            lease_file: "/tmp/dhcp.leases".into(),
            service_manager: ServiceManager::Auto,
            init_dir: "/etc/init.d".into(),
            daemons: None,
            services: Vec::new(),
            dns_check: "openwrt.org".into(),
            watchdog_port: 4951,
            watchdog_timeout: 300,
            sysupgrade_cmd: None,
            mqtt_hosts: Vec::new(),
            client_crt: None,
            client_key: None,
            client_key_password: None,
            alpn: Vec::new(),
            transport: Transport::Tcp,
            ws_path: "/mqtt".into(),
            proxy: None,
            mqtt_max_payload: 128 << 10,
            tls_files_stamp: None,
        }
    }
}

impl Config {
    /// The effective config as JSON with secrets (`password`, `token`, `job_secret`) as `"***"`.
    pub fn masked_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            for k in ["password", "token", "job_secret", "client_key_password"] {
                if let Some(slot) = obj.get_mut(k) {
                    if !slot.is_null() {
                        *slot = Value::String("***".into());
                    }
                }
            }
            if let Some(p) = &self.proxy {
                obj.insert("proxy".into(), Value::String(mask_url_credentials(p)));
            }
        }
        v
    }

    /// Every broker as `(host, port)`, in order (`port` where an entry names none).
    pub fn brokers(&self) -> Vec<(String, u16)> {
        let hosts: Vec<&str> = if self.mqtt_hosts.is_empty() {
            vec![self.mqtt_host.as_str()]
        } else {
            self.mqtt_hosts.iter().map(String::as_str).collect()
        };
        hosts
            .into_iter()
            .filter_map(|h| split_host_port(h).ok())
            .map(|(h, p)| (h, p.unwrap_or(self.port)))
            .collect()
    }

    /// The proxy for HTTP clients (and for MQTT over WebSockets): the `proxy` key, else
    /// `https_proxy`/`http_proxy` (either case) from the environment, unless `no_proxy` is `*`.
    /// Only `http://` proxies are used.
    pub fn effective_proxy(&self) -> Option<String> {
        if self.proxy.is_some() {
            return self.proxy.clone();
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if env("no_proxy").or_else(|| env("NO_PROXY")).as_deref() == Some("*") {
            return None;
        }
        ["https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"]
            .iter()
            .find_map(|k| env(k))
            .filter(|p| check_proxy(p).is_ok())
    }

    /// The largest `msg` of an answer: `job_output_max`, and 1 KiB less than
    /// `mqtt_max_payload` (room for the rest of the PROCESSED). JSON escapes can still push a
    /// message past the limit; the link cuts it again before publishing.
    pub fn output_limit(&self) -> usize {
        self.job_output_max
            .min(self.mqtt_max_payload.saturating_sub(1024))
            .max(64)
    }

    /// MAC with separators removed, as used in the MQTT client id.
    pub fn client_id(mac: &str) -> String {
        let bare: String = mac.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        format!("sm-{bare}")
    }
}

/// Why a config file was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// The file could not be read.
    Io { file: String, msg: String },
    /// The text is not JSON (or not an object).
    Syntax {
        file: String,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A key has a value of the wrong type or an impossible value.
    Key {
        file: String,
        key: String,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A required key is absent.
    Missing { file: String, key: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { file, msg } => write!(f, "config {file}: {msg}"),
            ConfigError::Syntax {
                file,
                line,
                column,
                msg,
            } => write!(
                f,
                "config {file}: malformed JSON at line {line}, column {column}: {msg}"
            ),
            ConfigError::Key {
                file,
                key,
                line,
                column,
                msg,
            } => {
                if *line > 0 {
                    write!(
                        f,
                        "config {file}: key \"{key}\" (line {line}, column {column}): {msg}"
                    )
                } else {
                    write!(f, "config {file}: key \"{key}\": {msg}")
                }
            }
            ConfigError::Missing { file, key } => {
                write!(f, "config {file}: required key \"{key}\" is missing")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the file at `path`. Notes (warnings) are returned for the caller to log.
pub fn load(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let file = path.display().to_string();
    let io = |msg: String| ConfigError::Io {
        file: file.clone(),
        msg,
    };
    let text = read_regular(path, MAX_CONFIG_BYTES).map_err(io)?;
    let (mut cfg, mut notes) = parse(&text, &file)?;
    notes.extend(check_tls_files(&mut cfg, &file)?);
    Ok((cfg, notes))
}

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The text of `path` when it is a regular file of at most `max` bytes. Opened
/// non-blocking, so a FIFO without a writer (or a device) is an error, not a hang.
pub fn read_regular(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(format!("not a regular file ({what})"));
    }
    let mut text = String::new();
    f.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(text)
}

/// Line and column (1-based) of the first `"key"` followed by `:` in `text`, or (0, 0).
fn locate_key(text: &str, key: &str) -> (usize, usize) {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(rel) = text[from..].find(&needle) {
        let at = from + rel;
        let rest = text[at + needle.len()..].trim_start();
        if rest.starts_with(':') {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return (line, column);
        }
        from = at + needle.len();
    }
    (0, 0)
}

struct Reader<'a> {
    text: &'a str,
    file: &'a str,
    obj: &'a Map<String, Value>,
    notes: Vec<String>,
}

impl<'a> Reader<'a> {
    fn err(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        let (line, column) = locate_key(self.text, key);
        ConfigError::Key {
            file: self.file.to_string(),
            key: key.to_string(),
            line,
            column,
            msg: msg.into(),
        }
    }

    /// The value under the first of `names` present (aliases), with the name used.
    fn get(&self, names: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        names
            .iter()
            .find_map(|n| self.obj.get(*n).map(|v| (*n, v)))
            .filter(|(_, v)| !v.is_null())
    }

    fn string(&self, names: &[&'static str]) -> Result<Option<String>, ConfigError> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((k, other)) => {
                Err(self.err(k, format!("expected a string, found {}", kind(other))))
            }
        }
    }

    /// A string that, when given, must not be empty; an empty string counts as absent.
    fn opt_string(&self, names: &[&'static str]) -> Result<Option<String>, ConfigError> {
        Ok(self.string(names)?.filter(|s| !s.trim().is_empty()))
    }

    fn int(&self, names: &[&'static str]) -> Result<Option<(&'static str, i64)>, ConfigError> {
        match self.get(names) {
            None => Ok(None),
            Some((k, Value::Number(n))) => match n.as_i64() {
                Some(i) => Ok(Some((k, i))),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some((k, f as i64))),
                    _ => Err(self.err(k, format!("expected an integer, found {n}"))),
                },
            },
            Some((k, Value::String(s))) => match s.trim().parse::<i64>() {
                Ok(i) => Ok(Some((k, i))),
                Err(_) => Err(self.err(k, format!("expected an integer, found \"{s}\""))),
            },
            Some((k, Value::Bool(b))) => Ok(Some((k, i64::from(*b)))),
            Some((k, other)) => {
                Err(self.err(k, format!("expected an integer, found {}", kind(other))))
            }
        }
    }

    /// An integer clamped to `[min, max]`; a clamp is noted.
    fn int_in(
        &mut self,
        names: &[&'static str],
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let Some((k, v)) = self.int(names)? else {
            return Ok(default);
        };
        let c = v.clamp(min, max);
        if c != v {
            self.notes.push(format!(
                "config key \"{k}\": {v} is out of range {min}..{max}, using {c}"
            ));
        }
        Ok(c)
    }

    fn boolean(&self, names: &[&'static str], default: bool) -> Result<bool, ConfigError> {
        match self.get(names) {
            None => Ok(default),
            Some((_, Value::Bool(b))) => Ok(*b),
            Some((k, Value::Number(n))) => match n.as_i64() {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(self.err(k, format!("expected a boolean (0 or 1), found {n}"))),
            },
            Some((k, Value::String(s))) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" | "" => Ok(false),
                _ => Err(self.err(k, format!("expected a boolean, found \"{s}\""))),
            },
            Some((k, other)) => {
                Err(self.err(k, format!("expected a boolean, found {}", kind(other))))
            }
        }
    }

    fn string_list(&self, names: &[&'static str]) -> Result<Option<Vec<String>>, ConfigError> {
        match self.get(names) {
            None => Ok(None),
            Some((k, Value::Array(items))) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.err(
                        k,
                        format!(
                            "expected a list of strings, found an element that is {}",
                            kind(other)
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some((k, other)) => Err(self.err(
                k,
                format!("expected a list of strings, found {}", kind(other)),
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Every key this version knows (aliases included).
pub const KNOWN_KEYS: &[&str] = &[
    "username",
    "password",
    "topic",
    "key",
    "mac",
    "mac_file",
    "mqtt_host",
    "mqtt_hosts",
    "port",
    "tls",
    "cacrt",
    "qos",
    "api_url",
    "stats_url",
    "backup_stats_url",
    "backup_url",
    "token",
    "monitor",
    "heartbeat",
    "sleep",
    "scan",
    "survey",
    "no-cache",
    "no-ping",
    "ping-interval",
    "rest",
    "reboot",
    "health_url",
    "health_port",
    "insecure",
    "boot_url",
    "boot_cmd",
    "debug",
    "cache_dir",
    "cache_max_bytes",
    "state_dir",
    "job_timeout",
    "job_timeout_max",
    "job_output_max",
    "job_workers",
    "job_queue",
    "job_secret",
    "job_max_age",
    "job_types",
    "network_restart_cmd",
    "reboot_cmd",
    "network_backup_files",
    "lease_file",
    "service_manager",
    "init_dir",
    "daemons",
    "services",
    "dns_check",
    "watchdog_port",
    "watchdog_timeout",
    "sysupgrade_cmd",
    "client_crt",
    "client_key",
    "client_key_password",
    "alpn",
    "transport",
    "ws_path",
    "proxy",
    "mqtt_max_payload",
];

/// Parses config text. `file` is only used in messages.
pub fn parse(text: &str, file: &str) -> Result<(Config, Vec<String>), ConfigError> {
    let root: Value = serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_string(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let Value::Object(obj) = &root else {
        return Err(ConfigError::Syntax {
            file: file.to_string(),
            line: 1,
            column: 1,
            msg: format!("the config must be a JSON object, found {}", kind(&root)),
        });
    };
    let mut r = Reader {
        text,
        file,
        obj,
        notes: Vec::new(),
    };
    for k in obj.keys() {
        if !KNOWN_KEYS.contains(&k.as_str()) {
            r.notes
                .push(format!("config key \"{k}\" is unknown and ignored"));
        }
    }
    let d = Config::default();
    let missing = |key: &str| ConfigError::Missing {
        file: file.to_string(),
        key: key.to_string(),
    };
    let topic = r.opt_string(&["topic"])?.ok_or_else(|| missing("topic"))?;
    let key = r.opt_string(&["key"])?.ok_or_else(|| missing("key"))?;
    // `mqtt_hosts` is the list as the effective config (`--check-config`, `agent.config`)
    // prints it beside `mqtt_host` (its first entry); read back, the list wins.
    let hosts_key = if r.get(&["mqtt_hosts"]).is_some() {
        "mqtt_hosts"
    } else {
        "mqtt_host"
    };
    let mqtt_hosts: Vec<String> = match r.get(&[hosts_key]) {
        Some((_, Value::Array(_))) => r
            .string_list(&[hosts_key])?
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
        _ => r
            .opt_string(&[hosts_key])?
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .into_iter()
            .collect(),
    };
    for h in &mqtt_hosts {
        split_host_port(h).map_err(|msg| r.err(hosts_key, msg))?;
    }
    let mqtt_host = mqtt_hosts
        .first()
        .cloned()
        .ok_or_else(|| missing("mqtt_host"))?;
    let transport = match r.string(&["transport"])?.as_deref().map(str::trim) {
        None | Some("") | Some("tcp") => Transport::Tcp,
        Some("ws") => Transport::Ws,
        Some(other) => {
            return Err(r.err(
                "transport",
                format!("expected \"tcp\" or \"ws\", found \"{other}\""),
            ))
        }
    };
    let ws_path = r.opt_string(&["ws_path"])?.unwrap_or(d.ws_path.clone());
    if !ws_path.starts_with('/') || ws_path.contains(char::is_whitespace) {
        return Err(r.err(
            "ws_path",
            format!("must start with '/' and hold no spaces, found \"{ws_path}\""),
        ));
    }
    let proxy = r.opt_string(&["proxy"])?;
    if let Some(p) = &proxy {
        check_proxy(p).map_err(|msg| r.err("proxy", msg))?;
    }
    let alpn = r.string_list(&["alpn"])?.unwrap_or_default();
    if let Some(bad) = alpn.iter().find(|a| a.is_empty() || a.len() > 255) {
        return Err(r.err(
            "alpn",
            format!("each protocol must be 1 to 255 bytes, found \"{bad}\""),
        ));
    }
    let client_crt = r.opt_string(&["client_crt"])?;
    let client_key = r.opt_string(&["client_key"])?;
    let client_key_password = r.string(&["client_key_password"])?;
    if client_key.is_some() && client_crt.is_none() {
        return Err(r.err(
            "client_key",
            "needs client_crt (the certificate of the key)",
        ));
    }
    if client_key_password
        .as_deref()
        .is_some_and(|p| p.contains('\0'))
    {
        return Err(r.err("client_key_password", "must not contain a NUL character"));
    }
    for (name, v) in [("topic", &topic), ("key", &key)] {
        if v.contains(['/', '+', '#']) {
            return Err(r.err(name, "must not contain '/', '+' or '#'"));
        }
    }
    let tls = r.boolean(&["tls"], d.tls)?;
    let port = r.int_in(&["port"], if tls { 8883 } else { 1883 }, 1, 65535)? as u16;
    let monitor = r.int_in(&["monitor"], d.monitor as i64, 15, 86_400)? as u64;
    let heartbeat = r.int_in(
        &["heartbeat", "sleep"],
        // SPEC §2: min `monitor` holds for the default too (found by fuzz/config).
        d.heartbeat.max(monitor) as i64,
        monitor as i64,
        3600.max(monitor as i64),
    )? as u64;
    let reboot = match r.int(&["reboot"])? {
        None => d.reboot,
        Some((k, v)) if v < 0 => return Err(r.err(k, format!("must be 0 or more, found {v}"))),
        Some((_, 0)) => 0,
        Some((k, v)) if v < 30 => {
            r.notes
                .push(format!("config key \"{k}\": {v} is below 30, using 30"));
            30
        }
        Some((_, v)) => v as u64,
    };
    let job_secret = r.opt_string(&["job_secret"])?;
    let job_timeout_max =
        r.int_in(&["job_timeout_max"], d.job_timeout_max as i64, 1, 86_400)? as u64;
    let job_timeout = r.int_in(
        &["job_timeout"],
        d.job_timeout as i64,
        1,
        job_timeout_max as i64,
    )? as u64;
    let job_max_age_default = if job_secret.is_some() { 600 } else { 0 };
    let service_manager = match r.string(&["service_manager"])?.as_deref() {
        None | Some("auto") => ServiceManager::Auto,
        Some("initd") => ServiceManager::Initd,
        Some("systemd") => ServiceManager::Systemd,
        Some(other) => {
            return Err(r.err(
                "service_manager",
                format!("expected \"auto\", \"initd\" or \"systemd\", found \"{other}\""),
            ))
        }
    };
    let services = parse_services(&r)?;
    let cfg = Config {
        username: r.opt_string(&["username"])?,
        password: r.opt_string(&["password"])?,
        topic,
        key,
        mac: r.opt_string(&["mac"])?,
        mac_file: r.opt_string(&["mac_file"])?.unwrap_or(d.mac_file),
        mqtt_host,
        port,
        tls,
        cacrt: r.opt_string(&["cacrt"])?,
        qos: r.int_in(&["qos"], d.qos as i64, 0, 2)? as i32,
        api_url: r.opt_string(&["api_url"])?,
        stats_url: r.opt_string(&["stats_url"])?,
        backup_stats_url: r.opt_string(&["backup_stats_url", "backup_url"])?,
        token: r.opt_string(&["token"])?,
        monitor,
        heartbeat,
        scan: r.boolean(&["scan"], d.scan)?,
        survey: r.boolean(&["survey"], d.survey)?,
        no_cache: r.boolean(&["no-cache"], d.no_cache)?,
        no_ping: r.boolean(&["no-ping"], d.no_ping)?,
        ping_interval: r.int_in(&["ping-interval"], d.ping_interval as i64, 30, 86_400)? as u64,
        rest: r.boolean(&["rest"], d.rest)?,
        reboot,
        health_url: r.opt_string(&["health_url"])?.unwrap_or(d.health_url),
        health_port: r.int_in(&["health_port"], d.health_port as i64, 1, 65535)? as u16,
        insecure: r.boolean(&["insecure"], d.insecure)?,
        boot_url: r.opt_string(&["boot_url"])?,
        // `"0"` is how C-era config files say "no boot command" (the C agent skips it).
        boot_cmd: r.opt_string(&["boot_cmd"])?.filter(|c| c.trim() != "0"),
        debug: r.boolean(&["debug"], d.debug)?,
        cache_dir: r
            .opt_string(&["cache_dir"])?
            .map_or(d.cache_dir, PathBuf::from),
        cache_max_bytes: r.int_in(
            &["cache_max_bytes"],
            d.cache_max_bytes as i64,
            4096,
            i64::MAX,
        )? as u64,
        state_dir: r
            .opt_string(&["state_dir"])?
            .map_or(d.state_dir, PathBuf::from),
        job_timeout,
        job_timeout_max,
        job_output_max: r.int_in(&["job_output_max"], d.job_output_max as i64, 64, 16 << 20)?
            as usize,
        job_workers: r.int_in(&["job_workers"], d.job_workers as i64, 1, 64)? as usize,
        job_queue: r.int_in(&["job_queue"], d.job_queue as i64, 1, 10_000)? as usize,
        job_max_age: r.int_in(&["job_max_age"], job_max_age_default, 0, i64::MAX)? as u64,
        job_secret,
        job_types: r.string_list(&["job_types"])?,
        network_restart_cmd: r
            .opt_string(&["network_restart_cmd"])?
            .unwrap_or(d.network_restart_cmd),
        reboot_cmd: r.opt_string(&["reboot_cmd"])?.unwrap_or(d.reboot_cmd),
        network_backup_files: r
            .string_list(&["network_backup_files"])?
            .unwrap_or(d.network_backup_files),
        lease_file: r.opt_string(&["lease_file"])?.unwrap_or(d.lease_file),
        service_manager,
        init_dir: r.opt_string(&["init_dir"])?.unwrap_or(d.init_dir),
        daemons: r.string_list(&["daemons"])?,
        services,
        dns_check: r.opt_string(&["dns_check"])?.unwrap_or(d.dns_check),
        watchdog_port: r.int_in(&["watchdog_port"], d.watchdog_port as i64, 0, 65535)? as u16,
        watchdog_timeout: r.int_in(&["watchdog_timeout"], d.watchdog_timeout as i64, 1, 86_400)?
            as u64,
        sysupgrade_cmd: r.opt_string(&["sysupgrade_cmd"])?,
        mqtt_hosts,
        client_crt,
        client_key,
        client_key_password,
        alpn,
        transport,
        ws_path,
        proxy,
        mqtt_max_payload: r.int_in(
            &["mqtt_max_payload"],
            d.mqtt_max_payload as i64,
            1024,
            268_435_455,
        )? as usize,
        tls_files_stamp: None,
    };
    Ok((cfg, r.notes))
}

/// Splits a `mqtt_host` entry into host and port: `host`, `host:port`, `[v6]:port`, `[v6]`
/// or a bare IPv6 address. A scheme or a path is refused with a hint.
pub fn split_host_port(entry: &str) -> Result<(String, Option<u16>), String> {
    let e = entry.trim();
    if let Some((scheme, _)) = e.split_once("://") {
        let hint = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "wss" => "use \"transport\": \"ws\" (and \"tls\" for wss)",
            "ssl" | "mqtts" | "tls" => "use \"tls\": true",
            _ => "give the host name only",
        };
        return Err(format!(
            "\"{e}\" has a scheme ({scheme}://); {hint}, with the host alone in mqtt_host"
        ));
    }
    if e.contains('/') {
        return Err(format!(
            "\"{e}\" has a path; use \"transport\": \"ws\" with \"ws_path\" for WebSockets"
        ));
    }
    if e.is_empty() || e.contains(char::is_whitespace) {
        return Err(format!("\"{e}\" is not a host name"));
    }
    let port = |p: &str| -> Result<Option<u16>, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("\"{e}\": port \"{p}\" is not 1..65535")),
        }
    };
    if let Some(rest) = e.strip_prefix('[') {
        let Some((host, tail)) = rest.split_once(']') else {
            return Err(format!("\"{e}\": missing ']'"));
        };
        return match tail.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), port(p)?)),
            None if tail.is_empty() => Ok((host.to_string(), None)),
            None => Err(format!("\"{e}\": unexpected text after ']'")),
        };
    }
    match e.matches(':').count() {
        0 => Ok((e.to_string(), None)),
        1 => {
            let (h, p) = e.split_once(':').unwrap_or((e, ""));
            if h.is_empty() {
                return Err(format!("\"{e}\" is not a host name"));
            }
            Ok((h.to_string(), port(p)?))
        }
        _ => Ok((e.to_string(), None)),
    }
}

/// Checks a proxy URL: `http://[user:pass@]host:port`.
pub fn check_proxy(p: &str) -> Result<(), String> {
    let Some(rest) = p.strip_prefix("http://") else {
        return Err(format!(
            "\"{}\": expected http://[user:pass@]host:port",
            mask_url_credentials(p)
        ));
    };
    let hostport = rest.trim_end_matches('/');
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    match split_host_port(hostport) {
        Ok((_, Some(_))) => Ok(()),
        _ => Err(format!(
            "\"{}\": expected http://[user:pass@]host:port (with the port)",
            mask_url_credentials(p)
        )),
    }
}

/// `scheme://user:pass@host` → `scheme://user:***@host` (for logs and --check-config).
pub fn mask_url_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rsplit_once('@') {
        Some((cred, host)) => {
            let user = cred.split_once(':').map_or(cred, |(u, _)| u);
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// Checks the files of `client_crt`/`client_key` (readable, PEM, the key decrypts with
/// `client_key_password` and belongs to the certificate) and records their digest in
/// `tls_files_stamp`. Notes: a key readable by group or other.
pub fn check_tls_files(cfg: &mut Config, file: &str) -> Result<Vec<String>, ConfigError> {
    use sha2::Digest;
    let mut notes = Vec::new();
    let key_err = |key: &str, msg: String| ConfigError::Key {
        file: file.to_string(),
        key: key.to_string(),
        line: 0,
        column: 0,
        msg,
    };
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| key_err(key, format!("cannot read {path}: {e}")))
    };
    let mut digest = sha2::Sha256::new();
    if let Some(ca) = &cfg.cacrt {
        if let Ok(b) = std::fs::read(ca) {
            digest.update(&b);
        }
    }
    if let Some(crt_path) = cfg.client_crt.clone() {
        let crt = read("client_crt", &crt_path)?;
        digest.update(&crt);
        let chain = openssl::x509::X509::stack_from_pem(&crt).unwrap_or_default();
        let Some(leaf) = chain.first() else {
            return Err(key_err(
                "client_crt",
                format!("{crt_path} holds no PEM certificate"),
            ));
        };
        let (key_key, key_path) = match &cfg.client_key {
            Some(k) => ("client_key", k.clone()),
            None => ("client_crt", crt_path.clone()),
        };
        let key = if key_key == "client_key" {
            let k = read("client_key", &key_path)?;
            digest.update(&k);
            k
        } else {
            crt.clone()
        };
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            return Err(key_err(
                key_key,
                format!("{key_path} holds no PEM private key (set client_key)"),
            ));
        }
        let pass = cfg.client_key_password.clone().unwrap_or_default();
        let pkey = openssl::pkey::PKey::private_key_from_pem_passphrase(&key, pass.as_bytes())
            .map_err(|_| {
                let why = if cfg.client_key_password.is_some() {
                    "wrong client_key_password, or not a PEM private key"
                } else {
                    "encrypted (set client_key_password) or not a PEM private key"
                };
                key_err(key_key, format!("{key_path}: cannot load the key: {why}"))
            })?;
        let matches = leaf
            .public_key()
            .map(|pk| pk.public_eq(&pkey))
            .unwrap_or(false);
        if !matches {
            return Err(key_err(
                key_key,
                format!("the key in {key_path} does not belong to the certificate in {crt_path}"),
            ));
        }
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(&key_path) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                notes.push(format!(
                    "config key \"{key_key}\": {key_path} is readable by group or other (mode {mode:o}); chmod 600 it"
                ));
            }
        }
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cfg.tls_files_stamp = Some(hex);
    Ok(notes)
}

fn parse_services(r: &Reader<'_>) -> Result<Vec<ServiceConfig>, ConfigError> {
    let Some((k, v)) = r.get(&["services"]) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(r.err(k, format!("expected a list of objects, found {}", kind(v))));
    };
    let mut out: Vec<ServiceConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(r.err(
                k,
                format!("entry {i}: expected an object, found {}", kind(item)),
            ));
        };
        let sub = Reader {
            text: r.text,
            file: r.file,
            obj: o,
            notes: Vec::new(),
        };
        let fail = |msg: String| r.err(k, format!("entry {i}: {msg}"));
        let name = sub
            .opt_string(&["name"])
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("\"name\" is required".into()))?;
        if name.contains('/') || name.contains("..") {
            return Err(fail(format!(
                "name \"{name}\" must not contain '/' or '..'"
            )));
        }
        if out.iter().any(|s| s.name == name) {
            return Err(fail(format!("name \"{name}\" is used twice")));
        }
        let cmd = sub
            .opt_string(&["cmd"])
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("\"cmd\" is required".into()))?;
        let restart = match sub
            .string(&["restart"])
            .map_err(|e| fail(e.to_string()))?
            .as_deref()
        {
            None | Some("always") => RestartPolicy::Always,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("never") => RestartPolicy::Never,
            Some(other) => {
                return Err(fail(format!(
                    "\"restart\" must be \"always\", \"on-failure\" or \"never\", found \"{other}\""
                )))
            }
        };
        let mut env = BTreeMap::new();
        match o.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (ek, ev) in m {
                    let val = match ev {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(fail(format!(
                                "env \"{ek}\": expected a string, found {}",
                                kind(other)
                            )))
                        }
                    };
                    env.insert(ek.clone(), val);
                }
            }
            Some(other) => {
                return Err(fail(format!(
                    "\"env\" must be an object, found {}",
                    kind(other)
                )))
            }
        }
        out.push(ServiceConfig {
            name,
            cmd,
            dir: sub.opt_string(&["dir"]).map_err(|e| fail(e.to_string()))?,
            version: sub
                .opt_string(&["version"])
                .map_err(|e| fail(e.to_string()))?,
            autostart: sub
                .boolean(&["autostart"], true)
                .map_err(|e| fail(e.to_string()))?,
            restart,
            heartbeat: sub
                .boolean(&["heartbeat"], false)
                .map_err(|e| fail(e.to_string()))?,
            env,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_config_reads_back_with_every_broker() {
        let (c, _) = parse(
            r#"{"topic":"t","key":"k","mqtt_host":["a.example:1884","[::1]:1999","b"]}"#,
            "c.json",
        )
        .unwrap();
        let again = serde_json::to_string(&c).unwrap();
        let (c2, _) = parse(&again, "again.json").unwrap();
        assert_eq!(c2.mqtt_hosts, c.mqtt_hosts);
        assert_eq!(c2, c);
    }

    #[test]
    fn a_fifo_a_directory_or_a_huge_file_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let e = load(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a FIFO)"), "{e}");
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(load(&big).unwrap_err().to_string().contains("larger than"));
    }

    const BASE: &str = r#""topic":"t","key":"k","mqtt_host":"localhost""#;

    fn with(extra: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let text = if extra.is_empty() {
            format!("{{{BASE}}}")
        } else {
            format!("{{{BASE},{extra}}}")
        };
        parse(&text, "test.json")
    }

    fn ok(extra: &str) -> Config {
        match with(extra) {
            Ok((c, _)) => c,
            Err(e) => panic!("{extra}: {e}"),
        }
    }

    fn notes(extra: &str) -> Vec<String> {
        with(extra).map(|(_, n)| n).unwrap_or_default()
    }

    fn err(extra: &str) -> String {
        match with(extra) {
            Ok(_) => panic!("{extra} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = ok("");
        assert_eq!(c.port, 1883);
        assert_eq!(c.qos, 1);
        assert_eq!(c.monitor, 15);
        assert_eq!(c.heartbeat, 60);
        assert!(c.scan && !c.survey && !c.no_cache && !c.no_ping && !c.rest && !c.tls);
        assert_eq!(c.ping_interval, 180);
        assert_eq!(c.reboot, 600);
        assert_eq!(c.health_url, "8.8.8.8");
        assert_eq!(c.health_port, 53);
        assert_eq!(c.mac_file, "/etc/mac");
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/socketman"));
        assert_eq!(c.cache_max_bytes, 5_000_000);
        assert_eq!(c.state_dir, PathBuf::from("/etc/socketman/state"));
        assert_eq!((c.job_timeout, c.job_timeout_max), (300, 3600));
        assert_eq!(c.job_output_max, 51200);
        assert_eq!((c.job_workers, c.job_queue), (2, 64));
        assert_eq!(c.job_max_age, 0);
        assert_eq!(c.job_types, None);
        assert_eq!(c.network_restart_cmd, "/etc/init.d/network restart");
        assert_eq!(c.reboot_cmd, "reboot");
        assert_eq!(c.network_backup_files.len(), 4);
        assert_eq!(c.lease_file, "/tmp/dhcp.leases");
        assert_eq!(c.service_manager, ServiceManager::Auto);
        assert_eq!(c.init_dir, "/etc/init.d");
        assert_eq!(c.dns_check, "openwrt.org");
        assert_eq!((c.watchdog_port, c.watchdog_timeout), (4951, 300));
        assert!(c.services.is_empty() && c.daemons.is_none());
    }

    #[test]
    fn required_keys() {
        for k in ["topic", "key", "mqtt_host"] {
            let text = BASE.replace(&format!("\"{k}\""), "\"other\"");
            let e = parse(&format!("{{{text}}}"), "f.json").unwrap_err();
            assert_eq!(
                e,
                ConfigError::Missing {
                    file: "f.json".into(),
                    key: k.into()
                }
            );
        }
        assert!(err(r#""topic":"a/b""#).contains("topic"));
    }

    #[test]
    fn the_originals_example_file_parses() {
        let text = r#"{
  "username": "u", "password": "p", "topic": "T", "key": "K",
  "api_url": "http://api.example/v1", "stats_url": "http://api.example/v1/s",
  "backup_url": "http://backup.example/", "mac": "88-DC-96-00-11-22",
  "mqtt_host": "192.0.2.1", "token": "tok", "port": 8443, "sleep": 60,
  "monitor": 15, "scan": 1, "survey": 0, "tls": true, "cacrt": "/tmp/cacrt.pem"
}"#;
        let (c, n) = parse(text, "x").unwrap();
        assert!(n.is_empty(), "{n:?}");
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p"));
        assert_eq!(
            c.backup_stats_url.as_deref(),
            Some("http://backup.example/")
        );
        assert_eq!(c.port, 8443);
        assert!(c.tls);
        assert_eq!(c.cacrt.as_deref(), Some("/tmp/cacrt.pem"));
        assert_eq!(c.mac.as_deref(), Some("88-DC-96-00-11-22"));
        assert_eq!(c.api_url.as_deref(), Some("http://api.example/v1"));
        assert_eq!(c.stats_url.as_deref(), Some("http://api.example/v1/s"));
        assert_eq!(c.token.as_deref(), Some("tok"));
    }

    /// Issue 16, item 2: where the C README and the C code disagree, the README wins, except
    /// `boot_cmd: "0"`, which means "no command" (as the C code treats it).
    #[test]
    fn readme_defaults_where_c_code_disagrees() {
        let c = ok("");
        assert_eq!(c.ping_interval, 180, "README 180 (C code 30)");
        assert_eq!(c.reboot, 600, "README 600 (C code 0)");
        assert!(!c.survey, "README: survey off unless asked");
        assert_eq!(ok(r#""sleep":120"#).heartbeat, 120, "C's `sleep` is read");
        assert_eq!(
            ok(r#""heartbeat":90,"sleep":120"#).heartbeat,
            90,
            "the README's `heartbeat` wins over `sleep`"
        );
        assert_eq!(ok(r#""boot_cmd":"0""#).boot_cmd, None);
        assert_eq!(ok(r#""boot_cmd":" 0 ""#).boot_cmd, None);
        assert_eq!(ok(r#""boot_cmd":"""#).boot_cmd, None);
        assert_eq!(
            ok(r#""boot_cmd":"/bin/true 0""#).boot_cmd.as_deref(),
            Some("/bin/true 0")
        );
        assert_eq!(ok(r#""boot_cmd":"00""#).boot_cmd.as_deref(), Some("00"));
    }

    #[test]
    fn tls_changes_default_port() {
        assert_eq!(ok(r#""tls":1"#).port, 8883);
        assert_eq!(ok(r#""tls":"true","port":"1884""#).port, 1884);
        assert_eq!(ok(r#""port":0"#).port, 1);
    }

    #[test]
    fn field_style_values() {
        let c = ok(
            r#""monitor":"20","scan":"0","survey":"1","no-cache":true,"no-ping":"true","rest":1,"insecure":"false","debug":1"#,
        );
        assert_eq!(c.monitor, 20);
        assert!(!c.scan && c.survey && c.no_cache && c.no_ping && c.rest && !c.insecure && c.debug);
        assert_eq!(ok(r#""heartbeat":120.0"#).heartbeat, 120);
    }

    #[test]
    fn clamps_are_noted() {
        assert_eq!(ok(r#""monitor":5"#).monitor, 15);
        assert!(notes(r#""monitor":5"#)[0].contains("monitor"));
        assert_eq!(ok(r#""heartbeat":5"#).heartbeat, 15);
        assert_eq!(ok(r#""monitor":30,"heartbeat":20"#).heartbeat, 30);
        assert_eq!(ok(r#""monitor":97"#).heartbeat, 97);
        assert_eq!(ok(r#""heartbeat":99999"#).heartbeat, 3600);
        assert_eq!(ok(r#""sleep":90"#).heartbeat, 90);
        assert_eq!(ok(r#""ping-interval":3"#).ping_interval, 30);
        assert_eq!(ok(r#""qos":7"#).qos, 2);
        assert_eq!(ok(r#""qos":-1"#).qos, 0);
        assert_eq!(ok(r#""reboot":0"#).reboot, 0);
        assert_eq!(ok(r#""reboot":1"#).reboot, 30);
        assert_eq!(ok(r#""reboot":29"#).reboot, 30);
        assert_eq!(ok(r#""reboot":31"#).reboot, 31);
        assert!(notes(r#""reboot":10"#)[0].contains("reboot"));
        assert!(err(r#""reboot":-5"#).contains("reboot"));
        assert_eq!(ok(r#""job_workers":0"#).job_workers, 1);
        assert_eq!(ok(r#""job_queue":0"#).job_queue, 1);
        assert_eq!(ok(r#""job_timeout":99999"#).job_timeout, 3600);
        assert_eq!(
            ok(r#""job_timeout":7200,"job_timeout_max":7200"#).job_timeout,
            7200
        );
        assert_eq!(ok(r#""health_port":70000"#).health_port, 65535);
        assert_eq!(ok(r#""watchdog_port":0"#).watchdog_port, 0);
        assert_eq!(ok(r#""cache_max_bytes":1"#).cache_max_bytes, 4096);
    }

    #[test]
    fn every_string_key() {
        let c = ok(
            r#""username":"u","password":"p","mac":"AA-BB-CC-DD-EE-FF","mac_file":"/m","cacrt":"/ca","api_url":"http://a","stats_url":"http://s","backup_stats_url":"http://b","token":"t","health_url":"h","boot_url":"http://boot","boot_cmd":"echo hi","cache_dir":"/c","state_dir":"/s","network_restart_cmd":"nr","reboot_cmd":"rb","lease_file":"/l","init_dir":"/i","dns_check":"example.org","job_secret":"sec""#,
        );
        assert_eq!(c.mac_file, "/m");
        assert_eq!(c.health_url, "h");
        assert_eq!(c.boot_url.as_deref(), Some("http://boot"));
        assert_eq!(c.boot_cmd.as_deref(), Some("echo hi"));
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.network_restart_cmd, "nr");
        assert_eq!(c.reboot_cmd, "rb");
        assert_eq!(c.lease_file, "/l");
        assert_eq!(c.init_dir, "/i");
        assert_eq!(c.dns_check, "example.org");
        assert_eq!(c.job_secret.as_deref(), Some("sec"));
        assert_eq!(c.job_max_age, 600, "job_secret turns job_max_age on");
        assert_eq!(ok(r#""job_secret":"s","job_max_age":0"#).job_max_age, 0);
        assert_eq!(ok(r#""job_max_age":"30""#).job_max_age, 30);
        assert_eq!(ok(r#""token":"""#).token, None);
    }

    #[test]
    fn lists_and_enums() {
        let c = ok(
            r#""job_types":["cmd","ping"],"daemons":["dnsmasq"],"network_backup_files":["/a"],"service_manager":"initd""#,
        );
        assert_eq!(
            c.job_types,
            Some(vec!["cmd".to_string(), "ping".to_string()])
        );
        assert_eq!(c.daemons, Some(vec!["dnsmasq".to_string()]));
        assert_eq!(c.network_backup_files, vec!["/a".to_string()]);
        assert_eq!(c.service_manager, ServiceManager::Initd);
        assert_eq!(
            ok(r#""service_manager":"systemd""#).service_manager,
            ServiceManager::Systemd
        );
        assert!(err(r#""service_manager":"runit""#).contains("service_manager"));
        assert!(err(r#""job_types":"cmd""#).contains("job_types"));
        assert!(err(r#""daemons":[1]"#).contains("daemons"));
    }

    #[test]
    fn services() {
        let c = ok(
            r#""services":[{"name":"app","cmd":"./app","dir":"/opt","version":"1.2.0","autostart":0,"restart":"on-failure","heartbeat":true,"env":{"A":"1","B":2}}]"#,
        );
        let s = &c.services[0];
        assert_eq!(s.name, "app");
        assert_eq!(s.cmd, "./app");
        assert_eq!(s.dir.as_deref(), Some("/opt"));
        assert_eq!(s.version.as_deref(), Some("1.2.0"));
        assert!(!s.autostart && s.heartbeat);
        assert_eq!(s.restart, RestartPolicy::OnFailure);
        assert_eq!(s.env.get("B").map(String::as_str), Some("2"));
        let d = &ok(r#""services":[{"name":"x","cmd":"y"}]"#).services[0];
        assert!(d.autostart && !d.heartbeat);
        assert_eq!(d.restart, RestartPolicy::Always);
        assert!(err(r#""services":[{"cmd":"y"}]"#).contains("name"));
        assert!(err(r#""services":[{"name":"x"}]"#).contains("cmd"));
        assert!(err(r#""services":[{"name":"../x","cmd":"y"}]"#).contains(".."));
        assert!(
            err(r#""services":[{"name":"x","cmd":"y"},{"name":"x","cmd":"z"}]"#).contains("twice")
        );
        assert!(
            err(r#""services":[{"name":"x","cmd":"y","restart":"sometimes"}]"#).contains("restart")
        );
        assert!(err(r#""services":{}"#).contains("services"));
    }

    #[test]
    fn wrong_types_name_key_line_and_column() {
        let text =
            "{\n  \"topic\": \"t\", \"key\": \"k\", \"mqtt_host\": \"h\",\n  \"monitor\": [15]\n}";
        match parse(text, "/etc/c.json") {
            Err(ConfigError::Key {
                file,
                key,
                line,
                column,
                ..
            }) => {
                assert_eq!(file, "/etc/c.json");
                assert_eq!(key, "monitor");
                assert_eq!((line, column), (3, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(err(r#""tls":"maybe""#).contains("tls"));
        assert!(err(r#""scan":2"#).contains("scan"));
        assert!(err(r#""port":"eighty""#).contains("port"));
        assert!(err(r#""username":5"#).contains("username"));
        assert!(err(r#""qos":1.5"#).contains("qos"));
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let e = parse("{\n  \"topic\": \"t\",\n  oops\n}", "c.json").unwrap_err();
        match &e {
            ConfigError::Syntax { line, column, .. } => assert_eq!((*line, *column), (3, 3)),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("line 3, column 3"));
        assert!(matches!(
            parse("[1,2]", "c"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(parse("", "c"), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn unknown_keys_are_noted_not_fatal() {
        let n = notes(r#""colour":"blue""#);
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("colour"));
    }

    #[test]
    fn secrets_are_masked() {
        let c = ok(r#""password":"hunter2","token":"tok","job_secret":"s3""#);
        let text = c.masked_json().to_string();
        assert!(!text.contains("hunter2") && !text.contains("tok\"") && !text.contains("s3"));
        assert_eq!(c.masked_json()["password"], "***");
        assert_eq!(ok("").masked_json()["password"], Value::Null);
    }

    #[test]
    fn broker_keys() {
        let c = ok("");
        assert_eq!(c.mqtt_hosts, vec!["localhost".to_string()]);
        assert_eq!((c.transport, c.ws_path.as_str()), (Transport::Tcp, "/mqtt"));
        assert_eq!(c.mqtt_max_payload, 128 << 10);
        let text = r#"{"topic":"t","key":"k","mqtt_host":["a.example:1884","[::1]:1999","b"],"port":1000,"transport":"ws","ws_path":"/x","alpn":["mqtt"],"proxy":"http://u:p@px:3128","mqtt_max_payload":10}"#;
        let (c, n) = parse(text, "f").unwrap();
        assert_eq!(c.mqtt_host, "a.example:1884");
        assert_eq!(
            c.brokers(),
            vec![
                ("a.example".to_string(), 1884),
                ("::1".to_string(), 1999),
                ("b".to_string(), 1000)
            ]
        );
        assert_eq!(c.transport, Transport::Ws);
        assert_eq!(c.alpn, vec!["mqtt".to_string()]);
        assert_eq!(c.mqtt_max_payload, 1024);
        assert!(n[0].contains("mqtt_max_payload"));
        assert_eq!(c.masked_json()["proxy"], "http://u:***@px:3128");
        assert!(err(r#""transport":"quic""#).contains("transport"));
        assert!(err(r#""ws_path":"mqtt""#).contains("ws_path"));
        assert!(err(r#""proxy":"socks5://h:1""#).contains("proxy"));
        assert!(err(r#""proxy":"http://h""#).contains("port"));
        assert!(err(r#""client_key":"/k""#).contains("client_crt"));
        assert!(err(r#""alpn":[""]"#).contains("alpn"));
        let e = parse(r#"{"topic":"t","key":"k","mqtt_host":"wss://h/mqtt"}"#, "f").unwrap_err();
        assert!(e.to_string().contains("\"transport\": \"ws\""), "{e}");
        let e = parse(r#"{"topic":"t","key":"k","mqtt_host":"h/mqtt"}"#, "f").unwrap_err();
        assert!(e.to_string().contains("ws_path"), "{e}");
        assert!(parse(r#"{"topic":"t","key":"k","mqtt_host":[]}"#, "f").is_err());
        assert!(split_host_port("h:0").is_err() && split_host_port("h:x").is_err());
        let c = ok(r#""client_crt":"/c","client_key_password":"pw""#);
        assert_eq!(c.masked_json()["client_key_password"], "***");
    }

    #[test]
    fn output_limit_leaves_room_under_mqtt_max_payload() {
        assert_eq!(ok("").output_limit(), 51200);
        assert_eq!(ok(r#""mqtt_max_payload":4096"#).output_limit(), 3072);
        assert_eq!(ok(r#""job_output_max":100"#).output_limit(), 100);
    }

    #[test]
    fn client_id_strips_separators() {
        assert_eq!(Config::client_id("88-DC-96-00-11-22"), "sm-88DC96001122");
        assert_eq!(Config::client_id("88:dc:96:00:11:22"), "sm-88dc96001122");
    }
}
