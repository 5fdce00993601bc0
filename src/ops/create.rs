//! Apply: creates the planned tokens concurrently, hands each secret to the
//! sinks, and journals every step so that no create is lost or repeated.
//!
//! The create call is not idempotent and shows its secret once. For each
//! address: an `intent` is journaled (fsynced) before the request; after a
//! 200 the secret goes to the sinks and then `created` is journaled; a
//! definite refusal journals `failed`; anything ambiguous leaves the intent
//! open, which the fold turns into a pending create, in doubt until resolved.
//! The caller folds the journal into the state once, at the end.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use crate::api::{CreateError, CreatedToken, TokenApi};
use crate::backend::Journal;
use crate::failpoint;
use crate::model::address::Address;
use crate::model::journal::Record;
use crate::ops::limiter::{Limiter, Permit, Progress, Snapshot};
use crate::sink::{Rescue, Rescued, SecretSink, SinkError, SinkWorker};
use crate::time::Clock;

/// How 429 answers are retried.
///
/// The concurrency controller is what backs off for the run as a whole (it
/// cuts the creates in flight on a 429), so one throttled create needs only
/// a short wait of its own before it is sent again.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Wait before the first retry when the server gives no `Retry-After`
    /// (or `Retry-After: 0`); doubled on each retry, with jitter.
    pub base_delay: Duration,
    /// Longest backoff wait.
    pub max_backoff: Duration,
    /// Longest wait a server's `Retry-After` is honoured for: a server
    /// asking for a day is asked again after this.
    pub max_retry_after: Duration,
    /// How long one request may spend waiting out 429s in all, before it
    /// gives up: retries are bounded by time, not by a count that a burst
    /// of short refusals uses up in a moment.
    pub patience: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            patience: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// Returns the wait before retry number `retry` (0-based): the server's
    /// `Retry-After` when it gives a positive one (at most
    /// `max_retry_after`), else exponential backoff from `base_delay` with
    /// up to half again of jitter, at most `max_backoff`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after.filter(|wait| !wait.is_zero()) {
            Some(wait) => wait.min(self.max_retry_after),
            None => {
                let exponential = self
                    .base_delay
                    .saturating_mul(2u32.saturating_pow(retry))
                    .min(self.max_backoff);
                // Randomly up to half again, so parallel requests do not
                // retry in step; never shorter than the backoff itself.
                exponential + (exponential / 2).mul_f64(fastrand::f64())
            }
        }
    }

    /// Tells whether a request that already waited `waited` may wait
    /// `next` more.
    pub fn may_wait(&self, waited: Duration, next: Duration) -> bool {
        waited.saturating_add(next) <= self.patience
    }
}

/// What happened to one planned create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created {
        id: u64,
    },
    /// Definitely not created; the next plan creates it again.
    Failed {
        reason: String,
    },
    /// Maybe created; pending until resolved.
    InDoubt {
        reason: String,
    },
    /// Not attempted because the run stopped first.
    Skipped,
}

/// Progress of an apply, for the terminal.
#[derive(Debug)]
pub enum Event<'a> {
    Creating(&'a Address),
    RateLimited(&'a Address, Duration),
    /// The concurrency, the creates done and the time left, when the
    /// concurrency changed or a while after it was last reported.
    Progress(Snapshot),
    Finished(&'a Address, &'a Outcome),
    /// A sink failed, and where the secret was kept instead.
    SinkFailed(&'a Address, &'a SinkError, &'a Rescued),
    Stopping(&'a StopReason),
}

/// After this many creates in a row got no definite answer, no further
/// create starts: during an outage every one of them would be one more
/// token for a person to look for in the UI.
pub const DOUBT_STREAK_LIMIT: usize = 3;

/// Why a run stopped before it attempted every create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// The server refused the owner token (401 or 403).
    Unauthorized(String),
    /// Several creates in a row got no definite answer.
    NoDefiniteAnswers { in_a_row: usize, last: String },
    /// An outcome could not be journaled.
    Journal(String),
    /// The sinks could not be started.
    Sinks(String),
    /// A sink failed: every further secret would only reach a rescue file.
    SinkFailed(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Interrupted => f.write_str("interrupted"),
            StopReason::Unauthorized(detail) => f.write_str(detail),
            StopReason::NoDefiniteAnswers { in_a_row, last } => write!(
                f,
                "{in_a_row} creates in a row got no definite answer (last: {last}); starting no more"
            ),
            StopReason::Journal(detail) => write!(f, "the journal failed: {detail}"),
            StopReason::Sinks(detail) => write!(f, "cannot start the secret sinks: {detail}"),
            StopReason::SinkFailed(detail) => write!(
                f,
                "{detail}; starting no more creates, as their secrets could only go to rescue files"
            ),
        }
    }
}

/// The result of the creates of one apply.
#[derive(Debug, Default)]
pub struct Report {
    /// Every planned address with its outcome, in plan order.
    pub outcomes: Vec<(Address, Outcome)>,
    /// Secrets a sink refused, and where each was kept instead.
    pub rescued: Vec<(Address, Rescued)>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
    /// Answers that were 429 (each was retried, or failed after the last
    /// attempt).
    pub throttled: u64,
}

/// How many creates ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: usize,
    pub failed: usize,
    pub in_doubt: usize,
    /// Not attempted: the run stopped first.
    pub not_attempted: usize,
}

