//! Issue 18, `firmware.upgrade`: the real agent against a real mosquitto, the image served
//! by a real HTTP server, and — where only a router has the real thing — a stand-in
//! `sysupgrade_cmd` script. The agent reads its identity from a fake device tree
//! (`SOCKETMAN_TEST_ROOT`, test builds only): `etc/openwrt_version` and `proc/meminfo` are
//! real captured files (`tests/fixtures/`). The stand-in checks `-T`, "flashes" by putting
//! the new `openwrt_version` in place, and kills the agent with SIGKILL as the reboot would;
//! the test then starts it again (the "boot").
//! Success, wrong sha256, failed `-T`, came back on the old firmware, a crash between the
//! answer and the marker removal (answered once), low RAM, busy and unsupported refusals.

use crate::http::HttpServer;
use crate::support::{now, Agent, Broker, Topic};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OLD: &str = include_str!("../fixtures/openwrt_version-snapshot-r9544-x86_64");
const NEW: &str = include_str!("../fixtures/openwrt_version-23.05-snapshot-x86_64");
const RELEASE: &str = include_str!("../fixtures/openwrt_release-snapshot-r9544-x86_64");
/// 156 MiB available (MemAvailable).
const MEM_BIG: &str = include_str!("../fixtures/proc-meminfo-openwrt-econet-en7580.txt");
/// Linux 2.6, 64 MiB router: MemFree + Buffers + Cached = 57 MiB.
const MEM_SMALL: &str = include_str!("../fixtures/proc-meminfo-openwrt-wrt610n-2.6.txt");
const T: Duration = Duration::from_secs(30);

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fake device tree of `a`.
fn root(a: &Agent) -> PathBuf {
    a.dir.path().join("root")
}

fn script_log(a: &Agent) -> String {
    std::fs::read_to_string(a.dir.path().join("sysupgrade.log")).unwrap_or_default()
}

fn marker(a: &Agent) -> PathBuf {
    a.dir.path().join("state/pending-firmware.json")
}

/// Writes the fake device tree (OpenWrt r9544, `meminfo`) and the stand-in sysupgrade.
/// `flash_to`: the `openwrt_version` the "flash" installs (`None`: the device comes back on
/// the old one). `fail_test`: `-T` refuses the image.
fn device(a: &Agent, meminfo: &str, flash_to: Option<&str>, fail_test: bool) {
    let r = root(a);
    for d in ["etc", "proc", "tmp", "lib/upgrade/keep.d"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("etc/openwrt_version"), OLD).unwrap();
    std::fs::write(r.join("etc/openwrt_release"), RELEASE).unwrap();
    std::fs::write(r.join("proc/meminfo"), meminfo).unwrap();
    let dir = a.dir.path();
    if let Some(v) = flash_to {
        std::fs::write(dir.join("flash-to"), v).unwrap();
    }
    let test = if fail_test {
        "echo \"Image check 'platform_check_image' failed.\"; exit 1"
    } else {
        "head -c 24 \"$2\" | grep -q '^stand-in firmware image' || { echo \"not an image: $2\"; exit 1; }; exit 0"
    };
    let body = format!(
        r#"#!/bin/sh
# Stand-in for OpenWrt's sysupgrade (only a router has the real one).
echo "$*" >> {dir}/sysupgrade.log
if [ "$1" = -T ]; then
    {test}
fi
[ "$1" = -n ] && shift
[ -f "$1" ] || {{ echo "no image $1"; exit 1; }}
[ -f {dir}/flash-to ] && cp {dir}/flash-to {root}/etc/openwrt_version
# The reboot: everything is killed (this script too, by its end).
kill -9 "$(cat {dir}/agent.pid)"
"#,
        dir = dir.display(),
        root = r.display(),
    );
    let p = dir.join("sysupgrade");
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An agent on the fake device, started and online.
fn agent(b: &Broker, meminfo: &str, flash_to: Option<&str>, fail_test: bool) -> Agent {
    let mut a = Agent::prepare(b, |c| {
        let dir = Path::new(c["state_dir"].as_str().unwrap())
            .parent()
            .unwrap()
            .to_path_buf();
        c["sysupgrade_cmd"] = json!(dir.join("sysupgrade"));
    });
    device(&a, meminfo, flash_to, fail_test);
    let r = root(&a).display().to_string();
    a.env.push(("SOCKETMAN_TEST_ROOT".into(), r));
    boot(&mut a);
    a.wait_online(1);
    a
}

/// Starts the agent process and records its pid for the stand-in.
fn boot(a: &mut Agent) {
    a.spawn();
    std::fs::write(a.dir.path().join("agent.pid"), a.pid().unwrap().to_string()).unwrap();
}

/// Waits until the agent process died (killed by the stand-in, or aborted).
fn wait_dead(a: &mut Agent) {
    a.wait_exit(T);
}

fn image(version: &str) -> Vec<u8> {
    format!("stand-in firmware image {version}\n").into_bytes()
}

fn send(a: &Agent, id: &str, args: Value) {
    a.send_job(
        &json!({"id": id, "timestamp": now(), "meta": {"type": "firmware.upgrade", "args": args}}),
    );
}

fn serve(data: Vec<u8>) -> (HttpServer, String, String) {
    let sum = sha(&data);
    let text = String::from_utf8(data).unwrap();
    let srv = HttpServer::start(move |_| Some((200, text.clone())));
    let url = srv.url("/openwrt-sysupgrade.bin");
    (srv, url, sum)
}

fn new_version() -> &'static str {
    NEW.trim()
}

