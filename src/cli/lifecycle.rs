//! Refresh and retire: asking tokens whether they still work, and dropping
//! superseded tokens once a person revoked them.

use std::path::Path;
use std::time::Duration;

use super::apply::connect_api;
use super::{CommandResult, ConnectArgs, Failure, RetireArgs, Session};
use crate::api::{OwnerApi, Timeouts, TokenCheck};
use crate::error::{ExitStatus, Hint};
use crate::model::lifecycle::Refresh;
use crate::model::manifest::Manifest;
use crate::model::state::{Liveness, State};
use crate::ops::apply::runtime;
use crate::ops::create::{RetryPolicy, now};
use crate::ops::edit;
use crate::ops::refresh;
use crate::ops::sinks::{self, Readers};

impl Session<'_, '_> {
    /// Returns how 429 answers are retried (with the test knob applied).
    pub(super) fn retry_policy(&self) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        if let Some(ms) = self.env.backoff_ms {
            retry.base_delay = Duration::from_millis(ms);
        }
        retry
    }

    /// Returns a reader for every sink that can read secrets back (for
    /// `resolve`, which reads no manifest before): the file
    /// (`--secrets-out` or the manifest's) and the manifest's others that
    /// can; fails when there is none, saying why each could not be read.
    pub(super) fn readers(&mut self, secrets_out: Option<&Path>) -> Result<Readers, Failure> {
        let manifest = match (secrets_out, self.load_manifest()) {
            (_, Ok(loaded)) => Some(loaded.manifest),
            (Some(_), Err(_)) => None,
            (None, Err(err)) => return Err(err),
        };
        let configured = self.configured_sinks(manifest.as_ref(), secrets_out);
        let readers = sinks::readers(&configured, &self.env.vars);
        if readers.readers.is_empty() {
            let mut message = String::from(match readers.problems.is_empty() {
                true => {
                    "there is no sink to look in (one that can read secrets back: secrets.file, secrets.sops or secrets.vault)"
                }
                false => "no sink that can read secrets back could be opened:",
            });
            for problem in &readers.problems {
                message.push_str(&format!("\n  {problem}"));
            }
            let hint = match readers.problems.is_empty() {
                true => "pass --adopt ID, --abandon, or --secrets-out PATH",
                false => {
                    "fix what is named above and run resolve again, or pass --adopt ID or --abandon"
                }
            };
            return Err(Failure::new(message).hint(hint));
        }
        for reader in &readers.readers {
            for warning in reader.warnings() {
                crate::ops::Ui::warn(self, &warning);
            }
        }
        Ok(readers)
    }

    /// Asks every token of the state (current and superseded) whose secret
    /// a sink holds whether it still works.
    pub(super) fn refresh_tokens(
        &mut self,
        connect: &ConnectArgs,
        secrets_out: Option<&Path>,
        manifest: &Manifest,
        state: Option<&State>,
    ) -> Result<Refresh, Failure> {
        let configured = self.configured_sinks(Some(manifest), secrets_out);
        let env = self.env;
        let readers = sinks::refresh_readers(&configured, &env.vars);
        let api = connect_api(env, connect, manifest, Timeouts::default(), self)?;
        let runtime = runtime()?;
        let retry = self.retry_policy();
        refresh::refresh_state(&api, &runtime, &readers, state, &retry, now(), self)
    }

    pub(super) fn retire(&mut self, args: &RetireArgs) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let before = self.existing_state(store)?;
        let address = &args.address;
        edit::check_retirable(&before, address, args.id)?;
        if args.verify {
            self.verify_revoked(args)?;
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

    /// Checks with the token itself that it is revoked.
    fn verify_revoked(&mut self, args: &RetireArgs) -> Result<(), Failure> {
        let loaded = self.load_manifest()?;
        let key = (args.address.clone(), args.id);
        let configured = self.configured_sinks(Some(&loaded.manifest), args.secrets_out.as_deref());
        let readers = sinks::refresh_readers(&configured, &self.env.vars);
        let mut secrets = sinks::readable_secrets(&readers, std::slice::from_ref(&key), self)?;
        let secret = secrets.remove(&key).ok_or_else(|| {
            Failure::new(format!(
                "cannot verify: no sink holds the secret of token id {} of {}",
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
        let answer = runtime.block_on(api.whoami_as(&secret));
        let (status, detail) = refresh::classify(args.address.account_id, &answer);
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
