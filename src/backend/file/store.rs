//! Where the state lives. The file store is the only backend today; a shared
//! database would implement [`StateStore`] too, without the planner knowing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::model::state::{State, StateParseError, TOOL_VERSION};

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state {path} is corrupt or truncated: {detail}")]
    Corrupt {
        path: PathBuf,
        detail: String,
        backup: PathBuf,
    },
    #[error("state {path} was written by a newer tokenctl: {detail}")]
    Newer { path: PathBuf, detail: String },
    #[error("cannot write state {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl crate::error::Hint for StoreError {
    fn hint(&self) -> Option<String> {
        match self {
            StoreError::Corrupt { backup, .. } => Some(format!(
                "the file was left untouched; repair it, or restore the version before the last write from {} (or from git), then run again",
                backup.display()
            )),
            StoreError::Newer { .. } => Some(format!(
                "this is tokenctl {TOOL_VERSION}; upgrade to the version that wrote the state"
            )),
            StoreError::Read { .. } | StoreError::Write { .. } => None,
        }
    }
}

/// Reads and writes the state.
pub trait StateStore {
    /// Returns the state, or `None` when none was ever written.
    fn load(&self) -> Result<Option<State>, StoreError>;

    /// Replaces the stored state, keeping the previous one as a backup.
    fn save(&self, state: &State) -> Result<(), StoreError>;

    /// Names the state for messages.
    fn location(&self) -> String;
}

/// Returns `after` as the next version of `before` (same lineage, serial
/// moved on, this tool's version), or `None` when its content is the same
/// and there is nothing to store.
pub fn next_version(before: Option<&State>, mut after: State) -> Option<State> {
    if let Some(before) = before {
        if before.same_content(&after) {
            return None;
        }
        // Backend::commit refuses a serial that cannot move on first.
        after.serial = before.serial.saturating_add(1);
        after.lineage = before.lineage.clone();
    } else {
        after.serial = after.serial.max(1);
    }
    after.tool_version = TOOL_VERSION.to_string();
    Some(after)
}

/// The state as a JSON file, with its backup, journal and lock beside it.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// Returns a store for the state file at `path`. A symbolic link is
    /// followed once, here: the state is written where it points, and the
    /// lock and the journal sit beside the real file, so every run of one
    /// state shares them whichever path it was given.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: follow_links(path.into()),
        }
    }

    /// Returns the state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns `<state>.<suffix>`, the path of a file kept beside the state.
    pub fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        PathBuf::from(name)
    }

    /// Returns the path of the backup of the previous state.
    pub fn backup_path(&self) -> PathBuf {
        self.sibling("backup")
    }

    /// Returns the path of the apply journal.
    pub fn journal_path(&self) -> PathBuf {
        self.sibling("journal")
    }

    /// Returns the path of the lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.sibling("lock")
    }
}

