//! The `apply` command: builds the options of `ops::apply`, shows what it
//! reports, and turns its result into output and an exit status.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{ApplyArgs, CommandResult, ConnectArgs, Env, Failure, Format, Io, Session};
use crate::api::{HttpApi, Timeouts};
use crate::error::ExitStatus;
use crate::model::lifecycle::Refresh;
use crate::model::manifest::{self, Manifest};
use crate::model::plan::Plan;
use crate::model::state::State;
use crate::ops::Ui;
use crate::ops::apply::{self, Applied, ApplyOptions, ApplyUi, Finished};
use crate::ops::create::{Event, Outcome, Report, StopReason};
use crate::ops::limiter::Snapshot;
use crate::ops::sinks;
use crate::render::{self, Style};
use crate::secret::Secret;
use crate::sink::{Rescue, Rescued};

/// Applies with more creates than this show a progress bar on a terminal.
const PROGRESS_MIN: usize = 3;

impl Session<'_, '_> {
    pub(super) fn apply(&mut self, args: &ApplyArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store_for(Some(&loaded.manifest))?;
        let lock = self.lock(&*store)?;
        let state = self.load_state_locked(&*store)?;
        let targeting = self.targeting(&args.targeting);
        let configured = self.configured_sinks(Some(&loaded), args.secrets_out.as_deref());
        let readers = args
            .refresh
            .then(|| sinks::refresh_readers(&configured, &self.env.vars));
        let manifest_name = self.cli.manifest.display().to_string();
        let options = ApplyOptions {
            manifest: &loaded.manifest,
            manifest_bytes: &loaded.bytes,
            manifest_name: &manifest_name,
            targeting: &targeting,
            saved_plan: args.plan_file.as_deref(),
            refresh: readers.as_ref(),
            force: args.force,
            max_creates: args.budget.max_creates,
            sinks: &configured,
            vars: &self.env.vars,
            rescue_dir: Rescue::default_dir(
                self.env.xdg_state_home.as_deref(),
                self.env.home.as_deref(),
            ),
            parallelism: usize::from(args.parallelism),
            preflight: !args.skip_preflight,
            confirm: args.plan_file.is_none() && !args.auto_approve,
            timeouts: Timeouts {
                request: args.request_timeout,
                ..Timeouts::default()
            },
            retry: self.retry_policy(),
            refresh_deadline: args.refresh_timeout,
            host: self.env.host.as_deref(),
            clock: &self.env.clock,
        };
        let env = self.env;
        let mut connect = |timeouts, ui: &mut dyn Ui| {
            connect_api(env, &args.connect, &loaded.manifest, timeouts, ui)
        };
        let mut screen = ApplyScreen {
            io: &mut *self.io,
            style: self.style,
            err_style: self.err_style,
            json: args.output == Format::Json,
            parallelism: usize::from(args.parallelism),
            progress: None,
            signals: None,
            sinks: configured.clone(),
            vars: &self.env.vars,
        };
        let applied = apply::apply(&*store, &*lock, state, &options, &mut connect, &mut screen)?;
        match applied {
            Applied::NothingToCreate(plan) => screen.nothing_to_create(&plan),
            Applied::Ran(finished) => screen.finish(&store.location(), &finished),
        }
    }
}

/// Returns a client for the API, acting with the owner token.
pub(super) fn connect_api(
    env: &Env,
    connect: &ConnectArgs,
    manifest: &Manifest,
    timeouts: Timeouts,
    ui: &mut dyn Ui,
) -> Result<HttpApi, Failure> {
    let owner_token = owner_token(env, connect, ui)?;
    let base_url = base_url(env, connect, manifest)?;
    // Credentials in the URL's userinfo are masked like any other.
    crate::redact::url_for_display(&base_url);
    let proxies = crate::net::Proxies::from_vars(&env.vars);
    HttpApi::new(&base_url, owner_token, timeouts, &proxies)
        .map_err(|err| Failure::new(err.to_string()))
}

/// What `apply` shows while it runs: the plan, the question, each create
/// (or a progress bar on a terminal), as text or JSON events.
struct ApplyScreen<'s, 'io> {
    io: &'s mut Io<'io>,
    style: Style,
    err_style: Style,
    json: bool,
    parallelism: usize,
    progress: Option<indicatif::ProgressBar>,
    signals: Option<SignalWatch>,
    /// The sinks of this run, to say what a successor's consumers see.
    sinks: Vec<sinks::ConfiguredSink>,
    /// The environment, to read the sinks' homes.
    vars: &'s crate::vars::Vars,
}

impl Ui for ApplyScreen<'_, '_> {
    fn warn(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.err_style.warn("warning:"));
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.io.stderr, "{} {text}", self.err_style.bold("note:"));
    }
}

