//! What happens to tokens after they are made: a refresh asks each token
//! whose secret a sink holds whether it still works, and the plan rotates
//! old tokens and re-creates revoked ones.
//!
//! The API has no list call, but every token can speak for itself:
//! `GET /v2/whoami` with the token answers 200 with its account while it
//! lives and 401 once it is revoked. Classifying, planning and recording
//! are pure; the calls are made by `ops::refresh`.

use rustc_hash::FxHashMap;

use crate::address::Address;
use crate::manifest::{Lifecycle, OnRevoked};
use crate::plan::{Action, Plan};
use crate::state::{Check, Liveness, State, SupersededToken};

/// What a refresh found for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub address: Address,
    pub id: u64,
    pub status: Liveness,
    /// For `misdelivered`, the account it answered for; for `unknown`, why.
    pub detail: Option<String>,
    /// Whether it is its address's current token (else a superseded one).
    pub current: bool,
}

/// The findings of one refresh, for current and superseded tokens alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refresh {
    /// When it ran, in epoch seconds.
    pub at: i64,
    findings: Vec<Finding>,
    index: FxHashMap<(Address, u64), usize>,
}

/// How many tokens a refresh found in each condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RefreshCounts {
    pub alive: usize,
    pub revoked: usize,
    pub misdelivered: usize,
    pub unknown: usize,
    pub unverifiable: usize,
}

impl std::fmt::Display for RefreshCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Refresh: {} alive, {} revoked, {} misdelivered, {} unknown, {} unverifiable.",
            self.alive, self.revoked, self.misdelivered, self.unknown, self.unverifiable
        )
    }
}

/// Too large a share of tokens came back revoked to act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stampede {
    pub revoked: usize,
    pub checked: usize,
}

/// Below this many revoked tokens, re-creation is never held back.
const STAMPEDE_MIN: usize = 3;

impl Refresh {
    /// Returns the findings gathered at `at`.
    pub fn new(at: i64, findings: Vec<Finding>) -> Self {
        let mut findings = findings;
        findings.sort_by(|a, b| (&a.address, a.id).cmp(&(&b.address, b.id)));
        let index = findings
            .iter()
            .enumerate()
            .map(|(i, f)| ((f.address.clone(), f.id), i))
            .collect();
        Refresh {
            at,
            findings,
            index,
        }
    }

    /// Returns the finding for one token.
    pub fn get(&self, address: &Address, id: u64) -> Option<&Finding> {
        self.index
            .get(&(address.clone(), id))
            .map(|&i| &self.findings[i])
    }

    /// Returns every finding, sorted by address and id.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Counts the findings by condition.
    pub fn counts(&self) -> RefreshCounts {
        let mut counts = RefreshCounts::default();
        for finding in &self.findings {
            match finding.status {
                Liveness::Alive => counts.alive += 1,
                Liveness::Revoked => counts.revoked += 1,
                Liveness::Misdelivered => counts.misdelivered += 1,
                Liveness::Unknown => counts.unknown += 1,
                Liveness::Unverifiable => counts.unverifiable += 1,
            }
        }
        counts
    }

    /// Returns the stampede when more than a third of the current tokens
    /// that answered (and more than three) came back revoked: a wrong
    /// region or a broken proxy looks like that, and must not set off
    /// creates that cannot be undone. Superseded tokens are left out: they
    /// are meant to be revoked.
    pub fn stampede(&self) -> Option<Stampede> {
        let current = Refresh::new(
            self.at,
            self.findings
                .iter()
                .filter(|f| f.current)
                .cloned()
                .collect(),
        );
        let counts = current.counts();
        let checked = counts.alive + counts.revoked + counts.misdelivered + counts.unknown;
        (counts.revoked > STAMPEDE_MIN && counts.revoked * 3 > checked).then_some(Stampede {
            revoked: counts.revoked,
            checked,
        })
    }
}

/// Turns unchanged tokens into rotations (older than their `rotate_after`,
/// with no predecessor still waiting) and re-creations (found revoked, with
/// `on_revoked: recreate`, unless `hold_back_replacements`).
pub fn plan_successors(
    mut plan: Plan,
    state: Option<&State>,
    lifecycle: &Lifecycle,
    now: i64,
    refresh: Option<&Refresh>,
    hold_back_replacements: bool,
) -> Plan {
    let Some(state) = state else { return plan };
    // Nothing to rotate or replace: a plan of many tokens skips the pass.
    if refresh.is_none()
        && lifecycle.default.rotate_after.is_none()
        && lifecycle.per_token.is_empty()
    {
        return plan;
    }
    for change in &mut plan.changes {
        if change.action != Action::Unchanged {
            continue;
        }
        let Some(id) = change.id else { continue };
        let policy = lifecycle.policy(&change.address);
        let revoked = refresh
            .and_then(|r| r.get(&change.address, id))
            .is_some_and(|f| f.status == Liveness::Revoked);
        if revoked {
            if policy.on_revoked == OnRevoked::Recreate && !hold_back_replacements {
                change.action = Action::Replace;
            }
            // A revoked token is replaced or reported; never rotated.
            continue;
        }
        let waiting = state.superseded_of(&change.address).next().is_some();
        let due = match (policy.rotate_after, change.created_at) {
            (Some(age), Some(created)) => {
                now.saturating_sub(created) >= i64::try_from(age).unwrap_or(i64::MAX)
            }
            _ => false,
        };
        if due && !waiting {
            change.action = Action::Rotate;
        }
    }
    plan
}

