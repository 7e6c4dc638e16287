//! `smctl`: the operator's command line for a socketman fleet (issue 8). One process, one
//! thread, one synchronous Paho `Client` (clean session, client id `smctl-<pid>-<n>`):
//! `send` (shell job, exit with the remote exit code), `op` (typed job, pretty result),
//! `watch` (stream status/delivery/pub), `devices` (retained CONNECTs), `fleet` (fan-out with
//! a summary), `firmware` and `configure` (jobs answered after the device's reboot or
//! restart, with progress). Broker, topic, key, MAC and `job_secret` come from socketman's own config file
//! (`--config`, read with `socketman::config::load`) and/or flags; jobs are signed as SPEC §4.3
//! when a `job_secret` is known. Shares nothing with the agent at run time; the payload shapes
//! and topic names come from the library: jobs are built and answers read as the types of
//! `socketman::proto` (`Job`, `Signed`, `Incoming`, `Processed`, …), signed with
//! `jobs::intake::sign`.
//!
//! This file owns the command line: options, usage text, which options each command takes,
//! dispatch to the commands, and the exit codes. The commands live in [`send`] (`send`, `op`),
//! [`watch`], [`devices`], [`fleet`] and [`lifecycle`] (`firmware`, `configure`); [`conn`] is the broker connection and the target.
#![forbid(unsafe_code)]

mod conn;
mod devices;
mod fleet;
mod lifecycle;
mod send;
mod watch;

use conn::Target;
use getopts::{Matches, Options};
use std::io::Write;
use std::time::Duration;

/// Usage error, bad option or config file.
pub const EXIT_USAGE: i32 = 64;
/// The broker could not be reached (connect, subscribe or publish failed).
pub const EXIT_BROKER: i32 = 69;
/// No answer (PROCESSED) within `--timeout`; for `fleet`: some device did not answer.
pub const EXIT_NO_ANSWER: i32 = 75;
/// The device REJECTED the job (its error is printed on stderr).
pub const EXIT_REJECTED: i32 = 76;
/// The job ran on the device and was killed there by its timeout (`error: "timeout"`).
pub const EXIT_REMOTE_TIMEOUT: i32 = 124;

const USAGE: &str = "\
Usage: smctl [BROKER OPTIONS] COMMAND [OPTIONS] [-- WORDS…]

Commands:
  send [--mac M] [--type T] [--timeout S] -- COMMAND…
        run a shell command on one device (words joined by spaces, run by /bin/sh -c there);
        prints its output and exits with its exit code
  op [--mac M] [--timeout S] TYPE [JSON-ARGS]
        run a typed job (ping, healthz, process.list, …); prints the result as pretty JSON
  watch [--mac M] [--json] [--count N] [--for S]
        stream CONNECT/PING/events, DELIVERED, PROCESSED and REJECTED of one device (or all)
  devices [--json] [--wait S]
        list devices from the retained CONNECT messages: MAC, online/offline, client id,
        version, since
  fleet (--macs FILE | --all-online) [--timeout S] [--show-output] [--json] -- COMMAND…
        run one shell command on many devices; live progress on stderr (when a terminal),
        then a summary: ok / failed / rejected / no answer, time to results, slowest device
  firmware [--mac M] --url U --sha256 H --version V [--no-keep-settings] [--timeout S]
        flash a firmware image (firmware.upgrade) and wait for the answer the device sends
        after its reboot (default 900 s); progress on stderr
  configure [--mac M] --set KEY=VALUE… [--replace] [--confirm S] [--timeout S]
        change the device's config (agent.configure; VALUE is JSON when it reads as JSON,
        null removes a key); waits until the new config reached the broker (--confirm,
        default 120 s) or was rolled back; prints the new config, secrets masked

Broker options (flags override the config file):
  -c, --config FILE   socketman config file: mqtt_host, port, tls, cacrt, username, password,
                      topic, key, mac (the default --mac) and job_secret (jobs are then signed)
      --host H        broker host (default localhost)
      --port P        broker port (default 1883, 8883 with --tls)
      --tls           MQTT over TLS, broker certificate verified
      --cacrt FILE    CA file for --tls (default: the system bundle)
      --username U, --password P
      --topic T, --key K   topic parts: sub/T/K/MAC, pub/T/K/MAC, … (required)
  -h, --help          this text

Exit codes:
  send: the remote exit code (0-255); 124 the job timed out on the device
  op, firmware, configure: 0 success, 1 the job failed (success:false, its error on stderr)
  fleet: 0 all ok, 1 some failed or were rejected, 75 some did not answer
  all: 64 usage or config error, 69 broker unreachable, 75 no answer within --timeout,
       76 job REJECTED by the device (its error on stderr)
";

/// A failure that ends the program: message for stderr, exit code.
#[derive(Debug)]
pub struct Fail(pub i32, pub String);

