//! Rendering of plans, reports and state diffs into any writer.

use std::io::{self, Write};

use similar::{Algorithm, TextDiff};

use serde::Serialize;

use crate::model::lifecycle::{Finding, Refresh, RefreshCounts};
use crate::model::plan::{Action, Change, Plan, Summary};
use crate::model::state::{Liveness, State, SupersededToken};

/// What a plan shows beside its changes: what a refresh found, and the
/// superseded tokens a person still has to revoke.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    pub refresh: Option<&'a Refresh>,
    pub state: Option<&'a State>,
}

impl Extras<'_> {
    fn superseded(&self) -> &[SupersededToken] {
        self.state.map_or(&[], |s| s.superseded.as_slice())
    }

    /// Findings worth a line: everything but alive and unverifiable.
    fn notable(&self) -> Vec<&Finding> {
        self.refresh
            .map(|r| {
                r.findings()
                    .iter()
                    .filter(|f| !matches!(f.status, Liveness::Alive | Liveness::Unverifiable))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub color: bool,
}

const GREEN: &str = "32";
const YELLOW: &str = "33";
const RED: &str = "31";
const MAGENTA: &str = "35";
const BOLD: &str = "1";
const DIM: &str = "2";

impl Style {
    /// Returns `text` in the given SGR colour, or plain without colour.
    pub fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Returns `text` as a success.
    pub fn good(self, text: &str) -> String {
        self.paint(GREEN, text)
    }

    /// Returns `text` as a warning.
    pub fn warn(self, text: &str) -> String {
        self.paint(YELLOW, text)
    }

    /// Returns `text` as an error.
    pub fn bad(self, text: &str) -> String {
        self.paint(RED, text)
    }

    /// Returns `text` in bold.
    pub fn bold(self, text: &str) -> String {
        self.paint(BOLD, text)
    }
}

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
            writeln!(w, "{}", style.paint(DIM, &indent(&orphan_hint(change))))
        }
        Action::InDoubt => {
            writeln!(
                w,
                "  {} {address}: in doubt, a create was sent but its outcome is unknown",
                style.paint(MAGENTA, "?")
            )?;
            writeln!(w, "{}", style.paint(DIM, &indent(&doubt_hint(change))))
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
            style.paint(MAGENTA, "*")
        ),
        Action::Unchanged => Ok(()),
    }
}

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
            let instruction = revoke_instruction(old, extras.state);
            writeln!(w, "{}", style.paint(DIM, &indent(&instruction)))?;
        }
    }
    Ok(())
}

fn finding_text(finding: &Finding) -> (&'static str, String) {
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
pub fn revoke_instruction(old: &SupersededToken, state: Option<&State>) -> String {
    let created = old
        .created_at
        .map(utc)
        .unwrap_or_else(|| "at an unknown time".into());
    let successor = state
        .and_then(|s| s.token(&old.address))
        .filter(|t| t.id == old.successor_id)
        .map(|t| {
            format!(
                "its successor (id {}) has the same name and was created {}: keep that one",
                t.id,
                t.created_at.map(utc).unwrap_or_else(|| "later".into())
            )
        })
        .unwrap_or_else(|| format!("its successor is token id {}", old.successor_id));
    format!(
        "In the Logz.io UI of account {} (Settings > Manage tokens > API tokens), revoke the token named {:?} created {created};
         {successor}. Then run: tokenctl retire {} --id {}
         (or let `tokenctl apply --refresh` retire it once it answers 401)",
        old.account_id, old.name, old.address, old.id
    )
}

fn token_id(change: &Change) -> String {
    change
        .id
        .map(|id| format!("token id {id}"))
        .unwrap_or_else(|| "the token".into())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("      {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Returns what a person must do about an orphaned token.
pub fn orphan_hint(change: &Change) -> String {
    format!(
        "The API cannot delete tokens. Revoke {} in the Logz.io UI of account {} (Settings > Manage tokens > API tokens),\n\
         then run: tokenctl forget {}",
        token_id(change),
        change.address.account_id,
        change.address
    )
}

/// Returns what a person must do about a create in doubt.
pub fn doubt_hint(change: &Change) -> String {
    let address = &change.address;
    format!(
        "Nothing is created for it until it is resolved. Look for the token in the Logz.io UI of account {}, then run\n\
         tokenctl resolve {address} --adopt <id>   (it exists)\n\
         tokenctl resolve {address} --abandon      (it does not; the next apply creates it)",
        address.account_id
    )
}

/// Returns, on one line, how to settle a create in doubt.
fn doubt_action(address: &crate::model::address::Address) -> String {
    format!(
        "Look for the token in the Logz.io UI of account {}: if it exists, run `tokenctl resolve {address} --adopt <id>`; \
         if not, `tokenctl resolve {address} --abandon` and the next apply creates it.",
        address.account_id
    )
}

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
                hint: revoke_instruction(old, extras.state).replace('\n', " "),
            })
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *w, &document)?;
    writeln!(w)
}

/// The marker a CI job looks for to update one sticky pull-request comment.
pub const MARKDOWN_MARKER: &str = "<!-- tokenctl-plan -->";

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
                revoke_instruction(old, extras.state).replace('\n', " ")
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

