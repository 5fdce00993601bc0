//! The journal file: appends with group commit, under an OS lock held for
//! the whole run; reading it back, and the checks before it is folded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use crate::backend::record_line;
use crate::fsutil;
use crate::model::journal::Record;
use crate::model::state::State;

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the journal {path} is damaged at line {line}: {detail}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(
        "the journal {path} is still being written by a running apply (pid {pid} on {host}), although its lock could be taken"
    )]
    Live {
        path: PathBuf,
        pid: u32,
        host: String,
    },
    #[error("cannot write the journal in {location}: {detail}")]
    Remote { location: String, detail: String },
    #[error(
        "the journal {path} belongs to another state (lineage {journal}, the state has {state})"
    )]
    Lineage {
        path: PathBuf,
        journal: String,
        state: String,
    },
}

impl crate::error::Hint for JournalError {
    fn hint(&self) -> Option<String> {
        match self {
            JournalError::Io { .. } | JournalError::Remote { .. } => None,
            JournalError::Live { .. } => Some(
                "wait for that apply to finish; its lock file was probably removed while it ran, so check that nothing deletes files beside the state during an apply".into(),
            ),
            JournalError::Corrupt { path, .. } | JournalError::Lineage { path, .. } => {
                Some(format!(
                    "the journal was left untouched; it records creates that may have happened. Check --state, \
                 then look at {} and settle each address with the Logz.io UI before moving the file away",
                    path.display()
                ))
            }
        }
    }
}

/// Reads the journal at `path`; `None` when there is none.
///
/// A last line without its newline was being written when the process died,
/// was never acknowledged, and is ignored. Any other bad line is an error.
pub fn read(path: &Path) -> Result<Option<Vec<Record>>, JournalError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let mut records = Vec::new();
    for (index, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(line).map_err(|err| JournalError::Corrupt {
            path: path.to_path_buf(),
            line: index + 1,
            detail: err.to_string(),
        })?;
        records.push(record);
    }
    match records.first() {
        Some(Record::Begin { .. }) | None => Ok(Some(records)),
        Some(_) => Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            detail: "the first record is not `begin`".into(),
        }),
    }
}

/// Checks that a journal was written against `state`.
pub fn check_lineage(
    path: &Path,
    records: &[Record],
    state: Option<&State>,
) -> Result<(), JournalError> {
    if let (Some(Record::Begin { lineage, .. }), Some(state)) = (records.first(), state)
        && lineage != &state.lineage
    {
        return Err(JournalError::Lineage {
            path: path.to_path_buf(),
            journal: lineage.clone(),
            state: state.lineage.clone(),
        });
    }
    Ok(())
}

/// Refuses a journal whose writer is still running on this host: folding it
/// would record its creates in flight as in doubt, or, with them dropped,
/// send them a second time.
pub fn check_writer_gone(
    path: &Path,
    records: &[Record],
    host: Option<&str>,
) -> Result<(), JournalError> {
    // The writer holds an OS lock on the journal for its whole run, which
    // tells even a renamed binary or a hidden /proc apart.
    if let Ok(file) = File::open(path)
        && matches!(
            file.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    {
        let (pid, writer_host) = match records.first() {
            Some(Record::Begin { pid, host, .. }) => (
                *pid,
                host.clone().unwrap_or_else(|| "an unknown host".into()),
            ),
            _ => (0, "an unknown host".into()),
        };
        return Err(JournalError::Live {
            path: path.to_path_buf(),
            pid,
            host: writer_host,
        });
    }
    let Some(Record::Begin {
        pid,
        host: Some(writer_host),
        ..
    }) = records.first()
    else {
        return Ok(());
    };
    if Some(writer_host.as_str()) == host && *pid != std::process::id() && is_tokenctl_running(*pid)
    {
        return Err(JournalError::Live {
            path: path.to_path_buf(),
            pid: *pid,
            host: writer_host.clone(),
        });
    }
    Ok(())
}

/// Tells whether `pid` is a running tokenctl. Where /proc is missing the
/// answer is no, and the state lock alone keeps runs apart.
fn is_tokenctl_running(pid: u32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A pid reused by another program after a crash is not the writer.
    let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let program = String::from_utf8_lossy(program);
    Path::new(program.as_ref())
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("tokenctl"))
}

type Batch = (Vec<u8>, oneshot::Sender<io::Result<()>>);

