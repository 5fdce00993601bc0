//! Secret sinks: the only places a token value is ever written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::address::Address;
use crate::fsutil;
use crate::secret::Secret;

/// A token just created, with its secret, on its way to the sinks.
pub struct NewToken<'a> {
    pub address: &'a Address,
    pub id: u64,
    pub created_at: i64,
    pub token: &'a Secret,
}

impl NewToken<'_> {
    /// Returns the JSON object a sink receives, on one line.
    fn to_json_line(&self) -> String {
        let mut line = serde_json::json!({
            "address": self.address.to_string(),
            "accountId": self.address.account_id,
            "name": self.address.name,
            "id": self.id,
            "createdAt": self.created_at,
            "token": self.token.expose(),
        })
        .to_string();
        line.push('\n');
        line
    }
}

/// Why a sink could not take a secret, or could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("secret sink {sink}: {detail}")]
pub struct SinkError {
    pub sink: String,
    pub detail: String,
    pub hint: Option<String>,
}

/// Receives new secrets.
pub trait SecretSink: Send {
    /// Hands over one new token; returns once it is durable.
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError>;

    /// Names the sink for messages.
    fn describe(&self) -> String;
}

/// A secret read back from a sink.
pub struct FoundSecret {
    pub id: u64,
    pub created_at: Option<i64>,
    pub token: Secret,
    /// Where it was found, for messages (a file or a path; never the value).
    pub place: String,
}

/// Reads back what a sink holds, without needing to write to it: `resolve`
/// uses every sink that can.
pub trait SecretLookup {
    /// Returns the secrets held for `address`, oldest first.
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError>;

    /// Returns every secret held, oldest first, when the sink can list them
    /// in one go more cheaply than address by address (a refresh reads all).
    fn lookup_all(&self) -> Option<Result<Vec<(Address, FoundSecret)>, SinkError>> {
        None
    }

    /// Names the sink for messages.
    fn describe(&self) -> String;
}

/// Appends one JSON object per token to a file of mode 0600, fsynced per
/// token, so each token costs the same however large the file is.
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    /// Opens (creating if needed) the sink file, after checking that it is
    /// private and would not be committed to git.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let fail = |detail: String, hint: Option<String>| SinkError {
            sink: path.display().to_string(),
            detail,
            hint,
        };
        // Through a link, secrets would land wherever it points, perhaps in
        // a file git tracks, while every check looked at the link.
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(fail(
                "the secrets file is a symbolic link; tokenctl writes secrets only to a real file"
                    .into(),
                Some(format!(
                    "point secrets.file (or --secrets-out) at the file itself, not at the link {}",
                    path.display()
                )),
            ));
        }
        let dir = fsutil::parent_dir(path);
        create_private_dir(dir)
            .map_err(|e| fail(format!("cannot create folder {}: {e}", dir.display()), None))?;
        check_git_ignored(path).map_err(|(detail, hint)| fail(detail, Some(hint)))?;
        let file = open_private_append(path).map_err(|e| {
            fail(
                format!("cannot open for writing: {e}"),
                Some(
                    "check the folder's permissions, or choose another file with --secrets-out"
                        .into(),
                ),
            )
        })?;
        check_private(&file).map_err(|detail| {
            fail(
                detail,
                Some(format!(
                    "run `chmod 600 {}` and check who could read it",
                    path.display()
                )),
            )
        })?;
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
        })
    }
}

