//! Token lifecycle end to end: a refresh that asks each token about
//! itself, re-creation of revoked tokens, rotation, and retiring the
//! superseded tokens a person revoked.

use crate::support;

use std::collections::HashMap;

use support::mock_logzio::MockLogzio;
use support::workspace::Workspace;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

async fn create_counts(mock: &MockLogzio) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for address in mock.create_requests().await {
        *counts.entry(address).or_default() += 1;
    }
    counts
}

const THREE: [&str; 3] = ["1/a", "1/b", "2/c"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_sees_a_revoked_token_and_plan_writes_nothing() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &THREE);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let b = mock.issued_for("1/b").remove(0);
    mock.revoke(&b.token);
    let state_before = ws.read("state/tokens.state.json");

    let plan = ws.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout.contains(&format!(
            "x 1/b (token id {}): revoked: its own whoami answered 401",
            b.id
        )),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Refresh: 2 alive, 1 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."),
        "{}",
        plan.stdout
    );
    // Reporting is the default: nothing to create.
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
    // Three tokens, and the revoked one asked a second time.
    assert_eq!(mock.token_whoami_calls().await, 4);

    let json = ws.run(&["plan", "--refresh", "--output", "json"]);
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(document["refresh"]["counts"]["revoked"], 1);
    assert_eq!(document["refresh"]["findings"][0]["address"], "1/b");
    assert_eq!(document["refresh"]["findings"][0]["status"], "revoked");
    let markdown = ws.run(&["plan", "--refresh", "--output", "markdown"]);
    assert!(
        markdown.stdout.contains("**Refresh: 2 alive, 1 revoked"),
        "{}",
        markdown.stdout
    );

    // A plan never records anything, and sends no create.
    assert_eq!(ws.read("state/tokens.state.json"), state_before);
    assert_eq!(mock.create_requests().await.len(), 3);
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_replaces_each_revoked_token_once_and_never_an_unknown_one() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("on_revoked: recreate\n", &["1/a", "1/b", "1/c", "2/d"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let a = mock.issued_for("1/a").remove(0);
    let c = mock.issued_for("1/c").remove(0);
    let d = mock.issued_for("2/d").remove(0);
    mock.revoke(&a.token);
    // c's answers are a 5xx, d's a 429 storm: neither may count as revoked.
    for (token, status) in [(&c.token, 503), (&d.token, 429)] {
        Mock::given(method("GET"))
            .and(path("/v2/whoami"))
            .and(header("X-API-TOKEN", token.as_str()))
            .respond_with(ResponseTemplate::new(status).set_body_string("busy"))
            .with_priority(1)
            .mount(&mock.server)
            .await;
    }

    let apply = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(
        apply.stdout.contains("1 replacing revoked token(s)"),
        "{}",
        apply.stdout
    );
    // The replaced token stays in the state until a later refresh finds
    // it revoked again: one run's 401s are not enough to forget a token.
    assert!(!apply.stderr.contains("retired"), "{}", apply.stderr);
    let counts = create_counts(&mock).await;
    assert_eq!(counts["1/a"], 2, "{counts:?}");
    assert_eq!(counts["1/c"], 1, "{counts:?}");
    assert_eq!(counts["2/d"], 1, "{counts:?}");
    let successor = mock.issued_for("1/a").remove(1);
    let state = ws.state();
    let token_a = state["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == "1/a")
        .unwrap();
    assert_eq!(token_a["id"], successor.id);
    assert_eq!(state["superseded"][0]["id"], a.id, "{state}");
    assert_eq!(
        state["superseded"][0]["successor_id"], successor.id,
        "{state}"
    );
    // apply --refresh records what it learnt.
    let token_c = state["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == "1/c")
        .unwrap();
    assert_eq!(token_c["checked"]["status"], "unknown");

    let again = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(mock.create_requests().await.len(), 5);
    // The next refresh finds the predecessor revoked again: now it goes.
    assert!(
        again.stderr.contains(&format!(
            "retired token id {} of 1/a: it answers 401, so it was revoked as asked",
            a.id
        )),
        "{}",
        again.stderr
    );
    assert!(
        ws.state().get("superseded").is_none(),
        "{}",
        ws.read("state/tokens.state.json")
    );
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_of_revocations_needs_force() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens = ["1/a", "1/b", "1/c", "1/d", "1/e"];
    ws.manifest_with("on_revoked: recreate\n", &tokens);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    for issued in mock.issued().iter().take(4) {
        mock.revoke(&issued.token);
    }
    let plan = ws.run(&["plan", "--refresh"]);
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(
        plan.stderr
            .contains("4 of 5 tokens that answered came back revoked"),
        "{}",
        plan.stderr
    );
    let apply = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert_eq!(mock.create_requests().await.len(), 5);

    let forced = ws.run(&["apply", "--refresh", "--force", "--auto-approve"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert_eq!(mock.create_requests().await.len(), 9);
    let counts = create_counts(&mock).await;
    assert!(counts.values().all(|&n| n <= 2), "{counts:?}");
}

/// The server handed out, for 1/a, a token of account 2: its own whoami
/// says so, and the plan fails loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answering_for_another_account_fails_the_plan() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["2/b"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let b = mock.issued_for("2/b").remove(0);
    ws.manifest_with("", &["1/a", "2/b"]);
    mock.answer_first(
        1,
        None,
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": 99, "name": "a", "token": b.token, "createdAt": 1_700_000_000
        })),
    )
    .await;
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let plan = ws.run(&["plan", "--refresh"]);
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("1/a (token id 99): misdelivered: it answers for account 2"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stderr.contains("answer for another account"),
        "{}",
        plan.stderr
    );
    let apply = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stdout.contains("misdelivered"), "{}", apply.stdout);
}

