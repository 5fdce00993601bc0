//! The command line: clap's description of the commands and their flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::address::Address;
use crate::model::plan::{Pattern, Targeting};

#[derive(Debug, Parser)]
#[command(
    name = "tokenctl",
    version,
    about = "Declarative management of Logz.io sub-account API tokens",
    after_help = "Exit codes: 0 success or no changes, 1 error, 2 plan --detailed-exitcode found changes, \
                  3 apply left creates in doubt, 130 interrupted."
)]
pub(super) struct Cli {
    /// The manifest of desired tokens.
    #[arg(short = 'f', long, global = true, default_value = "tokens.yaml")]
    pub(super) manifest: PathBuf,
    /// The state file [default: state/tokens.state.json]; not with a
    /// `backend:` in the manifest.
    #[arg(long, global = true, value_name = "PATH")]
    pub(super) state: Option<PathBuf>,
    /// When to colour output (NO_COLOR turns `auto` off).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub(super) color: ColorChoice,
    /// How long to wait for the state lock held by another command (e.g. 30s, 5m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "0s", value_parser = parse_lock_timeout)]
    pub(super) lock_timeout: Duration,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
pub(super) enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub(super) struct TargetArgs {
    /// Only plan/apply this address, or `<accountId>/*` (repeatable; not for routine use).
    #[arg(long = "target", value_name = "ADDRESS")]
    pub(super) targets: Vec<Pattern>,
    /// Leave this address, or `<accountId>/*`, out (repeatable; not for routine use).
    #[arg(long = "exclude", value_name = "ADDRESS")]
    pub(super) excludes: Vec<Pattern>,
}

impl TargetArgs {
    pub(super) fn targeting(&self) -> Targeting {
        Targeting {
            targets: self.targets.clone(),
            excludes: self.excludes.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct PlanArgs {
    /// Save the plan to this file, for `apply FILE`.
    #[arg(short = 'o', long = "out", value_name = "PLANFILE")]
    pub(super) out: Option<PathBuf>,
    /// Exit 2 when there are tokens to create, 0 when there are none.
    #[arg(long)]
    pub(super) detailed_exitcode: bool,
    /// Also show the diff of the state document before → after.
    #[arg(long)]
    pub(super) diff: bool,
    /// Output format: text, a versioned JSON document, or Markdown for a pull-request comment.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub(super) output: PlanFormat,
    #[command(flatten)]
    pub(super) budget: Budget,
    #[command(flatten)]
    pub(super) targeting: TargetArgs,
    #[command(flatten)]
    pub(super) refresh: RefreshArgs,
}

#[derive(Debug, Args)]
pub(super) struct RefreshArgs {
    /// Ask each token whose secret a sink holds whether it still works
    /// (GET /v2/whoami with the token itself).
    #[arg(long)]
    pub(super) refresh: bool,
    #[command(flatten)]
    pub(super) connect: ConnectArgs,
    /// The secrets file to read tokens from for --refresh (default: the
    /// manifest's `secrets.file`).
    #[arg(long, value_name = "PATH")]
    pub(super) secrets_out: Option<PathBuf>,
    /// With --refresh: how long the whole refresh may take; a token that
    /// has not answered by then is unknown.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_request_timeout)]
    pub(super) refresh_timeout: Duration,
}

/// Where the API is and who the owner is.
#[derive(Debug, Args)]
pub(super) struct ConnectArgs {
    /// Read the owner-account API token from this file (else LOGZIO_API_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub(super) api_token_file: Option<PathBuf>,
    /// Send requests to this base URL instead of the manifest's region (also LOGZIO_API_URL).
    #[arg(long, value_name = "URL")]
    pub(super) api_url: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct RetireArgs {
    /// The token's address, <accountId>/<name>.
    pub(super) address: Address,
    /// The superseded token's id.
    #[arg(long, value_name = "ID")]
    pub(super) id: u64,
    /// First check with the token itself that it answers 401 (revoked).
    #[arg(long)]
    pub(super) verify: bool,
    #[command(flatten)]
    pub(super) connect: ConnectArgs,
    /// The secrets file to read the token from for --verify (default: the
    /// manifest's `secrets.file`).
    #[arg(long, value_name = "PATH")]
    pub(super) secrets_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct Budget {
    /// Refuse a plan that creates more tokens than this.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub(super) max_creates: usize,
}

#[derive(Debug, Args)]
pub(super) struct ApplyArgs {
    /// A plan saved by `plan -o`; applied without a prompt if still current.
    pub(super) plan_file: Option<PathBuf>,
    /// Apply without asking for confirmation.
    #[arg(long)]
    pub(super) auto_approve: bool,
    /// Append new secrets to this JSON Lines file (mode 0600) instead of the
    /// manifest's `secrets.file`.
    #[arg(long, value_name = "PATH")]
    pub(super) secrets_out: Option<PathBuf>,
    #[command(flatten)]
    pub(super) connect: ConnectArgs,
    /// Refresh first: record what each token says of itself, retire
    /// superseded tokens that answer 401, and re-create revoked ones where
    /// the manifest says `on_revoked: recreate`.
    #[arg(long)]
    pub(super) refresh: bool,
    /// With --refresh: re-create revoked tokens even when an unusually large
    /// share of them came back revoked.
    #[arg(long, requires = "refresh")]
    pub(super) force: bool,
    /// With --refresh: how long the whole refresh may take; a token that
    /// has not answered by then is unknown.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_request_timeout)]
    pub(super) refresh_timeout: Duration,
    /// Most creates in flight at once: the ceiling under which the number in
    /// flight adapts to what the API accepts (it grows while answers are
    /// clean and is cut on 429).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(super) parallelism: u16,
    /// How long one create may take before its outcome counts as in doubt.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_request_timeout)]
    pub(super) request_timeout: Duration,
    /// Skip the checks of the owner token and sub-accounts before the first create.
    #[arg(long)]
    pub(super) skip_preflight: bool,
    /// Output format: text, or one JSON event per line.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(super) output: Format,
    #[command(flatten)]
    pub(super) budget: Budget,
    #[command(flatten)]
    pub(super) targeting: TargetArgs,
}

#[derive(Debug, Args)]
pub(super) struct ResolveArgs {
    /// The address in doubt, <accountId>/<name>.
    pub(super) address: Address,
    /// The token exists: record it with this id (find it in the Logz.io UI).
    #[arg(long, value_name = "ID", conflicts_with = "abandon")]
    pub(super) adopt: Option<u64>,
    /// No token exists (or it was revoked): forget the create, so the next
    /// apply makes it again.
    #[arg(long)]
    pub(super) abandon: bool,
    /// With --abandon: go ahead even though a sink that might hold the
    /// create's token could not be read (say, its key is lost for good).
    #[arg(long, requires = "abandon")]
    pub(super) force: bool,
    /// The secrets file to look in when neither flag is given (default: the
    /// manifest's `secrets.file`); the manifest's `sops` and `vault` sinks
    /// are searched too.
    #[arg(long, value_name = "PATH")]
    pub(super) secrets_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct ImportArgs {
    /// The token's address, <accountId>/<name>.
    pub(super) address: Address,
    /// The token's id, from the Logz.io UI.
    #[arg(long, value_name = "N")]
    pub(super) id: u64,
    /// When it was created: epoch seconds or an RFC 3339 UTC time.
    #[arg(long, value_name = "T", value_parser = crate::time::parse_time)]
    pub(super) created_at: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub(super) enum StateCommand {
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
pub(super) fn parse_lock_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(text, Duration::from_secs(24 * 3600), "24h")
}

/// Parses `--request-timeout`: more than zero and at most an hour.
pub(super) fn parse_request_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_bounded(text, Duration::from_secs(3600), "1h")?;
    if duration.is_zero() {
        return Err("a request timeout must be longer than 0".into());
    }
    Ok(duration)
}
