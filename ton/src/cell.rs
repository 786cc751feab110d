//! Text comments (op 0 + UTF-8 in a snake of cells) and BOC (de)serialisation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use tonlib_core::cell::{ArcCell, BagOfCells, Cell, CellBuilder};

use crate::error::{Error, Result};

/// Longest comment, in bytes, that is decoded; longer ones are refused (deposit codes are
/// 8 characters: a comment this long is never one).
pub const MAX_COMMENT_BYTES: usize = 1024;
/// Largest BOC (base64 characters) accepted from the API for a message body.
pub const MAX_BODY_BOC_CHARS: usize = 64 * 1024;
/// Bytes of data in a cell (1023 bits, byte-aligned).
const CELL_BYTES: usize = 127;

/// Why a message body is not a usable comment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    /// A body with an op other than 0 (a contract call, not a comment), or with fewer than
    /// 32 bits.
    #[error("not a text comment (op {0})")]
    NotAComment(String),
    #[error("comment is not valid UTF-8")]
    BadUtf8,
    /// Longer than [`MAX_COMMENT_BYTES`]; `prefix` holds the start, lossily decoded.
    #[error("comment longer than {MAX_COMMENT_BYTES} bytes")]
    TooLong { prefix: String },
    /// The BOC or the snake itself is broken (not byte-aligned, two references, ...).
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// The generic BOC magic (`b5ee9c72`), after which a flags byte says whether a CRC32C of
/// everything before it ends the BOC.
const BOC_MAGIC: [u8; 4] = [0xb5, 0xee, 0x9c, 0x72];

/// CRC32C (Castagnoli, reflected), as a BOC's trailer carries it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Parses a base64 (standard or url-safe) BOC with one root. toncenter serves message
/// bodies with a CRC32C (base64 `te6cck…`); the CRC is checked here (tonlib-core reads
/// it without checking). BOCs without one (`te6ccg…`) are read too. The parser is
/// guarded against panics: the bytes come from the network.
pub fn parse_boc(b64: &str) -> std::result::Result<ArcCell, String> {
    let bytes = STANDARD
        .decode(b64.trim())
        .or_else(|_| URL_SAFE.decode(b64.trim()))
        .map_err(|_| "invalid base64".to_owned())?;
    if bytes.len() > 9 && bytes[..4] == BOC_MAGIC && bytes[4] & 0x40 != 0 {
        let (data, tail) = bytes.split_at(bytes.len() - 4);
        let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32c(data) != want {
            return Err("invalid BOC: CRC32C mismatch".to_owned());
        }
    }
    match catch_unwind(AssertUnwindSafe(|| {
        BagOfCells::parse(&bytes).and_then(|b| b.single_root())
    })) {
        Ok(Ok(root)) => Ok(root),
        Ok(Err(e)) => Err(format!("invalid BOC: {e}")),
        Err(_) => Err("invalid BOC (parser panicked)".to_owned()),
    }
}

/// A cell as a base64 BOC without CRC (`te6ccg…`; toncenter's own bodies carry one,
/// and accepts ours either way).
pub fn to_boc_b64(cell: &Cell) -> Result<String> {
    let boc = BagOfCells::from_root(cell.clone())
        .serialize(false)
        .map_err(|e| Error::Message(e.to_string()))?;
    Ok(STANDARD.encode(boc))
}

/// The comment body: op 0, then the UTF-8 bytes, continued in a chain of single
/// references (snake) when they do not fit one cell.
pub fn comment_cell(text: &str) -> Result<Cell> {
    let bytes = text.as_bytes();
    let first = bytes.len().min(CELL_BYTES - 4);
    let (head, tail) = bytes.split_at(first);
    let chunks: Vec<&[u8]> = tail.chunks(CELL_BYTES).collect();
    let err = |e: tonlib_core::cell::TonCellError| Error::Message(e.to_string());
    // Build from the end of the chain.
    let mut next: Option<ArcCell> = None;
    for chunk in chunks.iter().rev() {
        let mut b = CellBuilder::new();
        b.store_slice(chunk).map_err(err)?;
        if let Some(n) = &next {
            b.store_reference(n).map_err(err)?;
        }
        next = Some(Arc::new(b.build().map_err(err)?));
    }
    let mut b = CellBuilder::new();
    b.store_u32(32, 0).map_err(err)?;
    b.store_slice(head).map_err(err)?;
    if let Some(n) = &next {
        b.store_reference(n).map_err(err)?;
    }
    b.build().map_err(err)
}

