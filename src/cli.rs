//! Command-line interface: argument parsing, the commands, and the one place
//! where errors become messages and exit codes.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::address::Address;
use crate::api::{HttpApi, Timeouts};
use crate::apply::{Apply, Event, Outcome, Report, RetryPolicy};
use crate::manifest::{self, Manifest, ManifestError};
use crate::plan::{self, Plan};
use crate::planfile::{PlanFile, PlanFileError};
use crate::render::{self, Style};
use crate::secret::Secret;
use crate::sink::{FileSink, Rescue, SecretSink, SinkError};
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

#[derive(Debug, Parser)]
#[command(
    name = "tokenctl",
    version,
    about = "Declarative management of Logz.io sub-account API tokens",
    after_help = "Exit codes: 0 success or no changes, 1 error, 2 plan --detailed-exitcode found changes, 3 apply left creates in doubt."
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
    /// Drop an orphaned token from the state after it was revoked in the UI.
    Forget {
        /// The token's address, <accountId>/<name>.
        address: Address,
    },
    /// Read the state.
    #[command(subcommand)]
    State(StateCommand),
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
    #[command(flatten)]
    budget: Budget,
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
    #[command(flatten)]
    budget: Budget,
}

#[derive(Debug, Args)]
#[group(id = "settle", required = true, multiple = false, args = ["adopt", "abandon"])]
struct ResolveArgs {
    /// The address in doubt, <accountId>/<name>.
    address: Address,
    /// The token exists: record it with this id (find it in the Logz.io UI).
    #[arg(long, value_name = "ID")]
    adopt: Option<u64>,
    /// No token exists (or it was revoked): forget the create, so the next
    /// apply makes it again.
    #[arg(long)]
    abandon: bool,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// List the tokens in the state.
    List,
    /// Show one token of the state.
    Show {
        /// The token's address, <accountId>/<name>.
        address: Address,
    },
}

/// The process environment the commands read, gathered in one place so that
/// tests can run commands with a controlled one.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub api_token: Option<String>,
    pub api_url: Option<String>,
    pub no_color: bool,
    pub xdg_state_home: Option<String>,
    pub home: Option<String>,
    /// Base delay of 429 backoff in milliseconds (`TOKENCTL_BACKOFF_MS`).
    pub backoff_ms: Option<u64>,
}

impl Env {
    /// Reads the environment of this process.
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Env {
            api_token: var("LOGZIO_API_TOKEN"),
            api_url: var("LOGZIO_API_URL"),
            no_color: var("NO_COLOR").is_some(),
            xdg_state_home: var("XDG_STATE_HOME"),
            home: var("HOME"),
            backoff_ms: var("TOKENCTL_BACKOFF_MS").and_then(|v| v.parse().ok()),
        }
    }
}

/// Which standard streams are terminals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terminal {
    pub stdin: bool,
    pub stdout: bool,
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

impl From<ManifestError> for Failure {
    fn from(err: ManifestError) -> Self {
        Failure {
            message: err.to_string(),
            hint: err.hint,
            code: EXIT_ERROR,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure {
            hint: err.hint(),
            message: err.to_string(),
            code: EXIT_ERROR,
        }
    }
}

impl From<SinkError> for Failure {
    fn from(err: SinkError) -> Self {
        Failure {
            hint: err.hint.clone(),
            message: err.to_string(),
            code: EXIT_ERROR,
        }
    }
}

impl From<PlanFileError> for Failure {
    fn from(err: PlanFileError) -> Self {
        Failure::new(err.to_string()).hint(err.hint())
    }
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
    let cli = match Cli::try_parse_from(args) {
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
    let mut session = Session {
        cli: &cli,
        env,
        style,
        io,
    };
    match session.dispatch() {
        Ok(code) => code,
        Err(failure) => {
            let _ = writeln!(session.io.stderr, "{} {}", style.bad("error:"), failure.message);
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
            Command::Forget { address } => self.forget(address),
            Command::State(StateCommand::List) => self.state_list(),
            Command::State(StateCommand::Show { address }) => self.state_show(address),
        }
    }

    fn warn(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.style.warn("warning:"));
    }

