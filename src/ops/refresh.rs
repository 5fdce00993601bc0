//! Refresh: asks each token whose secret a sink holds whether it still
//! works (`GET /v2/whoami` with the token itself), and classifies the
//! answers into the findings `model::lifecycle` plans with.
//!
//! Revoked is evidence for acts that cannot be undone (a successor, a
//! token dropped from the state), so it takes more than one answer: a
//! Logz.io-shaped 401 to the token's own whoami, the same again on a second
//! check, and the owner token answering 200 before the first check and
//! after the second. Anything less is unknown. Every wait ends: calls are
//! paced by the adaptive limiter of apply, 429s are waited out within the
//! retry policy's patience, and the whole refresh has a deadline.

use std::time::Duration;

use futures_util::StreamExt;

use super::Ui;
use super::limiter::Limiter;
use super::sinks::{self, Readers};
use crate::api::{CheckError, Owner, OwnerApi, TokenCheck};
use crate::error::{Failure, Hint};
use crate::model::address::Address;
use crate::model::lifecycle::{Finding, Refresh};
use crate::model::state::{Liveness, State};
use crate::ops::create::RetryPolicy;
use crate::secret::{Secret, fingerprint_of};

/// How a refresh paces and bounds its calls.
#[derive(Clone, Copy)]
pub struct Limits<'a> {
    pub retry: &'a RetryPolicy,
    /// Most calls in flight: the ceiling of the adaptive limit.
    pub parallelism: usize,
    /// How long the whole refresh may take; a token that has not answered
    /// by then is unknown.
    pub deadline: Duration,
}

/// The default deadline of a whole refresh.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// The ceiling of calls in flight for a refresh that has no
/// `--parallelism` of its own (as apply's default).
pub const DEFAULT_PARALLELISM: usize = 16;

/// Asks every token of the state (current and superseded) whose secret a
/// reader holds whether it still works. The owner token is checked first,
/// so a wrong region or token fails once, not once per token.
pub fn refresh_state<A: OwnerApi + TokenCheck + Sync>(
    api: &A,
    runtime: &tokio::runtime::Runtime,
    readers: &Readers,
    state: Option<&State>,
    limits: Limits<'_>,
    now: i64,
    ui: &mut dyn Ui,
) -> Result<Refresh, Failure> {
    runtime.block_on(api.whoami()).map_err(|e| {
        Failure::new(format!("refresh: the owner token check failed: {e}")).maybe_hint(e.hint())
    })?;
    let known = known_tokens(state);
    let keys: Vec<(Address, u64)> = known.iter().map(|(a, id, ..)| (a.clone(), *id)).collect();
    // Sinks are read outside the runtime: some read with blocking clients.
    let mut secrets = sinks::readable_secrets(readers, &keys, ui)?;
    let mut probes = Vec::new();
    let mut unreadable = Vec::new();
    for (address, id, fingerprint, current) in known {
        match verified(secrets.remove(&(address.clone(), id)), fingerprint) {
            Some(secret) => probes.push(Probe {
                address,
                id,
                secret,
                current,
            }),
            None => unreadable.push((address, id, current)),
        }
    }
    Ok(runtime.block_on(refresh(api, probes, unreadable, limits, now)))
}

