//! The one shape of a failure as a user meets it: the error's message, a
//! hint saying what to do next, and an exit status.

/// Says what the user can do about an error. Every error type a command
/// can end with implements it, so every failure reads the same way:
/// `error: …` then `hint: …`.
pub trait Hint {
    /// Returns what to do next, when there is something useful to say.
    fn hint(&self) -> Option<String>;
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
