//! Command-line interface: argument parsing, the commands, and the one place
//! where errors become messages and exit codes.

mod apply;
mod lifecycle;
mod state_cmds;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::file::FileBackend;
use crate::backend::file::lock::Holder;
use crate::backend::postgres::{self, PgBackend};
use crate::backend::{Backend, BackendError, LockGuard};
use crate::error::ExitStatus;
pub use crate::error::Failure;
use crate::model::address::Address;
use crate::model::lifecycle::Refresh;
use crate::model::manifest::{BackendConfig, Manifest};
use crate::model::plan::{self, Pattern, Plan, Targeting};
use crate::model::planfile::PlanFile;
use crate::model::state::{Origin, State, TokenRecord};
use crate::ops::Ui;
use crate::ops::apply::{check_budget, check_refresh};
use crate::ops::sinks::ConfiguredSink;
use crate::render::{self, Style};
use crate::sink::{FileSpec, SinkSpec};

/// The state file when neither `--state` nor a backend says otherwise.
const DEFAULT_STATE: &str = "state/tokens.state.json";

/// Longest Markdown plan, to fit a pull-request comment (GitHub allows 65,536).
const MARKDOWN_LIMIT: usize = 60_000;

#[derive(Debug, Parser)]
#[command(
    name = "tokenctl",
    version,
    about = "Declarative management of Logz.io sub-account API tokens",
    after_help = "Exit codes: 0 success or no changes, 1 error, 2 plan --detailed-exitcode found changes, \
                  3 apply left creates in doubt, 130 interrupted."
)]
struct Cli {
    /// The manifest of desired tokens.
    #[arg(short = 'f', long, global = true, default_value = "tokens.yaml")]
    manifest: PathBuf,
    /// The state file [default: state/tokens.state.json]; not with a
    /// `backend:` in the manifest.
    #[arg(long, global = true, value_name = "PATH")]
    state: Option<PathBuf>,
    /// When to colour output (NO_COLOR turns `auto` off).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// How long to wait for the state lock held by another command (e.g. 30s, 5m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "0s", value_parser = parse_lock_timeout)]
    lock_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the manifest, offline.
    Validate,
    /// Show what apply would do; reads the state, sends nothing.
    Plan(PlanArgs),
    /// Create the missing tokens, deliver their secrets and record them.
    Apply(ApplyArgs),
    /// Settle a create that is in doubt.
    Resolve(ResolveArgs),
    /// Record a token created elsewhere (its secret stays unknown).
    Import(ImportArgs),
    /// Drop a superseded token from the state after a person revoked it.
    Retire(RetireArgs),
    /// Drop an orphaned token from the state after it was revoked in the UI.
    Forget {
        /// The token's address, <accountId>/<name>.
        address: Address,
    },
    /// Read the state, or fold a journal left by an interrupted apply into it.
    #[command(subcommand)]
    State(StateCommand),
    /// Print the JSON Schema of the manifest (for editors and yaml-language-server).
    Schema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// Only plan/apply this address, or `<accountId>/*` (repeatable; not for routine use).
    #[arg(long = "target", value_name = "ADDRESS")]
    targets: Vec<Pattern>,
    /// Leave this address, or `<accountId>/*`, out (repeatable; not for routine use).
    #[arg(long = "exclude", value_name = "ADDRESS")]
    excludes: Vec<Pattern>,
}

