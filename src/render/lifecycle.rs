//! What a refresh found, and the superseded tokens a person still has to
//! revoke, as text.

use std::io::{self, Write};

use super::plan::indent;
use super::{Extras, Home, Style, utc};
use crate::model::lifecycle::{Finding, Handover, HomeHolds};
use crate::model::state::{Liveness, State, SupersededToken};

/// Writes what a refresh found and the tokens waiting to be revoked.
pub fn lifecycle_text(extras: &Extras<'_>, style: Style, w: &mut dyn Write) -> io::Result<()> {
    let notable = extras.notable();
    if !notable.is_empty() {
        writeln!(w)?;
        writeln!(w, "Changes outside tokenctl (found by the refresh):")?;
        for finding in notable {
            let (mark, text) = finding_text(finding);
            let mark = match finding.status {
                Liveness::Revoked | Liveness::Misdelivered => style.bad(mark),
                _ => style.warn(mark),
            };
            writeln!(
                w,
                "  {mark} {} (token id {}): {text}",
                finding.address, finding.id
            )?;
        }
    }
    if let Some(refresh) = extras.refresh {
        writeln!(w, "{}", style.bold(&refresh.counts().to_string()))?;
    }
    if let Some(homes) = extras.homes
        && !extras.successors.is_empty()
    {
        writeln!(w)?;
        writeln!(w, "What the consumers of each successor will see:")?;
        for (address, predecessor) in extras.successors {
            match homes.get(address) {
                Some(places) => {
                    for home in places {
                        let line = home_line(home, *predecessor);
                        let line = match home.holds {
                            Some(HomeHolds::Other(_)) => style.bad(&line),
                            _ => line,
                        };
                        writeln!(w, "  {address}: {line}")?;
                    }
                }
                None => writeln!(
                    w,
                    "  {address}: no sink keeps it at a fixed place (a path or file per token); move its consumers to the successor before the predecessor is revoked"
                )?,
            }
        }
    }
    let superseded = extras.superseded();
    if !superseded.is_empty() {
        writeln!(w)?;
        writeln!(
            w,
            "Superseded tokens for a person to revoke in the Logz.io UI:"
        )?;
        for old in superseded {
            writeln!(
                w,
                "  {} {} (token id {})",
                style.warn("-"),
                old.address,
                old.id
            )?;
            let instruction = revoke_instruction(old, extras.state, extras.homes);
            writeln!(w, "{}", style.dim(&indent(&instruction)))?;
        }
    }
    Ok(())
}

/// Says what a successor does to one home, and what its consumers see:
/// with what the home holds now when it was read.
pub(super) fn home_line(home: &Home, predecessor: Option<u64>) -> String {
    let place = &home.place;
    let old = predecessor.map_or("the predecessor".into(), |id| format!("token id {id}"));
    match &home.holds {
        None => format!("{place} is replaced in place; its consumers get the successor"),
        Some(HomeHolds::Predecessor {
            version: Some(version),
        }) => format!(
            "{place}: version {version} → {}, {old} → its successor, replaced in place; its consumers get the successor",
            version + 1
        ),
        Some(HomeHolds::Predecessor { version: None }) => format!(
            "{place}: {old} → its successor, replaced in place; its consumers get the successor"
        ),
        Some(HomeHolds::Empty) => format!(
            "{place} holds nothing yet: the successor is its first token; move the consumers of {old} there before it is revoked"
        ),
        Some(HomeHolds::Other(what)) => format!(
            "{place} holds {what}, not {old}, the predecessor the state records: an apply stops before its first create, and nothing is created"
        ),
    }
}

pub(super) fn finding_text(finding: &Finding) -> (&'static str, String) {
    let detail = finding.detail.as_deref().unwrap_or("");
    match finding.status {
        Liveness::Revoked => ("x", "revoked: its own whoami answered 401".into()),
        Liveness::Misdelivered => (
            "!",
            format!("misdelivered: {detail}; the secret in the sink belongs to another account"),
        ),
        Liveness::Unknown => ("?", format!("unknown ({detail}); not taken as revoked")),
        Liveness::Alive => ("", "alive".into()),
        Liveness::Unverifiable => ("", "unverifiable: no sink can read its secret".into()),
    }
}

