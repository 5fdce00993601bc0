//! Refresh and retire: asking tokens whether they still work, and dropping
//! superseded tokens once a person revoked them.

use std::path::Path;
use std::time::Duration;

use super::apply::connect_api;
use super::{CommandResult, ConnectArgs, Failure, LoadedManifest, RetireArgs, Session};
use crate::api::{OwnerApi, Timeouts};
use crate::error::{ExitStatus, Hint};
use crate::model::lifecycle::Refresh;
use crate::model::state::{Liveness, State};
use crate::ops::apply::runtime;
use crate::ops::create::RetryPolicy;
use crate::ops::edit;
use crate::ops::refresh;
use crate::ops::sinks::{self, Readers};

impl Session<'_, '_> {
    /// Returns how 429 answers are retried (with the test knob applied).
    pub(super) fn retry_policy(&self) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        // The test knob sets the time scale of backoff: the base wait, the
        // longest one and the patience, in proportion (a server's
        // Retry-After is still honoured as given).
        if let Some(ms) = self.env.backoff_ms {
            retry.base_delay = Duration::from_millis(ms);
            retry.max_backoff = Duration::from_millis(ms.saturating_mul(30));
            retry.patience = Duration::from_millis(ms.saturating_mul(6000));
        }
        retry
    }

    /// Returns a reader for every sink that can read secrets back (for
    /// `resolve`, which reads no manifest before): the file
    /// (`--secrets-out` or the manifest's) and the manifest's others that
    /// can; fails when there is none, saying why each could not be read.
    pub(super) fn readers(&mut self, secrets_out: Option<&Path>) -> Result<Readers, Failure> {
        let manifest = match (secrets_out, self.load_manifest()) {
            (_, Ok(loaded)) => Some(loaded),
            (Some(_), Err(_)) => None,
            (None, Err(err)) => return Err(err),
        };
        let configured = self.configured_sinks(manifest.as_ref(), secrets_out);
        let readers = sinks::readers(&configured, &self.env.vars);
        // With no sink that reads back, the rescue files alone are
        // searched; a sink that could not be opened is an error first.
        if readers.readers.is_empty() && !readers.problems.is_empty() {
            let mut message = String::from("no sink that can read secrets back could be opened:");
            for problem in &readers.problems {
                message.push_str(&format!("\n  {problem}"));
            }
            return Err(Failure::new(message).hint(
                "fix what is named above and run resolve again, or pass --adopt ID or --abandon",
            ));
        }
        for reader in &readers.readers {
            for warning in reader.warnings() {
                crate::ops::Ui::warn(self, &warning);
            }
        }
        Ok(self.with_rescue_files(readers))
    }

    /// Adds the rescue folder to `readers`: a secret no sink took is there.
    fn with_rescue_files(&self, mut readers: Readers) -> Readers {
        let dir = crate::sink::Rescue::default_dir(
            self.env.xdg_state_home.as_deref(),
            self.env.home.as_deref(),
        );
        if let Some(dir) = dir {
            readers
                .readers
                .push(Box::new(crate::sink::RescueLookup::new(dir)));
        }
        readers
    }

    /// Returns a reader for every sink that can read secrets back, for a
    /// check that goes on without any (`resolve --abandon`).
    /// A manifest that exists but cannot be read is an error: its sinks
    /// might hold what the check looks for.
    pub(super) fn any_readers(&mut self, secrets_out: Option<&Path>) -> Result<Readers, Failure> {
        let manifest = match self.cli.manifest.exists() {
            true => Some(self.load_manifest()?),
            false => None,
        };
        let configured = self.configured_sinks(manifest.as_ref(), secrets_out);
        let readers = sinks::readers(&configured, &self.env.vars);
        Ok(self.with_rescue_files(readers))
    }

    /// Asks every token of the state (current and superseded) whose secret
    /// a sink holds whether it still works.
    pub(super) fn refresh_tokens(
        &mut self,
        connect: &ConnectArgs,
        secrets_out: Option<&Path>,
        deadline: Duration,
        loaded: &LoadedManifest,
        state: Option<&State>,
    ) -> Result<Refresh, Failure> {
        let configured = self.configured_sinks(Some(loaded), secrets_out);
        let env = self.env;
        let readers = sinks::refresh_readers(&configured, &env.vars);
        let api = connect_api(env, connect, &loaded.manifest, Timeouts::default(), self)?;
        let runtime = runtime()?;
        let retry = self.retry_policy();
        let limits = refresh::Limits {
            retry: &retry,
            parallelism: refresh::DEFAULT_PARALLELISM,
            deadline,
        };
        let now = env.clock.epoch_seconds();
        refresh::refresh_state(&api, &runtime, &readers, state, limits, now, self)
    }

    pub(super) fn retire(&mut self, args: &RetireArgs) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let before = self.existing_state(store)?;
        let address = &args.address;
        edit::check_retirable(&before, address, args.id)?;
        if args.verify {
            self.verify_revoked(args, &before)?;
        }
        let mut after = before.clone();
        after.retire(address, args.id);
        self.commit_and_show(store, &before, after)?;
        writeln!(
            self.io.stdout,
            "Token id {} of {address} was retired from the state.",
            args.id
        )?;
        Ok(ExitStatus::Success)
    }

    /// Checks with the token itself that it is revoked, as a refresh
    /// does: with the secret it was made with (its fingerprint recorded at
    /// creation), a Logz.io 401 twice, and the owner token alive around.
    fn verify_revoked(&mut self, args: &RetireArgs, before: &State) -> Result<(), Failure> {
        let loaded = self.load_manifest()?;
        let key = (args.address.clone(), args.id);
        let fingerprint = refresh::recorded_fingerprint(Some(before), &args.address, args.id);
        let configured = self.configured_sinks(Some(&loaded), args.secrets_out.as_deref());
        let readers = sinks::refresh_readers(&configured, &self.env.vars);
        let mut secrets = sinks::readable_secrets(&readers, std::slice::from_ref(&key), self)?;
        let found = secrets.remove(&key);
        let held = found.is_some();
        let secret = refresh::verified(found, fingerprint).ok_or_else(|| {
            let why = match (held, &fingerprint) {
                (false, _) => "no sink holds its secret".to_string(),
                (true, None) => "its secret's fingerprint was never recorded (an imported token), so the secret a sink holds cannot be shown to be its own".to_string(),
                (true, Some(_)) => "the secret a sink holds is not the one it was made with (its fingerprint differs: an edited file or an old backup?)".to_string(),
            };
            Failure::new(format!(
                "cannot verify token id {} of {}: {why}; nothing was retired",
                args.id, args.address
            ))
            .hint("retire without --verify once you revoked it in the UI")
        })?;
        let env = self.env;
        let api = connect_api(
            env,
            &args.connect,
            &loaded.manifest,
            Timeouts::default(),
            self,
        )?;
        let runtime = runtime()?;
        // A wrong region or API URL answers 401 for every token: check
        // the owner token first, as a refresh does.
        runtime.block_on(api.whoami()).map_err(|e| {
            Failure::new(format!("cannot verify: the owner token check failed: {e}"))
                .maybe_hint(e.hint())
        })?;
        let retry = self.retry_policy();
        let limits = refresh::Limits {
            retry: &retry,
            parallelism: 1,
            deadline: refresh::DEFAULT_DEADLINE,
        };
        let probe = refresh::Probe {
            address: args.address.clone(),
            id: args.id,
            secret,
            current: false,
        };
        let now = self.env.clock.epoch_seconds();
        let found = runtime.block_on(refresh::refresh(&api, vec![probe], vec![], limits, now));
        let finding = found.get(&args.address, args.id).cloned();
        let (status, detail) = finding.map_or((Liveness::Unknown, None), |f| (f.status, f.detail));
        match status {
            Liveness::Revoked => Ok(()),
            Liveness::Alive | Liveness::Misdelivered => Err(Failure::new(format!(
                "token id {} of {} still works (its whoami answered 200); nothing was retired",
                args.id, args.address
            ))
            .hint("revoke it in the Logz.io UI first, then run retire again")),
            Liveness::Unknown | Liveness::Unverifiable => Err(Failure::new(format!(
                "cannot verify token id {} of {}: {}; nothing was retired",
                args.id,
                args.address,
                detail.unwrap_or_default()
            ))
            .hint("try again later, or retire without --verify once you revoked it in the UI")),
        }
    }
}
