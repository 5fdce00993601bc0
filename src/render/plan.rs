//! The plan as Terraform-style text, and what a person does about each
//! entry that needs one.

use std::io::{self, Write};

use super::{Style, utc};
use crate::model::plan::{Action, Change, Plan};

/// Writes the plan as Terraform-style text: creates, orphans and in-doubt
/// entries, then the summary line. Unchanged tokens are only counted.
pub fn plan_text(plan: &Plan, style: Style, w: &mut dyn Write) -> io::Result<()> {
    let summary = plan.summary();
    if summary.create + summary.orphaned + summary.in_doubt + summary.in_progress == 0 {
        writeln!(
            w,
            "{} The state matches the manifest.",
            style.good("No changes.")
        )?;
    } else {
        writeln!(w, "tokenctl will perform the following actions:")?;
        writeln!(w)?;
        for change in plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
        {
            change_text(change, style, w)?;
        }
        writeln!(w)?;
    }
    writeln!(w, "{}", style.bold(&summary.to_string()))
}

fn change_text(change: &Change, style: Style, w: &mut dyn Write) -> io::Result<()> {
    let address = &change.address;
    match change.action {
        Action::Create => writeln!(w, "  {} {address}", style.good("+")),
        Action::Orphaned => {
            writeln!(
                w,
                "  {} {address} ({}): orphaned, in the state but not in the manifest",
                style.warn("!"),
                token_id(change)
            )?;
            writeln!(w, "{}", style.dim(&indent(&orphan_hint(change))))
        }
        Action::InDoubt => {
            writeln!(
                w,
                "  {} {address}: in doubt, a create was sent but its outcome is unknown",
                style.accent("?")
            )?;
            writeln!(w, "{}", style.dim(&indent(&doubt_hint(change))))
        }
        Action::Rotate => writeln!(
            w,
            "  {} {address} ({}, created {}): rotate; a successor is created and this token is kept until a person revokes it",
            style.good("~"),
            token_id(change),
            change
                .created_at
                .map(utc)
                .unwrap_or_else(|| "at an unknown time".into())
        ),
        Action::Replace => writeln!(
            w,
            "  {} {address} ({}): revoked outside tokenctl; a successor is created",
            style.good("+"),
            token_id(change)
        ),
        Action::InProgress => writeln!(
            w,
            "  {} {address}: in progress, a running apply sent it and will record its outcome",
            style.accent("*")
        ),
        Action::Unchanged => Ok(()),
    }
}

pub(super) fn token_id(change: &Change) -> String {
    change
        .id
        .map(|id| format!("token id {id}"))
        .unwrap_or_else(|| "the token".into())
}

pub(super) fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("      {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Returns what a person must do about an orphaned token.
pub(super) fn orphan_hint(change: &Change) -> String {
    format!(
        "The API cannot delete tokens. Revoke {} in the Logz.io UI of account {} (Settings > Manage tokens > API tokens),\n\
         then run: tokenctl forget {}",
        token_id(change),
        change.address.account_id,
        change.address
    )
}

/// Returns what a person must do about a create in doubt.
fn doubt_hint(change: &Change) -> String {
    let address = &change.address;
    format!(
        "Nothing is created for it until it is resolved. Look for the token in the Logz.io UI of account {}, then run\n\
         tokenctl resolve {address} --adopt <id>   (it exists)\n\
         tokenctl resolve {address} --abandon      (it does not; the next apply creates it)",
        address.account_id
    )
}

/// Returns, on one line, how to settle a create in doubt.
pub(super) fn doubt_action(address: &crate::model::address::Address) -> String {
    format!(
        "Look for the token in the Logz.io UI of account {}: if it exists, run `tokenctl resolve {address} --adopt <id>`; \
         if not, `tokenctl resolve {address} --abandon` and the next apply creates it.",
        address.account_id
    )
}
