//! Command-line interface: argument parsing, the commands, and the one place
//! where errors become messages and exit codes.

mod apply;
mod args;
mod lifecycle;
mod plan;
mod state_cmds;
mod ui;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::backend::file::FileBackend;
use crate::backend::file::lock::Holder;
use crate::backend::postgres::{self, PgBackend};
use crate::backend::{Backend, BackendError, LockGuard};
use crate::error::ExitStatus;
pub use crate::error::Failure;
pub use ui::{ClosedPipeOk, Env, Io, Terminal};

use crate::model::manifest::{BackendConfig, Manifest};
use crate::model::plan::Targeting;
use crate::model::state::State;
use crate::ops::Ui;
use crate::ops::recover::{self, ForReading};
use crate::ops::sinks::ConfiguredSink;
use crate::render::Style;
use crate::sink::{FileSpec, Secrets, SinkSpec};
use args::{
    ApplyArgs, Cli, ColorChoice, Command, ConnectArgs, Format, ImportArgs, PlanArgs, PlanFormat,
    ResolveArgs, RetireArgs, StateCommand, TargetArgs,
};

/// The state file when neither `--state` nor a backend says otherwise.
const DEFAULT_STATE: &str = "state/tokens.state.json";

/// The result of a command: an exit status or a failure.
type CommandResult = Result<ExitStatus, Failure>;

/// Runs tokenctl with `args` (the program name first) and returns the exit
/// code. Every message goes to the writers of `io`.
pub fn run(args: impl IntoIterator<Item = OsString>, env: &Env, io: &mut Io<'_>) -> ExitStatus {
    crate::failpoint::arm(&env.vars);
    // Both streams mask every credential tokenctl holds, whatever prints
    // it: a server's echo, a hint, a rendered plan.
    let mut stdout = crate::redact::Redacting::new(&mut *io.stdout);
    let mut stderr = crate::redact::Redacting::new(&mut *io.stderr);
    let mut io = Io {
        stdout: &mut stdout,
        stderr: &mut stderr,
        terminal: io.terminal,
        read_line: &mut *io.read_line,
    };
    let code = run_redacted(args, env, &mut io);
    let _ = io.stdout.flush();
    let _ = io.stderr.flush();
    code
}

fn run_redacted(
    args: impl IntoIterator<Item = OsString>,
    env: &Env,
    io: &mut Io<'_>,
) -> ExitStatus {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let terminal = match err.use_stderr() {
                true => io.terminal.stderr,
                false => io.terminal.stdout,
            };
            let text = if terminal && !env.no_color {
                err.render().ansi().to_string()
            } else {
                err.render().to_string()
            };
            if err.use_stderr() {
                let _ = write!(io.stderr, "{text}");
                // clap exits 2 on usage errors; 2 means "changes" here.
                return ExitStatus::Error;
            }
            let _ = write!(io.stdout, "{text}");
            return ExitStatus::Success;
        }
    };
    // Each stream is coloured when it is a terminal: `plan 2>log` keeps
    // colour on the screen and none in the log.
    let choose = |terminal: bool| Style {
        color: match cli.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !env.no_color,
        },
    };
    let style = choose(io.terminal.stdout);
    let err_style = choose(io.terminal.stderr);
    let command_line = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut session = Session {
        cli: &cli,
        env,
        style,
        err_style,
        command_line,
        io,
    };
    match session.dispatch() {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(
                session.io.stderr,
                "{} {}",
                err_style.bad("error:"),
                failure.message
            );
            if let Some(hint) = &failure.hint {
                let _ = writeln!(session.io.stderr, "{} {hint}", err_style.warn("hint:"));
            }
            failure.status
        }
    }
}

struct Session<'a, 'io> {
    cli: &'a Cli,
    env: &'a Env,
    /// The style of stdout.
    style: Style,
    /// The style of stderr.
    err_style: Style,
    command_line: String,
    io: &'a mut Io<'io>,
}

/// A manifest as read from disk: the model's part, the sinks' part, and
/// its bytes for digests.
struct LoadedManifest {
    manifest: Manifest,
    secrets: Secrets,
    bytes: Vec<u8>,
}

impl crate::ops::Ui for Session<'_, '_> {
    fn warn(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.err_style.warn("warning:"));
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.err_style.bold("note:"));
    }
}

impl Session<'_, '_> {
    fn dispatch(&mut self) -> CommandResult {
        match &self.cli.command {
            Command::Validate => self.validate(),
            Command::Plan(args) => self.plan(args),
            Command::Apply(args) => self.apply(args),
            Command::Resolve(args) => self.resolve(args),
            Command::Import(args) => self.import(args),
            Command::Forget { address } => self.forget(address),
            Command::Retire(args) => self.retire(args),
            Command::State(StateCommand::List { output }) => self.state_list(*output),
            Command::Schema => {
                writeln!(
                    self.io.stdout,
                    "{}",
                    crate::model::schema::manifest_schema_text::<Secrets>()
                )?;
                Ok(ExitStatus::Success)
            }
            Command::State(StateCommand::Show { address }) => self.state_show(address),
            Command::State(StateCommand::Fold) => self.state_fold(),
            Command::State(StateCommand::Pull) => self.state_pull(),
            Command::State(StateCommand::Push { file, force }) => self.state_push(file, *force),
        }
    }

