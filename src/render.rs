//! Rendering of plans, reports and state diffs into any writer.

use std::io::{self, Write};

use similar::{Algorithm, TextDiff};

use crate::plan::{Action, Change, Plan};

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
    if summary.create + summary.orphaned + summary.in_doubt == 0 {
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
            let id = change
                .id
                .map(|id| format!("token id {id}"))
                .unwrap_or_else(|| "the token".into());
            writeln!(
                w,
                "  {} {address} ({id}): orphaned, in the state but not in the manifest",
                style.warn("!")
            )?;
            writeln!(
                w,
                "{}",
                style.paint(
                    DIM,
                    &format!(
                        "      The API cannot delete tokens. Revoke {id} in the Logz.io UI of account {} \
                         (Settings > Manage tokens > API tokens),\n      then run: tokenctl forget {address}",
                        address.account_id
                    )
                )
            )
        }
        Action::InDoubt => {
            writeln!(
                w,
                "  {} {address}: in doubt, a create was sent but its outcome is unknown",
                style.paint(MAGENTA, "?")
            )?;
            writeln!(
                w,
                "{}",
                style.paint(
                    DIM,
                    &format!(
                        "      Nothing is created for it until it is resolved. Look for the token in the Logz.io UI of account {}, then run\n      \
                         tokenctl resolve {address} --adopt <id>   (it exists)\n      \
                         tokenctl resolve {address} --abandon      (it does not; the next apply creates it)",
                        address.account_id
                    )
                )
            )
        }
        Action::Unchanged => Ok(()),
    }
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
    let days = epoch_seconds.div_euclid(86_400);
    let secs = epoch_seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// Parses epoch seconds, or an RFC 3339 UTC time such as
/// `2021-05-24T12:11:51Z`, into epoch seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let bad =
        || format!("`{text}` is not a time; write epoch seconds or e.g. 2021-05-24T12:11:51Z");
    let (date, time) = text
        .strip_suffix('Z')
        .and_then(|t| t.split_once('T'))
        .ok_or_else(bad)?;
    let numbers = |part: &str, sep: char| -> Result<Vec<i64>, String> {
        part.split(sep)
            .map(|n| n.parse::<i64>().map_err(|_| bad()))
            .collect()
    };
    let (d, t) = (numbers(date, '-')?, numbers(time, ':')?);
    let (&[year, month, day], &[hour, minute, second]) = (&d[..], &t[..]) else {
        return Err(bad());
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    // Inverse of the days-to-civil algorithm in `utc`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::plan::plan;
    use crate::state::{PendingCreate, State, TokenRecord};

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