/// Checks again, just before an apply acts on them, the tokens a refresh
/// found revoked (after a person took time to confirm the plan): each must
/// still answer Logz.io's 401 twice, with the owner token alive around
/// it. Fails, before anything is created or dropped, when one does not.
pub fn reconfirm_revoked<A: OwnerApi + TokenCheck + Sync>(
    api: &A,
    runtime: &tokio::runtime::Runtime,
    readers: &Readers,
    state: Option<&State>,
    found: &Refresh,
    limits: Limits<'_>,
    ui: &mut dyn Ui,
) -> Result<(), Failure> {
    let revoked: Vec<&Finding> = found
        .findings()
        .iter()
        .filter(|f| f.status == Liveness::Revoked)
        .collect();
    if revoked.is_empty() {
        return Ok(());
    }
    let again = |finding: &Finding, why: String| {
        Failure::new(format!(
            "token id {} of {} was found revoked, but {why} since; nothing was created or retired",
            finding.id, finding.address
        ))
        .hint("run the apply again: its refresh will see what the token says now")
    };
    runtime
        .block_on(api.whoami())
        .map_err(|e| again(revoked[0], format!("the owner token's check failed ({e})")))?;
    let keys: Vec<(Address, u64)> = revoked.iter().map(|f| (f.address.clone(), f.id)).collect();
    let mut secrets = sinks::readable_secrets(readers, &keys, ui)?;
    let mut probes = Vec::new();
    let fingerprints: rustc_hash::FxHashMap<(Address, u64), Option<&str>> = known_tokens(state)
        .into_iter()
        .map(|(address, id, fingerprint, _)| ((address, id), fingerprint))
        .collect();
    for finding in &revoked {
        let recorded = fingerprints
            .get(&(finding.address.clone(), finding.id))
            .copied()
            .flatten();
        let key = (finding.address.clone(), finding.id);
        let secret = verified(secrets.remove(&key), recorded)
            .ok_or_else(|| again(finding, "its secret can no longer be read".into()))?;
        probes.push(Probe {
            address: finding.address.clone(),
            id: finding.id,
            secret,
            current: finding.current,
        });
    }
    let now = runtime.block_on(refresh(api, probes, Vec::new(), limits, found.at));
    for finding in &revoked {
        let current = now.get(&finding.address, finding.id);
        if current.is_none_or(|f| f.status != Liveness::Revoked) {
            let said = current
                .and_then(|f| f.detail.clone())
                .unwrap_or_else(|| "it answers again".into());
            return Err(again(finding, format!("it no longer does ({said})")));
        }
    }
    Ok(())
}

/// Returns each token of `state` (current and superseded) with the
/// fingerprint its secret had when it was made, and whether it is its
/// address's current token.
pub fn known_tokens(state: Option<&State>) -> Vec<(Address, u64, Option<&str>, bool)> {
    state
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
        .collect()
}

/// Returns the fingerprint `state` recorded for token `id` of `address`.
pub fn recorded_fingerprint<'s>(
    state: Option<&'s State>,
    address: &Address,
    id: u64,
) -> Option<&'s str> {
    known_tokens(state)
        .into_iter()
        .find(|(a, i, ..)| a == address && *i == id)
        .and_then(|(_, _, fingerprint, _)| fingerprint)
}

/// Returns a secret read back from a sink when it is the one the token was
/// made with: its fingerprint matches the one recorded at creation. A
/// secret of a token recorded without one (imported), or of an edited file
/// or an old backup, says nothing about the token: a 401 from it must not
/// retire or replace a live token.
pub fn verified(secret: Option<Secret>, recorded: Option<&str>) -> Option<Secret> {
    secret.filter(|s| recorded.is_some_and(|f| fingerprint_of(s.expose()) == f))
}

/// Classifies a token's own whoami answer.
pub fn classify(account_id: u64, answer: &Result<Owner, CheckError>) -> (Liveness, Option<String>) {
    match answer {
        Ok(owner) if owner.account_id == account_id => (Liveness::Alive, None),
        Ok(owner) => (
            Liveness::Misdelivered,
            Some(format!("it answers for account {}", owner.account_id)),
        ),
        Err(CheckError::Revoked) => (Liveness::Revoked, None),
        Err(CheckError::RateLimited { .. }) => (
            Liveness::Unknown,
            Some("still rate limited (429) after waiting".into()),
        ),
        Err(CheckError::Unknown(detail)) => (Liveness::Unknown, Some(detail.clone())),
    }
}

/// One token to ask about, with its secret.
pub struct Probe {
    pub address: Address,
    pub id: u64,
    pub secret: Secret,
    /// Whether it is its address's current token.
    pub current: bool,
}

/// Asks each token about itself, paced by the adaptive limiter, retrying
/// 429 within the policy's patience, all within the deadline; confirms
/// each 401 with a second check and the owner token's whoami after it.
/// Tokens in `unreadable` get `unverifiable` without a call.
pub async fn refresh<C: TokenCheck + OwnerApi>(
    checker: &C,
    probes: Vec<Probe>,
    unreadable: Vec<(Address, u64, bool)>,
    limits: Limits<'_>,
    now: i64,
) -> Refresh {
    let deadline = tokio::time::Instant::now() + limits.deadline;
    let limiter = Limiter::new(limits.parallelism);
    let answered: Vec<(Probe, Result<Owner, CheckError>)> = futures_util::stream::iter(probes)
        .map(|probe| {
            let limiter = &limiter;
            async move {
                let answer = check(checker, limiter, &probe.secret, limits, deadline).await;
                (probe, answer)
            }
        })
        .buffer_unordered(limits.parallelism.max(1))
        .collect()
        .await;
    let mut findings = Vec::with_capacity(answered.len() + unreadable.len());
    let mut revoked = Vec::new();
    for (probe, answer) in answered {
        let (status, detail) = classify(probe.address.account_id, &answer);
        match status {
            Liveness::Revoked => revoked.push(probe),
            _ => findings.push(finding(probe, status, detail)),
        }
    }
    findings.extend(confirm_revoked(checker, &limiter, revoked, limits, deadline).await);
    findings.extend(
        unreadable
            .into_iter()
            .map(|(address, id, current)| Finding {
                address,
                id,
                status: Liveness::Unverifiable,
                detail: None,
                current,
            }),
    );
    Refresh::new(now, findings)
}

