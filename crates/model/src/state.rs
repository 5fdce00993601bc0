//! The state document: which tokens exist, with their ids. Never secrets.
//!
//! The document is deterministic (sorted, pretty-printed, trailing newline)
//! so that it diffs well in pull requests.

use rustc_hash::FxHashSet;

use serde::{Deserialize, Serialize};

use crate::address::Address;

/// The newest state format version this tool reads and writes.
///
/// Version 2 adds what the lifecycle records (`superseded` tokens and each
/// token's last `checked`); version 3 the `former` tokens (ids forgotten
/// or retired, never to be adopted again). A state is written in the
/// oldest version that holds what it records, so that older tokenctl
/// versions keep reading it, and refuse (rather than silently drop) what
/// they do not know.
pub const STATE_FORMAT_VERSION: u32 = 3;

/// The oldest state format version this tool reads and writes.
const OLDEST_FORMAT_VERSION: u32 = 1;

/// The tool version recorded in states and plan files.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What exists, as far as this tool knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    pub tool_version: String,
    /// Random id made when the state is first created; never changes.
    pub lineage: String,
    /// Incremented on every write that changes content.
    pub serial: u64,
    pub tokens: Vec<TokenRecord>,
    #[serde(default)]
    pub pending: Vec<PendingCreate>,
    /// Tokens replaced by a successor (rotation, or re-creation after a
    /// revocation) that a person still has to revoke in the UI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<SupersededToken>,
    /// Tokens a person dropped from the state (forgotten or retired): their
    /// ids are kept so that no sink record of theirs is ever adopted again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former: Vec<FormerToken>,
}

/// A token dropped from the state on a person's word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormerToken {
    pub address: Address,
    pub id: u64,
    /// How it left the state.
    pub dropped: Dropped,
}

/// How a token left the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dropped {
    /// `tokenctl forget`, after it was revoked in the UI.
    Forgotten,
    /// `tokenctl retire`, or a refresh that found it revoked.
    Retired,
}

/// What the last refresh learnt of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// When, in epoch seconds.
    pub at: i64,
    pub status: Liveness,
}

/// What a token's own whoami call said of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// It answered 200 for its own account.
    Alive,
    /// It answered 401: revoked in the UI.
    Revoked,
    /// It answered 200 for another account.
    Misdelivered,
    /// No definite answer (403, 429, 5xx, network); never taken as revoked.
    Unknown,
    /// No sink can read its secret back.
    Unverifiable,
}

/// A token that has a successor and waits to be revoked by a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupersededToken {
    pub address: Address,
    #[serde(rename = "accountId")]
    pub account_id: u64,
    pub name: String,
    pub id: u64,
    #[serde(rename = "createdAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When its successor was recorded, in epoch seconds.
    pub superseded_at: i64,
    /// The id of the token that replaced it.
    pub successor_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<Check>,
}

/// A token known to exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub address: Address,
    #[serde(rename = "accountId")]
    pub account_id: u64,
    pub name: String,
    pub id: u64,
    /// Creation time in epoch seconds, when known.
    #[serde(rename = "createdAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    pub origin: Origin,
    /// Short one-way fingerprint of the secret, when this tool saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The last refresh's finding, recorded by `apply --refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<Check>,
}

/// How a token came to be in the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Created,
    Imported,
}

/// A create that may or may not have happened: the request may have reached
/// the server, but no definite answer came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCreate {
    pub address: Address,
    #[serde(rename = "accountId")]
    pub account_id: u64,
    pub name: String,
    /// When the create was sent, in epoch seconds.
    pub since: i64,
    /// What happened, e.g. `server answered 502`.
    pub reason: String,
}

/// Why a state document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateParseError {
    #[error(
        "state format version {found} is newer than this tokenctl ({TOOL_VERSION}) understands ({STATE_FORMAT_VERSION})"
    )]
    Newer { found: u64 },
    #[error("{0}")]
    Corrupt(String),
}

impl TokenRecord {
    /// Returns a record of the token at `address`.
    pub fn new(
        address: Address,
        id: u64,
        created_at: Option<i64>,
        origin: Origin,
        fingerprint: Option<String>,
    ) -> Self {
        TokenRecord {
            account_id: address.account_id,
            name: address.name.clone(),
            address,
            id,
            created_at,
            origin,
            fingerprint,
            checked: None,
        }
    }

