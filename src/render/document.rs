//! The plan as documents for machines and pull requests: one versioned
//! JSON document, and Markdown for a sticky comment.

use std::io::{self, Write};

use serde::Serialize;

use super::lifecycle::{finding_text, home_line};
use super::plan::{doubt_action, orphan_hint, token_id};
use super::{Extras, revoke_instruction, utc};
use crate::model::lifecycle::{HomeHolds, RefreshCounts};
use crate::model::plan::{Action, Change, Plan, Summary};
use crate::model::state::Liveness;

/// The version of the JSON documents and events tokenctl prints.
pub const OUTPUT_FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct PlanDocument<'a> {
    format_version: u32,
    tool_version: &'static str,
    summary: Summary,
    max_creates: usize,
    over_budget: bool,
    changes: Vec<ChangeDocument<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh: Option<RefreshDocument<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to_revoke: Vec<RevokeDocument<'a>>,
}

#[derive(Serialize)]
struct RefreshDocument<'a> {
    at: i64,
    counts: RefreshCounts,
    /// Every finding but `alive` and `unverifiable`.
    findings: Vec<FindingDocument<'a>>,
}

#[derive(Serialize)]
struct FindingDocument<'a> {
    address: String,
    #[serde(rename = "accountId")]
    account_id: u64,
    name: &'a str,
    id: u64,
    status: Liveness,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct RevokeDocument<'a> {
    address: String,
    #[serde(rename = "accountId")]
    account_id: u64,
    name: &'a str,
    id: u64,
    #[serde(rename = "createdAt", skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    superseded_at: i64,
    successor_id: u64,
    hint: String,
}

#[derive(Serialize)]
struct ChangeDocument<'a> {
    address: String,
    #[serde(rename = "accountId")]
    account_id: u64,
    name: &'a str,
    action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_doubt_since: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    /// For a successor: the homes it replaces in place.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    homes: Vec<HomeDocument<'a>>,
}

#[derive(Serialize)]
struct HomeDocument<'a> {
    place: &'a str,
    /// `predecessor`, `empty` or `other`; absent when it was not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    holds: Option<&'static str>,
    /// The version that holds the predecessor, for a sink that numbers them.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// What an `other` home holds, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Returns the homes a change's successor replaces, for the document.
fn home_documents<'a>(change: &Change, extras: &Extras<'a>) -> Vec<HomeDocument<'a>> {
    if !matches!(change.action, Action::Rotate | Action::Replace) {
        return Vec::new();
    }
    let homes = extras.homes.and_then(|h| h.get(&change.address));
    homes
        .into_iter()
        .flatten()
        .map(|home| {
            let (holds, version, detail) = match &home.holds {
                None => (None, None, None),
                Some(HomeHolds::Predecessor { version }) => (Some("predecessor"), *version, None),
                Some(HomeHolds::Empty) => (Some("empty"), None, None),
                Some(HomeHolds::Other(what)) => (Some("other"), None, Some(what.as_str())),
            };
            HomeDocument {
                place: &home.place,
                holds,
                version,
                detail,
            }
        })
        .collect()
}

/// Writes the plan as one versioned JSON document: the summary, and every
/// change (unchanged tokens are only counted).
pub fn plan_json(
    plan: &Plan,
    max_creates: usize,
    extras: &Extras<'_>,
    w: &mut dyn Write,
) -> io::Result<()> {
    let summary = plan.summary();
    let document = PlanDocument {
        format_version: OUTPUT_FORMAT_VERSION,
        tool_version: crate::model::state::TOOL_VERSION,
        summary,
        max_creates,
        over_budget: summary.create > max_creates,
        changes: plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .map(|c| ChangeDocument {
                address: c.address.to_string(),
                account_id: c.address.account_id,
                name: &c.address.name,
                action: c.action,
                id: c.id,
                in_doubt_since: c.doubt.as_ref().map(|(since, _)| *since),
                reason: c.doubt.as_ref().map(|(_, reason)| reason.as_str()),
                hint: match c.action {
                    Action::Orphaned => Some(orphan_hint(c).replace('\n', " ")),
                    Action::InDoubt => Some(doubt_action(&c.address)),
                    _ => None,
                },
                homes: home_documents(c, extras),
            })
            .collect(),
        refresh: extras.refresh.map(|r| RefreshDocument {
            at: r.at,
            counts: r.counts(),
            findings: extras
                .notable()
                .into_iter()
                .map(|f| FindingDocument {
                    address: f.address.to_string(),
                    account_id: f.address.account_id,
                    name: &f.address.name,
                    id: f.id,
                    status: f.status,
                    detail: f.detail.as_deref(),
                })
                .collect(),
        }),
        to_revoke: extras
            .superseded()
            .iter()
            .map(|old| RevokeDocument {
                address: old.address.to_string(),
                account_id: old.account_id,
                name: &old.name,
                id: old.id,
                created_at: old.created_at,
                superseded_at: old.superseded_at,
                successor_id: old.successor_id,
                hint: revoke_instruction(old, extras.state, extras.homes).replace('\n', " "),
            })
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *w, &document)?;
    writeln!(w)
}

/// The marker a CI job looks for to update one sticky pull-request comment.
pub(super) const MARKDOWN_MARKER: &str = "<!-- tokenctl-plan -->";

