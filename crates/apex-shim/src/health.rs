//! Healthchecks: the container's `HEALTHCHECK` (or `Healthcheck` from create), run in the
//! guest like an exec, with Docker's rules.
//!
//! - The first check runs one interval after the start (`start_interval` during the start
//!   period), then every interval.
//! - Exit code 0 is healthy and resets the failing streak; anything else, or a check that
//!   exceeds its timeout (exit code -1), is a failure.
//! - Failures during the start period do not count. Past it, `retries` failures in a row
//!   make the container unhealthy.
//! - The last five results are kept, each with the first 4 KiB of the check's output.

use std::time::{Duration, Instant};

use apex_runtime::sandbox::{Process, Sandbox};
use apex_runtime::spec::{HealthConfig, ProcessSpec};
use apex_shim::proto::{Health, HealthLog};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Docker's default interval and timeout.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Docker's default interval during the start period.
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
/// Docker's default number of failures in a row before `unhealthy`.
const DEFAULT_RETRIES: u32 = 3;
/// Results kept in the log.
const LOG_ENTRIES: usize = 5;
/// Output kept per result.
pub const OUTPUT_LIMIT: usize = 4096;

/// `starting`: no check has passed yet.
pub const STARTING: &str = "starting";
/// `healthy`: the last check passed.
pub const HEALTHY: &str = "healthy";
/// `unhealthy`: `retries` checks in a row failed.
pub const UNHEALTHY: &str = "unhealthy";

/// A healthcheck with Docker's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The command to run.
    pub args: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Failures in a row that make the container unhealthy.
    pub retries: u32,
    /// Grace period after the start when failures do not count.
    pub start_period: Duration,
    /// Time between checks during the start period.
    pub start_interval: Duration,
}

fn duration(ns: i64, default: Duration) -> Duration {
    if ns > 0 {
        Duration::from_nanos(ns as u64)
    } else {
        default
    }
}

impl Check {
    /// The check of `cfg`; `None` for `NONE` or an empty test.
    pub fn new(cfg: &HealthConfig) -> Option<Check> {
        let args = match cfg.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, [cmd])) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), cmd.clone()]
            }
            _ => return None,
        };
        Some(Check {
            args,
            interval: duration(cfg.interval, DEFAULT_INTERVAL),
            timeout: duration(cfg.timeout, DEFAULT_INTERVAL),
            retries: u32::try_from(cfg.retries)
                .ok()
                .filter(|r| *r > 0)
                .unwrap_or(DEFAULT_RETRIES),
            start_period: duration(cfg.start_period, Duration::ZERO),
            start_interval: duration(cfg.start_interval, DEFAULT_START_INTERVAL),
        })
    }

    /// The wait before the next check, `since_start` after the container started.
    pub fn next_delay(&self, since_start: Duration) -> Duration {
        if since_start < self.start_period {
            self.start_interval
        } else {
            self.interval
        }
    }

    /// The output recorded for a check that timed out.
    pub fn timeout_output(&self) -> String {
        format!("Health check exceeded timeout ({:?})", self.timeout)
    }
}

/// The health before the first check.
pub fn initial() -> Health {
    Health {
        status: STARTING.into(),
        failing_streak: 0,
        log: Vec::new(),
    }
}

/// Applies one result; `in_start_period` when it ran during the start period.
pub fn record(health: &mut Health, check: &Check, result: HealthLog, in_start_period: bool) {
    if result.exit_code == 0 {
        health.status = HEALTHY.into();
        health.failing_streak = 0;
    } else if !in_start_period {
        health.failing_streak += 1;
        if health.failing_streak >= check.retries {
            health.status = UNHEALTHY.into();
        }
    }
    health.log.push(result);
    if health.log.len() > LOG_ENTRIES {
        let extra = health.log.len() - LOG_ENTRIES;
        health.log.drain(..extra);
    }
}

/// Runs the checks until dropped, publishing the health after each through `publish`
/// (starting with [`initial`]).
pub async fn run(
    sandbox: &Sandbox,
    base: &ProcessSpec,
    check: Check,
    mut publish: impl FnMut(&Health),
) {
    let started = Instant::now();
    let mut health = initial();
    publish(&health);
    loop {
        tokio::time::sleep(check.next_delay(started.elapsed())).await;
        let in_start_period = started.elapsed() < check.start_period;
        let result = probe(sandbox, base, &check).await;
        tracing::debug!(code = result.exit_code, "healthcheck");
        record(&mut health, &check, result, in_start_period);
        publish(&health);
    }
}

