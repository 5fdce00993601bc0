//! The planner: manifest + state → what would change. Pure: no I/O.

use rustc_hash::FxHashSet;

use serde::Serialize;

use crate::address::Address;
use crate::state::State;

/// What a plan does with one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// In the manifest, not in the state: will be created.
    Create,
    /// In both: nothing to do.
    Unchanged,
    /// In the state, not in the manifest: the API cannot delete it.
    Orphaned,
    /// A create whose outcome is unknown: blocked until resolved.
    InDoubt,
    /// Older than its `rotate_after`: a successor will be created, and the
    /// token kept as superseded until a person revokes it.
    Rotate,
    /// Revoked outside tokenctl, with `on_revoked: recreate`: a successor
    /// will be created.
    Replace,
    /// A create that an apply running right now has sent: it will record
    /// the outcome (unlike a create in doubt, whose run is gone).
    InProgress,
}

impl Action {
    /// Tells whether applying this action sends a create.
    pub fn creates(self) -> bool {
        matches!(self, Action::Create | Action::Rotate | Action::Replace)
    }
}

/// One address and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub address: Address,
    pub action: Action,
    /// The token id, when the state knows it.
    pub id: Option<u64>,
    /// For a create in doubt: since when (epoch seconds) and why.
    pub doubt: Option<(i64, String)>,
    /// The current token's creation time (epoch seconds), when known.
    pub created_at: Option<i64>,
}

/// Counts of a plan's actions. `create` counts every create, successors
/// included; `rotate` and `replace` say how many of them are successors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub unchanged: usize,
    pub orphaned: usize,
    pub in_doubt: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub in_progress: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub rotate: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub replace: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plan: {} to create", self.create)?;
        let mut successors = Vec::new();
        if self.rotate > 0 {
            successors.push(format!("{} rotation(s)", self.rotate));
        }
        if self.replace > 0 {
            successors.push(format!("{} replacing revoked token(s)", self.replace));
        }
        if !successors.is_empty() {
            write!(f, " ({})", successors.join(", "))?;
        }
        write!(
            f,
            ", {} unchanged, {} orphaned, {} in doubt",
            self.unchanged, self.orphaned, self.in_doubt
        )?;
        if self.in_progress > 0 {
            write!(f, ", {} in progress", self.in_progress)?;
        }
        f.write_str(".")
    }
}

/// Every address of the manifest and the state, sorted, with its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    /// Returns the counts of each action.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for change in &self.changes {
            match change.action {
                Action::Create => summary.create += 1,
                Action::Unchanged => summary.unchanged += 1,
                Action::Orphaned => summary.orphaned += 1,
                Action::InDoubt => summary.in_doubt += 1,
                Action::InProgress => summary.in_progress += 1,
                Action::Rotate => {
                    summary.create += 1;
                    summary.rotate += 1;
                }
                Action::Replace => {
                    summary.create += 1;
                    summary.replace += 1;
                }
            }
        }
        summary
    }

    /// Returns the changes that make a successor for a token (a rotation,
    /// or a re-creation after a revocation), in plan order.
    pub fn successions(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| matches!(c.action, Action::Rotate | Action::Replace))
    }

    /// Returns the addresses to create, in plan order.
    pub fn creates(&self) -> Vec<Address> {
        self.changes
            .iter()
            .filter(|c| c.action.creates())
            .map(|c| c.address.clone())
            .collect()
    }

    /// Marks the creates that a running apply has under way as in
    /// progress rather than in doubt.
    pub fn mark_in_progress(mut self, under_way: &[Address]) -> Plan {
        if under_way.is_empty() {
            return self;
        }
        for change in &mut self.changes {
            if change.action == Action::InDoubt && under_way.contains(&change.address) {
                change.action = Action::InProgress;
            }
        }
        self
    }

    /// Tells whether applying the plan would change anything.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action.creates())
    }
}

/// Which addresses a targeted plan keeps: `--target` and `--exclude`
/// patterns, each an address or `<accountId>/*` for a whole sub-account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targeting {
    pub targets: Vec<Pattern>,
    pub excludes: Vec<Pattern>,
}

