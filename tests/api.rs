//! The HTTP client against a wiremock server: the exact request, and how
//! each kind of answer is classified.

use std::time::Duration;

use tokenctl::api::{CreateError, HttpApi, Timeouts, TokenApi};
use tokenctl::net::Proxies;
use tokenctl::secret::Secret;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CREATE: &str = "/v1/api-tokens/sub-account";

fn client(server: &MockServer) -> HttpApi {
    HttpApi::new(
        &server.uri(),
        Secret::new("owner-token-of-api-tests".into()),
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_millis(500),
        },
        &Proxies::default(),
    )
    .unwrap()
}

async fn answer(template: ResponseTemplate) -> Result<tokenctl::api::CreatedToken, CreateError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE))
        .respond_with(template)
        .mount(&server)
        .await;
    client(&server).create(160343, "ci-shipper").await
}

#[tokio::test]
async fn sends_exactly_the_documented_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CREATE))
        .and(header("Content-Type", "application/json"))
        .and(header("Accept", "application/json"))
        .and(header("X-API-TOKEN", "owner-token-of-api-tests"))
        .and(header(
            "User-Agent",
            concat!("tokenctl/", env!("CARGO_PKG_VERSION")),
        ))
        .and(body_json(
            serde_json::json!({"name": "ci-shipper", "accountId": 160343}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": 17, "name": "ci-shipper", "token": "secret-1", "createdAt": 1621858311
        })))
        .expect(1)
        .mount(&server)
        .await;
    let created = client(&server).create(160343, "ci-shipper").await.unwrap();
    assert_eq!(created.id, 17);
    assert_eq!(created.name, "ci-shipper");
    assert_eq!(created.token.expose(), "secret-1");
    assert_eq!(created.created_at, 1621858311);
}

#[tokio::test]
async fn reads_decimal_created_at() {
    let body = r#"{"id": 1, "name": "n", "token": "t", "createdAt": 1621858311.000000000}"#;
    let created = answer(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .await
        .unwrap();
    assert_eq!(created.created_at, 1621858311);
}

#[tokio::test]
async fn an_unreadable_success_is_in_doubt_and_does_not_quote_the_body() {
    let body = r#"{"id": "x", "token": "leaked-secret"}"#;
    let err = answer(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .await
        .unwrap_err();
    assert!(matches!(err, CreateError::Ambiguous { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("leaked-secret"));
}

#[tokio::test]
async fn bad_request_and_not_found_are_refusals_with_the_server_message() {
    for status in [400, 404] {
        let err = answer(
            ResponseTemplate::new(status)
                .set_body_json(serde_json::json!({"message": "Account 160343 not found"})),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            CreateError::Refused {
                status,
                message: "Account 160343 not found".into()
            }
        );
    }
}

#[tokio::test]
async fn unauthorized_and_forbidden_reject_the_owner_token() {
    for status in [401, 403] {
        let err = answer(
            ResponseTemplate::new(status).set_body_json(serde_json::json!({"message": "nope"})),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, CreateError::Unauthorized { status: s, .. } if s == status),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn too_many_requests_with_plain_text_and_retry_after() {
    let err = answer(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "3")
            .set_body_string("Too Many Requests"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        CreateError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
            message: "Too Many Requests".into()
        }
    );
}

#[tokio::test]
async fn server_errors_are_in_doubt_with_status_and_message() {
    let err = answer(ResponseTemplate::new(500).set_body_json(
        serde_json::json!({"errorCode": "E9", "message": "boom", "requestId": "r1"}),
    ))
    .await
    .unwrap_err();
    let CreateError::Ambiguous { detail } = err else {
        panic!("{err:?}")
    };
    assert!(detail.contains("500"), "{detail}");
    assert!(detail.contains("boom [code E9] [request r1]"), "{detail}");
}

#[tokio::test]
async fn a_plain_text_error_body_is_shown() {
    let err = answer(ResponseTemplate::new(502).set_body_string("Bad Gateway\n"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("502: Bad Gateway"), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&target)
        .await;
    let err = answer(
        ResponseTemplate::new(307).insert_header("Location", format!("{}{CREATE}", target.uri())),
    )
    .await
    .unwrap_err();
    // A redirect is an answer: the create may have been processed.
    assert!(matches!(err, CreateError::Ambiguous { .. }), "{err:?}");
    assert!(err.to_string().contains("not followed"), "{err}");
    assert!(target.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_timeout_after_sending_is_in_doubt() {
    let err = answer(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(err, CreateError::Ambiguous { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refused_connection_was_never_sent() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = HttpApi::new(
        &format!("http://127.0.0.1:{port}"),
        Secret::new("owner-token-of-api-tests".into()),
        Timeouts::default(),
        &Proxies::default(),
    )
    .unwrap();
    let err = api.create(1, "a").await.unwrap_err();
    assert!(matches!(err, CreateError::NotSent { .. }), "{err:?}");
}