/// Returns how a person revokes a superseded token, and how to tell it
/// from its successor in the UI, which shows names and creation times.
pub fn revoke_instruction(
    old: &SupersededToken,
    state: Option<&State>,
    homes: Option<&super::Homes>,
) -> String {
    let created = old
        .created_at
        .map(utc)
        .unwrap_or_else(|| "at an unknown time".into());
    // The token to keep is the address's current one: its first successor
    // may have been replaced since.
    let successor = state
        .and_then(|s| s.token(&old.address))
        .map(|t| {
            let which = match t.id == old.successor_id {
                true => "its successor",
                false => "the address's current token",
            };
            format!(
                "{which} (id {}) has the same name and was created {}: keep that one",
                t.id,
                t.created_at.map(utc).unwrap_or_else(|| "later".into())
            )
        })
        .unwrap_or_else(|| format!("its successor was token id {}", old.successor_id));
    // Whether its consumers already read the successor, when the sinks
    // are known: only a home that holds the current token, and held this
    // one before it, says so.
    let current = state.and_then(|s| s.token(&old.address)).map(|t| t.id);
    let consumers = match homes.map(|h| h.get(&old.address)) {
        Some(Some(homes)) => handover_text(old.id, current, homes),
        Some(None) => {
            " No sink keeps it at a fixed place: move its consumers to the successor first."
                .to_string()
        }
        None => String::new(),
    };
    format!(
        "In the Logz.io UI of account {} (Settings > Manage tokens > API tokens), revoke the token named {:?} created {created};\n\
         {successor}.{consumers} Then run: tokenctl retire {} --id {}\n\
         (or let `tokenctl apply --refresh` retire it once it answers 401)",
        old.account_id, old.name, old.address, old.id
    )
}

