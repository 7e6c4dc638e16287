//! The one integration test binary (`cargo test --test it`): the real `socketman` binary
//! against a real mosquitto on a free loopback port, real HTTP servers, real processes.
//! Each area has its own module; `support` starts the broker and agents, `http` is a small
//! real HTTP/1.1 server.

mod http;
mod stats_wire;
mod support;

mod brokers;
mod configure;
mod core;
mod firmware;
mod monitor;
mod procs;
mod security;
mod smctl;
mod stats;
mod update;
