//! The network's rules on chain: the policy registry contract (`contracts/registry.tolk`,
//! layout in `contracts/README.md`). This module encodes the owner's updates and decodes
//! what the contract's get-methods return, both exactly as the README specifies; the
//! `@ton/sandbox` tests run the same cells on the compiled contract (`scripts/ton-tests`).
//!
//! ```text
//! Item::{Tdx, Snp, Model, GpuDriver, GpuVbios, GpuGolden, Endpoint}  // one list each
//! item.to_cell() / Item::from_cell(kind, cell) / item.key()          // key = cell hash
//! Params { prices, max_price_coefficient, fee_bps, gpu_require, … }  // one cell
//! messages::{add_item, remove_item, set_params, set_owner}          // owner message bodies
//! messages::deploy(owner, &params) -> Deploy { address, state_init } // code: the committed build
//! RegistryReader::new(api, address).read() -> RegistryPolicy         // toncenter runGetMethod
//! ```
//!
//! Everything read from the chain is decoded strictly: an item that does not re-encode to
//! the cell it came from, a dictionary key that is not its item's hash, an unknown kind or
//! stray bits are errors, never skipped, so a policy read is either the contract's whole
//! state or a refusal.

pub mod messages;
pub mod owner;
mod reader;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use num_bigint::BigUint;
use serde::{Deserialize, Serialize};
use tonlib_core::cell::{ArcCell, Cell, CellBuilder, CellParser, TonCellError};

use crate::address::Address;
use crate::error::{Error, Result};

pub use reader::RegistryReader;

/// Bytes of a TDX register (MRTD, RTMR) and of a SEV-SNP launch measurement.
const MEASUREMENT_BYTES: usize = 48;
/// Longest model id (8 + 94·8 + 256 bits fit one cell).
pub const MAX_MODEL_ID_BYTES: usize = 94;
/// Longest GPU driver or VBIOS version string and golden value.
pub const MAX_TEXT_BYTES: usize = 64;
/// Longest endpoint URL (8 + 256 + 8 + 93·8 bits fit one cell).
pub const MAX_URL_BYTES: usize = 93;

/// The seven lists, by their kind number on chain.
pub const KIND_TDX: u8 = 1;
pub const KIND_SNP: u8 = 2;
pub const KIND_MODEL: u8 = 3;
pub const KIND_GPU_DRIVER: u8 = 4;
pub const KIND_GPU_VBIOS: u8 = 5;
pub const KIND_GPU_GOLDEN: u8 = 6;
pub const KIND_ENDPOINT: u8 = 7;

fn bad(detail: impl Into<String>) -> Error {
    Error::Registry(detail.into())
}

fn cell_err(e: TonCellError) -> Error {
    Error::Registry(e.to_string())
}

/// One approved TDX image. An RTMR may be `"any"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxImage {
    pub mrtd: String,
    pub rtmr0: String,
    pub rtmr1: String,
    pub rtmr2: String,
    pub rtmr3: String,
}

/// Who serves at an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Gateway,
    Router,
}

/// A gateway or router the network publishes, with the SHA-256 of its TLS key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub role: Role,
    pub url: String,
    pub tls_sha256: String,
}

/// One entry of one list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Tdx(TdxImage),
    /// A SEV-SNP launch measurement (hex).
    Snp(String),
    /// One allowed weight digest (SHA-256 hex) of a model id.
    Model { id: String, sha256: String },
    GpuDriver(String),
    GpuVbios(String),
    /// A golden value (hex) of GPU measurement block `index`.
    GpuGolden { index: u8, value: String },
    Endpoint(Endpoint),
}

/// Fixed-size hex, lowercase; `what` names it in the error.
fn hex_exact(text: &str, bytes: usize, what: &str) -> Result<Vec<u8>> {
    match hex::decode(text) {
        Ok(b) if b.len() == bytes => Ok(b),
        _ => Err(bad(format!("{what} {text:?} is not {bytes} bytes of hex"))),
    }
}

