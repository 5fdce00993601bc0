//! The trust rules, end to end against a hostile stand-in of the Logz.io
//! API: no credential in any output, credentials stay inside tokenctl,
//! nothing alive is forgotten on fakeable evidence, every wait ends, and a
//! check that verified nothing is not green.

use crate::support;

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::mock_logzio::{MockLogzio, OWNER_TOKEN};
use support::workspace::Workspace;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

/// Makes whoami with `token` answer `template`, over the mock's own answer.
async fn whoami_answers(mock: &MockLogzio, token: &str, template: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path("/v2/whoami"))
        .and(header("X-API-TOKEN", token))
        .respond_with(template)
        .with_priority(1)
        .mount(&mock.server)
        .await;
}

/// Returns the ids the state records as current tokens, sorted.
fn state_ids(ws: &Workspace) -> Vec<u64> {
    let mut ids: Vec<u64> = ws.state()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

// ---------------------------------------------------------------------------
// 1. No credential in any output, from any server

/// A whoami that answers 500 echoing the token it was asked with (`bad
/// key <token>`, plain text, no `token` key to give it away) prints no
/// part of it: not in text, JSON or Markdown plans, nor in an apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_echoing_a_checked_token_never_makes_tokenctl_print_it() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a", "1/b", "1/c", "1/d"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let b = mock.issued_for("1/b").remove(0);
    // Long enough that a cut at 300 characters would keep part of it.
    let echo = format!("bad key {} {}", b.token, "x".repeat(280));
    whoami_answers(
        &mock,
        &b.token,
        ResponseTemplate::new(500).set_body_string(echo),
    )
    .await;
    for args in [
        &["plan", "--refresh"][..],
        &["plan", "--refresh", "--output", "json"],
        &["plan", "--refresh", "--output", "markdown"],
        &["apply", "--refresh", "--auto-approve"],
    ] {
        let run = ws.run(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.all());
        assert!(
            run.stdout.contains("bad key [redacted]"),
            "{args:?}: {}",
            run.stdout
        );
    }
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

/// The owner token's check echoed by the server: the error names the
/// failure, never the owner token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_echoing_the_owner_token_never_makes_tokenctl_print_it() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    whoami_answers(
        &mock,
        OWNER_TOKEN,
        ResponseTemplate::new(500).set_body_string(format!(
            "{{\"message\":\"bad key {OWNER_TOKEN}\",\"requestId\":\"{OWNER_TOKEN}\"}}"
        )),
    )
    .await;
    let run = ws.run(&["plan", "--refresh"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr.lines().next().unwrap(),
        "error: refresh: the owner token check failed: whoami answered 500: bad key [redacted] [request [redacted]]"
    );
    assert!(!run.all().contains(OWNER_TOKEN), "{}", run.all());
}

/// A credential that reads as an ordinary word (`PGPASSWORD=postgres`, a
/// CI service's default) never rewrites what tokenctl stores: a token
/// named after it keeps its address, and nothing is created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_that_is_an_ordinary_word_never_changes_a_stored_address() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/postgres-exporter", "1/tokens"]);
    let env = [("PGPASSWORD", "postgres"), ("VAULT_TOKEN", "tokens")];
    let apply = ws.run_with(&["apply", "--auto-approve"], &env);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(ws.state_addresses(), ["1/postgres-exporter", "1/tokens"]);
    let plan = ws.run_with(&["plan"], &env);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(plan.stdout.starts_with("No changes."), "{}", plan.stdout);
    assert_eq!(ws.run_with(&["apply", "--auto-approve"], &env).code, 0);
    assert_eq!(mock.create_requests().await.len(), 2);
}

// ---------------------------------------------------------------------------
// 2. Credentials stay inside tokenctl

/// A repository's own configuration may name programs for git to run
/// (`core.fsmonitor`): the git that the secrets file's check runs gets
/// none of tokenctl's credentials, and runs no such program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_checks_run_without_credentials_or_the_repositorys_programs() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(ws.dir.path())
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    ws.write(".gitignore", "/secrets/\n/home/\n");
    let seen = ws.path("fsmonitor-saw.txt");
    ws.write(
        "hook.sh",
        &format!("#!/bin/sh\nenv > '{}'\nexit 1\n", seen.display()),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ws.path("hook.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    git(&["config", "core.fsmonitor", "./hook.sh"]);
    let apply = ws.run_with(
        &["apply", "--auto-approve"],
        &[("VAULT_TOKEN", "hvs.must-stay-inside-tokenctl")],
    );
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(
        !seen.exists(),
        "the repository's fsmonitor ran: {}",
        ws.read("fsmonitor-saw.txt")
    );
}

/// Counts the connections a stand-in proxy on loopback receives.
fn proxy_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.read(&mut buf);
            // Dropped: a proxy that answers nothing useful.
        }
    });
    (url, accepted)
}

