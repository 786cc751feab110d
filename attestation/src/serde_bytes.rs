//! Serde helpers. In human-readable formats (JSON, TOML) blobs are standard base64 and
//! fixed-size values (keys, hashes, measurements, nonces) lowercase hex; in binary formats
//! (MessagePack on the worker link) both are plain byte strings.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Decodes a string with `text` or takes raw bytes/sequences as they are.
struct BytesVisitor<F: Fn(&str) -> Result<Vec<u8>, String>>(F);

impl<'de, F: Fn(&str) -> Result<Vec<u8>, String>> Visitor<'de> for BytesVisitor<F> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a byte string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        (self.0)(v).map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

fn decode_b64(text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text.as_bytes())
        .map_err(|e| format!("invalid base64: {e}"))
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    hex::decode(text.trim()).map_err(|e| format!("invalid hex: {e}"))
}

/// `Vec<u8>` as base64 (human-readable formats) or bytes.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(BytesVisitor(decode_b64))
        } else {
            d.deserialize_byte_buf(BytesVisitor(decode_b64))
        }
    }
}

/// `[u8; N]` as exactly `2 * N` hex digits (human-readable formats) or `N` bytes.
pub mod hex_array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let v = if d.is_human_readable() {
            d.deserialize_str(BytesVisitor(decode_hex))?
        } else {
            d.deserialize_byte_buf(BytesVisitor(decode_hex))?
        };
        let len = v.len();
        <[u8; N]>::try_from(v).map_err(|_| {
            de::Error::custom(format!(
                "expected {N} bytes ({} hex digits), got {len} bytes",
                N * 2
            ))
        })
    }
}

/// Parses exactly `N` bytes of hex (either case).
pub fn parse_hex_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|e| format!("expected {} hex digits ({N} bytes): {e}", N * 2))?;
    Ok(out)
}
