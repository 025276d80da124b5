//! A container's log as the front doors serve it: the last entries, then (when
//! following) new ones as the helper writes them, until the container stops.

use std::sync::Arc;
use std::time::Duration;

use apex_shim::logfile::{self, LogEntry};
use tokio::sync::mpsc;

use super::Containers;
use crate::error::{Error, Result};
use crate::store::ContainerState;

/// How often a followed log is re-read when nothing signals a change.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// `2026-11-24T18:00:00.123456789Z`: UTC, always nine fraction digits (Docker's
/// RFC3339Nano, fixed width); unparsable times are shown as they are.
pub fn log_timestamp(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) => d
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.9fZ")
            .to_string(),
        Err(_) => t.to_string(),
    }
}

impl Containers {
    /// The last `tail` entries of the container's log (all without `tail`), then with
    /// `follow` new entries as they come, until the container stops running or the
    /// receiver is dropped. Entries arrive in batches, in order.
    pub async fn logs(
        self: &Arc<Self>,
        what: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<mpsc::Receiver<Vec<LogEntry>>> {
        let rec = self.resolve(what)?;
        let path = self.bundle(&rec.id).log();
        let (first, mut follower) =
            tokio::task::spawn_blocking(move || logfile::read_tail_then_follow(&path, tail))
                .await
                .map_err(|e| Error::internal(format!("worker failed: {e}")))??;
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let id = rec.id;
        tokio::spawn(async move {
            if (!first.is_empty() && tx.send(first).await.is_err()) || !follow {
                return;
            }
            let mut changes = me.subscribe();
            loop {
                // Read the state before the file: a last batch written just before the
                // exit is still read after it.
                let running = me.store().get(&id).ok().flatten().is_some_and(|r| {
                    matches!(
                        r.state,
                        ContainerState::Running | ContainerState::Restarting
                    )
                });
                let Ok((entries, f)) = tokio::task::spawn_blocking(move || {
                    let e = follower.poll();
                    (e, follower)
                })
                .await
                else {
                    return;
                };
                follower = f;
                let entries = entries.unwrap_or_default();
                if !entries.is_empty() && tx.send(entries).await.is_err() {
                    return; // the reader went away
                }
                if !running {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = changes.recv() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}
