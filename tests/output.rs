//! Whole outputs of the real binary, stdout and stderr apart, compared
//! with snapshots: an extra line, a missing one or a line on the wrong
//! stream fails. Temp paths, ids, times, fingerprints, lineages and the
//! version are redacted, so the snapshots hold only what is meant to be
//! stable. Snapshots are never rewritten under `CI=true`.

use crate::support;

use support::mock_logzio::MockLogzio;
use support::workspace::{Run, Workspace};
use wiremock::ResponseTemplate;

/// What changes from run to run, and its placeholder.
const FILTERS: [(&str, &str); 7] = [
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]"),
    (r"sha256:[0-9a-f]+", "sha256:[FP]"),
    (
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[LINEAGE]",
    ),
    (r"\b(id:?) \d+", "$1 [ID]"),
    (
        r#""(id|createdAt|since|at|serial|superseded_at|successor_id)": \d+"#,
        r#""$1": [N]"#,
    ),
    (r"pid \d+", "pid [PID]"),
    (r"\t\d+", "\t[ID]"),
];

/// The filters of [`FILTERS`] but the ids': for snapshots whose ids are
/// named by [`label_ids`].
const LABELLED: [(&str, &str); 5] = [
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]"),
    (r"sha256:[0-9a-f]+", "sha256:[FP]"),
    (
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[LINEAGE]",
    ),
    (
        r#""(createdAt|since|at|serial|superseded_at)": \d+"#,
        r#""$1": [N]"#,
    ),
    (r"pid \d+", "pid [PID]"),
];

/// Compares a run's exit code, stdout and stderr with the snapshot `name`,
/// with the temp folder, the version and what `FILTERS` names redacted.
fn snapshot(name: &str, ws: &Workspace, run: &Run) {
    compare(name, &whole(ws, run), &FILTERS);
}

/// Compares as [`snapshot`] does, with each id the mock issued named by
/// its address and rank instead of hidden, so the snapshot shows which
/// token each line names (the predecessor, the successor, another).
fn snapshot_ids(name: &str, ws: &Workspace, run: &Run, mock: &MockLogzio) {
    compare(name, &label_ids(&whole(ws, run), mock), &LABELLED);
}

