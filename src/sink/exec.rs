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
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use super::{ForApply, NewToken, SecretSink, SinkContext, SinkError, SinkKind, create_private_dir};
use crate::fsutil;

/// How long the command may take for one token.
const TIMEOUT: Duration = Duration::from_secs(60);

/// `secrets.exec`: the command, as a list of the program and its
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
}

impl SinkKind for ExecSpec {
    fn open(
        &self,
        ctx: &SinkContext<'_>,
        apply: &ForApply<'_>,
    ) -> Result<Box<dyn SecretSink>, SinkError> {
        let sink = ExecSink::new(
            self.argv.clone(),
            TIMEOUT,
            apply.rescue_dir.to_path_buf(),
            ctx.vars.for_child(&[]),
        )?;
        Ok(Box::new(sink))
    }
}

impl<'de> Deserialize<'de> for ExecSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ArgvVisitor;
        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = ExecSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command as a list of strings, e.g. [vault-put, --path, logzio]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExecSpec, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                if argv.first().is_none_or(|program| program.trim().is_empty()) {
                    return Err(de::Error::custom(
                        "secrets.exec needs at least the program to run, e.g. [vault-put, --path, logzio]",
                    ));
                }
                Ok(ExecSpec { argv })
            }
        }
        d.deserialize_seq(ArgvVisitor)
    }
}

impl JsonSchema for ExecSpec {
    fn schema_name() -> Cow<'static, str> {
        "ExecSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "items": { "type": "string" },
            "minItems": 1
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
/// age key, the database's password), and what
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
        let program = argv.first().cloned().unwrap_or_default();
        let path = env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map(|(_, value)| value.clone());
        if find_program(&program, path.as_deref()).is_none() {
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
            env,
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
        command
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
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

fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    path.and_then(|paths| {
        std::env::split_paths(paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}
