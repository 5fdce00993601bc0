//! The Logz.io API as tokenctl uses it: the calls behind small traits
//! (`TokenApi` to create, `TokenCheck` to ask a token about itself,
//! `OwnerApi` for the pre-flight), the HTTP client that makes them
//! (`http`), and how an answer is read (`classify`).

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

mod classify;
mod http;

pub use classify::server_message;
pub use http::{ClientSetupError, HttpApi};

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

#[cfg(test)]
mod tests {
    use super::*;
    use classify::classify;
    use http::epoch_seconds;
    use reqwest::StatusCode;

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