/// An address, or every address of one sub-account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Address(Address),
    Account(u64),
}

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(account) = s.strip_suffix("/*") {
            return account
                .parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .map(Pattern::Account)
                .ok_or_else(|| {
                    format!("`{s}` is not a target; write <accountId>/<name> or <accountId>/*")
                });
        }
        s.parse()
            .map(Pattern::Address)
            .map_err(|e: crate::address::AddressParseError| e.to_string())
    }
}

impl Pattern {
    fn matches(&self, address: &Address) -> bool {
        match self {
            Pattern::Address(wanted) => wanted == address,
            Pattern::Account(id) => *id == address.account_id,
        }
    }
}

impl Targeting {
    /// Tells whether any targeting is in effect.
    pub fn is_active(&self) -> bool {
        !self.targets.is_empty() || !self.excludes.is_empty()
    }

    /// Tells whether the address is kept.
    pub fn keeps(&self, address: &Address) -> bool {
        (self.targets.is_empty() || self.targets.iter().any(|p| p.matches(address)))
            && !self.excludes.iter().any(|p| p.matches(address))
    }
}

impl Plan {
    /// Returns the plan restricted to the targeted addresses.
    pub fn restrict(self, targeting: &Targeting) -> Plan {
        if !targeting.is_active() {
            return self;
        }
        Plan {
            changes: self
                .changes
                .into_iter()
                .filter(|c| targeting.keeps(&c.address))
                .collect(),
        }
    }
}