impl Report {
    /// Counts the outcomes.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (_, outcome) in &self.outcomes {
            match outcome {
                Outcome::Created { .. } => counts.created += 1,
                Outcome::Failed { .. } => counts.failed += 1,
                Outcome::InDoubt { .. } => counts.in_doubt += 1,
                Outcome::Skipped => counts.not_attempted += 1,
            }
        }
        counts
    }
}

/// The effects an apply drives.
pub struct Apply<'a, A> {
    pub api: &'a A,
    pub journal: &'a Journal,
    /// The sinks; they run on a thread of their own during the run.
    pub sinks: Vec<Box<dyn SecretSink>>,
    pub rescue: &'a Rescue,
    pub retry: &'a RetryPolicy,
    /// Most creates in flight at once: the ceiling of the adaptive limit.
    pub parallelism: usize,
    /// Set (by a signal handler) to start no further creates.
    pub interrupt: &'a AtomicBool,
    /// Tells the time each intent records.
    pub clock: &'a dyn Clock,
}

/// What the concurrent creates of one run share. Everything runs on one
/// task, so plain cells suffice; no borrow is held across an await.
struct Shared<'r, 'e> {
    limiter: Limiter,
    progress: RefCell<Progress>,
    /// Delivery slots, as many as the parallelism: a create takes one
    /// before it is sent and gives it back once its secret is in every
    /// sink (or a rescue file), so however slow a sink, at most that many
    /// received secrets wait for it.
    deliveries: Semaphore,
    stopped: RefCell<Option<StopReason>>,
    /// Creates answered in a row with no definite outcome.
    doubt_streak: Cell<usize>,
    events: RefCell<&'r mut dyn FnMut(Event<'_>)>,
    sinks: SinkWorker,
    rescued: RefCell<Vec<(Address, Rescued)>>,
    interrupt: &'e AtomicBool,
    clock: &'e dyn Clock,
}

impl Shared<'_, '_> {
    fn emit(&self, event: Event<'_>) {
        (self.events.borrow_mut())(event);
    }

    fn stop(&self, reason: StopReason) {
        let mut stopped = self.stopped.borrow_mut();
        if stopped.is_none() {
            self.emit(Event::Stopping(&reason));
            *stopped = Some(reason);
        }
    }

    /// Stops the run after too many creates in a row ended in doubt.
    fn count_doubts(&self, result: &Result<CreatedToken, CreateError>) {
        match result {
            Err(CreateError::Ambiguous { detail }) => {
                let streak = self.doubt_streak.get() + 1;
                self.doubt_streak.set(streak);
                if streak >= DOUBT_STREAK_LIMIT {
                    self.stop(StopReason::NoDefiniteAnswers {
                        in_a_row: streak,
                        last: detail.clone(),
                    });
                }
            }
            _ => self.doubt_streak.set(0),
        }
    }

    /// Reports the progress when it is due; `finished` counts a create
    /// done first.
    fn progress(&self, finished: bool) {
        let now = tokio::time::Instant::now().into_std();
        let snapshot = {
            let mut progress = self.progress.borrow_mut();
            if finished {
                progress.complete(now);
            }
            progress.due(self.limiter.limit(), self.limiter.ceiling(), now)
        };
        if let Some(snapshot) = snapshot {
            self.emit(Event::Progress(snapshot));
        }
    }

    fn should_stop(&self) -> bool {
        if self.interrupt.load(Ordering::SeqCst) {
            self.stop(StopReason::Interrupted);
        }
        self.stopped.borrow().is_some()
    }
}

