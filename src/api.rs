//! The Logz.io client: the create endpoint, and how its answers are read.

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use serde::Deserialize;

use crate::secret::Secret;

/// A token the API created.
#[derive(Debug)]
pub struct CreatedToken {
    pub id: u64,
    pub name: String,
    pub token: Secret,
    /// Epoch seconds.
    pub created_at: i64,
}

/// Why a create did not return a token, classified by what it means for
/// whether a token may exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// The server answered and did not create anything (400, 404, 3xx).
    #[error("refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The owner token was rejected (401, 403); no further create can work.
    #[error("owner token rejected ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// The server did not process the request (429); it may be retried.
    #[error("rate limited (429): {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// No connection was made, so the request never left.
    #[error("not sent: {detail}")]
    NotSent { detail: String },
    /// The request may have reached the server, but no definite answer came
    /// back (timeout, reset, 5xx, unreadable success): a token may exist.
    #[error("outcome unknown: {detail}")]
    Ambiguous { detail: String },
}

/// The one API operation the reconciler needs.
pub trait TokenApi {
    /// Creates token `name` in sub-account `account_id`.
    fn create(
        &self,
        account_id: u64,
        name: &str,
    ) -> impl Future<Output = Result<CreatedToken, CreateError>> + Send;
}

/// Timeouts for the HTTP client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// The Logz.io HTTP API.
pub struct HttpApi {
    client: reqwest::Client,
    base_url: String,
    owner_token: Secret,
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client: {0}")]
pub struct ClientSetupError(String);

impl HttpApi {
    /// Returns a client for `base_url` acting with the owner-account token.
    pub fn new(
        base_url: &str,
        owner_token: Secret,
        timeouts: Timeouts,
    ) -> Result<Self, ClientSetupError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("tokenctl/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry X-API-TOKEN to another address.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()
            .map_err(|e| ClientSetupError(e.to_string()))?;
        Ok(HttpApi {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            owner_token,
        })
    }
}

/// The owner account an API token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Owner {
    #[serde(rename = "accountId")]
    pub account_id: u64,
    #[serde(rename = "accountName", default)]
    pub account_name: String,
}

/// An account associated with the owner account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AssociatedAccount {
    #[serde(rename = "accountId")]
    pub account_id: u64,
    #[serde(rename = "accountName", default)]
    pub account_name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// Why a pre-flight call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error("{call} answered {status}: {message}")]
    Refused {
        call: &'static str,
        status: u16,
        message: String,
    },
    #[error("{call} failed: {detail}")]
    Failed { call: &'static str, detail: String },
}

impl crate::error::Hint for PreflightError {
    fn hint(&self) -> Option<String> {
        Some(self.advice())
    }
}

impl PreflightError {
    /// Returns what the user can do about it.
    fn advice(&self) -> String {
        match self {
            PreflightError::Refused { message, .. } if message.to_lowercase().contains("region") => {
                "the owner token belongs to another Logz.io region: set the manifest's `region` to the token's region".into()
            }
            PreflightError::Refused { status: 401 | 403, .. } => {
                "check the owner-account API token (LOGZIO_API_TOKEN or --api-token-file): it must be an API token of the owner account, in the manifest's region".into()
            }
            _ => "check the region or API URL and the network; --skip-preflight skips these checks".into(),
        }
    }
}

#[derive(Deserialize)]
struct CreateResponse {
    id: u64,
    #[serde(default)]
    name: String,
    token: String,
    #[serde(rename = "createdAt")]
    created_at: serde_json::Number,
}

impl HttpApi {
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        call: &'static str,
        path: &str,
    ) -> Result<T, PreflightError> {
        let failed = |detail: String| PreflightError::Failed { call, detail };
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .header(ACCEPT, "application/json")
            .header("X-API-TOKEN", self.owner_token.expose())
            .send()
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| failed(error_chain(&e)))?;
        if status != StatusCode::OK {
            return Err(PreflightError::Refused {
                call,
                status: status.as_u16(),
                message: server_message(&body),
            });
        }
        serde_json::from_str(&body).map_err(|e| failed(format!("unexpected answer: {e}")))
    }
}

/// What the owner token itself can be asked: who it is, and which accounts
/// it manages. Apply's pre-flight and a refresh start here.
pub trait OwnerApi {
    /// Returns the owner account of the API token (`GET /v2/whoami`).
    fn whoami(&self) -> impl Future<Output = Result<Owner, PreflightError>> + Send;

