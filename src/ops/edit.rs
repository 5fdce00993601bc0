//! Hand edits of the state: settle a create in doubt, import a token made
//! elsewhere, forget one revoked in the UI, retire a superseded one. Each
//! takes the state as loaded under the lock and returns the state to
//! commit, or why the edit cannot be made; the caller commits it.

use crate::error::Failure;
use crate::model::address::Address;
use crate::model::state::{Origin, State, TokenRecord};
use crate::ops::sinks::Readers;
use crate::secret::fingerprint_of;
use crate::sink::FoundSecret;

/// How to settle a create in doubt.
pub enum Settle {
    /// The token exists with this id (a person found it in the UI).
    Adopt(u64),
    /// No token was made: forget the create. The sinks that can read back
    /// are searched first: one holding a token made by this create proves
    /// the person wrong, and one that cannot be read might (unless forced).
    Abandon { readers: Readers, force: bool },
    /// Look for the secret the create delivered in these sinks.
    FromSinks(Readers),
}

/// Fails unless `address` has a create in doubt.
pub fn check_in_doubt(state: &State, address: &Address) -> Result<(), Failure> {
    match state.pending_create(address) {
        Some(_) => Ok(()),
        None => Err(not_in_doubt(address)),
    }
}

fn not_in_doubt(address: &Address) -> Failure {
    Failure::new(format!("{address} is not in doubt"))
        .hint("`tokenctl plan` marks the creates in doubt with `?`")
}

/// A token found in a sink.
struct SinkRecord {
    id: u64,
    created_at: Option<i64>,
    fingerprint: String,
    /// What a sink could not read while the secret was searched for.
    unread: Vec<String>,
}

/// Settles the create in doubt of `address`; returns the state to commit
/// and a sentence saying what was done.
pub fn resolve(before: &State, address: &Address, how: Settle) -> Result<(State, String), Failure> {
    let pending = before
        .pending_create(address)
        .cloned()
        .ok_or_else(|| not_in_doubt(address))?;
    let mut after = before.clone();
    let record = match how {
        Settle::Abandon { readers, force } => {
            let search = search_sinks(readers, address, pending.since, before);
            if !search.problems.is_empty() && !force {
                let mut message = format!(
                    "{address} is not abandoned: a sink that may hold a token its create made could not be read:"
                );
                for problem in &search.problems {
                    message.push_str(&format!("\n  {problem}"));
                }
                return Err(Failure::new(message).hint(format!(
                    "make the sink readable (its key, its address) and run resolve again; if it can never be read, check the Logz.io UI of account {} and pass --abandon --force",
                    address.account_id
                )));
            }
            if let Some((found, _)) = search.candidates.first() {
                return Err(Failure::new(format!(
                    "{address} cannot be abandoned: a sink holds token id {} for it ({}), made since its create was sent, so that create made a token",
                    found.id, found.place
                ))
                .hint(format!(
                    "record it with `tokenctl resolve {address}`; to drop it instead, revoke token id {} in the Logz.io UI, then retire it after the next apply",
                    found.id
                )));
            }
            after.pending.retain(|p| &p.address != address);
            return Ok((
                after,
                format!(
                    "{address} was abandoned; the next apply creates it if the manifest still lists it."
                ),
            ));
        }
        Settle::Adopt(id) if before.has_recorded(id) => {
            return Err(Failure::new(format!(
                "token id {id} is one this state has recorded already (current, superseded, forgotten or retired), so it cannot be the token {address}'s create in doubt made"
            ))
            .hint(format!(
                "look in the Logz.io UI of account {} for a token made since the create was sent, and adopt its id; if there is none, `--abandon`",
                address.account_id
            )));
        }
        Settle::Adopt(id) => SinkRecord {
            id,
            created_at: None,
            fingerprint: String::new(),
            unread: Vec::new(),
        },
        Settle::FromSinks(readers) => find_in_sinks(readers, address, pending.since, before)?,
    };
    after.record_created(TokenRecord::new(
        pending.address.clone(),
        record.id,
        record.created_at,
        Origin::Created,
        (!record.fingerprint.is_empty()).then_some(record.fingerprint),
    ));
    let mut done = format!("{address} is recorded as token id {}.", record.id);
    for unread in &record.unread {
        done.push_str(&format!(
            "\nnote: passed over, as it could not be read: {unread}"
        ));
    }
    Ok((after, done))
}

