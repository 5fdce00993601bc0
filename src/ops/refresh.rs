//! Refresh: asks each token whose secret a sink holds whether it still
//! works (`GET /v2/whoami` with the token itself), and classifies the
//! answers into the findings `model::lifecycle` plans with.

use std::time::Duration;

use futures_util::StreamExt;

use super::Ui;
use super::sinks::{self, Readers};
use crate::api::{CheckError, Owner, OwnerApi, TokenCheck};
use crate::error::{Failure, Hint};
use crate::model::address::Address;
use crate::model::lifecycle::{Finding, Refresh};
use crate::model::state::{Liveness, State};
use crate::ops::create::RetryPolicy;
use crate::secret::{Secret, fingerprint_of};

/// Refresh calls in flight at once: the API rate-limits per account.
const CONCURRENCY: usize = 4;

/// Asks every token of the state (current and superseded) whose secret a
/// reader holds whether it still works. The owner token is checked first,
/// so a wrong region or token fails once, not once per token.
pub fn refresh_state<A: OwnerApi + TokenCheck + Sync>(
    api: &A,
    runtime: &tokio::runtime::Runtime,
    readers: &Readers,
    state: Option<&State>,
    retry: &RetryPolicy,
    now: i64,
    ui: &mut dyn Ui,
) -> Result<Refresh, Failure> {
    runtime.block_on(api.whoami()).map_err(|e| {
        Failure::new(format!("refresh: the owner token check failed: {e}")).maybe_hint(e.hint())
    })?;
    // Each token with the fingerprint its secret had when it was made, and
    // whether it is the address's current token.
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
    // Sinks are read outside the runtime: some read with blocking clients.
    let mut secrets = sinks::readable_secrets(readers, &keys, ui)?;
    let mut probes = Vec::new();
    let mut unreadable = Vec::new();
    for (address, id, fingerprint, current) in known {
        // A secret that is not the one the token was made with (an edited
        // file, a bad restore) says nothing about the token: a 401 from it
        // must not retire or replace a live token.
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
    Ok(runtime.block_on(refresh(api, probes, unreadable, CONCURRENCY, retry, now)))
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
            Some("still rate limited (429) after retries".into()),
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

/// Asks each token about itself, `concurrency` at a time, retrying 429 as
/// creates do. Tokens in `unreadable` get `unverifiable` without a call.
pub async fn refresh<C: TokenCheck>(
    checker: &C,
    probes: Vec<Probe>,
    unreadable: Vec<(Address, u64, bool)>,
    concurrency: usize,
    retry: &RetryPolicy,
    now: i64,
) -> Refresh {
    let mut findings: Vec<Finding> = futures_util::stream::iter(probes)
        .map(|probe| async move {
            let answer = check_with_retries(checker, &probe.secret, retry).await;
            let (status, detail) = classify(probe.address.account_id, &answer);
            Finding {
                address: probe.address,
                id: probe.id,
                status,
                detail,
                current: probe.current,
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
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

async fn check_with_retries<C: TokenCheck>(
    checker: &C,
    secret: &Secret,
    retry: &RetryPolicy,
) -> Result<Owner, CheckError> {
    let mut attempt = 0;
    loop {
        match checker.whoami_as(secret).await {
            Err(CheckError::RateLimited { retry_after }) if attempt + 1 < retry.max_attempts => {
                // A zero Retry-After must not turn into a tight loop.
                let wait = retry
                    .delay(attempt, retry_after)
                    .max(Duration::from_millis(50));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            answer => return answer,
        }
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

    struct Scripted(std::sync::Mutex<Vec<Result<Owner, CheckError>>>);

    impl TokenCheck for Scripted {
        fn whoami_as(
            &self,
            _token: &Secret,
        ) -> impl std::future::Future<Output = Result<Owner, CheckError>> + Send {
            let next = self.0.lock().unwrap().remove(0);
            async move { next }
        }
    }

    #[tokio::test]
    async fn a_429_is_retried_and_a_storm_ends_unknown_never_revoked() {
        let retry = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        };
        let limited = || {
            Err(CheckError::RateLimited {
                retry_after: Some(Duration::ZERO),
            })
        };
        let checker = Scripted(std::sync::Mutex::new(vec![
            limited(),
            Ok(Owner {
                account_id: 1,
                account_name: "a".into(),
            }),
        ]));
        let probe = |name: &str| Probe {
            address: addr(name),
            id: 1,
            secret: Secret::new("s".into()),
            current: true,
        };
        let found = refresh(&checker, vec![probe("a")], vec![], 1, &retry, 0).await;
        assert_eq!(found.get(&addr("a"), 1).unwrap().status, Liveness::Alive);

        let storm = Scripted(std::sync::Mutex::new(vec![limited(), limited(), limited()]));
        let found = refresh(
            &storm,
            vec![probe("b")],
            vec![(addr("c"), 2, true)],
            1,
            &retry,
            0,
        )
        .await;
        assert_eq!(found.get(&addr("b"), 1).unwrap().status, Liveness::Unknown);
        assert_eq!(
            found.get(&addr("c"), 2).unwrap().status,
            Liveness::Unverifiable
        );
        assert!(storm.0.lock().unwrap().is_empty(), "exactly three attempts");
    }
}
