//! The apply operation: plan against the locked state, ask, open the
//! sinks, create through the journal, fold, and retire what a refresh
//! found replaced.
//!
//! Everything that can refuse runs before the first create, and nothing is
//! written to disk before the confirmation: a refusal costs no token.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::Ui;
use super::create::{Apply, Event, Outcome, Report, RetryPolicy};
use super::plan::{check_budget, check_refresh, plan_for, warn_if_all_orphaned};
use super::refresh;
use super::sinks::{self, ConfiguredSink, Readers};
use crate::api::{self, OwnerApi, Timeouts, TokenApi, TokenCheck};
use crate::backend::{Backend, LockGuard};
use crate::error::{Failure, Hint};
use crate::model::address::Address;
use crate::model::journal::Record;
use crate::model::lifecycle::{self, Refresh};
use crate::model::manifest::Manifest;
use crate::model::plan::{Plan, Targeting};
use crate::model::planfile::PlanFile;
use crate::model::state::{Origin, PendingCreate, State, SupersededToken, TokenRecord};
use crate::sink::Rescue;
use crate::time::SharedClock;

/// What an apply is asked to do.
pub struct ApplyOptions<'a> {
    pub manifest: &'a Manifest,
    /// The manifest's bytes, which a saved plan must match.
    pub manifest_bytes: &'a [u8],
    /// The manifest's name in messages.
    pub manifest_name: &'a str,
    pub targeting: &'a Targeting,
    /// A plan saved by `plan -o`, applied only while still current.
    pub saved_plan: Option<&'a Path>,
    /// Refresh first (`apply --refresh`), with the sinks that can read
    /// secrets back.
    pub refresh: Option<&'a Readers>,
    /// Re-create even when a refresh looks like a stampede.
    pub force: bool,
    /// Refuse a plan with more creates than this.
    pub max_creates: usize,
    pub sinks: &'a [ConfiguredSink],
    /// The environment, for sinks that read variables or run commands.
    pub vars: &'a crate::vars::Vars,
    /// The private folder for rescue files; `None` when there is none.
    pub rescue_dir: Option<PathBuf>,
    /// Most creates in flight at once.
    pub parallelism: usize,
    /// Check the owner token and the accounts before the first create.
    pub preflight: bool,
    /// Ask before creating (not for a saved plan or `--auto-approve`).
    pub confirm: bool,
    /// Timeouts of the create requests.
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// How long a refresh may take in all.
    pub refresh_deadline: std::time::Duration,
    /// This host, recorded in the journal.
    pub host: Option<&'a str>,
    /// Tells the time the state and the journal record, and the age of
    /// tokens for rotation.
    pub clock: &'a SharedClock,
}

/// Where an apply reports while it runs: the plan before it asks, the
/// question, and each create.
pub trait ApplyUi: Ui {
    /// Shows a refresh whose findings stop the apply.
    fn refresh_refused(&mut self, refresh: &Refresh) -> Result<(), Failure>;

    /// Shows the plan, with what a refresh found.
    fn planned(
        &mut self,
        plan: &Plan,
        refresh: Option<&Refresh>,
        state: Option<&State>,
    ) -> Result<(), Failure>;

    /// Asks whether to create `creates` tokens; an error cancels.
    fn confirm(&mut self, creates: usize) -> Result<(), Failure>;

    /// The creates start; the UI sets `interrupt` to stop starting more.
    fn creating(
        &mut self,
        plan: &Plan,
        creates: usize,
        interrupt: &Arc<AtomicBool>,
    ) -> Result<(), Failure>;