/// Writes the unified diff of the state document, before → after.
pub fn state_diff(
    label: &str,
    before: &str,
    after: &str,
    style: Style,
    w: &mut dyn Write,
) -> io::Result<()> {
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .diff_lines(before, after);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("{label} (before)"), &format!("{label} (after)"))
        .to_string();
    if text.is_empty() {
        return writeln!(w, "State unchanged.");
    }
    for line in text.lines() {
        let painted = match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => style.good(line),
            Some(b'-') if !line.starts_with("---") => style.bad(line),
            Some(b'@') => style.paint(MAGENTA, line),
            _ => line.to_string(),
        };
        writeln!(w, "{painted}")?;
    }
    Ok(())
}

/// Returns epoch seconds as an RFC 3339 UTC time, e.g. `2021-05-24T12:11:51Z`.
pub fn utc(epoch_seconds: i64) -> String {
    match jiff::Timestamp::from_second(epoch_seconds) {
        Ok(time) => time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // Outside jiff's range (years -9999 to 9999): no calendar date.
        Err(_) => format!("{epoch_seconds} (epoch seconds)"),
    }
}

/// Parses epoch seconds, or an RFC 3339 time such as
/// `2021-05-24T12:11:51Z`, into epoch seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    text.parse::<jiff::Timestamp>()
        .map(|time| time.as_second())
        .map_err(|_| {
            format!("`{text}` is not a time; write epoch seconds or e.g. 2021-05-24T12:11:51Z")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::address::Address;
    use crate::model::plan::plan;
    use crate::model::state::{PendingCreate, State, TokenRecord};

    fn render(plan: &Plan, style: Style) -> String {
        let mut out = Vec::new();
        plan_text(plan, style, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn mixed_plan() -> Plan {
        let mut state = State::new("l".into());
        for (name, id) in [("kept", 1), ("old", 17)] {
            state.record_created(TokenRecord::created(
                Address::new(160343, name),
                id,
                0,
                "f".into(),
            ));
        }
        state.record_pending(PendingCreate::new(
            Address::new(160345, "flaky"),
            0,
            "502".into(),
        ));
        let desired = [
            Address::new(160343, "kept"),
            Address::new(160343, "ci-shipper"),
            Address::new(160344, "grafana-reader"),
            Address::new(160345, "flaky"),
        ];
        plan(&desired, Some(&state))
    }

    #[test]
    fn text_plan_snapshot() {
        insta::assert_snapshot!(render(&mixed_plan(), Style::default()));
    }

    #[test]
    fn json_plan_snapshot() {
        let mut out = Vec::new();
        plan_json(&mixed_plan(), 50, &Extras::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        insta::assert_snapshot!(text.replace(crate::model::state::TOOL_VERSION, "<version>"));
    }

    #[test]
    fn markdown_plan_snapshot() {
        let mut out = Vec::new();
        plan_markdown(&mixed_plan(), &Extras::default(), 60_000, &mut out).unwrap();
        insta::assert_snapshot!(String::from_utf8(out).unwrap());
    }

    #[test]
    fn markdown_is_cut_at_the_limit_with_a_note() {
        let desired: Vec<Address> = (0..5_000)
            .map(|i| Address::new(1 + i % 7, format!("token-{i}")))
            .collect();
        let plan = plan(&desired, None);
        let mut out = Vec::new();
        plan_markdown(&plan, &Extras::default(), 60_000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.len() <= 60_000, "{}", text.len());
        assert!(text.starts_with(MARKDOWN_MARKER));
        assert!(text.contains("more row(s) are not shown"));
        assert!(text.contains("5000 to create"));
    }

    #[test]
    fn markdown_escapes_names() {
        let plan = plan(&[Address::new(1, "a|b`c")], None);
        let mut out = Vec::new();
        plan_markdown(&plan, &Extras::default(), 60_000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("| ➕ | a\\|b\\`c | create |"), "{text}");
    }

    #[test]
    fn no_changes_says_so() {
        let plan = plan(&[], None);
        assert_eq!(
            render(&plan, Style::default()),
            "No changes. The state matches the manifest.\nPlan: 0 to create, 0 unchanged, 0 orphaned, 0 in doubt.\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = render(&mixed_plan(), Style { color: false });
        assert!(!plain.contains('\x1b'));
        let coloured = render(&mixed_plan(), Style { color: true });
        assert!(coloured.contains("\x1b[32m+\x1b[0m"));
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_621_858_311), "2021-05-24T12:11:51Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn parses_times_back() {
        for seconds in [0, 951_782_400, 1_621_858_311] {
            assert_eq!(parse_time(&utc(seconds)), Ok(seconds));
        }
        assert_eq!(parse_time("1621858311"), Ok(1_621_858_311));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2021-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn diff_shows_added_lines() {
        let mut out = Vec::new();
        state_diff("s.json", "a\nb\n", "a\nb\nc\n", Style::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("--- s.json (before)"), "{text}");
        assert!(text.contains("+c"), "{text}");
        let mut out = Vec::new();
        state_diff("s.json", "a\n", "a\n", Style::default(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "State unchanged.\n");
    }
}
