//! [`Fatal`]: an error that ends the process, and its exit code (SPEC §1: 0 clean stop,
//! 2 usage or config error, 1 anything else).
#![forbid(unsafe_code)]

use std::fmt;

/// A fatal error and its exit code.
#[derive(Debug, Clone, PartialEq)]
pub enum Fatal {
    /// Bad command line (exit 2).
    Usage(String),
    /// Bad or missing config (exit 2).
    Config(String),
    /// Anything else (exit 1).
    Other(String),
}

impl Fatal {
    pub fn exit_code(&self) -> i32 {
        match self {
            Fatal::Usage(_) | Fatal::Config(_) => 2,
            Fatal::Other(_) => 1,
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Usage(m) => write!(f, "{m}\nTry 'socketman --help'."),
            Fatal::Config(m) | Fatal::Other(m) => write!(f, "{m}"),
        }
    }
}