fn text_bytes<'a>(text: &'a str, max: usize, what: &str) -> Result<&'a [u8]> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > max {
        return Err(bad(format!("{what} {text:?} must be 1 to {max} bytes")));
    }
    Ok(b)
}

fn store_len_text(b: &mut CellBuilder, bytes: &[u8]) -> Result<()> {
    b.store_u8(8, u8::try_from(bytes.len()).map_err(|_| bad("text too long"))?)
        .map_err(cell_err)?;
    b.store_slice(bytes).map_err(cell_err)?;
    Ok(())
}

fn load_len_text(p: &mut CellParser, max: usize, what: &str) -> Result<Vec<u8>> {
    let len = usize::from(p.load_u8(8).map_err(cell_err)?);
    if len == 0 || len > max {
        return Err(bad(format!("{what} of {len} bytes (1 to {max} allowed)")));
    }
    p.load_bytes(len).map_err(cell_err)
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// A cell's representation hash.
pub fn hash32(c: &Cell) -> [u8; 32] {
    let mut h = [0u8; 32];
    h.copy_from_slice(c.cell_hash().as_slice());
    h
}

fn cell_of(f: impl FnOnce(&mut CellBuilder) -> Result<()>) -> Result<Cell> {
    let mut b = CellBuilder::new();
    f(&mut b)?;
    b.build().map_err(cell_err)
}

/// An RTMR: 48 bytes, all zero when it is `"any"` (the `any` mask says which).
fn rtmr_bytes(pattern: &str) -> Result<(bool, Vec<u8>)> {
    if pattern.eq_ignore_ascii_case("any") {
        Ok((true, vec![0; MEASUREMENT_BYTES]))
    } else {
        Ok((false, hex_exact(pattern, MEASUREMENT_BYTES, "RTMR")?))
    }
}

impl Item {
    pub fn kind(&self) -> u8 {
        match self {
            Item::Tdx(_) => KIND_TDX,
            Item::Snp(_) => KIND_SNP,
            Item::Model { .. } => KIND_MODEL,
            Item::GpuDriver(_) => KIND_GPU_DRIVER,
            Item::GpuVbios(_) => KIND_GPU_VBIOS,
            Item::GpuGolden { .. } => KIND_GPU_GOLDEN,
            Item::Endpoint(_) => KIND_ENDPOINT,
        }
    }

    /// The item's cell, exactly as `contracts/README.md` lays it out. Refuses values the
    /// contract would refuse (lengths, hex sizes).
    pub fn to_cell(&self) -> Result<Cell> {
        match self {
            Item::Tdx(t) => {
                let mrtd = hex_exact(&t.mrtd, MEASUREMENT_BYTES, "MRTD")?;
                let r: Vec<(bool, Vec<u8>)> = [&t.rtmr0, &t.rtmr1, &t.rtmr2, &t.rtmr3]
                    .into_iter()
                    .map(|p| rtmr_bytes(p))
                    .collect::<Result<_>>()?;
                let mask = r
                    .iter()
                    .enumerate()
                    .fold(0u8, |m, (i, (any, _))| if *any { m | (8 >> i) } else { m });
                let pair = |a: &[u8], b: &[u8]| {
                    cell_of(|c| {
                        c.store_slice(a).map_err(cell_err)?;
                        c.store_slice(b).map_err(cell_err)?;
                        Ok(())
                    })
                    .map(Arc::new)
                };
                let low = pair(&r[0].1, &r[1].1)?;
                let high = pair(&r[2].1, &r[3].1)?;
                cell_of(|c| {
                    c.store_slice(&mrtd).map_err(cell_err)?;
                    c.store_u8(4, mask).map_err(cell_err)?;
                    c.store_reference(&low).map_err(cell_err)?;
                    c.store_reference(&high).map_err(cell_err)?;
                    Ok(())
                })
            }
            Item::Snp(m) => {
                let m = hex_exact(m, MEASUREMENT_BYTES, "SEV-SNP measurement")?;
                cell_of(|c| c.store_slice(&m).map(|_| ()).map_err(cell_err))
            }
            Item::Model { id, sha256 } => {
                let idb = text_bytes(id, MAX_MODEL_ID_BYTES, "model id")?;
                let d = hex_exact(sha256, 32, "weights digest")?;
                cell_of(|c| {
                    store_len_text(c, idb)?;
                    c.store_slice(&d).map_err(cell_err)?;
                    Ok(())
                })
            }
            Item::GpuDriver(v) | Item::GpuVbios(v) => {
                let b = text_bytes(v, MAX_TEXT_BYTES, "GPU version")?;
                cell_of(|c| store_len_text(c, b))
            }
            Item::GpuGolden { index, value } => {
                let v = hex::decode(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.len() <= MAX_TEXT_BYTES)
                    .ok_or_else(|| bad(format!("golden value {value:?} is not 1 to 64 bytes of hex")))?;
                cell_of(|c| {
                    c.store_u8(8, *index).map_err(cell_err)?;
                    store_len_text(c, &v)
                })
            }
            Item::Endpoint(e) => {
                let url = text_bytes(&e.url, MAX_URL_BYTES, "endpoint URL")?;
                let fp = hex_exact(&e.tls_sha256, 32, "TLS key SHA-256")?;
                cell_of(|c| {
                    let role = match e.role {
                        Role::Gateway => 0,
                        Role::Router => 1,
                    };
                    c.store_u8(8, role).map_err(cell_err)?;
                    c.store_slice(&fp).map_err(cell_err)?;
                    store_len_text(c, url)
                })
            }
        }
    }

    /// The item's key in its list: its cell's representation hash.
    pub fn key(&self) -> Result<[u8; 32]> {
        Ok(hash32(&self.to_cell()?))
    }

    /// Decodes a list entry of `kind`. Strict: the cell must be exactly what
    /// [`Item::to_cell`] makes of the decoded value.
    pub fn from_cell(kind: u8, cell: &Cell) -> Result<Item> {
        let mut p = cell.parser();
        let item = match kind {
            KIND_TDX => {
                let mrtd = p.load_bytes(MEASUREMENT_BYTES).map_err(cell_err)?;
                let mask = p.load_u8(4).map_err(cell_err)?;
                let low = p.next_reference().map_err(cell_err)?;
                let high = p.next_reference().map_err(cell_err)?;
                let mut regs = Vec::with_capacity(4);
                for half in [&low, &high] {
                    let mut q = half.parser();
                    for _ in 0..2 {
                        regs.push(q.load_bytes(MEASUREMENT_BYTES).map_err(cell_err)?);
                    }
                }
                let pat = |i: usize| {
                    if mask & (8 >> i) != 0 {
                        "any".to_owned()
                    } else {
                        hex::encode(&regs[i])
                    }
                };
                Item::Tdx(TdxImage {
                    mrtd: hex::encode(mrtd),
                    rtmr0: pat(0),
                    rtmr1: pat(1),
                    rtmr2: pat(2),
                    rtmr3: pat(3),
                })
            }
            KIND_SNP => Item::Snp(hex::encode(
                p.load_bytes(MEASUREMENT_BYTES).map_err(cell_err)?,
            )),
            KIND_MODEL => {
                let id = utf8(load_len_text(&mut p, MAX_MODEL_ID_BYTES, "model id")?, "model id")?;
                let d = p.load_bytes(32).map_err(cell_err)?;
                Item::Model {
                    id,
                    sha256: hex::encode(d),
                }
            }
            KIND_GPU_DRIVER | KIND_GPU_VBIOS => {
                let v = utf8(load_len_text(&mut p, MAX_TEXT_BYTES, "GPU version")?, "GPU version")?;
                if kind == KIND_GPU_DRIVER {
                    Item::GpuDriver(v)
                } else {
                    Item::GpuVbios(v)
                }
            }
            KIND_GPU_GOLDEN => {
                let index = p.load_u8(8).map_err(cell_err)?;
                let v = load_len_text(&mut p, MAX_TEXT_BYTES, "golden value")?;
                Item::GpuGolden {
                    index,
                    value: hex::encode(v),
                }
            }
            KIND_ENDPOINT => {
                let role = match p.load_u8(8).map_err(cell_err)? {
                    0 => Role::Gateway,
                    1 => Role::Router,
                    r => return Err(bad(format!("endpoint role {r} (0 gateway, 1 router)"))),
                };
                let fp = p.load_bytes(32).map_err(cell_err)?;
                let url = utf8(load_len_text(&mut p, MAX_URL_BYTES, "endpoint URL")?, "endpoint URL")?;
                Item::Endpoint(Endpoint {
                    role,
                    url,
                    tls_sha256: hex::encode(fp),
                })
            }
            k => return Err(bad(format!("unknown list kind {k}"))),
        };
        // Canonical: the decoded value re-encodes to this very cell (no stray bits or
        // references, zero bits under an "any" RTMR).
        if item.to_cell()?.cell_hash() != cell.cell_hash() {
            return Err(bad(format!(
                "list {kind}: an entry is not in canonical form (extra bits or references)"
            )));
        }
        Ok(item)
    }
}

/// Prices in nanoTON per 1,000,000 tokens of each class (`billing::Price`'s unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub prompt: u64,
    pub cached_prompt: u64,
    pub completion: u64,
    pub reasoning: u64,
}

