//! Commands that read or edit the state by hand: resolve, import, forget,
//! state list, show, fold, pull and push. Each edit runs under the lock and
//! shows the state diff.

use std::fs;
use std::path::Path;

use super::{CommandResult, Failure, Format, ImportArgs, ResolveArgs, Session};
use crate::backend::Backend;
use crate::backend::file::FileBackend;
use crate::error::ExitStatus;
use crate::model::address::Address;
use crate::model::state::{Origin, State};
use crate::ops::Ui;
use crate::ops::edit::{self, Push, Settle};
use crate::render;

impl Session<'_, '_> {
    /// Loads the state under the lock, or fails when there is none.
    pub(super) fn existing_state(&mut self, store: &dyn Backend) -> Result<State, Failure> {
        self.load_state_locked(store)?.ok_or_else(|| {
            Failure::new(format!("there is no state at {}", store.location()))
                .hint("check --state; `tokenctl apply` creates the state")
        })
    }

    pub(super) fn resolve(&mut self, args: &ResolveArgs) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let before = self.existing_state(store)?;
        edit::check_in_doubt(&before, &args.address)?;
        let how = match (args.adopt, args.abandon) {
            (Some(id), _) => Settle::Adopt(id),
            (None, true) => Settle::Abandon {
                readers: self.any_readers(args.secrets_out.as_deref())?,
                force: args.force,
            },
            (None, false) => Settle::FromSinks(self.readers(args.secrets_out.as_deref())?),
        };
        let (after, done) = edit::resolve(&before, &args.address, how)?;
        self.commit_and_show(store, &before, after)?;
        writeln!(self.io.stdout, "{done}")?;
        Ok(ExitStatus::Success)
    }

    pub(super) fn import(&mut self, args: &ImportArgs) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let before = self.load_state_locked(store)?;
        let address = &args.address;
        let after = edit::import(before.as_ref(), address, args.id, args.created_at)?;
        if let Ok(loaded) = self.load_manifest()
            && !loaded.manifest.tokens.contains(address)
        {
            self.warn(&format!(
                "{address} is not in the manifest; plans will show it as orphaned until you add it"
            ));
        }
        self.commit_and_show_from(store, before.as_ref(), after)?;
        writeln!(
            self.io.stdout,
            "{address} was imported as token id {}.",
            args.id
        )?;
        Ok(ExitStatus::Success)
    }

    pub(super) fn forget(&mut self, address: &Address) -> CommandResult {
        let loaded = self.load_manifest()?;
        let in_manifest = loaded.manifest.tokens.contains(address);
        if in_manifest {
            // Refused before the lock is taken.
            edit::forget(&crate::lineage::fresh_state(), address, true)?;
        }
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let before = self.existing_state(store)?;
        let after = edit::forget(&before, address, in_manifest)?;
        self.commit_and_show(store, &before, after)?;
        writeln!(self.io.stdout, "{address} was removed from the state.")?;
        Ok(ExitStatus::Success)
    }

    pub(super) fn commit_and_show(
        &mut self,
        store: &dyn Backend,
        before: &State,
        after: State,
    ) -> Result<(), Failure> {
        self.commit_and_show_from(store, Some(before), after)
    }

    fn commit_and_show_from(
        &mut self,
        store: &dyn Backend,
        before: Option<&State>,
        after: State,
    ) -> Result<(), Failure> {
        let (stored, _) = store.commit(before, after)?;
        let before_text = before.map(State::to_json).unwrap_or_default();
        render::state_diff(
            &store.location(),
            &before_text,
            &stored.to_json(),
            self.style,
            self.io.stdout,
        )?;
        Ok(())
    }

    /// Prints the state document, in the state file's exact format, as
    /// `plan` sees it: a journal left by a dead run is recorded first, a
    /// running apply's journal so far is overlaid (its creates under way
    /// as pending), so that nothing its journal records is missing.
    pub(super) fn state_pull(&mut self) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let Some(state) = self.load_state_for_reading(store)?.state else {
            return Err(
                Failure::new(format!("there is no state at {}", store.location()))
                    .hint("`tokenctl apply` or `tokenctl state push FILE` stores one"),
            );
        };
        write!(self.io.stdout, "{}", state.to_json())?;
        Ok(ExitStatus::Success)
    }

    /// Reads the state file to push. A journal beside it (an apply on the
    /// file backend that died) is folded into the file first, under the
    /// file's lock, as any command of the file backend would: pushing the
    /// file alone would lose the tokens it records.
    fn state_to_push(&mut self, file: &Path) -> Result<State, Failure> {
        let local = FileBackend::new(file);
        if local.has_journal()? {
            let _lock = self.lock(&local)?;
            if let Some(state) = self.load_state_locked(&local)? {
                return Ok(state);
            }
            return Err(Failure::new(format!(
                "{} holds no state, and its journal recorded no token",
                file.display()
            ))
            .hint("there is nothing to push; `tokenctl apply` stores a state"));
        }
        let text = fs::read_to_string(file).map_err(|err| {
            Failure::new(format!("cannot read state file {}: {err}", file.display()))
        })?;
        State::from_json(&text)
            .map_err(|err| Failure::new(format!("{} is not a state file: {err}", file.display())))
    }

    /// Stores a state file in the backend. Refuses another lineage, an
    /// older serial, the same serial with other content, or a state that
    /// drops a token or a create in doubt unless forced, a serial that
    /// cannot move on, and always refuses while a journal is open: its
    /// creates would be folded into a state they were not planned from.
    /// Shows the diff of what it stores, or would drop.
    pub(super) fn state_push(&mut self, file: &Path, force: bool) -> CommandResult {
        let pushed = self.state_to_push(file)?;
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        if store.has_journal()? {
            return Err(Failure::new(format!(
                "{} has an open journal: a run is under way or left one behind",
                store.location()
            ))
            .hint("run `tokenctl state fold` (or wait for the run), check the result with `tokenctl state pull`, then push again"));
        }
        let current = store.load()?;
        let name = file.display().to_string();
        let dropped = current
            .as_ref()
            .map(|c| edit::dropped_by_push(c, &pushed))
            .unwrap_or_default();
        let before_text = current.as_ref().map(State::to_json).unwrap_or_default();
        let (location, style) = (store.location(), self.style);
        let show_diff = |io: &mut crate::cli::Io<'_>, after: &State| {
            render::state_diff(&location, &before_text, &after.to_json(), style, io.stdout)
        };
        let decided = edit::push(current.as_ref(), pushed.clone(), &name, force);
        if decided.is_err() && !dropped.is_empty() {
            show_diff(self.io, &pushed)?;
        }
        let pushed = match decided? {
            Push::Store(pushed) => pushed,
            Push::AlreadyThere => {
                writeln!(
                    self.io.stdout,
                    "{} already holds this state (serial {}).",
                    store.location(),
                    current.as_ref().map_or(0, |c| c.serial)
                )?;
                return Ok(ExitStatus::Success);
            }
        };
        store.compare_and_swap(
            current.as_ref().map(|c| (c.lineage.as_str(), c.serial)),
            &pushed,
        )?;
        show_diff(self.io, &pushed)?;
        writeln!(
            self.io.stdout,
            "Stored {} in {} (lineage {}, serial {}, {} tokens).",
            file.display(),
            store.location(),
            pushed.lineage,
            pushed.serial,
            pushed.tokens.len()
        )?;
        Ok(ExitStatus::Success)
    }

    /// Folds a journal left by an interrupted apply into the state and
    /// removes it, so that a pipeline can commit every open create as
    /// pending before its runner (and the journal on it) is thrown away.
    pub(super) fn state_fold(&mut self) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let journal = store.journal_location();
        // Under the lock no apply is writing the journal: one that exists
        // now was left by a run that ended.
        let had_journal = store.has_journal()?;
        let state = self.load_state_locked(store)?;
        if had_journal {
            writeln!(
                self.io.stdout,
                "Folded {} into {}.",
                journal,
                store.location()
            )?;
        } else {
            writeln!(
                self.io.stdout,
                "Nothing to fold: there is no journal at {}.",
                journal
            )?;
        }
        let pending = state.map(|s| s.pending).unwrap_or_default();
        if !pending.is_empty() {
            writeln!(
                self.io.stdout,
                "{} create(s) in doubt; settle each with `tokenctl resolve ADDRESS`:",
                pending.len()
            )?;
            for create in &pending {
                writeln!(self.io.stdout, "  ? {}", create.address)?;
            }
        }
        Ok(ExitStatus::Success)
    }

    pub(super) fn state_list(&mut self, output: Format) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let reading = self.load_state_for_reading(store)?;
        let (Some(state), under_way) = (reading.state, reading.in_progress) else {
            writeln!(
                self.io.stderr,
                "There is no state at {} yet.",
                store.location()
            )?;
            return Ok(ExitStatus::Success);
        };
        if output == Format::Json {
            // The state document is itself versioned (format_version) and
            // holds no secrets.
            write!(self.io.stdout, "{}", state.to_json())?;
            return Ok(ExitStatus::Success);
        }
        for token in &state.tokens {
            writeln!(self.io.stdout, "{}\t{}", token.address, token.id)?;
        }
        for pending in &state.pending {
            let status = match under_way.contains(&pending.address) {
                true => "in progress",
                false => "in doubt",
            };
            writeln!(self.io.stdout, "{}\t({status})", pending.address)?;
        }
        for old in &state.superseded {
            writeln!(
                self.io.stdout,
                "{}\t{}\t(superseded: revoke it in the UI, then `tokenctl retire {} --id {}`)",
                old.address, old.id, old.address, old.id
            )?;
        }
        Ok(ExitStatus::Success)
    }

    pub(super) fn state_show(&mut self, address: &Address) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let state = self
            .load_state_for_reading(store)?
            .state
            .unwrap_or_else(|| State::new(String::new()));
        let out = &mut *self.io.stdout;
        if let Some(token) = state.token(address) {
            let created = token
                .created_at
                .map(crate::time::utc)
                .unwrap_or_else(|| "unknown".into());
            let origin = match token.origin {
                Origin::Created => "created",
                Origin::Imported => "imported",
            };
            writeln!(out, "address:     {}", token.address)?;
            writeln!(out, "accountId:   {}", token.account_id)?;
            writeln!(out, "name:        {}", token.name)?;
            writeln!(out, "id:          {}", token.id)?;
            writeln!(out, "createdAt:   {created}")?;
            writeln!(out, "origin:      {origin}")?;
            writeln!(
                out,
                "fingerprint: {}",
                token.fingerprint.as_deref().unwrap_or("unknown")
            )?;
            return Ok(ExitStatus::Success);
        }
        if let Some(pending) = state.pending_create(address) {
            writeln!(out, "address:     {}", pending.address)?;
            writeln!(
                out,
                "status:      in doubt since {}",
                crate::time::utc(pending.since)
            )?;
            writeln!(out, "reason:      {}", pending.reason)?;
            return Ok(ExitStatus::Success);
        }
        Err(Failure::new(format!("{address} is not in the state"))
            .hint("`tokenctl state list` shows the addresses it holds"))
    }
}