impl ApplyUi for ApplyScreen<'_, '_> {
    fn refresh_refused(&mut self, refresh: &Refresh) -> Result<(), Failure> {
        let extras = render::Extras {
            refresh: Some(refresh),
            ..render::Extras::default()
        };
        render::lifecycle_text(&extras, self.style, self.io.stdout)?;
        Ok(())
    }

    fn planned(
        &mut self,
        plan: &Plan,
        refresh: Option<&Refresh>,
        state: Option<&State>,
    ) -> Result<(), Failure> {
        if self.json {
            return Ok(());
        }
        render::plan_text(plan, self.style, self.io.stdout)?;
        // The apply is about to write to the sinks: their homes are read,
        // so the plan says which version a successor replaces.
        let (successors, homes) = sinks::consumers(&self.sinks, plan, state, self.vars, true);
        let extras = render::Extras {
            refresh,
            state,
            homes: Some(&homes),
            successors: &successors,
        };
        render::lifecycle_text(&extras, self.style, self.io.stdout)?;
        Ok(())
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

    fn creating(
        &mut self,
        plan: &Plan,
        creates: usize,
        interrupt: &Arc<AtomicBool>,
    ) -> Result<(), Failure> {
        self.signals = Some(SignalWatch::start(interrupt.clone()).map_err(|err| {
            Failure::new(format!(
                "cannot watch for Ctrl-C: {err}; nothing was created"
            ))
        })?);
        if !self.json && self.io.terminal.stderr && creates > PROGRESS_MIN {
            self.progress = Some(progress_bar(creates, self.parallelism));
        }
        if self.json {
            json_line(self.io.stdout, &start_event(plan, creates))?;
        } else {
            writeln!(self.io.stdout)?;
        }
        Ok(())
    }

    fn event(&mut self, event: Event<'_>) {
        let styles = (self.style, self.err_style);
        let (stdout, stderr) = (&mut *self.io.stdout, &mut *self.io.stderr);
        if self.json {
            let _ = json_line(stdout, &json_event(&event));
            return;
        }
        match &self.progress {
            Some(bar) => match event {
                Event::Progress(snapshot) => bar.set_message(progress_message(&snapshot)),
                event => {
                    if let Event::Finished(..) = event {
                        bar.inc(1);
                    }
                    bar.suspend(|| print_event(event, styles, stdout, stderr));
                }
            },
            None => print_event(event, styles, stdout, stderr),
        }
    }

    fn created(&mut self) {
        self.signals = None;
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
    }
}

impl ApplyScreen<'_, '_> {
    /// Reports an apply with nothing to create.
    fn nothing_to_create(&mut self, plan: &Plan) -> CommandResult {
        let code = if plan.summary().in_doubt > 0 {
            ExitStatus::InDoubt
        } else {
            ExitStatus::Success
        };
        if self.json {
            json_line(self.io.stdout, &start_event(plan, 0))?;
            json_line(
                self.io.stdout,
                &serde_json::json!({"event": "summary", "created": 0, "failed": 0,
                "in_doubt": 0, "not_attempted": 0, "pending_total": plan.summary().in_doubt,
                "throttled": 0, "exit_code": code.code()}),
            )?;
        } else {
            writeln!(self.io.stdout, "\nNothing to create.")?;
        }
        Ok(code)
    }