pub fn usage(msg: impl Into<String>) -> Fail {
    Fail(EXIT_USAGE, msg.into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(code) => code,
        Err(Fail(code, msg)) => {
            eprintln!("smctl: {msg}");
            if code == EXIT_USAGE {
                eprintln!("Try 'smctl --help'.");
            }
            code
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

pub fn options() -> Options {
    let mut o = Options::new();
    o.optopt("c", "config", "socketman config file", "FILE");
    o.optopt("", "host", "broker host", "H");
    o.optopt("", "port", "broker port", "P");
    o.optflag("", "tls", "MQTT over TLS");
    o.optopt("", "cacrt", "CA file", "FILE");
    o.optopt("", "username", "MQTT user", "U");
    o.optopt("", "password", "MQTT password", "P");
    o.optopt("", "topic", "topic part T", "T");
    o.optopt("", "key", "topic part K", "K");
    o.optopt("m", "mac", "device MAC", "M");
    o.optopt("t", "type", "job type (send)", "T");
    o.optopt("", "timeout", "seconds to wait for answers", "S");
    o.optflag("", "json", "JSON output");
    o.optopt("", "count", "watch: stop after N messages", "N");
    o.optopt("", "for", "watch: stop after S seconds", "S");
    o.optopt("", "wait", "devices: seconds to collect", "S");
    o.optopt("", "macs", "fleet: file of MACs", "FILE");
    o.optflag("", "all-online", "fleet: every online device");
    o.optflag("", "show-output", "fleet: print each device's output");
    o.optopt("", "url", "firmware: image URL", "U");
    o.optopt("", "sha256", "firmware: image sha256", "H");
    o.optopt("", "version", "firmware: version the image carries", "V");
    o.optflag("", "no-keep-settings", "firmware: sysupgrade -n");
    o.optmulti("", "set", "configure: KEY=VALUE", "KEY=VALUE");
    o.optflag("", "replace", "configure: replace the whole config");
    o.optopt("", "confirm", "configure: seconds to reach the broker", "S");
    o.optflag("h", "help", "help");
    o
}

/// Which options each command accepts (besides the broker options).
fn allowed(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "send" => &["mac", "type", "timeout"],
        "op" => &["mac", "timeout"],
        "watch" => &["mac", "json", "count", "for"],
        "devices" => &["json", "wait"],
        "fleet" => &["macs", "all-online", "timeout", "show-output", "json"],
        "firmware" => &[
            "mac",
            "url",
            "sha256",
            "version",
            "no-keep-settings",
            "timeout",
        ],
        "configure" => &["mac", "set", "replace", "confirm", "timeout"],
        _ => &[],
    }
}

const COMMAND_OPTIONS: &[&str] = &[
    "mac",
    "type",
    "timeout",
    "json",
    "count",
    "for",
    "wait",
    "macs",
    "all-online",
    "show-output",
    "url",
    "sha256",
    "version",
    "no-keep-settings",
    "set",
    "replace",
    "confirm",
];

fn run(args: &[String]) -> Result<i32, Fail> {
    let m = options().parse(args).map_err(|e| usage(format!("{e}")))?;
    if m.opt_present("help") {
        print!("{USAGE}");
        return Ok(0);
    }
    let Some(cmd) = m.free.first().cloned() else {
        return Err(usage(
            "no command given (send, op, watch, devices, fleet, firmware, configure)",
        ));
    };
    if allowed(&cmd).is_empty() {
        return Err(usage(format!("unknown command '{cmd}'")));
    }
    for o in COMMAND_OPTIONS {
        if m.opt_present(o) && !allowed(&cmd).contains(o) {
            return Err(usage(format!("--{o} does not apply to '{cmd}'")));
        }
    }
    let target = Target::from_matches(&m)?;
    let words = &m.free[1..];
    match cmd.as_str() {
        "send" => send::cmd_send(&target, &m, words),
        "op" => send::cmd_op(&target, &m, words),
        "watch" => watch::cmd_watch(&target, &m, words),
        "devices" => devices::cmd_devices(&target, &m, words),
        "firmware" => lifecycle::cmd_firmware(&target, &m, words),
        "configure" => lifecycle::cmd_configure(&target, &m, words),
        _ => fleet::cmd_fleet(&target, &m, words),
    }
}

pub fn parse_num<T: std::str::FromStr>(m: &Matches, name: &str) -> Result<Option<T>, Fail> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|_| usage(format!("--{name}: '{s}' is not a valid number"))),
    }
}

pub fn parse_secs(m: &Matches, name: &str, default: f64) -> Result<Duration, Fail> {
    let v = parse_num::<f64>(m, name)?.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v < 1e7) {
        return Err(usage(format!(
            "--{name}: must be a positive number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_checked_per_command() {
        let r = run(&["devices".into(), "--macs".into(), "f".into()]);
        assert!(matches!(r, Err(Fail(EXIT_USAGE, m)) if m.contains("--macs")));
        assert!(matches!(run(&["nope".into()]), Err(Fail(EXIT_USAGE, _))));
        assert!(matches!(run(&[]), Err(Fail(EXIT_USAGE, _))));
        assert!(matches!(run(&["--help".into()]), Ok(0)));
    }
}
