//! `roam events [-f]`: the scheduler's event stream (`GET /v1/events`,
//! server-sent events), the events it keeps first. Following, a broken
//! stream (a scheduler restarted, the leader changed) is joined again
//! with the id of the last event seen, so nothing kept is missed or
//! printed twice.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use reqwest::Method;
use roam_proto::{headers, paths};

use super::ops::{Output, block_on, client};

/// A line of the stream longer than this is not one of the scheduler's.
const MAX_LINE: usize = 1 << 20;

/// One event of the stream: its id and its data.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    id: Option<String>,
    data: String,
}

/// Reads server-sent events from chunks of bytes.
#[derive(Default)]
struct SseReader {
    buffer: Vec<u8>,
    current: SseEvent,
}

impl SseReader {
    /// Take `chunk`; the events it completes.
    fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<SseEvent>> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.current.data.is_empty() {
                    out.push(std::mem::take(&mut self.current));
                } else {
                    self.current = SseEvent::default();
                }
                continue;
            }
            // `:` starts a comment (the keep-alives).
            let (field, value) = match line.split_once(':') {
                Some(("", _)) => continue,
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                "id" => self.current.id = Some(value.to_string()),
                _ => {}
            }
            if self.current.data.len() > MAX_LINE {
                bail!("an event of over {MAX_LINE} bytes: not the scheduler's stream");
            }
        }
        if self.buffer.len() > MAX_LINE {
            bail!("a line of over {MAX_LINE} bytes: not the scheduler's stream");
        }
        Ok(out)
    }
}

/// An event as a line: its time, its type, then its fields.
fn line(event: &serde_json::Value) -> String {
    let time = event["time_ms"]
        .as_u64()
        .map(|ms| {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        })
        .unwrap_or_default();
    let kind = event["type"].as_str().unwrap_or("event");
    let mut out = format!("{time} {kind}");
    if let Some(fields) = event.as_object() {
        for (k, v) in fields {
            if k == "type" || k == "time_ms" || v.is_null() {
                continue;
            }
            match v {
                serde_json::Value::String(s) => out.push_str(&format!(" {k}={s}")),
                other => out.push_str(&format!(" {k}={other}")),
            }
        }
    }
    out
}

/// `roam events [-f] [-o json]`
pub fn events(follow: bool, output: Output) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let mut last: Option<String> = None;
        let mut broke_at: Option<SystemTime> = None;
        loop {
            let follow_query = if follow { "true" } else { "false" };
            let mut rb = c
                .request(Method::GET, &paths::events())
                .query(&[("recent", "true"), ("follow", follow_query)]);
            if let Some(id) = &last {
                rb = rb.header(headers::LAST_EVENT_ID, id);
            }
            let mut r = match c.send(rb).await {
                Ok(r) => r,
                Err(e) if follow && last.is_some() => {
                    // Gone for a moment (a restart, a new leader): again.
                    tracing::debug!(error = %e, "the event stream broke; joining again");
                    let since = *broke_at.get_or_insert_with(SystemTime::now);
                    if since.elapsed().unwrap_or_default() > Duration::from_secs(60) {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            broke_at = None;
            let mut reader = SseReader::default();
            loop {
                let chunk = match r.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => break,
                };
                for e in reader.feed(&chunk)? {
                    if e.id.is_some() {
                        last = e.id.clone();
                    }
                    match output {
                        Output::Json => println!("{}", e.data),
                        Output::Table => match serde_json::from_str(&e.data) {
                            Ok(v) => println!("{}", line(&v)),
                            Err(_) => println!("{}", e.data),
                        },
                    }
                }
            }
            if !follow {
                return Ok(ExitCode::SUCCESS);
            }
            // Ended by the scheduler (it restarted, or this caller fell
            // behind): join again after the last event seen.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Wake `changed` at each event of the scheduler's stream, for ever:
/// what `roam get -w` looks again on. A broken stream is joined again.
pub(super) async fn on_each_event(
    c: super::client::Client,
    changed: std::sync::Arc<tokio::sync::Notify>,
) {
    loop {
        let rb = c
            .request(Method::GET, &paths::events())
            .query(&[("follow", "true")]);
        if let Ok(mut r) = c.send(rb).await {
            let mut reader = SseReader::default();
            while let Ok(Some(chunk)) = r.chunk().await {
                match reader.feed(&chunk) {
                    Ok(events) if events.is_empty() => {}
                    Ok(_) => changed.notify_one(),
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunks_with_their_ids() {
        let mut r = SseReader::default();
        assert!(r.feed(b": keep-alive\n\nid: 1-0\nda").unwrap().is_empty());
        let got = r
            .feed(b"ta: {\"a\":1}\n\nid: 1-1\ndata: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            got,
            [
                SseEvent {
                    id: Some("1-0".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: Some("1-1".into()),
                    data: "x".into()
                }
            ]
        );
        assert!(r.feed(&vec![b'x'; MAX_LINE + 1]).is_err(), "bounded");
    }

    #[test]
    fn an_event_prints_as_one_line() {
        let v = serde_json::json!({"type": "host_down", "time_ms": 0, "host": "eu-1", "n": 2});
        assert_eq!(line(&v), "1970-01-01T00:00:00.000Z host_down host=eu-1 n=2");
    }
}
