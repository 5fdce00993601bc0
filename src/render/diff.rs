//! The state document's diff, before → after.

use std::io::{self, Write};

use similar::{Algorithm, TextDiff};

use super::Style;

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
            Some(b'@') => style.accent(line),
            _ => line.to_string(),
        };
        writeln!(w, "{painted}")?;
    }
    Ok(())
}
