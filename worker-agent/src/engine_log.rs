//! The engine's own output (stdout and stderr), kept bounded and free of request contents.
//!
//! The supervisor pipes both streams here. Each line is cut at [`MAX_LINE`] bytes, lines that
//! come from an engine's request or response logger are withheld (see [`withheld`]), the last
//! [`TAIL_LINES`] lines stay in memory (start-up failures quote them), and, when a file is
//! configured, lines are appended to it and the file is rotated once it reaches its size
//! limit (one previous file, `<file>.1`, is kept). So a worker always has the engine's recent
//! output to show, and never more than twice the limit on disk.
//!
//! The worker refuses the engine flags that log prompts in production (`engine_policy`); the
//! filter here is a second line of defence for output that slips through (a flag it does not
//! know, an engine that logs bodies at debug level).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Lines kept in memory.
pub const TAIL_LINES: usize = 200;
/// A longer line is cut here (an engine printing a whole request on one line stays bounded).
pub const MAX_LINE: usize = 2048;

/// What replaces a withheld line.
const WITHHELD: &str = "[cocoon: a line of the engine's request/response logging was withheld]";

/// Markers of lines that carry request or response contents. From vLLM v0.11:
/// `vllm/entrypoints/logger.py` (`RequestLogger.log_inputs` "Received request …: prompt: …",
/// `log_outputs` "Generated response …: output: …", on with `--enable-log-requests` /
/// `--enable-log-outputs`), `vllm/entrypoints/openai/api_server.py` (`response_body=` with
/// `VLLM_DEBUG_LOG_API_SERVER_RESPONSE`). llama-server at its default verbosity prints no
/// request contents (the e2e test `real_engine` checks its log for the prompt).
const CONTENT_MARKERS: [&str; 3] = ["Received request ", "Generated response ", "response_body="];

/// Whether a line may carry request contents and is withheld.
pub fn withheld(line: &str) -> bool {
    CONTENT_MARKERS.iter().any(|m| line.contains(m))
}

#[derive(Debug)]
struct Inner {
    tail: VecDeque<String>,
    file: Option<FileSink>,
    withheld: u64,
}

#[derive(Debug)]
struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    written: u64,
    file: Option<std::fs::File>,
}

impl FileSink {
    fn open(path: PathBuf, max_bytes: u64) -> Self {
        let (file, written) = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                (Some(f), len)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the engine log file; keeping the output in memory only");
                (None, 0)
            }
        };
        Self {
            path,
            max_bytes,
            written,
            file,
        }
    }

    fn write_line(&mut self, line: &str) {
        if self.written + line.len() as u64 + 1 > self.max_bytes && self.written > 0 {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            if writeln!(f, "{line}").is_ok() {
                self.written += line.len() as u64 + 1;
            }
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let _ = std::fs::rename(&self.path, &old);
        *self = Self::open(self.path.clone(), self.max_bytes);
    }
}

/// The engine's recent output; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct EngineLog {
    inner: Arc<Mutex<Inner>>,
}

impl EngineLog {
    /// `file`: also append here, rotating at `max_bytes` (at least 64 KiB).
    pub fn new(file: Option<PathBuf>, max_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                tail: VecDeque::with_capacity(TAIL_LINES),
                file: file.map(|p| FileSink::open(p, max_bytes.max(64 * 1024))),
                withheld: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One line of output (without its newline).
    pub fn push(&self, raw: &[u8]) {
        let mut line = String::from_utf8_lossy(&raw[..raw.len().min(MAX_LINE)]).into_owned();
        if raw.len() > MAX_LINE {
            line.push_str(" [cut]");
        }
        let line = line.trim_end_matches('\r').to_string();
        let mut inner = self.lock();
        let line = if withheld(&line) {
            inner.withheld += 1;
            WITHHELD.to_string()
        } else {
            line
        };
        if let Some(f) = inner.file.as_mut() {
            f.write_line(&line);
        }
        if inner.tail.len() == TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.tail.push_back(line);
    }

    /// A marker between engine runs, so the tail says which run a line came from.
    pub fn note(&self, text: &str) {
        self.push(format!("--- cocoon: {text} ---").as_bytes());
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let inner = self.lock();
        inner.tail.iter().skip(inner.tail.len().saturating_sub(n)).cloned().collect()
    }

    /// Lines withheld because they looked like request contents.
    pub fn withheld_lines(&self) -> u64 {
        self.lock().withheld
    }

    /// Reads `stream` to its end, line by line; a line longer than [`MAX_LINE`] is cut and the
    /// rest of it skipped, so memory stays bounded whatever the engine prints.
    pub async fn drain(self, mut stream: impl AsyncRead + Unpin) {
        let mut buf = vec![0u8; 8192];
        let mut line: Vec<u8> = Vec::with_capacity(256);
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    self.push(&line);
                    line.clear();
                } else if line.len() <= MAX_LINE {
                    // One byte over the limit is kept, so `push` marks the line as cut.
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            self.push(&line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_tail_and_withholds_request_logging() {
        let log = EngineLog::new(None, 0);
        for i in 0..(TAIL_LINES + 10) {
            log.push(format!("line {i}").as_bytes());
        }
        let tail = log.tail(3);
        assert_eq!(tail, vec![format!("line {}", TAIL_LINES + 7), format!("line {}", TAIL_LINES + 8), format!("line {}", TAIL_LINES + 9)]);
        assert_eq!(log.tail(10_000).len(), TAIL_LINES);
        // vLLM v0.11's RequestLogger line (vllm/entrypoints/logger.py), as it prints it.
        log.push(b"INFO 10-07 12:00:00 [logger.py:40] Received request chatcmpl-1: prompt: 'the secret prompt', params: SamplingParams(n=1), prompt_token_ids: None, prompt_embeds shape: None, lora_request: None.");
        log.push(b"INFO 10-07 12:00:01 [logger.py:71] Generated response chatcmpl-1: output: 'the secret answer', output_token_ids: None, finish_reason: stop");
        let all = log.tail(2).join("\n");
        assert!(!all.contains("secret"), "{all}");
        assert_eq!(log.withheld_lines(), 2);
        let long = vec![b'x'; MAX_LINE * 3];
        log.push(&long);
        assert!(log.tail(1)[0].len() <= MAX_LINE + 10);
    }

    #[tokio::test]
    async fn rotates_the_file_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.log");
        let log = EngineLog::new(Some(path.clone()), 64 * 1024);
        let text: String = (0..5_000).map(|i| format!("engine says {i:06}\n")).collect();
        log.clone().drain(text.as_bytes()).await;
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("engine.log.1")).unwrap().len();
        assert!(now <= 64 * 1024 && old <= 64 * 1024, "{now} {old}");
        assert_eq!(log.tail(1), vec!["engine says 004999".to_string()]);
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("engine says 004999\n"));
        // A line with no end in sight stays bounded.
        let long = format!("{}\nafter\n", "y".repeat(100_000));
        log.clone().drain(long.as_bytes()).await;
        let tail = log.tail(2);
        assert!(tail[0].ends_with("[cut]") && tail[0].len() < MAX_LINE + 16, "{}", tail[0].len());
        assert_eq!(tail[1], "after");
    }
}