/// Records a refresh in the state: each token's last check, and, with
/// `retire`, drops the superseded tokens found revoked (a person revoked
/// them, as asked). Returns the tokens retired.
pub fn record_refresh(state: &mut State, refresh: &Refresh, retire: bool) -> Vec<SupersededToken> {
    let check = |finding: &Finding| Check {
        at: refresh.at,
        status: finding.status,
    };
    for token in &mut state.tokens {
        if let Some(finding) = refresh.get(&token.address, token.id) {
            token.checked = Some(check(finding));
        }
    }
    // Retired through `State::retire`, which keeps their ids among the
    // former ones: a revoked id is never adopted again.
    let revoked: Vec<(Address, u64)> = state
        .superseded
        .iter()
        .filter(|old| {
            retire
                && refresh
                    .get(&old.address, old.id)
                    .is_some_and(|f| f.status == Liveness::Revoked)
        })
        .map(|old| (old.address.clone(), old.id))
        .collect();
    let retired: Vec<SupersededToken> = revoked
        .iter()
        .filter_map(|(address, id)| state.retire(address, *id))
        .collect();
    for old in &mut state.superseded {
        if let Some(finding) = refresh.get(&old.address, old.id) {
            old.checked = Some(check(finding));
        }
    }
    retired
}

/// What a sink's home for an address holds when a successor is planned:
/// the fixed place its consumers read, which the successor replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeHolds {
    /// The predecessor the state records, in this version of the home when
    /// the sink numbers them (Vault KV).
    Predecessor { version: Option<u64> },
    /// Nothing yet: the successor is the first token written there.
    Empty,
    /// Something else, in words ("token id 999"): apply stops before any
    /// create.
    Other(String),
}

