//! Command line (SPEC §1) and the top-level dispatch: parse with getopts, run the command,
//! map errors to exit codes (0 clean stop, 2 usage or config error, 1 anything else).
//! `--help` and `--version` return before any file is read.
#![forbid(unsafe_code)]

pub use crate::error::Fatal;
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run {
        config: PathBuf,
        init_url: Option<String>,
    },
    CheckConfig {
        config: PathBuf,
    },
    CollectOnce {
        config: Option<PathBuf>,
    },
    Help,
    Version,
}

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt("c", "config", "config file (JSON); required to run", "PATH");
    o.optopt(
        "b",
        "init-url",
        "provisioning server, used when the config is missing or invalid",
        "URL",
    );
    o.optflag(
        "",
        "check-config",
        "validate the config, print it (secrets masked), exit 0 if valid, 2 if not",
    );
    o.optflag(
        "",
        "collect-once",
        "collect one stats record, print it as one JSON line, exit",
    );
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

/// Usage text for `--help`.
pub fn usage() -> String {
    let brief = "Usage: socketman --config=PATH [-b INIT_URL] [--check-config] [--collect-once] [-h|--help] [-V|--version]\n\n\
                 Device agent: runs jobs from MQTT, uploads stats, repairs the uplink, supervises services.";
    format!(
        "{}\nExit codes: 0 clean stop, 2 usage or config error, 1 other fatal error.\n\
         Environment: DEBUG=1 logs to stderr instead of syslog.\n",
        options().usage(brief)
    )
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command, Fatal> {
    let m = options()
        .parse(args)
        .map_err(|e| Fatal::Usage(e.to_string()))?;
    if m.opt_present("help") {
        return Ok(Command::Help);
    }
    if m.opt_present("version") {
        return Ok(Command::Version);
    }
    if let Some(extra) = m.free.first() {
        return Err(Fatal::Usage(format!("unexpected argument '{extra}'")));
    }
    let config = m
        .opt_str("config")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if m.opt_present("check-config") && m.opt_present("collect-once") {
        return Err(Fatal::Usage(
            "--check-config and --collect-once exclude each other".into(),
        ));
    }
    if m.opt_present("collect-once") {
        return Ok(Command::CollectOnce { config });
    }
    let Some(config) = config else {
        return Err(Fatal::Usage("--config=PATH is required".into()));
    };
    if m.opt_present("check-config") {
        return Ok(Command::CheckConfig { config });
    }
    let init_url = m.opt_str("init-url").filter(|s| !s.is_empty());
    Ok(Command::Run { config, init_url })
}

/// Runs the program; returns the exit code.
pub fn main_with_args(args: &[String]) -> i32 {
    let cmd = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("socketman: {e}");
            return e.exit_code();
        }
    };
    let result = match cmd {
        Command::Help => {
            print!("{}", usage());
            Ok(())
        }
        Command::Version => {
            println!("{}", crate::version_line());
            Ok(())
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::CollectOnce { config } => collect_once(config.as_deref()),
        Command::Run { config, init_url } => {
            crate::logging::init(false);
            crate::agent::run(config, init_url)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("socketman: {e}");
            log::error!("{e}");
            e.exit_code()
        }
    }
}

fn check_config(path: &std::path::Path) -> Result<(), Fatal> {
    let (cfg, notes) = crate::config::load(path).map_err(|e| Fatal::Config(e.to_string()))?;
    for n in notes {
        eprintln!("socketman: warning: {n}");
    }
    match serde_json::to_string_pretty(&cfg.masked_json()) {
        Ok(s) => println!("{s}"),
        Err(e) => return Err(Fatal::Other(format!("cannot print the config: {e}"))),
    }
    Ok(())
}

/// `--collect-once` (SPEC §1): one record on stdout as one JSON line; no network. Without
/// `--config` the defaults are used (e.g. `lease_file`, `scan`).
fn collect_once(path: Option<&std::path::Path>) -> Result<(), Fatal> {
    let cfg = match path {
        Some(p) => {
            crate::config::load(p)
                .map_err(|e| Fatal::Config(e.to_string()))?
                .0
        }
        None => crate::config::Config::default(),
    };
    println!("{}", crate::stats::collect::collect_once(&cfg));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, Fatal> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn forms_of_the_spec() {
        assert_eq!(
            p(&["--config=/etc/c.json"]),
            Ok(Command::Run {
                config: "/etc/c.json".into(),
                init_url: None
            })
        );
        assert_eq!(
            p(&["-c", "/c", "-b", "http://init"]),
            Ok(Command::Run {
                config: "/c".into(),
                init_url: Some("http://init".into())
            })
        );
        assert_eq!(
            p(&["--config", "/c", "--init-url=http://i"]),
            Ok(Command::Run {
                config: "/c".into(),
                init_url: Some("http://i".into())
            })
        );
        assert_eq!(
            p(&["--config=/c", "--check-config"]),
            Ok(Command::CheckConfig {
                config: "/c".into()
            })
        );
        assert_eq!(
            p(&["--collect-once"]),
            Ok(Command::CollectOnce { config: None })
        );
        assert_eq!(p(&["-h"]), Ok(Command::Help));
        assert_eq!(
            p(&["--help", "--bogus-ignored-no"]).map_err(|e| e.exit_code()),
            Err(2)
        );
        assert_eq!(p(&["-V"]), Ok(Command::Version));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &[][..],
            &["--nope"][..],
            &["--config"][..],
            &["--config=/c", "extra"][..],
        ] {
            let e = p(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
