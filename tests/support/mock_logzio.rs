//! A stand-in for the Logz.io API: the create endpoint, answering like the
//! real one and remembering every token it issued.
//!
//! It can shed load as a rate-limited API does, with a plain 429 answered at
//! once: by concurrency (creates beyond L in flight) or by rate (a token
//! bucket). wiremock applies a response's delay *after* the responder ran,
//! so the responder cannot see requests leave; instead it counts a create
//! as in flight from its arrival until arrival + its delay, which is when
//! wiremock starts writing the answer. A client can only send its next
//! request after reading that answer, so the count never holds a request
//! the client already saw answered (no false 429 from the bookkeeping).

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokenctl::time::{Clock, SystemClock};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The owner-account token the mock accepts.
pub const OWNER_TOKEN: &str = "owner-token-for-tests";

/// The create endpoint's path.
pub const CREATE_PATH: &str = "/v1/api-tokens/sub-account";

/// The owner account the mock's owner token belongs to.
pub const OWNER_ACCOUNT: u64 = 1000;

/// Sub-accounts of the owner, as `GET /v1/associated-accounts` lists them.
pub const SUB_ACCOUNTS: [u64; 12] = [1, 2, 3, 7, 9, 100, 101, 102, 160343, 160344, 160345, 999];

/// A token the mock created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub id: u64,
    pub account_id: u64,
    pub name: String,
    pub token: String,
}

/// The mock server and what it issued.
pub struct MockLogzio {
    pub server: MockServer,
    issued: Arc<Mutex<Vec<Issued>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
    throttled: Arc<AtomicU64>,
    clock_offset: Arc<AtomicI64>,
}

/// A token bucket: `per_second` creates a second, at most `burst` at once.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// A heavy tail: every `every`-th create accepted is answered after
/// `delay` instead of the usual delay.
#[derive(Clone, Copy, Debug)]
pub struct Tail {
    pub every: u64,
    pub delay: Duration,
}

/// How the mock answers creates.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Accounts that answer 404, as an unknown sub-account does.
    pub missing_accounts: HashSet<u64>,
    /// Wait before answering.
    pub delay: Duration,
    /// A message that whoami answers with 403, e.g. a region mismatch.
    pub whoami_refusal: Option<String>,
    /// Sub-accounts to list instead of `SUB_ACCOUNTS`.
    pub sub_accounts: Option<Vec<u64>>,
    /// Answer 429 to a create arriving while this many are in flight.
    pub shed_concurrency: Option<usize>,
    /// Answer 429 to creates beyond this rate.
    pub shed_rate: Option<RateLimit>,
    /// Answer some creates much later than the others.
    pub tail: Option<Tail>,
}

fn owner_ok(request: &Request) -> bool {
    request
        .headers
        .get("X-API-TOKEN")
        .and_then(|v| v.to_str().ok())
        == Some(OWNER_TOKEN)
}

fn unauthorized() -> ResponseTemplate {
    ResponseTemplate::new(401).set_body_json(
        serde_json::json!({"message": "Unauthorized: missing or insufficient credentials"}),
    )
}

/// Answers whoami for the owner token and for every token the mock
/// issued, as the API does: 200 with the token's account while it lives,
/// 401 once it is revoked.
struct WhoamiResponder {
    refusal: Option<String>,
    issued: Arc<Mutex<Vec<Issued>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
}

impl Respond for WhoamiResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(message) = &self.refusal {
            return ResponseTemplate::new(403)
                .set_body_json(serde_json::json!({ "message": message }));
        }
        if owner_ok(request) {
            return ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"accountName": "owner", "accountId": OWNER_ACCOUNT}),
            );
        }
        let token = request
            .headers
            .get("X-API-TOKEN")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if self.revoked.lock().unwrap().contains(token) {
            return unauthorized();
        }
        let issued = self.issued.lock().unwrap();
        match issued.iter().find(|i| i.token == token) {
            Some(i) => ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"accountName": format!("sub-{}", i.account_id), "accountId": i.account_id}),
            ),
            None => unauthorized(),
        }
    }
}

struct AccountsResponder(Vec<u64>);