/// Whether the consumers of a superseded token already read its address's
/// current token, as the address's home in one sink shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// The home holds the current token and held the superseded one before
    /// it: what read that one there reads the current one now.
    Moved,
    /// The home holds the current token but, as far as the sink keeps
    /// record, never held the superseded one: its consumers read it
    /// elsewhere (a file of its own, a home moved away).
    Elsewhere,
    /// The home holds another token than the current one: this id (the
    /// superseded token itself, when its successor never reached it).
    Holds(u64),
    /// The home holds no token of the address; what it holds, in words
    /// ("nothing", "a file of another address").
    Behind(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Policy;
    use crate::plan::plan;
    use crate::state::TokenRecord;

    const DAY: i64 = 86_400;

    fn addr(name: &str) -> Address {
        Address::new(1, name)
    }

    fn state(tokens: &[(&str, u64, i64)]) -> State {
        let mut state = State::new("l".into());
        for (name, id, created) in tokens {
            state.record_created(TokenRecord::created(addr(name), *id, *created, "f".into()));
        }
        state
    }

    fn lifecycle(rotate_days: Option<u64>, on_revoked: OnRevoked) -> Lifecycle {
        Lifecycle {
            default: Policy {
                rotate_after: rotate_days.map(|d| d * DAY as u64),
                on_revoked,
            },
            per_token: FxHashMap::default(),
        }
    }

    fn finding(name: &str, id: u64, status: Liveness) -> Finding {
        Finding {
            address: addr(name),
            id,
            status,
            detail: None,
            current: true,
        }
    }

    fn successors(
        desired: &[Address],
        state: &State,
        policy: &Lifecycle,
        now: i64,
        refresh: Option<&Refresh>,
        hold_back: bool,
    ) -> Plan {
        plan_successors(
            plan(desired, Some(state)),
            Some(state),
            policy,
            now,
            refresh,
            hold_back,
        )
    }

    fn actions(plan: &Plan) -> Vec<(String, Action)> {
        plan.changes
            .iter()
            .map(|c| (c.address.name.clone(), c.action))
            .collect()
    }

    #[test]
    fn rotates_tokens_older_than_their_age_once() {
        let now = 100 * DAY;
        let mut state = state(&[("old", 1, 0), ("young", 2, 50 * DAY)]);
        let desired = [addr("old"), addr("young")];
        let policy = lifecycle(Some(90), OnRevoked::Report);
        let planned = successors(&desired, &state, &policy, now, None, false);
        assert_eq!(
            actions(&planned),
            [
                ("old".into(), Action::Rotate),
                ("young".into(), Action::Unchanged)
            ]
        );
        assert_eq!(planned.summary().rotate, 1);
        assert_eq!(planned.creates(), [addr("old")]);

        // The successor (dated 0 here, so due as well) is not rotated
        // while its predecessor waits to be revoked.
        state.record_created(TokenRecord::created(addr("old"), 3, 0, "g".into()));
        assert_eq!(state.superseded.len(), 1);
        let again = successors(&desired, &state, &policy, now, None, false);
        assert_eq!(again.summary().rotate, 0, "{:?}", actions(&again));
        // Once retired, rotation can happen again.
        state.retire(&addr("old"), 1).unwrap();
        let later = successors(&desired, &state, &policy, now, None, false);
        assert_eq!(later.summary().rotate, 1);
    }

    #[test]
    fn a_token_of_unknown_age_is_never_rotated() {
        let mut state = State::new("l".into());
        state.record_created(TokenRecord::new(
            addr("imported"),
            9,
            None,
            crate::state::Origin::Imported,
            None,
        ));
        let policy = lifecycle(Some(1), OnRevoked::Report);
        let planned = successors(
            &[addr("imported")],
            &state,
            &policy,
            1_000 * DAY,
            None,
            false,
        );
        assert_eq!(planned.summary().rotate, 0);
    }

    #[test]
    fn per_token_settings_win_over_the_top_level() {
        let state = state(&[("a", 1, 0), ("b", 2, 0)]);
        let mut policy = lifecycle(Some(90), OnRevoked::Report);
        policy.per_token.insert(
            addr("b"),
            Policy {
                rotate_after: Some(365 * DAY as u64),
                on_revoked: OnRevoked::Report,
            },
        );
        let planned = successors(
            &[addr("a"), addr("b")],
            &state,
            &policy,
            100 * DAY,
            None,
            false,
        );
        assert_eq!(
            actions(&planned),
            [
                ("a".into(), Action::Rotate),
                ("b".into(), Action::Unchanged)
            ]
        );
    }

    #[test]
    fn only_revoked_tokens_are_replaced_and_only_when_asked() {
        let state = state(&[("r", 1, 0), ("u", 2, 0), ("a", 3, 0)]);
        let refresh = Refresh::new(
            10,
            vec![
                finding("r", 1, Liveness::Revoked),
                finding("u", 2, Liveness::Unknown),
                finding("a", 3, Liveness::Alive),
            ],
        );
        let desired = [addr("a"), addr("r"), addr("u")];
        let report = lifecycle(None, OnRevoked::Report);
        let planned = successors(&desired, &state, &report, 10, Some(&refresh), false);
        assert!(!planned.has_changes());
        let recreate = lifecycle(None, OnRevoked::Recreate);
        let planned = successors(&desired, &state, &recreate, 10, Some(&refresh), false);
        assert_eq!(planned.creates(), [addr("r")]);
        assert_eq!(planned.summary().replace, 1);
        let held = successors(&desired, &state, &recreate, 10, Some(&refresh), true);
        assert!(!held.has_changes());
    }

    #[test]
    fn a_large_share_revoked_is_a_stampede() {
        let many = |revoked: usize, alive: usize| {
            let mut findings = Vec::new();
            for i in 0..revoked {
                findings.push(finding(&format!("r{i}"), i as u64, Liveness::Revoked));
            }
            for i in 0..alive {
                findings.push(finding(&format!("a{i}"), 100 + i as u64, Liveness::Alive));
            }
            findings.push(finding("x", 999, Liveness::Unverifiable));
            Refresh::new(0, findings)
        };
        assert_eq!(many(3, 0).stampede(), None, "three are never a stampede");
        // Superseded tokens are meant to be revoked: they never count.
        let mut revoked_predecessors = many(0, 2).findings().to_vec();
        for i in 0..10 {
            let mut old = finding(&format!("p{i}"), 500 + i, Liveness::Revoked);
            old.current = false;
            revoked_predecessors.push(old);
        }
        assert_eq!(Refresh::new(0, revoked_predecessors).stampede(), None);
        assert_eq!(many(4, 8).stampede(), None, "exactly a third is not more");
        assert_eq!(
            many(4, 7).stampede(),
            Some(Stampede {
                revoked: 4,
                checked: 11
            })
        );
    }

    #[test]
    fn recording_a_refresh_marks_tokens_and_retires_revoked_predecessors() {
        let mut state = state(&[("a", 1, 0)]);
        state.record_created(TokenRecord::created(addr("a"), 2, 5, "g".into()));
        let refresh = Refresh::new(
            77,
            vec![
                finding("a", 1, Liveness::Revoked),
                finding("a", 2, Liveness::Alive),
            ],
        );
        let retired = record_refresh(&mut state, &refresh, true);
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].id, 1);
        assert!(state.superseded.is_empty());
        // Its id is kept: it is never adopted again.
        assert!(state.has_recorded(1));
        assert_eq!(
            state.token(&addr("a")).unwrap().checked,
            Some(Check {
                at: 77,
                status: Liveness::Alive
            })
        );
    }
}
