//! What a refresh found, and the superseded tokens a person still has to
//! revoke, as text.

use std::io::{self, Write};

use super::plan::indent;
use super::{Extras, Home, Style, utc};
use crate::model::lifecycle::{Finding, HomeHolds};
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
            "{place} holds {what}, not {old}, the predecessor the state records: apply refuses this successor before any create"
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
    // are known.
    let consumers = match homes.map(|h| h.get(&old.address)) {
        Some(Some(homes)) => format!(
            " Its consumers already read the successor at {}.",
            homes
                .iter()
                .map(|h| h.place.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
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
            place: place.into(),
            holds,
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
  1/c: vault secret/data/logzio/1/c holds token id 999, not token id 13, the predecessor the state records: apply refuses this successor before any create
  1/c: sops s/1-c.sops.yaml holds nothing yet: the successor is its first token; move the consumers of token id 13 there before it is revoked
  1/d: no sink keeps it at a fixed place (a path or file per token); move its consumers to the successor before the predecessor is revoked
"
        );
    }
}