    fn load_manifest(&mut self) -> Result<LoadedManifest, Failure> {
        let path = &self.cli.manifest;
        let bytes = fs::read(path).map_err(|err| {
            Failure::new(format!("cannot read manifest {}: {err}", path.display()))
                .hint("create it (see examples/tokens.yaml) or point to it with -f/--manifest")
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Failure::new(format!("manifest {} is not UTF-8 text", path.display())))?;
        let parsed = Manifest::parse::<Secrets>(text, &path.display().to_string())?;
        for warning in &parsed.warnings {
            self.warn(&format!("{}: {warning}", path.display()));
        }
        Ok(LoadedManifest {
            manifest: parsed.manifest,
            secrets: parsed.secrets,
            bytes,
        })
    }

    /// Returns where the state lives: the manifest's `backend`, else the
    /// file given by `--state`. Commands that have read the manifest pass
    /// it; the others read it here (no manifest: the state file).
    fn store_for(&self, manifest: Option<&Manifest>) -> Result<Box<dyn Backend>, Failure> {
        let config = match manifest {
            Some(manifest) => manifest.backend.clone(),
            None => self.backend_config()?,
        };
        match config {
            BackendConfig::File => Ok(Box::new(FileBackend::new(
                self.cli
                    .state
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            ))),
            BackendConfig::Postgres { schema, state } => {
                if let Some(path) = &self.cli.state {
                    return Err(Failure::new(format!(
                        "--state {} was given, but {} keeps the state in PostgreSQL (backend: postgres)",
                        path.display(),
                        self.cli.manifest.display()
                    ))
                    .hint("drop --state: with a backend the state, its journal and its lock live in the database; to move a state file there, use `tokenctl state push FILE`"));
                }
                let recovery = crate::sink::Rescue::default_dir(
                    self.env.xdg_state_home.as_deref(),
                    self.env.home.as_deref(),
                )
                .map(|rescue| crate::fsutil::parent_dir(&rescue).join("recovery"));
                self.refuse_local_state()?;
                let settings = postgres::PgSettings::from_vars(
                    self.env.pg_lease.as_deref(),
                    self.env.pg_lock_timeout.as_deref(),
                    self.env.pg_statement_timeout.as_deref(),
                    args::parse_duration,
                )
                .map_err(BackendError::from)?;
                // libpq's order: the string, PGPASSWORD, then the file.
                let passfile = self
                    .env
                    .pg_passfile
                    .as_ref()
                    .map(PathBuf::from)
                    .or_else(|| self.env.home().map(|home| home.join(".pgpass")));
                let backend = PgBackend::new(
                    self.env.pg_conn_str.as_deref(),
                    self.env.pg_password.as_deref(),
                    passfile.as_deref(),
                    &schema,
                    &state,
                    settings,
                    recovery,
                )
                .map_err(BackendError::from)?;
                Ok(Box::new(backend))
            }
        }
    }

    /// Refuses to use a shared backend while a state file or its journal
    /// sits at the file backend's path: the backend would plan from an
    /// empty state and create every token in the file again. `state push`
    /// is what moves such a file in, so it alone goes on.
    fn refuse_local_state(&self) -> Result<(), Failure> {
        if matches!(self.cli.command, Command::State(StateCommand::Push { .. })) {
            return Ok(());
        }
        let file = FileBackend::new(DEFAULT_STATE);
        let journal = file.store().journal_path();
        let (found, what) = if file.store().path().exists() {
            (file.store().path().to_path_buf(), "a state file")
        } else if journal.exists() {
            (journal, "the journal of an apply")
        } else {
            return Ok(());
        };
        Err(Failure::new(format!(
            "{} keeps the state in PostgreSQL (backend: postgres), but {what} is still at {}; using the database now would plan without the tokens it records",
            self.cli.manifest.display(),
            found.display()
        ))
        .hint(format!(
            "move it into the database first: `tokenctl state push {DEFAULT_STATE}` (it folds a journal beside it), then move {DEFAULT_STATE} and its .journal and .backup out of the way and check `tokenctl plan` (README: Moving state)"
        )))
    }

    /// Returns the state's backend for a command that does not otherwise
    /// read the manifest.
    fn store(&self) -> Result<Box<dyn Backend>, Failure> {
        self.store_for(None)
    }

    /// Reads only the `backend` of the manifest, if there is a manifest.
    fn backend_config(&self) -> Result<BackendConfig, Failure> {
        let path = &self.cli.manifest;
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(BackendConfig::File),
            Err(err) => {
                return Err(Failure::new(format!(
                    "cannot read manifest {} to learn where the state is: {err}",
                    path.display()
                )));
            }
        };
        Ok(
            Manifest::parse::<Secrets>(&text, &path.display().to_string())?
                .manifest
                .backend,
        )
    }

