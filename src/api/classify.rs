//! How an answer is read: what a status means for whether a token may
//! exist, and the server's message, bounded, cleaned and never carrying a
//! token.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use super::CreateError;

/// Classifies a non-200 answer.
pub(super) fn classify(
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
    // Credentials the server echoes (a header, the request body) are
    // masked before the message is cut, so no part of one survives.
    let text = crate::redact::redact(&raw_server_message(body)).into_owned();
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