/// A sink record whose secret is not the one the token was made with (an
/// edited file, a bad restore) is no evidence: the token is unverifiable,
/// never revoked, and nothing is retired or re-created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_does_not_match_its_fingerprint_proves_nothing() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("on_revoked: recreate\n", &["1/a", "1/b"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let a = mock.issued_for("1/a").remove(0);
    let b = mock.issued_for("1/b").remove(0);
    // 1/a's record now carries 1/b's secret, and 1/b is revoked.
    mock.revoke(&b.token);
    let sink = ws
        .read("secrets/logzio-tokens.jsonl")
        .replace(&a.token, &b.token);
    ws.write("secrets/logzio-tokens.jsonl", &sink);
    let plan = ws.run(&["plan", "--refresh"]);
    assert!(
        plan.stdout
            .contains("Refresh: 0 alive, 1 revoked, 0 misdelivered, 0 unknown, 1 unverifiable."),
        "{}",
        plan.stdout
    );
    let apply = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let counts = create_counts(&mock).await;
    assert_eq!(counts["1/a"], 1, "{counts:?}");
    assert_eq!(counts["1/b"], 2, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_creates_one_successor_and_tracks_the_predecessor_until_retired() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("rotate_after: 90d\n", &["1/a", "1/b"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.age_token("1/a", 120);
    let old = mock.issued_for("1/a").remove(0);

    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("Plan: 1 to create (1 rotation(s)), 1 unchanged, 0 orphaned, 0 in doubt."),
        "{}",
        plan.stdout
    );
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let new = mock.issued_for("1/a").remove(1);
    let state = ws.state();
    assert_eq!(state["superseded"][0]["id"], old.id);
    assert_eq!(state["superseded"][0]["successor_id"], new.id);

    // The predecessor is shown with what to do, and not rotated again.
    let plan = ws.run(&["plan"]);
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
    assert!(
        plan.stdout.contains(
            &format!("then run: tokenctl retire 1/a --id {}", old.id)
                .replace("then run", "Then run")
        ),
        "{}",
        plan.stdout
    );
    let list = ws.run(&["state", "list"]);
    assert!(
        list.stdout
            .contains(&format!("1/a\t{}\t(superseded", old.id)),
        "{}",
        list.stdout
    );
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    assert_eq!(mock.create_requests().await.len(), 3);

    // retire --verify refuses a token that still works...
    let early = ws.run(&["retire", "1/a", "--id", &old.id.to_string(), "--verify"]);
    assert_eq!(early.code, 1, "{}", early.all());
    assert!(early.stderr.contains("still works"), "{}", early.stderr);
    // ...and a refresh retires it by itself once a person revoked it.
    mock.revoke(&old.token);
    let refresh = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(refresh.code, 0, "{}", refresh.all());
    assert!(
        refresh.stderr.contains(&format!(
            "retired token id {} of 1/a: it answers 401",
            old.id
        )),
        "{}",
        refresh.stderr
    );
    assert!(ws.state().get("superseded").is_none());
    assert_eq!(mock.create_requests().await.len(), 3);
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_drops_a_revoked_predecessor_and_refuses_anything_else() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("rotate_after: 30d\n", &["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.age_token("1/a", 31);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let old = mock.issued_for("1/a").remove(0);
    let new = mock.issued_for("1/a").remove(1);

    let current = ws.run(&["retire", "1/a", "--id", &new.id.to_string()]);
    assert_eq!(current.code, 1, "{}", current.all());
    assert!(
        current.stderr.contains("current token"),
        "{}",
        current.stderr
    );

    mock.revoke(&old.token);
    let retire = ws.run(&["retire", "1/a", "--id", &old.id.to_string(), "--verify"]);
    assert_eq!(retire.code, 0, "{}", retire.all());
    assert!(ws.state().get("superseded").is_none());
    assert_eq!(ws.state()["tokens"][0]["id"], new.id);
}

/// A crash in the middle of a rotation keeps the usual guarantees: the
/// successor is in doubt (never sent again) and the predecessor tracked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_rotation_keeps_the_predecessor_and_sends_no_second_successor() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("rotate_after: 90d\n", &["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.age_token("1/a", 100);
    let old = mock.issued_for("1/a").remove(0);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-sink")],
    );
    assert_ne!(crash.code, 0);
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(plan.stdout.contains("? 1/a: in doubt"), "{}", plan.stdout);
    assert_eq!(ws.state()["tokens"][0]["id"], old.id);
    let again = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(again.code, 3, "{}", again.all());
    assert_eq!(mock.create_requests().await.len(), 2);

    // The successor's secret reached the sink before the crash.
    let resolve = ws.run(&["resolve", "1/a"]);
    assert_eq!(resolve.code, 0, "{}", resolve.all());
    let new = mock.issued_for("1/a").remove(1);
    let state = ws.state();
    assert_eq!(state["tokens"][0]["id"], new.id);
    assert_eq!(state["superseded"][0]["id"], old.id);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    assert_eq!(mock.create_requests().await.len(), 2);
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

/// What a refresh learnt is stored only once the apply goes ahead: an
/// apply that is not confirmed leaves the state as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_apply_records_nothing_of_its_refresh() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.manifest_with("", &["1/a", "1/b"]);
    let before = ws.read("state/tokens.state.json");
    let unconfirmed = ws.run(&["apply", "--refresh"]);
    assert_eq!(unconfirmed.code, 1, "{}", unconfirmed.all());
    assert!(
        unconfirmed.stderr.contains("needs confirmation"),
        "{}",
        unconfirmed.stderr
    );
    assert_eq!(ws.read("state/tokens.state.json"), before);
    let confirmed = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(confirmed.code, 0, "{}", confirmed.all());
    let state = ws.state();
    let a = state["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == "1/a")
        .unwrap();
    assert_eq!(a["checked"]["status"], "alive");
}

/// A refresh reads the manifest once (one warning about a deprecated
/// region, not one per read), and when no sink can read secrets back it
/// says nothing per sink: every token is unverifiable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_no_readable_sink_warns_once_and_verifies_nothing() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    // Only a Vault sink, and no VAULT_ADDR: nothing can be read back.
    ws.write(
        "tokens.yaml",
        "version: 1\nregion: nl\nsecrets:\n  vault:\n    mount: secret\n    path: \"t/{id}\"\ntokens:\n  - name: a\n    accountId: 1\n",
    );
    // A plan's refresh that verified nothing is not a pass (the drift
    // check must not go green); an apply only records what it learnt.
    for (args, code) in [
        (&["plan", "--refresh"][..], 1),
        (&["apply", "--refresh", "--auto-approve"], 0),
    ] {
        let run = ws.run(args);
        assert_eq!(run.code, code, "{args:?}: {}", run.all());
        assert_eq!(
            run.stderr.matches("is deprecated").count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("a sink cannot be read"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            run.stdout.contains("1 unverifiable"),
            "{args:?}: {}",
            run.stdout
        );
    }
    assert_eq!(mock.token_whoami_calls().await, 0);
}
