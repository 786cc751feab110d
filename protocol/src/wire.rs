//! Binary encoding of router <-> worker messages on a network link: MessagePack with named
//! fields (so either side can add optional fields), byte payloads as MessagePack `bin`
//! (JSON would turn every streamed chunk into an array of numbers).

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
}

/// Largest message either side accepts (a job body is bounded by the gateway's body limit).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    Ok(rmp_serde::to_vec_named(msg)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{JobEvent, RouterToWorker, WorkerToRouter};
    use bytes::Bytes;

    #[test]
    fn chunks_stay_compact_and_round_trip() {
        let data = Bytes::from(vec![b'x'; 1000]);
        let msg = WorkerToRouter::Event {
            job_id: uuid::Uuid::nil(),
            event: JobEvent::Chunk { data: data.clone() },
        };
        let enc = encode(&msg).unwrap();
        assert!(enc.len() < 1100, "chunk encoded in {} bytes", enc.len());
        match decode::<WorkerToRouter>(&enc).unwrap() {
            WorkerToRouter::Event { event: JobEvent::Chunk { data: d }, .. } => assert_eq!(d, data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"\xff\xff", b"\x81\xa4type\xa3job", &[0x92; 64]] {
            assert!(decode::<RouterToWorker>(input).is_err());
        }
    }
}