/// Finds the secret an in-doubt create delivered before its run died, in
/// every sink that can read secrets back: a sink's newest secret for the
/// address, if it was made since the create was sent and the state does
/// not hold its id already. An older one is a token from before (perhaps
/// revoked and forgotten since). Sinks that disagree are refused as
/// ambiguous.
fn find_in_sinks(
    readers: Readers,
    address: &Address,
    since: i64,
    state: &State,
) -> Result<SinkRecord, Failure> {
    let Search {
        searched,
        mut candidates,
        problems,
    } = search_sinks(readers, address, since, state);
    let ui_hint = format!(
        "look for the token in the Logz.io UI of account {}: if it exists, run `tokenctl resolve {address} --adopt ID`; if not, `--abandon`",
        address.account_id
    );
    match candidates.len() {
        1 => {
            let (found, _) = candidates.remove(0);
            Ok(SinkRecord {
                id: found.id,
                created_at: found.created_at,
                fingerprint: fingerprint_of(found.token.expose()),
                unread: problems,
            })
        }
        0 => {
            // A sink that could not be read may hold it: say so.
            let holds = match problems.is_empty() {
                true => "no sink holds",
                false => "no sink that could be read holds",
            };
            let mut message = format!(
                "{holds} a token for {address} created since its create was sent ({}) that the state does not record yet (searched: {})",
                crate::time::utc(since),
                searched.join(", ")
            );
            if !problems.is_empty() {
                message.push_str("; what could not be read may hold it:");
            }
            for problem in &problems {
                message.push_str(&format!("\n  {problem}"));
            }
            Err(Failure::new(message).hint(ui_hint))
        }
        _ => {
            let list: Vec<String> = candidates
                .iter()
                .map(|(found, sink)| format!("id {} in {sink} ({})", found.id, found.place))
                .collect();
            Err(Failure::new(format!(
                    "the sinks hold several tokens for {address} that the state does not record: {}",
                    list.join(", ")
                ))
                .hint(format!("check which one is live in the Logz.io UI and run `tokenctl resolve {address} --adopt ID`")))
        }
    }
}

/// What a search of the sinks found for a create in doubt.
struct Search {
    /// The sinks searched, for messages.
    searched: Vec<String>,
    /// Each sink's newest secret for the address made since the create was
    /// sent, whose id the state never recorded, with the sink's name.
    candidates: Vec<(FoundSecret, String)>,
    /// Sinks that could not be read.
    problems: Vec<String>,
}

/// Searches every sink that can read back for a secret the create in doubt
/// of `address` (sent at `since`) may have delivered.
fn search_sinks(readers: Readers, address: &Address, since: i64, state: &State) -> Search {
    let Readers {
        readers: lookups,
        mut problems,
    } = readers;
    let mut searched = Vec::new();
    let mut candidates: Vec<(FoundSecret, String)> = Vec::new();
    for lookup in &lookups {
        searched.push(lookup.describe());
        match lookup.lookup_noting(address) {
            // Only a sink's newest secret for the address can be the
            // in-doubt one: older ones belong to tokens made before it
            // (and perhaps forgotten since).
            Ok((found, unread)) => {
                problems.extend(unread);
                let newest = found.into_iter().last();
                if let Some(secret) = newest.filter(|s| s.created_at.is_some_and(|t| t >= since)) {
                    // An id the state ever recorded (current, superseded,
                    // forgotten, retired) is a token from before, whatever
                    // the clocks say.
                    if !state.has_recorded(secret.id)
                        && !candidates.iter().any(|(c, _)| c.id == secret.id)
                    {
                        candidates.push((secret, lookup.describe()));
                    }
                }
            }
            Err(err) => problems.push(match &err.hint {
                Some(hint) => format!("{err} ({hint})"),
                None => err.to_string(),
            }),
        }
    }
    Search {
        searched,
        candidates,
        problems,
    }
}

/// Records a token made outside tokenctl; returns the state to commit.
pub fn import(
    before: Option<&State>,
    address: &Address,
    id: u64,
    created_at: Option<i64>,
) -> Result<State, Failure> {
    if let Some(before) = before {
        if let Some(existing) = before.token(address) {
            return Err(Failure::new(format!(
                "{address} is already in the state (token id {})",
                existing.id
            ))
            .hint(
                "to replace it, revoke the old token in the UI and run `tokenctl forget` first",
            ));
        }
        if before.pending_create(address).is_some() {
            return Err(
                Failure::new(format!("{address} has a create in doubt")).hint(format!(
                    "settle it with `tokenctl resolve {address} --adopt {id}`"
                )),
            );
        }
    }
    let mut after = before.cloned().unwrap_or_else(crate::lineage::fresh_state);
    after.record_created(TokenRecord::new(
        address.clone(),
        id,
        created_at,
        Origin::Imported,
        None,
    ));
    Ok(after)
}

