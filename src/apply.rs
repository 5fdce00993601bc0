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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::address::Address;
use crate::api::{CreateError, CreatedToken, TokenApi};
use crate::backend::Journal;
use crate::failpoint;
use crate::journal::Record;
use crate::sink::{Rescue, SecretSink, SinkError, SinkWorker};

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
    Finished(&'a Address, &'a Outcome),
    /// A sink failed; the secret went to the rescue file named, or, when
    /// none is named, could not be saved anywhere.
    SinkFailed(&'a Address, &'a SinkError, Option<&'a std::path::Path>),
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
        }
    }
}

/// The result of the creates of one apply.
#[derive(Debug, Default)]
pub struct Report {
    /// Every planned address with its outcome, in plan order.
    pub outcomes: Vec<(Address, Outcome)>,
    /// Secrets a sink refused, with the rescue file that holds each
    /// (`None`: the rescue file could not be written either).
    pub rescued: Vec<(Address, Option<PathBuf>)>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
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

/// The effects an apply drives.
pub struct Apply<'a, A> {
    pub api: &'a A,
    pub journal: &'a Journal,
    /// The sinks; they run on a thread of their own during the run.
    pub sinks: Vec<Box<dyn SecretSink>>,
    pub rescue: &'a Rescue,
    pub retry: &'a RetryPolicy,
    /// Most creates in flight at once.
    pub parallelism: usize,
    /// Set (by a signal handler) to start no further creates.
    pub interrupt: &'a AtomicBool,
}

/// What the concurrent creates of one run share. Everything runs on one
/// task, so plain cells suffice; no borrow is held across an await.
struct Shared<'r, 'e> {
    limiter: Limiter,
    /// Bounds creates under way, API call or not, to twice the parallelism:
    /// answered creates finish their durable steps while the next calls
    /// run, but slow sinks cannot let answers (and secrets held in memory)
    /// pile up.
    under_way: Semaphore,
    stopped: RefCell<Option<StopReason>>,
    /// Creates answered in a row with no definite outcome.
    doubt_streak: Cell<usize>,
    events: RefCell<&'r mut dyn FnMut(Event<'_>)>,
    sinks: SinkWorker,
    rescued: RefCell<Vec<(Address, Option<PathBuf>)>>,
    interrupt: &'e AtomicBool,
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

    fn should_stop(&self) -> bool {
        if self.interrupt.load(Ordering::SeqCst) {
            self.stop(StopReason::Interrupted);
        }
        self.stopped.borrow().is_some()
    }
}