/// Returns a run's exit code, stdout and stderr as one text, the temp
/// folder and the version redacted.
fn whole(ws: &Workspace, run: &Run) -> String {
    let root = ws.dir.path().display().to_string();
    format!(
        "exit code: {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    )
    .replace(&root, "[ROOT]")
    .replace(env!("CARGO_PKG_VERSION"), "[VERSION]")
}

fn compare(name: &str, text: &str, filters: &[(&str, &str)]) {
    insta::with_settings!({
        prepend_module_to_snapshot => false,
        omit_expression => true,
        filters => filters.to_vec(),
    }, {
        insta::assert_snapshot!(name, text);
    });
}

/// Returns `text` with every id the mock issued, standing as a number of
/// its own after a blank, `(` or `"`, replaced by `[<address>#<rank>]`
/// (`[1/a#2]`: the second token issued for 1/a).
fn label_ids(text: &str, mock: &MockLogzio) -> String {
    let mut issued = mock.issued();
    issued.sort_by_key(|i| i.id);
    let mut ranks: std::collections::HashMap<String, usize> = Default::default();
    let mut labels: std::collections::HashMap<String, String> = Default::default();
    for token in issued {
        let address = format!("{}/{}", token.account_id, token.name);
        let rank = ranks.entry(address.clone()).or_default();
        *rank += 1;
        labels.insert(token.id.to_string(), format!("[{address}#{rank}]"));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let end = rest[start..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest.len(), |n| start + n);
        let before = rest[..start].chars().next_back();
        let after = rest[end..].chars().next();
        let number = &rest[start..end];
        out.push_str(&rest[..start]);
        match labels.get(number) {
            Some(label)
                if matches!(before, Some(' ' | '(' | '"'))
                    && !after.is_some_and(|c| c.is_alphanumeric()) =>
            {
                out.push_str(label)
            }
            _ => out.push_str(number),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_apply_and_the_plan_after_it() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["160343/ci-shipper", "160344/grafana-reader"]);
    let plan = ws.run(&["plan"]);
    snapshot("first_plan", &ws, &plan);
    let apply = ws.run(&["apply", "--auto-approve", "--parallelism", "1"]);
    snapshot("first_apply", &ws, &apply);
    let again = ws.run(&["plan", "--detailed-exitcode"]);
    snapshot("plan_after_apply", &ws, &again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_every_kind_of_change() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/kept", "1/old", "2/flaky"]);
    // The 502 comes late: 1/old's outcome (delivered and journaled while
    // the next create is sent) is reported first, as the plan lists it.
    mock.answer_first(
        1,
        Some(2),
        ResponseTemplate::new(502)
            .set_body_string("Bad Gateway")
            .set_delay(std::time::Duration::from_millis(500)),
    )
    .await;
    let apply = ws.run(&["apply", "--auto-approve", "--parallelism", "1"]);
    snapshot("apply_with_a_doubt", &ws, &apply);
    ws.manifest(&["1/kept", "2/flaky", "3/new"]);
    for (name, args) in [
        ("mixed_plan_text", &["plan"][..]),
        ("mixed_plan_markdown", &["plan", "--output", "markdown"]),
        ("state_list", &["state", "list"]),
    ] {
        let run = ws.run(args);
        snapshot(name, &ws, &run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_place_and_what_to_do() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(
        "tokens.yaml",
        "version: 1\nregion: eu\ntokens:\n  - name: ci-\u{200b}shipper\n    accountId: \"160343\"\n",
    );
    let invalid = ws.run(&["validate"]);
    snapshot("invalid_manifest", &ws, &invalid);
    ws.manifest(&["1/a"]);
    let no_token = ws.run_with(&["apply", "--auto-approve"], &[("LOGZIO_API_TOKEN", "")]);
    snapshot("apply_without_owner_token", &ws, &no_token);
    let budget = ws.run(&["plan", "--max-creates", "0"]);
    snapshot("plan_over_budget", &ws, &budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_a_revoked_token() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let b = mock.issued().into_iter().find(|i| i.name == "b").unwrap();
    mock.revoke(&b.token);
    let refresh = ws.run(&["plan", "--refresh", "--detailed-exitcode"]);
    snapshot("refresh_finds_a_revoked_token", &ws, &refresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_edited_by_hand() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/kept", "2/flaky"]);
    mock.answer_first(
        1,
        Some(2),
        ResponseTemplate::new(502).set_body_string("Bad Gateway"),
    )
    .await;
    assert_eq!(
        ws.run(&["apply", "--auto-approve", "--parallelism", "1"])
            .code,
        3
    );
    for (name, args) in [
        ("resolve_abandon", &["resolve", "2/flaky", "--abandon"][..]),
        ("resolve_not_in_doubt", &["resolve", "2/flaky", "--abandon"]),
        (
            "import_a_token",
            &[
                "import",
                "3/legacy",
                "--id",
                "4242",
                "--created-at",
                "1700000000",
            ],
        ),
        ("state_show_imported", &["state", "show", "3/legacy"]),
        ("forget_in_the_manifest", &["forget", "1/kept"]),
        ("forget_a_revoked_token", &["forget", "3/legacy"]),
    ] {
        let run = ws.run(args);
        snapshot(name, &ws, &run);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_its_diff_and_its_document() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.manifest(&["1/a", "1/b"]);
    for (name, args) in [
        ("plan_with_diff", &["plan", "--diff"][..]),
        ("plan_json", &["plan", "--output", "json"]),
        ("plan_saved", &["plan", "-o", "tokens.plan"]),
        (
            "apply_saved_plan",
            &["apply", "tokens.plan", "--parallelism", "1"],
        ),
        ("apply_stale_plan", &["apply", "tokens.plan"]),
    ] {
        let run = ws.run(args);
        snapshot(name, &ws, &run);
    }
}

/// A rotation into SOPS homes: the plan says what each home holds and
/// what its consumers will see; the apply replaces the homes; the plan
/// after it says which consumers already read the successors, and which
/// must move first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_into_homes() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let sops = "  sops:\n    dir: secrets/tokens\n    age: [age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg]\nrotate_after: 90d\n";
    ws.manifest_with(sops, &["1/a", "1/b", "1/c"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    for address in ["1/a", "1/b", "1/c"] {
        ws.age_token(address, 120);
    }
    // 1/b's home now holds another token; 1/c's was moved away.
    let b = ws.read("secrets/tokens/1-b.sops.yaml");
    let b_id = mock.issued_for("1/b")[0].id;
    ws.write(
        "secrets/tokens/1-b.sops.yaml",
        &b.replace(&format!("id: {b_id}"), "id: 999"),
    );
    std::fs::remove_file(ws.path("secrets/tokens/1-c.sops.yaml")).unwrap();
    for (name, args) in [
        ("rotation_plan", &["plan"][..]),
        ("rotation_plan_markdown", &["plan", "--output", "markdown"]),
        ("rotation_plan_json", &["plan", "--output", "json"]),
    ] {
        let run = ws.run(args);
        snapshot_ids(name, &ws, &run, &mock);
    }
    let refused = ws.run(&["apply", "--auto-approve"]);
    snapshot_ids("rotation_refused", &ws, &refused, &mock);
    ws.write("secrets/tokens/1-b.sops.yaml", &b);
    let apply = ws.run(&["apply", "--auto-approve", "--parallelism", "1"]);
    snapshot_ids("rotation_apply", &ws, &apply, &mock);
    // 1/a and 1/b were replaced in place; 1/c's home started with its
    // successor, so its predecessor's consumers read it elsewhere.
    let after = ws.run(&["plan"]);
    snapshot_ids("rotation_plan_after", &ws, &after, &mock);
}
