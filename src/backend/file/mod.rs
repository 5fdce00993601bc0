//! The file backend: the state as a JSON file (atomic write, a backup of
//! the previous version), the journal as a JSON Lines file beside it with
//! group commit, and an OS lock on a lock file beside it.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{Backend, BackendError, Journal, LockGuard, Reading};
use crate::model::journal::{self as records_of, FoldSummary, Record};

pub(crate) mod journal;
pub(crate) mod lock;
pub(crate) mod store;

use crate::model::state::State;
use journal::{JournalError, JournalWriter};
use lock::{Holder, LockError};
use store::{FileStore, StateStore, StoreError};

/// The state file at a path, with its journal and lock beside it.
#[derive(Debug, Clone)]
pub struct FileBackend {
    store: FileStore,
}

impl FileBackend {
    /// Returns the backend of the state file at `path` (a symbolic link is
    /// followed, see [`FileStore::new`]).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileBackend {
            store: FileStore::new(path),
        }
    }

    /// Returns the file store underneath.
    pub fn store(&self) -> &FileStore {
        &self.store
    }
}

/// The OS lock on the lock file, with the path it was taken at.
struct FileLock {
    guard: lock::LockGuard,
    path: PathBuf,
}

impl LockGuard for FileLock {
    fn is_current(&self) -> bool {
        self.guard.is_current(&self.path)
    }
}

/// The lineage and serial of a stored state, read without building it.
#[derive(serde::Deserialize)]
struct Head {
    lineage: String,
    serial: u64,
}

impl Backend for FileBackend {
    fn location(&self) -> String {
        self.store.location()
    }

    fn load(&self) -> Result<Option<State>, BackendError> {
        Ok(self.store.load()?)
    }

    fn compare_and_swap(
        &self,
        expected: Option<(&str, u64)>,
        state: &State,
    ) -> Result<(), BackendError> {
        // The lock keeps writers apart; this check catches a writer that
        // ignored it (another tool, a hand edit) instead of overwriting it.
        // A file that cannot be read or parsed now is refused and left
        // alone: it may hold what that writer recorded, and the caller
        // keeps this run's result (the journal stays).
        let path = self.store.path();
        let found = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Head>(&bytes) {
                Ok(head) => Some((head.lineage, head.serial)),
                Err(err) => {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!(
                            "it changed while this command ran and no longer parses: {err}"
                        ),
                        backup: self.store.backup_path(),
                    }
                    .into());
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_path_buf(),
                    source,
                }
                .into());
            }
        };
        let expected_owned = expected.map(|(l, s)| (l.to_string(), s));
        if found != expected_owned && found.is_some() {
            let show = |v: &Option<(String, u64)>| match v {
                Some((lineage, serial)) => format!("{serial} of lineage {lineage}"),
                None => "no state".into(),
            };
            return Err(BackendError::Conflict {
                location: self.location(),
                expected: show(&expected_owned),
                found: show(&found),
            });
        }
        Ok(self.store.save(state)?)
    }

    fn lock(&self, holder: &Holder, wait: Duration) -> Result<Box<dyn LockGuard>, BackendError> {
        let path = self.store.lock_path();
        let guard = lock::acquire(&path, holder, wait)?;
        Ok(Box::new(FileLock { guard, path }))
    }

    fn recover(
        &self,
        before: Option<&State>,
        host: Option<&str>,
    ) -> Result<Option<(Option<State>, FoldSummary)>, BackendError> {
        let path = self.store.journal_path();
        let Some(records) = journal::read(&path)? else {
            return Ok(None);
        };
        journal::check_writer_gone(&path, &records, host)?;
        journal::check_lineage(&path, &records, before)?;
        let base = before.cloned().unwrap_or_else(|| {
            State::new(
                records_of::lineage(&records)
                    .unwrap_or_default()
                    .to_string(),
            )
        });
        let (folded, summary) = records_of::fold(base, &records);
        let stored = if before.is_none() && folded.tokens.is_empty() && folded.pending.is_empty() {
            None
        } else {
            Some(
                self.commit(before, folded)
                    .map_err(|source| BackendError::JournalKept {
                        source: Box::new(source),
                        journal: path.display().to_string(),
                    })?
                    .0,
            )
        };
        journal::remove(&path).map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        crate::failpoint::hit("after-journal-removed");
        Ok(Some((stored, summary)))
    }

    fn read(&self, holder: &Holder, host: Option<&str>) -> Result<Reading, BackendError> {
        let path = self.store.journal_path();
        let Some(records) = journal::read(&path)? else {
            return Ok(Reading {
                state: self.load()?,
                ..Reading::default()
            });
        };
        let writer = match journal::check_writer_gone(&path, &records, host) {
            Ok(()) => lock::acquire(&self.store.lock_path(), holder, Duration::ZERO),
            Err(JournalError::Live { pid, host, .. }) => Err(LockError::Held {
                path: self.store.lock_path(),
                holder: format!("pid {pid} on {host}, whose lock file was removed"),
            }),
            Err(err) => return Err(err.into()),
        };
        match writer {
            Ok(_guard) => {
                let state = self.load()?;
                match self.recover(state.as_ref(), host)? {
                    Some((stored, summary)) => Ok(Reading {
                        state: stored,
                        recovered: Some(summary),
                        running: None,
                        in_progress: Vec::new(),
                    }),
                    None => Ok(Reading {
                        state,
                        ..Reading::default()
                    }),
                }
            }
            Err(LockError::Held { holder, .. }) => {
                let state = self.load()?;
                journal::check_lineage(&path, &records, state.as_ref())?;
                let base = state.unwrap_or_else(|| {
                    State::new(records_of::lineage(&records).unwrap_or_default().into())
                });
                Ok(Reading::running(base, &records, holder))
            }
            Err(err) => Err(err.into()),
        }
    }

    fn journal_location(&self) -> String {
        self.store.journal_path().display().to_string()
    }

    fn has_journal(&self) -> Result<bool, BackendError> {
        Ok(self.store.journal_path().exists())
    }

    fn discard_journal(&self, journal: Journal) -> Result<(), BackendError> {
        drop(journal);
        let path = self.store.journal_path();
        journal::remove(&path).map_err(|source| JournalError::Io { path, source })?;
        Ok(())
    }

    fn open_journal(&self, begin: &Record) -> Result<Journal, BackendError> {
        super::check_serial_can_move_on(begin, self.location())?;
        Ok(Journal::File(JournalWriter::create(
            &self.store.journal_path(),
            begin,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_over_a_state_that_changed_meanwhile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend::new(dir.path().join("s.json"));
        let (first, _) = backend.commit(None, crate::lineage::fresh_state()).unwrap();
        let mut other = first.clone();
        other.serial = 7;
        std::fs::write(backend.store().path(), other.to_json()).unwrap();
        let mut next = first.clone();
        next.record_pending(crate::model::state::PendingCreate::new(
            crate::model::address::Address::new(1, "a"),
            0,
            "x".into(),
        ));
        let err = backend.commit(Some(&first), next).unwrap_err();
        assert!(matches!(err, BackendError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("found 7"), "{err}");
        assert_eq!(backend.load().unwrap().unwrap().serial, 7);
    }
}