impl SecretSink for FileSink {
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError> {
        let line = token.to_json_line();
        let fail = |detail: String| SinkError {
            sink: self.path.display().to_string(),
            detail,
            hint: None,
        };
        let whole = self
            .file
            .metadata()
            .map_err(|e| fail(format!("cannot read the file's size: {e}")))?
            .len();
        let written = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // A full disk can take part of the line: cut it off, so the
            // next record does not glue onto it and every line parses.
            let detail = match self
                .file
                .set_len(whole)
                .and_then(|()| self.file.sync_data())
            {
                Ok(()) => {
                    format!("write failed: {err}; the file was cut back to its last whole record")
                }
                Err(cut) => format!(
                    "write failed: {err}, and cutting the partial record off failed too: {cut}"
                ),
            };
            return Err(fail(detail));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Reads a JSON Lines secrets file back, in the format [`FileSink`] writes.
pub struct FileLookup {
    path: PathBuf,
}

impl FileLookup {
    /// Returns a reader of the secrets file at `path`; a missing file holds
    /// nothing.
    pub fn new(path: PathBuf) -> Self {
        FileLookup { path }
    }
}

impl FileLookup {
    /// Reads every record. Lines are in delivery order, so a later line
    /// supersedes an earlier one; a torn last line (a crash mid-write) is
    /// skipped.
    fn records(&self) -> Result<Vec<(Address, FoundSecret)>, SinkError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(SinkError {
                    sink: self.describe(),
                    detail: format!("cannot read: {e}"),
                    hint: None,
                });
            }
        };
        #[derive(serde::Deserialize)]
        struct Line {
            address: Address,
            id: u64,
            #[serde(rename = "createdAt")]
            created_at: Option<i64>,
            token: String,
        }
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str::<Line>(line).ok())
            .map(|line| {
                let found = FoundSecret {
                    id: line.id,
                    created_at: line.created_at,
                    token: Secret::new(line.token),
                    place: self.describe(),
                };
                (line.address, found)
            })
            .collect())
    }
}

impl SecretLookup for FileLookup {
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|(a, _)| a == address)
            .map(|(_, found)| found)
            .collect())
    }

    fn lookup_all(&self) -> Option<Result<Vec<(Address, FoundSecret)>, SinkError>> {
        Some(self.records())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Runs a command per token with the token's JSON object on its stdin; a
/// non-zero exit or a timeout is a failure.
///
/// The command runs without the owner token in its environment, and what
/// it prints never reaches tokenctl's output (it may echo the secret in
/// any shape): when it fails, its output goes to a private file.
pub struct ExecSink {
    argv: Vec<String>,
    timeout: Duration,
    output_dir: PathBuf,
}

/// Variables the exec sink's command does not inherit: the owner token.
pub const WITHHELD_FROM_EXEC: [&str; 2] = ["LOGZIO_API_TOKEN", "LOGZIO_API_TOKEN_FILE"];

impl ExecSink {
    /// Returns a sink running `argv`, after checking that the program
    /// exists; a failing run's output is kept in `output_dir` (mode 0600).
    pub fn new(
        argv: Vec<String>,
        timeout: Duration,
        output_dir: PathBuf,
    ) -> Result<Self, SinkError> {
        let program = argv.first().cloned().unwrap_or_default();
        if find_program(&program).is_none() {
            return Err(SinkError {
                sink: format!("exec {program}"),
                detail: format!("program `{program}` was not found"),
                hint: Some("check `secrets.exec` in the manifest: the first item is the program, found on PATH or by path".into()),
            });
        }
        Ok(ExecSink {
            argv,
            timeout,
            output_dir,
        })
    }

    /// Keeps what a failed run printed in a private file and says where.
    fn keep_output(&self, output: &mut File, token: &NewToken<'_>) -> String {
        let mut bytes = Vec::new();
        if output.seek(io::SeekFrom::Start(0)).is_err() || output.read_to_end(&mut bytes).is_err() {
            return "its output could not be read back".into();
        }
        if bytes.is_empty() {
            return "it printed nothing".into();
        }
        let name = format!(
            "exec-sink-{}-{}-{}.log",
            token.created_at, token.address.account_id, token.id
        );
        let path = self.output_dir.join(name);
        match create_private_dir(&self.output_dir)
            .and_then(|()| fsutil::write_atomic(&path, &bytes, 0o600))
        {
            Ok(()) => format!(
                "its output ({} bytes) was saved to {} (mode 0600)",
                bytes.len(),
                path.display()
            ),
            Err(err) => format!("its output could not be saved ({err}) and was dropped"),
        }
    }
}

impl SecretSink for ExecSink {
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError> {
        let fail = |detail: String| SinkError {
            sink: self.describe(),
            detail,
            hint: None,
        };
        // Output goes to an unnamed file rather than a pipe, so a chatty
        // program cannot block on a full pipe while we wait.
        let mut output = tempfile::tempfile().map_err(|e| fail(e.to_string()))?;
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(output.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(output.try_clone().map_err(|e| fail(e.to_string()))?);
        for name in WITHHELD_FROM_EXEC {
            command.env_remove(name);
        }
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("cannot start: {e}")))?;
        // Writing happens on its own thread, inside the timeout: a program
        // that never reads its stdin must not hang tokenctl on a full pipe.
        let writer = child.stdin.take().map(|mut stdin| {
            let line = token.to_json_line();
            std::thread::spawn(move || stdin.write_all(line.as_bytes()))
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(e.to_string()));
                }
            }
        };
        // The child is gone, so its end of the pipe is closed and the
        // writer has returned.
        let written = writer
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("writer panicked")))
            })
            .unwrap_or(Ok(()));
        let detail = match (status, written) {
            (Some(status), Ok(())) if status.success() => return Ok(()),
            (None, _) => format!(
                "no exit within {}; it was killed",
                humantime::format_duration(self.timeout)
            ),
            (Some(status), Err(e)) if status.success() => {
                format!("it exited 0 without reading the token from its stdin ({e})")
            }
            (Some(status), _) => format!("it exited with {status}"),
        };
        let output = self.keep_output(&mut output, token);
        Err(fail(format!("{detail}; {output}")))
    }

    fn describe(&self) -> String {
        format!("exec {}", self.argv.join(" "))
    }
}

