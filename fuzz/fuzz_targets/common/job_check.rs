//! Invariants of `intake::parse` results, shared by the `job` and `job_signed` targets.

use socketman::config::Config;
use socketman::jobs::intake::{Job, Kind, Rejection};

pub const NOW: u64 = 1_700_000_000;

/// Panics when an answer breaks what SPEC §4.2 promises about accepted and refused jobs.
pub fn check(cfg: &Config, r: Result<Job, Rejection>) {
    match r {
        Ok(job) => {
            assert!(
                !job.id.is_empty() && job.id.chars().count() <= 64,
                "{job:?}"
            );
            assert!(job.timeout >= 1, "{job:?}");
            assert!(
                job.timeout <= cfg.job_timeout.max(cfg.job_timeout_max),
                "{job:?}"
            );
            assert!(job.args.is_object(), "{job:?}");
            if cfg.job_max_age > 0 {
                let t = job
                    .timestamp
                    .expect("job_max_age set: a timestamp is required");
                assert!(
                    (NOW as i128 - t as i128).abs() <= cfg.job_max_age as i128,
                    "{job:?}"
                );
            }
            if let Some(allowed) = &cfg.job_types {
                let shell = job.kind() == Kind::Shell && allowed.iter().any(|a| a == "cmd");
                assert!(shell || allowed.contains(&job.ty), "{job:?}");
            }
            if job.kind() != Kind::Typed {
                assert!(job.msg.as_deref().is_some_and(|m| !m.trim().is_empty()));
            }
        }
        Err(rej) => {
            let _ = rej.error();
            let _ = rej.message();
            if let Some(id) = &rej.id {
                assert!(!id.is_empty() && id.chars().count() <= 64, "{rej:?}");
            }
        }
    }
}
