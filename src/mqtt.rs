//! The MQTT link (SPEC §3). Filled in below.
#![forbid(unsafe_code)]