impl<A: TokenApi> Apply<'_, A> {
    /// Creates every address, at most `parallelism` at a time, journaling
    /// each step. Returns each address's outcome in the order given.
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
                };
            }
        };
        let shared = Shared {
            limiter: Limiter::new(self.parallelism.max(1)),
            under_way: Semaphore::new(2 * self.parallelism.max(1)),
            stopped: RefCell::new(None),
            doubt_streak: Cell::new(0),
            events: RefCell::new(events),
            sinks,
            rescued: RefCell::new(Vec::new()),
            interrupt: self.interrupt,
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
            }
            outcomes[index] = Some(outcome);
        }
        drop(in_flight);
        // A signal that came while the last creates were in flight found
        // nothing left to stop, yet the run was interrupted all the same.
        shared.should_stop();
        shared.sinks.finish();
        Report {
            outcomes: creates
                .iter()
                .cloned()
                .zip(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Skipped)))
                .collect(),
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
    let _under_way = shared.under_way.acquire().await;
    let permit = shared.limiter.acquire().await;
    if shared.should_stop() {
        return Outcome::Skipped;
    }
    shared.emit(Event::Creating(address));
    let intent = Record::Intent {
        address: address.clone(),
        at: now(),
    };
    if let Err(err) = journal.append(&intent).await {
        // Without a durable intent the create must not be sent.
        shared.stop(StopReason::Journal(err.to_string()));
        return Outcome::Skipped;
    }
    failpoint::hit("after-intent");
    let result = create_with_retries(api, retry, shared, address).await;
    failpoint::hit("after-response");
    match &result {
        Ok(_) => shared.limiter.on_success(),
        Err(err @ CreateError::Unauthorized { .. }) => {
            shared.stop(StopReason::Unauthorized(err.to_string()))
        }
        Err(_) => {}
    }
    shared.count_doubts(&result);
    // The API call is over: the next one may start while this one's secret
    // and outcome are made durable, which keeps fsyncs off the critical path.
    drop(permit);
    let (outcome, record) = match result {
        Ok(created) => {
            let record = Record::Created {
                address: address.clone(),
                id: created.id,
                created_at: created.created_at,
                fingerprint: created.token.fingerprint(),
            };
            let delivery = shared
                .sinks
                .deliver(address, created.id, created.created_at, created.token)
                .await;
            for err in &delivery.failures {
                let rescue = delivery.rescue.as_ref().and_then(|p| p.as_deref());
                shared.emit(Event::SinkFailed(address, err, rescue));
            }
            if let Some(rescue) = delivery.rescue {
                shared.rescued.borrow_mut().push((address.clone(), rescue));
            }
            failpoint::hit("after-sink");
            (Outcome::Created { id: created.id }, record)
        }
        Err(CreateError::Ambiguous { detail }) => (
            Outcome::InDoubt {
                reason: detail.clone(),
            },
            Record::Doubt {
                address: address.clone(),
                reason: detail,
            },
        ),
        Err(err) => {
            let reason = err.to_string();
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
) -> Result<CreatedToken, CreateError> {
    let mut attempt = 0;
    loop {
        match api.create(address.account_id, &address.name).await {
            Err(CreateError::RateLimited { retry_after, .. })
                if attempt + 1 < retry.max_attempts =>
            {
                // 429 means the request was not processed: safe to retry.
                shared.limiter.on_rate_limited();
                let wait = retry.delay(attempt, retry_after);
                shared.emit(Event::RateLimited(address, wait));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Limits creates in flight, lowering the limit while the server answers
/// 429 and raising it back after a run of successes.
///
/// A run starts with one create alone and opens up to the full limit only
/// after it succeeds, so a wrong owner token, region or URL costs one
/// request, not `parallelism` of them.
struct Limiter {
    semaphore: Semaphore,
    max: usize,
    limit: Cell<usize>,
    probing: Cell<bool>,
    /// Permits to retire as they come back, after the limit was lowered.
    debt: Cell<usize>,
    successes: Cell<usize>,
}

struct Permit<'a> {
    limiter: &'a Limiter,
    permit: Option<SemaphorePermit<'a>>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let debt = self.limiter.debt.get();
        if debt > 0
            && let Some(permit) = self.permit.take()
        {
            permit.forget();
            self.limiter.debt.set(debt - 1);
        }
    }
}

impl Limiter {
    fn new(max: usize) -> Self {
        Limiter {
            semaphore: Semaphore::new(1),
            max,
            limit: Cell::new(1),
            probing: Cell::new(true),
            debt: Cell::new(0),
            successes: Cell::new(0),
        }
    }

    async fn acquire(&self) -> Permit<'_> {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = self.semaphore.acquire().await.ok();
        Permit {
            limiter: self,
            permit,
        }
    }

    fn on_rate_limited(&self) {
        self.successes.set(0);
        if self.probing.get() {
            return;
        }
        if self.limit.get() > 1 {
            self.limit.set(self.limit.get() - 1);
            self.debt.set(self.debt.get() + 1);
        }
    }

    fn on_success(&self) {
        if self.probing.replace(false) {
            self.limit.set(self.max);
            self.semaphore.add_permits(self.max - 1);
            return;
        }
        let successes = self.successes.get() + 1;
        self.successes.set(successes);
        if successes >= self.limit.get() && self.limit.get() < self.max {
            self.successes.set(0);
            self.limit.set(self.limit.get() + 1);
            if self.debt.get() > 0 {
                self.debt.set(self.debt.get() - 1);
            } else {
                self.semaphore.add_permits(1);
            }
        }
    }
}

/// Returns the time in epoch seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_probes_with_one_then_opens_up() {
        let limiter = Limiter::new(4);
        assert_eq!(limiter.semaphore.available_permits(), 1);
        limiter.on_rate_limited();
        assert_eq!(limiter.semaphore.available_permits(), 1);
        limiter.on_success();
        assert_eq!(limiter.semaphore.available_permits(), 4);
    }

    #[tokio::test]
    async fn limiter_lowers_on_429_and_recovers_after_successes() {
        let limiter = Limiter::new(4);
        limiter.on_success();
        limiter.on_rate_limited();
        limiter.on_rate_limited();
        assert_eq!(limiter.limit.get(), 2);
        // Two permits retire as they come back.
        for _ in 0..4 {
            drop(limiter.acquire().await);
        }
        assert_eq!(limiter.semaphore.available_permits(), 2);
        for _ in 0..2 {
            limiter.on_success();
        }
        assert_eq!(limiter.limit.get(), 3);
        assert_eq!(limiter.semaphore.available_permits(), 3);
        for _ in 0..10 {
            limiter.on_success();
        }
        assert_eq!(limiter.limit.get(), 4);
        assert_eq!(limiter.semaphore.available_permits(), 4);
    }

    #[test]
    fn limiter_never_goes_below_one() {
        let limiter = Limiter::new(2);
        limiter.on_success();
        for _ in 0..5 {
            limiter.on_rate_limited();
        }
        assert_eq!(limiter.limit.get(), 1);
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let policy = RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 0..6 {
            let full = Duration::from_millis(100 * 2u64.pow(retry)).min(Duration::from_secs(1));
            let wait = policy.delay(retry, None);
            assert!(wait >= full / 2 && wait <= full, "{retry}: {wait:?}");
        }
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(5))),
            Duration::from_millis(5)
        );
    }
}