/// Decodes a message body: `Ok(None)` for an empty body, `Ok(Some(text))` for a text
/// comment. The bytes of all cells are joined first and decoded once (a multi-byte
/// character may straddle cells).
pub fn decode_comment(body: &Cell) -> std::result::Result<Option<String>, CommentError> {
    let malformed = |e: tonlib_core::cell::TonCellError| CommentError::Malformed(e.to_string());
    if body.bit_len() == 0 && body.references().is_empty() {
        return Ok(None);
    }
    if body.bit_len() < 32 {
        return Err(CommentError::NotAComment(format!(
            "missing: {} bits",
            body.bit_len()
        )));
    }
    let mut parser = body.parser();
    let op = parser.load_u32(32).map_err(malformed)?;
    if op != 0 {
        return Err(CommentError::NotAComment(format!("0x{op:08x}")));
    }
    let mut bytes = Vec::new();
    let mut cell = body;
    let mut skip_bits = 32;
    loop {
        let bits = cell.bit_len() - skip_bits;
        if !bits.is_multiple_of(8) {
            return Err(CommentError::Malformed(format!(
                "{bits} bits of text in a cell: not whole bytes"
            )));
        }
        let mut p = cell.parser();
        p.skip_bits(skip_bits).map_err(malformed)?;
        let chunk = p.load_bytes(bits / 8).map_err(malformed)?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_COMMENT_BYTES {
            let prefix = String::from_utf8_lossy(&bytes[..256.min(bytes.len())]).into_owned();
            return Err(CommentError::TooLong { prefix });
        }
        match cell.references() {
            [] => break,
            [next] => {
                cell = next;
                skip_bits = 0;
            }
            refs => {
                return Err(CommentError::Malformed(format!(
                    "a comment cell with {} references",
                    refs.len()
                )))
            }
        }
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CommentError::BadUtf8)
}