impl TargetArgs {
    fn targeting(&self) -> Targeting {
        Targeting {
            targets: self.targets.clone(),
            excludes: self.excludes.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Save the plan to this file, for `apply FILE`.
    #[arg(short = 'o', long = "out", value_name = "PLANFILE")]
    out: Option<PathBuf>,
    /// Exit 2 when there are tokens to create, 0 when there are none.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Also show the diff of the state document before → after.
    #[arg(long)]
    diff: bool,
    /// Output format: text, a versioned JSON document, or Markdown for a pull-request comment.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    output: PlanFormat,
    #[command(flatten)]
    budget: Budget,
    #[command(flatten)]
    targeting: TargetArgs,
    #[command(flatten)]
    refresh: RefreshArgs,
}

#[derive(Debug, Args)]
struct RefreshArgs {
    /// Ask each token whose secret a sink holds whether it still works
    /// (GET /v2/whoami with the token itself).
    #[arg(long)]
    refresh: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    /// The secrets file to read tokens from for --refresh (default: the
    /// manifest's `secrets.file`).
    #[arg(long, value_name = "PATH")]
    secrets_out: Option<PathBuf>,
}

/// Where the API is and who the owner is.
#[derive(Debug, Args)]
struct ConnectArgs {
    /// Read the owner-account API token from this file (else LOGZIO_API_TOKEN).
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// Send requests to this base URL instead of the manifest's region (also LOGZIO_API_URL).
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
}

#[derive(Debug, Args)]
struct RetireArgs {
    /// The token's address, <accountId>/<name>.
    address: Address,
    /// The superseded token's id.
    #[arg(long, value_name = "ID")]
    id: u64,
    /// First check with the token itself that it answers 401 (revoked).
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    /// The secrets file to read the token from for --verify (default: the
    /// manifest's `secrets.file`).
    #[arg(long, value_name = "PATH")]
    secrets_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct Budget {
    /// Refuse a plan that creates more tokens than this.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_creates: usize,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// A plan saved by `plan -o`; applied without a prompt if still current.
    plan_file: Option<PathBuf>,
    /// Apply without asking for confirmation.
    #[arg(long)]
    auto_approve: bool,
    /// Append new secrets to this JSON Lines file (mode 0600) instead of the
    /// manifest's `secrets.file`.
    #[arg(long, value_name = "PATH")]
    secrets_out: Option<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Refresh first: record what each token says of itself, retire
    /// superseded tokens that answer 401, and re-create revoked ones where
    /// the manifest says `on_revoked: recreate`.
    #[arg(long)]
    refresh: bool,
    /// With --refresh: re-create revoked tokens even when an unusually large
    /// share of them came back revoked.
    #[arg(long, requires = "refresh")]
    force: bool,
    /// Most creates in flight at once: the ceiling under which the number in
    /// flight adapts to what the API accepts (it grows while answers are
    /// clean and is cut on 429).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallelism: u16,
    /// How long one create may take before its outcome counts as in doubt.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_request_timeout)]
    request_timeout: Duration,
    /// Skip the checks of the owner token and sub-accounts before the first create.
    #[arg(long)]
    skip_preflight: bool,
    /// Output format: text, or one JSON event per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(flatten)]
    budget: Budget,
    #[command(flatten)]
    targeting: TargetArgs,
}

#[derive(Debug, Args)]
struct ResolveArgs {
    /// The address in doubt, <accountId>/<name>.
    address: Address,
    /// The token exists: record it with this id (find it in the Logz.io UI).
    #[arg(long, value_name = "ID", conflicts_with = "abandon")]
    adopt: Option<u64>,
    /// No token exists (or it was revoked): forget the create, so the next
    /// apply makes it again.
    #[arg(long)]
    abandon: bool,
    /// The secrets file to look in when neither flag is given (default: the
    /// manifest's `secrets.file`); the manifest's `sops` and `vault` sinks
    /// are searched too.
    #[arg(long, value_name = "PATH")]
    secrets_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The token's address, <accountId>/<name>.
    address: Address,
    /// The token's id, from the Logz.io UI.
    #[arg(long, value_name = "N")]
    id: u64,
    /// When it was created: epoch seconds or an RFC 3339 UTC time.
    #[arg(long, value_name = "T", value_parser = render::parse_time)]
    created_at: Option<i64>,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// List the tokens in the state.
    List {
        /// Output format: text, or the state as a versioned JSON document.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show one token of the state.
    Show {
        /// The token's address, <accountId>/<name>.
        address: Address,
    },
    /// Record a journal left by an interrupted apply in the state, and
    /// remove it (for a pipeline to commit before its runner is gone).
    Fold,
    /// Print the stored state document (the state file's format).
    Pull,
    /// Store a state file in the backend (e.g. to move to PostgreSQL).
    Push {
        /// The state file to store.
        file: PathBuf,
        /// Store it even when its lineage differs or its serial is older.
        #[arg(long)]
        force: bool,
    },
}

/// The process environment the commands read, gathered in one place so that
/// tests can run commands with a controlled one.
// No Debug: it holds the owner token.
#[derive(Clone, Default)]
pub struct Env {
    pub api_token: Option<String>,
    pub api_url: Option<String>,
    pub no_color: bool,
    pub xdg_state_home: Option<String>,
    pub home: Option<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    /// The CI job running this command, from common CI variables.
    pub ci_job_url: Option<String>,
    /// Base delay of 429 backoff in milliseconds (`TOKENCTL_BACKOFF_MS`).
    pub backoff_ms: Option<u64>,
    /// The PostgreSQL connection string (`TOKENCTL_PG_CONN_STR`).
    pub pg_conn_str: Option<String>,
    /// The PostgreSQL password when the connection string has none
    /// (`PGPASSWORD`).
    pub pg_password: Option<String>,
    /// How long a silent lock holder keeps a PostgreSQL lock
    /// (`TOKENCTL_PG_LEASE`, a duration).
    pub pg_lease: Option<Duration>,
}

impl Env {
    /// Reads the environment of this process.
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let github = match (
            var("GITHUB_SERVER_URL"),
            var("GITHUB_REPOSITORY"),
            var("GITHUB_RUN_ID"),
        ) {
            (Some(server), Some(repo), Some(run)) => {
                Some(format!("{server}/{repo}/actions/runs/{run}"))
            }
            _ => None,
        };
        let ci_job_url = github
            .or_else(|| var("CI_JOB_URL"))
            .or_else(|| var("BUILD_URL"))
            .or_else(|| var("CIRCLE_BUILD_URL"))
            .or_else(|| var("BUILDKITE_BUILD_URL"));
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| var("HOSTNAME"));
        Env {
            api_token: var("LOGZIO_API_TOKEN"),
            api_url: var("LOGZIO_API_URL"),
            no_color: var("NO_COLOR").is_some(),
            xdg_state_home: var("XDG_STATE_HOME"),
            home: var("HOME"),
            user: var("USER").or_else(|| var("LOGNAME")),
            host,
            ci_job_url,
            // A test knob, read only by the test suite's builds.
            backoff_ms: if cfg!(feature = "failpoints") {
                var("TOKENCTL_BACKOFF_MS").and_then(|v| v.parse().ok())
            } else {
                None
            },
            pg_conn_str: var(postgres::CONN_STR_VAR),
            pg_password: var("PGPASSWORD"),
            pg_lease: var("TOKENCTL_PG_LEASE").and_then(|v| parse_duration(&v).ok()),
        }
    }
}

/// Which standard streams are terminals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terminal {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Writes to a stream that may be a pipe whose reader went away
/// (`tokenctl plan | head -1`): from then on, output is dropped instead of
/// failing the command, so it finishes and exits with its own code, as
/// ripgrep and cargo do.
pub struct ClosedPipeOk<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> ClosedPipeOk<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        ClosedPipeOk {
            inner,
            closed: false,
        }
    }
}