    /// Reports the creates: the state's diff and the summary.
    fn finish(&mut self, location: &str, finished: &Finished) -> CommandResult {
        let Finished {
            before,
            after,
            report,
            sinks,
        } = finished;
        let counts = report.counts();
        let pending = after.as_ref().map_or(0, |s| s.pending.len());
        let result = apply_result(report, pending);
        if self.json {
            let code = result
                .as_ref()
                .map_or_else(|f| f.status, |code| *code)
                .code();
            let rescued: Vec<_> = report
                .rescued
                .iter()
                .map(|(address, path)| {
                    serde_json::json!({
                        "address": address.to_string(),
                        "rescue_file": path.file().map(|p| p.display().to_string()),
                    })
                })
                .collect();
            let summary = serde_json::json!({
                "event": "summary",
                "created": counts.created,
                "failed": counts.failed,
                "in_doubt": counts.in_doubt,
                "not_attempted": counts.not_attempted,
                "pending_total": pending,
                "rescued": rescued,
                "stopped": report.stopped.as_ref().map(StopReason::to_string),
                "throttled": report.throttled,
                "exit_code": code,
            });
            json_line(self.io.stdout, &summary)?;
            return result;
        }
        let style = self.style;
        let out = &mut *self.io.stdout;
        writeln!(out)?;
        let before_text = before.as_ref().map(State::to_json).unwrap_or_default();
        let after_text = after.as_ref().map(State::to_json).unwrap_or_default();
        render::state_diff(location, &before_text, &after_text, style, out)?;
        writeln!(out)?;
        let headline = format!(
            "Apply finished: {} created, {} failed, {} in doubt, {} not attempted.",
            counts.created, counts.failed, counts.in_doubt, counts.not_attempted
        );
        let healthy = counts.failed + counts.in_doubt + counts.not_attempted == 0
            && report.rescued.is_empty();
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
        // Only what is true: a secret in a rescue file was not delivered.
        let delivered = counts.created.saturating_sub(report.rescued.len());
        if delivered > 0 && delivered == counts.created {
            writeln!(out, "New secrets were delivered to: {}", sinks.join(", "))?;
        } else if delivered > 0 {
            writeln!(
                out,
                "{delivered} of {} new secrets were delivered to: {}; the others are in rescue files",
                counts.created,
                sinks.join(", ")
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
}

/// Reads the owner token: from `--api-token-file`, else `LOGZIO_API_TOKEN`.
pub(super) fn owner_token(
    env: &Env,
    args: &ConnectArgs,
    ui: &mut dyn Ui,
) -> Result<Secret, Failure> {
    if let Some(path) = &args.api_token_file {
        warn_if_shared(path, ui);
    }
    let token = match (&args.api_token_file, &env.api_token) {
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
    // A token that cannot go into a header fails while the request is
    // built; say so now rather than after planning every create.
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        let what = match bad {
            '\n' | '\r' => "a line break".to_string(),
            ' ' | '\t' => "white space".to_string(),
            other => format!("the character U+{:04X}", u32::from(other)),
        };
        return Err(Failure::new(format!(
                "the owner-account API token contains {what}, which cannot be sent in an HTTP header; nothing was sent"
            ))
            .hint("LOGZIO_API_TOKEN (or the --api-token-file file) must hold the token alone, on one line"));
    }
    Ok(Secret::new(token))
}

/// Warns when a file holding the owner token can be read by others.
fn warn_if_shared(path: &Path, ui: &mut dyn Ui) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            ui.warn(&format!(
                "the API token file {} can be read by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            ));
        }
    }
}

/// Returns the API's base URL: `--api-url`, `LOGZIO_API_URL`, else the
/// manifest's.
pub(super) fn base_url(
    env: &Env,
    args: &ConnectArgs,
    manifest: &Manifest,
) -> Result<String, Failure> {
    match args.api_url.as_ref().or(env.api_url.as_ref()) {
        Some(url) => manifest::check_api_url(url).map_err(|err| {
            Failure::new(err).hint("pass an https:// URL, or http:// to a loopback address")
        }),
        None => Ok(manifest.endpoint.base_url().to_string()),
    }
}

/// Returns the exit code of a finished apply, or the failure to report.
fn apply_result(report: &Report, pending: usize) -> CommandResult {
    let counts = report.counts();
    let (created, failed, skipped) = (counts.created, counts.failed, counts.not_attempted);
    let rescued = report.rescued.len();
    // A secret whose rescue file could not be written either is said so,
    // never counted as saved.
    let lost = report
        .rescued
        .iter()
        .filter(|(_, rescued)| *rescued == Rescued::Lost)
        .count();
    let saved = rescued - lost;
    let lost_words = match lost {
        0 => String::new(),
        n => format!(
            "; {n} could not be saved at all (the lines above name them): revoke those tokens in the Logz.io UI"
        ),
    };
    match &report.stopped {
        Some(StopReason::Interrupted) => {
            let mut message = format!(
                "interrupted: {created} created, {skipped} not attempted; the state records every outcome"
            );
            if rescued > 0 {
                message.push_str(&format!(
                    "; {saved} secret(s) no sink had yet were saved to rescue files (paths above){lost_words}"
                ));
            }
            let mut failure = Failure::new(message).hint(if rescued > 0 {
                "move each rescued secret to where it belongs (its token is recorded in the state), then delete its rescue file; run apply again to create the rest"
            } else {
                "run apply again to create the rest"
            });
            failure.status = ExitStatus::Interrupted;
            return Err(failure);
        }
        Some(reason @ StopReason::Unauthorized(_)) => {
            return Err(Failure::new(format!("the apply stopped early: {reason}")).hint(
                "check the owner-account token (LOGZIO_API_TOKEN or --api-token-file) and that the region or API URL matches its account",
            ));
        }
        Some(reason @ StopReason::NoDefiniteAnswers { .. }) => {
            return Err(Failure::new(format!(
                "the apply stopped early: {reason}; {skipped} create(s) were not attempted"
            ))
            .hint(
                "the server may be failing: check Logz.io's status, settle each create in doubt with `tokenctl resolve` (see `tokenctl plan`), then apply again for the rest",
            ));
        }
        Some(reason @ StopReason::SinkFailed(_)) => {
            return Err(Failure::new(format!(
                "the apply stopped early: {reason}; {saved} secret(s) were saved to rescue files (paths above){lost_words}, {skipped} create(s) were not attempted"
            ))
            .hint(
                "fix the sink, move each rescued secret to where it belongs (its token is recorded in the state) and delete its rescue file, then apply again for the rest",
            ));
        }
        Some(reason) => {
            return Err(
                Failure::new(format!("the apply stopped early: {reason}")).hint(
                    "every outcome so far is recorded; fix the cause and apply again for the rest",
                ),
            );
        }
        None => {}
    }
    if !report.rescued.is_empty() {
        let message = format!(
            "{rescued} secret(s) could not be delivered to every sink; {saved} were saved to rescue files (paths above){lost_words}"
        );
        return Err(Failure::new(message).hint(
            "the tokens are recorded in the state; move each rescued secret to where it belongs, then delete its rescue file",
        ));
    }
    if failed > 0 {
        return Err(Failure::new(format!("{failed} create(s) failed; see above")).hint(
            "fix the cause and run apply again: a failed create made no token and is planned again",
        ));
    }
    Ok(if pending > 0 {
        ExitStatus::InDoubt
    } else {
        ExitStatus::Success
    })
}

/// Watches for Ctrl-C and SIGTERM while the creates run, on a thread of
/// its own: the first stops new creates, the second exits at once (the
/// journal keeps the next run correct). Dropping it stops the watch.
///
/// Its two messages go straight to the process's stderr: they answer a
/// signal at any moment, the second one just before the process exits, so
/// they cannot wait for the writer the rest of the output goes through.
struct SignalWatch {
    ended: Arc<AtomicBool>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        // Before the stop is sent: a second signal racing with the end of
        // the creates must not exit in the middle of the fold.
        self.ended.store(true, Ordering::SeqCst);
    }
}

impl SignalWatch {
    fn start(interrupt: Arc<AtomicBool>) -> io::Result<SignalWatch> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // On unix the handlers are in place before the first create is sent.
        let mut signals = {
            let _context = runtime.enter();
            Signals::new()?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        let watching = ended.clone();
        let eprint = |text: &str| {
            let _ = writeln!(std::io::stderr(), "{text}");
        };
        let watch = async move {
            signals.recv().await;
            interrupt.store(true, Ordering::SeqCst);
            eprint(
                "Interrupted: starting no more creates; secrets no sink has yet go to rescue files now; waiting for the creates in flight, then recording every outcome. Interrupt again to exit at once.",
            );
            signals.recv().await;
            if watching.load(Ordering::SeqCst) {
                return;
            }
            // No secret received may go down with the process: each one a
            // sink may not have yet goes to a rescue file first.
            let saved = crate::sink::rescue_all_in_flight();
            let rescued = match saved {
                0 => String::new(),
                n => format!(
                    " {n} secret(s) no sink had yet were written to rescue files first; `tokenctl resolve` finds them there."
                ),
            };
            eprint(&format!(
                "Interrupted again: exiting now.{rescued} The journal records what was done; the next tokenctl command folds it into the state."
            ));
            std::process::exit(i32::from(ExitStatus::Interrupted.code()));
        };
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        biased;
                        _ = stopped => {}
                        () = watch => {}
                    }
                });
            })?;
        Ok(SignalWatch { ended, _stop: stop })
    }
}