/// Plans the manifest's tokens against the state (`None`: no state yet).
pub fn plan(desired: &[Address], state: Option<&State>) -> Plan {
    // Fx hashing: addresses come from the project's own files, so there is
    // no untrusted input to defend against, and it makes 100k-token plans
    // markedly faster than SipHash.
    let wanted: FxHashSet<&Address> = desired.iter().collect();
    let state_len = state.map_or(0, |s| s.tokens.len() + s.pending.len());
    let mut known: FxHashSet<&Address> =
        FxHashSet::with_capacity_and_hasher(state_len, Default::default());
    let mut changes = Vec::with_capacity(desired.len());
    if let Some(state) = state {
        // A successor's create in doubt blocks its address like any other.
        let pending: FxHashSet<&Address> = state.pending.iter().map(|p| &p.address).collect();
        for token in &state.tokens {
            if pending.contains(&token.address) {
                continue;
            }
            known.insert(&token.address);
            let action = if wanted.contains(&token.address) {
                Action::Unchanged
            } else {
                Action::Orphaned
            };
            changes.push(Change {
                address: token.address.clone(),
                action,
                id: Some(token.id),
                doubt: None,
                created_at: token.created_at,
            });
        }
        for pending in &state.pending {
            if known.insert(&pending.address) {
                let current = state.token(&pending.address);
                changes.push(Change {
                    address: pending.address.clone(),
                    action: Action::InDoubt,
                    id: current.map(|t| t.id),
                    doubt: Some((pending.since, pending.reason.clone())),
                    created_at: current.and_then(|t| t.created_at),
                });
            }
        }
    }
    for address in desired {
        if !known.contains(address) {
            changes.push(Change {
                address: address.clone(),
                action: Action::Create,
                id: None,
                doubt: None,
                created_at: None,
            });
        }
    }
    changes.sort_by(|a, b| a.address.cmp(&b.address));
    Plan { changes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{PendingCreate, TokenRecord};

    fn addr(account: u64, name: &str) -> Address {
        Address::new(account, name)
    }

    fn state_with(tokens: &[(Address, u64)], pending: &[Address]) -> State {
        let mut state = State::new("l".into());
        for (address, id) in tokens {
            state.record_created(TokenRecord::created(address.clone(), *id, 0, "f".into()));
        }
        for address in pending {
            state.record_pending(PendingCreate::new(address.clone(), 0, "timeout".into()));
        }
        state
    }

    fn actions(plan: &Plan) -> Vec<(String, Action)> {
        plan.changes
            .iter()
            .map(|c| (c.address.to_string(), c.action))
            .collect()
    }

    #[test]
    fn everything_is_created_without_state() {
        let plan = plan(&[addr(2, "b"), addr(1, "a")], None);
        assert_eq!(
            actions(&plan),
            [
                ("1/a".into(), Action::Create),
                ("2/b".into(), Action::Create)
            ]
        );
        assert_eq!(plan.summary().create, 2);
        assert!(plan.has_changes());
    }

    #[test]
    fn classifies_create_unchanged_orphaned_and_in_doubt() {
        let state = state_with(&[(addr(1, "a"), 10), (addr(1, "old"), 11)], &[addr(3, "c")]);
        let desired = [addr(1, "a"), addr(2, "new"), addr(3, "c")];
        let plan = plan(&desired, Some(&state));
        assert_eq!(
            actions(&plan),
            [
                ("1/a".into(), Action::Unchanged),
                ("1/old".into(), Action::Orphaned),
                ("2/new".into(), Action::Create),
                ("3/c".into(), Action::InDoubt),
            ]
        );
        assert_eq!(plan.changes[1].id, Some(11));
        assert_eq!(
            plan.summary(),
            Summary {
                create: 1,
                unchanged: 1,
                orphaned: 1,
                in_doubt: 1,
                ..Summary::default()
            }
        );
        assert_eq!(
            plan.summary().to_string(),
            "Plan: 1 to create, 1 unchanged, 1 orphaned, 1 in doubt."
        );
        assert_eq!(plan.creates(), [addr(2, "new")]);
    }

    #[test]
    fn in_doubt_entries_stay_blocked_even_when_dropped_from_the_manifest() {
        let state = state_with(&[], &[addr(3, "c")]);
        let plan = plan(&[], Some(&state));
        assert_eq!(actions(&plan), [("3/c".into(), Action::InDoubt)]);
        assert!(!plan.has_changes());
    }

    #[test]
    fn planning_after_an_apply_yields_no_changes() {
        let desired = [addr(1, "a"), addr(1, "b")];
        let first = plan(&desired, None);
        let mut state = State::new("l".into());
        for (i, address) in first.creates().into_iter().enumerate() {
            state.record_created(TokenRecord::created(address, i as u64, 0, "f".into()));
        }
        let second = plan(&desired, Some(&state));
        assert!(!second.has_changes());
        assert_eq!(second.summary().unchanged, 2);
        assert_eq!(plan(&desired, Some(&state)), second);
    }

    #[test]
    fn targeting_keeps_targets_and_drops_excludes() {
        let desired = [addr(1, "a"), addr(1, "b"), addr(2, "a"), addr(3, "x")];
        let full = plan(&desired, None);
        let targeting = Targeting {
            targets: vec!["1/*".parse().unwrap(), "3/x".parse().unwrap()],
            excludes: vec!["1/b".parse().unwrap()],
        };
        let restricted = full.clone().restrict(&targeting);
        assert_eq!(restricted.creates(), [addr(1, "a"), addr(3, "x")]);
        let only_exclude = Targeting {
            targets: vec![],
            excludes: vec!["2/*".parse().unwrap()],
        };
        assert_eq!(full.clone().restrict(&only_exclude).creates().len(), 3);
        assert_eq!(full.clone().restrict(&Targeting::default()), full);
        assert!("x/*".parse::<Pattern>().is_err());
        assert!("0/*".parse::<Pattern>().is_err());
    }

    #[test]
    fn in_doubt_changes_carry_since_and_reason() {
        let state = state_with(&[], &[addr(3, "c")]);
        let plan = plan(&[], Some(&state));
        assert_eq!(plan.changes[0].doubt, Some((0, "timeout".into())));
    }

    #[test]
    fn orders_by_account_id_numerically() {
        let plan = plan(&[addr(10, "a"), addr(9, "a"), addr(100, "a")], None);
        let order: Vec<String> = plan.changes.iter().map(|c| c.address.to_string()).collect();
        assert_eq!(order, ["9/a", "10/a", "100/a"]);
    }
}
