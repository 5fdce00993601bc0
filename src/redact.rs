//! Every credential tokenctl holds or sends, removed by exact match from
//! everything it prints or writes.
//!
//! A credential is registered once, where tokenctl first holds it: every
//! [`Secret`](crate::secret::Secret) on creation (the owner token, tokens
//! read back from sinks, new tokens), and the Vault token, database
//! passwords and URL credentials where they are read. [`redact`] then
//! replaces each registered value, raw and JSON-escaped, with
//! `[redacted]`. The terminal (`cli::run` wraps both streams), server
//! messages (before they are cut to length) and the files tokenctl
//! writes (state, journal, plan files) all pass through it, so a server
//! that echoes a request cannot make tokenctl print what it sent.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use aho_corasick::AhoCorasick;

/// What a credential is replaced with.
pub const MASK: &str = "[redacted]";

/// Values shorter than this are not matched as text: masking every `a` in
/// the output would hide everything and protect nothing. Structured
/// places (a URL's userinfo, a connection string's password) are masked
/// whatever their length, by the code that parses them.
pub const MIN_LEN: usize = 4;

/// How many values, at least, are matched one by one before they are
/// merged into the automaton. It is rebuilt when the unmerged values reach
/// this or a quarter of the merged ones, whichever is more, and only when
/// text is masked: a refresh that reads 100,000 secrets before printing
/// builds it once, an apply that prints between creates a logarithmic
/// number of times.
const RECENT_MIN: usize = 64;

#[derive(Default)]
struct Registry {
    /// Every registered form, in registration order.
    all: Vec<String>,
    /// The same, to tell a form already registered at once.
    seen: rustc_hash::FxHashSet<String>,
    /// An automaton over `all[..merged]`.
    automaton: Option<Arc<AhoCorasick>>,
    merged: usize,
}

impl Registry {
    /// Tells whether the unmerged values have grown enough to merge.
    fn wants_merge(&self) -> bool {
        let unmerged = self.all.len() - self.merged;
        unmerged > RECENT_MIN.max(self.merged / 4)
    }

    fn merge(&mut self) {
        // Standard matching, so every overlapping occurrence is found.
        if let Ok(automaton) = AhoCorasick::builder().build(&self.all) {
            self.merged = self.all.len();
            self.automaton = Some(Arc::new(automaton));
        }
    }
}

static REGISTRY: std::sync::LazyLock<RwLock<Registry>> =
    std::sync::LazyLock::new(|| RwLock::new(Registry::default()));

/// Registers a credential: from now on it never appears in anything
/// tokenctl prints or writes (its raw and its JSON-escaped forms).
pub fn register(value: &str) {
    if value.chars().count() < MIN_LEN {
        return;
    }
    let mut forms = vec![value.to_string()];
    let escaped = serde_json::to_string(value).unwrap_or_default();
    let escaped = escaped
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or_default();
    if escaped != value && !escaped.is_empty() {
        forms.push(escaped.to_string());
    }
    let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    for form in forms {
        if registry.seen.insert(form.clone()) {
            registry.all.push(form);
        }
    }
}

/// Returns `text` with every registered credential replaced by
/// [`MASK`]. Every place any value occurs is masked, overlapping ones
/// included, so no part of a longer value survives because a shorter one
/// matched inside it first.
pub fn redact(text: &str) -> Cow<'_, str> {
    {
        let registry = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
        if registry.all.is_empty() {
            return Cow::Borrowed(text);
        }
        if registry.wants_merge() {
            drop(registry);
            let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
            if registry.wants_merge() {
                registry.merge();
            }
        }
    }
    let registry = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    if registry.all.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut spans: Vec<(usize, usize)> = Vec::new();
    if let Some(automaton) = &registry.automaton {
        spans.extend(
            automaton
                .find_overlapping_iter(text)
                .map(|m| (m.start(), m.end())),
        );
    }
    for value in &registry.all[registry.merged..] {
        let mut from = 0;
        while let Some(at) = text[from..].find(value.as_str()) {
            let start = from + at;
            spans.push((start, start + value.len()));
            // The next search starts one character on: occurrences may
            // overlap.
            from = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
    }
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut iter = spans.into_iter().peekable();
    while let Some((start, mut end)) = iter.next() {
        while let Some(&(next_start, next_end)) = iter.peek() {
            if next_start > end {
                break;
            }
            end = end.max(next_end);
            iter.next();
        }
        out.push_str(&text[copied..start]);
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Returns `bytes` redacted, when they are UTF-8 text (every file tokenctl
/// writes that could quote a server is).
pub fn redact_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    match std::str::from_utf8(bytes) {
        Ok(text) => match redact(text) {
            Cow::Borrowed(_) => Cow::Borrowed(bytes),
            Cow::Owned(owned) => Cow::Owned(owned.into_bytes()),
        },
        Err(_) => Cow::Borrowed(bytes),
    }
}

/// Registers the password of a URL's userinfo (and the user, when it is
/// all there is) and returns the URL with its userinfo masked, for a
/// message. A text that is not a URL is returned unchanged.
pub fn url_for_display(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, password)) => {
                    register(password);
                    register(&percent_decode(password));
                    user
                }
                None => {
                    // `https://TOKEN@host`: the user is the credential.
                    register(userinfo);
                    MASK
                }
            };
            format!("{scheme}://{user}:{MASK}@{host}{path}")
        }
        None => url.to_string(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A writer that redacts what passes through it, a line at a time, so a
/// credential split across two writes is still matched. What is left of
/// an unfinished line goes out on `flush`.
pub struct Redacting<W: std::io::Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: std::io::Write> Redacting<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        Redacting {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, upto: usize) -> std::io::Result<()> {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        self.inner.write_all(&redact_bytes(&line))
    }
}

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.emit(last + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let all = self.pending.len();
            self.emit(all)?;
        }
        self.inner.flush()
    }
}

