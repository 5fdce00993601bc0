//! The HTTP client: each call, its headers and timeouts, and its errors
//! named without quoting the request (which carries a token).

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use serde::Deserialize;

use super::classify::{classify, server_message};
use super::{
    AssociatedAccount, CheckError, CreateError, CreatedToken, Owner, OwnerApi, PreflightError,
    Timeouts, TokenApi, TokenCheck,
};
use crate::secret::Secret;

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
        proxies: &crate::net::Proxies,
    ) -> Result<Self, ClientSetupError> {
        let client = proxies
            .client_builder()
            .map_err(|e| ClientSetupError(e.to_string()))?
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
                // Only Logz.io's own refusal says the token is revoked; a
                // proxy's or a gateway's 401 page says nothing about it.
                401 if is_logzio_error(&body) => Err(CheckError::Revoked),
                401 => Err(CheckError::Unknown(
                    "the server answered 401 without Logz.io's error body (a proxy or a gateway?); not taken as revoked".into(),
                )),
                429 => Err(CheckError::RateLimited { retry_after }),
                code => Err(CheckError::Unknown(format!(
                    "the server answered {code}: {}",
                    server_message(&body)
                ))),
            }
        }
    }
}

/// Tells whether an error body has Logz.io's shape: a JSON object with a
/// `message` string.
fn is_logzio_error(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body.trim())
        .is_ok_and(|v| v.get("message").is_some_and(serde_json::Value::is_string))
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
            detail: format!(
                "could not connect to {}: {}",
                crate::redact::url_for_display(url),
                crate::redact::redact(&error_chain(err))
            ),
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
pub(super) fn epoch_seconds(number: &serde_json::Number) -> Option<i64> {
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
