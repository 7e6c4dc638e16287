//! The recovery state machine of SPEC §6, as a pure value: it is fed the result of each
//! connectivity check with the monotonic `Instant` it was taken at, and answers with the
//! actions to perform. It owns no thread, reads no clock and performs nothing itself; the
//! monitor thread (`src/net/monitor.rs`) owns the one instance, runs the actions and is the only
//! caller. Because only `Instant`s come in, wall-clock jumps (NTP setting a router's clock
//! from 1970 to today, a manual `date -s`) cannot shorten or lengthen an outage.
//!
//! Rules (SPEC §6):
//! - the device is offline while CODE ≤ 1; the first offline check starts the timer;
//! - after `reboot/2` s offline, [`Action::RunRestart`] once per outage;
//! - after `reboot` s offline, and once the system has been up for at least `reboot` s,
//!   [`Action::Reboot`] once per outage (at most one step per check, so the network restart
//!   always gets a check period to show its effect);
//! - the first online check after an outage resets everything and gives
//!   [`Action::PublishOnline`] (also when `reboot` is 0: the event is still worth sending);
//! - `reboot: 0` disables both steps.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// CODE at or below which the device counts as offline.
pub const OFFLINE_MAX_CODE: u8 = 1;

/// True when a connectivity CODE means offline.
pub fn is_offline(code: u8) -> bool {
    code <= OFFLINE_MAX_CODE
}

/// What the monitor thread has to do after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run `network_restart_cmd` (offline for `reboot/2` s).
    RunRestart { offline_s: u64 },
    /// Write `reboot.json`, flush the cache, run `reboot_cmd` (offline for `reboot` s).
    Reboot { offline_s: u64 },
    /// Publish `RECOVERY {"state":"online","offline_s":S}`: back online after an outage.
    PublishOnline { offline_s: u64 },
}

/// Offline timer and the steps taken in the current outage.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The `reboot` setting; zero disables both steps.
    reboot: Duration,
    /// When the system booted (monotonic), for the boot grace.
    boot: Instant,
    /// First check of the current outage; `None` while online.
    offline_since: Option<Instant>,
    restarted: bool,
    reboot_issued: bool,
}

impl Recovery {
    /// A machine for `reboot_s` seconds (0 = disabled) on a system that booted at `boot`.
    pub fn new(reboot_s: u64, boot: Instant) -> Self {
        Recovery {
            reboot: Duration::from_secs(reboot_s),
            boot,
            offline_since: None,
            restarted: false,
            reboot_issued: false,
        }
    }

    /// Applies a new `reboot` setting (config reload); the current outage keeps its timer.
    pub fn set_reboot(&mut self, reboot_s: u64) {
        self.reboot = Duration::from_secs(reboot_s);
    }

    /// True while an outage is being timed.
    pub fn is_offline(&self) -> bool {
        self.offline_since.is_some()
    }

    /// Seconds offline at `now` (0 while online).
    pub fn offline_for(&self, now: Instant) -> Duration {
        self.offline_since
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default()
    }

