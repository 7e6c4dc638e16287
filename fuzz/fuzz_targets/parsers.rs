//! The small text parsers of command output and kernel files, in one target to keep build
//! and CI time down. The first input byte picks the parser (`PARSERS[byte % len]`), the rest
//! is the text (decoded lossily, as the callers do with command output).
#![no_main]

use libfuzzer_sys::fuzz_target;
use socketman::platform::identity;
use socketman::services::procs;
use socketman::stats::collect::wireless::{iw, ubus};
use socketman::stats::collect::{dhcp, interfaces, system};

type Parser = fn(&str);

/// Keeps a result alive so the optimiser cannot drop the parse.
fn keep<T>(x: T) {
    std::hint::black_box(x);
}

/// Index = selector byte of the seed files (fuzz/corpus/parsers/<index>-…).
const PARSERS: &[(&str, Parser)] = &[
    ("iw_dev", |t| keep(iw::parse_iw_dev(t))),
    ("iw_link", |t| keep(iw::parse_iw_link(t))),
    ("iw_station_dump", |t| keep(iw::parse_station_dump(t))),
    ("iw_scan", |t| keep(iw::parse_iw_scan(t))),
    ("ubus_info", |t| keep(ubus::parse_ubus_info(t))),
    ("ubus_assoclist", |t| {
        keep(ubus::parse_ubus_assoclist(t, "wlan0"))
    }),
    ("ubus_scan", |t| keep(ubus::parse_ubus_scan(t))),
    ("ubus_devices", |t| keep(ubus::parse_ubus_devices(t))),
    ("dhcp_leases", |t| keep(dhcp::parse(t))),
    ("uptime", |t| keep(system::parse_uptime(t))),
    ("loadavg", |t| keep(system::parse_loadavg(t))),
    ("meminfo", |t| keep(system::parse_meminfo(t))),
    ("if_inet6", |t| keep(interfaces::parse_if_inet6(t))),
    ("proc_stat", |t| keep(procs::parse_stat(t))),
    ("proc_btime", |t| keep(procs::parse_btime(t))),
    ("passwd", |t| keep(procs::parse_passwd(t))),
    ("net_route", |t| keep(identity::parse_default_route(t))),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    (PARSERS[sel as usize % PARSERS.len()].1)(&text);
});
