//! Crash points for fault tests.
//!
//! `TOKENCTL_FAILPOINT=after-intent` (a comma-separated list is allowed)
//! makes the process abort — no destructors, no flushing, as `kill -9`
//! would — when it reaches that point. The tests use it to prove that a
//! crash at any step of an apply loses nothing and duplicates nothing.
//! Unset, each point costs one check of an empty list. Only builds with the
//! `failpoints` feature (the test suite's) read the variable at all, from
//! the environment the command was given ([`arm`], called by `cli::run`).

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

#[cfg(feature = "failpoints")]
static POINTS: OnceLock<Vec<String>> = OnceLock::new();

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn arm(_vars: &crate::vars::Vars) {}

/// Arms the failpoints `TOKENCTL_FAILPOINT` names in `vars`. The first
/// call of a process decides; later ones change nothing.
#[cfg(feature = "failpoints")]
pub fn arm(vars: &crate::vars::Vars) {
    let points = vars
        .get("TOKENCTL_FAILPOINT")
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    let _ = POINTS.set(points);
}

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn panic_at(_name: &str, _message: impl FnOnce() -> String) {}

/// Panics with `message` if the failpoint `name` is armed: a bug as a
/// test makes it happen.
#[cfg(feature = "failpoints")]
#[track_caller]
pub fn panic_at(name: &str, message: impl FnOnce() -> String) {
    if armed(name) {
        panic!("{}", message());
    }
}

/// Aborts the process if the failpoint `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if armed(name) {
        std::process::abort();
    }
}

#[cfg(feature = "failpoints")]
fn armed(name: &str) -> bool {
    POINTS
        .get()
        .is_some_and(|points| points.iter().any(|p| p == name))
}