fn find_program(program: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// What happened when one secret was handed to the sinks.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The sinks that failed.
    pub failures: Vec<SinkError>,
    /// `None` when every sink took the secret; otherwise the rescue file
    /// that holds it (`Some(None)`: the rescue file failed too).
    pub rescue: Option<Option<PathBuf>>,
}

/// Hands `token` to every sink; for each that fails, the secret is kept in
/// a rescue file (written once per token) instead.
pub fn deliver_all(
    sinks: &mut [Box<dyn SecretSink>],
    rescue: &Rescue,
    token: &NewToken<'_>,
) -> Delivery {
    let mut delivery = Delivery::default();
    for sink in sinks.iter_mut() {
        if let Err(err) = sink.deliver(token) {
            delivery
                .rescue
                .get_or_insert_with(|| rescue.save(token).ok());
            delivery.failures.push(err);
        }
    }
    delivery
}

/// One secret on its way to the sink thread.
struct Handover {
    address: Address,
    id: u64,
    created_at: i64,
    token: Secret,
    done: tokio::sync::oneshot::Sender<Delivery>,
}

/// Runs the sinks on a thread of their own, so that their fsyncs and
/// commands do not stall the requests of other creates in flight.
pub struct SinkWorker {
    sender: Option<std::sync::mpsc::Sender<Handover>>,
    thread: Option<std::thread::JoinHandle<()>>,
    rescue: Rescue,
}

impl SinkWorker {
    /// Starts the thread; it owns the sinks until [`SinkWorker::finish`].
    pub fn start(mut sinks: Vec<Box<dyn SecretSink>>, rescue: Rescue) -> io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::channel::<Handover>();
        let own_rescue = rescue.clone();
        let thread = std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || {
                for handover in receiver {
                    let token = NewToken {
                        address: &handover.address,
                        id: handover.id,
                        created_at: handover.created_at,
                        token: &handover.token,
                    };
                    let delivery = deliver_all(&mut sinks, &rescue, &token);
                    let _ = handover.done.send(delivery);
                }
            })?;
        Ok(SinkWorker {
            sender: Some(sender),
            thread: Some(thread),
            rescue: own_rescue,
        })
    }

    /// Hands a new token to the sinks and waits until every sink has it
    /// (or its rescue file does).
    pub async fn deliver(
        &self,
        address: &Address,
        id: u64,
        created_at: i64,
        token: Secret,
    ) -> Delivery {
        let (done, wait) = tokio::sync::oneshot::channel();
        let handover = Handover {
            address: address.clone(),
            id,
            created_at,
            token,
            done,
        };
        let stopped = |rescue: Option<PathBuf>| Delivery {
            failures: vec![SinkError {
                sink: "all sinks".into(),
                detail: "the sink thread stopped".into(),
                hint: None,
            }],
            rescue: Some(rescue),
        };
        let Some(sender) = self.sender.as_ref() else {
            return stopped(None);
        };
        match sender.send(handover) {
            Ok(()) => wait.await.unwrap_or_else(|_| stopped(None)),
            // The secret came back with the failed send: keep it.
            Err(std::sync::mpsc::SendError(handover)) => {
                let token = NewToken {
                    address: &handover.address,
                    id: handover.id,
                    created_at: handover.created_at,
                    token: &handover.token,
                };
                stopped(self.rescue.save(&token).ok())
            }
        }
    }

    /// Waits for the deliveries in progress and stops the thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SinkWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How much of a token's name goes into its rescue file's name.
