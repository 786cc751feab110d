//! Deterministic generation: a tiny PRNG, the word list, and the token sources a choice draws from.

use std::sync::Arc;

/// splitmix64: tiny, fast, good enough for test output (and keeps `rand` out of the build).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform-ish in `0..n` (`n == 0` gives 0). Modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The splitmix64 finaliser, also used to combine seeds.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, streamed over several pieces so callers need not concatenate the prompt.
#[derive(Debug, Clone)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Seed of one choice: prompt hash, request `seed` and choice index all matter.
pub fn choice_seed(prompt_hash: u64, seed: Option<u64>, index: u32) -> u64 {
    let base = mix(prompt_hash ^ mix(seed.unwrap_or(0x5EED)));
    mix(base.wrapping_add(u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// Words with a leading space, so a token (" " + word) is a static slice and costs no allocation.
#[rustfmt::skip]
pub const WORDS: [&str; 128] = [
    " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", " river", " stone", " light",
    " shadow", " garden", " window", " silver", " golden", " morning", " evening", " quiet", " bright",
    " mountain", " valley", " forest", " ocean", " cloud", " rain", " snow", " wind", " fire", " earth",
    " paper", " pencil", " table", " chair", " lamp", " door", " house", " road", " bridge", " tower",
    " city", " village", " market", " harbor", " island", " desert", " meadow", " orchard", " field", " farm",
    " apple", " orange", " lemon", " cherry", " grape", " bread", " cheese", " honey", " salt", " pepper",
    " red", " blue", " green", " yellow", " purple", " white", " black", " gray", " amber", " violet", " one",
    " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten", " runs", " walks",
    " sings", " reads", " writes", " builds", " opens", " closes", " finds", " keeps", " small", " large",
    " gentle", " swift", " calm", " bold", " warm", " cold", " soft", " loud", " music", " story", " letter",
    " number", " signal", " pattern", " engine", " answer", " question", " idea", " moment", " season",
    " journey", " circle", " square", " line", " point", " edge", " center", " north", " south", " east",
    " west", " above", " below", " inside", " outside", " again",
];

/// A word without its leading space.
pub fn bare_word(i: usize) -> &'static str {
    let w = WORDS[i % WORDS.len()];
    w.get(1..).unwrap_or(w)
}

/// Token text for word `i` at position `pos`: the first token has no leading space.
pub fn token_at(i: usize, pos: u32) -> &'static str {
    if pos == 0 {
        bare_word(i)
    } else {
        WORDS[i % WORDS.len()]
    }
}

/// Where a choice stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

/// Plain-text token source: words from the PRNG, cut by the length and by `stop` strings.
#[derive(Debug)]
pub struct WordGen {
    rng: SplitMix64,
    len: u32,
    cut_by_limit: bool,
    emitted: u32,
    stops: Arc<[String]>,
    /// Last bytes of the text: enough to spot a stop string that the next token would complete.
    tail: String,
    max_stop: usize,
    stopped: bool,
}

impl WordGen {
    /// `natural` overrides the 8..=24 natural length; `limit` is max_tokens; `default_cap` caps the drawn
    /// natural length when the request gives neither (`EngineConfig::max_tokens_default`).
    pub fn new(
        seed: u64,
        natural: Option<u32>,
        limit: Option<u32>,
        stops: Arc<[String]>,
        default_cap: u32,
    ) -> Self {
        let mut rng = SplitMix64::new(seed);
        // Drawn first so that the words do not depend on the limit: a cut answer is a prefix.
        let drawn = 8 + rng.below(17) as u32;
        let natural = match (natural, limit) {
            (Some(n), _) => n,
            (None, Some(_)) => drawn,
            (None, None) => drawn.min(default_cap),
        };
        let len = limit.map_or(natural, |l| l.min(natural));
        let max_stop = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            rng,
            len,
            cut_by_limit: len < natural,
            emitted: 0,
            stops,
            tail: String::new(),
            max_stop,
            stopped: false,
        }
    }

    /// The next token, or `None` when the choice is over.
    pub fn next_token(&mut self) -> Option<&'static str> {
        if self.stopped || self.emitted >= self.len {
            return None;
        }
        let tok = token_at(self.rng.below(WORDS.len() as u64) as usize, self.emitted);
        if self.max_stop > 0 {
            let old = self.tail.len();
            self.tail.push_str(tok);
            // Only an occurrence overlapping the new token can be new.
            let from = old.saturating_sub(self.max_stop - 1);
            let window = self.tail.get(from..).unwrap_or("");
            if self.stops.iter().any(|s| window.contains(s.as_str())) {
                self.stopped = true;
                return None;
            }
            let keep = self.max_stop;
            if self.tail.len() > keep * 2 + 64 {
                // Words are ASCII, so any byte index is a char boundary.
                let cut = self.tail.len() - keep;
                self.tail.drain(..cut);
            }
        }
        self.emitted += 1;
        Some(tok)
    }

    pub fn finish(&self) -> Finish {
        if !self.stopped && self.cut_by_limit {
            Finish::Length
        } else {
            Finish::Stop
        }
    }
}

/// Pieces of fixed text (JSON content, tool arguments): each piece is optional whitespace + one word,
/// so pieces concatenate back to the text and their count equals the word count.
#[derive(Debug, Clone)]
pub struct Pieces {
    text: String,
    pos: usize,
}