    /// Returns a record of a token this tool created and saw the secret of.
    pub fn created(address: Address, id: u64, created_at: i64, fingerprint: String) -> Self {
        TokenRecord::new(
            address,
            id,
            Some(created_at),
            Origin::Created,
            Some(fingerprint),
        )
    }
}

impl PendingCreate {
    /// Returns a record of a create left in doubt.
    pub fn new(address: Address, since: i64, reason: String) -> Self {
        PendingCreate {
            account_id: address.account_id,
            name: address.name.clone(),
            address,
            since,
            reason,
        }
    }
}

impl State {
    /// Returns an empty state with the given lineage.
    pub fn new(lineage: String) -> Self {
        State {
            format_version: OLDEST_FORMAT_VERSION,
            tool_version: TOOL_VERSION.to_string(),
            lineage,
            serial: 0,
            tokens: Vec::new(),
            pending: Vec::new(),
            superseded: Vec::new(),
            former: Vec::new(),
        }
    }

    /// Parses a state document.
    pub fn from_json(text: &str) -> Result<State, StateParseError> {
        match serde_json::from_str::<State>(text) {
            Ok(state) if u64::from(state.format_version) > u64::from(STATE_FORMAT_VERSION) => {
                Err(StateParseError::Newer {
                    found: state.format_version.into(),
                })
            }
            Ok(state) if state.format_version < OLDEST_FORMAT_VERSION => {
                Err(StateParseError::Corrupt(format!(
                    "state format version {} does not exist (this tokenctl reads versions {OLDEST_FORMAT_VERSION} to {STATE_FORMAT_VERSION})",
                    state.format_version
                )))
            }
            Ok(state) => {
                state.check()?;
                Ok(state)
            }
            Err(err) => {
                // A newer format may not parse at all; say so rather than
                // calling the file corrupt.
                #[derive(Deserialize)]
                struct Probe {
                    format_version: u64,
                }
                match serde_json::from_str::<Probe>(text) {
                    Ok(probe) if probe.format_version > u64::from(STATE_FORMAT_VERSION) => {
                        Err(StateParseError::Newer {
                            found: probe.format_version,
                        })
                    }
                    _ => Err(StateParseError::Corrupt(err.to_string())),
                }
            }
        }
    }