impl<W: Write> Write for ClosedPipeOk<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// The streams and environment a command runs with.
pub struct Io<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    pub terminal: Terminal,
    /// Reads one line of the user's answer to a prompt.
    pub read_line: &'a mut dyn FnMut() -> io::Result<String>,
}

/// The result of a command: an exit status or a failure.
type CommandResult = Result<ExitStatus, Failure>;

/// Runs tokenctl with `args` (the program name first) and returns the exit
/// code. Every message goes to the writers of `io`.
pub fn run(args: impl IntoIterator<Item = OsString>, env: &Env, io: &mut Io<'_>) -> ExitStatus {
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

/// A manifest as read from disk, with its bytes for digests.
struct LoadedManifest {
    manifest: Manifest,
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
                    crate::model::schema::manifest_schema_text()
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
        let parsed = Manifest::parse(text, &path.display().to_string())?;
        for warning in &parsed.warnings {
            self.warn(&format!("{}: {warning}", path.display()));
        }
        Ok(LoadedManifest {
            manifest: parsed.manifest,
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
                let backend = PgBackend::new(
                    self.env.pg_conn_str.as_deref(),
                    self.env.pg_password.as_deref(),
                    &schema,
                    &state,
                    self.env.pg_lease.unwrap_or(postgres::DEFAULT_LEASE),
                    recovery,
                )
                .map_err(BackendError::from)?;
                Ok(Box::new(backend))
            }
        }
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
        Ok(Manifest::parse(&text, &path.display().to_string())?
            .manifest
            .backend)
    }

    /// Returns who this command is, for the lock.
    fn holder(&self) -> Holder {
        Holder {
            user: self.env.user.clone().unwrap_or_else(|| "unknown".into()),
            host: self.env.host.clone().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            command: self.command_line.clone(),
            started: crate::ops::create::now(),
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
        let state = store.load()?;
        let host = self.env.host.as_deref();
        let Some((stored, summary)) = store.recover(state.as_ref(), host)? else {
            return Ok(state);
        };
        self.note(&format!(
            "recorded the journal of an interrupted apply in the state: {} created, {} failed, {} in doubt",
            summary.created, summary.failed, summary.in_doubt
        ));
        Ok(stored)
    }

    /// Loads the state for reading. A journal left by a crash is recorded
    /// first; one that a running apply is writing is only overlaid.
    /// Returns the state for reading, and the creates that an apply running
    /// right now has under way.
    fn load_state_for_reading(
        &mut self,
        store: &dyn Backend,
    ) -> Result<(Option<State>, Vec<Address>), Failure> {
        let reading = store.read(&self.holder(), self.env.host.as_deref())?;
        if let Some(summary) = &reading.recovered {
            self.note(&format!(
                "recorded the journal of an interrupted apply in the state: {} created, {} failed, {} in doubt",
                summary.created, summary.failed, summary.in_doubt
            ));
        }
        if let Some(holder) = &reading.running {
            self.warn(&format!(
                "an apply is running ({holder}); this plan includes what its journal has recorded so far, and its creates under way show as in progress"
            ));
        }
        Ok((reading.state, reading.in_progress))
    }

    fn validate(&mut self) -> CommandResult {
        let loaded = self.load_manifest()?;
        let tokens = &loaded.manifest.tokens;
        let mut accounts: Vec<u64> = tokens.iter().map(|a| a.account_id).collect();
        accounts.sort_unstable();
        accounts.dedup();
        writeln!(
            self.io.stdout,
            "{} {}: {} tokens in {} sub-accounts.",
            self.style.good("The manifest is valid."),
            self.cli.manifest.display(),
            tokens.len(),
            accounts.len()
        )?;
        Ok(ExitStatus::Success)
    }

    fn plan(&mut self, args: &PlanArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store_for(Some(&loaded.manifest))?;
        let (state, under_way) = self.load_state_for_reading(&*store)?;
        let targeting = self.targeting(&args.targeting);
        let refresh = match args.refresh.refresh {
            true => Some(self.refresh_tokens(
                &args.refresh.connect,
                args.refresh.secrets_out.as_deref(),
                &loaded.manifest,
                state.as_ref(),
            )?),
            false => None,
        };
        let stampede = refresh.as_ref().and_then(Refresh::stampede);
        let plan = crate::model::lifecycle::plan_successors(
            plan::plan(&loaded.manifest.tokens, state.as_ref()).restrict(&targeting),
            state.as_ref(),
            &loaded.manifest.lifecycle,
            crate::ops::create::now(),
            refresh.as_ref(),
            stampede.is_some(),
        )
        .mark_in_progress(&under_way);
        self.warn_if_all_orphaned(&plan);
        let extras = render::Extras {
            refresh: refresh.as_ref(),
            state: state.as_ref(),
        };
        match args.output {
            PlanFormat::Text => {
                render::plan_text(&plan, self.style, self.io.stdout)?;
                render::lifecycle_text(&extras, self.style, self.io.stdout)?;
            }
            PlanFormat::Json => {
                render::plan_json(&plan, args.budget.max_creates, &extras, self.io.stdout)?
            }
            PlanFormat::Markdown => {
                render::plan_markdown(&plan, &extras, MARKDOWN_LIMIT, self.io.stdout)?
            }
        }
        if args.diff {
            if args.output == PlanFormat::Text {
                self.preview_diff(&*store, state.as_ref(), &plan)?;
            } else {
                self.warn("--diff is shown with --output text only; the document stays parseable");
            }
        }
        check_budget(&plan, args.budget.max_creates)?;
        if let Some(refresh) = &refresh {
            check_refresh(refresh, &loaded.manifest, false)?;
        }
        // Only a plan that passed its checks is saved to be applied.
        if let Some(out) = &args.out {
            let file = PlanFile::new(&plan, &loaded.bytes, state.as_ref());
            crate::fsutil::write_atomic(out, file.to_json().as_bytes(), 0o644).map_err(|err| {
                Failure::new(format!("cannot write plan file {}: {err}", out.display()))
            })?;
            let saved = format!(
                "Saved the plan to {0}. To apply exactly this plan: tokenctl apply {0}",
                out.display()
            );
            if args.output == PlanFormat::Text {
                writeln!(self.io.stdout, "\n{saved}")?;
            } else {
                writeln!(self.io.stderr, "{saved}")?;
            }
        }
        let revoked = refresh.as_ref().is_some_and(|r| r.counts().revoked > 0);
        Ok(
            if args.detailed_exitcode && (plan.has_changes() || revoked) {
                ExitStatus::Changes
            } else {
                ExitStatus::Success
            },
        )
    }

    /// Shows the state document as it would be after the plan, with ids
    /// that only the API can tell marked as such.
    fn preview_diff(
        &mut self,
        store: &dyn Backend,
        state: Option<&State>,
        plan: &Plan,
    ) -> io::Result<()> {
        const UNKNOWN_ID: u64 = u64::MAX;
        let before = state.map(State::to_json).unwrap_or_default();
        let mut after = state.cloned().unwrap_or_else(|| State::new("(new)".into()));
        if plan.has_changes() {
            after.serial += 1;
        }
        for address in plan.creates() {
            after.record_created(TokenRecord::new(
                address,
                UNKNOWN_ID,
                None,
                Origin::Created,
                None,
            ));
        }
        let after = after.to_json().replace(
            &format!("\"id\": {UNKNOWN_ID}"),
            "\"id\": (known after apply)",
        );
        writeln!(self.io.stdout)?;
        render::state_diff(
            &store.location(),
            &before,
            &after,
            self.style,
            self.io.stdout,
        )
    }

    /// Warns loudly when the manifest would orphan every token in the
    /// state: most often a manifest emptied by mistake, not an intent.
    fn warn_if_all_orphaned(&mut self, plan: &Plan) {
        let summary = plan.summary();
        if summary.orphaned > 0 && summary.unchanged == 0 && summary.in_doubt == 0 {
            self.warn(&format!(
                "the manifest keeps none of the {} token(s) in the state: every one is orphaned. \
                 Tokens cannot be deleted through the API, so nothing is revoked, but check that \
                 `tokens` in {} is the list you meant",
                summary.orphaned,
                self.cli.manifest.display()
            ));
        }
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
    /// in place of its `file`.
    fn configured_sinks(
        &self,
        manifest: Option<&Manifest>,
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
        sinks
    }
}

/// Parses a duration such as `30s`, `5m`, `1h 30m`, `250ms` or `10` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{text}` seconds is too long a duration"));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("`{text}` is not a duration ({err}); write e.g. 30s, 5m or 1h"))
}

/// Parses a duration of at most `max`, which a flag documents.
fn parse_bounded(text: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration > max {
        return Err(format!(
            "`{}` is longer than the longest accepted, {max_text}",
            text.trim()
        ));
    }
    Ok(duration)
}

/// Parses `--lock-timeout`: at most a day, which no apply needs to wait.
fn parse_lock_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(text, Duration::from_secs(24 * 3600), "24h")
}

/// Parses `--request-timeout`: more than zero and at most an hour.
fn parse_request_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_bounded(text, Duration::from_secs(3600), "1h")?;
    if duration.is_zero() {
        return Err("a request timeout must be longer than 0".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

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
