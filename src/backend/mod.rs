//! Where the state lives, with its journal and its lock: the [`Backend`]
//! seam. The planner and the apply loop never learn which one they got.
//!
//! - [`file`]: the state file, a journal file and an OS lock file beside it
//!   (the default);
//! - [`postgres`]: one PostgreSQL database shared by every runner, with the
//!   journal as rows and the lock as an advisory lock.

pub mod file;
pub mod postgres;

use std::path::PathBuf;
use std::time::Duration;

use crate::model::journal::{FoldSummary, Record};
use crate::model::state::State;
pub use file::journal::{JournalError, JournalWriter};
pub use file::lock::Holder;
use file::lock::LockError;
use file::store::StoreError;

/// Returns a journal record as one JSON line, as every backend stores it.
/// Documents are never rewritten by masking (an address that contains a
/// password's text must stay as it is): the reasons they carry are masked
/// where they are made (`ops::create`).
pub(crate) fn record_line(record: &Record) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(record).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The largest serial a state may have: PostgreSQL keeps it in a
/// `bigint`, and no write may wrap it around.
pub const MAX_SERIAL: u64 = i64::MAX as u64;

/// Returns the serial after `serial`, or `None` when it cannot move on.
pub fn next_serial(serial: u64) -> Option<u64> {
    serial.checked_add(1).filter(|next| *next <= MAX_SERIAL)
}

/// Refuses to open the journal of a run whose fold could not store its
/// result: the state's serial (in the `begin` record) cannot move on, so
/// not a single create may start.
pub(crate) fn check_serial_can_move_on(
    begin: &Record,
    location: String,
) -> Result<(), BackendError> {
    match begin {
        Record::Begin { serial, .. } if next_serial(*serial).is_none() => {
            Err(BackendError::SerialExhausted {
                location,
                serial: *serial,
            })
        }
        _ => Ok(()),
    }
}

/// Why the backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    /// Another writer stored a state since this command read it.
    #[error(
        "the state at {location} changed while this command ran (it expected serial {expected}, found {found})"
    )]
    Conflict {
        location: String,
        expected: String,
        found: String,
    },
    /// The stored serial is at its largest: a write could only wrap it.
    #[error(
        "the state at {location} has serial {serial}, which cannot move on (the largest serial is {MAX_SERIAL}); nothing was written"
    )]
    SerialExhausted { location: String, serial: u64 },
    /// Folding a journal failed after it was read; it was kept.
    #[error("{source}")]
    JournalKept {
        source: Box<BackendError>,
        journal: String,
    },
}

impl crate::error::Hint for BackendError {
    fn hint(&self) -> Option<String> {
        match self {
            BackendError::Store(e) => e.hint(),
            BackendError::Lock(e) => e.hint(),
            BackendError::Journal(e) => e.hint(),
            BackendError::Postgres(e) => e.hint(),
            BackendError::Conflict { .. } => Some(
                "another command wrote the state without holding its lock; run again, and check that every runner uses the same backend".into(),
            ),
            BackendError::SerialExhausted { .. } => Some(
                "a serial moves on by one per write, so one this large was set by hand or by another tool; restore the version before it (the .backup file, the history table or git) and push that with `tokenctl state push FILE`".into(),
            ),
            BackendError::JournalKept { journal, .. } => Some(format!(
                "the journal {journal} was kept and still records every outcome; the next tokenctl command records it once the problem is fixed"
            )),
        }
    }
}

/// A held state lock; dropping it releases the lock.
pub trait LockGuard {
    /// Tells whether the lock still excludes other runs (a lock file that
    /// was deleted, or a database connection that was lost, does not).
    fn is_current(&self) -> bool;
}

/// The state as a reading command sees it.
#[derive(Debug, Default)]
pub struct Reading {
    pub state: Option<State>,
    /// A journal left by a dead run was recorded in the state first.
    pub recovered: Option<FoldSummary>,
    /// An apply is running: who it is. Its journal so far is overlaid on
    /// `state`, its creates under way marked as in progress.
    pub running: Option<String>,
    /// The creates the running apply has under way (pending in `state`).
    pub in_progress: Vec<crate::model::address::Address>,
}