fn finding(probe: Probe, status: Liveness, detail: Option<String>) -> Finding {
    Finding {
        address: probe.address,
        id: probe.id,
        status,
        detail,
        current: probe.current,
    }
}

/// Asks each token that answered 401 a second time, then the owner token:
/// a token is revoked only when both its answers were Logz.io's 401 and
/// the owner token still works after them (a wrong region, a broken proxy
/// or an expired owner token make every token look revoked).
async fn confirm_revoked<C: TokenCheck + OwnerApi>(
    checker: &C,
    limiter: &Limiter,
    revoked: Vec<Probe>,
    limits: Limits<'_>,
    deadline: tokio::time::Instant,
) -> Vec<Finding> {
    if revoked.is_empty() {
        return Vec::new();
    }
    let second: Vec<(Probe, Result<Owner, CheckError>)> = futures_util::stream::iter(revoked)
        .map(|probe| async move {
            let answer = check(checker, limiter, &probe.secret, limits, deadline).await;
            (probe, answer)
        })
        .buffer_unordered(limits.parallelism.max(1))
        .collect()
        .await;
    let owner = match tokio::time::timeout_at(deadline, checker.whoami()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("the owner token's check after it failed ({err})")),
        Err(_) => Err("the owner token's check after it did not answer in time".to_string()),
    };
    second
        .into_iter()
        .map(|(probe, answer)| {
            let (status, detail) = classify(probe.address.account_id, &answer);
            match (status, &owner) {
                (Liveness::Revoked, Ok(())) => finding(probe, Liveness::Revoked, None),
                (Liveness::Revoked, Err(why)) => finding(
                    probe,
                    Liveness::Unknown,
                    Some(format!("it answered 401 twice, but {why}")),
                ),
                (_, _) => {
                    let then = match detail {
                        Some(detail) => format!("{status:?}: {detail}").to_lowercase(),
                        None => format!("{status:?}").to_lowercase(),
                    };
                    finding(
                        probe,
                        Liveness::Unknown,
                        Some(format!(
                            "it answered 401, then {then} on a second check; not taken as revoked"
                        )),
                    )
                }
            }
        })
        .collect()
}

