//! The exec sink: a command per token, with the token's JSON object on its
//! stdin.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

use super::{
    ForApply, FoundSecret, NewToken, SecretLookup, SecretSink, SinkContext, SinkError, SinkKind,
    create_private_dir,
};
use crate::fsutil;
use crate::model::address::Address;
use crate::secret::Secret;

/// How long the command may take for one token, unless the manifest says.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The most a `lookup` may print: a token's JSON object is far smaller.
const LOOKUP_OUTPUT_MAX: u64 = 64 * 1024;
/// The most of a failed command's output that is kept for a person.
const KEPT_OUTPUT_MAX: u64 = 1024 * 1024;

/// The bounds of `secrets.exec.timeout`.
const TIMEOUT_MIN: Duration = Duration::from_secs(1);
const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// `secrets.exec`: the command, as a list of the program and its
/// arguments, or a map with the command and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// Credential variables the command is given all the same, by name
    /// (`pass_env`); it gets no other credential tokenctl reads.
    pub pass_env: Vec<String>,
    /// How long the command may take for one token.
    pub timeout: Duration,
    /// A command that reads a secret back (`lookup`): it gets
    /// `{"address", "id"}` on its stdin (`id` null: the newest it holds)
    /// and prints the token's JSON object, or exits 1 for "not found".
    pub lookup: Option<Vec<String>>,
}

impl ExecSpec {
    /// Returns the spec of a command with the default settings.
    pub fn new(argv: Vec<String>) -> Self {
        ExecSpec {
            argv,
            pass_env: Vec::new(),
            timeout: TIMEOUT,
            lookup: None,
        }
    }
}

impl SinkKind for ExecSpec {
    fn open(
        &self,
        ctx: &SinkContext<'_>,
        apply: &ForApply<'_>,
    ) -> Result<Box<dyn SecretSink>, SinkError> {
        let env = ctx.vars.for_child(&self.pass_env);
        // The read-back is needed right after a crash: a typo in it must
        // show now, before any token exists.
        if let Some(lookup) = &self.lookup {
            check_program(lookup, &env, "secrets.exec.lookup")?;
        }
        let sink = ExecSink::new(
            self.argv.clone(),
            self.timeout,
            apply.rescue_dir.to_path_buf(),
            env,
        )?;
        Ok(Box::new(sink))
    }

    fn reader(&self, ctx: &SinkContext<'_>) -> Option<Result<Box<dyn SecretLookup>, SinkError>> {
        let argv = self.lookup.clone()?;
        Some(
            ExecLookup::new(argv, self.timeout, ctx.vars.for_child(&self.pass_env))
                .map(|lookup| Box::new(lookup) as Box<dyn SecretLookup>),
        )
    }
}

/// Reads the command: a list of strings whose first is the program.
fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ArgvVisitor;
    impl<'de> Visitor<'de> for ArgvVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a command as a list of strings, e.g. [vault-put, --path, logzio]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut argv = Vec::new();
            while let Some(arg) = seq.next_element::<String>()? {
                argv.push(arg);
            }
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                return Err(de::Error::custom(
                    "secrets.exec needs at least the program to run, e.g. [vault-put, --path, logzio]",
                ));
            }
            Ok(argv)
        }
    }
    d.deserialize_seq(ArgvVisitor)
}

/// Checks a name of `pass_env`: a variable name, and never the owner
/// token, which no command may have.
fn env_name(text: &str) -> Result<String, String> {
    let valid = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{text}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
        ));
    }
    if text.starts_with("LOGZIO_API_TOKEN") {
        return Err(format!(
            "{text} is never passed to a command: the owner-account token stays inside tokenctl"
        ));
    }
    Ok(text.to_string())
}