const RESCUE_NAME_CHARS: usize = 48;

/// Keeps secrets that no sink would take, so they are not lost.
#[derive(Debug, Clone)]
pub struct Rescue {
    dir: PathBuf,
}

impl Rescue {
    /// Returns a rescue folder at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Rescue { dir }
    }

    /// Returns the per-user default: `$XDG_STATE_HOME/tokenctl/rescue`, else
    /// `$HOME/.local/state/tokenctl/rescue`; `None` when neither variable
    /// is set, as a shared folder such as /tmp is no place for secrets.
    pub fn default_dir(xdg_state_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
        let base = match (xdg_state_home, home) {
            (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg),
            (_, Some(home)) if !home.is_empty() => Path::new(home).join(".local/state"),
            _ => return None,
        };
        Some(base.join("tokenctl").join("rescue"))
    }

    /// Returns the folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure a rescue file can be written, before any token exists
    /// that might need one: creates the folder (mode 0700) and writes and
    /// removes a probe file.
    pub fn prepare(&self) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let probe = tempfile::Builder::new()
            .prefix(".probe-")
            .tempfile_in(&self.dir)?;
        probe.close()
    }

    /// Writes the token to its own 0600 file and returns the file's path.
    pub fn save(&self, token: &NewToken<'_>) -> io::Result<PathBuf> {
        create_private_dir(&self.dir)?;
        // Bounded whatever the name's length: the id and time make the file
        // name unique, the name's start only helps a person find it.
        let safe_name: String = token
            .address
            .name
            .chars()
            .take(RESCUE_NAME_CHARS)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.join(format!(
            "{}-{}-{}-{}.json",
            token.created_at, token.address.account_id, safe_name, token.id
        ));
        fsutil::write_atomic(&path, token.to_json_line().as_bytes(), 0o600)?;
        Ok(path)
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn open_private_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(unix)]
fn check_private(file: &File) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the file is readable or writable by others (mode {:o}); secrets need mode 600",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &File) -> Result<(), String> {
    Ok(())
}

