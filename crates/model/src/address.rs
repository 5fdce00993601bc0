//! Addresses of tokens: `<accountId>/<name>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identifies one token: the sub-account it belongs to and its name.
///
/// Ordering is by account id, then name, which is the order of plans and
/// of the state file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub account_id: u64,
    pub name: String,
}

impl Address {
    /// Returns the address of token `name` in account `account_id`.
    pub fn new(account_id: u64, name: impl Into<String>) -> Self {
        Address {
            account_id,
            name: name.into(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account_id, self.name)
    }
}

/// Why a string is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a token address; write it as <accountId>/<name>, e.g. 160343/ci-shipper")]
pub struct AddressParseError {
    pub input: String,
}

impl FromStr for Address {
    type Err = AddressParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AddressParseError {
            input: s.to_string(),
        };
        // Names may themselves contain '/', so only the first one separates.
        let (account, name) = s.split_once('/').ok_or_else(err)?;
        let account_id: u64 = account.parse().map_err(|_| err())?;
        if account_id == 0 || name.trim().is_empty() {
            return Err(err());
        }
        Ok(Address::new(account_id, name))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_parses_round_trip() {
        let address = Address::new(160343, "ci-shipper");
        assert_eq!(address.to_string(), "160343/ci-shipper");
        assert_eq!("160343/ci-shipper".parse::<Address>(), Ok(address));
    }

    #[test]
    fn names_may_contain_slashes() {
        let address: Address = "7/team/reader".parse().unwrap();
        assert_eq!(address, Address::new(7, "team/reader"));
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in ["", "ci-shipper", "x/ci", "0/ci", "-1/ci", "12/", "12/  "] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn orders_by_account_then_name() {
        let mut addresses = [
            Address::new(20, "a"),
            Address::new(3, "z"),
            Address::new(3, "b"),
        ];
        addresses.sort();
        let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["3/b", "3/z", "20/a"]);
    }
}