impl<W: std::io::Write> Drop for Redacting<W> {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn registered_values_are_masked_raw_and_json_escaped() {
        register("tc-redact-unit-1\"x\\y");
        let text = r#"raw tc-redact-unit-1"x\y and escaped "tc-redact-unit-1\"x\\y""#;
        let shown = redact(text);
        assert!(!shown.contains("tc-redact-unit-1"), "{shown}");
        assert_eq!(shown.matches(MASK).count(), 2, "{shown}");
        assert_eq!(redact("nothing here"), "nothing here");
    }

    #[test]
    fn short_values_are_not_matched_as_text() {
        register("ab");
        assert_eq!(redact("a cab"), "a cab");
    }

    #[test]
    fn many_values_are_merged_and_all_still_masked() {
        let values: Vec<String> = (0..300).map(|i| format!("tc-many-{i:04}-zz")).collect();
        for value in &values {
            register(value);
        }
        for value in &values {
            let text = format!("<{value}>");
            assert_eq!(redact(&text), format!("<{MASK}>"));
        }
    }

    #[test]
    fn a_shorter_value_inside_a_longer_one_leaves_no_part_of_either() {
        register("9c4e");
        for i in 0..70 {
            register(&format!("tc-filler-{i:03}-x"));
        }
        register("1a2b3c4d-9c4e-4f00-8a11-0123456789ab");
        assert_eq!(
            redact("bad key 1a2b3c4d-9c4e-4f00-8a11-0123456789ab!"),
            format!("bad key {MASK}!")
        );
        // Overlapping occurrences of one value, and of two.
        register("olapxyzabcd1");
        register("abcd1efgolap");
        assert_eq!(redact("<olapxyzabcd1efgolap>"), format!("<{MASK}>"));
    }

    #[test]
    fn a_refresh_worth_of_values_is_registered_and_matched_in_one_pass() {
        // As a refresh of many tokens registers them before it prints.
        let values: Vec<String> = (0..20_000)
            .map(|i| format!("tc-bulk-{i:06}-secret"))
            .collect();
        for value in &values {
            register(value);
        }
        let text = format!("a {} b {} c", values[0], values[19_999]);
        assert_eq!(redact(&text), format!("a {MASK} b {MASK} c"));
    }

    #[test]
    fn a_value_split_across_writes_is_masked() {
        register("tc-split-write-secret");
        let mut out = Vec::new();
        {
            let mut w = Redacting::new(&mut out);
            w.write_all(b"one tc-split-").unwrap();
            w.write_all(b"write-secret two\nthree").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("one {MASK} two\nthree")
        );
    }

    #[test]
    fn url_userinfo_is_masked_and_registered() {
        let shown = url_for_display("https://ci:pa%73sw0rd-u@vault.example:8200/v1");
        assert_eq!(shown, format!("https://ci:{MASK}@vault.example:8200/v1"));
        assert!(!redact("x passw0rd-u y").contains("passw0rd-u"));
        assert_eq!(
            url_for_display("https://tokenonly-user@h/"),
            format!("https://{MASK}:{MASK}@h/")
        );
        assert_eq!(url_for_display("https://h/p"), "https://h/p");
    }
}