/// Returns where `path` leads after following symbolic links in its last
/// component (a dangling link included), or `path` itself.
fn follow_links(mut path: PathBuf) -> PathBuf {
    let mut followed = false;
    // Bounded, like the kernel's own limit on nested links.
    for _ in 0..40 {
        let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            break;
        }
        match fs::read_link(&path) {
            Ok(target) if target.is_absolute() => path = target,
            Ok(target) => path = fsutil::parent_dir(&path).join(target),
            Err(_) => break,
        }
        followed = true;
    }
    // `state/../real/x` and `real/x` must name the lock the same way in
    // messages; a path that was no link is shown as the user wrote it.
    if followed
        && let (Ok(dir), Some(name)) = (
            fs::canonicalize(fsutil::parent_dir(&path)),
            path.file_name(),
        )
    {
        return dir.join(name);
    }
    path
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Option<State>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "not UTF-8 text".into(),
                    backup: self.backup_path(),
                });
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        State::from_json(&text).map(Some).map_err(|err| match err {
            StateParseError::Newer { .. } => StoreError::Newer {
                path: self.path.clone(),
                detail: err.to_string(),
            },
            StateParseError::Corrupt(detail) => StoreError::Corrupt {
                path: self.path.clone(),
                detail,
                backup: self.backup_path(),
            },
        })
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        let write_err = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = fsutil::parent_dir(&self.path);
        fs::create_dir_all(dir).map_err(write_err)?;
        if self.path.exists() {
            fsutil::link_backup(&self.path, &self.backup_path()).map_err(write_err)?;
        }
        crate::failpoint::hit("before-state-write");
        fsutil::write_atomic(&self.path, state.to_json().as_bytes(), 0o644).map_err(write_err)?;
        crate::failpoint::hit("after-state-write");
        Ok(())
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores `after` as the next version of `before`, as the backend's
    /// commit does; returns the state stored and whether it was written.
    fn commit(
        store: &FileStore,
        before: Option<&State>,
        after: State,
    ) -> Result<(State, bool), StoreError> {
        let Some(after) = next_version(before, after) else {
            return Ok((
                before.cloned().unwrap_or_else(crate::lineage::fresh_state),
                false,
            ));
        };
        store.save(&after)?;
        Ok((after, true))
    }
    use crate::error::Hint;
    use crate::model::address::Address;
    use crate::model::state::TokenRecord;

    fn one_token(state: &mut State, name: &str, id: u64) {
        state.record_created(TokenRecord::created(
            Address::new(1, name),
            id,
            0,
            "sha256:0".into(),
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_linked_state_is_written_through_the_link_and_shares_lock_and_journal() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("real")).unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        let link = dir.path().join("state/tokens.state.json");
        std::os::unix::fs::symlink("../real/tokens.state.json", &link).unwrap();
        let through_link = FileStore::new(&link);
        let real = fs::canonicalize(dir.path())
            .unwrap()
            .join("real/tokens.state.json");
        let direct = FileStore::new(real);
        assert_eq!(through_link.lock_path(), direct.lock_path());
        assert_eq!(through_link.journal_path(), direct.journal_path());
        let mut state = crate::lineage::fresh_state();
        one_token(&mut state, "a", 1);
        let (first, _) = commit(&through_link, None, state).unwrap();
        let mut second = first.clone();
        one_token(&mut second, "b", 2);
        commit(&through_link, Some(&first), second).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(direct.load().unwrap().unwrap().tokens.len(), 2);
    }

    #[test]
    fn missing_state_loads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state/tokens.state.json"));
        assert!(store.load().unwrap().is_none());
    }

    #[test]
    fn commit_writes_moves_serial_and_keeps_backup() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state/tokens.state.json"));
        let mut first = crate::lineage::fresh_state();
        one_token(&mut first, "a", 1);
        let (first, written) = commit(&store, None, first).unwrap();
        assert!(written);
        assert_eq!(first.serial, 1);
        let first_text = fs::read_to_string(store.path()).unwrap();

        let mut second = first.clone();
        one_token(&mut second, "b", 2);
        let (second, _) = commit(&store, Some(&first), second).unwrap();
        assert_eq!(second.serial, 2);
        assert_eq!(second.lineage, first.lineage);
        assert_eq!(fs::read_to_string(store.backup_path()).unwrap(), first_text);
        assert_eq!(store.load().unwrap().unwrap(), second);
    }

    #[test]
    fn commit_without_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("s.json"));
        let (state, _) = commit(&store, None, crate::lineage::fresh_state()).unwrap();
        let before = fs::metadata(store.path()).unwrap().modified().unwrap();
        let (again, written) = commit(&store, Some(&state), state.clone()).unwrap();
        assert!(!written);
        assert_eq!(again.serial, state.serial);
        assert_eq!(
            fs::metadata(store.path()).unwrap().modified().unwrap(),
            before
        );
        assert!(!store.backup_path().exists());
    }

    #[test]
    fn corrupt_state_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("s.json"));
        fs::write(store.path(), "{\"format_version\": 1, \"tok").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("s.json"));
        assert!(err.hint().unwrap().contains("s.json.backup"));
        assert_eq!(
            fs::read_to_string(store.path()).unwrap(),
            "{\"format_version\": 1, \"tok"
        );
    }

    #[test]
    fn newer_state_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("s.json"));
        fs::write(store.path(), "{\"format_version\": 7}").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Newer { .. }), "{err}");
        assert!(err.hint().unwrap().contains("upgrade"));
    }
}