    /// One step of the creates.
    fn event(&mut self, event: Event<'_>);

    /// The creates are over (before the fold).
    fn created(&mut self);
}

/// The Logz.io calls an apply makes.
pub trait ApplyApi: TokenApi + TokenCheck + OwnerApi + Sync {}
impl<A: TokenApi + TokenCheck + OwnerApi + Sync> ApplyApi for A {}

/// How an apply ended, for the caller to show.
pub enum Applied {
    /// The plan has nothing to create.
    NothingToCreate(Plan),
    /// The creates ran.
    Ran(Box<Finished>),
}

/// The creates of an apply, and the state before and after them.
pub struct Finished {
    pub before: Option<State>,
    pub after: Option<State>,
    pub report: Report,
    /// The sinks that took the new secrets, for messages.
    pub sinks: Vec<String>,
}

/// Runs an apply on the state `store` holds under `lock`, loaded as
/// `state`. `connect` makes the API client with the given timeouts, once
/// something needs it.
pub fn apply<A: ApplyApi>(
    store: &dyn Backend,
    lock: &dyn LockGuard,
    mut state: Option<State>,
    options: &ApplyOptions<'_>,
    connect: &mut dyn FnMut(Timeouts, &mut dyn Ui) -> Result<A, Failure>,
    ui: &mut dyn ApplyUi,
) -> Result<Applied, Failure> {
    let runtime = runtime()?;
    // A saved plan is checked against the state it was made from, before
    // a refresh records anything in it.
    let saved = match options.saved_plan {
        Some(path) => Some(load_plan_file(
            path,
            options.manifest_bytes,
            state.as_ref(),
        )?),
        None => None,
    };
    // What a refresh learnt, applied to `state` but not stored until the
    // apply goes ahead (after the confirmation).
    let mut unrecorded: Option<Unrecorded> = None;
    let refresh = match options.refresh {
        Some(readers) => {
            let api = connect(Timeouts::default(), ui)?;
            let refresh = refresh::refresh_state(
                &api,
                &runtime,
                readers,
                state.as_ref(),
                refresh::Limits {
                    retry: &options.retry,
                    parallelism: options.parallelism,
                    deadline: options.refresh_deadline,
                },
                options.clock.epoch_seconds(),
                ui,
            )?;
            // Nothing is recorded from a refresh that cannot be trusted or
            // that fails the plan.
            if let Err(failure) = check_refresh(&refresh, options.manifest, options.force) {
                ui.refresh_refused(&refresh)?;
                return Err(failure);
            }
            let retire = refresh.stampede().is_none() || options.force;
            if let Some(before) = state.take() {
                let mut after = before.clone();
                let retired = lifecycle::record_refresh(&mut after, &refresh, retire);
                state = Some(after);
                unrecorded = Some(Unrecorded { before, retired });
            }
            Some(refresh)
        }
        None => None,
    };
    let hold_back = refresh
        .as_ref()
        .and_then(Refresh::stampede)
        .is_some_and(|_| !options.force);
    let plan = plan_for(
        options.manifest,
        state.as_ref(),
        options.targeting,
        refresh.as_ref(),
        hold_back,
        options.clock.epoch_seconds(),
    );
    warn_if_all_orphaned(&plan, options.manifest_name, ui);
    let creates = match saved {
        Some(saved) => saved_creates(saved, &plan)?,
        None => plan.creates(),
    };
    ui.planned(&plan, refresh.as_ref(), state.as_ref())?;
    if creates.is_empty() {
        record_refresh(store, &mut state, unrecorded, ui)?;
        if let Some(state) = &state {
            sinks::tidy(options.sinks, options.vars, state, ui);
        }
        return Ok(Applied::NothingToCreate(plan));
    }
    check_budget(&plan, options.max_creates)?;
    if options.sinks.is_empty() {
        return Err(Failure::new(
            "no secret sink is configured, so new secrets would have nowhere to go; nothing was created",
        )
        .hint(format!(
            "add one under `secrets` in the manifest ({}), e.g. `secrets: {{file: secrets/logzio-tokens.jsonl}}` (git-ignored), or pass --secrets-out PATH",
            crate::sink::SinkSpec::KEYS.join(", ")
        )));
    }
    let api = connect(options.timeouts, ui)?;
    if options.preflight {
        runtime.block_on(preflight(&api, &creates))?;
    }
    if options.confirm {
        ui.confirm(creates.len())?;
        // A person may have taken long to answer: what the refresh found
        // revoked is checked again just before acting on it.
        if let (Some(readers), Some(found)) = (options.refresh, &refresh) {
            refresh::reconfirm_revoked(
                &api,
                &runtime,
                readers,
                state.as_ref(),
                found,
                refresh::Limits {
                    retry: &options.retry,
                    parallelism: options.parallelism,
                    deadline: options.refresh_deadline,
                },
                ui,
            )?;
        }
    }
    record_refresh(store, &mut state, unrecorded, ui)?;
    // Only now, after the answer, is anything made on disk; and all of it
    // before the first create, so a refusal costs no token.
    let rescue = rescue(options.rescue_dir.clone())?;
    // A successor replaces its predecessor in a sink's home for the
    // address only while the home still holds that predecessor.
    let predecessors: rustc_hash::FxHashMap<Address, u64> = plan
        .successions()
        .filter(|c| creates.contains(&c.address))
        .filter_map(|c| c.id.map(|id| (c.address.clone(), id)))
        .collect();
    let opened = sinks::open(
        options.sinks,
        options.vars,
        &rescue,
        &creates,
        &predecessors,
        options.clock,
    )?;
    let sink_names: Vec<String> = opened.iter().map(|s| s.describe()).collect();

    // A first apply makes the state's lineage here; the fold reads it back
    // from the journal.
    let lineage = state
        .as_ref()
        .map(|s| s.lineage.clone())
        .unwrap_or_else(crate::lineage::new_lineage);
    let journal = store.open_journal(&Record::Begin {
        lineage: lineage.clone(),
        serial: state.as_ref().map_or(0, |s| s.serial),
        started: options.clock.epoch_seconds(),
        pid: std::process::id(),
        host: options.host.map(str::to_string),
    })?;
    // Between taking the lock and making the journal, another run may have
    // got in, if the lock file was deleted meanwhile: it would have moved
    // the state on, or left its own lock file at the path.
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
    if let Err(failure) = ui.creating(&plan, creates.len(), &interrupt) {
        store.discard_journal(journal)?;
        return Err(failure);
    }
    let run = Apply {
        api: &api,
        journal: &journal,
        sinks: opened,
        rescue: &rescue,
        retry: &options.retry,
        parallelism: options.parallelism,
        interrupt: &interrupt,
        clock: &**options.clock,
    };
    let report = runtime.block_on(run.run(&creates, &mut |event| ui.event(event)));
    let recovery = journal.recovery_file();
    drop(journal);
    ui.created();

    if let Some(path) = &recovery {
        ui.warn(&format!(
            "the connection to the state's database was lost during the apply; the outcomes it could not take are in {} (mode 0600), which the next run on this machine merges",
            path.display()
        ));
    }
    let stored = match store.recover(state.as_ref(), options.host)? {
        Some((stored, _)) => stored,
        None if report.outcomes.iter().any(|(_, o)| *o != Outcome::Skipped) => {
            // Something removed the journal while the run wrote to it:
            // record what this run knows, or the next run would send the
            // same creates again.
            ui.warn(&format!(
                "the journal {} disappeared during the apply; the state was rebuilt from this run's outcomes (without creation times and fingerprints). Check that nothing deletes files beside the state while tokenctl runs",
                store.journal_location()
            ));
            let base = state.clone().unwrap_or_else(|| State::new(lineage));
            Some(
                store
                    .commit(
                        state.as_ref(),
                        fold_outcomes(base, &report, options.clock.epoch_seconds()),
                    )?
                    .0,
            )
        }
        None => state.clone(),
    };
    // A token replaced because it was found revoked stays in the state as
    // superseded, with its instruction: only a later refresh that finds it
    // revoked again, or a person's `retire`, drops it.
    warn_about_reused_ids(state.as_ref(), &report, ui);
    // Only a run that went through removes what the sinks kept of tokens
    // a person dropped: one that stopped leaves everything as it was.
    let counts = report.counts();
    let through = report.stopped.is_none()
        && report.rescued.is_empty()
        && counts.failed + counts.in_doubt + counts.not_attempted == 0;
    if let (true, Some(stored)) = (through, &stored) {
        sinks::tidy(options.sinks, options.vars, stored, ui);
    }
    Ok(Applied::Ran(Box::new(Finished {
        before: state,
        after: stored,
        report,
        sinks: sink_names,
    })))
}

/// What a refresh changed in the state before it is stored: the state
/// before it, and the superseded tokens it retires.
struct Unrecorded {
    before: State,
    retired: Vec<SupersededToken>,
}

/// Returns the runtime the API calls of one command run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))
}

