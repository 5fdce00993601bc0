//! End-to-end runs of the real binary against a mock Logz.io API.

use crate::support;

use support::mock_logzio::{Behaviour, MockLogzio};
use support::workspace::Workspace;

const TWO: [&str; 2] = ["160343/ci-shipper", "160344/grafana-reader"];

fn secrets(mock: &MockLogzio) -> Vec<String> {
    mock.issued().into_iter().map(|i| i.token).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_apply_creates_all_and_second_plan_has_no_changes() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);

    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout.contains("+ 160343/ci-shipper"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 2 to create, 0 unchanged, 0 orphaned, 0 in doubt.")
    );
    assert!(
        mock.create_requests().await.is_empty(),
        "plan sent a request"
    );

    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(
        apply.stdout.contains("Apply finished: 2 created, 0 failed"),
        "{}",
        apply.stdout
    );
    assert_eq!(mock.create_requests().await, TWO);
    assert_eq!(ws.state_addresses(), TWO);

    // The sink has each token with the id the server gave it.
    let issued = mock.issued();
    let records = ws.sink_records();
    assert_eq!(records.len(), 2);
    for issued in &issued {
        assert!(records.iter().any(|r| r["token"] == issued.token.as_str()
            && r["id"] == issued.id
            && r["accountId"] == issued.account_id));
    }
    let state = ws.state();
    assert_eq!(
        state["serial"], 1,
        "the journal is folded into the state once per run"
    );
    assert!(
        state["tokens"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let again = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.stdout.contains("No changes."));
    assert!(again.stdout.contains("0 to create, 2 unchanged"));

    let noop = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(noop.code, 0, "{}", noop.all());
    assert_eq!(mock.create_requests().await.len(), 2);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_one_token_creates_exactly_one_more() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);

    ws.manifest(&[
        "160343/ci-shipper",
        "160344/grafana-reader",
        "160344/alerts",
    ]);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout.contains("1 to create, 2 unchanged"),
        "{}",
        plan.stdout
    );

    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let requests = mock.create_requests().await;
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2], "160344/alerts");
    assert_eq!(ws.sink_records().len(), 3);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_token_is_orphaned_and_never_sent() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let id = ws.state()["tokens"][1]["id"].clone();

    ws.manifest(&["160343/ci-shipper"]);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        plan.code,
        0,
        "orphans are not applicable changes: {}",
        plan.all()
    );
    assert!(
        plan.stdout.contains(&format!(
            "! 160344/grafana-reader (token id {id}): orphaned"
        )),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("tokenctl forget 160344/grafana-reader")
    );
    assert!(plan.stdout.contains("0 to create, 1 unchanged, 1 orphaned"));

    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(mock.create_requests().await.len(), 2, "the orphan was sent");
    assert_eq!(ws.state_addresses(), TWO, "apply must not drop the orphan");

    let forget = ws.run(&["forget", "160344/grafana-reader"]);
    assert_eq!(forget.code, 0, "{}", forget.all());
    assert_eq!(ws.state_addresses(), ["160343/ci-shipper"]);
    let refused = ws.run(&["forget", "160343/ci-shipper"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("still in the manifest"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_applies_and_a_stale_one_is_refused() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    let plan = ws.run(&["plan", "-o", "first.plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    let stale = ws.run(&["plan", "-o", "second.plan"]);
    assert_eq!(stale.code, 0);

    let apply = ws.run(&["apply", "first.plan"]);
    assert_eq!(
        apply.code,
        0,
        "a saved plan applies without a prompt: {}",
        apply.all()
    );
    assert_eq!(mock.create_requests().await.len(), 2);

    let refused = ws.run(&["apply", "second.plan"]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(
        refused.stderr.contains("the plan is stale"),
        "{}",
        refused.stderr
    );
    assert_eq!(mock.create_requests().await.len(), 2);

    // A changed manifest is refused with its own message.
    ws.run(&["plan", "-o", "third.plan"]);
    ws.manifest(&["160343/ci-shipper", "160344/grafana-reader", "9/new"]);
    let changed = ws.run(&["apply", "third.plan"]);
    assert_eq!(changed.code, 1);
    assert!(
        changed.stderr.contains("the manifest changed"),
        "{}",
        changed.stderr
    );
    assert_eq!(mock.create_requests().await.len(), 2);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_found_account_fails_alone_and_the_rest_are_created() {
    let mock = MockLogzio::start_with(Behaviour {
        missing_accounts: [999].into(),
        ..Behaviour::default()
    })
    .await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["160343/a", "999/ghost", "160344/b"]);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(
        apply
            .stdout
            .contains("999/ghost: failed: refused (404): Account 999 not found"),
        "{}",
        apply.stdout
    );
    assert!(
        apply.stdout.contains("2 created, 1 failed"),
        "{}",
        apply.stdout
    );
    assert_eq!(mock.create_requests().await.len(), 3);
    assert_eq!(ws.state_addresses(), ["160343/a", "160344/b"]);
    assert!(ws.state()["pending"].as_array().unwrap().is_empty());

    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains("+ 999/ghost"),
        "a refused create is planned again"
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_owner_token_stops_before_further_creates() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    // Without the pre-flight, the first create meets the 401 and the run stops.
    let apply = ws.run_with(
        &["apply", "--auto-approve", "--skip-preflight"],
        &[("LOGZIO_API_TOKEN", "wrong")],
    );
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert_eq!(
        mock.create_requests().await.len(),
        1,
        "a second create was sent"
    );
    assert!(
        apply.stderr.contains("owner token rejected (401)"),
        "{}",
        apply.stderr
    );
    assert!(
        apply
            .stdout
            .contains("0 created, 1 failed, 0 in doubt, 1 not attempted")
    );
    assert!(
        !apply.all().contains("wrong"),
        "the owner token was printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_without_a_sink_or_approval_and_sends_nothing() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(
        "tokens.yaml",
        "version: 1\nregion: eu\ntokens:\n  - name: a\n    accountId: 1\n",
    );
    let no_sink = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(no_sink.code, 1);
    assert!(
        no_sink.stderr.contains("no secret sink is configured"),
        "{}",
        no_sink.stderr
    );
    assert!(no_sink.stderr.contains("--secrets-out"));

    ws.manifest(&TWO);
    let no_terminal = ws.run(&["apply"]);
    assert_eq!(no_terminal.code, 1);
    assert!(
        no_terminal.stderr.contains("--auto-approve"),
        "{}",
        no_terminal.stderr
    );

    let no_token = ws.run_with(&["apply", "--auto-approve"], &[("LOGZIO_API_TOKEN", "")]);
    assert_eq!(no_token.code, 1);
    assert!(
        no_token.stderr.contains("LOGZIO_API_TOKEN"),
        "{}",
        no_token.stderr
    );

    let over_budget = ws.run(&["apply", "--auto-approve", "--max-creates", "1"]);
    assert_eq!(over_budget.code, 1);
    assert!(
        over_budget.stderr.contains("--max-creates 2"),
        "{}",
        over_budget.stderr
    );

    assert!(mock.create_requests().await.is_empty());
    assert!(!ws.state_path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_out_overrides_the_manifest_sink() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let apply = ws.run(&[
        "apply",
        "--auto-approve",
        "--secrets-out",
        "elsewhere/new.jsonl",
    ]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(
        ws.read("elsewhere/new.jsonl")
            .contains(&mock.issued()[0].token)
    );
    assert!(ws.sink_records().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_is_located_and_leaves_the_state_untouched() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let before = std::fs::read(ws.state_path()).unwrap();

    for (bad, expected) in [
        (
            "version: 1\nregion: eu\ntokens:\n  - name: a\n    accountId: \"160343\"\n",
            "tokens.yaml:5:16",
        ),
        (
            "version: 1\nregion: eu\ntokens:\n  - name: a\n    acountId: 1\n",
            "tokens.yaml:5:5",
        ),
        ("version: 1\nregion: mars\ntokens: []\n", "tokens.yaml:2:9"),
        (
            "version: 1\nregion: eu\ntokens:\n  - name: a\n    accountId: 1\n  - name: a\n    accountId: 1\n",
            "tokens.yaml:6:5",
        ),
    ] {
        ws.write("tokens.yaml", bad);
        for command in [&["validate"][..], &["plan"], &["apply", "--auto-approve"]] {
            let run = ws.run(command);
            assert_eq!(run.code, 1, "{command:?} {bad}");
            assert!(run.stderr.contains(expected), "{command:?}: {}", run.stderr);
            assert!(
                run.stderr.contains("hint:") || run.stderr.contains("valid regions"),
                "{}",
                run.stderr
            );
        }
    }
    assert_eq!(std::fs::read(ws.state_path()).unwrap(), before);
    assert_eq!(mock.create_requests().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_is_refused_and_never_overwritten() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    ws.write(
        "state/tokens.state.json",
        "{\"format_version\": 1, \"lineage\": \"x\", \"tok",
    );
    for command in [&["plan"][..], &["apply", "--auto-approve"]] {
        let run = ws.run(command);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("state/tokens.state.json is corrupt"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("tokens.state.json.backup"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(
        ws.read("state/tokens.state.json"),
        "{\"format_version\": 1, \"lineage\": \"x\", \"tok"
    );
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_state_commands_report() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    let validate = ws.run(&["validate"]);
    assert_eq!(validate.code, 0);
    assert!(
        validate.stdout.contains("2 tokens in 2 sub-accounts"),
        "{}",
        validate.stdout
    );

    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let list = ws.run(&["state", "list"]);
    assert_eq!(list.code, 0);
    assert!(
        list.stdout.starts_with("160343/ci-shipper\t"),
        "{}",
        list.stdout
    );
    let show = ws.run(&["state", "show", "160344/grafana-reader"]);
    assert!(
        show.stdout.contains("origin:      created"),
        "{}",
        show.stdout
    );
    // The mock answers with its clock, as the API does: an RFC 3339 time.
    let created = show
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("createdAt:   "))
        .unwrap_or_default();
    assert!(
        created.len() == 20 && created.starts_with("20") && created.ends_with('Z'),
        "{}",
        show.stdout
    );

    let usage = ws.run(&["plan", "--no-such-flag"]);
    assert_eq!(
        usage.code, 1,
        "usage errors must not look like 'changes' (2)"
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_diff_shows_the_state_document_to_be() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let plan = ws.run(&["plan", "--diff"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.contains("+++ state/tokens.state.json (after)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+      \"address\": \"1/a\""),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("(known after apply)"),
        "{}",
        plan.stdout
    );
}

/// `tokenctl plan | head -1`: the reader goes away, and the plan still
/// ends with its own exit code and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_is_not_an_error() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    // More than a pipe holds, so the plan is still writing when the
    // reader is gone.
    let tokens: Vec<String> = (0..5000).map(|i| format!("1/token-{i:05}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    ws.manifest(&tokens);
    let mut child = ws
        .command(&["plan", "--max-creates", "9999"], &[])
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let run = ws.finish(child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
}
