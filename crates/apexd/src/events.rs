//! The daemon's one event stream: what happened to containers, images, networks and
//! volumes, as every front door reports it (Docker's `/events`, later the dashboard).
//!
//! Services [`Events::emit`]; readers [`Events::subscribe`] for what comes next and
//! [`Events::history`] for the recent past (`docker events --since`), kept in a bounded
//! ring.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events kept for `since` queries.
const HISTORY: usize = 2048;
/// Events buffered per subscriber before a slow one misses some.
const CHANNEL: usize = 1024;

/// What an event is about (Docker's event types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A container.
    Container,
    /// An image.
    Image,
    /// A network.
    Network,
    /// A volume.
    Volume,
    /// The daemon itself.
    Daemon,
}

impl EventKind {
    /// Docker's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Container => "container",
            EventKind::Image => "image",
            EventKind::Network => "network",
            EventKind::Volume => "volume",
            EventKind::Daemon => "daemon",
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What it is about.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// What happened: `create`, `start`, `die`, `destroy`, `health_status: healthy`,
    /// `pull`, `tag`, `delete`, `connect`, ...
    pub action: String,
    /// The object: a container id, an image name or id, a network or volume name.
    pub id: String,
    /// Details (`name`, `image`, `exitCode`, ...).
    pub attributes: BTreeMap<String, String>,
    /// When, in nanoseconds since the epoch.
    pub time_nano: i64,
}

/// The event stream.
pub struct Events {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CHANNEL).0,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }
}

impl Events {
    /// Records and broadcasts an event.
    pub fn emit(
        &self,
        kind: EventKind,
        action: impl Into<String>,
        id: impl Into<String>,
        attributes: impl IntoIterator<Item = (&'static str, String)>,
    ) {
        let ev = Event {
            kind,
            action: action.into(),
            id: id.into(),
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            time_nano: chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        };
        tracing::debug!(
            kind = ev.kind.as_str(),
            action = ev.action,
            id = ev.id,
            "event"
        );
        {
            let mut h = self.history.lock().expect("event history");
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Recorded events at or after `since_nano` (the ring keeps the last few thousand),
    /// and a subscription for what follows, taken at the same instant so that nothing
    /// falls between the two.
    pub fn history(&self, since_nano: i64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let h = self.history.lock().expect("event history");
        let rx = self.tx.subscribe();
        let past = h
            .iter()
            .filter(|e| e.time_nano >= since_nano)
            .cloned()
            .collect();
        (past, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn emits_to_subscribers_and_history() {
        let ev = Events::default();
        ev.emit(
            EventKind::Container,
            "create",
            "c1",
            [("name", "web".into())],
        );
        let (past, mut rx) = ev.history(0);
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].attributes["name"], "web");
        ev.emit(EventKind::Volume, "destroy", "data", []);
        let next = rx.recv().await.unwrap();
        assert_eq!(
            (next.kind, next.action.as_str()),
            (EventKind::Volume, "destroy")
        );
        let (recent, _) = ev.history(next.time_nano);
        assert_eq!(recent.len(), 1, "since filters by time");
        for i in 0..HISTORY + 5 {
            ev.emit(EventKind::Image, "tag", format!("i{i}"), []);
        }
        assert_eq!(ev.history(0).0.len(), HISTORY, "the ring is bounded");
    }
}
