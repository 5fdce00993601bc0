//! The `apply` command: plan, confirm, create with the journal, fold.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{
    ApplyArgs, CommandResult, EXIT_IN_DOUBT, EXIT_INTERRUPTED, EXIT_OK, Failure, Format, Session,
    check_budget, record_journal,
};
use crate::address::Address;
use crate::api::{self, HttpApi, Timeouts};
use crate::apply::{Apply, Event, Outcome, Report, RetryPolicy, now};
use crate::journal::{JournalWriter, Record};
use crate::limiter::Snapshot;
use crate::manifest::{self, Manifest};
use crate::plan::{self, Plan};
use crate::planfile::PlanFile;
use crate::render::{self, Style};
use crate::secret::Secret;
use crate::sink::{ExecSink, FileSink, Rescue, SecretSink};
use crate::state::State;
use crate::store::{FileStore, StateStore};

/// How long an exec sink may take for one token.
const EXEC_SINK_TIMEOUT: Duration = Duration::from_secs(60);

/// Applies with more creates than this show a progress bar on a terminal.
const PROGRESS_MIN: usize = 3;

impl Session<'_, '_> {
    pub(super) fn apply(&mut self, args: &ApplyArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store();
        let _lock = self.lock(&store)?;
        let state = self.load_state_locked(&store)?;
        let targeting = self.targeting(&args.targeting);
        let plan = plan::plan(&loaded.manifest.tokens, state.as_ref()).restrict(&targeting);
        let creates = match &args.plan_file {
            Some(path) => self.saved_creates(path, &loaded.bytes, state.as_ref(), &plan)?,
            None => plan.creates(),
        };
        let json = args.output == Format::Json;
        if !json {
            render::plan_text(&plan, self.style, self.io.stdout)?;
        }
        if creates.is_empty() {
            let code = if plan.summary().in_doubt > 0 {
                EXIT_IN_DOUBT
            } else {
                EXIT_OK
            };
            if json {
                json_line(self.io.stdout, &start_event(&plan, 0))?;
                json_line(
                    self.io.stdout,
                    &serde_json::json!({"event": "summary", "created": 0, "failed": 0,
                    "in_doubt": 0, "not_attempted": 0, "pending_total": plan.summary().in_doubt,
                    "throttled": 0, "exit_code": code}),
                )?;
            } else {
                writeln!(self.io.stdout, "\nNothing to create.")?;
            }
            return Ok(code);
        }
        check_budget(&plan, &args.budget)?;
        let sinks = self.open_sinks(args, &loaded.manifest)?;
        let sink_names: Vec<String> = sinks.iter().map(|s| s.describe()).collect();
        let owner_token = self.owner_token(args)?;
        let base_url = self.base_url(args, &loaded.manifest)?;
        let timeouts = Timeouts {
            request: args.request_timeout,
            ..Timeouts::default()
        };
        let api = HttpApi::new(&base_url, owner_token, timeouts)
            .map_err(|err| Failure::new(err.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))?;
        if !args.skip_preflight {
            runtime.block_on(preflight(&api, &creates))?;
        }
        if args.plan_file.is_none() && !args.auto_approve {
            self.confirm(creates.len())?;
        }
        let rescue = Rescue::new(Rescue::default_dir(
            self.env.xdg_state_home.as_deref(),
            self.env.home.as_deref(),
        ));
        let mut retry = RetryPolicy::default();
        if let Some(ms) = self.env.backoff_ms {
            retry.base_delay = Duration::from_millis(ms);
        }

        // A first apply makes the state's lineage here; the fold reads it
        // back from the journal.
        let lineage = state
            .as_ref()
            .map(|s| s.lineage.clone())
            .unwrap_or_else(|| State::fresh().lineage);
        let journal = JournalWriter::create(
            &store.journal_path(),
            &Record::Begin {
                lineage,
                serial: state.as_ref().map_or(0, |s| s.serial),
                started: now(),
                pid: std::process::id(),
            },
        )?;
        let interrupt = Arc::new(AtomicBool::new(false));
        runtime.spawn(watch_signals(interrupt.clone()));
        let progress = (!json && self.io.terminal.stderr && creates.len() > PROGRESS_MIN)
            .then(|| progress_bar(creates.len(), usize::from(args.parallelism)));
        if json {
            json_line(self.io.stdout, &start_event(&plan, creates.len()))?;
        } else {
            writeln!(self.io.stdout)?;
        }
        let style = self.style;
        let (stdout, stderr) = (&mut *self.io.stdout, &mut *self.io.stderr);
        let mut events = |event: Event<'_>| {
            if json {
                let _ = json_line(stdout, &json_event(&event));
                return;
            }
            match &progress {
                Some(bar) => match event {
                    Event::Progress(snapshot) => bar.set_message(progress_message(&snapshot)),
                    event => {
                        if let Event::Finished(..) = event {
                            bar.inc(1);
                        }
                        bar.suspend(|| print_event(event, style, stdout, stderr));
                    }
                },
                None => print_event(event, style, stdout, stderr),
            }
        };
        let apply = Apply {
            api: &api,
            journal: &journal,
            sinks,
            rescue: &rescue,
            retry: &retry,
            parallelism: usize::from(args.parallelism),
            interrupt: &interrupt,
        };
        let report = runtime.block_on(apply.run(&creates, &mut events));
        drop(journal);
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }

        let stored = match record_journal(&store, state.as_ref())? {
            Some((stored, _)) => stored,
            None => state.clone(),
        };
        self.finish(
            &store,
            state.as_ref(),
            stored.as_ref(),
            &report,
            &sink_names,
            json,
        )
    }

    /// Returns the creates of a saved plan, after checking that it was made
    /// from exactly the current manifest and state.
    fn saved_creates(
        &mut self,
        path: &Path,
        manifest_bytes: &[u8],
        state: Option<&State>,
        plan: &Plan,
    ) -> Result<Vec<Address>, Failure> {
        let text = fs::read_to_string(path).map_err(|err| {
            Failure::new(format!("cannot read plan file {}: {err}", path.display()))
        })?;
        let saved = PlanFile::from_json(&text)?;
        saved.check(manifest_bytes, state)?;
        let planned = plan.creates();
        // Same inputs give the same plan; a saved plan may be narrower
        // (made with --target), never wider.
        if let Some(extra) = saved.creates.iter().find(|a| !planned.contains(a)) {
            return Err(Failure::new(format!(
                "the plan file creates {extra}, which the current plan does not"
            ))
            .hint("make a new plan with the same --target/--exclude options you apply with"));
        }
        Ok(saved.creates)
    }

    fn finish(
        &mut self,
        store: &FileStore,
        before: Option<&State>,
        after: Option<&State>,
        report: &Report,
        sink_names: &[String],
        json: bool,
    ) -> CommandResult {
        let (created, failed, in_doubt, skipped) = report.counts();
        let pending = after.map_or(0, |s| s.pending.len());
        let result = apply_result(report, pending);
        if json {
            let code = result.as_ref().map_or_else(|f| f.code, |code| *code);
            let rescued: Vec<_> = report
                .rescued
                .iter()
                .map(|(address, path)| {
                    serde_json::json!({
                        "address": address.to_string(),
                        "rescue_file": path.as_ref().map(|p| p.display().to_string()),
                    })
                })
                .collect();
            let summary = serde_json::json!({
                "event": "summary",
                "created": created,
                "failed": failed,
                "in_doubt": in_doubt,
                "not_attempted": skipped,
                "pending_total": pending,
                "rescued": rescued,
                "stopped": report.stopped,
                "throttled": report.throttled,
                "exit_code": code,
            });
            json_line(self.io.stdout, &summary)?;
            return result;
        }
        let style = self.style;
        let out = &mut *self.io.stdout;
        writeln!(out)?;
        let before_text = before.map(State::to_json).unwrap_or_default();
        let after_text = after.map(State::to_json).unwrap_or_default();
        render::state_diff(&store.location(), &before_text, &after_text, style, out)?;
        writeln!(out)?;
        let headline = format!(
            "Apply finished: {created} created, {failed} failed, {in_doubt} in doubt, {skipped} not attempted."
        );
        let healthy = failed + in_doubt + skipped == 0 && report.rescued.is_empty();
        let headline = if healthy {
            style.good(&headline)
        } else {
            style.warn(&headline)
        };
        writeln!(out, "{headline}")?;
        if report.throttled > 0 {
            writeln!(
                out,
                "{} request(s) were throttled by the API (429) and sent again after a short wait.",
                report.throttled
            )?;
        }
        if created > 0 {
            writeln!(
                out,
                "New secrets were delivered to: {}",
                sink_names.join(", ")
            )?;
        }
        if pending > 0 {
            writeln!(
                out,
                "{pending} create(s) in doubt: nothing more is created for them until `tokenctl resolve` settles each; `tokenctl plan` says how."
            )?;
        }
        result
    }
    fn open_sinks(
        &mut self,
        args: &ApplyArgs,
        manifest: &Manifest,
    ) -> Result<Vec<Box<dyn SecretSink>>, Failure> {
        let mut sinks: Vec<Box<dyn SecretSink>> = Vec::new();
        let file = match (&args.secrets_out, &manifest.secrets.file) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(relative)) => Some(self.manifest_relative(relative)),
            (None, None) => None,
        };
        if let Some(path) = file {
            sinks.push(Box::new(FileSink::open(&path)?));
        }
        if let Some(argv) = &manifest.secrets.exec {
            sinks.push(Box::new(ExecSink::new(argv.clone(), EXEC_SINK_TIMEOUT)?));
        }
        if sinks.is_empty() {
            return Err(Failure::new(
                "no secret sink is configured, so new secrets would have nowhere to go; nothing was created",
            )
            .hint(
                "add `secrets: {file: secrets/logzio-tokens.jsonl}` (git-ignored) or `secrets: {exec: [program, args]}` to the manifest, or pass --secrets-out PATH",
            ));
        }
        Ok(sinks)
    }

    fn owner_token(&mut self, args: &ApplyArgs) -> Result<Secret, Failure> {
        let token = match (&args.api_token_file, &self.env.api_token) {
            (Some(path), _) => fs::read_to_string(path)
                .map_err(|err| {
                    Failure::new(format!(
                        "cannot read the API token file {}: {err}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
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
            Some(url) => manifest::check_api_url(url).map_err(|err| {
                Failure::new(err).hint("pass an https:// URL, or http:// to a loopback address")
            }),
            None => Ok(manifest.endpoint.base_url().to_string()),
        }
    }

    fn confirm(&mut self, creates: usize) -> Result<(), Failure> {
        if !self.io.terminal.stdin {
            return Err(Failure::new(
                "apply needs confirmation, and standard input is not a terminal",
            )
            .hint(
                "review the plan above and pass --auto-approve, or save it with `tokenctl plan -o FILE` and run `tokenctl apply FILE`",
            ));
        }
        write!(
            self.io.stderr,
            "\nCreate {creates} token(s)? Each create is final: tokens can only be revoked in the Logz.io UI.\n  Only 'yes' will be accepted: "
        )?;
        self.io.stderr.flush()?;
        let answer = (self.io.read_line)()
            .map_err(|err| Failure::new(format!("cannot read the answer: {err}")))?;
        if answer.trim() != "yes" {
            return Err(Failure::new("apply cancelled; nothing was created"));
        }
        Ok(())
    }
}

/// Returns the exit code of a finished apply, or the failure to report.
fn apply_result(report: &Report, pending: usize) -> CommandResult {
    let (created, failed, _, skipped) = report.counts();
    match report.stopped.as_deref() {
        Some("interrupted") => {
            let mut failure = Failure::new(format!(
                "interrupted: {created} created, {skipped} not attempted; the state records every outcome"
            ))
            .hint("run apply again to create the rest");
            failure.code = EXIT_INTERRUPTED;
            return Err(failure);
        }
        Some(reason) => {
            return Err(Failure::new(format!("the apply stopped early: {reason}")).hint(
                "check the owner-account token (LOGZIO_API_TOKEN or --api-token-file) and that the region or API URL matches its account",
            ));
        }
        None => {}
    }
    if !report.rescued.is_empty() {
        let lost = report
            .rescued
            .iter()
            .filter(|(_, path)| path.is_none())
            .count();
        let mut message = format!(
            "{} secret(s) could not be delivered to every sink and were saved to rescue files (paths above)",
            report.rescued.len()
        );
        if lost > 0 {
            message.push_str(&format!("; {lost} could not be saved at all"));
        }
        return Err(Failure::new(message).hint(
            "the tokens are recorded in the state; move each rescued secret to where it belongs, then delete its rescue file",
        ));
    }
    if failed > 0 {
        return Err(Failure::new(format!("{failed} create(s) failed; see above")).hint(
            "fix the cause and run apply again: a failed create made no token and is planned again",
        ));
    }
    Ok(if pending > 0 { EXIT_IN_DOUBT } else { EXIT_OK })
}

/// Stops new creates at the first Ctrl-C or SIGTERM; exits at once on the
/// second (the journal keeps the next run correct).
async fn watch_signals(interrupt: Arc<AtomicBool>) {
    let eprint = |text: &str| {
        let _ = writeln!(std::io::stderr(), "{text}");
    };
    wait_for_signal().await;
    interrupt.store(true, Ordering::SeqCst);
    eprint(
        "Interrupted: starting no more creates; waiting for those in flight, then recording every outcome. Interrupt again to exit at once.",
    );
    wait_for_signal().await;
    eprint(
        "Interrupted again: exiting now. The journal records what was done; the next tokenctl command folds it into the state.",
    );
    std::process::exit(EXIT_INTERRUPTED);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

fn print_event(event: Event<'_>, style: Style, stdout: &mut dyn Write, stderr: &mut dyn Write) {
    // Progress output is best effort: a closed pipe must not stop an apply.
    let _ = match event {
        // The progress bar shows it; a log would only be noise.
        Event::Creating(_) | Event::Progress(_) => Ok(()),
        Event::RateLimited(address, wait) => writeln!(
            stderr,
            "{address}: rate limited (429), retrying in {:.1}s",
            wait.as_secs_f64()
        ),
        Event::Finished(address, outcome) => match outcome {
            Outcome::Created { id } => {
                writeln!(stdout, "  {} {address}: created, id {id}", style.good("+"))
            }
            Outcome::Failed { reason } => {
                writeln!(stdout, "  {} {address}: failed: {reason}", style.bad("x"))
            }
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
        Event::Stopping(reason) => writeln!(stderr, "{} stopping: {reason}", style.bad("error:")),
    };
}

/// Checks, before the first create, that the owner token works in this
/// region and that every target account is one of its sub-accounts.
async fn preflight(api: &HttpApi, creates: &[Address]) -> Result<(), Failure> {
    let owner = api.whoami().await.map_err(|e| {
        Failure::new(format!("pre-flight: {e}; nothing was created")).hint(e.hint())
    })?;
    let accounts = api.associated_accounts().await.map_err(|e| {
        Failure::new(format!("pre-flight: {e}; nothing was created")).hint(e.hint())
    })?;
    let wanted: Vec<u64> = creates.iter().map(|a| a.account_id).collect();
    let missing = api::not_sub_accounts(&wanted, &accounts);
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(u64::to_string).collect();
        return Err(Failure::new(format!(
            "pre-flight: account(s) {} are not sub-accounts of owner account {} ({}); nothing was created",
            list.join(", "),
            owner.account_id,
            owner.account_name
        ))
        .hint("check the accountId values in the manifest, and that the owner token is for the right owner account"));
    }
    Ok(())
}

fn progress_bar(total: usize, ceiling: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    // Redraw on a clock too, so the bar stays alive while creates wait.
    bar.enable_steady_tick(Duration::from_millis(200));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tokens, {msg}")
    {
        bar.set_style(style);
    }
    bar.set_message(format!(
        "1 of {ceiling} in flight (finding the API's limit)"
    ));
    bar
}

/// Returns the progress bar's text: the concurrency and the time left.
fn progress_message(snapshot: &Snapshot) -> String {
    let concurrency = format!("{} of {} in flight", snapshot.concurrency, snapshot.ceiling);
    match snapshot.eta {
        Some(eta) => format!("{concurrency}, {} left", format_eta(eta)),
        None => concurrency,
    }
}

/// Formats a time left to the second: `45s`, `3m 05s`, `1h 02m`.
fn format_eta(eta: Duration) -> String {
    let seconds = eta.as_secs_f64().round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h {:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

fn json_line(out: &mut dyn Write, value: &serde_json::Value) -> io::Result<()> {
    writeln!(out, "{value}")?;
    out.flush()
}

fn start_event(plan: &Plan, creates: usize) -> serde_json::Value {
    serde_json::json!({
        "format_version": render::OUTPUT_FORMAT_VERSION,
        "event": "start",
        "tool_version": crate::state::TOOL_VERSION,
        "summary": plan.summary(),
        "creates": creates,
    })
}

fn json_event(event: &Event<'_>) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::Creating(address) => {
            json!({"event": "create_started", "address": address.to_string()})
        }
        Event::RateLimited(address, wait) => {
            json!({"event": "rate_limited", "address": address.to_string(),
            "retry_in_ms": wait.as_millis() as u64})
        }
        Event::Finished(address, outcome) => match outcome {
            Outcome::Created { id } => {
                json!({"event": "created", "address": address.to_string(), "id": id})
            }
            Outcome::Failed { reason } => {
                json!({"event": "failed", "address": address.to_string(), "reason": reason})
            }
            Outcome::InDoubt { reason } => {
                json!({"event": "in_doubt", "address": address.to_string(), "reason": reason})
            }
            Outcome::Skipped => json!({"event": "not_attempted", "address": address.to_string()}),
        },
        Event::SinkFailed(address, err, rescue) => {
            json!({"event": "sink_failed", "address": address.to_string(),
            "error": err.to_string(), "rescue_file": rescue.map(|p| p.display().to_string())})
        }
        Event::Stopping(reason) => json!({"event": "stopping", "reason": reason}),
        Event::Progress(snapshot) => json!({"event": "progress", "done": snapshot.done,
            "total": snapshot.total, "concurrency": snapshot.concurrency,
            "ceiling": snapshot.ceiling,
            "eta_ms": snapshot.eta.map(|eta| eta.as_millis() as u64)}),
    }
}
