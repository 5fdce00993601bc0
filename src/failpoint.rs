//! Crash points for fault tests.
//!
//! `TOKENCTL_FAILPOINT=after-intent` (a comma-separated list is allowed)
//! makes the process abort — no destructors, no flushing, as `kill -9`
//! would — when it reaches that point. The tests use it to prove that a
//! crash at any step of an apply loses nothing and duplicates nothing.
//! Unset, each point costs one check of an empty list. Only builds with the
//! `failpoints` feature (the test suite's) read the variable at all.

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

#[cfg(feature = "failpoints")]
static POINTS: OnceLock<Vec<String>> = OnceLock::new();

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Aborts the process if the failpoint `name` is armed.
#[cfg(feature = "failpoints")]
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