impl<A: TokenApi> Apply<'_, A> {
    /// Creates every address, as many at a time as the adaptive limit
    /// allows (never more than `parallelism`), journaling each step.
    /// Returns each address's outcome in the order given.
    pub async fn run(self, creates: &[Address], events: &mut dyn FnMut(Event<'_>)) -> Report {
        let sinks = match SinkWorker::start(self.sinks, self.rescue.clone()) {
            Ok(sinks) => sinks,
            Err(err) => {
                return Report {
                    outcomes: creates
                        .iter()
                        .map(|a| (a.clone(), Outcome::Skipped))
                        .collect(),
                    rescued: Vec::new(),
                    stopped: Some(StopReason::Sinks(err.to_string())),
                    throttled: 0,
                };
            }
        };
        let shared = Shared {
            limiter: Limiter::new(self.parallelism.max(1)),
            progress: RefCell::new(Progress::new(creates.len())),
            deliveries: Semaphore::new(self.parallelism.max(1)),
            stopped: RefCell::new(None),
            doubt_streak: Cell::new(0),
            events: RefCell::new(events),
            sinks,
            rescued: RefCell::new(Vec::new()),
            interrupt: self.interrupt,
            clock: self.clock,
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; creates.len()];
        let mut in_flight: FuturesUnordered<_> = creates
            .iter()
            .enumerate()
            .map(|(index, address)| {
                let shared = &shared;
                let api = self.api;
                let journal = self.journal;
                let retry = self.retry;
                async move {
                    let outcome = create_one(api, journal, retry, shared, address).await;
                    (index, outcome)
                }
            })
            .collect();
        while let Some((index, outcome)) = in_flight.next().await {
            if outcome != Outcome::Skipped {
                shared.emit(Event::Finished(&creates[index], &outcome));
                shared.progress(true);
            }
            outcomes[index] = Some(outcome);
        }
        drop(in_flight);
        // A signal that came while the last creates were in flight found
        // nothing left to stop, yet the run was interrupted all the same.
        shared.should_stop();
        // After an interrupt every undelivered secret is in a rescue file:
        // a slow sink is not waited for.
        let interrupted = *shared.stopped.borrow() == Some(StopReason::Interrupted);
        shared.sinks.finish(!interrupted);
        Report {
            outcomes: creates
                .iter()
                .cloned()
                .zip(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Skipped)))
                .collect(),
            throttled: shared.limiter.throttled(),
            rescued: shared.rescued.into_inner(),
            stopped: shared.stopped.into_inner(),
        }
    }
}

async fn create_one<A: TokenApi>(
    api: &A,
    journal: &Journal,
    retry: &RetryPolicy,
    shared: &Shared<'_, '_>,
    address: &Address,
) -> Outcome {
    let delivery_slot = shared.deliveries.acquire().await;
    let mut permit = shared.limiter.acquire().await;
    if shared.should_stop() {
        return Outcome::Skipped;
    }
    shared.emit(Event::Creating(address));
    let intent = Record::Intent {
        address: address.clone(),
        at: shared.clock.epoch_seconds(),
    };
    if let Err(err) = journal.append(&intent).await {
        // Without a durable intent the create must not be sent.
        shared.stop(StopReason::Journal(err.to_string()));
        return Outcome::Skipped;
    }
    failpoint::hit("after-intent");
    let result = create_with_retries(api, retry, shared, address, &mut permit).await;
    failpoint::hit("after-response");
    // Reporting the answer gives the slot back: the next call may start
    // while this one's secret and outcome are made durable, which keeps
    // fsyncs off the critical path.
    match &result {
        Ok(_) => permit.succeeded(),
        Err(CreateError::RateLimited { .. }) => {
            permit.throttled();
            drop(permit);
        }
        Err(err @ CreateError::Unauthorized { .. }) => {
            permit.other();
            shared.stop(StopReason::Unauthorized(err.to_string()));
        }
        Err(_) => permit.other(),
    }
    shared.count_doubts(&result);
    shared.progress(false);
    let (outcome, record) = match result {
        Ok(created) => {
            let record = Record::Created {
                address: address.clone(),
                id: created.id,
                created_at: created.created_at,
                fingerprint: created.token.fingerprint(),
            };
            let interrupted = || shared.interrupt.load(Ordering::SeqCst);
            let delivery = shared
                .sinks
                .deliver(
                    address,
                    created.id,
                    created.created_at,
                    created.token,
                    &interrupted,
                )
                .await;
            drop(delivery_slot);
            if let Some(rescued) = &delivery.rescue {
                for err in &delivery.failures {
                    shared.emit(Event::SinkFailed(address, err, rescued));
                }
            }
            match delivery.failures.first() {
                Some(_) if delivery.interrupted => shared.stop(StopReason::Interrupted),
                Some(err) => shared.stop(StopReason::SinkFailed(err.to_string())),
                None => {}
            }
            if let Some(rescue) = delivery.rescue {
                shared.rescued.borrow_mut().push((address.clone(), rescue));
            }
            failpoint::hit("after-sink");
            (Outcome::Created { id: created.id }, record)
        }
        // A reason is kept in the journal and the state: what it quotes of
        // a server or a request is masked here, where it is made.
        Err(CreateError::Ambiguous { detail }) => {
            let reason = crate::redact::redact(&detail).into_owned();
            (
                Outcome::InDoubt {
                    reason: reason.clone(),
                },
                Record::Doubt {
                    address: address.clone(),
                    reason,
                },
            )
        }
        Err(err) => {
            let reason = crate::redact::redact(&err.to_string()).into_owned();
            let record = Record::Failed {
                address: address.clone(),
                reason: reason.clone(),
            };
            (Outcome::Failed { reason }, record)
        }
    };
    if let Err(err) = journal.append(&record).await {
        shared.stop(StopReason::Journal(err.to_string()));
        // The intent stays open, so the fold records the address in doubt
        // (and `resolve` finds a created token's secret in the sink): say
        // the same here.
        return Outcome::InDoubt {
            reason: format!("the outcome could not be journaled: {err}"),
        };
    }
    failpoint::hit("after-outcome");
    outcome
}

