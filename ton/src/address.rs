//! TON addresses: raw (`0:…`) and user-friendly (base64 or base64url, 36 bytes: tag,
//! workchain, hash, CRC16) forms. Parsing checks the checksum, the tag and the workchain,
//! and refuses a testnet-only address on mainnet and a mainnet address on testnet. The
//! ledger stores the raw form.

use std::fmt;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use tonlib_core::{TonAddress, TonHash};

use crate::config::Network;

const TAG_BOUNCEABLE: u8 = 0x11;
const TAG_NON_BOUNCEABLE: u8 = 0x51;
const TAG_TESTNET: u8 = 0x80;

/// An internal address on workchain 0 or -1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub workchain: i32,
    pub hash: [u8; 32],
}

/// What [`parse_address`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedAddress {
    pub address: Address,
    /// The bounce flag of a user-friendly form; `None` for the raw form.
    pub bounceable: Option<bool>,
    /// Whether a user-friendly form carried the testnet-only flag.
    pub testnet_only: bool,
}

impl ParsedAddress {
    /// Bounceable unless the owner gave a non-bounceable form.
    pub fn bounceable_or_default(&self) -> bool {
        self.bounceable.unwrap_or(true)
    }
}

/// Why an address string was refused. Messages quote at most 64 characters of the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty address")]
    Empty,
    #[error("raw address {0:?}: expected <workchain>:<64 hex digits>")]
    BadRaw(String),
    #[error("address {0:?}: neither raw (wc:hex) nor 48 characters of base64")]
    BadLength(String),
    #[error("address {0:?}: invalid base64")]
    BadBase64(String),
    #[error("address {0:?}: unknown tag byte 0x{1:02x}")]
    BadTag(String, u8),
    #[error("address {0:?}: checksum mismatch (mistyped or truncated)")]
    BadChecksum(String),
    #[error("address {0:?}: workchain {1} is not supported (only 0 and -1)")]
    BadWorkchain(String, i32),
    #[error("address {0:?} is flagged testnet-only, but this is mainnet")]
    TestnetOnMainnet(String),
    #[error("address {0:?} is a mainnet address, but this is testnet")]
    MainnetOnTestnet(String),
}