impl Prices {
    /// All zero: the registry publishes no price (the ledger's own prices stay in force).
    pub fn is_unset(&self) -> bool {
        *self == Prices::default()
    }
}

/// GPU architectures by bit of `gpu_architectures`.
const ARCHITECTURES: [&str; 1] = ["hopper"];
/// GPU protection modes by bit of `gpu_protection_modes`.
const PROTECTION_MODES: [&str; 3] = ["spt", "mpt", "ppcie"];

/// The registry's single-valued settings (the `Params` cell).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub prices: Prices,
    /// Thousandths; the highest price coefficient a worker may declare.
    pub max_price_coefficient: u32,
    pub fee_bps: u16,
    pub gpu_require: bool,
    /// Names from [`ARCHITECTURES`]; empty: any.
    pub gpu_architectures: Vec<String>,
    /// Names from [`PROTECTION_MODES`]; empty: any.
    pub gpu_protection_modes: Vec<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            prices: Prices::default(),
            max_price_coefficient: 4000,
            fee_bps: 500,
            gpu_require: false,
            gpu_architectures: Vec::new(),
            gpu_protection_modes: Vec::new(),
        }
    }
}

fn mask_of(names: &[String], table: &[&str], what: &str) -> Result<u8> {
    names.iter().try_fold(0u8, |m, n| {
        let n = n.to_ascii_lowercase();
        table
            .iter()
            .position(|t| *t == n)
            .map(|i| m | (1 << i))
            .ok_or_else(|| bad(format!("unknown {what} {n:?} (known: {})", table.join(", "))))
    })
}

