//! Incremental Server-Sent Events parser: yields the `data` of each event as bytes arrive,
//! however the engine splits them across reads. Handles `\n`, `\r\n` and `\r` line ends,
//! multi-line data, comments and other fields (ignored).

use bytes::{Buf, Bytes, BytesMut};

#[derive(Default)]
pub(crate) struct SseParser {
    buf: BytesMut,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event's data, if one is buffered.
    pub(crate) fn next_data(&mut self) -> Option<Bytes> {
        loop {
            let (line_len, eol_len) = find_line(&self.buf)?;
            let line = self.buf.split_to(line_len);
            self.buf.advance(eol_len);
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    return Some(Bytes::from(std::mem::take(&mut self.data)));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(rest);
                self.has_data = true;
            }
            // Comments (":") and other fields (event, id, retry) carry nothing we relay.
        }
    }
}

/// Length of the first line and of its terminator, if a whole line is buffered.
fn find_line(buf: &[u8]) -> Option<(usize, usize)> {
    let i = buf.iter().position(|&b| b == b'\n' || b == b'\r')?;
    if buf[i] == b'\r' {
        match buf.get(i + 1) {
            Some(b'\n') => Some((i, 2)),
            Some(_) => Some((i, 1)),
            // A lone '\r' at the end may be the first half of "\r\n": wait for more.
            None => None,
        }
    } else {
        Some((i, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = p.next_data() {
            out.push(String::from_utf8_lossy(&d).into_owned());
        }
        out
    }

    #[test]
    fn splits_events_across_arbitrary_reads() {
        let text = "data: {\"a\":1}\n\n: comment\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        for cut in 0..text.len() {
            let mut p = SseParser::default();
            let mut got = Vec::new();
            p.push(&text.as_bytes()[..cut]);
            got.extend(all(&mut p));
            p.push(&text.as_bytes()[cut..]);
            got.extend(all(&mut p));
            assert_eq!(got, vec!["{\"a\":1}", "{\"b\":2}", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn joins_multiline_data_and_ignores_other_fields() {
        let mut p = SseParser::default();
        p.push(b"event: x\nid: 3\ndata: line1\ndata:line2\n\n");
        assert_eq!(all(&mut p), vec!["line1\nline2"]);
    }

    #[test]
    fn incomplete_event_waits() {
        let mut p = SseParser::default();
        p.push(b"data: {\"a\":1}\n");
        assert!(p.next_data().is_none());
        p.push(b"\n");
        assert_eq!(all(&mut p), vec!["{\"a\":1}"]);
    }
}