    fn load_manifest(&mut self) -> Result<LoadedManifest, Failure> {
        let path = &self.cli.manifest;
        let bytes = fs::read(path).map_err(|err| {
            Failure::new(format!("cannot read manifest {}: {err}", path.display())).hint(
                "create it (see examples/tokens.yaml) or point to it with -f/--manifest",
            )
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Failure::new(format!("manifest {} is not UTF-8 text", path.display()))
        })?;
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
        let state = store.load()?;
        let plan = plan::plan(&loaded.manifest.tokens, state.as_ref());
        render::plan_text(&plan, self.style, self.io.stdout)?;
        if args.diff {
            self.preview_diff(&store, state.as_ref(), &plan)?;
        }
        if let Some(out) = &args.out {
            let file = PlanFile::new(&plan, &loaded.bytes, state.as_ref());
            crate::fsutil::write_atomic(out, file.to_json().as_bytes(), 0o644).map_err(|err| {
                Failure::new(format!("cannot write plan file {}: {err}", out.display()))
            })?;
            writeln!(
                self.io.stdout,
                "\nSaved the plan to {0}. To apply exactly this plan: tokenctl apply {0}",
                out.display()
            )?;
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
    fn preview_diff(&mut self, store: &FileStore, state: Option<&State>, plan: &Plan) -> io::Result<()> {
        const UNKNOWN_ID: u64 = u64::MAX;
        let before = state.map(State::to_json).unwrap_or_default();
        let mut after = state.cloned().unwrap_or_else(|| State::new("(new)".into()));
        if plan.has_changes() {
            after.serial += 1;
        }
        for address in plan.creates() {
            after.record_created(TokenRecord {
                account_id: address.account_id,
                name: address.name.clone(),
                address,
                id: UNKNOWN_ID,
                created_at: None,
                origin: Origin::Created,
                fingerprint: None,
            });
        }
        let after = after.to_json().replace(
            &format!("\"id\": {UNKNOWN_ID}"),
            "\"id\": (known after apply)",
        );
        writeln!(self.io.stdout)?;
        render::state_diff(&store.location(), &before, &after, self.style, self.io.stdout)
    }

    fn apply(&mut self, args: &ApplyArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store();
        let state = store.load()?;
        if let Some(path) = &args.plan_file {
            let text = fs::read_to_string(path).map_err(|err| {
                Failure::new(format!("cannot read plan file {}: {err}", path.display()))
            })?;
            let saved = PlanFile::from_json(&text)?;
            saved.check(&loaded.bytes, state.as_ref())?;
        }
        let plan = plan::plan(&loaded.manifest.tokens, state.as_ref());
        render::plan_text(&plan, self.style, self.io.stdout)?;
        let in_doubt_before = plan.summary().in_doubt;
        let creates = plan.creates();
        if creates.is_empty() {
            writeln!(self.io.stdout, "\nNothing to create.")?;
            return Ok(if in_doubt_before > 0 { EXIT_IN_DOUBT } else { EXIT_OK });
        }
        check_budget(&plan, &args.budget)?;
        let mut sinks = self.open_sinks(args, &loaded.manifest)?;
        let owner_token = self.owner_token(args)?;
        let base_url = self.base_url(args, &loaded.manifest)?;
        if args.plan_file.is_none() && !args.auto_approve {
            self.confirm(creates.len())?;
        }
        let api = HttpApi::new(&base_url, owner_token, Timeouts::default())
            .map_err(|err| Failure::new(err.to_string()))?;
        let rescue = Rescue::new(Rescue::default_dir(
            self.env.xdg_state_home.as_deref(),
            self.env.home.as_deref(),
        ));
        let mut retry = RetryPolicy::default();
        if let Some(ms) = self.env.backoff_ms {
            retry.base_delay = Duration::from_millis(ms);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))?;
        writeln!(self.io.stdout)?;
        let before_text = state.as_ref().map(State::to_json).unwrap_or_default();
        let style = self.style;
        let (stdout, stderr) = (&mut *self.io.stdout, &mut *self.io.stderr);
        let mut events = |event: Event<'_>| print_event(event, style, stdout, stderr);
        let mut apply = Apply {
            api: &api,
            store: &store,
            sinks: &mut sinks,
            rescue: &rescue,
            retry: &retry,
        };
        let result = runtime.block_on(apply.run(state, &creates, &mut events));
        let report = result.map_err(|err| {
            let mut failure = Failure::from(err.source);
            failure.hint = err.unrecorded;
            failure
        })?;
        self.finish_apply(&store, &before_text, &report, &sinks)
    }

    fn finish_apply(
        &mut self,
        store: &FileStore,
        before_text: &str,
        report: &Report,
        sinks: &[Box<dyn SecretSink>],
    ) -> CommandResult {
        let (created, failed, in_doubt, skipped) = report.counts();
        let out = &mut *self.io.stdout;
        writeln!(out)?;
        render::state_diff(&store.location(), before_text, &report.state.to_json(), self.style, out)?;
        writeln!(out)?;
        let headline = format!(
            "Apply finished: {created} created, {failed} failed, {in_doubt} in doubt, {skipped} not attempted."
        );
        let healthy = failed + in_doubt + skipped == 0 && report.rescued.is_empty();
        writeln!(
            out,
            "{}",
            if healthy { self.style.good(&headline) } else { self.style.warn(&headline) }
        )?;
        if created > 0 {
            let names: Vec<String> = sinks.iter().map(|s| s.describe()).collect();
            writeln!(out, "New secrets were written to: {}", names.join(", "))?;
        }
        let pending_total = report.state.pending.len();
        if pending_total > 0 {
            writeln!(
                out,
                "{pending_total} create(s) in doubt: nothing more is created for them until `tokenctl resolve` settles each (see `tokenctl plan`)."
            )?;
        }
        if let Some(reason) = &report.stopped {
            return Err(Failure::new(format!("the apply stopped early: {reason}")).hint(
                "check the owner-account token (LOGZIO_API_TOKEN or --api-token-file) and that the region or API URL matches its account",
            ));
        }
        if !report.rescued.is_empty() {
            let lost = report.rescued.iter().filter(|(_, path)| path.is_none()).count();
            let mut failure = Failure::new(format!(
                "{} secret(s) could not be delivered to a sink{}",
                report.rescued.len(),
                if lost > 0 { format!("; {lost} could not be saved at all") } else { String::new() }
            ));
            failure.hint = Some(
                "the tokens are recorded in the state; move each rescue file's secret to where it belongs, then delete the file".into(),
            );
            return Err(failure);
        }
        if failed > 0 {
            return Err(Failure::new(format!("{failed} create(s) failed; see above"))
                .hint("fix the cause and run apply again: failed creates made no token and are planned again"));
        }
        Ok(if pending_total > 0 { EXIT_IN_DOUBT } else { EXIT_OK })
    }

    fn open_sinks(&mut self, args: &ApplyArgs, manifest: &Manifest) -> Result<Vec<Box<dyn SecretSink>>, Failure> {
        let path = match (&args.secrets_out, &manifest.secrets.file) {
            (Some(path), _) => path.clone(),
            (None, Some(relative)) => crate::fsutil::parent_dir(&self.cli.manifest).join(relative),
            (None, None) => {
                return Err(Failure::new(
                    "no secret sink is configured, so new secrets would have nowhere to go; nothing was created",
                )
                .hint("add `secrets: {file: secrets/logzio-tokens.jsonl}` to the manifest (and git-ignore it), or pass --secrets-out PATH"));
            }
        };
        let sink = FileSink::open(&path)?;
        Ok(vec![Box::new(sink)])
    }

    fn owner_token(&mut self, args: &ApplyArgs) -> Result<Secret, Failure> {
        let token = match (&args.api_token_file, &self.env.api_token) {
            (Some(path), _) => {
                let text = fs::read_to_string(path).map_err(|err| {
                    Failure::new(format!("cannot read the API token file {}: {err}", path.display()))
                })?;
                text.trim().to_string()
            }
            (None, Some(token)) => token.trim().to_string(),
            (None, None) => String::new(),
        };
        if token.is_empty() {
            return Err(Failure::new("no owner-account API token was given").hint(
                "set LOGZIO_API_TOKEN, or pass --api-token-file PATH (a file holding the token)",
            ));
        }
        Ok(Secret::new(token))
    }

    fn base_url(&mut self, args: &ApplyArgs, manifest: &Manifest) -> Result<String, Failure> {
        match args.api_url.as_ref().or(self.env.api_url.as_ref()) {
            Some(url) => manifest::check_api_url(url)
                .map_err(|err| Failure::new(err).hint("pass an https:// URL, or http:// to a loopback address")),
            None => Ok(manifest.endpoint.base_url().to_string()),
        }
    }

    fn confirm(&mut self, creates: usize) -> Result<(), Failure> {
        if !self.io.terminal.stdin {
            return Err(Failure::new("apply needs confirmation, and standard input is not a terminal").hint(
                "review the plan above and pass --auto-approve, or save it with `tokenctl plan -o FILE` and run `tokenctl apply FILE`",
            ));
        }
        write!(
            self.io.stderr,
            "\nCreate {creates} token(s)? Each create is final: tokens can only be revoked in the Logz.io UI.\n  Only 'yes' will be accepted: "
        )?;
        self.io.stderr.flush()?;
        let answer = (self.io.read_line)().map_err(|err| Failure::new(format!("cannot read the answer: {err}")))?;
        if answer.trim() != "yes" {
            return Err(Failure::new("apply cancelled; nothing was created"));
        }
        Ok(())
    }

    fn resolve(&mut self, args: &ResolveArgs) -> CommandResult {
        let store = self.store();
        let Some(before) = store.load()? else {
            return Err(Failure::new(format!("no state at {}", store.location())));
        };
        let address = &args.address;
        let Some(pending) = before.pending_create(address).cloned() else {
            return Err(Failure::new(format!("{address} is not in doubt"))
                .hint("`tokenctl plan` lists the creates in doubt with `?`"));
        };
        let mut after = before.clone();
        match args.adopt {
            Some(id) => after.record_created(TokenRecord {
                account_id: pending.account_id,
                name: pending.name.clone(),
                address: address.clone(),
                id,
                created_at: None,
                origin: Origin::Created,
                fingerprint: None,
            }),
            None => after.pending.retain(|p| &p.address != address),
        }
        self.commit_and_show(&store, &before, after)?;
        let done = match args.adopt {
            Some(id) => format!("{address} is recorded as token id {id}."),
            None => format!("{address} was abandoned; the next apply creates it if the manifest still lists it."),
        };
        writeln!(self.io.stdout, "{done}")?;
        Ok(EXIT_OK)
    }

    fn forget(&mut self, address: &Address) -> CommandResult {
        let loaded = self.load_manifest()?;
        if loaded.manifest.tokens.contains(address) {
            return Err(Failure::new(format!("{address} is still in the manifest"))
                .hint("remove it from the manifest first; forget is for tokens revoked in the Logz.io UI"));
        }
        let store = self.store();
        let Some(before) = store.load()? else {
            return Err(Failure::new(format!("no state at {}", store.location())));
        };
        if before.token(address).is_none() {
            return Err(Failure::new(format!("{address} is not in the state"))
                .hint("`tokenctl state list` shows the addresses it holds"));
        }
        let mut after = before.clone();
        after.tokens.retain(|t| &t.address != address);
        self.commit_and_show(&store, &before, after)?;
        writeln!(self.io.stdout, "{address} was removed from the state.")?;
        Ok(EXIT_OK)
    }

    fn commit_and_show(&mut self, store: &FileStore, before: &State, after: State) -> Result<(), Failure> {
        let (stored, _) = store.commit(Some(before), after)?;
        render::state_diff(&store.location(), &before.to_json(), &stored.to_json(), self.style, self.io.stdout)?;
        Ok(())
    }

    fn state_list(&mut self) -> CommandResult {
        let store = self.store();
        let Some(state) = store.load()? else {
            writeln!(self.io.stderr, "No state at {} yet.", store.location())?;
            return Ok(EXIT_OK);
        };
        for token in &state.tokens {
            writeln!(self.io.stdout, "{}\t{}", token.address, token.id)?;
        }
        for pending in &state.pending {
            writeln!(self.io.stdout, "{}\t(in doubt)", pending.address)?;
        }
        Ok(EXIT_OK)
    }

    fn state_show(&mut self, address: &Address) -> CommandResult {
        let store = self.store();
        let state = store.load()?.unwrap_or_else(|| State::new(String::new()));
        let out = &mut *self.io.stdout;
        if let Some(token) = state.token(address) {
            writeln!(out, "address:     {}", token.address)?;
            writeln!(out, "accountId:   {}", token.account_id)?;
            writeln!(out, "name:        {}", token.name)?;
            writeln!(out, "id:          {}", token.id)?;
            let created = token.created_at.map(render::utc).unwrap_or_else(|| "unknown".into());
            writeln!(out, "createdAt:   {created}")?;
            let origin = match token.origin {
                Origin::Created => "created",
                Origin::Imported => "imported",
            };
            writeln!(out, "origin:      {origin}")?;
            writeln!(out, "fingerprint: {}", token.fingerprint.as_deref().unwrap_or("unknown"))?;
            return Ok(EXIT_OK);
        }
        if let Some(pending) = state.pending_create(address) {
            writeln!(out, "address:     {}", pending.address)?;
            writeln!(out, "status:      in doubt since {}", render::utc(pending.since))?;
            writeln!(out, "reason:      {}", pending.reason)?;
            return Ok(EXIT_OK);
        }
        Err(Failure::new(format!("{address} is not in the state")).hint("`tokenctl state list` shows the addresses it holds"))
    }
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

fn print_event(event: Event<'_>, style: Style, stdout: &mut dyn Write, stderr: &mut dyn Write) {
    // Progress output is best effort: a closed pipe must not stop an apply.
    let _ = match event {
        Event::Creating(_) => Ok(()),
        Event::RateLimited(address, wait) => writeln!(
            stderr,
            "{address}: rate limited (429), retrying in {:.1}s",
            wait.as_secs_f64()
        ),
        Event::Finished(address, outcome) => match outcome {
            Outcome::Created { id } => writeln!(stdout, "  {} {address}: created, id {id}", style.good("+")),
            Outcome::Failed { reason } => writeln!(stdout, "  {} {address}: failed: {reason}", style.bad("x")),
            Outcome::InDoubt { reason } => writeln!(
                stdout,
                "  {} {address}: in doubt ({reason}); it will not be retried until resolved",
                style.warn("?")
            ),
            Outcome::Skipped => Ok(()),
        },
        Event::SinkFailed(address, err, rescue) => match rescue {
            Some(path) => writeln!(
                stderr,
                "{} {address}: {err}; the secret was saved to the rescue file {} (mode 0600)",
                style.bad("error:"),
                path.display()
            ),
            None => writeln!(
                stderr,
                "{} {address}: {err}; the rescue file could not be written either: the secret is lost, revoke the token in the Logz.io UI",
                style.bad("error:")
            ),
        },
        Event::Stopped(reason) => writeln!(stderr, "{} stopping: {reason}", style.bad("error:")),
    };
}
