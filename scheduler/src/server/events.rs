//! Cluster events: each a JSON object with its `type` and `time_ms`, sent
//! live to every follower of `GET /v1/events` (server-sent events), the
//! last [`KEPT`] also kept for callers that (re)connect.
//!
//! Each event has an id, `{epoch}-{seq}`: `epoch` is when this replica
//! started (Unix ms), `seq` counts its events. A caller that reconnects
//! with `Last-Event-ID` (a browser's `EventSource` does it by itself) is
//! sent what it missed first, if this replica still keeps it; an id of
//! another replica (the leader changed) gets everything kept. A caller
//! that falls too far behind is cut off rather than silently skipped, so
//! it reconnects and catches up that way.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::Scheduler;

/// Events kept for callers that (re)connect.
const KEPT: usize = 1000;
/// Events a live follower may fall behind by before it is cut off.
const LAG: usize = 1024;

/// One event: its sequence number and its JSON text.
type Numbered = (u64, Arc<str>);

/// The events of this replica.
pub(super) struct Events {
    epoch: u64,
    live: broadcast::Sender<Numbered>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    next: u64,
    recent: VecDeque<Numbered>,
}

impl Events {
    pub(super) fn new(epoch: u64) -> Events {
        Events {
            epoch,
            live: broadcast::channel(LAG).0,
            kept: Mutex::new(Kept::default()),
        }
    }

    fn publish(&self, text: String) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let n = kept.next;
        kept.next += 1;
        let text: Arc<str> = text.into();
        kept.recent.push_back((n, text.clone()));
        if kept.recent.len() > KEPT {
            kept.recent.pop_front();
        }
        // Under the lock: a caller subscribing meanwhile sees each event
        // either in what is kept or live, never both, never neither.
        let _ = self.live.send((n, text));
    }

    /// What a caller that saw up to `last` (or nothing, if `None`: then
    /// everything kept if `recent`) gets first, and the live events after.
    fn subscribe(
        &self,
        last: Option<&str>,
        recent: bool,
    ) -> (Vec<Numbered>, broadcast::Receiver<Numbered>) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.live.subscribe();
        let after: Option<u64> = match last {
            Some(id) => match id.split_once('-') {
                Some((epoch, seq)) if epoch == self.epoch.to_string() => seq.parse().ok(),
                // Another replica's id, or one that does not parse:
                // everything kept.
                _ => None,
            },
            None if recent => None,
            None => return (Vec::new(), rx),
        };
        let backlog = kept
            .recent
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| *n > a))
            .cloned()
            .collect();
        (backlog, rx)
    }
}

impl Scheduler {
    /// Publish event `kind` with `fields` (an object), stamped with the
    /// time.
    pub(super) fn event(&self, kind: &str, fields: serde_json::Value) {
        let mut value = fields;
        value["type"] = serde_json::Value::String(kind.to_string());
        value["time_ms"] = serde_json::Value::from(super::migrations::now_ms());
        tracing::info!(event = %value, "cluster event");
        self.events.publish(value.to_string());
    }
}

/// `GET /v1/events` query.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct EventsQuery {
    /// Send the events kept first (the last 1,000).
    #[serde(default)]
    recent: bool,
    /// Keep following (the default); `false`: end after what is kept.
    #[serde(default)]
    follow: Option<bool>,
}

/// `GET /v1/events`: cluster events as server-sent events, one JSON object
/// each, with ids; see the module's doc.
pub(super) async fn events(
    State(s): State<Arc<Scheduler>>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let last = headers
        .get(roam_proto::headers::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64);
    let (backlog, rx) = s.events.subscribe(last, q.recent);
    let epoch = s.events.epoch;
    let event = move |(n, text): Numbered| {
        Ok::<_, std::convert::Infallible>(
            Event::default()
                .id(format!("{epoch}-{n}"))
                .data(text.as_ref()),
        )
    };
    let backlog = futures_util::stream::iter(backlog).map(event);
    if q.follow == Some(false) {
        return Sse::new(backlog).into_response();
    }
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(numbered) => Some((numbered, rx)),
            // Too far behind: cut off; it reconnects with its last id and
            // gets what it missed from what is kept.
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .map(event);
    Sse::new(backlog.chain(live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(backlog: &[Numbered]) -> Vec<u64> {
        backlog.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn a_caller_gets_what_it_missed_and_then_the_live_ones() {
        let e = Events::new(7);
        for i in 0..5 {
            e.publish(format!("{{\"i\":{i}}}"));
        }
        // Live only, unless it asks for the recent ones.
        assert!(e.subscribe(None, false).0.is_empty());
        assert_eq!(seqs(&e.subscribe(None, true).0), [0, 1, 2, 3, 4]);
        // After its last id of this replica: what came after.
        assert_eq!(seqs(&e.subscribe(Some("7-2"), false).0), [3, 4]);
        assert!(e.subscribe(Some("7-4"), false).0.is_empty());
        // Another replica's id, or junk: everything kept.
        assert_eq!(e.subscribe(Some("8-2"), false).0.len(), 5);
        assert_eq!(e.subscribe(Some("junk"), false).0.len(), 5);
        // Then the live ones, none twice.
        let (backlog, mut rx) = e.subscribe(Some("7-3"), false);
        e.publish("{}".into());
        assert_eq!(seqs(&backlog), [4]);
        assert_eq!(rx.try_recv().unwrap().0, 5);
    }

    #[test]
    fn only_the_last_thousand_are_kept() {
        let e = Events::new(1);
        for _ in 0..(KEPT + 10) {
            e.publish("{}".into());
        }
        let all = e.subscribe(None, true).0;
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].0, 10);
    }
}
