//! Why a job was refused (SPEC §4.2): [`ErrorCode`] and [`JobError`], whose text
//! `"<code>: <detail>"` is the `meta.error` of a REJECTED.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The codes of SPEC §4.2, as they appear before the `:` of a REJECTED's `meta.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, missing or wrong-typed fields, over 256 KiB.
    Invalid,
    /// `job_secret` is set and the job is not wrapped as `{"signed","sig"}`.
    Unsigned,
    /// The `sig` does not match.
    BadSignature,
    /// Older (or further in the future) than `job_max_age`.
    Expired,
    /// The type is not in `job_types`.
    Forbidden,
    /// The queue is full or socketman is stopping.
    Busy,
    /// A dotted type socketman does not know.
    UnknownType,
}

impl ErrorCode {
    /// Every code, in SPEC order.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::Invalid,
        ErrorCode::Unsigned,
        ErrorCode::BadSignature,
        ErrorCode::Expired,
        ErrorCode::Forbidden,
        ErrorCode::Busy,
        ErrorCode::UnknownType,
    ];

    /// The code as sent: `invalid`, `bad_signature`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unsigned => "unsigned",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Expired => "expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::UnknownType => "unknown_type",
        }
    }

    /// The code named `s` exactly; `None` for anything else (e.g. a newer agent's code).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused job: its code and a human detail. Displays as `"<code>: <detail>"`, the
/// `meta.error` of the REJECTED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub code: ErrorCode,
    pub detail: String,
}

impl JobError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> JobError {
        JobError {
            code,
            detail: detail.into(),
        }
    }

    /// Reads a `meta.error` back: `"busy: 8 jobs already waiting"` gives `Busy` and
    /// `"8 jobs already waiting"`. A text without `:` is a bare code with an empty detail.
    /// `None` when the code is not one of [`ErrorCode::ALL`].
    pub fn parse(text: &str) -> Option<JobError> {
        let (code, detail) = match text.split_once(':') {
            Some((c, d)) => (c, d.strip_prefix(' ').unwrap_or(d)),
            None => (text, ""),
        };
        Some(JobError::new(ErrorCode::parse(code.trim())?, detail))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for JobError {}

/// Compares with the code's wire name (`ErrorCode::Busy == "busy"`).
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_as_in_the_spec() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "invalid",
                "unsigned",
                "bad_signature",
                "expired",
                "forbidden",
                "busy",
                "unknown_type"
            ]
        );
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(ErrorCode::parse("Busy"), None);
        assert_eq!(ErrorCode::parse("quota"), None);
    }

    #[test]
    fn display_is_the_rejection_message() {
        // The same text as `jobs::intake::Rejection::message` and the `busy` strings of
        // `jobs::Jobs::on_message`: format!("{}: {}", code, detail).
        let e = JobError::new(ErrorCode::Busy, "socketman is stopping");
        assert_eq!(e.to_string(), "busy: socketman is stopping");
        let e = JobError::new(
            ErrorCode::BadSignature,
            "HMAC-SHA256 of \"signed\" does not match \"sig\"",
        );
        assert_eq!(
            e.to_string(),
            "bad_signature: HMAC-SHA256 of \"signed\" does not match \"sig\""
        );
        assert_eq!(
            JobError::new(ErrorCode::Invalid, "").to_string(),
            "invalid: "
        );
    }

    #[test]
    fn parse_reads_meta_error_back() {
        assert_eq!(
            JobError::parse("busy: 8 jobs already waiting"),
            Some(JobError::new(ErrorCode::Busy, "8 jobs already waiting"))
        );
        assert_eq!(
            JobError::parse("invalid: not JSON: expected value at line 1 column 1"),
            Some(JobError::new(
                ErrorCode::Invalid,
                "not JSON: expected value at line 1 column 1"
            ))
        );
        assert_eq!(
            JobError::parse("expired"),
            Some(JobError::new(ErrorCode::Expired, ""))
        );
        assert_eq!(JobError::parse("quota: too many"), None);
        assert_eq!(JobError::parse(""), None);
        for detail in ["", " leading space", "a: b: c", "ünïcode"] {
            for c in ErrorCode::ALL {
                let e = JobError::new(c, detail);
                assert_eq!(JobError::parse(&e.to_string()), Some(e));
            }
        }
    }
}