/// Asks one token about itself within the limiter, waiting out 429s
/// within the retry policy, before the deadline.
async fn check<C: TokenCheck>(
    checker: &C,
    limiter: &Limiter,
    secret: &Secret,
    limits: Limits<'_>,
    deadline: tokio::time::Instant,
) -> Result<Owner, CheckError> {
    let work = async {
        let mut permit = limiter.acquire().await;
        let (mut attempt, mut waited) = (0, Duration::ZERO);
        loop {
            match checker.whoami_as(secret).await {
                Err(CheckError::RateLimited { retry_after }) => {
                    permit.throttled();
                    let wait = limits.retry.delay(attempt, retry_after);
                    if !limits.retry.may_wait(waited, wait) {
                        return Err(CheckError::RateLimited { retry_after });
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    attempt += 1;
                    permit.resend().await;
                }
                Ok(owner) => {
                    permit.succeeded();
                    return Ok(owner);
                }
                Err(err) => {
                    permit.other();
                    return Err(err);
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(answer) => answer,
        Err(_) => Err(CheckError::Unknown(format!(
            "no answer within the refresh's deadline ({})",
            humantime::format_duration(limits.deadline)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str) -> Address {
        Address::new(1, name)
    }

    #[test]
    fn classifies_each_answer() {
        let owner = |id| {
            Ok(Owner {
                account_id: id,
                account_name: "x".into(),
            })
        };
        assert_eq!(classify(7, &owner(7)).0, Liveness::Alive);
        assert_eq!(classify(7, &owner(8)).0, Liveness::Misdelivered);
        assert_eq!(classify(7, &Err(CheckError::Revoked)).0, Liveness::Revoked);
        assert_eq!(
            classify(7, &Err(CheckError::RateLimited { retry_after: None })).0,
            Liveness::Unknown
        );
        assert_eq!(
            classify(7, &Err(CheckError::Unknown("503".into()))).0,
            Liveness::Unknown
        );
    }

    /// Answers whoami from a script: the owner's answers and the tokens'
    /// answers, each in order.
    struct Scripted {
        tokens: std::sync::Mutex<Vec<Result<Owner, CheckError>>>,
        owner: std::sync::Mutex<Vec<Result<Owner, crate::api::PreflightError>>>,
    }

    impl Scripted {
        fn new(tokens: Vec<Result<Owner, CheckError>>) -> Self {
            Scripted {
                tokens: std::sync::Mutex::new(tokens),
                owner: std::sync::Mutex::new(Vec::new()),
            }
        }
    }

    impl TokenCheck for Scripted {
        fn whoami_as(
            &self,
            _token: &Secret,
        ) -> impl std::future::Future<Output = Result<Owner, CheckError>> + Send {
            let next = self.tokens.lock().unwrap().remove(0);
            async move { next }
        }
    }

    impl OwnerApi for Scripted {
        fn whoami(
            &self,
        ) -> impl std::future::Future<Output = Result<Owner, crate::api::PreflightError>> + Send
        {
            let mut owner = self.owner.lock().unwrap();
            let next = match owner.is_empty() {
                true => Ok(alive(1000)),
                false => owner.remove(0),
            };
            async move { next }
        }

        async fn associated_accounts(
            &self,
        ) -> Result<Vec<crate::api::AssociatedAccount>, crate::api::PreflightError> {
            Ok(Vec::new())
        }
    }

    fn alive(account_id: u64) -> Owner {
        Owner {
            account_id,
            account_name: "a".into(),
        }
    }

    fn probe(name: &str) -> Probe {
        Probe {
            address: addr(name),
            id: 1,
            secret: Secret::new("s".into()),
            current: true,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_retry_after: Duration::from_millis(1),
            patience: Duration::from_millis(2),
        }
    }

    fn limits(retry: &RetryPolicy) -> Limits<'_> {
        Limits {
            retry,
            parallelism: 1,
            deadline: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_429_is_retried_and_a_storm_ends_unknown_never_revoked() {
        let retry = fast();
        // A positive Retry-After is honoured as given (no jitter): with a
        // patience of 2 ms, exactly two waits.
        let limited = || {
            Err(CheckError::RateLimited {
                retry_after: Some(Duration::from_millis(1)),
            })
        };
        let checker = Scripted::new(vec![limited(), Ok(alive(1))]);
        let found = refresh(&checker, vec![probe("a")], vec![], limits(&retry), 0).await;
        assert_eq!(found.get(&addr("a"), 1).unwrap().status, Liveness::Alive);

        let storm = Scripted::new(vec![limited(), limited(), limited()]);
        let found = refresh(
            &storm,
            vec![probe("b")],
            vec![(addr("c"), 2, true)],
            limits(&retry),
            0,
        )
        .await;
        assert_eq!(found.get(&addr("b"), 1).unwrap().status, Liveness::Unknown);
        assert_eq!(
            found.get(&addr("c"), 2).unwrap().status,
            Liveness::Unverifiable
        );
        assert!(
            storm.tokens.lock().unwrap().is_empty(),
            "exactly three attempts"
        );
    }

    #[tokio::test]
    async fn a_401_counts_only_when_confirmed_with_the_owner_alive_after_it() {
        let retry = fast();
        // 401 twice, owner alive: revoked.
        let twice = Scripted::new(vec![Err(CheckError::Revoked), Err(CheckError::Revoked)]);
        let found = refresh(&twice, vec![probe("a")], vec![], limits(&retry), 0).await;
        assert_eq!(found.get(&addr("a"), 1).unwrap().status, Liveness::Revoked);

        // 401, then 200: unknown, never revoked.
        let flaky = Scripted::new(vec![Err(CheckError::Revoked), Ok(alive(1))]);
        let found = refresh(&flaky, vec![probe("a")], vec![], limits(&retry), 0).await;
        let finding = found.get(&addr("a"), 1).unwrap();
        assert_eq!(finding.status, Liveness::Unknown);
        assert!(
            finding.detail.as_deref().unwrap().contains("second check"),
            "{finding:?}"
        );

        // 401 twice, but the owner token fails after them: unknown.
        let owner_gone = Scripted::new(vec![Err(CheckError::Revoked), Err(CheckError::Revoked)]);
        owner_gone
            .owner
            .lock()
            .unwrap()
            .push(Err(crate::api::PreflightError::Refused {
                call: "whoami",
                status: 401,
                message: "Unauthorized".into(),
            }));
        let found = refresh(&owner_gone, vec![probe("a")], vec![], limits(&retry), 0).await;
        assert_eq!(found.get(&addr("a"), 1).unwrap().status, Liveness::Unknown);
    }

    #[tokio::test]
    async fn the_deadline_ends_a_refresh_whose_tokens_never_answer() {
        struct Hanging;
        impl TokenCheck for Hanging {
            fn whoami_as(
                &self,
                _token: &Secret,
            ) -> impl std::future::Future<Output = Result<Owner, CheckError>> + Send {
                std::future::pending()
            }
        }
        impl OwnerApi for Hanging {
            async fn whoami(&self) -> Result<Owner, crate::api::PreflightError> {
                Ok(alive(1000))
            }
            async fn associated_accounts(
                &self,
            ) -> Result<Vec<crate::api::AssociatedAccount>, crate::api::PreflightError>
            {
                Ok(Vec::new())
            }
        }
        let retry = fast();
        let probes = (0..10).map(|i| probe(&format!("t{i}"))).collect();
        let short = Limits {
            deadline: Duration::from_millis(50),
            ..limits(&retry)
        };
        let found = refresh(&Hanging, probes, vec![], short, 0).await;
        assert_eq!(found.counts().unknown, 10);
        assert!(
            found.findings()[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("deadline (50ms)"),
            "{:?}",
            found.findings()[0]
        );
    }

    #[test]
    fn only_a_secret_with_the_recorded_fingerprint_is_evidence() {
        let secret = || Some(Secret::new("tok-refresh-fp".into()));
        let right = fingerprint_of("tok-refresh-fp");
        assert!(verified(secret(), Some(&right)).is_some());
        assert!(verified(secret(), Some("sha256:0000000000000000")).is_none());
        // An imported token has no fingerprint: nothing can vouch for it.
        assert!(verified(secret(), None).is_none());
    }

    /// Answers whoami after a few milliseconds, and 429 beyond `limit`
    /// calls in flight, as a rate-limited API does.
    struct Shedding {
        limit: usize,
        in_flight: std::sync::atomic::AtomicUsize,
        throttled: std::sync::atomic::AtomicUsize,
    }

    impl TokenCheck for Shedding {
        async fn whoami_as(&self, _token: &Secret) -> Result<Owner, CheckError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.in_flight.fetch_add(1, SeqCst) >= self.limit {
                self.in_flight.fetch_sub(1, SeqCst);
                self.throttled.fetch_add(1, SeqCst);
                return Err(CheckError::RateLimited {
                    retry_after: Some(Duration::from_millis(1)),
                });
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            Ok(alive(1))
        }
    }

    impl OwnerApi for Shedding {
        async fn whoami(&self) -> Result<Owner, crate::api::PreflightError> {
            Ok(alive(1000))
        }
        async fn associated_accounts(
            &self,
        ) -> Result<Vec<crate::api::AssociatedAccount>, crate::api::PreflightError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_refresh_at_the_servers_capacity_adapts_and_verifies_every_token() {
        let server = Shedding {
            limit: 2,
            in_flight: Default::default(),
            throttled: Default::default(),
        };
        let retry = RetryPolicy {
            patience: Duration::from_secs(30),
            ..fast()
        };
        let probes: Vec<Probe> = (0..40).map(|i| probe(&format!("t{i}"))).collect();
        let limits = Limits {
            retry: &retry,
            parallelism: 16,
            deadline: Duration::from_secs(60),
        };
        let found = refresh(&server, probes, vec![], limits, 0).await;
        assert_eq!(found.counts().alive, 40, "{:?}", found.counts());
        // The limit grew past what the server takes, was cut, and held:
        // far fewer refusals than answers.
        let throttled = server.throttled.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..40).contains(&throttled), "{throttled}");
    }
}
