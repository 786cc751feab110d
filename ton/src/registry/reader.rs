//! Reading the registry through a toncenter v3 API.

use super::{bad, RegistryPolicy};
use crate::address::Address;
use crate::api::{StackEntry, TonApi};
use crate::cell::parse_boc;
use crate::error::Result;

/// Reads one registry's policy.
#[derive(Clone, Debug)]
pub struct RegistryReader {
    api: TonApi,
    address: Address,
}

impl RegistryReader {
    pub fn new(api: TonApi, address: Address) -> RegistryReader {
        RegistryReader { api, address }
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// The policy in force: `get_registry_policy` (version and every list, read in one
    /// call, so they belong to one state) and the owner. Fails on anything that does not
    /// decode exactly.
    pub async fn read(&self) -> Result<RegistryPolicy> {
        let addr = self.address.to_raw();
        let r = self
            .api
            .run_get_method(&addr, "get_registry_policy", &[])
            .await?;
        let [version, cell] = r.stack.as_slice() else {
            return Err(bad(format!(
                "get_registry_policy returned {} stack entries, expected 2",
                r.stack.len()
            )));
        };
        let version = version
            .as_i64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad("get_registry_policy: the version is not a 32-bit number"))?;
        let cell = cell
            .as_boc()
            .ok_or_else(|| bad("get_registry_policy: the second entry is not a cell"))?;
        let cell = parse_boc(cell).map_err(|e| bad(format!("get_registry_policy: {e}")))?;
        let owner = self.owner().await?;
        RegistryPolicy::decode(version, &owner, &cell)
    }

    /// `get_registry_version` alone (a cheap check whether anything changed).
    pub async fn version(&self) -> Result<u32> {
        let r = self
            .api
            .run_get_method(&self.address.to_raw(), "get_registry_version", &[])
            .await?;
        r.stack
            .first()
            .and_then(StackEntry::as_i64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad("get_registry_version did not return a 32-bit number"))
    }

    pub async fn owner(&self) -> Result<Address> {
        let r = self
            .api
            .run_get_method(&self.address.to_raw(), "get_registry_owner", &[])
            .await?;
        let boc = r
            .stack
            .first()
            .and_then(StackEntry::as_boc)
            .ok_or_else(|| bad("get_registry_owner did not return a slice"))?;
        let cell = parse_boc(boc).map_err(|e| bad(format!("get_registry_owner: {e}")))?;
        let a = cell
            .parser()
            .load_address()
            .map_err(|e| bad(format!("get_registry_owner: {e}")))?;
        Ok(Address::from_ton(&a))
    }
}
