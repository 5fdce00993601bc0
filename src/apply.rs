//! Apply: creates the planned tokens, hands secrets to the sinks and records
//! the outcome of each create in the state.
//!
//! The create call is not idempotent and shows its secret once, so each
//! outcome is classified by whether a token may exist: created (recorded),
//! refused (nothing exists, will be planned again), or in doubt (recorded as
//! pending; never retried until a person resolves it).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::address::Address;
use crate::api::{CreateError, CreatedToken, TokenApi};
use crate::sink::{NewToken, Rescue, SecretSink, SinkError};
use crate::state::{PendingCreate, State, TokenRecord};
use crate::store::{StateStore, StoreError};

/// How 429 answers are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Wait before the first retry when the server gives no `Retry-After`.
    pub base_delay: Duration,
    /// Longest single wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Returns the wait before retry number `retry` (0-based): the server's
    /// `Retry-After` when given, else exponential backoff with jitter.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_delay);
        }
        let exponential = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_delay);
        // Half fixed, half random, so parallel runs do not retry in step.
        let half = exponential / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// What happened to one planned create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created { id: u64 },
    /// Definitely not created; the next plan creates it again.
    Failed { reason: String },
    /// Maybe created; pending until resolved.
    InDoubt { reason: String },
    /// Not attempted because the run stopped first.
    Skipped,
}

/// Progress of an apply, for the terminal.
#[derive(Debug)]
pub enum Event<'a> {
    Creating(&'a Address),
    RateLimited(&'a Address, Duration),
    Finished(&'a Address, &'a Outcome),
    /// A sink failed; the secret went to the rescue file named, or, when
    /// none is named, could not be saved anywhere.
    SinkFailed(&'a Address, &'a SinkError, Option<&'a std::path::Path>),
    Stopped(&'a str),
}

/// The result of an apply.
#[derive(Debug)]
pub struct Report {
    pub outcomes: Vec<(Address, Outcome)>,
    /// Secrets a sink refused, with the rescue file that holds each
    /// (`None`: the rescue file could not be written either).
    pub rescued: Vec<(Address, Option<PathBuf>)>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// The state as stored at the end.
    pub state: State,
}

impl Report {
    /// Counts outcomes: (created, failed, in doubt, skipped).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0);
        for (_, outcome) in &self.outcomes {
            match outcome {
                Outcome::Created { .. } => counts.0 += 1,
                Outcome::Failed { .. } => counts.1 += 1,
                Outcome::InDoubt { .. } => counts.2 += 1,
                Outcome::Skipped => counts.3 += 1,
            }
        }
        counts
    }
}

/// Why an apply could not go on: the state could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct ApplyError {
    #[source]
    pub source: StoreError,
    /// What had been done but could not be recorded.
    pub unrecorded: Option<String>,
}

/// The effects an apply drives.
pub struct Apply<'a, A> {
    pub api: &'a A,
    pub store: &'a dyn StateStore,
    pub sinks: &'a mut [Box<dyn SecretSink>],
    pub rescue: &'a Rescue,
    pub retry: &'a RetryPolicy,
}

impl<A: TokenApi> Apply<'_, A> {
    /// Creates each address in turn, recording each outcome in the state as
    /// soon as it is known, so a crash loses at most the create in flight.
    pub async fn run(
        &mut self,
        before: Option<State>,
        creates: &[Address],
        events: &mut dyn FnMut(Event<'_>),
    ) -> Result<Report, ApplyError> {
        let mut stored = before;
        let mut state = stored.clone().unwrap_or_else(State::fresh);
        let mut report_outcomes = Vec::with_capacity(creates.len());
        let mut rescued = Vec::new();
        let mut stopped = None;

        for address in creates {
            if stopped.is_some() {
                report_outcomes.push((address.clone(), Outcome::Skipped));
                continue;
            }
            events(Event::Creating(address));
            let sent_at = now();
            let outcome = match self.create_with_retries(address, events).await {
                Ok(created) => {
                    if let Some(rescue) = self.deliver(address, &created, events) {
                        rescued.push((address.clone(), rescue));
                    }
                    state.record_created(TokenRecord::created(
                        address.clone(),
                        created.id,
                        created.created_at,
                        created.token.fingerprint(),
                    ));
                    Outcome::Created { id: created.id }
                }
                Err(CreateError::Unauthorized { status, message }) => {
                    let reason = format!("owner token rejected ({status}): {message}");
                    stopped = Some(reason.clone());
                    Outcome::Failed { reason }
                }
                Err(
                    err @ (CreateError::Refused { .. }
                    | CreateError::NotSent { .. }
                    | CreateError::RateLimited { .. }),
                ) => Outcome::Failed {
                    reason: err.to_string(),
                },
                Err(CreateError::Ambiguous { detail }) => {
                    state.record_pending(PendingCreate::new(address.clone(), sent_at, detail.clone()));
                    Outcome::InDoubt { reason: detail }
                }
            };
            events(Event::Finished(address, &outcome));
            if let Outcome::Created { .. } | Outcome::InDoubt { .. } = outcome {
                let (now_stored, _) = self
                    .store
                    .commit(stored.as_ref(), state.clone())
                    .map_err(|source| ApplyError {
                        source,
                        unrecorded: Some(match &outcome {
                            Outcome::Created { id } => format!(
                                "token {address} was created with id {id} and its secret delivered, but the state does not record it; \
                                 once the state can be written, run `tokenctl import {address} --id {id}`"
                            ),
                            _ => format!(
                                "the create of {address} is in doubt and the state does not record it; do not apply again before \
                                 checking in the Logz.io UI whether the token exists"
                            ),
                        }),
                    })?;
                state = now_stored.clone();
                stored = Some(now_stored);
            }
            report_outcomes.push((address.clone(), outcome));
            if let Some(reason) = &stopped {
                events(Event::Stopped(reason));
            }
        }
        Ok(Report {
            outcomes: report_outcomes,
            rescued,
            stopped,
            state: stored.unwrap_or(state),
        })
    }

    async fn create_with_retries(
        &self,
        address: &Address,
        events: &mut dyn FnMut(Event<'_>),
    ) -> Result<CreatedToken, CreateError> {
        let mut retry = 0;
        loop {
            match self.api.create(address.account_id, &address.name).await {
                Err(CreateError::RateLimited { retry_after, .. })
                    if retry + 1 < self.retry.max_attempts =>
                {
                    let wait = self.retry.delay(retry, retry_after);
                    events(Event::RateLimited(address, wait));
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// Hands the secret to every sink. When one fails, the secret is
    /// written to a rescue file; returns that file (`Some(None)` when even
    /// the rescue failed), or `None` when every sink took it.
    fn deliver(
        &mut self,
        address: &Address,
        created: &CreatedToken,
        events: &mut dyn FnMut(Event<'_>),
    ) -> Option<Option<PathBuf>> {
        let token = NewToken {
            address,
            id: created.id,
            created_at: created.created_at,
            token: &created.token,
        };
        let mut rescued: Option<Option<PathBuf>> = None;
        for sink in self.sinks.iter_mut() {
            if let Err(err) = sink.deliver(&token) {
                let path = rescued
                    .get_or_insert_with(|| self.rescue.save(&token).ok())
                    .clone();
                events(Event::SinkFailed(address, &err, path.as_deref()));
            }
        }
        rescued
    }
}

/// Returns the time in epoch seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