/// Requests to a plain-http API (loopback only) carry the owner token and
/// every checked token in clear text: they never go through a proxy, even
/// with every proxy variable set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_requests_never_go_through_a_proxy() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a", "1/b"]);
    let (proxy, accepted) = proxy_listener();
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
        ("all_proxy", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
    ];
    let apply = ws.run_with(&["apply", "--auto-approve"], &env);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let plan = ws.run_with(&["plan", "--refresh"], &env);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert_eq!(mock.issued().len(), 2);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the proxy saw a request"
    );
}

// ---------------------------------------------------------------------------
// 3. Nothing alive is forgotten on evidence a proxy or an edited file fakes

/// A proxy's HTML 401 for a third of twelve live tokens, on each of three
/// runs of `apply --refresh` with `on_revoked: recreate`: nothing is
/// created and nothing is dropped from the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_401_page_never_replaces_or_forgets_a_live_token() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens: Vec<String> = (0..12).map(|i| format!("1/t{i:02}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    ws.manifest_with("on_revoked: recreate\n", &tokens);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let ids = state_ids(&ws);
    for issued in mock.issued().iter().take(4) {
        whoami_answers(
            &mock,
            &issued.token,
            ResponseTemplate::new(401)
                .insert_header("content-type", "text/html")
                .set_body_string("<html><body><h1>401 Authorization Required</h1></body></html>"),
        )
        .await;
    }
    for run in 0..3 {
        let apply = ws.run(&["apply", "--refresh", "--auto-approve"]);
        assert_eq!(apply.code, 0, "run {run}: {}", apply.all());
        assert!(
            apply.stdout.contains(
                "Refresh: 8 alive, 0 revoked, 0 misdelivered, 4 unknown, 0 unverifiable."
            ),
            "run {run}: {}",
            apply.stdout
        );
    }
    assert_eq!(mock.create_requests().await.len(), 12);
    assert_eq!(state_ids(&ws), ids);
    assert!(ws.state().get("superseded").is_none());
}

/// `retire --verify` with a secret that is not the one the token was made
/// with (an old backup restored into the secrets file) proves nothing: the
/// predecessor stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_verify_needs_the_secret_the_token_was_made_with() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("rotate_after: 90d\n", &["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.age_token("1/a", 120);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let old = mock.issued_for("1/a").remove(0);
    // The predecessor's record now holds a value the API answers 401 to.
    let sink = ws
        .read("secrets/logzio-tokens.jsonl")
        .replace(&old.token, "mock-secret-restored-from-an-old-backup");
    ws.write("secrets/logzio-tokens.jsonl", &sink);
    let state_before = ws.read("state/tokens.state.json");

    let retire = ws.run(&["retire", "1/a", "--id", &old.id.to_string(), "--verify"]);
    assert_eq!(retire.code, 1, "{}", retire.all());
    assert_eq!(
        retire.stderr,
        format!(
            "error: cannot verify token id {} of 1/a: the secret a sink holds is not the one it was made with (its fingerprint differs: an edited file or an old backup?); nothing was retired\n\
             hint: retire without --verify once you revoked it in the UI\n",
            old.id
        )
    );
    assert_eq!(ws.read("state/tokens.state.json"), state_before);
    // A refresh calls it unverifiable, and keeps it.
    let plan = ws.run(&["plan", "--refresh"]);
    assert!(
        plan.stdout
            .contains("1 alive, 0 revoked, 0 misdelivered, 0 unknown, 1 unverifiable."),
        "{}",
        plan.stdout
    );
}