fn old_version() -> &'static str {
    OLD.trim()
}

#[test]
fn firmware_upgrade_flashes_reboots_and_answers_from_the_new_firmware() {
    let b = Broker::start();
    let mut a = agent(&b, MEM_BIG, Some(NEW), false);
    let (_srv, url, sum) = serve(image(new_version()));
    let t0 = Instant::now();
    send(
        &a,
        "fw-ok",
        json!({"url": url, "sha256": sum, "version": new_version()}),
    );
    wait_dead(&mut a);
    // Before the flash: the marker, the FIRMWARE event, the keep list, -T first.
    let m: Value = serde_json::from_slice(&std::fs::read(marker(&a)).unwrap()).unwrap();
    assert_eq!(m["job_id"], "fw-ok");
    assert_eq!(m["version"], new_version());
    assert_eq!(m["previous"], old_version());
    let ev = a.wait_msg(Topic::Status, |v| v["event_type"] == "FIRMWARE", T);
    assert_eq!(
        ev["meta"],
        json!({"state": "flashing", "job_id": "fw-ok", "version": new_version(), "previous": old_version()})
    );
    let calls: Vec<String> = script_log(&a).lines().map(str::to_string).collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[0].starts_with("-T ") && calls[0].contains("/root/tmp/"),
        "{calls:?}"
    );
    assert_eq!(
        calls[1],
        calls[0].trim_start_matches("-T "),
        "keep_settings: no -n"
    );
    let keep = std::fs::read_to_string(root(&a).join("lib/upgrade/keep.d/socketman")).unwrap();
    assert!(keep.contains(&a.config_path.display().to_string()) && keep.contains("/state/"));
    assert_eq!(
        a.count(Topic::Pub, |v| v["id"] == "fw-ok"),
        0,
        "no answer before the reboot"
    );
    // The "boot": the new firmware answers.
    boot(&mut a);
    let p = a.answer("fw-ok", T);
    let secs = t0.elapsed().as_secs_f32();
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(
        p["meta"]["result"],
        json!({"version": new_version(), "previous": old_version()})
    );
    assert_eq!(
        p["meta"]["msg"],
        format!(
            "firmware upgraded from {} to {}",
            old_version(),
            new_version()
        )
    );
    eprintln!("timeline: firmware success answered {secs:.1} s after the job");
    let stats = a.job("stats", json!({}));
    assert_eq!(stats["meta"]["result"]["device"]["firmware"], new_version());
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker(&a).exists());
    assert_eq!(a.count(Topic::Pub, |v| v["id"] == "fw-ok"), 1);
}

#[test]
fn firmware_wrong_sha256_and_failed_test_flash_nothing() {
    let b = Broker::start();
    let a = agent(&b, MEM_BIG, Some(NEW), true);
    let pid = a.pid();
    let (_srv, url, sum) = serve(image(new_version()));
    let t0 = Instant::now();
    let bad = sha(b"something else");
    send(
        &a,
        "fw-sha",
        json!({"url": url, "sha256": bad, "version": new_version()}),
    );
    let p = a.answer("fw-sha", T);
    eprintln!(
        "timeline: wrong sha256 answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(
        p["meta"]["error"],
        format!("checksum mismatch: expected {bad}, got {sum}")
    );
    assert_eq!(script_log(&a), "", "sysupgrade not run");
    // -T refuses: its output is the answer, nothing flashed.
    let t0 = Instant::now();
    send(
        &a,
        "fw-t",
        json!({"url": url, "sha256": sum, "version": new_version()}),
    );
    let p = a.answer("fw-t", T);
    eprintln!(
        "timeline: failed -T answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(
        p["meta"]["error"],
        "sysupgrade -T refused the image (exit status: 1): Image check 'platform_check_image' failed."
    );
    assert_eq!(script_log(&a).lines().count(), 1, "only -T ran");
    assert!(!marker(&a).exists());
    assert_eq!(
        std::fs::read_to_string(root(&a).join("etc/openwrt_version")).unwrap(),
        OLD
    );
    assert_eq!(a.pid(), pid);
    assert_eq!(
        std::fs::read_dir(root(&a).join("tmp")).unwrap().count(),
        0,
        "the images were removed"
    );
}

#[test]
fn firmware_device_back_on_the_old_firmware_is_a_failure() {
    let b = Broker::start();
    let mut a = agent(&b, MEM_BIG, None, false);
    let (_srv, url, sum) = serve(image(new_version()));
    let t0 = Instant::now();
    send(
        &a,
        "fw-old",
        json!({"url": url, "sha256": sum, "version": new_version(), "keep_settings": false}),
    );
    wait_dead(&mut a);
    assert!(
        script_log(&a).lines().nth(1).unwrap().starts_with("-n "),
        "{}",
        script_log(&a)
    );
    boot(&mut a);
    let p = a.answer("fw-old", T);
    eprintln!(
        "timeline: old firmware answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(
        p["meta"]["error"],
        format!(
            "device came back on the old firmware {} (expected {})",
            old_version(),
            new_version()
        )
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker(&a).exists());
}