    /// Returns who this command is, for the lock.
    fn holder(&self) -> Holder {
        Holder {
            user: self.env.user.clone().unwrap_or_else(|| "unknown".into()),
            host: self.env.host.clone().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            command: self.command_line.clone(),
            started: self.env.clock.epoch_seconds(),
            ci_job_url: self.env.ci_job_url.clone(),
        }
    }

    /// Takes the state lock for a command that writes the state.
    fn lock(&mut self, store: &dyn Backend) -> Result<Box<dyn LockGuard>, Failure> {
        Ok(store.lock(&self.holder(), self.cli.lock_timeout)?)
    }

    /// Loads the state for a command holding the lock, first recording in
    /// it any journal an interrupted apply left behind.
    fn load_state_locked(&mut self, store: &dyn Backend) -> Result<Option<State>, Failure> {
        let env = self.env;
        recover::load_locked(store, env.host.as_deref(), self)
    }

    /// Loads the state for a reading command: a journal left by a crash is
    /// recorded first, one that a running apply is writing only overlaid.
    fn load_state_for_reading(&mut self, store: &dyn Backend) -> Result<ForReading, Failure> {
        let (holder, env) = (self.holder(), self.env);
        recover::load_for_reading(store, &holder, env.host.as_deref(), self)
    }

    /// Returns the targeting asked for, warning that it is not for routine use.
    fn targeting(&mut self, args: &TargetArgs) -> Targeting {
        let targeting = args.targeting();
        if targeting.is_active() {
            self.warn(
                "--target/--exclude plan only part of the manifest; use them for exceptional cases, not routinely",
            );
        }
        targeting
    }

    /// Resolves a path from the manifest, which is relative to its folder.
    fn manifest_dir(&self) -> PathBuf {
        crate::fsutil::parent_dir(&self.cli.manifest).to_path_buf()
    }

    /// Returns the sinks of this run: the manifest's, with `--secrets-out`
    /// in place of its `file`, in the order of `SinkSpec::KEYS` whatever
    /// the manifest's: the local file takes each secret first, before a
    /// command or a server that may take long.
    fn configured_sinks(
        &self,
        manifest: Option<&LoadedManifest>,
        secrets_out: Option<&Path>,
    ) -> Vec<ConfiguredSink> {
        let mut sinks = Vec::new();
        if let Some(path) = secrets_out {
            // A path given on the command line is relative to where
            // tokenctl runs, not to the manifest.
            sinks.push(ConfiguredSink {
                base_dir: PathBuf::new(),
                spec: SinkSpec::File(FileSpec {
                    path: path.to_path_buf(),
                }),
            });
        }
        let specs = manifest.map(|m| m.secrets.0.as_slice()).unwrap_or_default();
        for spec in specs {
            if secrets_out.is_some() && matches!(spec, SinkSpec::File(_)) {
                continue;
            }
            sinks.push(ConfiguredSink {
                base_dir: self.manifest_dir(),
                spec: spec.clone(),
            });
        }
        sinks.sort_by_key(|sink| {
            SinkSpec::KEYS
                .iter()
                .position(|key| *key == sink.spec.key())
        });
        sinks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use args::{parse_duration, parse_lock_timeout, parse_request_timeout};
    use std::time::Duration;

    /// Runs tokenctl in-process with the given terminals; returns the exit
    /// code, stdout and stderr.
    fn run_with_terminal(args: &[&str], terminal: Terminal) -> (ExitStatus, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut read_line = || Ok(String::new());
        let mut io = Io {
            stdout: &mut out,
            stderr: &mut err,
            terminal,
            read_line: &mut read_line,
        };
        let args = std::iter::once("tokenctl").chain(args.iter().copied());
        let code = run(args.map(OsString::from), &Env::default(), &mut io);
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        (code, text(out), text(err))
    }

    #[test]
    fn colour_is_decided_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let missing = missing.to_str().unwrap();
        let stderr_only = Terminal {
            stderr: true,
            ..Terminal::default()
        };
        let (code, _, err) = run_with_terminal(&["-f", missing, "validate"], stderr_only);
        assert_eq!(code, ExitStatus::Error);
        assert!(err.starts_with("\x1b["), "{err:?}");
        let stdout_only = Terminal {
            stdout: true,
            ..Terminal::default()
        };
        let (_, _, err) = run_with_terminal(&["-f", missing, "validate"], stdout_only);
        assert!(!err.contains('\x1b'), "{err:?}");
        let (code, _, err) = run_with_terminal(&["plan", "--no-such-flag"], stdout_only);
        assert_eq!(code, ExitStatus::Error);
        assert!(!err.contains('\x1b'), "{err:?}");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn huge_or_zero_durations_are_errors_not_panics() {
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
        assert!(parse_lock_timeout("99999999999999999999999h").is_err());
        assert!(parse_lock_timeout("25h").is_err());
        assert_eq!(parse_lock_timeout("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_request_timeout("0s").is_err());
        assert!(parse_request_timeout("2h").is_err());
    }
}
