//! Command-line interface: argument parsing, the commands, and the one place
//! where errors become messages and exit codes.

mod apply;
mod state_cmds;

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::address::Address;
use crate::journal::{self, FoldSummary, JournalError};
use crate::lock::{self, Holder, LockError, LockGuard};
use crate::manifest::{Manifest, ManifestError};
use crate::plan::{self, Pattern, Plan, Targeting};
use crate::planfile::{PlanFile, PlanFileError};
use crate::render::{self, Style};
use crate::sink::SinkError;
use crate::state::{Origin, State, TokenRecord};
use crate::store::{FileStore, StateStore, StoreError};

/// Exit code: success, or no changes.
pub const EXIT_OK: i32 = 0;
/// Exit code: an error.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: `plan --detailed-exitcode` found tokens to create.
pub const EXIT_CHANGES: i32 = 2;
/// Exit code: `apply` finished, but some creates are in doubt.
pub const EXIT_IN_DOUBT: i32 = 3;
/// Exit code: interrupted by a signal, after recording what was done.
pub const EXIT_INTERRUPTED: i32 = 130;

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
    /// The state file.
    #[arg(long, global = true, default_value = "state/tokens.state.json")]
    state: PathBuf,
    /// When to colour output (NO_COLOR turns `auto` off).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// How long to wait for the state lock held by another command (e.g. 30s, 5m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
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
    /// Drop an orphaned token from the state after it was revoked in the UI.
    Forget {
        /// The token's address, <accountId>/<name>.
        address: Address,
    },
    /// Read the state.
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
    /// Read the owner-account API token from this file (else LOGZIO_API_TOKEN).
    #[arg(long, value_name = "PATH")]
    api_token_file: Option<PathBuf>,
    /// Send requests to this base URL instead of the manifest's region (also LOGZIO_API_URL).
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// Most creates in flight at once: the ceiling under which the number in
    /// flight adapts to what the API accepts (it grows while answers are
    /// clean and is cut on 429).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallelism: u16,
    /// How long one create may take before its outcome counts as in doubt.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
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
    /// manifest's `secrets.file`).
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
            backoff_ms: var("TOKENCTL_BACKOFF_MS").and_then(|v| v.parse().ok()),
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

/// The streams and environment a command runs with.
pub struct Io<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    pub terminal: Terminal,
    /// Reads one line of the user's answer to a prompt.
    pub read_line: &'a mut dyn FnMut() -> io::Result<String>,
}

/// A failure, as the user sees it: what went wrong, what to do, the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub code: i32,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: EXIT_ERROR,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

macro_rules! failure_from {
    ($($error:ty => |$e:ident| $hint:expr),* $(,)?) => {$(
        impl From<$error> for Failure {
            fn from($e: $error) -> Self {
                Failure {
                    hint: $hint,
                    message: $e.to_string(),
                    code: EXIT_ERROR,
                }
            }
        }
    )*};
}

failure_from! {
    ManifestError => |e| e.hint.clone(),
    StoreError => |e| e.hint(),
    SinkError => |e| e.hint.clone(),
    PlanFileError => |e| Some(e.hint().to_string()),
    JournalError => |e| e.hint(),
    LockError => |e| e.hint(),
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Self {
        Failure::new(format!("cannot write output: {err}"))
    }
}

/// The result of a command: an exit code or a failure.
type CommandResult = Result<i32, Failure>;

/// Runs tokenctl with `args` (the program name first) and returns the exit
/// code. Every message goes to the writers of `io`.
pub fn run(args: impl IntoIterator<Item = OsString>, env: &Env, io: &mut Io<'_>) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let text = if io.terminal.stdout && !env.no_color {
                err.render().ansi().to_string()
            } else {
                err.render().to_string()
            };
            if err.use_stderr() {
                let _ = write!(io.stderr, "{text}");
                // clap exits 2 on usage errors; 2 means "changes" here.
                return EXIT_ERROR;
            }
            let _ = write!(io.stdout, "{text}");
            return EXIT_OK;
        }
    };
    let style = Style {
        color: match cli.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => io.terminal.stdout && !env.no_color,
        },
    };
    let command_line = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut session = Session {
        cli: &cli,
        env,
        style,
        command_line,
        io,
    };
    match session.dispatch() {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(
                session.io.stderr,
                "{} {}",
                style.bad("error:"),
                failure.message
            );
            if let Some(hint) = &failure.hint {
                let _ = writeln!(session.io.stderr, "{} {hint}", style.warn("hint:"));
            }
            failure.code
        }
    }
}

struct Session<'a, 'io> {
    cli: &'a Cli,
    env: &'a Env,
    style: Style,
    command_line: String,
    io: &'a mut Io<'io>,
}