/// Reads a saved plan, after checking that it was made from exactly the
/// current manifest and state.
fn load_plan_file(
    path: &Path,
    manifest_bytes: &[u8],
    state: Option<&State>,
) -> Result<PlanFile, Failure> {
    let text = fs::read_to_string(path)
        .map_err(|err| Failure::new(format!("cannot read plan file {}: {err}", path.display())))?;
    let saved = PlanFile::from_json(&text)?;
    saved.check(manifest_bytes, state)?;
    Ok(saved)
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

/// Stores what a refresh learnt (each token's last check, and the
/// superseded tokens that answered 401 retired), once the apply goes
/// ahead; `state` becomes the state as stored.
fn record_refresh(
    store: &dyn Backend,
    state: &mut Option<State>,
    unrecorded: Option<Unrecorded>,
    ui: &mut dyn Ui,
) -> Result<(), Failure> {
    let Some(Unrecorded { before, retired }) = unrecorded else {
        return Ok(());
    };
    let Some(after) = state.take() else {
        return Ok(());
    };
    let (stored, _) = store.commit(Some(&before), after)?;
    *state = Some(stored);
    for old in retired {
        ui.note(&format!(
            "retired token id {} of {}: it answers 401, so it was revoked as asked",
            old.id, old.address
        ));
    }
    Ok(())
}

/// Warns when the server returned an id that the state already records
/// for another address: one of the two records is wrong.
fn warn_about_reused_ids(before: Option<&State>, report: &Report, ui: &mut dyn Ui) {
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
            ui.warn(&format!(
                "the server returned id {id} for {address}, an id the state already records for {}; check both in the Logz.io UI",
                other.address
            ));
        }
    }
}

/// Returns the rescue folder, checked to be writable.
fn rescue(dir: Option<PathBuf>) -> Result<Rescue, Failure> {
    let dir = dir.ok_or_else(|| {
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

/// Checks, before the first create, that the owner token works in this
/// region and that every target account is one of its sub-accounts.
async fn preflight<A: OwnerApi>(api: &A, creates: &[Address]) -> Result<(), Failure> {
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

/// Records a run's outcomes in the state without its journal: created
/// tokens by id, and creates in doubt as pending.
fn fold_outcomes(mut state: State, report: &Report, now: i64) -> State {
    for (address, outcome) in &report.outcomes {
        match outcome {
            Outcome::Created { id } => state.record_created(TokenRecord::new(
                address.clone(),
                *id,
                None,
                Origin::Created,
                None,
            )),
            Outcome::InDoubt { reason } => {
                state.record_pending(PendingCreate::new(address.clone(), now, reason.clone()))
            }
            Outcome::Failed { .. } | Outcome::Skipped => {}
        }
    }
    state
}
