//! Logging (SPEC §1): syslog, facility daemon, ident `socketman`; or stderr with a level when
//! `DEBUG` is set to anything but empty or `0`. If syslog cannot be reached (no /dev/log), the
//! log goes to stderr and says so once. Secrets are never passed to the log by callers.
#![forbid(unsafe_code)]

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::Mutex;

enum Sink {
    Stderr,
    Syslog(Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>),
}

struct Logger {
    sink: Sink,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // The Paho wrapper logs its internals (e.g. "Event stream closed" on every clean
        // disconnect); socketman logs what matters itself, so those only show at debug level.
        if m.target().starts_with("paho_mqtt") && log::max_level() < LevelFilter::Debug {
            return false;
        }
        // ureq logs every request URL, `access_token` included, at debug level: those lines
        // never pass (the token must not reach the log); its warnings and errors do.
        if m.target().starts_with("ureq") && m.level() > Level::Warn {
            return false;
        }
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = one_line(r.args().to_string());
        match &self.sink {
            Sink::Stderr => {
                let ts = crate::proto::now();
                let _ = writeln!(std::io::stderr(), "{ts} {:<5} {msg}", r.level());
            }
            Sink::Syslog(l) => {
                if let Ok(mut l) = l.lock() {
                    let _ = match r.level() {
                        Level::Error => l.err(msg),
                        Level::Warn => l.warning(msg),
                        Level::Info => l.info(msg),
                        Level::Debug | Level::Trace => l.debug(msg),
                    };
                }
            }
        }
    }

    fn flush(&self) {}
}

/// `msg` with every control character escaped (`\n` → `\\n`): a job id, a heartbeat name or
/// an HTTP reason phrase from outside can never start a forged log line.
pub fn one_line(msg: String) -> String {
    if msg.chars().any(char::is_control) {
        msg.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        msg
    }
}

/// True when `DEBUG` asks for stderr logging.
pub fn debug_env() -> bool {
    std::env::var("DEBUG")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

/// Installs the logger once; later calls only change the level.
pub fn init(debug_level: bool) {
    let sink = if debug_env() {
        Sink::Stderr
    } else {
        let f = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "socketman".into(),
            pid: std::process::id(),
        };
        match syslog::unix(f) {
            Ok(l) => Sink::Syslog(Mutex::new(l)),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "WARN  syslog unreachable ({e}); logging to stderr"
                );
                Sink::Stderr
            }
        }
    };
    let _ = log::set_boxed_logger(Box::new(Logger { sink }));
    set_level(debug_level);
}

/// `"debug": true` raises the level to debug (also applied on HUP).
pub fn set_level(debug_level: bool) {
    log::set_max_level(if debug_level {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn outside_strings_cannot_forge_lines() {
        assert_eq!(super::one_line("job a accepted".into()), "job a accepted");
        let l = super::one_line("job x\n1700000000 ERROR forged\r\u{1b}[2J accepted".into());
        assert!(!l.contains(['\n', '\r', '\u{1b}']), "{l}");
        assert!(l.contains("x\\n1700000000 ERROR forged"), "{l}");
    }
}
