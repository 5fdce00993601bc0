//! End-to-end runs of what pipelines use: machine output, pull-request
//! output, import/forget, budgets, pre-flight, targeting, plain output.

use crate::support;

use serde::Deserialize;
use support::mock_logzio::{Behaviour, MockLogzio};
use support::workspace::Workspace;

const TWO: [&str; 2] = ["160343/ci-shipper", "160344/grafana-reader"];

/// The plan document, as a pipeline would read it; unknown fields fail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PlanDocument {
    format_version: u32,
    tool_version: String,
    summary: Summary,
    max_creates: usize,
    over_budget: bool,
    changes: Vec<ChangeDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Summary {
    create: usize,
    unchanged: usize,
    orphaned: usize,
    in_doubt: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ChangeDocument {
    address: String,
    #[serde(rename = "accountId")]
    account_id: u64,
    name: String,
    action: String,
    id: Option<u64>,
    in_doubt_since: Option<i64>,
    reason: Option<String>,
    hint: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_json_is_a_versioned_document() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.manifest(&["160343/ci-shipper", "7/new"]);
    let run = ws.run(&["plan", "--output", "json", "--diff"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("--diff is shown with --output text only")
    );
    let document: PlanDocument = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(document.format_version, 1);
    assert_eq!(document.summary.create, 1);
    assert_eq!(document.summary.orphaned, 1);
    let orphan = document
        .changes
        .iter()
        .find(|c| c.action == "orphaned")
        .unwrap();
    assert_eq!(orphan.address, "160344/grafana-reader");
    assert!(orphan.id.is_some());
    assert!(
        orphan
            .hint
            .as_ref()
            .unwrap()
            .contains("tokenctl forget 160344/grafana-reader")
    );
    let create = document
        .changes
        .iter()
        .find(|c| c.action == "create")
        .unwrap();
    assert_eq!((create.account_id, create.name.as_str()), (7, "new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_markdown_carries_the_sticky_marker() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    let run = ws.run(&["plan", "--output", "markdown", "-o", "pr.plan"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.starts_with("<!-- tokenctl-plan -->\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("#### Sub-account 160343"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("Saved the plan"),
        "talk belongs on stderr"
    );
    assert!(run.stderr.contains("Saved the plan to pr.plan"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_json_streams_one_event_per_line_without_secrets() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    let run = ws.run(&["apply", "--auto-approve", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "start");
    assert_eq!(events[0]["format_version"], 1);
    assert_eq!(events[0]["creates"], 2);
    let created: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "created").collect();
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|e| e["id"].is_u64()));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["created"], 2);
    assert_eq!(last["exit_code"], 0);

    let list = ws.run(&["state", "list", "--output", "json"]);
    let state: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(state["format_version"], 1);
    assert_eq!(state["tokens"].as_array().unwrap().len(), 2);
    let secrets: Vec<String> = mock.issued().into_iter().map(|i| i.token).collect();
    ws.assert_secrets_only_in_sink(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_adopts_a_token_and_plan_creates_nothing_for_it() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    let import = ws.run(&[
        "import",
        "160343/ci-shipper",
        "--id",
        "4242",
        "--created-at",
        "2021-05-24T12:11:51Z",
    ]);
    assert_eq!(import.code, 0, "{}", import.all());
    assert!(
        import.stdout.contains("+      \"origin\": \"imported\""),
        "shows the diff: {}",
        import.stdout
    );
    let show = ws.run(&["state", "show", "160343/ci-shipper"]);
    assert!(
        show.stdout.contains("createdAt:   2021-05-24T12:11:51Z"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("origin:      imported"),
        "{}",
        show.stdout
    );

    let plan = ws.run(&["plan"]);
    assert!(
        !plan.stdout.contains("+ 160343/ci-shipper"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("1 to create, 1 unchanged"),
        "{}",
        plan.stdout
    );

    let again = ws.run(&["import", "160343/ci-shipper", "--id", "1"]);
    assert_eq!(again.code, 1);
    assert!(
        again
            .stderr
            .contains("already in the state (token id 4242)"),
        "{}",
        again.stderr
    );

    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    assert_eq!(mock.create_requests().await, ["160344/grafana-reader"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_plans_and_applies_are_refused_before_sending() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b", "2/c"]);
    let plan = ws.run(&["plan", "--max-creates", "2"]);
    assert_eq!(plan.code, 1, "the pull request goes red: {}", plan.all());
    assert!(
        plan.stderr
            .contains("creates 3 tokens, more than the safety budget of 2"),
        "{}",
        plan.stderr
    );
    assert!(plan.stderr.contains("--max-creates 3"));
    let json = ws.run(&["plan", "--max-creates", "2", "--output", "json"]);
    let document: PlanDocument = serde_json::from_str(&json.stdout).unwrap();
    assert!(document.over_budget);
    let apply = ws.run(&["apply", "--auto-approve", "--max-creates", "2"]);
    assert_eq!(apply.code, 1);
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_flight_stops_a_wrong_token_region_or_account_before_any_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&TWO);
    let wrong = ws.run_with(
        &["apply", "--auto-approve"],
        &[("LOGZIO_API_TOKEN", "wrong")],
    );
    assert_eq!(wrong.code, 1, "{}", wrong.all());
    assert!(
        wrong.stderr.contains("pre-flight: whoami answered 401"),
        "{}",
        wrong.stderr
    );
    assert!(
        wrong
            .stderr
            .contains("hint: check the owner-account API token"),
        "{}",
        wrong.stderr
    );

    ws.manifest(&["160343/ci-shipper", "424242/stranger"]);
    let stranger = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(stranger.code, 1, "{}", stranger.all());
    assert!(
        stranger
            .stderr
            .contains("account(s) 424242 are not sub-accounts of owner account 1000"),
        "{}",
        stranger.stderr
    );
    assert!(mock.create_requests().await.is_empty());

    let other_region = MockLogzio::start_with(Behaviour {
        whoami_refusal: Some("Account region us differs from current server region eu".into()),
        ..Behaviour::default()
    })
    .await;
    let mut ws = Workspace::new(&other_region.url());
    ws.manifest(&TWO);
    let region = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(region.code, 1);
    assert!(
        region.stderr.contains("differs from current server region"),
        "{}",
        region.stderr
    );
    assert!(
        region.stderr.contains("set the manifest's `region`"),
        "{}",
        region.stderr
    );
    assert!(other_region.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_creates_only_the_targeted_address() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b", "2/c"]);
    let plan = ws.run(&["plan", "--target", "1/b", "-o", "b.plan"]);
    assert!(plan.stderr.contains("not routinely"), "{}", plan.stderr);
    assert!(plan.stdout.contains("Plan: 1 to create"), "{}", plan.stdout);
    let apply = ws.run(&["apply", "b.plan"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(mock.create_requests().await, ["1/b"]);

    let apply = ws.run(&["apply", "--auto-approve", "--exclude", "2/*"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(mock.create_requests().await, ["1/b", "1/a"]);
    assert!(ws.run(&["plan"]).stdout.contains("+ 2/c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_output_has_no_colour_or_progress_bar() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens: Vec<String> = (0..6).map(|i| format!("1/t{i}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    ws.manifest(&tokens);
    for args in [
        &["plan", "--diff"][..],
        &["apply", "--auto-approve"],
        &["state", "list"],
    ] {
        let run = ws.run(args);
        assert!(
            !run.all().contains('\x1b'),
            "{args:?}: escape codes in {}",
            run.all()
        );
        assert!(!run.all().contains('\r'), "{args:?}: a progress bar drew");
    }
    // --color always forces colour even into a pipe, NO_COLOR or not.
    let forced = ws.run(&["plan", "--color", "always"]);
    assert!(forced.stdout.contains("\x1b["), "{}", forced.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_prints_the_committed_json_schema() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let run = ws.run(&["schema"]);
    assert_eq!(run.code, 0);
    let schema: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(schema["title"], "tokenctl manifest");
    let committed: serde_json::Value =
        serde_json::from_str(include_str!("../tokenctl.schema.json")).unwrap();
    assert_eq!(schema, committed);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_a_progress_bar_on_stderr() {
    let mock = MockLogzio::answering_after(std::time::Duration::from_millis(150)).await;
    let ws = Workspace::new(&mock.url());
    let tokens: Vec<String> = (0..6).map(|i| format!("1/t{i}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    ws.manifest(&tokens);
    // `script` runs the command on a pseudo-terminal, as a person would;
    // `timeout` bounds the test should drawing ever block the process.
    let command = format!(
        "timeout 60 {} apply --auto-approve --parallelism 1",
        env!("CARGO_BIN_EXE_tokenctl")
    );
    let base = ws.command(&[], &[]);
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .current_dir(ws.dir.path())
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("TERM", "xterm");
    let output = script.output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("/6 tokens"), "no progress bar drawn:\n{text}");
    assert!(text.contains("Apply finished: 6 created"), "{text}");
}
