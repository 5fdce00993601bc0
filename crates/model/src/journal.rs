//! The apply journal: an append-only record of creates in progress.
//!
//! Each create appends an `intent` before its request and a `created` or
//! `failed` record after it, each fsynced before the next step. At the end
//! of a run (or at the start of the next one, after a crash) the journal is
//! folded into the state: created tokens are recorded, and intents with no
//! outcome become pending creates, in doubt until a person resolves them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::state::{PendingCreate, State, TokenRecord};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// First line: which state the apply started from.
    Begin {
        lineage: String,
        serial: u64,
        started: i64,
        pid: u32,
        /// The host the writing process runs on (absent in journals of
        /// older versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// A create is about to be sent.
    Intent { address: Address, at: i64 },
    /// The create succeeded and its secret reached the sinks.
    Created {
        address: Address,
        id: u64,
        #[serde(rename = "createdAt")]
        created_at: i64,
        fingerprint: String,
    },
    /// The create was definitely refused; nothing exists.
    Failed { address: Address, reason: String },
    /// The create got no definite answer; why, for the pending entry.
    Doubt { address: Address, reason: String },
}

/// What folding a journal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldSummary {
    pub created: usize,
    pub failed: usize,
    pub in_doubt: usize,
}

/// Folds journal records into the state: pure, and idempotent, so folding
/// the same journal twice (a crash between the state write and the
/// journal's removal) records the same result.
pub fn fold(mut state: State, records: &[Record]) -> (State, FoldSummary) {
    let mut open: BTreeMap<&Address, (i64, String)> = BTreeMap::new();
    let mut summary = FoldSummary::default();
    for record in records {
        match record {
            Record::Begin { .. } => {}
            Record::Intent { address, at } => {
                open.insert(
                    address,
                    (*at, "the run ended before an answer was recorded".into()),
                );
            }
            Record::Created {
                address,
                id,
                created_at,
                fingerprint,
            } => {
                open.remove(address);
                state.record_created(TokenRecord::created(
                    address.clone(),
                    *id,
                    *created_at,
                    fingerprint.clone(),
                ));
                summary.created += 1;
            }
            Record::Failed { address, .. } => {
                open.remove(address);
                summary.failed += 1;
            }
            Record::Doubt { address, reason } => {
                if let Some(entry) = open.get_mut(address) {
                    entry.1 = reason.clone();
                }
            }
        }
    }
    for (address, (at, reason)) in open {
        state.record_pending(PendingCreate::new(address.clone(), at, reason));
        summary.in_doubt += 1;
    }
    (state, summary)
}

/// Returns the lineage a journal's `begin` record names.
pub fn lineage(records: &[Record]) -> Option<&str> {
    match records.first() {
        Some(Record::Begin { lineage, .. }) => Some(lineage),
        _ => None,
    }
}

/// Journal records for the tests of the fold and of the journal files.
#[cfg(any(test, feature = "samples"))]
pub mod samples {
    use super::*;

    pub fn addr(name: &str) -> Address {
        Address::new(1, name)
    }

    pub fn begin() -> Record {
        Record::Begin {
            lineage: "l".into(),
            serial: 3,
            started: 0,
            pid: 1,
            host: None,
        }
    }

    pub fn created(name: &str, id: u64) -> Record {
        Record::Created {
            address: addr(name),
            id,
            created_at: 10,
            fingerprint: "sha256:f".into(),
        }
    }

    pub fn intent(name: &str) -> Record {
        Record::Intent {
            address: addr(name),
            at: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{addr, begin, created, intent};
    use super::*;

    #[test]
    fn fold_records_created_drops_failed_and_keeps_open_intents_in_doubt() {
        let records = [
            begin(),
            intent("a"),
            intent("b"),
            intent("c"),
            intent("d"),
            created("a", 7),
            Record::Failed {
                address: addr("b"),
                reason: "404".into(),
            },
            Record::Doubt {
                address: addr("c"),
                reason: "server answered 502".into(),
            },
        ];
        let (state, summary) = fold(State::new("l".into()), &records);
        assert_eq!(
            summary,
            FoldSummary {
                created: 1,
                failed: 1,
                in_doubt: 2
            }
        );
        assert_eq!(state.token(&addr("a")).unwrap().id, 7);
        assert!(state.token(&addr("b")).is_none());
        assert!(state.pending_create(&addr("b")).is_none());
        assert_eq!(
            state.pending_create(&addr("c")).unwrap().reason,
            "server answered 502"
        );
        assert_eq!(state.pending_create(&addr("d")).unwrap().since, 5);
    }

    #[test]
    fn folding_twice_gives_the_same_state() {
        let records = [begin(), intent("a"), created("a", 7), intent("b")];
        let (once, _) = fold(State::new("l".into()), &records);
        let (twice, _) = fold(once.clone(), &records);
        assert!(once.same_content(&twice));
    }
}