fn names_of(mask: u8, table: &[&str], what: &str) -> Result<Vec<String>> {
    if u32::from(mask) >> table.len() != 0 {
        return Err(bad(format!("{what} mask {mask:#04x} has unknown bits")));
    }
    Ok(table
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect())
}

impl Params {
    pub fn validate(&self) -> Result<()> {
        if self.max_price_coefficient < 1000 {
            return Err(bad(format!(
                "max_price_coefficient {} is below 1000 (1.0x)",
                self.max_price_coefficient
            )));
        }
        if self.fee_bps > 10_000 {
            return Err(bad(format!("fee_bps {} is above 10000", self.fee_bps)));
        }
        mask_of(&self.gpu_architectures, &ARCHITECTURES, "GPU architecture")?;
        mask_of(&self.gpu_protection_modes, &PROTECTION_MODES, "GPU protection mode")?;
        Ok(())
    }

    pub fn to_cell(&self) -> Result<Cell> {
        self.validate()?;
        let arch = mask_of(&self.gpu_architectures, &ARCHITECTURES, "GPU architecture")?;
        let modes = mask_of(&self.gpu_protection_modes, &PROTECTION_MODES, "GPU protection mode")?;
        let p = &self.prices;
        cell_of(|c| {
            for v in [p.prompt, p.cached_prompt, p.completion, p.reasoning] {
                c.store_coins(&BigUint::from(v)).map_err(cell_err)?;
            }
            c.store_u32(32, self.max_price_coefficient).map_err(cell_err)?;
            c.store_u16(16, self.fee_bps).map_err(cell_err)?;
            c.store_bit(self.gpu_require).map_err(cell_err)?;
            c.store_u8(8, arch).map_err(cell_err)?;
            c.store_u8(8, modes).map_err(cell_err)?;
            Ok(())
        })
    }

