//! Refresh and retire: asking tokens whether they still work, and dropping
//! superseded tokens once a person revoked them.

use std::path::Path;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

use super::state_cmds::Lookups;
use super::{CommandResult, ConnectArgs, Failure, RetireArgs, Session};
use crate::api::{HttpApi, Timeouts, TokenCheck};
use crate::error::{ExitStatus, Hint};
use crate::model::address::Address;
use crate::model::lifecycle::Refresh;
use crate::model::manifest::Manifest;
use crate::model::state::{Liveness, State};
use crate::ops::create::{RetryPolicy, now};
use crate::ops::refresh::{self, Probe};
use crate::secret::{Secret, fingerprint_of};
use crate::sink::FoundSecret;

/// Refresh calls in flight at once: the API rate-limits per account.
const REFRESH_CONCURRENCY: usize = 4;

impl Session<'_, '_> {
    /// Returns a client for the API, acting with the owner token.
    pub(super) fn connect_api(
        &mut self,
        connect: &ConnectArgs,
        manifest: &Manifest,
        timeouts: Timeouts,
    ) -> Result<HttpApi, Failure> {
        let owner_token = self.owner_token(connect)?;
        let base_url = self.base_url(connect, manifest)?;
        HttpApi::new(&base_url, owner_token, timeouts).map_err(|err| Failure::new(err.to_string()))
    }

    /// Returns the runtime the API calls of one command run on.
    pub(super) fn runtime(&self) -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))
    }

    /// Returns how 429 answers are retried (with the test knob applied).
    pub(super) fn retry_policy(&self) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        if let Some(ms) = self.env.backoff_ms {
            retry.base_delay = Duration::from_millis(ms);
        }
        retry
    }

    /// Returns the secrets of `wanted` tokens that some sink can read
    /// back, by address and id. A sink that cannot be read is warned about;
    /// its tokens stay unverifiable.
    fn readable_secrets(
        &mut self,
        secrets_out: Option<&Path>,
        wanted: &[(Address, u64)],
    ) -> Result<FxHashMap<(Address, u64), Secret>, Failure> {
        let mut secrets = FxHashMap::default();
        let Lookups { readers, problems } = match self.lookups(secrets_out) {
            Ok(lookups) => lookups,
            // No sink can read back: every token is unverifiable.
            Err(_) => return Ok(secrets),
        };
        for problem in problems {
            self.warn(&format!("a sink cannot be read: {problem}"));
        }
        let wanted_set: FxHashSet<&(Address, u64)> = wanted.iter().collect();
        let mut addresses: Vec<&Address> = wanted.iter().map(|(a, _)| a).collect();
        addresses.sort();
        addresses.dedup();
        for reader in &readers {
            let found: Vec<(Address, FoundSecret)> = match reader.lookup_all() {
                Some(all) => all.map_err(Failure::from)?,
                None => {
                    let mut found = Vec::new();
                    for address in &addresses {
                        match reader.lookup(address) {
                            Ok(list) => {
                                found.extend(list.into_iter().map(|f| ((*address).clone(), f)))
                            }
                            Err(err) => {
                                self.warn(&err.to_string());
                                break;
                            }
                        }
                    }
                    found
                }
            };
            for (address, secret) in found {
                let key = (address, secret.id);
                if wanted_set.contains(&key) {
                    secrets.insert(key, secret.token);
                }
            }
        }
        Ok(secrets)
    }

    /// Asks every token of the state (current and superseded) whose secret
    /// a sink holds whether it still works. The owner token is checked
    /// first, so a wrong region or token fails once, not once per token.
    pub(super) fn refresh_tokens(
        &mut self,
        connect: &ConnectArgs,
        secrets_out: Option<&Path>,
        manifest: &Manifest,
        state: Option<&State>,
    ) -> Result<Refresh, Failure> {
        let api = self.connect_api(connect, manifest, Timeouts::default())?;
        let runtime = self.runtime()?;
        runtime.block_on(api.whoami()).map_err(|e| {
            Failure::new(format!("refresh: the owner token check failed: {e}")).maybe_hint(e.hint())
        })?;
        // Each token with the fingerprint its secret had when it was made,
        // and whether it is the address's current token.
        let known: Vec<(Address, u64, Option<&str>, bool)> = state
            .into_iter()
            .flat_map(|s| {
                s.tokens
                    .iter()
                    .map(|t| (t.address.clone(), t.id, t.fingerprint.as_deref(), true))
                    .chain(
                        s.superseded
                            .iter()
                            .map(|o| (o.address.clone(), o.id, o.fingerprint.as_deref(), false)),
                    )
            })
            .collect();
        let keys: Vec<(Address, u64)> = known.iter().map(|(a, id, ..)| (a.clone(), *id)).collect();
        let mut secrets = self.readable_secrets(secrets_out, &keys)?;
        let mut probes = Vec::new();
        let mut unreadable = Vec::new();
        for (address, id, fingerprint, current) in known {
            // A secret that is not the one the token was made with (an
            // edited file, a bad restore) says nothing about the token: a
            // 401 from it must not retire or replace a live token.
            let secret = secrets
                .remove(&(address.clone(), id))
                .filter(|s| fingerprint.is_none_or(|f| fingerprint_of(s.expose()) == f));
            match secret {
                Some(secret) => probes.push(Probe {
                    address,
                    id,
                    secret,
                    current,
                }),
                None => unreadable.push((address, id, current)),
            }
        }
        let retry = self.retry_policy();
        Ok(runtime.block_on(refresh::refresh(
            &api,
            probes,
            unreadable,
            REFRESH_CONCURRENCY,
            &retry,
            now(),
        )))
    }

    pub(super) fn retire(&mut self, args: &RetireArgs) -> CommandResult {
        let store = self.store()?;
        let store = &*store;
        let _lock = self.lock(store)?;
        let before = self.existing_state(store)?;
        let address = &args.address;
        if before.superseded_of(address).all(|old| old.id != args.id) {
            let current = before.token(address).filter(|t| t.id == args.id);
            let hint = match current {
                Some(_) => "it is the address's current token; to drop it, remove it from the manifest, revoke it and run `tokenctl forget`".to_string(),
                None => "`tokenctl state list` shows the superseded tokens waiting to be revoked".to_string(),
            };
            return Err(Failure::new(format!(
                "token id {} of {address} is not a superseded token",
                args.id
            ))
            .hint(hint));
        }
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
        let mut secrets =
            self.readable_secrets(args.secrets_out.as_deref(), std::slice::from_ref(&key))?;
        let secret = secrets.remove(&key).ok_or_else(|| {
            Failure::new(format!(
                "cannot verify: no sink holds the secret of token id {} of {}",
                args.id, args.address
            ))
            .hint("retire without --verify once you revoked it in the UI")
        })?;
        let api = self.connect_api(&args.connect, &loaded.manifest, Timeouts::default())?;
        let runtime = self.runtime()?;
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