    /// Returns the accounts associated with the owner
    /// (`GET /v1/associated-accounts`).
    fn associated_accounts(
        &self,
    ) -> impl Future<Output = Result<Vec<AssociatedAccount>, PreflightError>> + Send;
}

impl OwnerApi for HttpApi {
    fn whoami(&self) -> impl Future<Output = Result<Owner, PreflightError>> + Send {
        self.get_json("whoami", "/v2/whoami")
    }

    fn associated_accounts(
        &self,
    ) -> impl Future<Output = Result<Vec<AssociatedAccount>, PreflightError>> + Send {
        self.get_json("associated-accounts", "/v1/associated-accounts")
    }
}

/// Why a token's own whoami call gave no account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// 401: the token no longer works.
    #[error("revoked (401)")]
    Revoked,
    /// 429: not processed; may be retried.
    #[error("rate limited (429)")]
    RateLimited { retry_after: Option<Duration> },
    /// Anything else: no conclusion can be drawn.
    #[error("{0}")]
    Unknown(String),
}

/// Asks the API who a token belongs to, with the token itself.
pub trait TokenCheck {
    /// Calls `GET /v2/whoami` with `token`.
    fn whoami_as(&self, token: &Secret) -> impl Future<Output = Result<Owner, CheckError>> + Send;
}

impl TokenCheck for HttpApi {
    fn whoami_as(&self, token: &Secret) -> impl Future<Output = Result<Owner, CheckError>> + Send {
        let request = self
            .client
            .get(format!("{}/v2/whoami", self.base_url))
            .header(ACCEPT, "application/json")
            .header("X-API-TOKEN", token.expose());
        async move {
            // The token is never part of an error: only statuses and the
            // (sanitised) server message are.
            let response = request
                .send()
                .await
                .map_err(|e| CheckError::Unknown(format!("no answer: {}", error_kind(&e))))?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            match status.as_u16() {
                200 => serde_json::from_str(&body).map_err(|_| {
                    CheckError::Unknown("the server answered 200 with an unexpected body".into())
                }),
                401 => Err(CheckError::Revoked),
                429 => Err(CheckError::RateLimited { retry_after }),
                code => Err(CheckError::Unknown(format!(
                    "the server answered {code}: {}",
                    server_message(&body)
                ))),
            }
        }
    }
}

/// Names what went wrong with a request without quoting it.
fn error_kind(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_builder() {
        "the token cannot be sent in a header"
    } else {
        "the request failed"
    }
}