impl Pieces {
    pub fn new(text: String) -> Self {
        Self { text, pos: 0 }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte range of the next piece.
    pub fn next_range(&mut self) -> Option<(usize, usize)> {
        let rest = self.text.get(self.pos..)?;
        let mut seen_word = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if c.is_whitespace() {
                if seen_word {
                    end = i;
                    break;
                }
            } else {
                seen_word = true;
            }
        }
        if !seen_word {
            return None;
        }
        let start = self.pos;
        self.pos += end;
        Some((start, self.pos))
    }
}

/// Words in a text, as the engine counts tokens.
pub fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Deterministic logprobs: a token gets a value in (-3, 0]; its alternatives are lower.
#[derive(Debug, Clone)]
pub struct LogprobGen(SplitMix64);

/// One token's logprob and the seed its alternatives are derived from (computed when serialised).
#[derive(Debug, Clone, Copy)]
pub struct Lp {
    pub logprob: f64,
    pub alt_seed: u64,
}

impl LogprobGen {
    pub fn new(choice_seed: u64) -> Self {
        Self(SplitMix64::new(mix(choice_seed ^ 0x10_6970_7262)))
    }

    pub fn next_lp(&mut self) -> Lp {
        let logprob = -(self.0.next_f64() * 3.0);
        Lp {
            logprob: round6(logprob),
            alt_seed: self.0.next_u64(),
        }
    }
}

fn round6(x: f64) -> f64 {
    let r = (x * 1e6).round() / 1e6;
    if r == 0.0 {
        0.0 // never "-0.0"
    } else {
        r
    }
}

/// The k alternatives of a token: the token itself first, then distinct words with decreasing logprobs.
pub fn alternatives(
    token: &str,
    lp: Lp,
    pos: u32,
    k: u8,
) -> impl Iterator<Item = (&str, f64)> + '_ {
    let mut rng = SplitMix64::new(lp.alt_seed);
    let start = rng.below(WORDS.len() as u64) as usize;
    let first = (k > 0).then_some((token, lp.logprob));
    let others = (0..WORDS.len())
        .map(move |j| token_at(start + j, pos))
        .filter(move |w| *w != token)
        .take(usize::from(k).saturating_sub(1))
        .enumerate()
        .map(move |(j, w)| (w, round6(lp.logprob - 0.75 * (j as f64 + 1.0))));
    first.into_iter().chain(others)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn collect(mut g: WordGen) -> (String, Finish) {
        let mut s = String::new();
        while let Some(t) = g.next_token() {
            s.push_str(t);
        }
        (s, g.finish())
    }

    #[test]
    fn words_are_ascii_and_spaced() {
        for w in WORDS {
            assert!(w.starts_with(' ') && w.len() > 1 && w.is_ascii() && !w[1..].contains(' '));
        }
    }

    #[test]
    fn natural_length_and_prefix() {
        let none: Arc<[String]> = Arc::from(Vec::new());
        let (full, f) = collect(WordGen::new(42, None, None, none.clone(), u32::MAX));
        let n = count_words(&full);
        assert!((8..=24).contains(&n), "{n}");
        assert_eq!(f, Finish::Stop);
        assert!(!full.starts_with(' '));
        let (cut, f) = collect(WordGen::new(42, None, Some(3), none.clone(), 4));
        assert_eq!(count_words(&cut), 3);
        assert_eq!(f, Finish::Length);
        assert!(full.starts_with(&cut));
        let (long, _) = collect(WordGen::new(42, Some(1000), None, none.clone(), 4));
        // The default cap only shortens the drawn length, and only without max_tokens or an override.
        let (capped, f) = collect(WordGen::new(42, None, None, none, 4));
        assert_eq!((count_words(&capped), f), (4, Finish::Stop));
        assert!(full.starts_with(&capped));
        assert_eq!(count_words(&long), 1000);
    }

    #[test]
    fn stop_strings_cut_before() {
        let none: Arc<[String]> = Arc::from(Vec::new());
        let (full, _) = collect(WordGen::new(7, Some(200), None, none, 4));
        let words: Vec<&str> = full.split(' ').collect();
        let stop = format!("{} {}", words[5], words[6]);
        let (cut, f) = collect(WordGen::new(
            7,
            Some(200),
            None,
            Arc::from(vec![stop.clone()]),
            4,
        ));
        assert!(!cut.contains(&stop));
        assert!(full.starts_with(&cut));
        assert_eq!(f, Finish::Stop);
        assert!(count_words(&cut) <= 6);
    }

    #[test]
    fn pieces_roundtrip() {
        let text = "{\"a\": [1, 2],  \"b\": \"x y\"}".to_string();
        let mut p = Pieces::new(text.clone());
        let mut out = String::new();
        let mut n = 0;
        while let Some((s, e)) = p.next_range() {
            out.push_str(&text[s..e]);
            n += 1;
        }
        assert_eq!(out, text);
        assert_eq!(n, count_words(&text));
        assert_eq!(Pieces::new(String::new()).next_range(), None);
    }

    #[test]
    fn alternatives_sorted_distinct() {
        let mut g = LogprobGen::new(1);
        let lp = g.next_lp();
        assert!(lp.logprob <= 0.0);
        let alts: Vec<_> = alternatives(" fox", lp, 3, 5).collect();
        assert_eq!(alts.len(), 5);
        assert_eq!(alts[0].0, " fox");
        for w in alts.windows(2) {
            assert!(w[0].1 > w[1].1);
            assert_ne!(w[0].0, w[1].0);
        }
        assert_eq!(alternatives("x", lp, 0, 0).count(), 0);
    }
}
