//! Refresh and retire: asking tokens whether they still work, and dropping
//! superseded tokens once a person revoked them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::{CommandResult, ConnectArgs, EXIT_OK, Failure, RetireArgs, Session};
use crate::address::Address;
use crate::api::{HttpApi, Timeouts, TokenCheck};
use crate::apply::{RetryPolicy, now};
use crate::lifecycle::{self, Probe, Refresh};
use crate::manifest::Manifest;
use crate::secret::Secret;
use crate::state::{Liveness, State};

/// Refresh calls in flight at once: the API rate-limits per account.
const REFRESH_CONCURRENCY: usize = 4;

impl Session<'_, '_> {
    /// Returns a client for the API, acting with the owner token.
    fn connect_api(
        &mut self,
        connect: &ConnectArgs,
        manifest: &Manifest,
    ) -> Result<HttpApi, Failure> {
        let owner_token = self.owner_token(connect)?;
        let base_url = self.base_url(connect, manifest)?;
        HttpApi::new(&base_url, owner_token, Timeouts::default())
            .map_err(|err| Failure::new(err.to_string()))
    }

    fn runtime(&self) -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| Failure::new(format!("cannot start the async runtime: {err}")))
    }

    fn retry_policy(&self) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        if let Some(ms) = self.env.backoff_ms {
            retry.base_delay = Duration::from_millis(ms);
        }
        retry
    }

    /// Returns the secrets file to read tokens back from, if any.
    fn readable_secrets(&self, secrets_out: Option<&Path>, manifest: &Manifest) -> Option<PathBuf> {
        secrets_out.map(Path::to_path_buf).or_else(|| {
            manifest
                .secrets
                .file
                .as_deref()
                .map(|f| self.manifest_relative(f))
        })
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
        let api = self.connect_api(connect, manifest)?;
        let runtime = self.runtime()?;
        runtime.block_on(api.whoami()).map_err(|e| {
            Failure::new(format!("refresh: the owner token check failed: {e}")).hint(e.hint())
        })?;
        let mut secrets = match self.readable_secrets(secrets_out, manifest) {
            Some(path) => read_secrets(&path)?,
            None => FxHashMap::default(),
        };
        let mut probes = Vec::new();
        let mut unreadable = Vec::new();
        let known = state.into_iter().flat_map(|s| {
            s.tokens
                .iter()
                .map(|t| (&t.address, t.id))
                .chain(s.superseded.iter().map(|o| (&o.address, o.id)))
        });
        for (address, id) in known {
            match secrets.remove(&(address.clone(), id)) {
                Some(secret) => probes.push(Probe {
                    address: address.clone(),
                    id,
                    secret,
                }),
                None => unreadable.push((address.clone(), id)),
            }
        }
        let retry = self.retry_policy();
        Ok(runtime.block_on(lifecycle::refresh(
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
        Ok(EXIT_OK)
    }

    /// Checks with the token itself that it is revoked.
    fn verify_revoked(&mut self, args: &RetireArgs) -> Result<(), Failure> {
        let loaded = self.load_manifest()?;
        let path = self
            .readable_secrets(args.secrets_out.as_deref(), &loaded.manifest)
            .ok_or_else(|| {
                Failure::new("--verify needs the token's secret, and no secrets file is configured")
                    .hint("pass --secrets-out PATH, or retire without --verify once you revoked it in the UI")
            })?;
        let secrets = read_secrets(&path)?;
        let secret = secrets
            .get(&(args.address.clone(), args.id))
            .ok_or_else(|| {
                Failure::new(format!(
                    "cannot verify: {} holds no secret for token id {} of {}",
                    path.display(),
                    args.id,
                    args.address
                ))
                .hint("retire without --verify once you revoked it in the UI")
            })?;
        let api = self.connect_api(&args.connect, &loaded.manifest)?;
        let runtime = self.runtime()?;
        let answer = runtime.block_on(api.whoami_as(secret));
        let (status, detail) = lifecycle::classify(args.address.account_id, &answer);
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

/// Reads every token in a JSON Lines secrets file, by address and id. A
/// line that does not parse (a damaged last line) is passed over.
fn read_secrets(path: &Path) -> Result<FxHashMap<(Address, u64), Secret>, Failure> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(FxHashMap::default()),
        Err(err) => {
            return Err(Failure::new(format!(
                "cannot read the secrets file {}: {err}",
                path.display()
            )));
        }
    };
    #[derive(serde::Deserialize)]
    struct Line {
        address: Address,
        id: u64,
        token: String,
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Line>(line).ok())
        .map(|line| ((line.address, line.id), Secret::new(line.token)))
        .collect())
}