async fn create_with_retries<A: TokenApi>(
    api: &A,
    retry: &RetryPolicy,
    shared: &Shared<'_, '_>,
    address: &Address,
    permit: &mut Permit<'_>,
) -> Result<CreatedToken, CreateError> {
    let mut attempt = 0;
    let mut waited = Duration::ZERO;
    loop {
        let result = api.create(address.account_id, &address.name).await;
        // Once the run is stopping, a throttled create is not sent again:
        // 429 means it was not processed, so it ends as failed and the
        // next run creates it.
        if let Err(CreateError::RateLimited { retry_after, .. }) = &result {
            let (retry_after, wait) = (*retry_after, retry.delay(attempt, *retry_after));
            if retry.may_wait(waited, wait) && !shared.should_stop() {
                // 429 means the request was not processed: safe to retry.
                // The controller cuts the limit for the whole run; this
                // create keeps its slot through its own short wait, which
                // paces retries against a per-second limit.
                permit.throttled();
                shared.progress(false);
                waited += wait;
                shared.emit(Event::RateLimited(address, wait));
                if !sleep_unless_stopped(shared, wait).await {
                    return Err(CreateError::RateLimited {
                        retry_after,
                        message: "the run stopped while this create waited to be sent again".into(),
                    });
                }
                permit.resend().await;
                attempt += 1;
                continue;
            }
        }
        return result;
    }
}

/// Waits `wait`, or less when the run is stopping (an interrupt): a CI
/// runner that is being cancelled must not wait out a long backoff.
/// Returns whether the whole wait passed.
async fn sleep_unless_stopped(shared: &Shared<'_, '_>, wait: Duration) -> bool {
    let step = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if shared.should_stop() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return true;
        }
        tokio::time::sleep((deadline - now).min(step)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(2),
            patience: Duration::from_secs(10),
        };
        for retry in 0..6 {
            let full = Duration::from_millis(100 * 2u64.pow(retry)).min(Duration::from_secs(1));
            let wait = policy.delay(retry, None);
            assert!(wait >= full && wait <= full * 3 / 2, "{retry}: {wait:?}");
        }
        // A server's Retry-After is honoured, up to its cap.
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(50))),
            Duration::from_millis(50)
        );
        // `Retry-After: 0` backs off exponentially, as no Retry-After does.
        let wait = policy.delay(3, Some(Duration::ZERO));
        assert!(wait >= Duration::from_millis(800), "{wait:?}");
    }

    #[test]
    fn the_default_backs_off_from_a_second_and_gives_up_by_time() {
        let policy = RetryPolicy::default();
        assert!(policy.delay(0, Some(Duration::ZERO)) >= Duration::from_secs(1));
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(100_000))),
            Duration::from_secs(60)
        );
        // Twelve refusals in a row are waited out: far within patience.
        let twelve: Duration = (0..12).map(|r| policy.delay(r, Some(Duration::ZERO))).sum();
        assert!(policy.may_wait(Duration::ZERO, twelve), "{twelve:?}");
        assert!(!policy.may_wait(Duration::from_secs(590), Duration::from_secs(30)));
    }
}