/// Writes the plan as Markdown for a pull-request comment: a summary, a
/// table per sub-account with changes, and what a person must do about
/// orphans and creates in doubt. Output longer than `limit` characters is
/// cut at a row, with a note.
pub fn plan_markdown(
    plan: &Plan,
    extras: &Extras<'_>,
    limit: usize,
    w: &mut dyn Write,
) -> io::Result<()> {
    let summary = plan.summary();
    let mut head = format!("{MARKDOWN_MARKER}\n### tokenctl plan\n\n**{summary}**\n");
    if let Some(refresh) = extras.refresh {
        head.push_str(&format!("\n**{}**\n", refresh.counts()));
    }
    let notable = extras.notable();
    if !notable.is_empty() {
        head.push_str("\n> [!IMPORTANT]\n> Changes outside tokenctl, found by the refresh:\n");
        for finding in notable {
            let (_, text) = finding_text(finding);
            head.push_str(&format!(
                "> - {} (token id {}): {}\n",
                markdown_code(&finding.address.to_string()),
                finding.id,
                text
            ));
        }
    }
    let superseded = extras.superseded();
    if !superseded.is_empty() {
        head.push_str(&format!(
            "\n> [!NOTE]\n> {} superseded token(s) for a person to revoke in the Logz.io UI:\n",
            superseded.len()
        ));
        for old in superseded {
            head.push_str(&format!(
                "> - {} token id {}: {}\n",
                markdown_code(&old.address.to_string()),
                old.id,
                one_line(&revoke_instruction(old, extras.state, extras.homes))
            ));
        }
    }
    let changed: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .collect();
    if changed.is_empty() {
        head.push_str("\nNo changes. The state matches the manifest.\n");
        return w.write_all(head.as_bytes());
    }
    if summary.orphaned > 0 {
        head.push_str(&format!(
            "\n> [!WARNING]\n> {} orphaned token(s): in the state but not in the manifest. The API cannot delete tokens: \
             revoke each in the Logz.io UI of its account, then run `tokenctl forget <address>`.\n",
            summary.orphaned
        ));
    }
    if summary.in_doubt > 0 {
        head.push_str(&format!(
            "\n> [!CAUTION]\n> {} create(s) in doubt: the request was sent but its outcome is unknown, and nothing is created for them \
             until resolved. Look for each token in the Logz.io UI, then run `tokenctl resolve <address> --adopt <id>` if it exists, \
             or `--abandon` if it does not.\n",
            summary.in_doubt
        ));
    }
    let mut rows: Vec<String> = Vec::new();
    let mut account = None;
    for change in &changed {
        if account != Some(change.address.account_id) {
            account = Some(change.address.account_id);
            rows.push(format!(
                "\n#### Sub-account {}\n\n| | Token | Action |\n|---|---|---|",
                change.address.account_id
            ));
        }
        let name = markdown_cell(&change.address.name);
        let address = change.address.to_string();
        let row = match change.action {
            Action::Create => format!("| ➕ | {name} | create |"),
            Action::Orphaned => format!(
                "| ⚠️ | {name} | orphaned ({}): revoke it in the UI, then {} |",
                token_id(change),
                markdown_code(&format!("tokenctl forget {address}"))
            ),
            Action::InDoubt => format!(
                "| ❓ | {name} | in doubt: check the UI, then {} or {} |",
                markdown_code(&format!("tokenctl resolve {address} --adopt <id>")),
                markdown_code("--abandon")
            ),
            Action::Rotate => format!(
                "| 🔄 | {name} | rotate ({}, created {}): a successor is created |",
                token_id(change),
                change
                    .created_at
                    .map(utc)
                    .unwrap_or_else(|| "at an unknown time".into())
            ),
            Action::Replace => format!(
                "| ♻️ | {name} | replace ({} was revoked outside tokenctl) |",
                token_id(change)
            ),
            Action::InProgress => {
                format!("| ⏳ | {name} | in progress: a running apply sent it |")
            }
            Action::Unchanged => continue,
        };
        // What a successor's consumers will see, in the same cell.
        let row = match (change.action, extras.homes) {
            (Action::Rotate | Action::Replace, Some(homes)) => {
                let seen: Vec<String> = match homes.get(&change.address) {
                    Some(places) => places
                        .iter()
                        .map(|home| markdown_cell(&one_line(&home_line(home, change.id))))
                        .collect(),
                    None => vec![
                        "no sink keeps it at a fixed place: move its consumers to the successor before the predecessor is revoked".into(),
                    ],
                };
                format!("{}; {} |", row.trim_end_matches(" |"), seen.join("; "))
            }
            _ => row,
        };
        rows.push(row);
    }
    let mut body = head;
    let total = rows.len();
    for (shown, row) in rows.iter().enumerate() {
        // Leave room for the note that says what was cut.
        if body.len() + row.len() + 200 > limit {
            body.push_str(&format!(
                "\n\n_The plan is too long for a comment: {} more row(s) are not shown. Run `tokenctl plan` for all of it._\n",
                total - shown
            ));
            return w.write_all(body.as_bytes());
        }
        body.push_str(row);
        body.push('\n');
    }
    w.write_all(body.as_bytes())
}

/// Returns text as a code span fit for a table cell.
fn markdown_code(text: &str) -> String {
    let text = text.replace('|', "\\|");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// Returns `text` on one line: every control character (a line break, an
/// escape sequence's ESC) becomes a space, so no text can start a heading,
/// a list or a colour in a comment.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Escapes text for a Markdown table cell.
fn markdown_cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '<' | '>' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_a_cell_starts_no_heading_link_or_colour() {
        let hostile =
            "holds \n\n## ✅ All verified\r\n\n[details](https://evil.example)\u{1b}[32m | x";
        let cell = markdown_cell(&one_line(hostile));
        assert_eq!(
            cell,
            "holds   ## ✅ All verified   \\[details\\](https://evil.example) \\[32m \\| x"
        );
        assert!(!cell.chars().any(char::is_control), "{cell}");
    }
}