    fn check(&self) -> Result<(), StateParseError> {
        let inconsistent = |address: &Address, account_id: u64, name: &str| {
            (address.account_id != account_id || address.name != name).then(|| {
                StateParseError::Corrupt(format!(
                    "entry {address} disagrees with its accountId {account_id} and name {name:?}"
                ))
            })
        };
        for token in &self.tokens {
            if let Some(err) = inconsistent(&token.address, token.account_id, &token.name) {
                return Err(err);
            }
        }
        for pending in &self.pending {
            if let Some(err) = inconsistent(&pending.address, pending.account_id, &pending.name) {
                return Err(err);
            }
        }
        // An address has at most one current token and one pending create;
        // both at once is a successor's create in doubt.
        fn twice<'a>(mut addresses: impl ExactSizeIterator<Item = &'a Address>) -> Option<Address> {
            let mut seen = FxHashSet::with_capacity_and_hasher(addresses.len(), Default::default());
            addresses.find(|a| !seen.insert(*a)).cloned()
        }
        let twice = twice(self.tokens.iter().map(|t| &t.address))
            .or_else(|| twice(self.pending.iter().map(|p| &p.address)));
        if let Some(address) = twice {
            return Err(StateParseError::Corrupt(format!(
                "{address} appears more than once"
            )));
        }
        Ok(())
    }

    /// Returns the document: sorted, pretty-printed, with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut sorted = self.clone();
        sorted.normalize();
        let lifecycle =
            !sorted.superseded.is_empty() || sorted.tokens.iter().any(|t| t.checked.is_some());
        sorted.format_version = if !sorted.former.is_empty() {
            3
        } else if lifecycle {
            2
        } else {
            OLDEST_FORMAT_VERSION
        };
        // Serializing plain data with string keys cannot fail.
        let mut text = serde_json::to_string_pretty(&sorted).unwrap_or_default();
        text.push('\n');
        text
    }

    fn normalize(&mut self) {
        self.tokens.sort_by(|a, b| a.address.cmp(&b.address));
        self.pending.sort_by(|a, b| a.address.cmp(&b.address));
        self.superseded
            .sort_by(|a, b| (&a.address, a.id).cmp(&(&b.address, b.id)));
        self.former
            .sort_by(|a, b| (&a.address, a.id).cmp(&(&b.address, b.id)));
    }

    /// Tells whether two states record the same tokens and pending creates.
    pub fn same_content(&self, other: &State) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        a.normalize();
        b.normalize();
        a.tokens == b.tokens
            && a.pending == b.pending
            && a.superseded == b.superseded
            && a.former == b.former
    }

    /// Returns the record for an address.
    pub fn token(&self, address: &Address) -> Option<&TokenRecord> {
        self.tokens.iter().find(|t| &t.address == address)
    }

    /// Returns the pending create for an address.
    pub fn pending_create(&self, address: &Address) -> Option<&PendingCreate> {
        self.pending.iter().find(|p| &p.address == address)
    }

    /// Records a created token, settling any pending create for it. A
    /// different token already at the address is its predecessor: it is
    /// kept as superseded, to be revoked by a person, never dropped.
    pub fn record_created(&mut self, record: TokenRecord) {
        self.record_created_at(record, None);
    }

    /// Records a created token as [`State::record_created`] does, with
    /// `now` (epoch seconds) as the time any predecessor was superseded.
    pub fn record_created_at(&mut self, record: TokenRecord, now: Option<i64>) {
        self.pending.retain(|p| p.address != record.address);
        if let Some(at) = self.tokens.iter().position(|t| t.address == record.address) {
            let old = self.tokens.swap_remove(at);
            if old.id != record.id {
                self.superseded.push(SupersededToken {
                    account_id: old.account_id,
                    name: old.name,
                    address: old.address,
                    id: old.id,
                    created_at: old.created_at,
                    fingerprint: old.fingerprint,
                    superseded_at: now.or(record.created_at).unwrap_or(0),
                    successor_id: record.id,
                    checked: old.checked,
                });
            }
        }
        self.tokens.push(record);
    }

    /// Returns the superseded tokens of an address.
    pub fn superseded_of<'a>(
        &'a self,
        address: &'a Address,
    ) -> impl Iterator<Item = &'a SupersededToken> + 'a {
        self.superseded
            .iter()
            .filter(move |s| &s.address == address)
    }

    /// Drops a superseded token once it is revoked, keeping its id among
    /// the former ones; returns it.
    pub fn retire(&mut self, address: &Address, id: u64) -> Option<SupersededToken> {
        let at = self
            .superseded
            .iter()
            .position(|s| &s.address == address && s.id == id)?;
        let old = self.superseded.remove(at);
        self.keep_former(address, id, Dropped::Retired);
        Some(old)
    }

    /// Drops the current token of an address (revoked in the UI, no
    /// longer in the manifest), keeping its id among the former ones;
    /// returns it.
    pub fn forget(&mut self, address: &Address) -> Option<TokenRecord> {
        let at = self.tokens.iter().position(|t| &t.address == address)?;
        let old = self.tokens.remove(at);
        self.keep_former(address, old.id, Dropped::Forgotten);
        Some(old)
    }

    fn keep_former(&mut self, address: &Address, id: u64, dropped: Dropped) {
        if !self
            .former
            .iter()
            .any(|f| f.id == id && &f.address == address)
        {
            self.former.push(FormerToken {
                address: address.clone(),
                id,
                dropped,
            });
        }
    }

    /// Tells whether the state has ever recorded token id `id`, at any
    /// address: current, superseded, forgotten or retired.
    pub fn has_recorded(&self, id: u64) -> bool {
        self.tokens.iter().any(|t| t.id == id)
            || self.superseded.iter().any(|s| s.id == id)
            || self.former.iter().any(|f| f.id == id)
    }

    /// Records a create in doubt.
    pub fn record_pending(&mut self, pending: PendingCreate) {
        self.pending.retain(|p| p.address != pending.address);
        self.pending.push(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut state = State::new("lineage-1".into());
        state.record_created(TokenRecord::created(
            Address::new(20, "b"),
            2,
            1_700_000_000,
            "sha256:00".into(),
        ));
        state.record_created(TokenRecord::created(
            Address::new(3, "a"),
            1,
            1_600_000_000,
            "sha256:11".into(),
        ));
        state.record_pending(PendingCreate::new(
            Address::new(3, "c"),
            1_700_000_001,
            "server answered 502".into(),
        ));
        state
    }

    #[test]
    fn round_trips_through_json() {
        let state = sample();
        let text = state.to_json();
        let back = State::from_json(&text).unwrap();
        assert!(back.same_content(&state));
        assert_eq!(back.to_json(), text);
    }

    #[test]
    fn document_is_sorted_pretty_and_ends_with_newline() {
        let text = sample().to_json();
        assert!(text.ends_with("}\n"));
        let a = text.find("\"3/a\"").unwrap();
        let b = text.find("\"20/b\"").unwrap();
        assert!(a < b, "not sorted by account id:\n{text}");
        assert!(text.contains("\n  \"tokens\": [\n"));
        assert!(text.contains("\"accountId\": 3"));
        assert!(text.contains("\"createdAt\": 1600000000"));
        assert!(text.contains("\"origin\": \"created\""));
    }

    #[test]
    fn refuses_a_format_version_that_never_existed() {
        let text = sample()
            .to_json()
            .replace("\"format_version\": 1", "\"format_version\": 0");
        let err = State::from_json(&text).unwrap_err();
        assert!(
            matches!(&err, StateParseError::Corrupt(m) if m.contains("version 0 does not exist")),
            "{err}"
        );
    }

    #[test]
    fn lifecycle_records_raise_the_format_version_so_older_versions_refuse() {
        let plain = sample();
        assert!(plain.to_json().contains("\"format_version\": 1"));
        let mut rotated = sample();
        let address = rotated.tokens[0].address.clone();
        rotated.record_created(TokenRecord::created(address, 999, 5, "sha256:n".into()));
        assert_eq!(rotated.superseded.len(), 1);
        let text = rotated.to_json();
        assert!(text.contains("\"format_version\": 2"), "{text}");
        assert_eq!(State::from_json(&text).unwrap().superseded.len(), 1);
        // A retired id is kept, in version 3.
        let old = rotated.superseded[0].clone();
        assert!(rotated.retire(&old.address, old.id).is_some());
        let text = rotated.to_json();
        assert!(text.contains("\"format_version\": 3"), "{text}");
        assert_eq!(State::from_json(&text).unwrap().former.len(), 1);
    }

    #[test]
    fn refuses_a_newer_format() {
        let text = sample()
            .to_json()
            .replace("\"format_version\": 1", "\"format_version\": 4");
        assert_eq!(
            State::from_json(&text),
            Err(StateParseError::Newer { found: 4 })
        );
        assert_eq!(
            State::from_json("{\"format_version\": 9, \"other\": true}"),
            Err(StateParseError::Newer { found: 9 })
        );
    }

    #[test]
    fn refuses_truncated_and_garbled_documents() {
        let text = sample().to_json();
        for bad in [&text[..text.len() / 2], "", "not json", "{}"] {
            assert!(
                matches!(State::from_json(bad), Err(StateParseError::Corrupt(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn refuses_inconsistent_or_duplicate_entries() {
        let text = sample()
            .to_json()
            .replacen("\"name\": \"a\"", "\"name\": \"z\"", 1);
        assert!(matches!(
            State::from_json(&text),
            Err(StateParseError::Corrupt(m)) if m.contains("disagrees")
        ));
        let mut state = sample();
        let copy = state.tokens[0].clone();
        state.tokens.push(copy);
        assert!(matches!(
            State::from_json(&state.to_json()),
            Err(StateParseError::Corrupt(m)) if m.contains("more than once")
        ));
    }

    #[test]
    fn created_settles_pending() {
        let mut state = sample();
        state.record_created(TokenRecord::created(
            Address::new(3, "c"),
            9,
            1,
            "sha256:22".into(),
        ));
        assert!(state.pending.is_empty());
        assert_eq!(state.token(&Address::new(3, "c")).unwrap().id, 9);
    }

    #[test]
    fn same_content_ignores_order_and_bookkeeping() {
        let state = sample();
        let mut other = state.clone();
        other.tokens.reverse();
        other.serial += 5;
        other.tool_version = "0.0.0".into();
        assert!(state.same_content(&other));
        other.tokens.pop();
        assert!(!state.same_content(&other));
    }
}