    pub fn from_cell(cell: &Cell) -> Result<Params> {
        let mut p = cell.parser();
        let mut coin = || -> Result<u64> {
            let v = p.load_coins().map_err(cell_err)?;
            u64::try_from(&v).map_err(|_| bad(format!("price {v} does not fit 64 bits")))
        };
        let prices = Prices {
            prompt: coin()?,
            cached_prompt: coin()?,
            completion: coin()?,
            reasoning: coin()?,
        };
        let max_price_coefficient = p.load_u32(32).map_err(cell_err)?;
        let fee_bps = p.load_u16(16).map_err(cell_err)?;
        let gpu_require = p.load_bit().map_err(cell_err)?;
        let arch = p.load_u8(8).map_err(cell_err)?;
        let modes = p.load_u8(8).map_err(cell_err)?;
        let params = Params {
            prices,
            max_price_coefficient,
            fee_bps,
            gpu_require,
            gpu_architectures: names_of(arch, &ARCHITECTURES, "GPU architecture")?,
            gpu_protection_modes: names_of(modes, &PROTECTION_MODES, "GPU protection mode")?,
        };
        params.validate()?;
        if params.to_cell()?.cell_hash() != cell.cell_hash() {
            return Err(bad("params cell is not in canonical form (extra bits or references)"));
        }
        Ok(params)
    }
}

/// The GPU part of [`RegistryPolicy`] (`attestation::nvidia::GpuPolicy`'s fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryGpu {
    pub require: bool,
    pub allowed_architectures: Vec<String>,
    pub allowed_protection_modes: Vec<String>,
    pub allowed_driver_versions: Vec<String>,
    pub allowed_vbios_versions: Vec<String>,
    pub measurements: Vec<RegistryGolden>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryGolden {
    pub index: u8,
    pub allowed: Vec<String>,
}

/// The whole on-chain policy at one version, in canonical order (every list sorted), so
/// two reads of the same state compare equal and print the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryPolicy {
    pub version: u32,
    /// Raw form, lowercase (`0:…`).
    pub owner: String,
    pub prices: Prices,
    pub max_price_coefficient: u32,
    pub fee_bps: u16,
    pub gpu: RegistryGpu,
    pub tdx: Vec<TdxImage>,
    pub snp: Vec<String>,
    pub models: BTreeMap<String, Vec<String>>,
    pub endpoints: Vec<Endpoint>,
}