fn pass_env<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Name(String);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            crate::model::manifest::checked_string(d, "an environment variable name", |text| {
                env_name(text).map(Name)
            })
        }
    }
    let names = Vec::<Name>::deserialize(d)?;
    Ok(names.into_iter().map(|Name(n)| n).collect())
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::model::manifest::checked_string(d, "a duration such as 60s or 5m", |text| {
        let wait = humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration such as 60s or 5m: {e}"))?;
        if !(TIMEOUT_MIN..=TIMEOUT_MAX).contains(&wait) {
            return Err(format!(
                "the timeout must be between {} and {}, not {text}",
                humantime::format_duration(TIMEOUT_MIN),
                humantime::format_duration(TIMEOUT_MAX)
            ));
        }
        Ok(wait)
    })
}

/// The map form of `secrets.exec`. Its keys leave room for more settings
/// (a read-back command, say) without changing the list form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecMap {
    #[serde(deserialize_with = "command")]
    command: Vec<String>,
    #[serde(default, deserialize_with = "pass_env")]
    pass_env: Vec<String>,
    #[serde(default, deserialize_with = "timeout_opt")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "command_opt")]
    lookup: Option<Vec<String>>,
}

fn command_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    command(d).map(Some)
}

fn timeout_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    timeout(d).map(Some)
}

impl<'de> Deserialize<'de> for ExecSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ExecSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a command as a list of strings, e.g. [vault-put, --path, logzio], or a map {command: [...], lookup: [...], pass_env: [...], timeout: 60s}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ExecSpec, A::Error> {
                command(de::value::SeqAccessDeserializer::new(seq)).map(ExecSpec::new)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ExecSpec, A::Error> {
                let map = ExecMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ExecSpec {
                    argv: map.command,
                    pass_env: map.pass_env,
                    timeout: map.timeout.unwrap_or(TIMEOUT),
                    lookup: map.lookup,
                })
            }
        }
        d.deserialize_any(SpecVisitor)
    }
}

