//! The one shape of a failure as a user meets it: the error's message, a
//! hint saying what to do next, and an exit status.

use std::io;

/// Says what the user can do about an error. Every error type a command
/// can end with implements it, so every failure reads the same way:
/// `error: …` then `hint: …`.
pub trait Hint {
    /// Returns what to do next, when there is something useful to say.
    fn hint(&self) -> Option<String>;
}

impl Hint for crate::model::manifest::ManifestError {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

impl Hint for crate::model::planfile::PlanFileError {
    fn hint(&self) -> Option<String> {
        Some(self.advice().to_string())
    }
}

/// How tokenctl exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Success; no changes.
    Success,
    /// An error.
    Error,
    /// `plan --detailed-exitcode` found changes.
    Changes,
    /// `apply` finished, but some creates are in doubt.
    InDoubt,
    /// Interrupted by a signal, after recording what was done.
    Interrupted,
}

impl ExitStatus {
    /// Returns the process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Error => 1,
            ExitStatus::Changes => 2,
            ExitStatus::InDoubt => 3,
            ExitStatus::Interrupted => 130,
        }
    }
}

/// A failure, as the user sees it: what went wrong, what to do, and the
/// exit status. Every error type of the library becomes one through its
/// [`Hint`].
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub status: ExitStatus,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            status: ExitStatus::Error,
        }
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        self.maybe_hint(Some(hint.into()))
    }

    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl<E: std::error::Error + Hint> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure::new(err.to_string()).maybe_hint(err.hint())
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Failure::new(format!("cannot write output: {err}"))
    }
}