/// Appends records durably, from any number of concurrent creates.
///
/// Appends go to one writer thread, which writes everything queued and
/// fsyncs once for the lot (group commit): each `append` returns only after
/// its record is on disk, and records stay in the order they were appended.
pub struct JournalWriter {
    path: PathBuf,
    sender: Option<mpsc::Sender<Batch>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl JournalWriter {
    /// Creates the journal with its `begin` record. Fails if one exists:
    /// it must be folded first.
    pub fn create(path: &Path, begin: &Record) -> Result<Self, JournalError> {
        let io_err = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(io_err)?;
        // Held for the whole run: whoever finds the journal while this
        // run writes it sees the lock, whatever became of the lock file.
        file.try_lock().map_err(|err| {
            io_err(match err {
                std::fs::TryLockError::WouldBlock => {
                    io::Error::other("another process holds the journal")
                }
                std::fs::TryLockError::Error(err) => err,
            })
        })?;
        file.write_all(&record_line(begin)).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fsutil::sync_dir(fsutil::parent_dir(path)).map_err(io_err)?;
        let (sender, receiver) = mpsc::channel::<Batch>();
        let thread = thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_batches(file, receiver))
            .map_err(io_err)?;
        Ok(JournalWriter {
            path: path.to_path_buf(),
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Appends one record and waits until it is durable.
    pub async fn append(&self, record: &Record) -> Result<(), JournalError> {
        let (done, wait) = oneshot::channel();
        let closed = || JournalError::Io {
            path: self.path.clone(),
            source: io::Error::other("the journal writer stopped"),
        };
        self.sender
            .as_ref()
            .ok_or_else(closed)?
            .send((record_line(record), done))
            .map_err(|_| closed())?;
        wait.await
            .map_err(|_| closed())?
            .map_err(|source| JournalError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_batches(mut file: File, receiver: mpsc::Receiver<Batch>) {
    // After a failed write (a full disk) part of a line may be on disk:
    // nothing more is written behind it, so the reader sees a torn last
    // line, which it ignores, rather than a damaged one in the middle.
    let mut broken: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        let mut bytes = Vec::new();
        for (line, _) in &batch {
            bytes.extend_from_slice(line);
        }
        let result = match &broken {
            Some((kind, text)) => Err(io::Error::new(
                *kind,
                format!("an earlier write to the journal failed: {text}"),
            )),
            None => file.write_all(&bytes).and_then(|()| file.sync_data()),
        };
        if let (Err(err), None) = (&result, &broken) {
            broken = Some((err.kind(), err.to_string()));
        }
        for (_, done) in batch {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            });
        }
    }
}

/// Removes the journal after its records reached the state.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsutil::sync_dir(fsutil::parent_dir(path)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::journal::samples::{begin, created, intent};

    #[tokio::test]
    async fn writes_read_back_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json.journal");
        let writer = JournalWriter::create(&path, &begin()).unwrap();
        writer.append(&intent("a")).await.unwrap();
        writer.append(&created("a", 7)).await.unwrap();
        drop(writer);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"type\":\"intent\",\"addr").unwrap();
        let records = read(&path).unwrap().unwrap();
        assert_eq!(records, [begin(), intent("a"), created("a", 7)]);
    }

    #[test]
    fn a_damaged_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        fs::write(
            &path,
            format!(
                "{}garbage\n{}",
                String::from_utf8(record_line(&begin())).unwrap(),
                String::from_utf8(record_line(&intent("a"))).unwrap()
            ),
        )
        .unwrap();
        let err = read(&path).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_to_start_over_an_existing_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        fs::write(&path, "").unwrap();
        assert!(JournalWriter::create(&path, &begin()).is_err());
        assert!(read(&dir.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn a_journal_of_a_running_tokenctl_on_this_host_is_not_folded() {
        let path = Path::new("j");
        let begin = |pid: u32, host: Option<&str>| Record::Begin {
            lineage: "l".into(),
            serial: 0,
            started: 0,
            pid,
            host: host.map(str::to_string),
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // A live process that is not tokenctl (a reused pid) is no writer.
        assert!(check_writer_gone(path, &[begin(child.id(), Some("h"))], Some("h")).is_ok());
        assert!(check_writer_gone(path, &[begin(child.id(), None)], Some("h")).is_ok());
        let _ = child.kill();
        let _ = child.wait();
        // The writer's own fold at the end of its run is no conflict.
        assert!(
            check_writer_gone(path, &[begin(std::process::id(), Some("h"))], Some("h")).is_ok()
        );
    }

    #[test]
    fn a_journal_being_written_is_seen_as_live_by_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let writer = JournalWriter::create(&path, &begin()).unwrap();
        let records = read(&path).unwrap().unwrap();
        // No host in the begin record: only the lock can tell.
        assert!(matches!(
            check_writer_gone(&path, &records, Some("h")),
            Err(JournalError::Live { .. })
        ));
        assert!(JournalWriter::create(&dir.path().join("j2"), &begin()).is_ok());
        drop(writer);
        // A child process forked by another test of this binary holds the
        // journal's open file (and so its lock) until it execs: wait for
        // that, within reason.
        let gone = (0..200).any(|_| {
            let gone = check_writer_gone(&path, &records, Some("h")).is_ok();
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(gone, "the journal's lock outlived its writer");
    }

    #[test]
    fn lineage_must_match_the_state() {
        let records = [begin()];
        let path = Path::new("j");
        assert!(check_lineage(path, &records, Some(&State::new("l".into()))).is_ok());
        assert!(check_lineage(path, &records, None).is_ok());
        assert!(matches!(
            check_lineage(path, &records, Some(&State::new("other".into()))),
            Err(JournalError::Lineage { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_durable_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let writer = std::sync::Arc::new(JournalWriter::create(&path, &begin()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer.append(&intent(&format!("t{i}"))).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let records = read(&path).unwrap().unwrap();
        assert_eq!(records.len(), 201);
    }
}