/// An imported token has no recorded fingerprint, so a secret added by
/// hand proves nothing: it is unverifiable for refresh, `apply --refresh`
/// and `retire --verify`, never revoked, never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_token_is_unverifiable_whatever_secret_a_sink_holds() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("on_revoked: recreate\n", &["1/a", "1/i"]);
    assert_eq!(
        ws.run_with(&["apply", "--auto-approve", "--target", "1/a"], &[])
            .code,
        0
    );
    assert_eq!(ws.run(&["import", "1/i", "--id", "777"]).code, 0);
    let mut sink = ws.read("secrets/logzio-tokens.jsonl");
    sink.push_str(
        "{\"address\":\"1/i\",\"accountId\":1,\"name\":\"i\",\"id\":777,\"createdAt\":1,\"token\":\"mock-secret-added-by-hand\"}\n",
    );
    ws.write("secrets/logzio-tokens.jsonl", &sink);

    let plan = ws.run(&["plan", "--refresh"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("1 alive, 0 revoked, 0 misdelivered, 0 unknown, 1 unverifiable."),
        "{}",
        plan.stdout
    );
    let apply = ws.run(&["apply", "--refresh", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(mock.create_requests().await, ["1/a"]);
    assert_eq!(state_ids(&ws), [777, 5001]);
}

/// forget → re-add → a crash while the new create is in flight → fold:
/// the forgotten token's record in the secrets file, dated as if in the
/// same second as the new intent (clocks agree to the second), is not
/// adopted, because the state keeps the ids it forgot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_never_adopts_a_forgotten_tokens_id_whatever_the_clocks_say() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a", "1/k"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let old = mock.issued_for("1/a").remove(0);
    ws.manifest_with("", &["1/k"]);
    assert_eq!(ws.run(&["forget", "1/a"]).code, 0);
    ws.manifest_with("", &["1/a", "1/k"]);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-intent")],
    );
    assert_ne!(crash.code, 0);
    assert_eq!(ws.run(&["state", "fold"]).code, 0);
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    // The old record, dated as late as the intent or later.
    let since = ws.state()["pending"][0]["since"].as_i64().unwrap();
    let sink = ws.read("secrets/logzio-tokens.jsonl");
    let line = sink.lines().find(|l| l.contains(&old.token)).unwrap();
    let record: serde_json::Value = serde_json::from_str(line).unwrap();
    let dated = line.replace(
        &format!("\"createdAt\":{}", record["createdAt"]),
        &format!("\"createdAt\":{since}"),
    );
    ws.write("secrets/logzio-tokens.jsonl", &sink.replace(line, &dated));

    let resolve = ws.run(&["resolve", "1/a"]);
    assert_eq!(resolve.code, 1, "{}", resolve.all());
    assert!(
        resolve
            .stderr
            .starts_with("error: no sink holds a token for 1/a created since its create was sent"),
        "{}",
        resolve.stderr
    );
    let adopt = ws.run(&["resolve", "1/a", "--adopt", &old.id.to_string()]);
    assert_eq!(adopt.code, 1, "{}", adopt.all());
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    assert_eq!(ws.state()["former"][0]["id"], old.id);
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

/// A rotation in doubt after the successor's secret reached the sink:
/// `--adopt` of the predecessor's id is refused (it would leave the live
/// successor untracked), and so is `--abandon` while the sink holds the
/// successor; `resolve` records the successor and keeps the predecessor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_in_doubt_is_settled_only_by_its_successor() {
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
    assert_eq!(ws.run(&["state", "fold"]).code, 0);
    let state_before = ws.read("state/tokens.state.json");

    let adopt = ws.run(&["resolve", "1/a", "--adopt", &old.id.to_string()]);
    assert_eq!(adopt.code, 1, "{}", adopt.all());
    assert!(
        adopt.stderr.starts_with(&format!(
            "error: token id {} is one this state has recorded already",
            old.id
        )),
        "{}",
        adopt.stderr
    );
    let abandon = ws.run(&["resolve", "1/a", "--abandon"]);
    assert_eq!(abandon.code, 1, "{}", abandon.all());
    let new = mock.issued().into_iter().nth(1).unwrap();
    assert!(
        abandon.stderr.starts_with(&format!(
            "error: 1/a cannot be abandoned: a sink holds token id {} for it (./secrets/logzio-tokens.jsonl), made since its create was sent, so that create made a token\n",
            new.id
        )),
        "{}",
        abandon.stderr
    );
    assert_eq!(ws.read("state/tokens.state.json"), state_before);

    assert_eq!(ws.run(&["resolve", "1/a"]).code, 0);
    let state = ws.state();
    assert_eq!(state["tokens"][0]["id"], new.id);
    assert_eq!(state["superseded"][0]["id"], old.id);
    assert_eq!(mock.create_requests().await.len(), 2);
    ws.assert_secrets_only_in_sink(&mock.secrets());
}

// ---------------------------------------------------------------------------
// 4. Every wait ends; 7. a check that verified nothing is not green