#[test]
fn firmware_crash_between_answer_and_marker_removal_answers_once() {
    let b = Broker::start();
    let mut a = agent(&b, MEM_BIG, Some(NEW), false);
    let (_srv, url, sum) = serve(image(new_version()));
    let t0 = Instant::now();
    send(
        &a,
        "fw-crash",
        json!({"url": url, "sha256": sum, "version": new_version()}),
    );
    wait_dead(&mut a);
    // First boot: answers, then dies before removing the marker.
    a.env
        .push(("SOCKETMAN_TEST_CRASH_AFTER_ANSWER".into(), "1".into()));
    boot(&mut a);
    let p = a.answer("fw-crash", T);
    assert_eq!(p["meta"]["success"], true, "{p}");
    wait_dead(&mut a);
    assert!(marker(&a).exists(), "the crash left the marker");
    // Second boot: the answer is in the journal; the marker goes, no second answer.
    a.env.pop();
    boot(&mut a);
    a.wait_online(3);
    let ping = a.job("ping", json!({}));
    assert_eq!(ping["meta"]["success"], true);
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "timeline: crash test done {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    crate::support::assert_answered_once_across_crash(&a, "fw-crash", &marker(&a));
}

#[test]
fn firmware_refused_without_ram_while_pending_and_off_openwrt() {
    let b = Broker::start();
    let a = agent(&b, MEM_SMALL, Some(NEW), false);
    // 50 MiB does not fit in 57 MiB minus the 8 MiB margin.
    let big = vec![b'x'; 50 << 20];
    let (_srv, url, sum) = serve(big);
    let t0 = Instant::now();
    send(
        &a,
        "fw-ram",
        json!({"url": url, "sha256": sum, "version": new_version()}),
    );
    let p = a.answer("fw-ram", T);
    eprintln!(
        "timeline: low RAM answered {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(p["meta"]["success"], false);
    assert_eq!(
        p["meta"]["error"],
        "not enough free RAM: the image is larger than 57.0 MiB available minus a 8.0 MiB margin"
    );
    assert_eq!(script_log(&a), "");
    assert_eq!(std::fs::read_dir(root(&a).join("tmp")).unwrap().count(), 0);
    // A pending upgrade: busy.
    std::fs::write(
        marker(&a),
        json!({"job_id": "older", "version": "r1", "previous": "r0", "keep_settings": true, "at": now()}).to_string(),
    )
    .unwrap();
    let p = a.job(
        "firmware.upgrade",
        json!({"url": url, "sha256": sum, "version": "r2"}),
    );
    assert_eq!(
        p["meta"]["error"],
        "busy: upgrade to r1 (job older) is still pending"
    );
    // Not OpenWrt and no sysupgrade_cmd: unsupported.
    let mut c = a.config();
    c.as_object_mut().unwrap().remove("sysupgrade_cmd");
    a.write_config(&c);
    std::fs::remove_file(root(&a).join("etc/openwrt_release")).unwrap();
    a.signal(1);
    std::thread::sleep(Duration::from_secs(1));
    let p = a.job(
        "firmware.upgrade",
        json!({"url": url, "sha256": sum, "version": "r2"}),
    );
    assert_eq!(
        p["meta"]["error"],
        "unsupported: no sysupgrade_cmd on this device (not OpenWrt)"
    );
}

#[test]
fn smctl_firmware_waits_across_the_reboot() {
    let b = Broker::start();
    let mut a = agent(&b, MEM_BIG, Some(NEW), false);
    let (_srv, url, sum) = serve(image(new_version()));
    let mut args = crate::smctl::to(&a);
    args.extend(
        [
            "firmware",
            "--mac",
            &a.mac,
            "--url",
            &url,
            "--sha256",
            &sum,
            "--version",
            new_version(),
            "--timeout",
            "30",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let t0 = Instant::now();
    let cli = std::thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::smctl::smctl(&refs)
    });
    wait_dead(&mut a);
    // Offline (the last will) before the boot, as after a real reboot.
    a.wait_msg(
        Topic::Status,
        |v| v["event_type"] == "CONNECT" && v["meta"]["online"] == "0",
        T,
    );
    boot(&mut a);
    let (code, out, err) = cli.join().unwrap();
    eprintln!(
        "timeline: smctl firmware ended {:.1} s after the job",
        t0.elapsed().as_secs_f32()
    );
    assert_eq!(code, 0, "{out}\n{err}\n{}", a.log());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"version": new_version(), "previous": old_version()})
    );
    for step in [
        "delivered",
        "firmware flashing",
        "offline",
        "back online",
        "answered after",
    ] {
        assert!(err.contains(step), "{step:?} in progress:\n{err}");
    }
}