/// Drops a token revoked in the UI from the state; `in_manifest` says
/// whether the manifest still lists it (then it would be created again).
pub fn forget(before: &State, address: &Address, in_manifest: bool) -> Result<State, Failure> {
    if in_manifest {
        return Err(
            Failure::new(format!("{address} is still in the manifest")).hint(
                "remove it from the manifest first; forget is for tokens revoked in the Logz.io UI",
            ),
        );
    }
    if before.token(address).is_none() {
        return Err(Failure::new(format!("{address} is not in the state"))
            .hint("`tokenctl state list` shows the addresses it holds"));
    }
    let mut after = before.clone();
    after.forget(address);
    Ok(after)
}

/// Checks that `id` is a superseded token of `address`, which `retire`
/// drops once a person revoked it.
pub fn check_retirable(before: &State, address: &Address, id: u64) -> Result<(), Failure> {
    if before.superseded_of(address).any(|old| old.id == id) {
        return Ok(());
    }
    let hint = match before.token(address).filter(|t| t.id == id) {
        Some(_) => {
            "it is the address's current token; to drop it, remove it from the manifest, revoke it and run `tokenctl forget`"
        }
        None => "`tokenctl state list` shows the superseded tokens waiting to be revoked",
    };
    Err(Failure::new(format!(
        "token id {id} of {address} is not a superseded token"
    ))
    .hint(hint))
}

/// What `state push` does with a state file.
#[derive(Debug)]
pub enum Push {
    /// The backend holds this very state already.
    AlreadyThere,
    /// Store this state (its serial moved past the stored one's).
    Store(State),
}

/// Returns what the state would lose if `pushed` replaced `current`:
/// each token (current or superseded) and each create in doubt that
/// `pushed` does not hold, as a line for a person.
pub fn dropped_by_push(current: &State, pushed: &State) -> Vec<String> {
    // A token that moved between current and superseded is still held.
    let holds = |address: &Address, id: u64| {
        pushed
            .tokens
            .iter()
            .any(|t| &t.address == address && t.id == id)
            || pushed
                .superseded
                .iter()
                .any(|t| &t.address == address && t.id == id)
    };
    let mut dropped = Vec::new();
    for token in &current.tokens {
        if !holds(&token.address, token.id) {
            dropped.push(format!("token {} (id {})", token.address, token.id));
        }
    }
    for old in &current.superseded {
        if !holds(&old.address, old.id) {
            dropped.push(format!(
                "superseded token {} (id {}), waiting to be revoked",
                old.address, old.id
            ));
        }
    }
    // A create in doubt is settled, not lost, where a token now stands.
    for pending in &current.pending {
        if pushed.pending_create(&pending.address).is_none()
            && pushed.token(&pending.address).is_none()
        {
            dropped.push(format!("create in doubt {}", pending.address));
        }
    }
    dropped
}