impl Respond for AccountsResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if !owner_ok(request) {
            return unauthorized();
        }
        let mut accounts = vec![serde_json::json!({
            "accountId": OWNER_ACCOUNT, "accountName": "owner", "type": "OWNER_ACCOUNT"
        })];
        accounts.extend(self.0.iter().map(|id| {
            serde_json::json!({"accountId": id, "accountName": format!("sub-{id}"), "type": "SUB_ACCOUNT"})
        }));
        ResponseTemplate::new(200).set_body_json(accounts)
    }
}

struct CreateResponder {
    next_id: AtomicU64,
    issued: Arc<Mutex<Vec<Issued>>>,
    behaviour: Behaviour,
    load: Mutex<Load>,
    throttled: Arc<AtomicU64>,
    /// How far the server's clock is ahead of this machine's, in seconds.
    clock_offset: Arc<AtomicI64>,
}

/// What the create endpoint is serving, for shedding.
struct Load {
    /// When each accepted create in flight will be answered.
    in_flight: Vec<Instant>,
    /// Tokens in the bucket, and when it was last filled.
    tokens: f64,
    filled: Instant,
    accepted: u64,
}

impl CreateResponder {
    /// Returns `None` when a create arriving now is beyond a limit, else
    /// the delay to answer it after (it counts as in flight until then).
    fn admit(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut load = self.load.lock().unwrap();
        load.in_flight.retain(|answered| *answered > now);
        if let Some(limit) = self.behaviour.shed_concurrency
            && load.in_flight.len() >= limit
        {
            return None;
        }
        if let Some(rate) = self.behaviour.shed_rate {
            let refill = now.duration_since(load.filled).as_secs_f64() * rate.per_second;
            load.tokens = (load.tokens + refill).min(rate.burst);
            load.filled = now;
            if load.tokens < 1.0 {
                return None;
            }
            load.tokens -= 1.0;
        }
        load.accepted += 1;
        let delay = match self.behaviour.tail {
            Some(tail) if load.accepted.is_multiple_of(tail.every) => tail.delay,
            _ => self.behaviour.delay,
        };
        load.in_flight.push(now + delay);
        Some(delay)
    }
}

impl Respond for CreateResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let owner = request
            .headers
            .get("X-API-TOKEN")
            .and_then(|v| v.to_str().ok());
        if owner != Some(OWNER_TOKEN) {
            return ResponseTemplate::new(401).set_body_json(
                serde_json::json!({"message": "Unauthorized: missing or insufficient credentials"}),
            );
        }
        let body: serde_json::Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(_) => {
                return ResponseTemplate::new(400)
                    .set_body_json(serde_json::json!({"message": "Malformed request body"}));
            }
        };
        let (Some(name), Some(account_id)) = (body["name"].as_str(), body["accountId"].as_u64())
        else {
            return ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"message": "name and accountId are required"}));
        };
        if self.behaviour.missing_accounts.contains(&account_id) {
            return ResponseTemplate::new(404).set_body_json(
                serde_json::json!({"message": format!("Account {account_id} not found")}),
            );
        }
        let Some(delay) = self.admit() else {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(429).set_body_string("Too Many Requests");
        };
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let token = format!("mock-secret-{}", uuid::Uuid::new_v4());
        self.issued.lock().unwrap().push(Issued {
            id,
            account_id,
            name: name.to_string(),
            token: token.clone(),
        });
        ResponseTemplate::new(200)
            .set_delay(delay)
            .set_body_json(serde_json::json!({
                "id": id,
                "name": name,
                "token": token,
                // The server's clock, as the real API's createdAt is.
                "createdAt": SystemClock.epoch_seconds() + self.clock_offset.load(Ordering::SeqCst),
            }))
    }
}

impl MockLogzio {
    /// Starts a mock that creates every token it is asked for.
    pub async fn start() -> Self {
        Self::start_with(Behaviour::default()).await
    }

    /// Starts a mock that answers every call after `delay`.
    pub async fn answering_after(delay: Duration) -> Self {
        MockLogzio::start_with(Behaviour {
            delay,
            ..Behaviour::default()
        })
        .await
    }

