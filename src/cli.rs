//! Command line (SPEC §1).
#![forbid(unsafe_code)]