/// Decides whether `pushed` (read from `file`) may replace `current`: not
/// another lineage, an older serial, the same serial with other content,
/// or a state that drops a token or a create in doubt, unless `force`;
/// never a serial that could not move on.
pub fn push(
    current: Option<&State>,
    mut pushed: State,
    file: &str,
    force: bool,
) -> Result<Push, Failure> {
    use crate::backend::{MAX_SERIAL, next_serial};
    // Refused even with --force: the next write would have to wrap it.
    if next_serial(pushed.serial).is_none() {
        return Err(Failure::new(format!(
            "{file} has serial {}, which cannot move on (the largest serial is {MAX_SERIAL})",
            pushed.serial
        ))
        .hint("a serial moves on by one per write; push the document with the serial it had (`tokenctl state pull` shows the stored one)"));
    }
    let Some(current) = current else {
        return Ok(Push::Store(pushed));
    };
    let dropped = dropped_by_push(current, &pushed);
    let refusal = if current.lineage != pushed.lineage {
        Some(format!(
            "{file} is of another state (lineage {}, the stored one has {})",
            pushed.lineage, current.lineage
        ))
    } else if pushed.serial < current.serial {
        Some(format!(
            "{file} is older than the stored state (serial {}, the stored one is at {})",
            pushed.serial, current.serial
        ))
    } else if pushed.serial == current.serial && !pushed.same_content(current) {
        Some(format!(
            "{file} has the stored state's serial {} but other content",
            current.serial
        ))
    } else if !dropped.is_empty() {
        let mut message =
            format!("{file} would drop from the state what it records (the diff above shows it):");
        for line in &dropped {
            message.push_str(&format!("\n  - {line}"));
        }
        if !force {
            return Err(Failure::new(message).hint(
                "the state is the only record of these tokens, and the next apply would create each dropped address again; if they were revoked in the UI and this is meant, push again with --force",
            ));
        }
        None
    } else {
        None
    };
    if let Some(refusal) = refusal
        && !force
    {
        return Err(Failure::new(refusal).hint(
            "the stored state records tokens that cannot be listed again through the API; pull it and compare (`tokenctl state pull`) before overwriting it with --force",
        ));
    }
    if pushed.serial == current.serial && pushed.same_content(current) {
        return Ok(Push::AlreadyThere);
    }
    // A forced push still moves the serial on, so that plan files made
    // from the replaced state are refused as stale.
    let after_current = next_serial(current.serial).ok_or_else(|| {
        Failure::new(format!(
            "the stored state has serial {}, which cannot move on (the largest serial is {MAX_SERIAL})",
            current.serial
        ))
        .hint("restore the version before it from the history table, and push that with --force")
    })?;
    pushed.serial = pushed.serial.max(after_current);
    // The ids a person dropped only ever accumulate, even through --force:
    // a pushed document that lost them would let `resolve` adopt one.
    for former in &current.former {
        if !pushed.former.contains(former) {
            pushed.former.push(former.clone());
        }
    }
    Ok(Push::Store(pushed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::PendingCreate;
    use crate::secret::Secret;
    use crate::sink::{SecretLookup, SinkError};

    fn addr(name: &str) -> Address {
        Address::new(1, name)
    }

    /// A state with `1/a` created (id 7) and `1/b` in doubt since 100.
    fn state() -> State {
        let mut state = State::new("l".into());
        state.record_created(TokenRecord::created(addr("a"), 7, 50, "f".into()));
        state.record_pending(PendingCreate::new(addr("b"), 100, "timed out".into()));
        state
    }

    /// A sink holding `(address name, id, created_at)` records.
    struct Held(&'static str, Vec<(&'static str, u64, i64)>);

    impl SecretLookup for Held {
        fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError> {
            Ok(self
                .1
                .iter()
                .filter(|(name, ..)| *name == address.name)
                .map(|(_, id, at)| FoundSecret {
                    id: *id,
                    created_at: Some(*at),
                    token: Secret::new(format!("secret-{id}")),
                    place: format!("{}#{id}", self.0),
                })
                .collect())
        }

        fn describe(&self) -> String {
            self.0.into()
        }
    }

    fn readers(held: Vec<Held>) -> Readers {
        Readers {
            readers: held
                .into_iter()
                .map(|h| Box::new(h) as Box<dyn SecretLookup>)
                .collect(),
            problems: Vec::new(),
        }
    }

    fn sinks(held: Vec<Held>) -> Settle {
        Settle::FromSinks(readers(held))
    }

    #[test]
    fn an_id_ever_recorded_is_never_adopted_whatever_the_clocks_say() {
        // 1/b was created as id 4, forgotten, then added again; its new
        // create is in doubt since 100, and the old token's record in the
        // sink is dated the same second.
        let mut before = State::new("l".into());
        before.record_created(TokenRecord::created(addr("b"), 4, 100, "f".into()));
        assert!(before.forget(&addr("b")).is_some());
        before.record_pending(PendingCreate::new(addr("b"), 100, "timed out".into()));
        let held = Held("file", vec![("b", 4, 100)]);
        let err = resolve(&before, &addr("b"), sinks(vec![held]))
            .err()
            .unwrap();
        assert!(
            err.message.starts_with("no sink holds a token for 1/b"),
            "{}",
            err.message
        );
        let err = resolve(&before, &addr("b"), Settle::Adopt(4))
            .err()
            .unwrap();
        assert!(err.message.contains("recorded already"), "{}", err.message);
        // A retired id is as old.
        let mut retired = State::new("l".into());
        retired.record_created(TokenRecord::created(addr("b"), 5, 10, "f".into()));
        retired.record_created(TokenRecord::created(addr("b"), 6, 20, "g".into()));
        assert!(retired.retire(&addr("b"), 5).is_some());
        assert!(retired.has_recorded(5) && retired.has_recorded(6));
    }

    #[test]
    fn a_rotation_in_doubt_adopts_neither_the_predecessor_nor_abandons_a_delivered_successor() {
        // 1/a's token is id 7; its successor's create is in doubt since 100,
        // and the successor's secret (id 12) reached the sink.
        let mut before = state();
        before.record_pending(PendingCreate::new(addr("a"), 100, "crashed".into()));
        let err = resolve(&before, &addr("a"), Settle::Adopt(7))
            .err()
            .unwrap();
        assert!(
            err.message
                .contains("token id 7 is one this state has recorded"),
            "{}",
            err.message
        );
        let held = || Held("file", vec![("a", 7, 50), ("a", 12, 101)]);
        let err = resolve(
            &before,
            &addr("a"),
            Settle::Abandon {
                readers: readers(vec![held()]),
                force: false,
            },
        )
        .err()
        .unwrap();
        assert!(
            err.message
                .starts_with("1/a cannot be abandoned: a sink holds token id 12 for it (file#12)"),
            "{}",
            err.message
        );
        // What resolve records instead: the successor, with the
        // predecessor kept as superseded.
        let (after, _) = resolve(&before, &addr("a"), sinks(vec![held()])).unwrap();
        assert_eq!(after.token(&addr("a")).unwrap().id, 12);
        assert_eq!(after.superseded_of(&addr("a")).next().unwrap().id, 7);
    }

    #[test]
    fn adopting_or_abandoning_settles_only_a_create_in_doubt() {
        let (after, done) = resolve(&state(), &addr("b"), Settle::Adopt(9)).unwrap();
        assert!(after.pending.is_empty());
        assert_eq!(after.token(&addr("b")).unwrap().id, 9);
        assert_eq!(done, "1/b is recorded as token id 9.");

        let (after, _) = resolve(
            &state(),
            &addr("b"),
            Settle::Abandon {
                readers: Readers::default(),
                force: false,
            },
        )
        .unwrap();
        assert!(after.pending.is_empty() && after.token(&addr("b")).is_none());

        let err = resolve(
            &state(),
            &addr("a"),
            Settle::Abandon {
                readers: Readers::default(),
                force: false,
            },
        )
        .err()
        .unwrap();
        assert_eq!(err.message, "1/a is not in doubt");
    }

    #[test]
    fn a_sink_adopts_only_its_newest_secret_made_since_the_create() {
        // The older secret predates the create; the newest one is it.
        let held = Held("file", vec![("b", 3, 90), ("b", 11, 120)]);
        let (after, _) = resolve(&state(), &addr("b"), sinks(vec![held])).unwrap();
        let token = after.token(&addr("b")).unwrap();
        assert_eq!((token.id, token.created_at), (11, Some(120)));
        assert!(token.fingerprint.is_some());

        // Only an older secret: nothing to adopt.
        let held = Held("file", vec![("b", 3, 90)]);
        let err = resolve(&state(), &addr("b"), sinks(vec![held]))
            .err()
            .unwrap();
        assert!(
            err.message.starts_with("no sink holds a token for 1/b"),
            "{}",
            err.message
        );
        assert!(err.hint.unwrap().contains("--adopt ID"));
    }

    #[test]
    fn sinks_that_disagree_are_refused_and_a_known_id_is_not_adopted() {
        let two = vec![
            Held("file", vec![("b", 11, 120)]),
            Held("vault", vec![("b", 12, 130)]),
        ];
        let err = resolve(&state(), &addr("b"), sinks(two)).err().unwrap();
        assert!(err.message.contains("several tokens"), "{}", err.message);

        // The same token in two sinks is one candidate.
        let same = vec![
            Held("file", vec![("b", 11, 120)]),
            Held("vault", vec![("b", 11, 120)]),
        ];
        assert!(resolve(&state(), &addr("b"), sinks(same)).is_ok());

        // An id the state already records is some other token's.
        let known = vec![Held("file", vec![("b", 7, 120)])];
        assert!(resolve(&state(), &addr("b"), sinks(known)).is_err());
    }

    #[test]
    fn import_forget_and_retire_refuse_what_would_lose_a_record() {
        let err = import(Some(&state()), &addr("a"), 8, None).err().unwrap();
        assert!(err.message.contains("already in the state"));
        let err = import(Some(&state()), &addr("b"), 8, None).err().unwrap();
        assert!(err.message.contains("has a create in doubt"));
        let after = import(None, &addr("c"), 8, Some(60)).unwrap();
        assert_eq!(after.token(&addr("c")).unwrap().origin, Origin::Imported);

        assert!(forget(&state(), &addr("a"), true).is_err());
        assert!(forget(&state(), &addr("z"), false).is_err());
        let after = forget(&state(), &addr("a"), false).unwrap();
        assert!(after.token(&addr("a")).is_none());

        let err = check_retirable(&state(), &addr("a"), 7).err().unwrap();
        assert!(err.hint.unwrap().contains("current token"));
    }

    #[test]
    fn a_push_replaces_only_a_newer_state_of_the_same_lineage_unless_forced() {
        let current = {
            let mut s = state();
            s.serial = 5;
            s
        };
        let mut older = current.clone();
        older.serial = 4;
        let err = push(Some(&current), older.clone(), "f.json", false)
            .err()
            .unwrap();
        assert!(err.message.contains("older than the stored state"));
        // Forced, it is stored with a serial past the stored one.
        match push(Some(&current), older, "f.json", true).unwrap() {
            Push::Store(pushed) => assert_eq!(pushed.serial, 6),
            Push::AlreadyThere => panic!("stored nothing"),
        }
        let other = State::new("other".into());
        assert!(push(Some(&current), other, "f.json", false).is_err());
        assert!(matches!(
            push(Some(&current), current.clone(), "f.json", false).unwrap(),
            Push::AlreadyThere
        ));
        assert!(matches!(
            push(None, current.clone(), "f.json", false).unwrap(),
            Push::Store(_)
        ));
    }

    #[test]
    fn a_push_that_drops_a_record_or_cannot_move_on_is_refused() {
        let current = {
            let mut s = state();
            s.serial = 5;
            s
        };
        // 1/a dropped, 1/b (in doubt) dropped: refused unless forced.
        let mut dropping = State::new(current.lineage.clone());
        dropping.serial = 6;
        assert_eq!(
            dropped_by_push(&current, &dropping),
            ["token 1/a (id 7)", "create in doubt 1/b"]
        );
        let err = push(Some(&current), dropping.clone(), "f.json", false)
            .err()
            .unwrap();
        assert!(
            err.message.contains("  - token 1/a (id 7)"),
            "{}",
            err.message
        );
        assert!(err.hint.unwrap().contains("--force"));
        assert!(matches!(
            push(Some(&current), dropping, "f.json", true).unwrap(),
            Push::Store(_)
        ));
        // A create in doubt settled by a token is not lost.
        let mut settled = current.clone();
        settled.serial = 6;
        settled.pending.clear();
        settled.record_created(TokenRecord::created(addr("b"), 9, 0, "sha256:0".into()));
        assert!(dropped_by_push(&current, &settled).is_empty());
        // Serials that cannot move on, even forced.
        for serial in [u64::MAX, crate::backend::MAX_SERIAL] {
            let mut huge = current.clone();
            huge.serial = serial;
            assert!(push(Some(&current), huge.clone(), "f.json", true).is_err());
            assert!(push(None, huge, "f.json", true).is_err());
        }
    }

    #[test]
    fn a_push_keeps_the_ids_a_person_dropped() {
        let mut current = State::new("l".into());
        current.record_created(TokenRecord::created(addr("a"), 4, 1, "f".into()));
        current.forget(&addr("a"));
        let mut pushed = current.clone();
        pushed.former.clear();
        pushed.serial += 1;
        match push(Some(&current), pushed, "state.json", false).unwrap() {
            Push::Store(stored) => assert!(stored.has_recorded(4), "{stored:?}"),
            Push::AlreadyThere => panic!("the push was not stored"),
        }
    }

    #[test]
    fn abandoning_waits_for_a_sink_that_could_not_be_read_unless_forced() {
        let unreadable = || Readers {
            readers: Vec::new(),
            problems: vec!["secret sink sops ./secrets: no age identity".into()],
        };
        let err = resolve(
            &state(),
            &addr("b"),
            Settle::Abandon {
                readers: unreadable(),
                force: false,
            },
        )
        .err()
        .unwrap();
        assert!(
            err.message
                .contains("could not be read:\n  secret sink sops"),
            "{}",
            err.message
        );
        let (after, _) = resolve(
            &state(),
            &addr("b"),
            Settle::Abandon {
                readers: unreadable(),
                force: true,
            },
        )
        .unwrap();
        assert!(after.pending.is_empty());
    }
}
