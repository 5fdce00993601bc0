//! Hardening: each test makes one way a token could be created twice, a
//! secret lost or leaked, or an exit code lie actually happen, and checks
//! that it no longer does.

use crate::support;

use std::collections::HashMap;
use std::fs;
use std::process::Command;
use std::time::Duration;

use support::mock_logzio::{MockLogzio, OWNER_TOKEN};
use support::workspace::Workspace;
use wiremock::ResponseTemplate;

fn secrets(mock: &MockLogzio) -> Vec<String> {
    mock.issued().into_iter().map(|i| i.token).collect()
}

/// Fails if the mock received a create for one address more than once.
async fn assert_each_sent_once(mock: &MockLogzio) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for address in mock.create_requests().await {
        *counts.entry(address).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "an address was sent twice: {counts:?}"
    );
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("1/{prefix}{i}")).collect()
}

fn as_strs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// Starts an apply of `n` tokens named `prefix<i>`, at `parallelism`,
/// against a mock that answers after `delay_ms`; returns once its first
/// create has reached the mock.
async fn apply_under_way(
    delay_ms: u64,
    prefix: &str,
    n: usize,
    parallelism: u32,
) -> (MockLogzio, Workspace, std::process::Child, Vec<String>) {
    let mock = MockLogzio::answering_after(Duration::from_millis(delay_ms)).await;
    let ws = Workspace::new(&mock.url());
    let tokens = names(prefix, n);
    ws.manifest(&as_strs(&tokens));
    let parallelism = parallelism.to_string();
    let child = ws
        .command(
            &["apply", "--auto-approve", "--parallelism", &parallelism],
            &[],
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    (mock, ws, child, tokens)
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .status()
        .expect("git is needed by this test");
    assert!(status.success(), "git {args:?}");
}

fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A run whose lock file was deleted (a workspace clean-up) must not let a
/// second apply fold the first one's live journal and create again.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lock_file_does_not_let_a_second_apply_fold_a_live_journal() {
    let (mock, mut ws, first, tokens) = apply_under_way(700, "t", 6, 2).await;
    fs::remove_file(ws.path("state/tokens.state.json.lock")).unwrap();

    let second = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(second.code, 1, "{}", second.all());
    assert!(
        second
            .stderr
            .contains("is still being written by a running apply"),
        "{}",
        second.stderr
    );
    // A plan meanwhile reads the journal without folding it.
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stderr.contains("an apply is running"),
        "{}",
        plan.stderr
    );

    let first = ws.finish(first);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(mock.create_requests().await.len(), tokens.len());
    assert_each_sent_once(&mock).await;
    assert_eq!(ws.state_addresses().len(), tokens.len());
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// Runs through a symlinked state and through its real path share one
/// state, one lock and one journal.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_state_is_one_state_with_one_lock() {
    let mock = MockLogzio::answering_after(Duration::from_millis(500)).await;
    let mut ws = Workspace::new(&mock.url());
    fs::create_dir_all(ws.path("shared")).unwrap();
    fs::create_dir_all(ws.path("state")).unwrap();
    std::os::unix::fs::symlink(
        "../shared/tokens.state.json",
        ws.path("state/tokens.state.json"),
    )
    .unwrap();
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let link = fs::symlink_metadata(ws.path("state/tokens.state.json")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let real: serde_json::Value =
        serde_json::from_str(&ws.read("shared/tokens.state.json")).unwrap();
    assert_eq!(real["tokens"][0]["address"], "1/a");

    ws.manifest(&["1/a", "1/b", "1/c"]);
    let through_link = ws
        .command(&["apply", "--auto-approve", "--parallelism", "1"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(2).await;
    let direct = ws.run(&[
        "--state",
        "shared/tokens.state.json",
        "apply",
        "--auto-approve",
    ]);
    assert_eq!(direct.code, 1, "{}", direct.all());
    assert!(direct.stderr.contains("locked by"), "{}", direct.stderr);
    assert_eq!(ws.finish(through_link).code, 0);
    assert_each_sent_once(&mock).await;
    assert_eq!(mock.create_requests().await.len(), 3);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_file_that_lists_an_address_twice_is_refused() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b"]);
    assert_eq!(ws.run(&["plan", "-o", "tokens.plan"]).code, 0);
    let mut plan: serde_json::Value = serde_json::from_str(&ws.read("tokens.plan")).unwrap();
    let first = plan["creates"][0].clone();
    plan["creates"].as_array_mut().unwrap().push(first);
    ws.write("tokens.plan", &plan.to_string());
    let apply = ws.run(&["apply", "tokens.plan"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("more than once"), "{}", apply.stderr);
    assert!(mock.create_requests().await.is_empty());
}

/// A revoked, forgotten and re-added token's old secret is still in the
/// secrets file; resolving a later create in doubt must not adopt it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_does_not_adopt_a_secret_from_before_the_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    // The old token was made an hour before the new create.
    mock.set_clock_offset(-3600);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    mock.set_clock_offset(0);
    let old_id = mock.issued()[0].id;
    ws.manifest(&[]);
    assert_eq!(ws.run(&["forget", "1/a"]).code, 0);
    ws.manifest(&["1/a"]);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-intent")],
    );
    assert_ne!(crash.code, 0);
    assert_eq!(ws.run(&["plan"]).code, 0);
    assert_eq!(ws.pending_addresses(), ["1/a"]);

    let resolve = ws.run(&["resolve", "1/a"]);
    assert_eq!(resolve.code, 1, "{}", resolve.all());
    assert!(
        resolve
            .stderr
            .contains("no sink holds a token for 1/a created since"),
        "{}",
        resolve.stderr
    );
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    assert!(ws.state_addresses().is_empty());
    // The old record is still what --adopt would take by hand.
    assert!(ws.sink_records().iter().any(|r| r["id"] == old_id));
}

/// Writes a manifest whose only sink is a command that fails.
fn manifest_with_failing_exec(ws: &Workspace, name: &str, script: &str) {
    ws.write(
        "tokens.yaml",
        &format!(
            "version: 1\nregion: eu\nsecrets:\n  exec: [sh, -c, {script:?}]\ntokens:\n  - name: {name:?}\n    accountId: 1\n"
        ),
    );
}

fn rescue_files(ws: &Workspace) -> Vec<std::path::PathBuf> {
    fs::read_dir(ws.path("home/.local/state/tokenctl/rescue"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_still_gets_its_secret_rescued() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let name = "very-long-token-name-".repeat(15);
    manifest_with_failing_exec(&ws, &name, "cat >/dev/null; exit 1");
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("rescue file"), "{}", apply.stderr);
    let rescued = rescue_files(&ws);
    assert_eq!(rescued.len(), 1, "{}", apply.all());
    let token = &mock.issued()[0].token;
    assert!(
        fs::read_to_string(&rescued[0])
            .unwrap()
            .contains(token.as_str())
    );
    assert_eq!(ws.state_addresses(), [format!("1/{name}")]);
}

/// A disk that fills up mid-record must not leave a partial line that the
/// next record glues onto. The file size limit plays the full disk.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_no_partial_record_in_the_secrets_file() {
    use std::os::unix::process::CommandExt;

    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(".gitignore", "/secrets/\n");
    let filler = format!(
        "{}\n",
        serde_json::json!({"address": "9/old", "accountId": 9, "name": "old", "id": 1,
            "createdAt": 1, "token": "f".repeat(8000)})
    );
    ws.write("secrets/logzio-tokens.jsonl", &filler);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            ws.path("secrets/logzio-tokens.jsonl"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    ws.manifest(&["1/a"]);
    let limit = filler.len() as u64 + 40;
    let mut command = ws.command(&["apply", "--auto-approve"], &[]);
    // Files may not grow past `limit`: the secrets record is cut short.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let full = ws.finish(command.spawn().unwrap());
    assert_eq!(full.code, 1, "{}", full.all());
    assert!(full.stderr.contains("cut back"), "{}", full.stderr);
    assert_eq!(ws.read("secrets/logzio-tokens.jsonl"), filler);
    let rescued = rescue_files(&ws);
    assert_eq!(rescued.len(), 1, "{}", full.all());
    assert!(
        fs::read_to_string(&rescued[0])
            .unwrap()
            .contains(&mock.issued()[0].token)
    );

    // With room again, the next record is whole and every line parses.
    ws.manifest(&["1/a", "1/b"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let records = ws.sink_records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["address"], "1/b");
}

/// Whatever an exec sink prints stays out of tokenctl's output, and the
/// sink never sees the owner token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_sink_cannot_leak_the_secret_or_see_the_owner_token() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let script = r#"read line; t=${line#*\"token\":\"}; t=${t%%\"*}; h=${t%??????????}; echo "$h" >&2; echo "${t#$h}" >&2; env >&2; exit 1"#;
    manifest_with_failing_exec(&ws, "a", script);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    let token = mock.issued()[0].token.clone();
    let (head, tail) = token.split_at(token.len() - 10);
    for piece in [head, tail, OWNER_TOKEN] {
        assert!(!apply.all().contains(piece), "{piece}: {}", apply.all());
    }
    let log = fs::read_dir(ws.path("home/.local/state/tokenctl/rescue"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("the sink's output was kept");
    let output = fs::read_to_string(&log).unwrap();
    assert!(output.contains(head), "{output}");
    assert!(!output.contains(OWNER_TOKEN), "{output}");
    assert!(
        apply.stderr.contains(&log.display().to_string()),
        "{}",
        apply.stderr
    );
}

/// A gateway that echoes an upstream create answer in its error body must
/// not put that token into the output or the committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_with_a_token_never_reaches_output_or_state() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let echoed = "echoed-upstream-secret-0123456789";
    mock.answer_first(
        1,
        None,
        ResponseTemplate::new(502).set_body_string(format!(
            r#"Bad Gateway: upstream answered {{"id":9,"name":"a","token":"{echoed}","createdAt":1}}"#
        )),
    )
    .await;
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 3, "{}", apply.all());
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    let state = ws.read("state/tokens.state.json");
    assert!(state.contains("the server answered 502"), "{state}");
    ws.assert_secrets_only_in_sink(&[echoed.to_string()]);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_last_create_is_in_flight_exits_130() {
    let mock = MockLogzio::answering_after(Duration::from_millis(1500)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let child = ws
        .command(&["apply", "--auto-approve", "--output", "json"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    kill("-TERM", child.id());
    let run = ws.finish(child);
    assert_eq!(run.code, 130, "{}", run.all());
    let summary: serde_json::Value =
        serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["stopped"], "interrupted");
    assert_eq!(summary["exit_code"], 130);
    assert_eq!(ws.state_addresses(), ["1/a"]);
}

/// During an outage every create would end in doubt; after a few in a row
/// the rest are left for the next run, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_stops_new_creates_after_three_in_doubt() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens = names("t", 10);
    ws.manifest(&as_strs(&tokens));
    mock.answer_first(
        100,
        None,
        ResponseTemplate::new(503).set_body_string("Service Unavailable"),
    )
    .await;
    let apply = ws.run(&["apply", "--auto-approve", "--parallelism", "1"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert_eq!(mock.create_requests().await.len(), 3);
    assert!(
        apply
            .stderr
            .contains("3 creates in a row got no definite answer"),
        "{}",
        apply.stderr
    );
    assert!(
        apply
            .stdout
            .contains("0 created, 0 failed, 3 in doubt, 7 not attempted"),
        "{}",
        apply.stdout
    );
    assert_eq!(ws.pending_addresses().len(), 3);
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("7 to create, 0 unchanged, 0 orphaned, 3 in doubt"),
        "{}",
        plan.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_token_that_cannot_be_sent_fails_before_any_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b"]);
    let apply = ws.run_with(
        &["apply", "--auto-approve", "--skip-preflight"],
        &[("LOGZIO_API_TOKEN", "owner-part-one\nowner-part-two")],
    );
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("a line break"), "{}", apply.stderr);
    assert!(!apply.all().contains("owner-part"), "{}", apply.all());
    assert!(mock.create_requests().await.is_empty());
    assert!(!ws.state_path().exists());
}

/// The git-ignore check must look where a symlinked secrets file leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_secrets_file_is_refused_before_any_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    git(ws.dir.path(), &["init", "-q"]);
    ws.write(".gitignore", "/secrets/\n");
    ws.write("notes.jsonl", "");
    fs::create_dir_all(ws.path("secrets")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("../notes.jsonl", ws.path("secrets/logzio-tokens.jsonl")).unwrap();
    ws.manifest(&["1/a"]);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("symbolic link"), "{}", apply.stderr);
    assert!(mock.create_requests().await.is_empty());
    assert_eq!(ws.read("notes.jsonl"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_flag_duration_is_an_error_not_a_panic() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    for args in [
        ["--lock-timeout", "99999999999999999999999h", "plan"].as_slice(),
        &["apply", "--request-timeout", "99999999999999999999999h"],
        &["apply", "--request-timeout", "0s"],
    ] {
        let run = ws.run(args);
        assert_eq!(run.code, 1, "{args:?}: {}", run.all());
        assert!(
            run.stderr.contains("error: invalid value"),
            "{}",
            run.stderr
        );
    }
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_a_byte_order_mark_plans() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let text = ws.read("tokens.yaml");
    ws.write("tokens.yaml", &format!("\u{feff}{text}"));
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(plan.stdout.contains("+ 1/a"), "{}", plan.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_private_rescue_folder_nothing_is_created() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(".gitignore", "/secrets/\n");
    ws.manifest(&["1/a"]);
    let mut no_home = ws.command(&["apply", "--auto-approve"], &[]);
    no_home.env_remove("HOME");
    let run = ws.finish(no_home.spawn().unwrap());
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("no private folder"), "{}", run.stderr);

    ws.write("not-a-folder", "");
    let unwritable = ws.run_with(
        &["apply", "--auto-approve"],
        &[("XDG_STATE_HOME", ws.path("not-a-folder").to_str().unwrap())],
    );
    assert_eq!(unwritable.code, 1, "{}", unwritable.all());
    assert!(
        unwritable
            .stderr
            .contains("cannot write to the rescue folder"),
        "{}",
        unwritable.stderr
    );
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_with_an_empty_token_is_in_doubt() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    mock.answer_first(
        1,
        None,
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"id": 77, "name": "a", "token": "", "createdAt": 1_700_000_000}),
        ),
    )
    .await;
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 3, "{}", apply.all());
    assert!(
        apply.stdout.contains("its token is empty"),
        "{}",
        apply.stdout
    );
    assert_eq!(ws.pending_addresses(), ["1/a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_201_with_a_create_answer_is_a_created_token() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let token = "secret-from-a-201-answer";
    mock.answer_first(
        1,
        None,
        ResponseTemplate::new(201).set_body_json(
            serde_json::json!({"id": 78, "name": "a", "token": token, "createdAt": 1_700_000_000}),
        ),
    )
    .await;
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(ws.sink_records()[0]["token"], token);
    assert_eq!(ws.state()["tokens"][0]["id"], 78);
    ws.assert_secrets_only_in_sink(&[token.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_the_state_already_holds_is_reported() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let id = mock.issued()[0].id;
    ws.manifest(&["1/a", "1/b"]);
    mock.answer_first(
        1,
        None,
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"id": id, "name": "b", "token": "tok-b-dup", "createdAt": 1_700_000_000}),
        ),
    )
    .await;
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(
        apply.stderr.contains(&format!(
            "the server returned id {id} for 1/b, an id the state already records for 1/a"
        )),
        "{}",
        apply.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_safety_nets() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b"]);

    // Nothing is made on disk before the confirmation.
    let unconfirmed = ws.run(&["apply"]);
    assert_eq!(unconfirmed.code, 1, "{}", unconfirmed.all());
    assert!(!ws.path("secrets").exists());

    // A token file others can read is pointed out.
    ws.write("owner.token", OWNER_TOKEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(ws.path("owner.token"), fs::Permissions::from_mode(0o644)).unwrap();
        ws.write(".gitignore", "/secrets/\n");
        let apply = ws.run(&["apply", "--auto-approve", "--api-token-file", "owner.token"]);
        assert_eq!(apply.code, 0, "{}", apply.all());
        assert!(
            apply
                .stderr
                .contains("can be read by other users (mode 644)"),
            "{}",
            apply.stderr
        );
    }

    // A manifest that drops every token says so loudly.
    ws.write("tokens.yaml", "version: 1\nregion: eu\ntokens: []\n");
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stderr
            .contains("the manifest keeps none of the 2 token(s) in the state"),
        "{}",
        plan.stderr
    );

    // A state claiming a format version that never existed is refused.
    let state = ws.read("state/tokens.state.json");
    ws.write(
        "state/tokens.state.json",
        &state.replace("\"format_version\": 1", "\"format_version\": 0"),
    );
    let zero = ws.run(&["plan"]);
    assert_eq!(zero.code, 1, "{}", zero.all());
    assert!(
        zero.stderr.contains("version 0 does not exist"),
        "{}",
        zero.stderr
    );
}

/// A journal removed while the run writes it (a workspace clean-up) must
/// not cost the run's records: the next apply would create them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_deleted_mid_apply_still_leaves_every_create_recorded() {
    let (mock, mut ws, child, tokens) = apply_under_way(400, "j", 4, 1).await;
    fs::remove_file(ws.path("state/tokens.state.json.journal")).unwrap();
    let run = ws.finish(child);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("disappeared during the apply"),
        "{}",
        run.stderr
    );
    assert_eq!(ws.state_addresses().len(), tokens.len());
    let again = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(mock.create_requests().await.len(), tokens.len());
    assert_each_sent_once(&mock).await;
}

/// The lock file deleted while the first apply is still preparing (no
/// journal yet): a second apply gets in and creates the tokens; the first
/// must notice before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_deleted_before_the_journal_exists_stops_the_first_apply() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};

    let mock = MockLogzio::start().await;
    // The first apply's pre-flight is slow: it holds the lock, no journal.
    Mock::given(method("GET"))
        .and(path("/v2/whoami"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"accountName": "owner", "accountId": 1000}))
                .set_delay(Duration::from_millis(4000)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock.server)
        .await;
    let mut ws = Workspace::new(&mock.url());
    let tokens = names("w", 3);
    ws.manifest(&as_strs(&tokens));
    let first = ws
        .command(&["apply", "--auto-approve"], &[])
        .spawn()
        .unwrap();
    // Wait until the first apply is in its pre-flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mock
        .server
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "no pre-flight seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fs::remove_file(ws.path("state/tokens.state.json.lock")).unwrap();
    let second = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(second.code, 0, "{}", second.all());
    let first = ws.finish(first);
    assert_eq!(first.code, 1, "{}", first.all());
    assert!(
        first.stderr.contains("nothing was created"),
        "{}",
        first.stderr
    );
    assert_eq!(mock.create_requests().await.len(), tokens.len());
    assert_each_sent_once(&mock).await;
    assert_eq!(ws.state_addresses().len(), tokens.len());
}