fn quoted(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn crc16(data: &[u8]) -> u16 {
    // CRC-16/XMODEM: poly 0x1021, init 0.
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Parses any form of an address for use on `network`.
pub fn parse_address(s: &str, network: Network) -> Result<ParsedAddress, AddressError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if let Some((wc, hex_part)) = s.split_once(':') {
        let workchain: i32 = wc.parse().map_err(|_| AddressError::BadRaw(quoted(s)))?;
        if hex_part.len() != 64 {
            return Err(AddressError::BadRaw(quoted(s)));
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut hash).map_err(|_| AddressError::BadRaw(quoted(s)))?;
        if workchain != 0 && workchain != -1 {
            return Err(AddressError::BadWorkchain(quoted(s), workchain));
        }
        return Ok(ParsedAddress {
            address: Address { workchain, hash },
            bounceable: None,
            testnet_only: false,
        });
    }
    if s.len() != 48 {
        return Err(AddressError::BadLength(quoted(s)));
    }
    let url_safe = s.contains(['-', '_']);
    let standard = s.contains(['+', '/']);
    let bytes = match (url_safe, standard) {
        (true, true) => return Err(AddressError::BadBase64(quoted(s))),
        (true, false) => URL_SAFE_NO_PAD.decode(s),
        // Neither special character: both alphabets agree.
        (false, _) => STANDARD_NO_PAD.decode(s),
    }
    .map_err(|_| AddressError::BadBase64(quoted(s)))?;
    let bytes: [u8; 36] = bytes
        .try_into()
        .map_err(|_| AddressError::BadLength(quoted(s)))?;
    let tag = bytes[0];
    let testnet_only = tag & TAG_TESTNET != 0;
    let bounceable = match tag & !TAG_TESTNET {
        TAG_BOUNCEABLE => true,
        TAG_NON_BOUNCEABLE => false,
        _ => return Err(AddressError::BadTag(quoted(s), tag)),
    };
    let crc = crc16(&bytes[..34]);
    if crc.to_be_bytes() != [bytes[34], bytes[35]] {
        return Err(AddressError::BadChecksum(quoted(s)));
    }
    let workchain = i32::from(bytes[1] as i8);
    if workchain != 0 && workchain != -1 {
        return Err(AddressError::BadWorkchain(quoted(s), workchain));
    }
    match (network, testnet_only) {
        (Network::Mainnet, true) => return Err(AddressError::TestnetOnMainnet(quoted(s))),
        (Network::Testnet, false) => return Err(AddressError::MainnetOnTestnet(quoted(s))),
        _ => {}
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[2..34]);
    Ok(ParsedAddress {
        address: Address { workchain, hash },
        bounceable: Some(bounceable),
        testnet_only,
    })
}

impl Address {
    /// Raw form, lowercase: what the ledger stores.
    pub fn to_raw(&self) -> String {
        format!("{}:{}", self.workchain, hex::encode(self.hash))
    }

    /// Parses the raw form only (any case), e.g. addresses the API or the ledger gives.
    pub fn from_raw(s: &str) -> Result<Address, AddressError> {
        if !s.contains(':') {
            return Err(AddressError::BadRaw(quoted(s)));
        }
        // The network only matters for user-friendly forms.
        Ok(parse_address(s, Network::Mainnet)?.address)
    }

    /// Any form, whatever its network flag: for addresses the API itself reports, never
    /// for addresses users give (use [`parse_address`] for those).
    pub fn from_api(s: &str) -> Option<Address> {
        parse_address(s, Network::Mainnet)
            .or_else(|_| parse_address(s, Network::Testnet))
            .ok()
            .map(|p| p.address)
    }

    /// User-friendly url-safe form with the given flags.
    pub fn to_friendly(&self, bounceable: bool, testnet: bool) -> String {
        let mut bytes = [0u8; 36];
        bytes[0] = if bounceable {
            TAG_BOUNCEABLE
        } else {
            TAG_NON_BOUNCEABLE
        } | if testnet { TAG_TESTNET } else { 0 };
        // Only 0 and -1 are constructed by parsing; the low byte is the i8 workchain.
        bytes[1] = self.workchain.to_le_bytes()[0];
        bytes[2..34].copy_from_slice(&self.hash);
        let crc = crc16(&bytes[..34]);
        bytes[34..].copy_from_slice(&crc.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(crate) fn to_ton(self) -> TonAddress {
        TonAddress::new(self.workchain, TonHash::from(self.hash))
    }

    pub(crate) fn from_ton(a: &TonAddress) -> Address {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(a.hash_part.as_slice());
        Address {
            workchain: a.workchain,
            hash,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_raw())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_raw())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // The v4r2 wallet of tonlib-core's test mnemonic, as tonlib-core's own test spells it.
    const FRIENDLY: &str = "EQCDM_QGggZ3qMa_f3lRPk4_qLDnLTqdi6OkMAV2NB9r5TG3";

    #[test]
    fn forms_round_trip() {
        let p = parse_address(FRIENDLY, Network::Mainnet).unwrap();
        assert_eq!(p.bounceable, Some(true));
        assert!(!p.testnet_only);
        let a = p.address;
        assert_eq!(a.to_friendly(true, false), FRIENDLY);
        let raw = a.to_raw();
        assert!(raw.starts_with("0:") && raw.len() == 66);
        let r = parse_address(&raw.to_uppercase(), Network::Testnet).unwrap();
        assert_eq!((r.address, r.bounceable), (a, None));
        assert_eq!(Address::from_raw(&raw).unwrap(), a);
        // Standard base64 of the same bytes.
        let std_form = FRIENDLY.replace('_', "/").replace('-', "+");
        assert_eq!(
            parse_address(&std_form, Network::Mainnet).unwrap().address,
            a
        );
        // Non-bounceable and testnet flags.
        let nb = a.to_friendly(false, false);
        assert!(nb.starts_with("UQ"));
        assert_eq!(
            parse_address(&nb, Network::Mainnet).unwrap().bounceable,
            Some(false)
        );
        let t = a.to_friendly(false, true);
        assert!(t.starts_with("0Q"));
        let pt = parse_address(&t, Network::Testnet).unwrap();
        assert_eq!(
            (pt.address, pt.bounceable, pt.testnet_only),
            (a, Some(false), true)
        );
        // TonAddress agrees.
        assert_eq!(a.to_ton().to_base64_url(), FRIENDLY);
        assert_eq!(Address::from_ton(&a.to_ton()), a);
        // Masterchain.
        let m = Address {
            workchain: -1,
            hash: [7; 32],
        };
        assert_eq!(
            parse_address(&m.to_friendly(true, false), Network::Mainnet)
                .unwrap()
                .address,
            m
        );
        assert_eq!(
            parse_address(&m.to_raw(), Network::Mainnet)
                .unwrap()
                .address,
            m
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let a = parse_address(FRIENDLY, Network::Mainnet).unwrap().address;
        type Case = (String, Network, fn(&AddressError) -> bool);
        let cases: Vec<Case> = vec![
            ("".into(), Network::Mainnet, |e| {
                matches!(e, AddressError::Empty)
            }),
            ("   ".into(), Network::Mainnet, |e| {
                matches!(e, AddressError::Empty)
            }),
            ("0:abc".into(), Network::Mainnet, |e| {
                matches!(e, AddressError::BadRaw(_))
            }),
            (format!("x:{}", "a".repeat(64)), Network::Mainnet, |e| {
                matches!(e, AddressError::BadRaw(_))
            }),
            (format!("0:{}", "g".repeat(64)), Network::Mainnet, |e| {
                matches!(e, AddressError::BadRaw(_))
            }),
            (format!("1:{}", "a".repeat(64)), Network::Mainnet, |e| {
                matches!(e, AddressError::BadWorkchain(_, 1))
            }),
            ("EQCDM_QGggZ3".into(), Network::Mainnet, |e| {
                matches!(e, AddressError::BadLength(_))
            }),
            (
                "E".repeat(5000),
                Network::Mainnet,
                |e| matches!(e, AddressError::BadLength(q) if q.chars().count() <= 65),
            ),
            (FRIENDLY.replacen('_', "/", 1), Network::Mainnet, |e| {
                matches!(e, AddressError::BadBase64(_))
            }),
            (format!("{}!", &FRIENDLY[..47]), Network::Mainnet, |e| {
                matches!(e, AddressError::BadBase64(_))
            }),
            // One character changed: the checksum catches it.
            (
                "EQCDM_QGggZ3qMa_f3lRPk4_qLDnLTqdi6OkMAV2NB9r5TG4".to_string(),
                Network::Mainnet,
                |e| matches!(e, AddressError::BadChecksum(_)),
            ),
            (
                format!("{}A{}", &FRIENDLY[..10], &FRIENDLY[11..]),
                Network::Mainnet,
                |e| matches!(e, AddressError::BadChecksum(_)),
            ),
            (a.to_friendly(true, true), Network::Mainnet, |e| {
                matches!(e, AddressError::TestnetOnMainnet(_))
            }),
            (a.to_friendly(true, false), Network::Testnet, |e| {
                matches!(e, AddressError::MainnetOnTestnet(_))
            }),
        ];
        for (s, net, ok) in cases {
            let e = parse_address(&s, net).unwrap_err();
            assert!(ok(&e), "{s:?}: {e}");
            assert!(!e.to_string().is_empty());
        }
        // A bad tag byte with a valid checksum.
        let mut bytes = [0u8; 36];
        bytes[0] = 0x12;
        let crc = crc16(&bytes[..34]);
        bytes[34..].copy_from_slice(&crc.to_be_bytes());
        let s = URL_SAFE_NO_PAD.encode(bytes);
        assert!(matches!(
            parse_address(&s, Network::Mainnet),
            Err(AddressError::BadTag(_, 0x12))
        ));
        // Workchain 5 with a valid checksum.
        let mut bytes = [0u8; 36];
        bytes[0] = TAG_BOUNCEABLE;
        bytes[1] = 5;
        let crc = crc16(&bytes[..34]);
        bytes[34..].copy_from_slice(&crc.to_be_bytes());
        let s = URL_SAFE_NO_PAD.encode(bytes);
        assert!(matches!(
            parse_address(&s, Network::Mainnet),
            Err(AddressError::BadWorkchain(_, 5))
        ));
    }
}
