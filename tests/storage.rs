//! The file backend's state under faults that come from outside the run:
//! a state file that stops parsing while an apply runs, and a serial that
//! cannot move on.

use crate::support;

use std::time::Duration;

use support::mock_logzio::MockLogzio;
use support::workspace::Workspace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_that_stops_parsing_during_an_apply_is_left_alone() {
    let mock = MockLogzio::answering_after(Duration::from_millis(1500)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let good = ws.read("state/tokens.state.json");
    ws.manifest(&["1/a", "1/b"]);
    let child = ws
        .command(&["apply", "--auto-approve"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(2).await;
    // Another tool (a bad merge, an editor) breaks the file meanwhile.
    ws.write("state/tokens.state.json", "{\"format_version\": 1, \"tok");
    let apply = ws.finish(child);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(
        apply.stderr.contains(
            "error: state state/tokens.state.json is corrupt or truncated: it changed while this command ran and no longer parses:"
        ),
        "{}",
        apply.stderr
    );
    assert!(
        apply
            .stderr
            .contains("hint: the journal state/tokens.state.json.journal was kept"),
        "{}",
        apply.stderr
    );
    assert_eq!(
        ws.read("state/tokens.state.json"),
        "{\"format_version\": 1, \"tok",
        "the broken file was overwritten"
    );
    assert!(ws.path("state/tokens.state.json.journal").exists());

    // Once a person repairs the file, the kept journal records 1/b.
    ws.write("state/tokens.state.json", &good);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert_eq!(ws.state_addresses(), ["1/a", "1/b"]);
    assert_eq!(mock.requests_for("1/b").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_state_whose_serial_cannot_move_on_is_refused_before_any_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let mut state = ws.state();
    state["serial"] = u64::MAX.into();
    let huge = serde_json::to_string_pretty(&state).unwrap() + "\n";
    ws.write("state/tokens.state.json", &huge);
    let refusal = "error: the state at state/tokens.state.json has serial 18446744073709551615, which cannot move on (the largest serial is 9223372036854775807); nothing was written\nhint: a serial moves on by one per write, so one this large was set by hand or by another tool; restore the version before it (the .backup file, the history table or git) and push that with `tokenctl state push FILE`\n";

    ws.manifest(&["1/a", "1/b"]);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.ends_with(refusal), "{}", apply.stderr);
    assert_eq!(mock.requests_for("1/b").await, 0, "a create was sent");

    let import = ws.run(&["import", "1/b", "--id", "99"]);
    assert_eq!(
        (import.code, import.stdout.as_str()),
        (1, ""),
        "{}",
        import.all()
    );
    assert_eq!(import.stderr, refusal);
    assert_eq!(
        ws.read("state/tokens.state.json"),
        huge,
        "the state was written"
    );
    assert!(!ws.path("state/tokens.state.json.journal").exists());
}