/// While an apply runs, its creates under way are in progress, not in
/// doubt: their run is alive and will record the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_during_an_apply_shows_its_creates_in_progress() {
    let mock = MockLogzio::answering_after(Duration::from_secs(5)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let apply = ws
        .command(&["apply", "--auto-approve"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("* 1/a: in progress, a running apply sent it"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 0 unchanged, 0 orphaned, 0 in doubt, 1 in progress."),
        "{}",
        plan.stdout
    );
    let list = ws.run(&["state", "list"]);
    assert_eq!(list.stdout, "1/a\t(in progress)\n");
    assert_eq!(ws.finish(apply).code, 0);
    assert_eq!(ws.state_addresses(), ["1/a"]);
}

/// An interrupt while a throttled create waits to be sent again: it is not
/// sent again (429 means it was never processed), and the run ends at once
/// instead of waiting out the server's Retry-After.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_ends_a_throttled_wait_without_resending() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    mock.answer_first(
        1,
        None,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "30")
            .set_body_string("Too Many Requests"),
    )
    .await;
    // At the real time scale, so the retry policy's patience covers the
    // server's Retry-After and the create waits for it.
    let child = ws
        .command(
            &["apply", "--auto-approve"],
            &[("TOKENCTL_BACKOFF_MS", "1000")],
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    kill("-TERM", child.id());
    let run = ws.finish(child);
    assert_eq!(run.code, 130, "{}", run.all());
    assert_eq!(mock.create_requests().await.len(), 1);
    // Never processed: nothing in doubt, and the next run creates it.
    assert!(
        !ws.state_path().exists() || ws.pending_addresses().is_empty(),
        "{}",
        run.all()
    );
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    assert_eq!(ws.state_addresses(), ["1/a"]);
}