    /// Feeds one check result (`code`) taken at `now`; returns the actions due, in order.
    pub fn observe(&mut self, now: Instant, code: u8) -> Vec<Action> {
        if !is_offline(code) {
            return match self.offline_since.take() {
                Some(since) => {
                    self.restarted = false;
                    self.reboot_issued = false;
                    vec![Action::PublishOnline {
                        offline_s: now.saturating_duration_since(since).as_secs(),
                    }]
                }
                None => Vec::new(),
            };
        }
        let since = *self.offline_since.get_or_insert(now);
        if self.reboot.is_zero() {
            return Vec::new();
        }
        let offline = now.saturating_duration_since(since);
        let offline_s = offline.as_secs();
        if !self.restarted && offline >= self.reboot / 2 {
            self.restarted = true;
            return vec![Action::RunRestart { offline_s }];
        }
        let up = now.saturating_duration_since(self.boot);
        if self.restarted && !self.reboot_issued && offline >= self.reboot && up >= self.reboot {
            self.reboot_issued = true;
            return vec![Action::Reboot { offline_s }];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Feeds `codes` one check period apart starting at `start`; returns (second, action).
    fn run(m: &mut Recovery, start: Instant, period: u64, codes: &[u8]) -> Vec<(u64, Action)> {
        let mut out = Vec::new();
        for (i, &c) in codes.iter().enumerate() {
            let t = i as u64 * period;
            for a in m.observe(start + S(t), c) {
                out.push((t, a));
            }
        }
        out
    }

    /// A boot long enough ago that the grace does not matter.
    fn booted_long_ago() -> (Instant, Instant) {
        let boot = Instant::now();
        (boot, boot + S(100_000))
    }

    #[test]
    fn offline_threshold() {
        assert!(is_offline(0));
        assert!(is_offline(1));
        assert!(!is_offline(4));
        assert!(!is_offline(6));
        assert!(!is_offline(9));
    }

    #[test]
    fn short_blips_take_no_step() {
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(600, boot);
        // Offline for 2 checks (15 s), then online; repeated: never near 300 s.
        let codes = [9, 1, 0, 9, 9, 0, 9, 4, 6, 1, 1, 1, 9];
        let acts = run(&mut m, t0, 15, &codes);
        let steps: Vec<_> = acts
            .iter()
            .filter(|(_, a)| !matches!(a, Action::PublishOnline { .. }))
            .collect();
        assert!(steps.is_empty(), "{steps:?}");
        // Each blip ends with an online event carrying its length.
        let online: Vec<_> = acts.iter().map(|(t, a)| (*t, *a)).collect();
        assert_eq!(
            online,
            vec![
                (45, Action::PublishOnline { offline_s: 30 }),
                (90, Action::PublishOnline { offline_s: 15 }),
                (180, Action::PublishOnline { offline_s: 45 }),
            ]
        );
        assert!(!m.is_offline());
    }

    #[test]
    fn restart_then_reboot_once_each() {
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(600, boot);
        let mut codes = vec![9];
        codes.extend([1u8; 100]); // 1500 s offline
        let acts = run(&mut m, t0, 15, &codes);
        assert_eq!(
            acts,
            vec![
                (315, Action::RunRestart { offline_s: 300 }),
                (615, Action::Reboot { offline_s: 600 }),
            ]
        );
    }

    #[test]
    fn minimum_reboot_period_steps_on_consecutive_checks() {
        // reboot 30, monitor 15: restart at 15 s, reboot at 30 s.
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(30, boot);
        let acts = run(&mut m, t0, 15, &[0, 0, 0, 0, 0]);
        assert_eq!(
            acts,
            vec![
                (15, Action::RunRestart { offline_s: 15 }),
                (30, Action::Reboot { offline_s: 30 }),
            ]
        );
    }

    #[test]
    fn late_check_takes_one_step_at_a_time() {
        // A check delayed past `reboot` runs the restart first; the reboot comes a check later.
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(60, boot);
        assert!(m.observe(t0, 1).is_empty());
        assert_eq!(
            m.observe(t0 + S(70), 1),
            vec![Action::RunRestart { offline_s: 70 }]
        );
        assert_eq!(
            m.observe(t0 + S(85), 1),
            vec![Action::Reboot { offline_s: 85 }]
        );
        assert!(m.observe(t0 + S(100), 1).is_empty(), "reboot only once");
    }

    #[test]
    fn recovery_between_steps_resets_and_next_outage_starts_fresh() {
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(600, boot);
        // Offline 0..=330 s: restart at 300.
        let mut acts = Vec::new();
        for t in (0..=330).step_by(15) {
            acts.extend(m.observe(t0 + S(t), 0));
        }
        assert_eq!(acts, vec![Action::RunRestart { offline_s: 300 }]);
        // The restart helped.
        assert_eq!(
            m.observe(t0 + S(345), 9),
            vec![Action::PublishOnline { offline_s: 345 }]
        );
        assert!(!m.is_offline());
        assert_eq!(m.offline_for(t0 + S(400)), Duration::ZERO);
        // A second outage an hour later: the old C agent rebooted at once here.
        let t1 = t0 + S(3600);
        let acts = run(&mut m, t1, 15, &[1; 50]);
        assert_eq!(
            acts,
            vec![
                (300, Action::RunRestart { offline_s: 300 }),
                (600, Action::Reboot { offline_s: 600 }),
            ],
            "second outage starts from zero and gets its own restart"
        );
    }

    #[test]
    fn online_after_reboot_issued_resets_too() {
        // reboot_cmd failed to reboot and the network came back: a later outage starts fresh.
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(30, boot);
        let acts = run(&mut m, t0, 15, &[0, 0, 0, 0]);
        assert_eq!(acts.len(), 2);
        assert_eq!(
            m.observe(t0 + S(60), 9),
            vec![Action::PublishOnline { offline_s: 60 }]
        );
        let acts = run(&mut m, t0 + S(100), 15, &[0, 0, 0]);
        assert_eq!(
            acts,
            vec![
                (15, Action::RunRestart { offline_s: 15 }),
                (30, Action::Reboot { offline_s: 30 }),
            ]
        );
    }

    #[test]
    fn reboot_allowed_exactly_at_the_boot_grace_boundary() {
        // Offline from boot (WAN cable out): restart at 15 s, reboot at 30 s of uptime.
        let boot = Instant::now();
        let mut m = Recovery::new(30, boot);
        assert!(m.observe(boot, 0).is_empty());
        assert_eq!(
            m.observe(boot + S(15), 0),
            vec![Action::RunRestart { offline_s: 15 }]
        );
        assert_eq!(
            m.observe(boot + S(30), 0),
            vec![Action::Reboot { offline_s: 30 }]
        );
    }

    #[test]
    fn boot_grace_blocks_reboot_until_uptime_reaches_reboot() {
        // The offline timer starts at a check, which is after boot, so in the agent the grace
        // only binds when the boot instant (derived from /proc/uptime) is later than the
        // monotonic clock suggests. Model it with a boot after the first offline check.
        let t0 = Instant::now();
        let boot = t0 + S(100);
        let mut m = Recovery::new(60, boot);
        let acts = run(&mut m, t0, 15, &[0; 13]); // up to t0 + 180 s = 80 s of uptime
        assert_eq!(
            acts,
            vec![
                (30, Action::RunRestart { offline_s: 30 }),
                (165, Action::Reboot { offline_s: 165 }),
            ],
            "reboot waits for 60 s of system uptime (boot + 60 = t0 + 160)"
        );
    }

    #[test]
    fn reboot_zero_disables_both_steps() {
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(0, boot);
        let acts = run(&mut m, t0, 15, &[0; 1000]);
        assert!(acts.is_empty(), "{acts:?}");
        assert!(m.is_offline());
        assert_eq!(
            m.observe(t0 + S(15_000), 9),
            vec![Action::PublishOnline { offline_s: 15_000 }]
        );
        // Enabling it by reload mid-outage uses the time already offline.
        let mut m = Recovery::new(0, boot);
        assert!(run(&mut m, t0, 15, &[0; 40]).is_empty());
        m.set_reboot(60);
        assert_eq!(
            m.observe(t0 + S(600), 0),
            vec![Action::RunRestart { offline_s: 600 }]
        );
        m.set_reboot(0);
        assert!(m.observe(t0 + S(615), 0).is_empty());
    }

    #[test]
    fn wall_clock_jumps_do_not_move_the_timers() {
        // The machine only ever sees Instants (CLOCK_MONOTONIC). Simulate a router whose wall
        // clock is set by NTP from 1970 to 2026 in the middle of an outage, and later set back
        // by an hour: the wall-clock readings are carried along here only to show that none of
        // them reaches the machine, whose decisions follow the monotonic spacing alone.
        let (boot, t0) = booted_long_ago();
        let mut m = Recovery::new(600, boot);
        let mut wall: u64 = 60; // seconds since 1970, as on a router without RTC
        let mut acts = Vec::new();
        for i in 0..30u64 {
            // 30 checks, 15 s apart: 435 s offline in monotonic time.
            if i == 5 {
                wall += 1_780_000_000; // NTP sync
            }
            if i == 20 {
                wall -= 3600; // manual correction
            }
            wall += 15;
            acts.extend(m.observe(t0 + S(i * 15), 0).into_iter().map(|a| (wall, a)));
        }
        let steps: Vec<Action> = acts.iter().map(|(_, a)| *a).collect();
        assert_eq!(steps, vec![Action::RunRestart { offline_s: 300 }]);
        assert_eq!(m.offline_for(t0 + S(435)), S(435));
        // The same outage fed with a monotonic clock that pauses (e.g. a suspended check)
        // never goes backwards either: an older Instant counts as zero elapsed time.
        let mut m = Recovery::new(600, boot);
        assert!(m.observe(t0 + S(100), 0).is_empty());
        assert!(m.observe(t0, 0).is_empty());
        assert_eq!(m.offline_for(t0), Duration::ZERO);
    }
}