impl JsonSchema for ExecSpec {
    fn schema_name() -> Cow<'static, str> {
        "ExecSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let command = serde_json::json!({
            "type": "array",
            "items": { "type": "string" },
            "minItems": 1
        });
        json_schema!({
            "oneOf": [
                command,
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["command"],
                    "properties": {
                        "command": command,
                        "pass_env": {
                            "description": "Credential variables the command gets all the same (VAULT_TOKEN, ...); never LOGZIO_API_TOKEN.",
                            "type": "array",
                            "items": { "type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }
                        },
                        "timeout": {
                            "description": "How long the command may take for one token, e.g. 60s (the default) or 5m; 1s to 1h.",
                            "type": "string"
                        },
                        "lookup": {
                            "description": "A command that reads a secret back: it gets {\"address\", \"id\"} on stdin (id null: the newest it holds) and prints the token's JSON object, or exits 1 for not found.",
                            "type": "array",
                            "items": { "type": "string" },
                            "minItems": 1
                        }
                    }
                }
            ]
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Runs a command per token with the token's JSON object on its stdin; a
/// non-zero exit or a timeout is a failure.
///
/// The command runs without any credential tokenctl reads in its
/// environment (`vars::CREDENTIALS`: the owner token, Vault's token, the
/// age key, the database's password) but those the manifest passes by
/// name, and what
/// it prints never reaches tokenctl's output (it may echo the secret in
/// any shape): when it fails, its output goes to a private file.
pub struct ExecSink {
    argv: Vec<String>,
    timeout: Duration,
    output_dir: PathBuf,
    /// The command's whole environment.
    env: Vec<(OsString, OsString)>,
}

impl ExecSink {
    /// Returns a sink running `argv`, after checking that the program
    /// exists; a failing run's output is kept in `output_dir` (mode 0600).
    pub fn new(
        argv: Vec<String>,
        timeout: Duration,
        output_dir: PathBuf,
        env: Vec<(OsString, OsString)>,
    ) -> Result<Self, SinkError> {
        check_program(&argv, &env, "secrets.exec")?;
        Ok(ExecSink {
            argv,
            timeout,
            output_dir,
            env,
        })
    }

    /// Keeps what a failed run printed in a private file and says where.
    fn keep_output(&self, output: &mut File, token: &NewToken<'_>) -> String {
        let mut bytes = Vec::new();
        if output.seek(io::SeekFrom::Start(0)).is_err()
            || output
                .take(KEPT_OUTPUT_MAX)
                .read_to_end(&mut bytes)
                .is_err()
        {
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
        let stderr = output.try_clone().map_err(|e| fail(e.to_string()))?;
        let (status, written) = run(
            &self.argv,
            &self.env,
            self.timeout,
            token.to_json_line(),
            output.try_clone().map_err(|e| fail(e.to_string()))?,
            stderr,
        )
        .map_err(fail)?;
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

/// Runs `argv` with exactly `env`, `input` on its stdin and its output to
/// `stdout` and `stderr`, for at most `timeout` (writing its stdin
/// included); kills it then. Returns its exit status (`None`: killed at the
/// timeout) and whether its stdin was written whole.
fn run(
    argv: &[String],
    env: &[(OsString, OsString)],
    timeout: Duration,
    input: Zeroizing<Vec<u8>>,
    stdout: File,
    stderr: File,
) -> Result<(Option<std::process::ExitStatus>, io::Result<()>), String> {
    // The stdin pipe is made here so that a copy of its read end stays
    // with tokenctl: once the program is gone, what is left in the pipe is
    // what it never read (a short record fits in the pipe whether or not
    // the program reads it).
    let (reader, mut writer) = io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let kept = reader
        .try_clone()
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::from(reader))
        .stdout(stdout)
        .stderr(stderr)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    // Writing happens on its own thread, inside the timeout: a program
    // that never reads its stdin must not hang tokenctl on a full pipe.
    // The write end closes when the thread ends, so the program sees the
    // end of its input.
    let writing = std::thread::spawn(move || writer.write_all(&input));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.to_string());
            }
        }
    };
    // Counted before the kept end closes; closing it ends a write still
    // blocked on a full pipe (with an error), so the thread returns.
    let left = unread_bytes(&kept);
    drop(kept);
    let written = writing
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("writer panicked")))
        .and_then(|()| match left {
            Some(left) if left > 0 => Err(io::Error::other(format!(
                "{left} byte(s) of it were never read"
            ))),
            _ => Ok(()),
        });
    Ok((status, written))
}

/// Returns how many bytes written to `pipe` have not been read from it.
#[cfg(unix)]
fn unread_bytes(pipe: &io::PipeReader) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut left: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // at a live c_int; the descriptor is the open pipe end `pipe` owns.
    let rc = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut left) };
    (rc == 0).then(|| usize::try_from(left).unwrap_or(0))
}

#[cfg(not(unix))]
fn unread_bytes(_pipe: &io::PipeReader) -> Option<usize> {
    None
}

/// Reads secrets back through the exec sink's `lookup` command. What the
/// command prints holds a token: it is parsed, never shown.
pub struct ExecLookup {
    argv: Vec<String>,
    timeout: Duration,
    env: Vec<(OsString, OsString)>,
}

/// What a `lookup` command prints: the token's JSON object, as the exec
/// sink handed it over.
#[derive(Deserialize)]
struct LookedUp {
    address: Option<String>,
    id: u64,
    #[serde(rename = "createdAt")]
    created_at: Option<serde_json::Number>,
    token: String,
}

impl ExecLookup {
    /// Returns a reader running `argv`, after checking that the program
    /// exists.
    pub fn new(
        argv: Vec<String>,
        timeout: Duration,
        env: Vec<(OsString, OsString)>,
    ) -> Result<Self, SinkError> {
        check_program(&argv, &env, "secrets.exec.lookup")?;
        Ok(ExecLookup { argv, timeout, env })
    }