impl RegistryPolicy {
    /// The policy of a registry at `version` holding `params` and `items`, in canonical order.
    pub fn from_parts(version: u32, owner: &Address, params: Params, items: Vec<Item>) -> RegistryPolicy {
        let mut p = RegistryPolicy {
            version,
            owner: owner.to_raw().to_ascii_lowercase(),
            prices: params.prices,
            max_price_coefficient: params.max_price_coefficient,
            fee_bps: params.fee_bps,
            gpu: RegistryGpu {
                require: params.gpu_require,
                allowed_architectures: params.gpu_architectures,
                allowed_protection_modes: params.gpu_protection_modes,
                ..RegistryGpu::default()
            },
            tdx: Vec::new(),
            snp: Vec::new(),
            models: BTreeMap::new(),
            endpoints: Vec::new(),
        };
        let mut golden: BTreeMap<u8, Vec<String>> = BTreeMap::new();
        for item in items {
            match item {
                Item::Tdx(t) => p.tdx.push(t),
                Item::Snp(m) => p.snp.push(m),
                Item::Model { id, sha256 } => p.models.entry(id).or_default().push(sha256),
                Item::GpuDriver(v) => p.gpu.allowed_driver_versions.push(v),
                Item::GpuVbios(v) => p.gpu.allowed_vbios_versions.push(v),
                Item::GpuGolden { index, value } => golden.entry(index).or_default().push(value),
                Item::Endpoint(e) => p.endpoints.push(e),
            }
        }
        p.tdx.sort();
        p.snp.sort();
        p.models.values_mut().for_each(|d| d.sort());
        p.gpu.allowed_driver_versions.sort();
        p.gpu.allowed_vbios_versions.sort();
        p.gpu.measurements = golden
            .into_iter()
            .map(|(index, mut allowed)| {
                allowed.sort();
                RegistryGolden { index, allowed }
            })
            .collect();
        p.endpoints.sort();
        p
    }

    pub fn params(&self) -> Params {
        Params {
            prices: self.prices,
            max_price_coefficient: self.max_price_coefficient,
            fee_bps: self.fee_bps,
            gpu_require: self.gpu.require,
            gpu_architectures: self.gpu.allowed_architectures.clone(),
            gpu_protection_modes: self.gpu.allowed_protection_modes.clone(),
        }
    }

    /// Every list entry.
    pub fn items(&self) -> Vec<Item> {
        let mut v: Vec<Item> = self.tdx.iter().cloned().map(Item::Tdx).collect();
        v.extend(self.snp.iter().cloned().map(Item::Snp));
        for (id, digests) in &self.models {
            v.extend(digests.iter().map(|d| Item::Model { id: id.clone(), sha256: d.clone() }));
        }
        v.extend(self.gpu.allowed_driver_versions.iter().cloned().map(Item::GpuDriver));
        v.extend(self.gpu.allowed_vbios_versions.iter().cloned().map(Item::GpuVbios));
        for g in &self.gpu.measurements {
            v.extend(g.allowed.iter().map(|value| Item::GpuGolden { index: g.index, value: value.clone() }));
        }
        v.extend(self.endpoints.iter().cloned().map(Item::Endpoint));
        v
    }

    /// The cell `get_registry_policy` returns for this state, built the way the contract
    /// stores it (for fakes of the chain in tests; what a node serves comes from the
    /// contract itself, and `tests/registry.rs` checks the two agree).
    pub fn to_cell(&self) -> Result<Cell> {
        use std::collections::HashMap;
        use tonlib_core::cell::dict::predefined_writers::val_writer_ref_cell;
        let mut lists: HashMap<u8, HashMap<BigUint, ArcCell>> = HashMap::new();
        for item in self.items() {
            let c = item.to_cell()?;
            let key = BigUint::from_bytes_be(&hash32(&c));
            lists.entry(item.kind()).or_default().insert(key, Arc::new(c));
        }
        let mut roots: HashMap<u8, ArcCell> = HashMap::new();
        for (kind, entries) in lists {
            let root = cell_of(|b| {
                b.store_dict(256, val_writer_ref_cell, entries).map(|_| ()).map_err(cell_err)
            })?;
            roots.insert(kind, Arc::new(root));
        }
        let params = Arc::new(self.params().to_cell()?);
        cell_of(|b| {
            b.store_reference(&params).map_err(cell_err)?;
            b.store_dict(8, val_writer_ref_cell, roots).map(|_| ()).map_err(cell_err)
        })
    }