/// Ten tokens whose whoami never answers, and one answering 429 with a
/// Retry-After of a day: the refresh ends at its deadline, calls them
/// unknown, and fails, since it verified nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_ends_at_its_deadline_and_fails_having_verified_nothing() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens: Vec<String> = (0..11).map(|i| format!("1/h{i:02}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    ws.manifest_with("", &tokens);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let issued = mock.issued();
    for hanging in &issued[..10] {
        whoami_answers(
            &mock,
            &hanging.token,
            ResponseTemplate::new(200).set_delay(Duration::from_secs(3600)),
        )
        .await;
    }
    whoami_answers(
        &mock,
        &issued[10].token,
        ResponseTemplate::new(429).insert_header("Retry-After", "100000"),
    )
    .await;
    let plan = ws.run(&[
        "plan",
        "--refresh",
        "--detailed-exitcode",
        "--refresh-timeout",
        "2s",
    ]);
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("Refresh: 0 alive, 0 revoked, 0 misdelivered, 11 unknown, 0 unverifiable."),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("no answer within the refresh's deadline (2s)"),
        "{}",
        plan.stdout
    );
    assert_eq!(
        plan.stderr,
        "error: the refresh verified none of the 11 token(s): 11 unknown, 0 unverifiable; nothing was checked\n\
         hint: unknown: the API gave no definite answer (see above; try again later). Unverifiable: no sink holds a secret with the fingerprint recorded at creation; configure a sink that can read secrets back\n"
    );
}

/// A drift check whose tokens are all unverifiable (the secrets are not
/// readable here) fails with `--detailed-exitcode` instead of passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_check_that_could_verify_no_token_is_not_green() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest_with("", &["1/a", "1/b"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    std::fs::remove_file(ws.path("secrets/logzio-tokens.jsonl")).unwrap();
    let plan = ws.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert!(
        plan.stderr.starts_with(
            "error: the refresh verified none of the 2 token(s): 0 unknown, 2 unverifiable; nothing was checked\n"
        ),
        "{}",
        plan.stderr
    );
    assert_eq!(mock.token_whoami_calls().await, 0);
}

/// A create whose secret only a rescue file holds (every sink refused it,
/// and the run died before recording the token) is settled from the
/// rescue file: `resolve` finds it, and `--abandon` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_only_a_rescue_file_holds_is_resolved_never_abandoned() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(
        "tokens.yaml",
        "version: 1\nregion: eu\nsecrets:\n  exec: [sh, -c, \"cat >/dev/null; exit 3\"]\ntokens:\n  - name: a\n    accountId: 1\n",
    );
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-sink")],
    );
    assert_ne!(crash.code, 0);
    assert_eq!(ws.run(&["state", "fold"]).code, 0);
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    let abandon = ws.run(&["resolve", "1/a", "--abandon"]);
    assert_eq!(abandon.code, 1, "{}", abandon.all());
    assert!(
        abandon
            .stderr
            .starts_with("error: 1/a cannot be abandoned: a sink holds token id 5001 for it"),
        "{}",
        abandon.stderr
    );
    let resolve = ws.run(&["resolve", "1/a"]);
    assert_eq!(resolve.code, 0, "{}", resolve.all());
    assert_eq!(ws.state_addresses(), ["1/a"]);
    assert_eq!(ws.state()["tokens"][0]["id"], 5001);
    assert_eq!(mock.create_requests().await.len(), 1);
}

/// A second interrupt exits at once, as promised, but only after writing
/// every secret a slow sink has not taken yet to a rescue file: a CI
/// cancel that sends two signals loses no secret.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_interrupt_exits_only_after_rescuing_what_a_slow_sink_holds() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(
        "tokens.yaml",
        "version: 1\nregion: eu\nsecrets:\n  exec: [sh, -c, \"sleep 5; cat >/dev/null\"]\ntokens:\n  - name: a\n    accountId: 1\n",
    );
    let child = ws
        .command(&["apply", "--auto-approve"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    // The answer reaches the sink thread, which waits on the command.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signal = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal(child.id());
    std::thread::sleep(Duration::from_millis(5));
    signal(child.id());
    let run = ws.finish(child);
    assert_eq!(run.code, 130, "{}", run.all());
    let rescue = ws.path("home/.local/state/tokenctl/rescue");
    let kept: String = std::fs::read_dir(&rescue)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    for secret in mock.secrets() {
        assert!(
            kept.contains(&secret),
            "a secret is in no rescue file: {}",
            run.all()
        );
    }
    assert_eq!(mock.secrets().len(), 1);
}
