//! One choice of an answer: where its tokens come from, and the logprob serialisers both routes share.

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

use crate::gen::{alternatives, Finish, LogprobGen, Lp, Pieces, WordGen};

/// Where a choice's tokens come from.
pub enum Source {
    /// Plain text, generated lazily (streams of any length cost no memory).
    Words(WordGen),
    /// Text decided up front (JSON content, tool arguments), cut into word pieces.
    Fixed { pieces: Pieces, finish: Finish },
}

/// The tool call a choice answers with (its `arguments` are the `Fixed` pieces).
pub struct ToolHead {
    pub id: String,
    pub name: String,
}

pub struct Choice {
    pub index: u32,
    pub src: Source,
    pub tool: Option<ToolHead>,
    lp: Option<LogprobGen>,
}

/// A token: a static word, or a byte range of the fixed text.
#[derive(Debug, Clone, Copy)]
pub enum Piece {
    Static(&'static str),
    Range(usize, usize),
}

impl Choice {
    pub fn new(index: u32, src: Source, tool: Option<ToolHead>, seed: u64, logprobs: bool) -> Self {
        Self {
            index,
            src,
            tool,
            lp: logprobs.then(|| LogprobGen::new(seed)),
        }
    }

    pub fn next_piece(&mut self) -> Option<Piece> {
        match &mut self.src {
            Source::Words(g) => g.next_token().map(Piece::Static),
            Source::Fixed { pieces, .. } => pieces.next_range().map(|(s, e)| Piece::Range(s, e)),
        }
    }

    pub fn text(&self, p: Piece) -> &str {
        match (p, &self.src) {
            (Piece::Static(s), _) => s,
            (Piece::Range(s, e), Source::Fixed { pieces, .. }) => {
                pieces.text().get(s..e).unwrap_or("")
            }
            (Piece::Range(..), Source::Words(_)) => "",
        }
    }

    pub fn finish(&self) -> Finish {
        if self.tool.is_some() {
            return Finish::ToolCalls;
        }
        match &self.src {
            Source::Words(g) => g.finish(),
            Source::Fixed { finish, .. } => *finish,
        }
    }

    /// Logprob of the next content token (`None` when not asked, or for tool arguments).
    pub fn next_lp(&mut self) -> Option<Lp> {
        if self.tool.is_some() {
            return None;
        }
        self.lp.as_mut().map(LogprobGen::next_lp)
    }
}

/// A choice run to the end (non-stream answers).
pub struct Collected {
    pub index: u32,
    pub text: String,
    /// (start, end, logprob) of each token in `text`; empty unless logprobs were asked.
    pub entries: Vec<(usize, usize, Lp)>,
    pub tokens: u64,
    pub finish: Finish,
    pub tool: Option<ToolHead>,
}

pub fn collect(mut c: Choice) -> Collected {
    let mut text = String::new();
    let mut entries = Vec::new();
    let mut tokens = 0u64;
    while let Some(p) = c.next_piece() {
        tokens += 1;
        let (s, e) = match p {
            Piece::Static(w) => {
                let s = text.len();
                text.push_str(w);
                (s, text.len())
            }
            Piece::Range(s, e) => (s, e),
        };
        if let Some(lp) = c.next_lp() {
            entries.push((s, e, lp));
        }
    }
    let finish = c.finish();
    if let Source::Fixed { pieces, .. } = c.src {
        text = pieces.text().to_owned();
    }
    Collected {
        index: c.index,
        text,
        entries,
        tokens,
        finish,
        tool: c.tool,
    }
}

/// `[u8]` of a token, serialised without allocating.
struct Utf8Bytes<'a>(&'a str);

impl Serialize for Utf8Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.bytes())
    }
}

#[derive(Serialize)]
struct TopEntry<'a> {
    token: &'a str,
    logprob: f64,
    bytes: Utf8Bytes<'a>,
}

/// One chat `ChatCompletionTokenLogprob`, with `top_logprobs` derived on the fly.
pub struct TokenLogprob<'a> {
    pub token: &'a str,
    pub lp: Lp,
    pub pos: u32,
    pub top: u8,
}

impl Serialize for TokenLogprob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("token", self.token)?;
        m.serialize_entry("logprob", &self.lp.logprob)?;
        m.serialize_entry("bytes", &Utf8Bytes(self.token))?;
        m.serialize_entry("top_logprobs", &TopList(self))?;
        m.end()
    }
}

struct TopList<'a, 'b>(&'b TokenLogprob<'a>);

impl Serialize for TopList<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        s.collect_seq(
            alternatives(t.token, t.lp, t.pos, t.top).map(|(token, logprob)| TopEntry {
                token,
                logprob,
                bytes: Utf8Bytes(token),
            }),
        )
    }
}

/// Chat `logprobs` object: `{"content":[…],"refusal":null}` over some tokens of a text.
pub struct ChatLogprobs<'a> {
    pub text: &'a str,
    pub entries: &'a [(usize, usize, Lp)],
    /// Position of the first entry within the choice (first tokens have no leading space).
    pub first_pos: u32,
    pub top: u8,
}

impl Serialize for ChatLogprobs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("content", &ChatContent(self))?;
        m.serialize_entry("refusal", &None::<()>)?;
        m.end()
    }
}

struct ChatContent<'a, 'b>(&'b ChatLogprobs<'a>);

impl Serialize for ChatContent<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = self.0;
        let mut seq = s.serialize_seq(Some(l.entries.len()))?;
        for (i, (st, en, lp)) in l.entries.iter().enumerate() {
            let token = l.text.get(*st..*en).unwrap_or("");
            seq.serialize_element(&TokenLogprob {
                token,
                lp: *lp,
                pos: l.first_pos.saturating_add(i as u32),
                top: l.top,
            })?;
        }
        seq.end()
    }
}

/// Legacy completions `logprobs`: `{"tokens","token_logprobs","top_logprobs":[{token: logprob}],"text_offset"}`.
pub struct LegacyLogprobs<'a> {
    pub text: &'a str,
    pub entries: &'a [(usize, usize, Lp)],
    pub first_pos: u32,
    pub top: u8,
    /// Added to each entry's start: the text offset of `text` within the whole completion.
    pub offset_base: usize,
}

impl Serialize for LegacyLogprobs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tok = |e: &(usize, usize, Lp)| self.text.get(e.0..e.1).unwrap_or("");
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("tokens", &Seq(|| self.entries.iter().map(tok)))?;
        m.serialize_entry(
            "token_logprobs",
            &Seq(|| self.entries.iter().map(|e| e.2.logprob)),
        )?;
        m.serialize_entry(
            "top_logprobs",
            &Seq(|| {
                self.entries.iter().enumerate().map(move |(i, e)| TopMap {
                    token: tok(e),
                    lp: e.2,
                    pos: self.first_pos.saturating_add(i as u32),
                    top: self.top,
                })
            }),
        )?;
        m.serialize_entry(
            "text_offset",
            &Seq(|| self.entries.iter().map(|e| self.offset_base + e.0)),
        )?;
        m.end()
    }
}

/// Serialises the iterator a closure makes (closure so `Serialize` can take `&self`).
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

struct TopMap<'a> {
    token: &'a str,
    lp: Lp,
    pos: u32,
    top: u8,
}

impl Serialize for TopMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(alternatives(self.token, self.lp, self.pos, self.top))
    }
}