/// A manifest as read from disk, with its bytes for digests.
struct LoadedManifest {
    manifest: Manifest,
    bytes: Vec<u8>,
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
            Command::State(StateCommand::List { output }) => self.state_list(*output),
            Command::Schema => {
                writeln!(self.io.stdout, "{}", crate::schema::manifest_schema_text())?;
                Ok(EXIT_OK)
            }
            Command::State(StateCommand::Show { address }) => self.state_show(address),
        }
    }

    fn warn(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.style.warn("warning:"));
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.style.bold("note:"));
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

    fn store(&self) -> FileStore {
        FileStore::new(&self.cli.state)
    }

    /// Returns who this command is, for the lock file.
    fn holder(&self) -> Holder {
        Holder {
            user: self.env.user.clone().unwrap_or_else(|| "unknown".into()),
            host: self.env.host.clone().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            command: self.command_line.clone(),
            started: crate::apply::now(),
            ci_job_url: self.env.ci_job_url.clone(),
        }
    }

    /// Takes the state lock for a command that writes the state.
    fn lock(&mut self, store: &FileStore) -> Result<LockGuard, Failure> {
        Ok(lock::acquire(
            &store.lock_path(),
            &self.holder(),
            self.cli.lock_timeout,
        )?)
    }

    /// Loads the state for a command holding the lock, first recording in
    /// it any journal an interrupted apply left behind.
    fn load_state_locked(&mut self, store: &FileStore) -> Result<Option<State>, Failure> {
        let state = store.load()?;
        let Some((stored, summary)) = record_journal(store, state.as_ref())? else {
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
    fn load_state_for_reading(&mut self, store: &FileStore) -> Result<Option<State>, Failure> {
        if !store.journal_path().exists() {
            return Ok(store.load()?);
        }
        match lock::acquire(&store.lock_path(), &self.holder(), Duration::ZERO) {
            Ok(_guard) => self.load_state_locked(store),
            Err(LockError::Held { holder, .. }) => {
                let state = store.load()?;
                let path = store.journal_path();
                let records = journal::read(&path)?.unwrap_or_default();
                journal::check_lineage(&path, &records, state.as_ref())?;
                self.warn(&format!(
                    "an apply is running ({holder}); this plan includes what its journal has recorded so far"
                ));
                let base = state.unwrap_or_else(|| {
                    State::new(journal::lineage(&records).unwrap_or_default().into())
                });
                Ok(Some(journal::fold(base, &records).0))
            }
            Err(err) => Err(err.into()),
        }
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
        Ok(EXIT_OK)
    }

    fn plan(&mut self, args: &PlanArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store();
        let state = self.load_state_for_reading(&store)?;
        let targeting = self.targeting(&args.targeting);
        let plan = plan::plan(&loaded.manifest.tokens, state.as_ref()).restrict(&targeting);
        match args.output {
            PlanFormat::Text => render::plan_text(&plan, self.style, self.io.stdout)?,
            PlanFormat::Json => render::plan_json(&plan, args.budget.max_creates, self.io.stdout)?,
            PlanFormat::Markdown => render::plan_markdown(&plan, MARKDOWN_LIMIT, self.io.stdout)?,
        }
        if args.diff {
            if args.output == PlanFormat::Text {
                self.preview_diff(&store, state.as_ref(), &plan)?;
            } else {
                self.warn("--diff is shown with --output text only; the document stays parseable");
            }
        }
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
        check_budget(&plan, &args.budget)?;
        Ok(if args.detailed_exitcode && plan.has_changes() {
            EXIT_CHANGES
        } else {
            EXIT_OK
        })
    }

    /// Shows the state document as it would be after the plan, with ids
    /// that only the API can tell marked as such.
    fn preview_diff(
        &mut self,
        store: &FileStore,
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
    fn manifest_relative(&self, path: &Path) -> PathBuf {
        crate::fsutil::parent_dir(&self.cli.manifest).join(path)
    }
}

/// Records the journal beside the state in the state, in one atomic write,
/// then removes it. Returns the state as stored and what the journal held,
/// or `None` when there is no journal. Needs the lock.
fn record_journal(
    store: &FileStore,
    before: Option<&State>,
) -> Result<Option<(Option<State>, FoldSummary)>, Failure> {
    let path = store.journal_path();
    let keep_journal = |failure: Failure| {
        failure.hint(format!(
            "the journal {} was kept and still records every outcome; the next tokenctl command records it once the problem is fixed",
            path.display()
        ))
    };
    let Some(records) = journal::read(&path)? else {
        return Ok(None);
    };
    journal::check_lineage(&path, &records, before)?;
    let base = before
        .cloned()
        .unwrap_or_else(|| State::new(journal::lineage(&records).unwrap_or_default().to_string()));
    let (folded, summary) = journal::fold(base, &records);
    let stored = if before.is_none() && folded.tokens.is_empty() && folded.pending.is_empty() {
        None
    } else {
        Some(
            store
                .commit(before, folded)
                .map_err(|e| keep_journal(e.into()))?
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

fn check_budget(plan: &Plan, budget: &Budget) -> Result<(), Failure> {
    let creates = plan.summary().create;
    if creates > budget.max_creates {
        return Err(Failure::new(format!(
            "the plan creates {creates} tokens, more than the safety budget of {}; nothing was sent",
            budget.max_creates
        ))
        .hint(format!("if this many tokens are intended, pass --max-creates {creates}")));
    }
    Ok(())
}

/// Parses a duration such as `30s`, `5m`, `1h`, `250ms` or `10` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 30s, 5m or 1h"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
