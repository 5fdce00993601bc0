//! Rendering for people and pipelines, into any writer: the plan as text
//! (`plan`), JSON and Markdown (`document`), what a refresh found
//! (`lifecycle`), and the state's diff (`diff`). Pure: no terminal, file
//! or clock; whether to colour comes in as a [`Style`].

mod diff;
mod document;
mod lifecycle;
mod plan;

use crate::model::address::Address;
use crate::model::lifecycle::{Finding, Handover, HomeHolds, Refresh};
use crate::model::state::{Liveness, State, SupersededToken};
// Every time shown is written as the time module writes it.
use crate::time::utc;

pub use diff::state_diff;
pub use document::{OUTPUT_FORMAT_VERSION, plan_json, plan_markdown};
pub use lifecycle::{lifecycle_text, revoke_instruction};
pub use plan::plan_text;

/// The homes of addresses in the configured sinks: the fixed places their
/// consumers read, which a successor replaces in place.
pub type Homes = rustc_hash::FxHashMap<Address, Vec<Home>>;

/// An address's home in one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// Names the place (`vault secret/data/logzio/1/a`).
    pub place: String,
    /// What it holds now, when it was read, against the predecessor of a
    /// planned successor.
    pub holds: Option<HomeHolds>,
    /// For each superseded token of the address (by id) whose home was
    /// read: whether its consumers already read the current token there.
    pub handovers: Vec<(u64, Handover)>,
}

impl Home {
    /// Returns the home at `place`, not read.
    pub fn unread(place: String) -> Home {
        Home {
            place,
            holds: None,
            handovers: Vec::new(),
        }
    }

    /// Returns what the home says of superseded token `id`, when read.
    fn handover(&self, id: u64) -> Option<&Handover> {
        self.handovers
            .iter()
            .find(|(old, _)| *old == id)
            .map(|(_, handover)| handover)
    }
}

/// What a plan shows beside its changes: what a refresh found, the
/// superseded tokens a person still has to revoke, and what the consumers
/// of a successor will see.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    pub refresh: Option<&'a Refresh>,
    pub state: Option<&'a State>,
    /// Where addresses have homes, when the sinks are known.
    pub homes: Option<&'a Homes>,
    /// The addresses the plan makes a successor for, each with the
    /// predecessor it replaces.
    pub successors: &'a [(Address, Option<u64>)],
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

/// Whether to colour output, and the few styles tokenctl uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub color: bool,
}

const GOOD: anstyle::Style = anstyle::AnsiColor::Green.on_default();
const WARN: anstyle::Style = anstyle::AnsiColor::Yellow.on_default();
const BAD: anstyle::Style = anstyle::AnsiColor::Red.on_default();
const ACCENT: anstyle::Style = anstyle::AnsiColor::Magenta.on_default();
const BOLD: anstyle::Style = anstyle::Style::new().bold();
const DIM: anstyle::Style = anstyle::Style::new().dimmed();

impl Style {
    /// Returns `text` in `style`, or plain without colour.
    fn paint(self, style: anstyle::Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    /// Returns `text` as a success.
    pub fn good(self, text: &str) -> String {
        self.paint(GOOD, text)
    }

    /// Returns `text` as a warning.
    pub fn warn(self, text: &str) -> String {
        self.paint(WARN, text)
    }

    /// Returns `text` as an error.
    pub fn bad(self, text: &str) -> String {
        self.paint(BAD, text)
    }

    /// Returns `text` set apart (a create in doubt, a diff's hunk header).
    pub fn accent(self, text: &str) -> String {
        self.paint(ACCENT, text)
    }

    /// Returns `text` in bold.
    pub fn bold(self, text: &str) -> String {
        self.paint(BOLD, text)
    }

    /// Returns `text` dimmed (hints under an entry).
    pub fn dim(self, text: &str) -> String {
        self.paint(DIM, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::address::Address;
    use crate::model::plan::{Plan, plan};
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
        assert!(text.starts_with(document::MARKDOWN_MARKER));
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