    /// Decodes `get_registry_policy`'s cell (`params:^Params lists:(HashmapE 8 ^ListRoot)`)
    /// read at `version`, owned by `owner`.
    pub fn decode(version: u32, owner: &Address, cell: &Cell) -> Result<RegistryPolicy> {
        // The dictionary parser indexes into bytes that came from the network.
        match catch_unwind(AssertUnwindSafe(|| decode_policy_cell(cell))) {
            Ok(r) => r.map(|(params, items)| RegistryPolicy::from_parts(version, owner, params, items)),
            Err(_) => Err(bad("policy cell: the dictionary parser panicked")),
        }
    }
}

fn decode_policy_cell(cell: &Cell) -> Result<(Params, Vec<Item>)> {
    let mut p = cell.parser();
    let params_cell = p.next_reference().map_err(cell_err)?;
    let params = Params::from_cell(&params_cell)?;
    let lists = load_dict_refs(&mut p, 8)?;
    if p.remaining_bits() != 0 || p.remaining_refs() != 0 {
        return Err(bad("policy cell has bits or references after the lists"));
    }
    let mut items = Vec::new();
    for (kind_key, root) in lists {
        let kind = u8::try_from(&kind_key).map_err(|_| bad("list kind wider than 8 bits"))?;
        let mut rp = root.parser();
        let entries = load_dict_refs(&mut rp, 256)?;
        if rp.remaining_bits() != 0 || rp.remaining_refs() != 0 {
            return Err(bad(format!("list {kind}: bits or references after the dictionary")));
        }
        if entries.is_empty() {
            return Err(bad(format!("list {kind} is present but empty")));
        }
        for (key, item_cell) in entries {
            let item = Item::from_cell(kind, &item_cell)?;
            if BigUint::from_bytes_be(item_cell.cell_hash().as_slice()) != key {
                return Err(bad(format!("list {kind}: an entry's key is not its cell hash")));
            }
            items.push(item);
        }
    }
    Ok((params, items))
}

