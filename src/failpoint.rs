//! Crash points for fault tests.
//!
//! `TOKENCTL_FAILPOINT=after-intent` (a comma-separated list is allowed)
//! makes the process abort — no destructors, no flushing, as `kill -9`
//! would — when it reaches that point. The tests use it to prove that a
//! crash at any step of an apply loses nothing and duplicates nothing.
//! Unset, each point costs one check of an empty list.

use std::sync::OnceLock;

static POINTS: OnceLock<Vec<String>> = OnceLock::new();

/// Aborts the process if the failpoint `name` is armed.
pub fn hit(name: &str) {
    let points = POINTS.get_or_init(|| {
        std::env::var("TOKENCTL_FAILPOINT")
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if points.iter().any(|p| p == name) {
        std::process::abort();
    }
}