/// Ctrl-C and SIGTERM.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Ctrl-C.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals)
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_event(
    event: Event<'_>,
    (style, err_style): (Style, Style),
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) {
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
        Event::SinkFailed(address, err, rescued) => match rescued {
            Rescued::Saved(path) => writeln!(
                stderr,
                "{} {address}: {err}; the secret was saved to the rescue file {} (mode 0600)",
                err_style.bad("error:"),
                path.display()
            ),
            Rescued::Lost => writeln!(
                stderr,
                "{} {address}: {err}; the rescue file could not be written either: the secret is lost, revoke the token in the Logz.io UI",
                err_style.bad("error:")
            ),
        },
        Event::Stopping(reason) => {
            writeln!(stderr, "{} stopping: {reason}", err_style.bad("error:"))
        }
    };
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
        "tool_version": crate::model::state::TOOL_VERSION,
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
            "error": err.to_string(), "rescue_file": rescue.file().map(|p| p.display().to_string())})
        }
        Event::Stopping(reason) => json!({"event": "stopping", "reason": reason.to_string()}),
        Event::Progress(snapshot) => json!({"event": "progress", "done": snapshot.done,
            "total": snapshot.total, "concurrency": snapshot.concurrency,
            "ceiling": snapshot.ceiling,
            "eta_ms": snapshot.eta.map(|eta| eta.as_millis() as u64)}),
    }
}