/// A `HashmapE n ^Cell` (Maybe ^Cell) as (key, value) pairs.
fn load_dict_refs(p: &mut CellParser, key_bits: usize) -> Result<Vec<(BigUint, ArcCell)>> {
    use tonlib_core::cell::dict::predefined_readers::{key_reader_uint, val_reader_ref_cell};
    let map = p
        .load_dict(key_bits, key_reader_uint, val_reader_ref_cell)
        .map_err(cell_err)?;
    let mut v: Vec<(BigUint, ArcCell)> = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(b: u8) -> String {
        hex::encode([b; MEASUREMENT_BYTES])
    }

    pub(crate) fn every_kind() -> Vec<Item> {
        vec![
            Item::Tdx(TdxImage {
                mrtd: m(1),
                rtmr0: m(2),
                rtmr1: m(3),
                rtmr2: m(4),
                rtmr3: "any".into(),
            }),
            Item::Snp(m(9)),
            Item::Model {
                id: "smollm2-135m".into(),
                sha256: hex::encode([7u8; 32]),
            },
            Item::GpuDriver("550.54.15".into()),
            Item::GpuVbios("96.00.9F.00.04".into()),
            Item::GpuGolden {
                index: 2,
                value: "ab".repeat(48),
            },
            Item::Endpoint(Endpoint {
                role: Role::Router,
                url: "wss://router.example:7443/v1/worker".into(),
                tls_sha256: hex::encode([5u8; 32]),
            }),
        ]
    }

    #[test]
    fn every_item_round_trips_and_keys_by_its_hash() {
        for item in every_kind() {
            let c = item.to_cell().unwrap();
            assert_eq!(Item::from_cell(item.kind(), &c).unwrap(), item);
            assert_eq!(item.key().unwrap(), hash32(&c));
            // Any other kind refuses it or reads something else.
            for k in 1..=7u8 {
                if k != item.kind() {
                    assert_ne!(Item::from_cell(k, &c).ok(), Some(item.clone()));
                }
            }
        }
    }

    #[test]
    fn out_of_range_values_are_refused_both_ways() {
        let long = Item::Model {
            id: "x".repeat(MAX_MODEL_ID_BYTES + 1),
            sha256: hex::encode([1u8; 32]),
        };
        assert!(long.to_cell().is_err());
        assert!(Item::Snp("abcd".into()).to_cell().is_err());
        assert!(Item::GpuDriver(String::new()).to_cell().is_err());
        // A cell with one stray bit after a valid SNP measurement.
        let stray = cell_of(|c| {
            c.store_slice(&[1u8; MEASUREMENT_BYTES]).map_err(cell_err)?;
            c.store_bit(true).map_err(cell_err)?;
            Ok(())
        })
        .unwrap();
        let e = Item::from_cell(KIND_SNP, &stray).unwrap_err().to_string();
        assert!(e.contains("canonical"), "{e}");
        // "any" with non-zero bits underneath.
        let Item::Tdx(t) = &every_kind()[0] else { unreachable!() };
        let c = Item::Tdx(TdxImage { rtmr3: m(6), ..t.clone() }).to_cell().unwrap();
        let mut forged = CellBuilder::new();
        let mut p = c.parser();
        forged.store_slice(&p.load_bytes(48).unwrap()).unwrap();
        forged.store_u8(4, 0b0001).unwrap();
        forged.store_references(c.references()).unwrap();
        let e = Item::from_cell(KIND_TDX, &forged.build().unwrap()).unwrap_err();
        assert!(e.to_string().contains("canonical"), "{e}");
        assert!(Item::from_cell(8, &stray).is_err());
    }

    #[test]
    fn a_whole_policy_round_trips_through_its_cell() {
        let owner = Address { workchain: 0, hash: [4; 32] };
        let mut items = every_kind();
        items.push(Item::Model { id: "smollm2-135m".into(), sha256: hex::encode([8u8; 32]) });
        let p = RegistryPolicy::from_parts(5, &owner, Params::default(), items);
        assert_eq!(p.models["smollm2-135m"].len(), 2);
        let c = p.to_cell().unwrap();
        assert_eq!(RegistryPolicy::decode(5, &owner, &c).unwrap(), p);
        let empty = RegistryPolicy::from_parts(0, &owner, Params::default(), vec![]);
        assert_eq!(RegistryPolicy::decode(0, &owner, &empty.to_cell().unwrap()).unwrap(), empty);
        // A cell that is not a policy cell is refused.
        assert!(RegistryPolicy::decode(5, &owner, &Params::default().to_cell().unwrap()).is_err());
    }

    #[test]
    fn params_round_trip_and_refuse_bad_values() {
        let p = Params {
            prices: Prices {
                prompt: 100_000_000,
                cached_prompt: 50_000_000,
                completion: 300_000_000,
                reasoning: 300_000_000,
            },
            max_price_coefficient: 3000,
            fee_bps: 250,
            gpu_require: true,
            gpu_architectures: vec!["hopper".into()],
            gpu_protection_modes: vec!["spt".into(), "ppcie".into()],
        };
        assert_eq!(Params::from_cell(&p.to_cell().unwrap()).unwrap(), p);
        for bad in [
            Params { fee_bps: 10_001, ..p.clone() },
            Params { max_price_coefficient: 999, ..p.clone() },
            Params { gpu_protection_modes: vec!["cc".into()], ..p.clone() },
        ] {
            assert!(bad.to_cell().is_err());
        }
    }
}
