//! The test process's own environment, read here alone (through `Vars`,
//! as tokenctl reads its own): where the tools are (`PATH`) and whether
//! this run is CI's. tokenctl's runs get theirs from `Command::env`.

use std::ffi::OsString;

use tokenctl::vars::Vars;

/// Returns the test process's `PATH`, empty when unset.
pub fn path() -> String {
    Vars::from_process()
        .get("PATH")
        .unwrap_or_default()
        .to_string()
}

/// Returns the test process's `PATH`, to split.
pub fn path_os() -> OsString {
    OsString::from(path())
}

/// Tells whether this is a CI run (`CI=true`), where a missing tool fails
/// a test instead of skipping it.
pub fn in_ci() -> bool {
    Vars::from_process().get("CI") == Some("true")
}