/// Refuses a path inside a git work tree that git would not ignore.
/// Without git on the machine there is nothing to commit it, so it passes.
fn check_git_ignored(path: &Path) -> Result<(), (String, String)> {
    let dir = fsutil::parent_dir(path);
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(dir).args(args).output();
    let Ok(toplevel) = git(&["rev-parse", "--show-toplevel"]) else {
        return Ok(());
    };
    if !toplevel.status.success() {
        return Ok(());
    }
    let Some(file_name) = path.file_name() else {
        return Ok(());
    };
    let ignored = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["check-ignore", "-q", "--"])
        .arg(file_name)
        .status();
    match ignored {
        Ok(status) if status.success() => Ok(()),
        Ok(status) if status.code() == Some(1) => {
            let root = PathBuf::from(String::from_utf8_lossy(&toplevel.stdout).trim());
            let absolute = fs::canonicalize(dir)
                .map(|d| d.join(file_name))
                .unwrap_or_else(|_| path.to_path_buf());
            let relative = absolute.strip_prefix(&root).unwrap_or(&absolute);
            Err((
                "the file is inside a git work tree and git does not ignore it, so the secrets could be committed".into(),
                format!(
                    "add this line to {}: /{}",
                    root.join(".gitignore").display(),
                    relative.display()
                ),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token<'a>(secret: &'a Secret, address: &'a Address) -> NewToken<'a> {
        NewToken {
            address,
            id: 7,
            created_at: 1_600_000_000,
            token: secret,
        }
    }

    fn address() -> Address {
        Address::new(160343, "ci/shipper")
    }

    #[test]
    fn file_sink_appends_one_private_line_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets/tokens.jsonl");
        let secret = Secret::new("tok-1".into());
        let mut sink = FileSink::open(&path).unwrap();
        sink.deliver(&token(&secret, &address())).unwrap();
        sink.deliver(&token(&secret, &address())).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["token"], "tok-1");
        assert_eq!(lines[0]["address"], "160343/ci/shipper");
        assert_eq!(lines[0]["id"], 7);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn file_sink_refuses_a_world_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.jsonl");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = FileSink::open(&path).err().unwrap();
        assert!(err.detail.contains("mode 644"), "{err}");
    }

    #[test]
    fn file_sink_refuses_a_file_git_would_commit() {
        if Command::new("git").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "git is needed in CI");
            eprintln!("skipped: git is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let path = dir.path().join("secrets/tokens.jsonl");
        let err = FileSink::open(&path).err().unwrap();
        assert!(err.detail.contains("git does not ignore it"), "{err}");
        assert!(err.hint.unwrap().ends_with("/secrets/tokens.jsonl"));

        fs::write(dir.path().join(".gitignore"), "secrets/\n").unwrap();
        assert!(FileSink::open(&path).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn rescue_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let rescue = Rescue::new(dir.path().join("rescue"));
        let secret = Secret::new("tok-2".into());
        let path = rescue.save(&token(&secret, &address())).unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("tok-2"));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("ci_shipper")
        );
    }

    #[cfg(unix)]
    #[test]
    fn exec_sink_pipes_the_record_and_reports_failures_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got.json");
        let script = format!("cat > '{}'", out.display());
        let mut sink = ExecSink::new(
            vec!["sh".into(), "-c".into(), script],
            Duration::from_secs(30),
            dir.path().join("rescue"),
        )
        .unwrap();
        let secret = Secret::new("tok-3".into());
        sink.deliver(&token(&secret, &address())).unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(got["token"], "tok-3");

        let mut failing = ExecSink::new(
            vec![
                "sh".into(),
                "-c".into(),
                "read line; echo \"vault said no to $line\" >&2; exit 3".into(),
            ],
            Duration::from_secs(30),
            dir.path().join("rescue"),
        )
        .unwrap();
        let err = failing.deliver(&token(&secret, &address())).unwrap_err();
        // The detail is what tokenctl adds to the sink's name (its argv).
        let text = err.detail.clone();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(!text.contains("vault said no"), "{text}");
        assert!(!text.contains("tok-3"), "{text}");
        let saved = dir.path().join("rescue/exec-sink-1600000000-160343-7.log");
        assert!(text.contains(&saved.display().to_string()), "{text}");
        assert!(
            fs::read_to_string(&saved)
                .unwrap()
                .contains("vault said no")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&saved).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn exec_sink_output_never_reaches_the_error_even_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        // Prints the token in two halves, which no exact-match redaction
        // would catch, then fails.
        let mut sink = ExecSink::new(
            vec![
                "sh".into(),
                "-c".into(),
                "read line; t=${line#*\\\"token\\\":\\\"}; t=${t%%\\\"*}; echo \"${t%????}\" >&2; echo \"${t#${t%????}}\" >&2; exit 1".into(),
            ],
            Duration::from_secs(30),
            dir.path().join("rescue"),
        )
        .unwrap();
        let secret = Secret::new("tok-split-secret".into());
        let err = sink.deliver(&token(&secret, &address())).unwrap_err();
        let text = format!("{} {:?}", err.detail, err.hint);
        for piece in ["tok-split-se", "cret"] {
            assert!(!text.contains(piece), "{text}");
        }
        let saved = fs::read_to_string(dir.path().join("rescue/exec-sink-1600000000-160343-7.log"))
            .unwrap();
        assert_eq!(saved, "tok-split-se\ncret\n");
    }

    #[cfg(unix)]
    #[test]
    fn exec_sink_runs_without_the_owner_token() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let script = format!("cat >/dev/null; env > '{}'", out.display());
        let mut sink = ExecSink::new(
            vec!["sh".into(), "-c".into(), script],
            Duration::from_secs(30),
            dir.path().join("rescue"),
        )
        .unwrap();
        // Set in this process's environment only for the child to inherit;
        // no other test reads these variables.
        unsafe {
            std::env::set_var("LOGZIO_API_TOKEN", "owner-token-must-stay-home");
            std::env::set_var("LOGZIO_API_TOKEN_FILE", "/owner/token/file");
        }
        let secret = Secret::new("tok-5".into());
        sink.deliver(&token(&secret, &address())).unwrap();
        let env = fs::read_to_string(&out).unwrap();
        assert!(!env.contains("owner-token-must-stay-home"), "{env}");
        assert!(!env.contains("LOGZIO_API_TOKEN"), "{env}");
        assert!(env.contains("PATH="), "{env}");
    }

    #[cfg(unix)]
    #[test]
    fn exec_sink_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ExecSink::new(
            vec!["sleep".into(), "30".into()],
            Duration::from_millis(100),
            dir.path().join("rescue"),
        )
        .unwrap();
        let secret = Secret::new("tok-4".into());
        let err = sink.deliver(&token(&secret, &address())).unwrap_err();
        assert!(err.detail.contains("killed"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn exec_sink_timeout_covers_a_record_the_program_never_reads() {
        let dir = tempfile::tempdir().unwrap();
        // More than a pipe holds, to a program that never reads it: the
        // write blocks until the program is killed at the timeout.
        let mut sink = ExecSink::new(
            vec!["sleep".into(), "600".into()],
            Duration::from_millis(200),
            dir.path().join("rescue"),
        )
        .unwrap();
        let secret = Secret::new("x".repeat(200 * 1024));
        let err = sink.deliver(&token(&secret, &address())).unwrap_err();
        assert!(err.detail.contains("killed"), "{err}");
    }

    #[test]
    fn exec_sink_needs_an_existing_program() {
        let err = ExecSink::new(
            vec!["no-such-program-xyz".into()],
            Duration::from_secs(1),
            PathBuf::from("/nonexistent"),
        )
        .err()
        .unwrap();
        assert!(err.detail.contains("not found"), "{err}");
    }

    #[test]
    fn file_lookup_reads_back_what_the_file_sink_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.jsonl");
        let lookup = FileLookup::new(path.clone());
        assert!(lookup.lookup(&address()).unwrap().is_empty());
        let mut sink = FileSink::open(&path).unwrap();
        let (first, second) = (Secret::new("tok-5".into()), Secret::new("tok-6".into()));
        sink.deliver(&token(&first, &address())).unwrap();
        sink.deliver(&token(&second, &Address::new(1, "other")))
            .unwrap();
        let here = address();
        let mut later = token(&second, &here);
        later.id = 8;
        sink.deliver(&later).unwrap();
        // A line torn by a crash mid-write is skipped.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"address\":\"160343/ci/shipper\",\"id\":9,\"tok")
            .unwrap();
        let found = lookup.lookup(&address()).unwrap();
        let ids: Vec<u64> = found.iter().map(|f| f.id).collect();
        assert_eq!(ids, [7, 8]);
        assert_eq!(found[1].token.expose(), "tok-6");
        assert_eq!(found[1].created_at, Some(1_600_000_000));
    }

    #[test]
    fn rescue_dir_prefers_xdg_state_home() {
        assert_eq!(
            Rescue::default_dir(Some("/x"), Some("/h")),
            Some(PathBuf::from("/x/tokenctl/rescue"))
        );
        assert_eq!(
            Rescue::default_dir(None, Some("/h")),
            Some(PathBuf::from("/h/.local/state/tokenctl/rescue"))
        );
        // Never a shared folder such as /tmp.
        assert_eq!(Rescue::default_dir(None, None), None);
        assert_eq!(Rescue::default_dir(Some(""), Some("")), None);
    }

    #[test]
    fn rescue_file_names_are_bounded_for_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let rescue = Rescue::new(dir.path().join("rescue"));
        let secret = Secret::new("tok-6".into());
        for name in ["n".repeat(1000), "é".repeat(300), "a/../b c".repeat(80)] {
            let address = Address::new(160343, &name);
            let path = rescue.save(&token(&secret, &address)).unwrap();
            let file_name = path.file_name().unwrap().to_str().unwrap();
            assert!(file_name.len() < 120, "{file_name}");
            assert!(fs::read_to_string(&path).unwrap().contains("tok-6"));
        }
    }

    #[test]
    fn rescue_prepare_fails_where_nothing_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("a-file");
        fs::write(&blocked, "").unwrap();
        assert!(Rescue::new(blocked.join("rescue")).prepare().is_err());
        assert!(Rescue::new(dir.path().join("rescue")).prepare().is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn file_sink_refuses_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.jsonl");
        let link = dir.path().join("tokens.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = FileSink::open(&link).err().unwrap();
        assert!(err.detail.contains("symbolic link"), "{err}");
        assert!(!target.exists());
    }
}