/// Says, home by home, whether the consumers of superseded token `old`
/// already read the address's current token (`current`), and what to do
/// first where they do not.
fn handover_text(old: u64, current: Option<u64>, homes: &[Home]) -> String {
    let current = current.map_or("the current token".to_string(), |id| {
        format!("the current token (id {id})")
    });
    let mut moved = Vec::new();
    let mut sentences = Vec::new();
    for home in homes {
        let place = &home.place;
        let deliver = "its consumers do not read the successor yet: deliver the current token there first (an apply that could not write it named its rescue file), then revoke this one";
        match home.handover(old) {
            Some(Handover::Moved) => moved.push(place.as_str()),
            Some(Handover::Elsewhere) => sentences.push(format!(
                "{place} holds {current} but never held this one, so its consumers read this one elsewhere: move them to {place} first."
            )),
            Some(Handover::Holds(id)) if *id == old => sentences.push(format!(
                "{place} still holds this token, not {current}: {deliver}."
            )),
            Some(Handover::Holds(id)) => sentences.push(format!(
                "{place} holds token id {id}, not {current}: {deliver}."
            )),
            Some(Handover::Behind(what)) => sentences.push(format!(
                "{place} holds {what}, not {current}: {deliver}."
            )),
            None => sentences.push(format!(
                "Check that {place} holds {current} and that its consumers read it there before revoking this one (`tokenctl plan --refresh` reads it)."
            )),
        }
    }
    if !moved.is_empty() {
        sentences.insert(
            0,
            format!(
                "Its consumers already read the successor at {}.",
                moved.join(" and ")
            ),
        );
    }
    sentences.iter().map(|s| format!(" {s}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::address::Address;
    use crate::model::state::TokenRecord;

    #[test]
    fn the_instruction_names_the_token_to_keep_even_after_its_successor_was_replaced() {
        let a = Address::new(1, "a");
        let mut state = State::new("l".into());
        state.record_created(TokenRecord::created(a.clone(), 1, 100, "f1".into()));
        state.record_created(TokenRecord::created(a.clone(), 2, 200, "f2".into()));
        let first = state.superseded_of(&a).next().unwrap().clone();
        assert!(revoke_instruction(&first, Some(&state), None).contains("its successor (id 2)"));
        // Id 2 was found revoked and replaced by id 3: keep 3, not 2.
        state.record_created(TokenRecord::created(a.clone(), 3, 300, "f3".into()));
        let text = revoke_instruction(&first, Some(&state), None);
        assert!(
            text.contains("the address's current token (id 3) has the same name"),
            "{text}"
        );
        assert!(!text.contains("id 2"), "{text}");
    }

    #[test]
    fn the_plan_says_what_each_home_holds_and_what_its_consumers_see() {
        let home = |place: &str, holds: Option<HomeHolds>| Home {
            holds,
            ..Home::unread(place.into())
        };
        let (a, b, c, d) = (
            Address::new(1, "a"),
            Address::new(1, "b"),
            Address::new(1, "c"),
            Address::new(1, "d"),
        );
        let mut homes = super::super::Homes::default();
        homes.insert(
            a.clone(),
            vec![
                home(
                    "vault secret/data/logzio/1/a",
                    Some(HomeHolds::Predecessor { version: Some(4) }),
                ),
                home(
                    "sops s/1-a.sops.yaml",
                    Some(HomeHolds::Predecessor { version: None }),
                ),
            ],
        );
        homes.insert(b.clone(), vec![home("vault secret/data/logzio/1/b", None)]);
        homes.insert(
            c.clone(),
            vec![
                home(
                    "vault secret/data/logzio/1/c",
                    Some(HomeHolds::Other("token id 999".into())),
                ),
                home("sops s/1-c.sops.yaml", Some(HomeHolds::Empty)),
            ],
        );
        let successors = [(a, Some(11)), (b, Some(12)), (c, Some(13)), (d, Some(14))];
        let extras = Extras {
            homes: Some(&homes),
            successors: &successors,
            ..Extras::default()
        };
        let mut out = Vec::new();
        lifecycle_text(&extras, Style::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "
What the consumers of each successor will see:
  1/a: vault secret/data/logzio/1/a: version 4 → 5, token id 11 → its successor, replaced in place; its consumers get the successor
  1/a: sops s/1-a.sops.yaml: token id 11 → its successor, replaced in place; its consumers get the successor
  1/b: vault secret/data/logzio/1/b is replaced in place; its consumers get the successor
  1/c: vault secret/data/logzio/1/c holds token id 999, not token id 13, the predecessor the state records: an apply stops before its first create, and nothing is created
  1/c: sops s/1-c.sops.yaml holds nothing yet: the successor is its first token; move the consumers of token id 13 there before it is revoked
  1/d: no sink keeps it at a fixed place (a path or file per token); move its consumers to the successor before the predecessor is revoked
"
        );
    }

    #[test]
    fn consumers_are_said_to_read_the_successor_only_where_the_home_shows_it() {
        let a = Address::new(1, "a");
        let mut state = State::new("l".into());
        state.record_created(TokenRecord::created(a.clone(), 1, 100, "f1".into()));
        state.record_created(TokenRecord::created(a.clone(), 2, 200, "f2".into()));
        let old = state.superseded_of(&a).next().unwrap().clone();
        let with = |handovers: Vec<(u64, Handover)>| {
            let mut homes = super::super::Homes::default();
            homes.insert(
                a.clone(),
                vec![Home {
                    handovers,
                    ..Home::unread("sops s/1-a.sops.yaml".into())
                }],
            );
            let text = revoke_instruction(&old, Some(&state), Some(&homes));
            let start = text.find("keep that one.").unwrap() + "keep that one.".len();
            let end = text.find(" Then run:").unwrap();
            text[start..end].to_string()
        };
        assert_eq!(
            with(vec![(1, Handover::Moved)]),
            " Its consumers already read the successor at sops s/1-a.sops.yaml."
        );
        // Another superseded token's finding says nothing of this one.
        assert_eq!(
            with(vec![(7, Handover::Moved)]),
            " Check that sops s/1-a.sops.yaml holds the current token (id 2) and that its consumers read it there before revoking this one (`tokenctl plan --refresh` reads it)."
        );
        assert_eq!(
            with(vec![(1, Handover::Elsewhere)]),
            " sops s/1-a.sops.yaml holds the current token (id 2) but never held this one, so its consumers read this one elsewhere: move them to sops s/1-a.sops.yaml first."
        );
        assert_eq!(
            with(vec![(1, Handover::Holds(1))]),
            " sops s/1-a.sops.yaml still holds this token, not the current token (id 2): its consumers do not read the successor yet: deliver the current token there first (an apply that could not write it named its rescue file), then revoke this one."
        );
        assert_eq!(
            with(vec![(1, Handover::Holds(9))]),
            " sops s/1-a.sops.yaml holds token id 9, not the current token (id 2): its consumers do not read the successor yet: deliver the current token there first (an apply that could not write it named its rescue file), then revoke this one."
        );
        assert_eq!(
            with(vec![(1, Handover::Behind("nothing".into()))]),
            " sops s/1-a.sops.yaml holds nothing, not the current token (id 2): its consumers do not read the successor yet: deliver the current token there first (an apply that could not write it named its rescue file), then revoke this one."
        );
    }
}
