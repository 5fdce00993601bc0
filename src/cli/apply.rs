//! The `apply` command: plan, confirm, create with the journal, fold.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{
    ApplyArgs, CommandResult, ConfiguredSink, ConnectArgs, Failure, Format, Session, check_budget,
    check_refresh,
};
use crate::api::{self, HttpApi, Timeouts};
use crate::backend::Backend;
use crate::error::{ExitStatus, Hint};
use crate::model::address::Address;
use crate::model::journal::Record;
use crate::model::lifecycle::{self, Refresh};
use crate::model::manifest::{self, Manifest};
use crate::model::plan::{self, Plan};
use crate::model::planfile::PlanFile;
use crate::model::state::{State, SupersededToken};
use crate::ops::create::{Apply, Event, Outcome, Report, StopReason, now};
use crate::ops::limiter::Snapshot;
use crate::render::{self, Style};
use crate::secret::Secret;
use crate::sink::{ForApply, Rescue, SecretSink, SinkSpec};

/// Applies with more creates than this show a progress bar on a terminal.
const PROGRESS_MIN: usize = 3;

impl Session<'_, '_> {
    pub(super) fn apply(&mut self, args: &ApplyArgs) -> CommandResult {
        let loaded = self.load_manifest()?;
        let store = self.store_for(Some(&loaded.manifest))?;
        let store = &*store;
        let lock = self.lock(store)?;
        let mut state = self.load_state_locked(store)?;
        let targeting = self.targeting(&args.targeting);
        // A saved plan is checked against the state it was made from,
        // before a refresh records anything in it.
        let saved = match &args.plan_file {
            Some(path) => Some(self.load_plan_file(path, &loaded.bytes, state.as_ref())?),
            None => None,
        };
        // What a refresh learnt, applied to `state` but not stored until
        // the apply goes ahead (after the confirmation): the state before
        // it, and the superseded tokens it retires.
        let mut unrecorded: Option<(State, Vec<SupersededToken>)> = None;
        let refresh = match args.refresh {
            true => {
                let refresh = self.refresh_tokens(
                    &args.connect,
                    args.secrets_out.as_deref(),
                    &loaded.manifest,
                    state.as_ref(),
                )?;
                // Nothing is recorded from a refresh that cannot be trusted
                // or that fails the plan.
                if let Err(failure) = check_refresh(&refresh, &loaded.manifest, args.force) {
                    let extras = render::Extras {
                        refresh: Some(&refresh),
                        state: None,
                    };
                    render::lifecycle_text(&extras, self.style, self.io.stdout)?;
                    return Err(failure);
                }
                let retire = refresh.stampede().is_none() || args.force;
                if let Some(before) = state.take() {
                    let mut after = before.clone();
                    let retired = lifecycle::record_refresh(&mut after, &refresh, retire);
                    state = Some(after);
                    unrecorded = Some((before, retired));
                }
                Some(refresh)
            }
            false => None,
        };
        let hold_back = refresh
            .as_ref()
            .and_then(Refresh::stampede)
            .is_some_and(|_| !args.force);
        let plan = lifecycle::plan_successors(
            plan::plan(&loaded.manifest.tokens, state.as_ref()).restrict(&targeting),
            state.as_ref(),
            &loaded.manifest.lifecycle,
            now(),
            refresh.as_ref(),
            hold_back,
        );
        self.warn_if_all_orphaned(&plan);
        let creates = match saved {
            Some(saved) => saved_creates(saved, &plan)?,
            None => plan.creates(),
        };
        let json = args.output == Format::Json;
        if !json {
            render::plan_text(&plan, self.style, self.io.stdout)?;
            let extras = render::Extras {
                refresh: refresh.as_ref(),
                state: state.as_ref(),
            };
            render::lifecycle_text(&extras, self.style, self.io.stdout)?;
        }
        if creates.is_empty() {
            self.record_refresh(store, &mut state, unrecorded)?;
            let code = if plan.summary().in_doubt > 0 {
                ExitStatus::InDoubt
            } else {
                ExitStatus::Success
            };
            if json {
                json_line(self.io.stdout, &start_event(&plan, 0))?;
                json_line(
                    self.io.stdout,
                    &serde_json::json!({"event": "summary", "created": 0, "failed": 0,
                    "in_doubt": 0, "not_attempted": 0, "pending_total": plan.summary().in_doubt,
                    "throttled": 0, "exit_code": code.code()}),
                )?;
            } else {
                writeln!(self.io.stdout, "\nNothing to create.")?;
            }
            return Ok(code);
        }
        check_budget(&plan, &args.budget)?;
        let configured = self.apply_sinks(args, &loaded.manifest)?;
        let timeouts = Timeouts {
            request: args.request_timeout,
            ..Timeouts::default()
        };
        let api = self.connect_api(&args.connect, &loaded.manifest, timeouts)?;
        let runtime = self.runtime()?;
        if !args.skip_preflight {
            runtime.block_on(preflight(&api, &creates))?;
        }
        if args.plan_file.is_none() && !args.auto_approve {
            self.confirm(creates.len())?;
        }
        self.record_refresh(store, &mut state, unrecorded)?;
        // Only now, after the answer, is anything made on disk; and all of
        // it before the first create, so a refusal costs no token.
        let rescue = self.rescue()?;
        let sinks = self.open_sinks(&configured, &rescue, &creates)?;
        let sink_names: Vec<String> = sinks.iter().map(|s| s.describe()).collect();
        let retry = self.retry_policy();

        // A first apply makes the state's lineage here; the fold reads it
        // back from the journal.
        let lineage = state
            .as_ref()
            .map(|s| s.lineage.clone())
            .unwrap_or_else(|| State::fresh().lineage);
        let journal = store.open_journal(&Record::Begin {
            lineage: lineage.clone(),
            serial: state.as_ref().map_or(0, |s| s.serial),
            started: now(),
            pid: std::process::id(),
            host: self.env.host.clone(),
        })?;
        // Between taking the lock and making the journal, another run may
        // have got in, if the lock file was deleted meanwhile: it would
        // have moved the state on, or left its own lock file at the path.
        let moved = store.load()?.map(|s| (s.lineage, s.serial))
            != state.as_ref().map(|s| (s.lineage.clone(), s.serial));
        if moved || !lock.is_current() {
            store.discard_journal(journal)?;
            return Err(Failure::new(format!(
                "another run changed the state or took its lock while this one prepared ({}); nothing was created",
                store.location()
            ))
            .hint("the lock was probably lost while tokenctl ran (a lock file removed, a database connection cut); check that nothing deletes files beside the state, then run again"));
        }
        let interrupt = Arc::new(AtomicBool::new(false));
        runtime.spawn(watch_signals(interrupt.clone()));
        let progress = (!json && self.io.terminal.stderr && creates.len() > PROGRESS_MIN)
            .then(|| progress_bar(creates.len(), usize::from(args.parallelism)));
        if json {
            json_line(self.io.stdout, &start_event(&plan, creates.len()))?;
        } else {
            writeln!(self.io.stdout)?;
        }
        let styles = (self.style, self.err_style);
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
                        bar.suspend(|| print_event(event, styles, stdout, stderr));
                    }
                },
                None => print_event(event, styles, stdout, stderr),
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
        let recovery = journal.recovery_file();
        drop(journal);
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }

        if let Some(path) = &recovery {
            self.warn(&format!(
                "the connection to the state's database was lost during the apply; the outcomes it could not take are in {} (mode 0600), which the next run on this machine merges",
                path.display()
            ));
        }
        let stored = match store.recover(state.as_ref(), self.env.host.as_deref())? {
            Some((stored, _)) => stored,
            None if report.outcomes.iter().any(|(_, o)| *o != Outcome::Skipped) => {
                // Something removed the journal while the run wrote to it:
                // record what this run knows, or the next run would send
                // the same creates again.
                self.warn(&format!(
                    "the journal {} disappeared during the apply; the state was rebuilt from this run's outcomes (without creation times and fingerprints). Check that nothing deletes files beside the state while tokenctl runs",
                    store.journal_location()
                ));
                let base = state.clone().unwrap_or_else(|| State::new(lineage));
                Some(
                    store
                        .commit(state.as_ref(), fold_outcomes(base, &report))?
                        .0,
                )
            }
            None => state.clone(),
        };
        let stored = match &refresh {
            Some(refresh) => self.retire_replaced(store, stored, &report, refresh.at)?,
            None => stored,
        };
        self.finish(
            store,
            state.as_ref(),
            stored.as_ref(),
            &report,
            &sink_names,
            json,
        )
    }

    /// Warns when the server returned an id that the state already records
    /// for another address: one of the two records is wrong.
    fn warn_about_reused_ids(&mut self, before: Option<&State>, report: &Report) {
        let Some(before) = before else { return };
        for (address, outcome) in &report.outcomes {
            let Outcome::Created { id } = outcome else {
                continue;
            };
            if let Some(other) = before
                .tokens
                .iter()
                .find(|t| t.id == *id && &t.address != address)
            {
                self.warn(&format!(
                    "the server returned id {id} for {address}, an id the state already records for {}; check both in the Logz.io UI",
                    other.address
                ));
            }
        }
    }

    /// Returns the creates of a saved plan, after checking that it was made
    /// from exactly the current manifest and state.
    /// Reads a saved plan, after checking that it was made from exactly
    /// the current manifest and state.
    fn load_plan_file(
        &mut self,
        path: &Path,
        manifest_bytes: &[u8],
        state: Option<&State>,
    ) -> Result<PlanFile, Failure> {
        let text = fs::read_to_string(path).map_err(|err| {
            Failure::new(format!("cannot read plan file {}: {err}", path.display()))
        })?;
        let saved = PlanFile::from_json(&text)?;
        saved.check(manifest_bytes, state)?;
        Ok(saved)
    }

    /// Stores what a refresh learnt (each token's last check, and the
    /// superseded tokens that answered 401 retired), once the apply goes
    /// ahead; `state` becomes the state as stored.
    fn record_refresh(
        &mut self,
        store: &dyn Backend,
        state: &mut Option<State>,
        unrecorded: Option<(State, Vec<SupersededToken>)>,
    ) -> Result<(), Failure> {
        let Some((before, retired)) = unrecorded else {
            return Ok(());
        };
        let Some(after) = state.take() else {
            return Ok(());
        };
        let (stored, _) = store.commit(Some(&before), after)?;
        *state = Some(stored);
        for old in retired {
            self.note(&format!(
                "retired token id {} of {}: it answers 401, so it was revoked as asked",
                old.id, old.address
            ));
        }
        Ok(())
    }

    /// Retires the predecessors of tokens that replaced revoked ones: the
    /// refresh already found them revoked.
    fn retire_replaced(
        &mut self,
        store: &dyn Backend,
        state: Option<State>,
        report: &Report,
        refreshed_at: i64,
    ) -> Result<Option<State>, Failure> {
        let Some(before) = state else { return Ok(None) };
        let successors: rustc_hash::FxHashSet<u64> = report
            .outcomes
            .iter()
            .filter_map(|(_, outcome)| match outcome {
                Outcome::Created { id } => Some(*id),
                _ => None,
            })
            .collect();
        let mut after = before.clone();
        let retired = lifecycle::retire_replaced(&mut after, &successors, refreshed_at);
        if retired.is_empty() {
            return Ok(Some(before));
        }
        let (stored, _) = store.commit(Some(&before), after)?;
        for old in retired {
            self.note(&format!(
                "retired token id {} of {}: it was found revoked and now has a successor",
                old.id, old.address
            ));
        }
        Ok(Some(stored))
    }

    fn finish(
        &mut self,
        store: &dyn Backend,
        before: Option<&State>,
        after: Option<&State>,
        report: &Report,
        sink_names: &[String],
        json: bool,
    ) -> CommandResult {
        let (created, failed, in_doubt, skipped) = report.counts();
        let pending = after.map_or(0, |s| s.pending.len());
        self.warn_about_reused_ids(before, report);
        let result = apply_result(report, pending);
        if json {
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
    /// Returns the sinks of the run, after checking that there is one.
    fn apply_sinks(
        &self,
        args: &ApplyArgs,
        manifest: &Manifest,
    ) -> Result<Vec<ConfiguredSink>, Failure> {
        let sinks = self.configured_sinks(Some(manifest), args.secrets_out.as_deref());
        if sinks.is_empty() {
            return Err(Failure::new(
                "no secret sink is configured, so new secrets would have nowhere to go; nothing was created",
            )
            .hint(format!(
                "add one under `secrets` in the manifest ({}), e.g. `secrets: {{file: secrets/logzio-tokens.jsonl}}` (git-ignored), or pass --secrets-out PATH",
                SinkSpec::KEYS.join(", ")
            )));
        }
        Ok(sinks)
    }

    /// Returns the rescue folder, checked to be writable.
    fn rescue(&mut self) -> Result<Rescue, Failure> {
        let dir = Rescue::default_dir(self.env.xdg_state_home.as_deref(), self.env.home.as_deref())
            .ok_or_else(|| {
                Failure::new(
                    "neither XDG_STATE_HOME nor HOME is set, so there is no private folder for rescue files; nothing was created",
                )
                .hint("set HOME (or XDG_STATE_HOME) to a folder only you can read")
            })?;
        let rescue = Rescue::new(dir);
        rescue.prepare().map_err(|err| {
            Failure::new(format!(
                "cannot write to the rescue folder {}: {err}; nothing was created",
                rescue.dir().display()
            ))
            .hint("a secret no sink would take is kept there; make the folder writable, or set XDG_STATE_HOME to another private folder")
        })?;
        Ok(rescue)
    }

    /// Opens every sink and runs its checks, so that a sink that would
    /// refuse a secret does so before anything is created.
    fn open_sinks(
        &self,
        configured: &[ConfiguredSink],
        rescue: &Rescue,
        creates: &[Address],
    ) -> Result<Vec<Box<dyn SecretSink>>, Failure> {
        let apply = ForApply {
            rescue_dir: rescue.dir(),
            creates,
        };
        configured
            .iter()
            .map(|sink| {
                sink.spec
                    .kind()
                    .open(&self.sink_context(&sink.base_dir), &apply)
                    .map_err(|err| {
                        let failure = Failure::from(err);
                        let message = format!("{}; nothing was created", failure.message);
                        Failure { message, ..failure }
                    })
            })
            .collect()
    }

    pub(super) fn owner_token(&mut self, args: &ConnectArgs) -> Result<Secret, Failure> {
        if let Some(path) = &args.api_token_file {
            self.warn_if_shared(path);
        }
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
    fn warn_if_shared(&mut self, path: &Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                self.warn(&format!(
                    "the API token file {} can be read by other users (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    meta.permissions().mode() & 0o777,
                    path.display()
                ));
            }
        }
    }

    pub(super) fn base_url(
        &mut self,
        args: &ConnectArgs,
        manifest: &Manifest,
    ) -> Result<String, Failure> {
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

/// Records a run's outcomes in the state without its journal: created
/// tokens by id, and creates in doubt as pending.
fn fold_outcomes(mut state: State, report: &Report) -> State {
    for (address, outcome) in &report.outcomes {
        match outcome {
            Outcome::Created { id } => state.record_created(crate::model::state::TokenRecord::new(
                address.clone(),
                *id,
                None,
                crate::model::state::Origin::Created,
                None,
            )),
            Outcome::InDoubt { reason } => state.record_pending(
                crate::model::state::PendingCreate::new(address.clone(), now(), reason.clone()),
            ),
            Outcome::Failed { .. } | Outcome::Skipped => {}
        }
    }
    state
}

/// Returns the creates of a saved plan: same inputs give the same plan, and
/// a saved plan may be narrower (made with --target), never wider.
fn saved_creates(saved: PlanFile, plan: &Plan) -> Result<Vec<Address>, Failure> {
    let planned = plan.creates();
    if let Some(extra) = saved.creates.iter().find(|a| !planned.contains(a)) {
        return Err(Failure::new(format!(
            "the plan file creates {extra}, which the current plan does not"
        ))
        .hint(
            "make a new plan with the same --target/--exclude and --refresh options you apply with",
        ));
    }
    Ok(saved.creates)
}

/// Returns the exit code of a finished apply, or the failure to report.
fn apply_result(report: &Report, pending: usize) -> CommandResult {
    let (created, failed, _, skipped) = report.counts();
    match &report.stopped {
        Some(StopReason::Interrupted) => {
            let mut failure = Failure::new(format!(
                "interrupted: {created} created, {skipped} not attempted; the state records every outcome"
            ))
            .hint("run apply again to create the rest");
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
    Ok(if pending > 0 {
        ExitStatus::InDoubt
    } else {
        ExitStatus::Success
    })
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
    std::process::exit(i32::from(ExitStatus::Interrupted.code()));
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
        Event::SinkFailed(address, err, rescue) => match rescue {
            Some(path) => writeln!(
                stderr,
                "{} {address}: {err}; the secret was saved to the rescue file {} (mode 0600)",
                err_style.bad("error:"),
                path.display()
            ),
            None => writeln!(
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

/// Checks, before the first create, that the owner token works in this
/// region and that every target account is one of its sub-accounts.
async fn preflight(api: &HttpApi, creates: &[Address]) -> Result<(), Failure> {
    let owner = api.whoami().await.map_err(|e| {
        Failure::new(format!("pre-flight: {e}; nothing was created")).maybe_hint(e.hint())
    })?;
    let accounts = api.associated_accounts().await.map_err(|e| {
        Failure::new(format!("pre-flight: {e}; nothing was created")).maybe_hint(e.hint())
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
            "error": err.to_string(), "rescue_file": rescue.map(|p| p.display().to_string())})
        }
        Event::Stopping(reason) => json!({"event": "stopping", "reason": reason.to_string()}),
        Event::Progress(snapshot) => json!({"event": "progress", "done": snapshot.done,
            "total": snapshot.total, "concurrency": snapshot.concurrency,
            "ceiling": snapshot.ceiling,
            "eta_ms": snapshot.eta.map(|eta| eta.as_millis() as u64)}),
    }
}