    /// Asks the command for the token `id` of `address` (`None`: the
    /// newest it holds).
    fn ask(&self, address: &Address, id: Option<u64>) -> Result<Option<FoundSecret>, SinkError> {
        let fail = |detail: String| SinkError {
            sink: self.describe(),
            detail,
            hint: None,
        };
        let query = serde_json::json!({ "address": address.to_string(), "id": id }).to_string();
        let mut stdout = tempfile::tempfile().map_err(|e| fail(e.to_string()))?;
        // What it says on stderr may quote anything: it is dropped.
        let stderr = tempfile::tempfile().map_err(|e| fail(e.to_string()))?;
        let (status, written) = run(
            &self.argv,
            &self.env,
            self.timeout,
            Zeroizing::new(format!("{query}\n").into_bytes()),
            stdout.try_clone().map_err(|e| fail(e.to_string()))?,
            stderr,
        )
        .map_err(fail)?;
        match (status, written) {
            (None, _) => {
                return Err(fail(format!(
                    "no exit within {}; it was killed",
                    humantime::format_duration(self.timeout)
                )));
            }
            (Some(status), _) if status.code() == Some(1) => return Ok(None),
            (Some(status), _) if !status.success() => {
                return Err(fail(format!("it exited with {status}")));
            }
            (Some(_), Err(e)) => {
                return Err(fail(format!("it did not read its stdin ({e})")));
            }
            (Some(_), Ok(())) => {}
        }
        let mut bytes = Zeroizing::new(Vec::new());
        stdout
            .seek(io::SeekFrom::Start(0))
            .and_then(|_| {
                (&mut stdout)
                    .take(LOOKUP_OUTPUT_MAX + 1)
                    .read_to_end(&mut bytes)
            })
            .map_err(|e| fail(format!("its output could not be read: {e}")))?;
        if bytes.len() as u64 > LOOKUP_OUTPUT_MAX {
            return Err(fail(format!(
                "it printed more than {LOOKUP_OUTPUT_MAX} bytes; a token's JSON object is far smaller"
            )));
        }
        // Never quote the output, nor serde's message (it may quote it).
        let found: LookedUp = serde_json::from_slice(&bytes).map_err(|_| {
            fail("it exited 0 but did not print a token's JSON object (address, id, createdAt, token)".into())
        })?;
        let token = Secret::new(found.token);
        // The answer must say whose token it is: one without an address
        // could be anyone's.
        if found.address.as_deref() != Some(address.to_string().as_str())
            || id.is_some_and(|id| id != found.id)
        {
            return Err(fail(format!(
                "asked for {address}{}, it printed another token",
                id.map(|id| format!(" id {id}")).unwrap_or_default()
            )));
        }
        Ok(Some(FoundSecret {
            id: found.id,
            created_at: found
                .created_at
                .as_ref()
                .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f.floor() as i64))),
            token,
            place: format!("{} ({address} id {})", self.describe(), found.id),
        }))
    }
}

impl SecretLookup for ExecLookup {
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError> {
        Ok(self.ask(address, None)?.into_iter().collect())
    }

    fn lookup_id(
        &self,
        address: &Address,
        id: u64,
    ) -> Option<Result<Option<FoundSecret>, SinkError>> {
        Some(self.ask(address, Some(id)))
    }

    fn reads_by_id(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("exec lookup {}", self.argv.join(" "))
    }
}

/// Checks that the program of `argv` exists on the `PATH` of `env`.
fn check_program(
    argv: &[String],
    env: &[(OsString, OsString)],
    key: &str,
) -> Result<(), SinkError> {
    let program = argv.first().cloned().unwrap_or_default();
    let path = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.clone());
    if find_program(&program, path.as_deref()).is_none() {
        return Err(SinkError {
            sink: format!("exec {program}"),
            detail: format!("program `{program}` was not found, or may not be run"),
            hint: Some(format!(
                "check `{key}` in the manifest: the first item is the program, found on PATH or by path"
            )),
        });
    }
    Ok(())
}

fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    path.and_then(|paths| {
        std::env::split_paths(paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    })
}

/// Tells whether `path` is a file this process may run.
fn is_executable(path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}
