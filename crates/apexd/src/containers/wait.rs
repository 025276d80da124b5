//! Waiting for a container to exit or go, with Docker's conditions, on the event stream.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::Containers;
use crate::error::Result;
use crate::events::{Event, EventKind};
use crate::model::WaitResult;
use crate::store::ContainerState;

/// What to wait for (Docker's `condition`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitCondition {
    /// Until it is not running (at once if it is not).
    #[default]
    NotRunning,
    /// Until it exits next (also when it is not running now).
    NextExit,
    /// Until it is removed.
    Removed,
}

impl std::str::FromStr for WaitCondition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "not-running" => Ok(WaitCondition::NotRunning),
            "next-exit" => Ok(WaitCondition::NextExit),
            "removed" => Ok(WaitCondition::Removed),
            other => Err(format!(
                "invalid condition {other:?}: use not-running, next-exit or removed"
            )),
        }
    }
}

fn exit_code(ev: &Event) -> i32 {
    ev.attributes
        .get("exitCode")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

impl Containers {
    /// Waits until `cond` holds and returns the exit code then known.
    pub async fn wait_for(self: &Arc<Self>, what: &str, cond: WaitCondition) -> Result<WaitResult> {
        // Subscribe first: nothing that happens after the check below is missed.
        let mut rx = self.events.subscribe();
        let rec = self.resolve(what)?;
        let id = rec.id.clone();
        let running = matches!(
            rec.state,
            ContainerState::Running | ContainerState::Restarting
        );
        let mut last = WaitResult {
            exit_code: rec.exit_code.unwrap_or(0),
            reason: rec.exit_reason.clone(),
        };
        if cond == WaitCondition::NotRunning && !running {
            return Ok(last);
        }
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(RecvError::Lagged(_)) => {
                    // Missed events: decide from the stored state.
                    match self.store.get(&id)? {
                        None if cond == WaitCondition::Removed => return Ok(last),
                        None => return Ok(last),
                        Some(r) => {
                            let stopped = r.state == ContainerState::Exited;
                            if stopped && cond != WaitCondition::Removed {
                                return Ok(WaitResult {
                                    exit_code: r.exit_code.unwrap_or(0),
                                    reason: r.exit_reason,
                                });
                            }
                            continue;
                        }
                    }
                }
                Err(RecvError::Closed) => return Ok(last),
            };
            if ev.kind != EventKind::Container || ev.id != id {
                continue;
            }
            match ev.action.as_str() {
                "die" => {
                    last = WaitResult {
                        exit_code: exit_code(&ev),
                        reason: None,
                    };
                    if cond != WaitCondition::Removed {
                        return Ok(last);
                    }
                }
                "destroy" => return Ok(last),
                _ => {}
            }
        }
    }
}