/// One check: the command in the container, its output, its exit code (-1 when it timed
/// out or could not run).
async fn probe(sandbox: &Sandbox, base: &ProcessSpec, check: &Check) -> HealthLog {
    let start = crate::shim::now();
    let spec = ProcessSpec {
        args: check.args.clone(),
        terminal: false,
        init: false,
        ..base.clone()
    };
    let (exit_code, output) = match sandbox.spawn(&spec, false).await {
        Err(e) => (-1, format!("{e:#}")),
        Ok(Process {
            id, stdout, stderr, ..
        }) => {
            let run = async {
                // stdout, then stderr (Docker interleaves them; the order matters little).
                let (mut out, mut err) = (Vec::new(), Vec::new());
                tokio::join!(read_capped(stdout, &mut out), async {
                    if let Some(s) = stderr {
                        read_capped(s, &mut err).await;
                    }
                });
                out.extend(err);
                let status = sandbox.agent().wait_process(&id).await;
                (status, out)
            };
            match tokio::time::timeout(check.timeout, run).await {
                Ok((Ok(st), out)) => {
                    let mut out = String::from_utf8_lossy(&out).into_owned();
                    out.truncate(OUTPUT_LIMIT);
                    (st.exit_code, out)
                }
                Ok((Err(e), _)) => (-1, e.to_string()),
                Err(_) => {
                    let _ = sandbox
                        .agent()
                        .kill_process(&id, rustix::process::Signal::KILL.as_raw())
                        .await;
                    (-1, check.timeout_output())
                }
            }
        }
    };
    HealthLog {
        start,
        end: crate::shim::now(),
        exit_code,
        output,
    }
}

/// Reads `r` to its end, keeping the first [`OUTPUT_LIMIT`] bytes in `out`.
async fn read_capped(mut r: impl AsyncRead + Unpin, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_LIMIT.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(test: &[&str]) -> HealthConfig {
        HealthConfig {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn result(code: i32) -> HealthLog {
        HealthLog {
            exit_code: code,
            ..Default::default()
        }
    }

    #[test]
    fn commands_and_defaults() {
        let c = Check::new(&cfg(&["CMD-SHELL", "curl -f localhost"])).unwrap();
        assert_eq!(c.args, ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(
            (c.interval, c.timeout),
            (DEFAULT_INTERVAL, DEFAULT_INTERVAL)
        );
        assert_eq!(c.retries, 3);
        assert_eq!(Check::new(&cfg(&["CMD", "true"])).unwrap().args, ["true"]);
        assert!(Check::new(&cfg(&["NONE"])).is_none());
        assert!(Check::new(&cfg(&["CMD"])).is_none());
        assert!(Check::new(&cfg(&[])).is_none());
        let c = Check::new(&HealthConfig {
            interval: 1_000_000_000,
            start_period: 10_000_000_000,
            start_interval: 200_000_000,
            retries: 2,
            ..cfg(&["CMD", "true"])
        })
        .unwrap();
        assert_eq!(
            c.next_delay(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
        assert_eq!(
            c.next_delay(Duration::from_secs(11)),
            Duration::from_secs(1)
        );
        assert_eq!(c.retries, 2);
    }

    #[test]
    fn streaks_start_period_and_log() {
        let c = Check::new(&cfg(&["CMD", "x"])).unwrap();
        let mut h = initial();
        // Failures in the start period do not count.
        for _ in 0..5 {
            record(&mut h, &c, result(1), true);
        }
        assert_eq!((h.status.as_str(), h.failing_streak), (STARTING, 0));
        record(&mut h, &c, result(0), true);
        assert_eq!(h.status, HEALTHY);
        record(&mut h, &c, result(1), false);
        record(&mut h, &c, result(-1), false);
        assert_eq!((h.status.as_str(), h.failing_streak), (HEALTHY, 2));
        record(&mut h, &c, result(1), false);
        assert_eq!((h.status.as_str(), h.failing_streak), (UNHEALTHY, 3));
        record(&mut h, &c, result(0), false);
        assert_eq!((h.status.as_str(), h.failing_streak), (HEALTHY, 0));
        assert_eq!(h.log.len(), LOG_ENTRIES);
        assert_eq!(h.log.last().unwrap().exit_code, 0);
    }
}