/// [`decode_comment`] of a base64 BOC, refusing oversized input before decoding it.
pub fn decode_comment_boc(b64: &str) -> std::result::Result<Option<String>, CommentError> {
    if b64.len() > MAX_BODY_BOC_CHARS {
        return Err(CommentError::TooLong {
            prefix: String::new(),
        });
    }
    let cell = parse_boc(b64).map_err(CommentError::Malformed)?;
    decode_comment(&cell)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(text: &str) {
        let cell = comment_cell(text).unwrap();
        assert_eq!(decode_comment(&cell).unwrap().as_deref(), Some(text));
        let b64 = to_boc_b64(&cell).unwrap();
        assert_eq!(decode_comment_boc(&b64).unwrap().as_deref(), Some(text));
    }

    #[test]
    fn comments_round_trip() {
        round_trip("");
        round_trip("AB12CD34");
        round_trip(&"x".repeat(123));
        round_trip(&"x".repeat(124));
        round_trip(&"é".repeat(300)); // two-byte characters straddle cell boundaries
        round_trip(&"🙂".repeat(200)); // 800 bytes, 7 cells
        let long = comment_cell(&"y".repeat(500)).unwrap();
        assert_eq!(long.bit_len(), 1016, "first cell is full");
        assert_eq!(long.references().len(), 1);
    }

    #[test]
    fn bad_bodies() {
        // Empty body.
        let empty = CellBuilder::new().build().unwrap();
        assert_eq!(decode_comment(&empty).unwrap(), None);
        // Short body, non-zero op.
        let short = CellBuilder::new().store_u8(8, 1).unwrap().build().unwrap();
        assert!(matches!(
            decode_comment(&short),
            Err(CommentError::NotAComment(_))
        ));
        let op = CellBuilder::new()
            .store_u32(32, 0x0f8a_7ea5)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            decode_comment(&op),
            Err(CommentError::NotAComment("0x0f8a7ea5".into()))
        );
        // Invalid UTF-8, split across cells or not.
        let tail = CellBuilder::new()
            .store_slice(&[0xa9])
            .unwrap()
            .build()
            .unwrap();
        let head = CellBuilder::new()
            .store_u32(32, 0)
            .unwrap()
            .store_slice(&[b'a', 0xc3])
            .unwrap()
            .store_reference(&Arc::new(tail))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(decode_comment(&head).unwrap().as_deref(), Some("aé"));
        let bad = CellBuilder::new()
            .store_u32(32, 0)
            .unwrap()
            .store_slice(&[0xff, 0xfe])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(decode_comment(&bad), Err(CommentError::BadUtf8));
        // Not whole bytes.
        let bits = CellBuilder::new()
            .store_u32(32, 0)
            .unwrap()
            .store_u8(4, 3)
            .unwrap()
            .build()
            .unwrap();
        assert!(matches!(
            decode_comment(&bits),
            Err(CommentError::Malformed(_))
        ));
        // Two references.
        let r = Arc::new(CellBuilder::new().build().unwrap());
        let two = CellBuilder::new()
            .store_u32(32, 0)
            .unwrap()
            .store_reference(&r)
            .unwrap()
            .store_reference(&r)
            .unwrap()
            .build()
            .unwrap();
        assert!(matches!(
            decode_comment(&two),
            Err(CommentError::Malformed(_))
        ));
        // Too long: refused after MAX_COMMENT_BYTES, with a prefix for review.
        let huge = comment_cell(&"z".repeat(5000)).unwrap();
        match decode_comment(&huge) {
            Err(CommentError::TooLong { prefix }) => assert_eq!(prefix, "z".repeat(256)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_comment_boc(&"A".repeat(MAX_BODY_BOC_CHARS + 1)),
            Err(CommentError::TooLong { .. })
        ));
        assert!(matches!(
            decode_comment_boc("%%%"),
            Err(CommentError::Malformed(_))
        ));
        assert!(matches!(
            decode_comment_boc("AAAA"),
            Err(CommentError::Malformed(_))
        ));
    }

    /// A body as toncenter serves it (`te6cck…`, with CRC32C; this one from the recorded
    /// testnet response in tests/fixtures/real/) parses; the same with a flipped bit in
    /// the data is refused by its CRC, and the CRC-less form of the same cell parses.
    #[test]
    fn bocs_with_crc() {
        let real = "te6cckEBAQEAEAAAHAAAAAAxOTg1NTk3NjUxSmLi/w==";
        assert_eq!(
            decode_comment_boc(real).unwrap().as_deref(),
            Some("1985597651")
        );
        let bytes = STANDARD.decode(real).unwrap();
        assert_eq!(bytes[4] & 0x40, 0x40, "has_crc32c");
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let mut flipped = bytes.clone();
        let at = flipped.len() - 6;
        flipped[at] ^= 0x01;
        let e = parse_boc(&STANDARD.encode(&flipped)).unwrap_err();
        assert!(e.contains("CRC32C"), "{e}");
        let cell = parse_boc(real).unwrap();
        let plain = to_boc_b64(&cell).unwrap();
        assert!(plain.starts_with("te6ccg"), "{plain}");
        assert_eq!(
            decode_comment_boc(&plain).unwrap().as_deref(),
            Some("1985597651")
        );
    }

    /// Truncated and bit-flipped BOCs never panic the caller.
    #[test]
    fn mangled_bocs_are_errors() {
        let cell = comment_cell(&"fuzz ".repeat(60)).unwrap();
        let boc = BagOfCells::from_root(cell).serialize(true).unwrap();
        let mut seed: u64 = 0x5eed;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..3000 {
            let mut b = boc.clone();
            match i % 3 {
                0 => b.truncate((next() as usize) % b.len()),
                1 => {
                    let at = (next() as usize) % b.len();
                    b[at] ^= 1 << (next() % 8);
                }
                _ => {
                    for _ in 0..4 {
                        let at = (next() as usize) % b.len();
                        b[at] = next() as u8;
                    }
                }
            }
            let _ = decode_comment_boc(&STANDARD.encode(&b));
        }
    }
}
