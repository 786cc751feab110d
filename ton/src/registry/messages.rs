//! The owner's messages to the registry and its deploy, as `contracts/README.md` lays them
//! out. The wallet signs them like any transfer ([`crate::ServiceWallet::sign_calls`]).

use std::sync::Arc;

pub use tonlib_core::cell::Cell;
use tonlib_core::cell::{ArcCell, CellBuilder};

use super::{cell_err, hash32, Item, Params};
use crate::address::Address;
use crate::cell::parse_boc;
use crate::error::{Error, Result};

pub const OP_ADD_ITEM: u32 = 0x5247_0001;
pub const OP_REMOVE_ITEM: u32 = 0x5247_0002;
pub const OP_SET_PARAMS: u32 = 0x5247_0003;
pub const OP_SET_OWNER: u32 = 0x5247_0004;
/// The external out-message every accepted update emits.
pub const OP_POLICY_CHANGED: u32 = 0x5247_0100;

/// The compiled contract, as `tests/ton/compile-registry.js` writes it with `@ton/tolk-js`;
/// `scripts/ton-tests` recompiles `contracts/registry.tolk` and fails if this differs.
const CODE_BOC_B64: &str = include_str!("../../../contracts/build/registry.code.boc.b64");

/// The registry's code cell.
pub fn code() -> Result<ArcCell> {
    parse_boc(CODE_BOC_B64).map_err(|e| Error::Registry(format!("committed contract code: {e}")))
}

fn header(op: u32, query_id: u64) -> Result<CellBuilder> {
    let mut b = CellBuilder::new();
    b.store_u32(32, op).map_err(cell_err)?;
    b.store_u64(64, query_id).map_err(cell_err)?;
    Ok(b)
}

/// An empty body: the deploy's (and any top-up's); the contract accepts it and changes nothing.
pub fn empty() -> Result<Cell> {
    CellBuilder::new().build().map_err(cell_err)
}

/// A cell holding just `address` (what `get_registry_owner` returns as a slice).
pub fn address_cell(address: &Address) -> Result<Cell> {
    let mut b = CellBuilder::new();
    b.store_address(&address.to_ton()).map_err(cell_err)?;
    b.build().map_err(cell_err)
}

pub fn add_item(query_id: u64, item: &Item) -> Result<Cell> {
    let mut b = header(OP_ADD_ITEM, query_id)?;
    b.store_u8(8, item.kind()).map_err(cell_err)?;
    b.store_reference(&Arc::new(item.to_cell()?)).map_err(cell_err)?;
    b.build().map_err(cell_err)
}

/// Removes the entry with `key` ([`Item::key`]) from list `kind`.
pub fn remove_item(query_id: u64, kind: u8, key: [u8; 32]) -> Result<Cell> {
    let mut b = header(OP_REMOVE_ITEM, query_id)?;
    b.store_u8(8, kind).map_err(cell_err)?;
    b.store_slice(&key).map_err(cell_err)?;
    b.build().map_err(cell_err)
}

pub fn set_params(query_id: u64, params: &Params) -> Result<Cell> {
    let mut b = header(OP_SET_PARAMS, query_id)?;
    b.store_reference(&Arc::new(params.to_cell()?)).map_err(cell_err)?;
    b.build().map_err(cell_err)
}

pub fn set_owner(query_id: u64, owner: &Address) -> Result<Cell> {
    let mut b = header(OP_SET_OWNER, query_id)?;
    b.store_address(&owner.to_ton()).map_err(cell_err)?;
    b.build().map_err(cell_err)
}

/// A registry to deploy: its address and the state init that creates it.
#[derive(Clone, Debug)]
pub struct Deploy {
    pub address: Address,
    pub state_init: Cell,
}

/// The registry owned by `owner` starting with `params` and empty lists, version 0. Its
/// address follows from the code and this data, so one owner with the same initial
/// params always gets the same address.
pub fn deploy(owner: &Address, params: &Params) -> Result<Deploy> {
    let mut d = CellBuilder::new();
    d.store_address(&owner.to_ton()).map_err(cell_err)?;
    d.store_u32(32, 0).map_err(cell_err)?;
    d.store_reference(&Arc::new(params.to_cell()?)).map_err(cell_err)?;
    d.store_bit(false).map_err(cell_err)?;
    let data = Arc::new(d.build().map_err(cell_err)?);
    // StateInit: no split_depth, no special, code, data, no library.
    let mut s = CellBuilder::new();
    s.store_bit(false).map_err(cell_err)?;
    s.store_bit(false).map_err(cell_err)?;
    s.store_bit(true).map_err(cell_err)?;
    s.store_reference(&code()?).map_err(cell_err)?;
    s.store_bit(true).map_err(cell_err)?;
    s.store_reference(&data).map_err(cell_err)?;
    s.store_bit(false).map_err(cell_err)?;
    let state_init = s.build().map_err(cell_err)?;
    Ok(Deploy {
        address: Address {
            workchain: 0,
            hash: hash32(&state_init),
        },
        state_init,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_documented_layout() {
        let item = &super::super::tests::every_kind()[1];
        let b = add_item(7, item).unwrap();
        let mut p = b.parser();
        assert_eq!(p.load_u32(32).unwrap(), OP_ADD_ITEM);
        assert_eq!(p.load_u64(64).unwrap(), 7);
        assert_eq!(p.load_u8(8).unwrap(), item.kind());
        assert_eq!(b.references()[0].cell_hash(), item.to_cell().unwrap().cell_hash());
        let r = remove_item(8, 2, item.key().unwrap()).unwrap();
        assert_eq!(r.bit_len(), 32 + 64 + 8 + 256);
        let owner = Address { workchain: 0, hash: [3; 32] };
        let s = set_owner(9, &owner).unwrap();
        assert_eq!(s.bit_len(), 32 + 64 + 267);
        let d1 = deploy(&owner, &Params::default()).unwrap();
        let d2 = deploy(&owner, &Params { fee_bps: 1, ..Params::default() }).unwrap();
        assert_ne!(d1.address, d2.address);
        assert_eq!(d1.address, deploy(&owner, &Params::default()).unwrap().address);
    }
}
