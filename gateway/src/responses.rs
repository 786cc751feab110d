//! SSE framing of a Responses API stream (`POST /v1/responses` with `stream: true`).
//!
//! The worker produces the events themselves (worker-agent `responses`, inside the TEE);
//! the gateway only frames them as OpenAI does: `event: <type>` before each `data:` line,
//! and no `[DONE]` (the stream ends after `response.completed`). As `[DONE]` does for chat,
//! the terminal event (`response.completed` or `response.incomplete`) waits until the
//! charge is durable, so a stream whose capture fails never ends as a success; the receipt
//! comment precedes it. A failure mid-stream becomes OpenAI's `error` event, numbered after
//! the last event relayed. `cocoon client-proxy` frames the Responses streams it opens
//! (end to end sealed) with the same code, holding the terminal event until the answer's
//! final frame and receipt have been checked.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ApiError;

/// Per-stream state of the framing.
#[derive(Default)]
pub struct ResponsesFraming {
    /// The `sequence_number` of the last event relayed.
    last_seq: Option<u64>,
    /// The terminal event, held until the capture is durable.
    terminal: Option<Bytes>,
    /// Its data: the final Response object, which a `store: true` request keeps.
    terminal_data: Option<Bytes>,
}

#[derive(serde::Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    sequence_number: Option<u64>,
}

fn event_frame(kind: &str, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(kind.len() + data.len() + 16);
    b.put_slice(b"event: ");
    b.put_slice(kind.as_bytes());
    b.put_slice(b"\ndata: ");
    b.put_slice(data);
    b.put_slice(b"\n\n");
    b.freeze()
}

impl ResponsesFraming {
    /// One event from the worker as SSE; `None` for the terminal event, which is held.
    pub fn event(&mut self, data: &[u8]) -> Option<Bytes> {
        let p = match serde_json::from_slice::<Peek>(data) {
            // A type that would break the `event:` line cannot be one.
            Ok(p) if !p.kind.contains(['\n', '\r']) => p,
            // Not an event the worker makes; relayed as a bare `data:` line rather than lost.
            _ => return Some(crate::relay::frame(data)),
        };
        if p.sequence_number.is_some() {
            self.last_seq = p.sequence_number;
        }
        let f = event_frame(&p.kind, data);
        if matches!(p.kind.as_str(), "response.completed" | "response.incomplete") {
            self.terminal = Some(f);
            self.terminal_data = Some(Bytes::copy_from_slice(data));
            return None;
        }
        Some(f)
    }

    /// The final Response object the terminal event carries, once it came.
    pub fn terminal_response(&self) -> Option<serde_json::Value> {
        let data = self.terminal_data.as_ref()?;
        let mut v: serde_json::Value = serde_json::from_slice(data).ok()?;
        Some(v.get_mut("response")?.take())
    }

    /// The end of a stream whose charge is durable: the receipt comment, then the held event.
    pub fn end(&mut self, receipt: Option<Bytes>) -> Bytes {
        let mut b = BytesMut::new();
        if let Some(r) = receipt {
            b.put_slice(&r);
        }
        if let Some(t) = self.terminal.take() {
            b.put_slice(&t);
        }
        b.freeze()
    }

    /// OpenAI's `error` stream event for a failure.
    pub fn error(&mut self, err: &ApiError) -> Bytes {
        self.error_body(&err.into_body_json())
    }

    /// OpenAI's `error` stream event for an OpenAI error body (`{"error": {…}}`), numbered
    /// after the last event; a held terminal event is dropped.
    pub fn error_body(&mut self, body: &[u8]) -> Bytes {
        self.terminal = None;
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let e = &body["error"];
        let seq = self.last_seq.map_or(0, |s| s + 1);
        self.last_seq = Some(seq);
        let ev = serde_json::json!({
            "type": "error",
            "code": e.get("code").cloned().unwrap_or_default(),
            "message": e.get("message").and_then(|m| m.as_str()).unwrap_or("error"),
            "param": e.get("param").cloned().unwrap_or_default(),
            "sequence_number": seq,
        });
        event_frame("error", ev.to_string().as_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_events_and_holds_the_terminal_one() {
        let mut f = ResponsesFraming::default();
        let a = f.event(br#"{"type":"response.created","sequence_number":0}"#).unwrap();
        assert_eq!(&a[..], b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n");
        assert!(f.event(br#"{"type":"response.completed","sequence_number":1}"#).is_none());
        let end = f.end(Some(Bytes::from_static(b": cocoon-receipt x\n\n")));
        assert!(end.starts_with(b": cocoon-receipt x\n\nevent: response.completed\n"));
    }

    #[test]
    fn a_type_that_would_break_the_event_line_is_relayed_as_bare_data() {
        let mut f = ResponsesFraming::default();
        let out = f.event(b"{\"type\":\"x\\ndata: forged\"}").unwrap();
        assert!(out.starts_with(b"data: {"), "{out:?}");
    }

    #[test]
    fn a_failure_is_an_error_event_numbered_after_the_last() {
        let mut f = ResponsesFraming::default();
        f.event(br#"{"type":"response.created","sequence_number":0}"#);
        f.event(br#"{"type":"response.in_progress","sequence_number":1}"#);
        let e = f.error(&ApiError::Upstream { status: 502, message: "engine stream broke".into(), body: None });
        let text = std::str::from_utf8(&e).unwrap();
        let data: serde_json::Value = serde_json::from_str(text.strip_prefix("event: error\ndata: ").unwrap().trim_end()).unwrap();
        assert_eq!(data["type"], "error");
        assert_eq!(data["sequence_number"], 2);
        assert_eq!(data["message"], "engine stream broke");
        assert_eq!(data["code"], "upstream_error");
    }
}