/// Returns the accounts of `wanted` that are not sub-accounts in `associated`.
pub fn not_sub_accounts(wanted: &[u64], associated: &[AssociatedAccount]) -> Vec<u64> {
    let subs: std::collections::HashSet<u64> = associated
        .iter()
        .filter(|a| a.kind == "SUB_ACCOUNT")
        .map(|a| a.account_id)
        .collect();
    let mut missing: Vec<u64> = wanted
        .iter()
        .copied()
        .filter(|id| !subs.contains(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

impl TokenApi for HttpApi {
    fn create(
        &self,
        account_id: u64,
        name: &str,
    ) -> impl Future<Output = Result<CreatedToken, CreateError>> + Send {
        let url = format!("{}/v1/api-tokens/sub-account", self.base_url);
        let request = self
            .client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header("X-API-TOKEN", self.owner_token.expose())
            .json(&serde_json::json!({ "name": name, "accountId": account_id }));
        async move {
            let response = request.send().await.map_err(|err| send_error(&url, &err))?;
            let status = response.status();
            // The API documents 200; any 2xx that carries a create answer
            // made a token, and its secret must not be dropped.
            if status.is_success() {
                return read_created(response, status).await;
            }
            let retry_after = retry_after(response.headers());
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.text().await.unwrap_or_default();
            Err(classify(status, &body, retry_after, location))
        }
    }
}

fn send_error(url: &str, err: &reqwest::Error) -> CreateError {
    // A request that could not be built, or whose connection was never
    // made, provably never left; anything later is ambiguous.
    if err.is_builder() {
        CreateError::NotSent {
            detail: format!("the request could not be built: {}", error_chain(err)),
        }
    } else if err.is_connect() {
        CreateError::NotSent {
            detail: format!("could not connect to {url}: {}", error_chain(err)),
        }
    } else if err.is_timeout() {
        CreateError::Ambiguous {
            detail: "no answer before the timeout".into(),
        }
    } else {
        CreateError::Ambiguous {
            detail: format!("the request failed after it was sent: {}", error_chain(err)),
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_created(
    response: reqwest::Response,
    status: StatusCode,
) -> Result<CreatedToken, CreateError> {
    // The body holds the secret: errors below must never quote it.
    let code = status.as_u16();
    let unreadable = |why: &str| CreateError::Ambiguous {
        detail: format!("the server answered {code} but {why}; a token may have been created"),
    };
    let bytes = response
        .bytes()
        .await
        .map_err(|_| unreadable("the body could not be read"))?;
    let body: CreateResponse = serde_json::from_slice(&bytes)
        .map_err(|_| unreadable("the body is not the expected JSON"))?;
    let created_at = epoch_seconds(&body.created_at)
        .ok_or_else(|| unreadable("createdAt is not a time in seconds"))?;
    if body.token.trim().is_empty() {
        // Recording it as created would keep a token nobody can use.
        return Err(unreadable("its token is empty"));
    }
    Ok(CreatedToken {
        id: body.id,
        name: body.name,
        token: Secret::new(body.token),
        created_at,
    })
}

/// Reads epoch seconds given as an integer or a decimal (`1621858311.000000000`).
fn epoch_seconds(number: &serde_json::Number) -> Option<i64> {
    if let Some(seconds) = number.as_i64() {
        return Some(seconds);
    }
    let seconds = number.as_f64()?;
    (seconds.is_finite() && seconds.abs() < 1e15).then(|| seconds.floor() as i64)
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// Classifies a non-200 answer.
fn classify(
    status: StatusCode,
    body: &str,
    retry_after: Option<Duration>,
    location: Option<String>,
) -> CreateError {
    let message = server_message(body);
    let code = status.as_u16();
    match code {
        400 | 404 => CreateError::Refused {
            status: code,
            message,
        },
        401 | 403 => CreateError::Unauthorized {
            status: code,
            message,
        },
        429 => CreateError::RateLimited {
            retry_after,
            message,
        },
        // The server answered the POST with a redirect; it may have
        // processed it first (303 See Other), so a token may exist.
        300..=399 => CreateError::Ambiguous {
            detail: format!(
                "the server answered {code}, a redirect to {}; redirects are not followed, check the API URL",
                location.as_deref().unwrap_or("another address")
            ),
        },
        _ => CreateError::Ambiguous {
            detail: format!("the server answered {code}: {message}"),
        },
    }
}

/// Extracts the server's message from an error body: JSON with `message`
/// (plus `code`, `errorCode`, `requestId` when present), or plain text.
pub fn server_message(body: &str) -> String {
    const LIMIT: usize = 300;
    // A gateway may echo an upstream create answer; its token must not
    // reach any output, journal or state.
    if looks_like_it_carries_a_token(body) {
        return "(the body was withheld: it looks like it carries a token)".into();
    }
    let text = raw_server_message(body);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

/// Tells whether an error body has a `token` field anywhere, as a create
/// answer has, whether as JSON or as JSON quoted inside a message.
fn looks_like_it_carries_a_token(body: &str) -> bool {
    // `token` as a key or a tag: `"token": …`, `\"token\":`, `token=…`,
    // `<token>…`, with any quoting or escaping in between.
    let lower = body.to_ascii_lowercase();
    lower.match_indices("token").any(|(at, word)| {
        let before = lower[..at].chars().next_back();
        let starts_word = before.is_none_or(|c| !c.is_ascii_alphanumeric());
        let after = lower[at + word.len()..]
            .chars()
            .find(|c| !matches!(c, '"' | '\'' | '\\' | ' '));
        starts_word && matches!(after, Some(':' | '=' | '>'))
    })
}

fn raw_server_message(body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
        code: Option<serde_json::Value>,
        #[serde(rename = "errorCode")]
        error_code: Option<serde_json::Value>,
        #[serde(rename = "requestId")]
        request_id: Option<String>,
    }
    let trimmed = body.trim();
    if let Ok(parsed) = serde_json::from_str::<ErrorBody>(trimmed) {
        let mut text = parsed.message.unwrap_or_else(|| "(no message)".into());
        let code = parsed.error_code.or(parsed.code);
        if let Some(code) = code {
            let code = code
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| code.to_string());
            text.push_str(&format!(" [code {code}]"));
        }
        if let Some(id) = parsed.request_id {
            text.push_str(&format!(" [request {id}]"));
        }
        return text;
    }
    if trimmed.is_empty() {
        return "(empty body)".into();
    }
    trimmed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integer_and_decimal_seconds() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(epoch_seconds(&n("1621858311")), Some(1621858311));
        assert_eq!(epoch_seconds(&n("1621858311.000000000")), Some(1621858311));
        assert_eq!(epoch_seconds(&n("1621858311.9")), Some(1621858311));
        assert_eq!(epoch_seconds(&n("1e300")), None);
    }

    #[test]
    fn server_messages_are_read_leniently() {
        assert_eq!(
            server_message(r#"{"message":"no such account"}"#),
            "no such account"
        );
        assert_eq!(
            server_message(r#"{"code":"E1","message":"bad"}"#),
            "bad [code E1]"
        );
        assert_eq!(
            server_message(r#"{"errorCode":"X","message":"m","requestId":"r-1"}"#),
            "m [code X] [request r-1]"
        );
        assert_eq!(server_message("Too Many Requests\n"), "Too Many Requests");
        assert_eq!(server_message(""), "(empty body)");
        assert_eq!(server_message(&"x".repeat(400)).chars().count(), 301);
    }

    #[test]
    fn server_messages_never_carry_a_token_or_control_characters() {
        let echoed = r#"{"id":7,"name":"a","token":"s3cr3t-value","createdAt":1}"#;
        assert!(!server_message(echoed).contains("s3cr3t"));
        let quoted = r#"{"message":"upstream said {\"token\": \"s3cr3t-value\"}"}"#;
        for shape in [
            r#"upstream: {\\\"token\\\":\\\"s3cr3t-value\\\"}"#,
            "token=s3cr3t-value&id=1",
            "<answer><token>s3cr3t-value</token></answer>",
            "Token : s3cr3t-value",
        ] {
            assert!(!server_message(shape).contains("s3cr3t"), "{shape}");
        }
        // Words that merely contain it, or mention it, are shown.
        assert_eq!(server_message("invalid API token"), "invalid API token");
        assert_eq!(server_message("tokens: 3 left"), "tokens: 3 left");
        assert!(
            !server_message(quoted).contains("s3cr3t"),
            "{}",
            server_message(quoted)
        );
        let long = format!(r#"{{"message":"{}"}}"#, "m".repeat(5000));
        assert_eq!(server_message(&long).chars().count(), 301);
        assert_eq!(
            server_message("line one\nline two\u{1b}[31m"),
            "line one line two [31m"
        );
    }

    #[test]
    fn only_sub_accounts_pass_the_pre_flight() {
        let account = |id: u64, kind: &str| AssociatedAccount {
            account_id: id,
            account_name: format!("a{id}"),
            kind: kind.into(),
        };
        let associated = [
            account(1, "OWNER_ACCOUNT"),
            account(2, "SUB_ACCOUNT"),
            account(3, "TIME_BASED_ACCOUNT"),
        ];
        assert_eq!(not_sub_accounts(&[2, 2], &associated), Vec::<u64>::new());
        assert_eq!(not_sub_accounts(&[3, 1, 2, 9], &associated), [1, 3, 9]);
    }

    #[test]
    fn pre_flight_hints_name_the_likely_cause() {
        let refused = |status, message: &str| PreflightError::Refused {
            call: "whoami",
            status,
            message: message.into(),
        };
        assert!(
            refused(
                403,
                "Account region us differs from current server region eu"
            )
            .advice()
            .contains("region")
        );
        assert!(
            refused(401, "Unauthorized")
                .advice()
                .contains("LOGZIO_API_TOKEN")
        );
    }

    #[test]
    fn statuses_are_classified_by_what_they_mean() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), "{}", None, None);
        assert!(matches!(c(400), CreateError::Refused { status: 400, .. }));
        assert!(matches!(c(404), CreateError::Refused { status: 404, .. }));
        assert!(matches!(c(401), CreateError::Unauthorized { .. }));
        assert!(matches!(c(403), CreateError::Unauthorized { .. }));
        assert!(matches!(c(429), CreateError::RateLimited { .. }));
        assert!(matches!(c(302), CreateError::Ambiguous { .. }));
        for code in [408, 409, 500, 502, 503, 504] {
            assert!(matches!(c(code), CreateError::Ambiguous { .. }), "{code}");
        }
    }
}
