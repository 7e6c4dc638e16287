//! Integration tests of connectivity, recovery, `network` jobs and provisioning (SPEC §6, §7,
//! §4.4) with the real `socketman` binary, a real mosquitto, real TCP listeners as health
//! targets, real shell scripts as `network_restart_cmd`/`reboot_cmd`, and a real HTTP server.
//!
//! Safety: every agent here runs with `SOCKETMAN_TEST_NO_FORCE_REBOOT=1` (set by the harness; the
//! forced reboot(2) is skipped) and with `network_restart_cmd`/`reboot_cmd` replaced by
//! recording scripts, so no test can reboot or reconfigure the machine it runs on.
//! Test-only knobs used: `SOCKETMAN_TEST_MONITOR_MS` (check period),
//! `SOCKETMAN_TEST_NETWORK_RECHECK_MS` (network job re-check window),
//! `SOCKETMAN_TEST_PROVISION_RETRY_MS` (provisioning retry period).
//!
//! Health target: `dns_check` is `socketman-test.invalid` (RFC 6761: never resolves), so only
//! the TCP part makes the device online (CODE 4) and closing the target takes it offline
//! (CODE 1). With `localhost` the device would stay at CODE 6 (route + DNS), which SPEC §6
//! counts as online.

use crate::http::HttpServer;
use crate::support::{Agent, Broker, Topic};
use serde_json::{json, Value};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_log(a: &Agent, what: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    while !a.log().contains(what) {
        assert!(
            Instant::now() < end,
            "no log line {what:?} within {timeout:?}\n{}",
            a.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn is_recovery(v: &Value, state: &str) -> bool {
    v["event_type"] == "RECOVERY" && v["meta"]["state"] == state
}

/// A TCP health target on a fixed port that is listening while `closed` (a file) does not
/// exist and closed while it does, so that shell commands run by the agent can break and
/// heal connectivity.
struct Target {
    port: u16,
    control: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Target {
    fn start(dir: &Path) -> Target {
        let bind = "127.0.0.1";
        let port = crate::support::free_port();
        let control = dir.join("target-closed");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (c, s, a) = (control.clone(), stop.clone(), accepted.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut listener: Option<TcpListener> = None;
            let mut ready = Some(ready_tx);
            while !s.load(Ordering::SeqCst) {
                let want_open = !c.exists();
                if want_open && listener.is_none() {
                    let l = TcpListener::bind((bind, port)).expect("rebind target port");
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                } else if !want_open && listener.is_some() {
                    listener = None; // closed: connects are refused from now on
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                if let Some(l) = &listener {
                    while let Ok((conn, _)) = l.accept() {
                        a.fetch_add(1, Ordering::SeqCst);
                        drop(conn);
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        ready_rx.recv().unwrap();
        Target {
            port,
            control,
            stop,
            accepted,
        }
    }

    fn close(&self) {
        fs::write(&self.control, "").unwrap();
        wait_until("target to close", Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A recording script: appends `<name> <unix time with ns>` to `file` and runs `extra`.
fn recorder(file: &Path, name: &str, extra: &str) -> String {
    format!(
        "echo \"{name} $(date +%s.%N)\" >> '{}'; {extra}",
        file.display()
    )
}

fn records(file: &Path) -> Vec<(String, f64)> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_string(), t.parse().ok()?))
        })
        .collect()
}

/// An agent on `b` checking `target`, recording `network_restart_cmd` (which runs `heal`
/// after recording) and `reboot_cmd` into `<dir>/calls`; checks every 0.5 s; not started.
fn monitored(b: &Broker, target: &Target, reboot: u64, heal: bool) -> (Agent, PathBuf) {
    let mut a = Agent::prepare(b, |_| {});
    let rec = a.dir.path().join("calls");
    let heal_cmd = if heal {
        format!("rm -f '{}'", target.control.display())
    } else {
        String::new()
    };
    let mut cfg = a.config();
    cfg["health_port"] = json!(target.port);
    cfg["dns_check"] = json!("socketman-test.invalid");
    cfg["reboot"] = json!(reboot);
    cfg["network_restart_cmd"] = json!(recorder(&rec, "restart", &heal_cmd));
    cfg["reboot_cmd"] = json!(recorder(&rec, "reboot", ""));
    a.write_config(&cfg);
    a.env
        .push(("SOCKETMAN_TEST_MONITOR_MS".into(), "500".into()));
    (a, rec)
}

#[test]
fn outage_runs_restart_then_reboot_once_each_and_reports_the_reboot_after_restart() {
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path());
    let (mut a, rec) = monitored(&b, &target, 30, false);
    a.spawn();
    a.wait_online(1);
    wait_log(&a, "connectivity CODE 4 (online)", Duration::from_secs(20));
    assert!(
        target.accepted.load(Ordering::SeqCst) > 0,
        "the check connects to health_url:health_port"
    );

    let outage = wall();
    target.close();
    let calls = wait_until("restart and reboot", Duration::from_secs(60), || {
        let r = records(&rec);
        (r.len() >= 2).then_some(r)
    });
    // Ten more checks: nothing runs twice.
    thread::sleep(Duration::from_secs(5));
    let calls_after = records(&rec);
    assert_eq!(calls_after.len(), 2, "each step once: {calls_after:?}");
    assert_eq!(calls[0].0, "restart");
    assert_eq!(calls[1].0, "reboot");
    let to_restart = calls[0].1 - outage;
    let to_reboot = calls[1].1 - outage;
    println!(
        "recovery timeline (reboot=30, check every 0.5 s): outage -> network_restart_cmd {to_restart:.2} s, -> reboot_cmd {to_reboot:.2} s"
    );
    // Never early: the timer starts at the first offline check, after the outage.
    assert!(to_restart >= 15.0, "restart after {to_restart:.2} s");
    assert!(to_reboot >= 30.0, "reboot after {to_reboot:.2} s");
    assert!(
        to_restart < 25.0 && to_reboot < 45.0,
        "{to_restart} {to_reboot}"
    );

    let marker = a.dir.path().join("state/reboot.json");
    let m: Value = serde_json::from_slice(&fs::read(&marker).expect("reboot.json")).unwrap();
    assert_eq!(m["reason"], "offline");
    assert!(m["offline_s"].as_u64().unwrap() >= 30, "{m}");
    let at = m["at"].as_f64().unwrap();
    assert!(
        (at - calls[1].1).abs() < 3.0,
        "at {at} vs reboot {}",
        calls[1].1
    );
    assert_eq!(
        a.count(Topic::Status, |v| v["event_type"] == "RECOVERY"),
        0,
        "no RECOVERY while still offline"
    );
    assert!(
        a.log().contains("no forced reboot"),
        "force step skipped in tests"
    );

    // "After the reboot": a new process on the same state dir reports it once and removes it.
    a.term();
    a.spawn();
    let ev = a.wait_msg(
        Topic::Status,
        |v| is_recovery(v, "rebooted"),
        Duration::from_secs(20),
    );
    assert_eq!(ev["meta"]["reason"], "offline");
    assert_eq!(ev["meta"]["offline_s"], m["offline_s"]);
    assert_eq!(ev["meta"]["at"], m["at"]);
    assert!(!marker.exists(), "reboot.json removed after publishing");
    a.term();
    a.spawn();
    a.wait_online(3);
    thread::sleep(Duration::from_secs(1));
    a.term();
    assert_eq!(
        a.count(Topic::Status, |v| is_recovery(v, "rebooted")),
        1,
        "published once"
    );
}

#[test]
fn restart_that_heals_resets_the_timers_and_a_second_outage_starts_fresh() {
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path());
    // The "network restart" brings the target back.
    let (mut a, rec) = monitored(&b, &target, 30, true);
    a.spawn();
    a.wait_online(1);
    wait_log(&a, "connectivity CODE 4 (online)", Duration::from_secs(20));

    for round in 1..=2 {
        let outage = wall();
        target.close();
        wait_until("RECOVERY online", Duration::from_secs(40), || {
            (a.count(Topic::Status, |v| is_recovery(v, "online")) >= round).then_some(())
        });
        let r = records(&rec);
        assert_eq!(r.len(), round, "one restart per outage: {r:?}");
        assert!(r.iter().all(|(n, _)| n == "restart"), "no reboot: {r:?}");
        let to_restart = r[round - 1].1 - outage;
        println!("outage {round}: network_restart_cmd after {to_restart:.2} s");
        // A second outage that inherited the old timer would act at once.
        assert!(
            to_restart >= 15.0,
            "outage {round}: restart after {to_restart:.2} s"
        );
        thread::sleep(Duration::from_secs(2));
    }
    let online = a.find(Topic::Status, |v| is_recovery(v, "online"));
    assert_eq!(online.len(), 2, "{online:?}");
    for ev in &online {
        let s = ev["meta"]["offline_s"].as_u64().unwrap();
        assert!((15..25).contains(&s), "offline_s {s}");
    }
    assert!(!a.dir.path().join("state/reboot.json").exists());
}

#[test]
fn network_job_that_breaks_connectivity_is_rolled_back_byte_for_byte() {
    let b = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let target = Target::start(d.path());
    let etc = d.path().join("etc/config");
    fs::create_dir_all(&etc).unwrap();
    let network = etc.join("network");
    let wireless = etc.join("wireless");
    let net_bytes = b"config interface 'wan'\n\toption proto 'dhcp'\n".to_vec();
    let wifi_bytes: Vec<u8> = (0..=255u8).rev().collect();
    fs::write(&network, &net_bytes).unwrap();
    fs::set_permissions(&network, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&wireless, &wifi_bytes).unwrap();

    // reboot 0: the monitor takes no step of its own; the job's rollback heals the target.
    let (mut a, rec) = monitored(&b, &target, 0, true);
    let mut cfg = a.config();
    cfg["network_backup_files"] = json!([network, wireless, etc.join("absent")]);
    a.write_config(&cfg);
    a.env
        .push(("SOCKETMAN_TEST_NETWORK_RECHECK_MS".into(), "4000".into()));
    a.spawn();
    a.wait_online(1);
    wait_log(&a, "connectivity CODE 4 (online)", Duration::from_secs(20));

    // A harmless network job: not rolled back, its change stays.
    let cmd = format!(
        "echo harmless; printf '# edited\\n' >> '{}'",
        network.display()
    );
    a.send_job(&json!({"id": "net-ok", "meta": {"type": "networking", "msg": cmd}}));
    let p = a.answer("net-ok", Duration::from_secs(30));
    assert_eq!(p["meta"]["success"], true, "{p}");
    assert_eq!(
        p["meta"]["result"],
        json!({"online_before": true, "online_after": true, "rolled_back": false})
    );
    assert!(fs::read_to_string(&network)
        .unwrap()
        .ends_with("# edited\n"));
    fs::write(&network, &net_bytes).unwrap();
    assert!(records(&rec).is_empty());

    // A breaking one: closes the health target and rewrites both backed-up files.
    let breaking = format!(
        "touch '{}'; printf 'option proto broken' > '{}'; : > '{}'; echo broke it",
        target.control.display(),
        network.display(),
        wireless.display()
    );
    a.send_job(&json!({"id": "net-bad", "meta": {"type": "network", "msg": breaking}}));
    let p = a.answer("net-bad", Duration::from_secs(60));
    assert_eq!(
        p["meta"]["result"],
        json!({"online_before": true, "online_after": false, "rolled_back": true,
               "online_after_rollback": true}),
        "{p}"
    );
    assert_eq!(p["meta"]["msg"], "broke it\n");
    assert_eq!(p["meta"]["type"], "network");
    assert_eq!(p["meta"]["success"], true, "the command itself succeeded");
    assert_eq!(fs::read(&network).unwrap(), net_bytes, "network restored");
    assert_eq!(
        fs::read(&wireless).unwrap(),
        wifi_bytes,
        "wireless restored"
    );
    let mode = fs::metadata(&network).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert!(!etc.join("absent").exists());
    let r = records(&rec);
    assert_eq!(
        r.len(),
        1,
        "network_restart_cmd once, by the rollback: {r:?}"
    );
    assert!(a.log().contains("recovery paused while a network job runs"));
    assert!(a.dir.path().join("state/network-backup").is_dir());
}

#[test]
fn provisioning_retries_through_503_and_invalid_bodies_then_comes_online() {
    let b = Broker::start();
    let mut a = Agent::prepare(&b, |c| {
        c["reboot"] = json!(0);
        c["network_restart_cmd"] = json!("true");
        c["reboot_cmd"] = json!("true");
    });
    let body = fs::read_to_string(&a.config_path).unwrap();
    fs::remove_file(&a.config_path).unwrap();
    let path = a.config_path.clone();
    let served = Arc::new(AtomicUsize::new(0));
    let saved_early = Arc::new(AtomicBool::new(false));
    let (s2, e2, body2, p2) = (
        served.clone(),
        saved_early.clone(),
        body.clone(),
        path.clone(),
    );
    let srv = HttpServer::start(move |_req| {
        let n = s2.fetch_add(1, Ordering::SeqCst);
        if p2.exists() {
            e2.store(true, Ordering::SeqCst);
        }
        Some(match n {
            0 | 1 => (503, "try later".to_string()),
            2 => (200, r#"{"topic":"t","mqtt_host":"h"}"#.to_string()), // no key: invalid
            3 => (200, "{\"topic\": ".to_string()),                     // malformed
            _ => (201, body2.clone()),
        })
    });
    a.extra_args = vec!["-b".into(), srv.url("/init")];
    a.env
        .push(("SOCKETMAN_TEST_PROVISION_RETRY_MS".into(), "300".into()));
    let started = Instant::now();
    a.spawn();
    a.wait_online(1);
    println!(
        "provisioned and online after {:.1} s ({} requests)",
        started.elapsed().as_secs_f32(),
        srv.requests().len()
    );
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 5, "{reqs:?}");
    for r in &reqs {
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/init");
        let q = r.query();
        assert!(
            q.contains_key("mac") && q.contains_key("machine") && q.contains_key("firmware"),
            "{q:?}"
        );
    }
    assert!(
        !saved_early.load(Ordering::SeqCst),
        "nothing saved before the valid answer"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), body, "saved as served");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(a.log().contains("provisioning: config written"));
}

#[test]
fn missing_config_without_init_url_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("none.json");
    let (code, _, err) = crate::support::run_bin(&["-c", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("none.json") && err.contains("-b"), "{err}");
}

#[test]
fn boot_url_and_boot_cmd_run_at_start() {
    let b = Broker::start();
    let srv = HttpServer::start(|_| Some((500, "oops".into())));
    let mut a = Agent::prepare(&b, |_| {});
    let mut cfg = a.config();
    cfg["boot_url"] = json!(srv.url("/boot"));
    cfg["token"] = json!("s3cret-token");
    let mark = a.dir.path().join("boot");
    cfg["boot_cmd"] = json!(format!("echo booted > '{}'", mark.display()));
    a.write_config(&cfg);
    a.spawn();
    a.wait_online(1);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].target,
        format!("/boot?access_token=s3cret-token&mac={}", a.mac)
    );
    assert_eq!(fs::read_to_string(&mark).unwrap(), "booted\n");
    let log = a.log();
    assert!(
        log.contains("boot_url") && log.contains("HTTP 500"),
        "{log}"
    );
    assert!(!log.contains("s3cret-token"), "token redacted in the log");
}

/// A network namespace with a veth pair to the host: `host_ip` on the host side `vh`,
/// `ns_ip` on `vn` inside, default route via the host. Removed on drop.
struct Netns {
    name: String,
    vh: String,
    vn: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let n = crate::support::unique();
        let octet = n % 250 + 1;
        let ns = Netns {
            name: format!("smt{n}"),
            vh: format!("smh{n}"),
            vn: format!("smn{n}"),
            host_ip: format!("10.201.{octet}.1"),
        };
        let ns_ip = format!("10.201.{octet}.2/30");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link", "add", &ns.vh, "type", "veth", "peer", "name", &ns.vn, "netns", &ns.name,
        ])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.vh])?;
        ip(&["link", "set", &ns.vh, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &ns_ip, "dev", &ns.vn])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.name, "link", "set", &ns.vn, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "default",
            "via",
            &ns.host_ip,
        ])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.vh]);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn netns_link_cut_for_real_is_healed_by_network_restart_cmd() {
    if !is_root() {
        println!("NOT RUN: netns_link_cut_for_real_is_healed_by_network_restart_cmd needs root (ip netns, veth)");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            println!("NOT RUN: netns_link_cut_for_real_is_healed_by_network_restart_cmd: cannot build the namespace: {e}");
            return;
        }
    };
    // The broker also listens on the host end of the veth, for the agent inside.
    let mut b = Broker::start();
    let ns_port = crate::support::free_port();
    let conf = b.dir.path().join("mosquitto.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("listener {ns_port} {}\n", ns.host_ip));
    fs::write(&conf, text).unwrap();
    b.restart();
    // The health target, on the host end too.
    let target = TcpListener::bind((ns.host_ip.as_str(), 0)).unwrap();
    let target_port = target.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    thread::spawn(move || {
        for c in target.incoming() {
            acc.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });

    let mut a = Agent::prepare(&b, |_| {});
    let rec = a.dir.path().join("calls");
    let mut cfg = a.config();
    cfg["mqtt_host"] = json!(ns.host_ip);
    cfg["port"] = json!(ns_port);
    cfg["health_url"] = json!(ns.host_ip);
    cfg["health_port"] = json!(target_port);
    cfg["dns_check"] = json!("socketman-test.invalid");
    cfg["reboot"] = json!(30);
    // Runs inside the namespace (the agent's): brings the link and the route back.
    let heal = format!(
        "ip link set {} up && ip route replace default via {}",
        ns.vn, ns.host_ip
    );
    cfg["network_restart_cmd"] = json!(recorder(&rec, "restart", &heal));
    cfg["reboot_cmd"] = json!(recorder(&rec, "reboot", ""));
    a.write_config(&cfg);
    let wrapper = a.dir.path().join("socketman-in-netns");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ip netns exec {} '{}' \"$@\"\n",
            ns.name,
            a.bin.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    a.bin = wrapper;
    a.env
        .push(("SOCKETMAN_TEST_MONITOR_MS".into(), "500".into()));
    a.spawn();
    a.wait_online(1);
    wait_log(
        &a,
        &format!("connectivity CODE 4 (online), route via {}", ns.vn),
        Duration::from_secs(20),
    );
    assert!(accepted.load(Ordering::SeqCst) > 0);

    // Cut the link for real: the interface goes down and its routes go with it.
    let cut = wall();
    ip(&["-n", &ns.name, "link", "set", &ns.vn, "down"]).unwrap();
    let ev = a.wait_msg(
        Topic::Status,
        |v| is_recovery(v, "online"),
        Duration::from_secs(90),
    );
    let r = records(&rec);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0, "restart");
    let to_restart = r[0].1 - cut;
    let offline_s = ev["meta"]["offline_s"].as_u64().unwrap();
    println!(
        "netns: link cut -> network_restart_cmd {to_restart:.2} s; RECOVERY online offline_s={offline_s}"
    );
    assert!(to_restart >= 15.0, "{to_restart}");
    assert!((15..30).contains(&offline_s), "{offline_s}");
    assert!(
        a.log().contains("connectivity CODE 0 (offline)"),
        "no route while the link was down"
    );
    a.term();
}