impl Reading {
    /// Returns what a reader sees while an apply runs: `base` with the
    /// apply's journal so far overlaid, the outcomes it recorded so far,
    /// and its creates under way as pending with a reason that says they
    /// are in progress — their run is alive and will record their outcome,
    /// unlike those of a dead run, which are in doubt.
    pub fn running(base: State, records: &[Record], holder: String) -> Self {
        let before: Vec<crate::model::address::Address> =
            base.pending.iter().map(|p| p.address.clone()).collect();
        let (mut state, _) = crate::model::journal::fold(base, records);
        let mut in_progress = Vec::new();
        for pending in &mut state.pending {
            if !before.contains(&pending.address) {
                pending.reason = format!(
                    "in progress: the running apply of {holder} sent it and will record its outcome"
                );
                in_progress.push(pending.address.clone());
            }
        }
        Reading {
            state: Some(state),
            recovered: None,
            running: Some(holder),
            in_progress,
        }
    }
}

/// Where the state of one manifest lives.
pub trait Backend {
    /// Names the state for messages (never with a password).
    fn location(&self) -> String;

    /// Returns the stored state, or `None` when none was ever stored.
    fn load(&self) -> Result<Option<State>, BackendError>;

    /// Stores `state` as it is if the stored one is still `expected`
    /// (lineage and serial; `None`: no state yet), else fails with
    /// [`BackendError::Conflict`]. The previous state is kept as history.
    fn compare_and_swap(
        &self,
        expected: Option<(&str, u64)>,
        state: &State,
    ) -> Result<(), BackendError>;

    /// Takes the state lock for this command, waiting up to `wait`.
    fn lock(&self, holder: &Holder, wait: Duration) -> Result<Box<dyn LockGuard>, BackendError>;

    /// Records a journal left behind by a run that is gone in the state,
    /// then removes it. Returns the state as stored and what the journal
    /// held, or `None` when there was no journal. Needs the lock.
    fn recover(
        &self,
        before: Option<&State>,
        host: Option<&str>,
    ) -> Result<Option<(Option<State>, FoldSummary)>, BackendError>;

    /// Reads the state for a command that does not write it: a journal of
    /// a dead run is recorded first (as the next writer would), one of a
    /// live run is overlaid.
    fn read(&self, holder: &Holder, host: Option<&str>) -> Result<Reading, BackendError>;

    /// Names the journal for messages.
    fn journal_location(&self) -> String;

    /// Tells whether a journal is open (a run is under way or left one).
    fn has_journal(&self) -> Result<bool, BackendError>;

    /// Opens the journal of a run, with its `begin` record. Needs the lock.
    fn open_journal(&self, begin: &Record) -> Result<Journal, BackendError>;

    /// Removes a journal that recorded nothing but its `begin`, for a run
    /// that stops before its first create.
    fn discard_journal(&self, journal: Journal) -> Result<(), BackendError>;

    /// Stores `after` if its content differs from `before`, moving the
    /// serial on; returns the state now stored and whether it was written.
    fn commit(&self, before: Option<&State>, after: State) -> Result<(State, bool), BackendError> {
        if let Some(before) = before
            && next_serial(before.serial).is_none()
            && !before.same_content(&after)
        {
            return Err(BackendError::SerialExhausted {
                location: self.location(),
                serial: before.serial,
            });
        }
        let Some(after) = crate::backend::file::store::next_version(before, after) else {
            return Ok((
                before.cloned().unwrap_or_else(|| State::new(String::new())),
                false,
            ));
        };
        self.compare_and_swap(before.map(|s| (s.lineage.as_str(), s.serial)), &after)?;
        Ok((after, true))
    }
}

/// The journal of one run, wherever it is kept.
pub enum Journal {
    File(JournalWriter),
    Postgres(postgres::PgJournal),
}

impl Journal {
    /// Appends one record and waits until it is durable.
    pub async fn append(&self, record: &Record) -> Result<(), JournalError> {
        match self {
            Journal::File(writer) => writer.append(record).await,
            Journal::Postgres(journal) => journal.append(record).await,
        }
    }

    /// Returns the local file that holds outcomes the backend could not
    /// take (the connection was lost), if any was written.
    pub fn recovery_file(&self) -> Option<PathBuf> {
        match self {
            Journal::File(_) => None,
            Journal::Postgres(journal) => journal.recovery_file(),
        }
    }
}
