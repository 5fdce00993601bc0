//! The state lock: one writer at a time, and who holds it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Who holds the lock, written into the lock file for whoever waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    /// Epoch seconds.
    pub started: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_job_url: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} (pid {}) running `{}` since {}",
            self.user,
            self.host,
            self.pid,
            self.command,
            crate::time::utc(self.started)
        )?;
        if let Some(url) = &self.ci_job_url {
            write!(f, ", CI job {url}")?;
        }
        Ok(())
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state is locked by {holder}")]
    Held { path: PathBuf, holder: String },
    #[error("cannot use the lock file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl crate::error::Hint for LockError {
    fn hint(&self) -> Option<String> {
        match self {
            LockError::Held { path, .. } => Some(format!(
                "wait for it to finish, or pass --lock-timeout 5m to wait; the lock is an OS lock on {} and goes away with its process, so never delete the file to break it",
                path.display()
            )),
            LockError::Io { .. } => None,
        }
    }
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl LockGuard {
    /// Tells whether the locked file is still the one at `path`: a lock
    /// file deleted (and perhaps made again by another run) excludes no one.
    pub fn is_current(&self, path: &Path) -> bool {
        is_at_path(&self.file, path)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Leave the holder text to be overwritten by the next holder; the OS
        // lock itself is what counts, and closing the file releases it.
        let _ = self.file.unlock();
    }
}

/// Takes the lock at `path`, waiting up to `wait`, and records `holder`.
pub fn acquire(path: &Path, holder: &Holder, wait: Duration) -> Result<LockGuard, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let deadline = Instant::now() + wait;
    let mut file = loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        match file.try_lock() {
            // A lock on a file that is no longer at the path (removed by a
            // workspace clean-up, say) excludes no one: open it again.
            Ok(()) if is_at_path(&file, path) => break file,
            Ok(()) => continue,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100).min(wait));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str::<Holder>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "another process (no holder information yet)".into());
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io_err(source)),
        }
    };
    let mut text = serde_json::to_string(holder).unwrap_or_default();
    text.push('\n');
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_data())
        .map_err(io_err)?;
    Ok(LockGuard { file })
}

/// Tells whether `file` is the file now at `path`.
#[cfg(unix)]
fn is_at_path(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_at_path(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Hint;

    fn holder(pid: u32) -> Holder {
        Holder {
            user: "ana".into(),
            host: "ci-7".into(),
            pid,
            command: "tokenctl apply".into(),
            started: 0,
            ci_job_url: Some("https://ci.example/job/1".into()),
        }
    }

    #[test]
    fn a_second_taker_fails_fast_and_sees_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json.lock");
        let first = acquire(&path, &holder(1), Duration::ZERO).unwrap();
        let err = acquire(&path, &holder(2), Duration::ZERO).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ana@ci-7 (pid 1)"), "{text}");
        assert!(text.contains("https://ci.example/job/1"), "{text}");
        assert!(err.hint().unwrap().contains("--lock-timeout"));
        drop(first);
        let again = acquire(&path, &holder(3), Duration::ZERO).unwrap();
        drop(again);
    }

    #[test]
    fn a_waiter_gets_the_lock_once_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json.lock");
        let first = acquire(&path, &holder(1), Duration::ZERO).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        // Bounded by the timeout, not by machine speed: the holder lets go
        // long before it.
        acquire(&path, &holder(2), Duration::from_secs(30)).unwrap();
        releaser.join().unwrap();
    }
}