    /// Starts a mock with the given behaviour.
    pub async fn start_with(behaviour: Behaviour) -> Self {
        let server = MockServer::start().await;
        let issued = Arc::new(Mutex::new(Vec::new()));
        let revoked = Arc::new(Mutex::new(HashSet::new()));
        let throttled = Arc::new(AtomicU64::new(0));
        let clock_offset = Arc::new(AtomicI64::new(0));
        Mock::given(method("GET"))
            .and(path("/v2/whoami"))
            .respond_with(WhoamiResponder {
                refusal: behaviour.whoami_refusal.clone(),
                issued: issued.clone(),
                revoked: revoked.clone(),
            })
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/associated-accounts"))
            .respond_with(AccountsResponder(
                behaviour
                    .sub_accounts
                    .clone()
                    .unwrap_or_else(|| SUB_ACCOUNTS.to_vec()),
            ))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(CREATE_PATH))
            .respond_with(CreateResponder {
                next_id: AtomicU64::new(5001),
                issued: issued.clone(),
                load: Mutex::new(Load {
                    in_flight: Vec::new(),
                    tokens: behaviour.shed_rate.map_or(0.0, |r| r.burst),
                    filled: Instant::now(),
                    accepted: 0,
                }),
                behaviour,
                throttled: throttled.clone(),
                clock_offset: clock_offset.clone(),
            })
            .mount(&server)
            .await;
        MockLogzio {
            server,
            issued,
            revoked,
            throttled,
            clock_offset,
        }
    }

    /// Sets the server's clock `seconds` ahead of this machine's (behind
    /// when negative): the tokens it makes from then on say so in their
    /// createdAt.
    pub fn set_clock_offset(&self, seconds: i64) {
        self.clock_offset.store(seconds, Ordering::SeqCst);
    }

    /// Revokes an issued token, as a person does in the UI.
    pub fn revoke(&self, token: &str) {
        self.revoked.lock().unwrap().insert(token.to_string());
    }

    /// Returns how many whoami calls were made with tokens other than the
    /// owner's.
    pub async fn token_whoami_calls(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/v2/whoami" && !owner_ok(r))
            .count()
    }

    /// Answers the next `times` creates with `template` instead (for all
    /// accounts, or only for `account`), then goes back to creating.
    pub async fn answer_first(&self, times: u64, account: Option<u64>, template: ResponseTemplate) {
        let mock = Mock::given(method("POST")).and(path(CREATE_PATH));
        let mock = match account {
            Some(account) => mock.and(body_partial_json(
                serde_json::json!({ "accountId": account }),
            )),
            None => mock,
        };
        mock.respond_with(template)
            .up_to_n_times(times)
            .with_priority(1)
            .mount(&self.server)
            .await;
    }

    /// Returns how many creates were sent for `address` (`accountId/name`).
    pub async fn requests_for(&self, address: &str) -> usize {
        self.create_requests()
            .await
            .iter()
            .filter(|a| a.as_str() == address)
            .count()
    }

    /// Waits (up to 30 s) until `count` create requests have arrived.
    pub async fn wait_for_requests(&self, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.create_requests().await.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the mock did not receive {count} creates in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Returns the base URL to point tokenctl at.
    pub fn url(&self) -> String {
        self.server.uri()
    }

    /// Returns how many creates were shed with a 429 (by `shed_concurrency`
    /// or `shed_rate`; not those of `answer_first`).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::SeqCst)
    }

    /// Returns every token issued so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().unwrap().clone()
    }

    /// Returns the tokens issued for `address` (`accountId/name`), oldest
    /// first.
    pub fn issued_for(&self, address: &str) -> Vec<Issued> {
        self.issued()
            .into_iter()
            .filter(|i| format!("{}/{}", i.account_id, i.name) == address)
            .collect()
    }

    /// Returns every secret issued so far, for scans of what tokenctl wrote.
    pub fn secrets(&self) -> Vec<String> {
        self.issued().into_iter().map(|i| i.token).collect()
    }

    /// Returns `accountId/name` of every create request received, in order.
    pub async fn create_requests(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == CREATE_PATH)
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                format!(
                    "{}/{}",
                    body["accountId"],
                    body["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}
