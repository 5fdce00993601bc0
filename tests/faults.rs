//! Fault tests: each makes its fault happen — a crash at every step of an
//! apply, a killed process, timeouts, resets, 5xx, 429 bursts, two applies
//! at once, failing sinks, SIGTERM — and checks that no token is created
//! twice, no secret is lost, and the state stays sound.

use crate::support;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use support::mock_logzio::{Behaviour, Issued, MockLogzio};
use support::workspace::Workspace;
use tokenctl::ops::create::Counts;
use wiremock::ResponseTemplate;

const THREE: [&str; 3] = ["1/a", "1/b", "2/c"];

fn secrets(mock: &MockLogzio) -> Vec<String> {
    mock.issued().into_iter().map(|i| i.token).collect()
}

fn issued_for(mock: &MockLogzio, address: &str) -> Option<Issued> {
    mock.issued()
        .into_iter()
        .find(|i| format!("{}/{}", i.account_id, i.name) == address)
}

/// Checks the invariants that must hold after any fault: the state parses,
/// every token the server issued is in the sink with its id or in doubt
/// (or was adopted by a person, in `adopted`), and no address was sent twice.
async fn assert_sound(ws: &Workspace, mock: &MockLogzio, adopted: &[String]) {
    let state = ws.state();
    assert!(state["serial"].is_u64(), "state does not parse: {state}");
    let sink = ws.sink_records();
    let pending = ws.pending_addresses();
    for issued in mock.issued() {
        let address = format!("{}/{}", issued.account_id, issued.name);
        let in_sink = sink
            .iter()
            .any(|r| r["token"] == issued.token.as_str() && r["id"] == issued.id);
        assert!(
            in_sink || pending.contains(&address) || adopted.contains(&address),
            "{address} was issued but is neither in the sink nor in doubt"
        );
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for address in mock.create_requests().await {
        *counts.entry(address).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "an address was sent twice: {counts:?}"
    );
}

/// After a run of THREE was killed during its first create: the next
/// command records the journal, with that create in doubt.
async fn assert_first_create_recovered_in_doubt(ws: &mut Workspace, mock: &MockLogzio) {
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stderr.contains("journal of an interrupted apply"),
        "{}",
        plan.stderr
    );
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    assert!(
        plan.stdout
            .contains("2 to create, 0 unchanged, 0 orphaned, 1 in doubt"),
        "{}",
        plan.stdout
    );
    assert_sound(ws, mock, &[]).await;
}

/// Settles every in-doubt address the way a person would: from the sink
/// when it holds the secret, by adopting the id the UI shows when the
/// server issued one, else by abandoning it. Returns the adopted addresses.
fn resolve_all(ws: &mut Workspace, mock: &MockLogzio) -> Vec<String> {
    let mut adopted = Vec::new();
    for address in ws.pending_addresses() {
        let in_sink = ws
            .sink_records()
            .iter()
            .any(|r| r["address"] == address.as_str());
        let run = if in_sink {
            ws.run(&["resolve", &address])
        } else if let Some(issued) = issued_for(mock, &address) {
            adopted.push(address.clone());
            ws.run(&["resolve", &address, "--adopt", &issued.id.to_string()])
        } else {
            ws.run(&["resolve", &address, "--abandon"])
        };
        assert_eq!(run.code, 0, "{}", run.all());
    }
    adopted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_loses_nothing_and_duplicates_nothing() {
    let points = [
        ("after-intent", 0, 1),
        ("after-response", 1, 1),
        ("after-sink", 1, 1),
        ("after-outcome", 1, 0),
        ("before-state-write", 3, 0),
        ("after-state-write", 3, 0),
        ("after-journal-removed", 3, 0),
    ];
    for (point, issued_before_crash, in_doubt) in points {
        let mock = MockLogzio::start().await;
        let mut ws = Workspace::new(&mock.url());
        ws.manifest(&THREE);
        let crash = ws.run_with(
            &["apply", "--auto-approve", "--parallelism", "1"],
            &[("TOKENCTL_FAILPOINT", point)],
        );
        assert_ne!(crash.code, 0, "{point}: the failpoint did not fire");
        // --parallelism bounds API calls in flight: once a response is in,
        // the next create may start while this one's secret is made durable,
        // so a crash after a response may catch one more create under way.
        let slack = usize::from(matches!(point, "after-sink" | "after-outcome"));
        let issued = mock.issued().len();
        assert!(
            (issued_before_crash..=issued_before_crash + slack).contains(&issued),
            "{point}: {issued} issued"
        );

        // The next command records what the crashed run left.
        let plan = ws.run(&["plan"]);
        assert_eq!(plan.code, 0, "{point}: {}", plan.all());
        assert!(
            !ws.path("state/tokens.state.json.journal").exists(),
            "{point}"
        );
        assert_sound(&ws, &mock, &[]).await;
        let pending = ws.pending_addresses().len();
        assert!(
            (in_doubt..=in_doubt + slack).contains(&pending),
            "{point}: {}",
            plan.stdout
        );
        if pending > 0 {
            for address in ws.pending_addresses() {
                assert!(
                    plan.stdout.contains(&format!("? {address}: in doubt")),
                    "{point}: {}",
                    plan.stdout
                );
            }
            let mut sent_before = Vec::new();
            for address in ws.pending_addresses() {
                sent_before.push((mock.requests_for(&address).await, address));
            }
            let blocked = ws.run(&["apply", "--auto-approve"]);
            assert_eq!(blocked.code, 3, "{point}: {}", blocked.all());
            for (sent, address) in sent_before {
                assert_eq!(
                    mock.requests_for(&address).await,
                    sent,
                    "{point}: {address}, in doubt, was resent"
                );
            }
        }

        let adopted = resolve_all(&mut ws, &mock);
        let finish = ws.run(&["apply", "--auto-approve"]);
        assert_eq!(finish.code, 0, "{point}: {}", finish.all());
        assert_eq!(ws.state_addresses(), THREE, "{point}");
        assert!(ws.pending_addresses().is_empty(), "{point}");
        assert_sound(&ws, &mock, &adopted).await;
        assert_eq!(mock.issued().len(), 3, "{point}: a token was created twice");
        let again = ws.run(&["plan", "--detailed-exitcode"]);
        assert_eq!(again.code, 0, "{point}: {}", again.all());
        ws.assert_secrets_only_in_sink(&secrets(&mock));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_server_delays_leaves_the_create_in_doubt() {
    let mock = MockLogzio::answering_after(Duration::from_secs(10)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let mut child = ws
        .command(&["apply", "--auto-approve"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    child.kill().unwrap();
    let killed = ws.finish(child);
    assert_ne!(killed.code, 0);

    assert_first_create_recovered_in_doubt(&mut ws, &mock).await;
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_leave_creates_in_doubt_and_are_never_resent() {
    let mock = MockLogzio::start().await;
    mock.answer_first(
        1,
        Some(2),
        ResponseTemplate::new(503).set_body_string("Service Unavailable"),
    )
    .await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 3, "{}", apply.all());
    assert!(
        apply
            .stdout
            .contains("2/c: in doubt (the server answered 503: Service Unavailable)"),
        "{}",
        apply.stdout
    );
    assert_eq!(ws.pending_addresses(), ["2/c"]);
    assert_eq!(
        ws.state()["pending"][0]["reason"],
        "the server answered 503: Service Unavailable"
    );

    let again = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(again.code, 3, "{}", again.all());
    assert_eq!(
        mock.requests_for("2/c").await,
        1,
        "an in-doubt create was resent"
    );

    // The person checked the UI: no token. Abandoning makes the next apply create it.
    let abandon = ws.run(&["resolve", "2/c", "--abandon"]);
    assert_eq!(abandon.code, 0, "{}", abandon.all());
    let plan = ws.run(&["plan"]);
    assert!(plan.stdout.contains("+ 2/c"), "{}", plan.stdout);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    assert_eq!(mock.requests_for("2/c").await, 2);
    assert_eq!(ws.state_addresses(), THREE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_in_doubt_and_adopt_records_the_token() {
    let mock = MockLogzio::start().await;
    mock.answer_first(
        1,
        Some(2),
        ResponseTemplate::new(200).set_delay(Duration::from_secs(20)),
    )
    .await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let apply = ws.run(&["apply", "--auto-approve", "--request-timeout", "300ms"]);
    assert_eq!(apply.code, 3, "{}", apply.all());
    assert_eq!(ws.pending_addresses(), ["2/c"]);
    assert_eq!(mock.requests_for("2/c").await, 1);

    let adopt = ws.run(&["resolve", "2/c", "--adopt", "777"]);
    assert_eq!(adopt.code, 0, "{}", adopt.all());
    let show = ws.run(&["state", "show", "2/c"]);
    assert!(show.stdout.contains("id:          777"), "{}", show.stdout);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert_eq!(mock.requests_for("2/c").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_after_sending_is_in_doubt() {
    // A server that reads the request and hangs up without answering.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer);
        drop(socket);
        1
    });
    let mut ws = Workspace::new(&url);
    ws.manifest(&["1/a"]);
    let apply = ws.run(&["apply", "--auto-approve", "--skip-preflight"]);
    assert_eq!(server.join().unwrap(), 1, "exactly one connection");
    assert_eq!(apply.code, 3, "{}", apply.all());
    assert_eq!(ws.pending_addresses(), ["1/a"]);
    assert!(apply.stdout.contains("1/a: in doubt"), "{}", apply.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_definite_failure() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut ws = Workspace::new(&format!("http://127.0.0.1:{port}"));
    ws.manifest(&["1/a"]);
    let apply = ws.run(&["apply", "--auto-approve", "--skip-preflight"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(
        apply.stdout.contains("1/a: failed: not sent"),
        "{}",
        apply.stdout
    );
    let plan = ws.run(&["plan"]);
    assert!(plan.stdout.contains("+ 1/a"), "{}", plan.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_429_are_retried_and_each_token_created_once() {
    for retry_after in [Some("0"), None] {
        let mock = MockLogzio::start().await;
        let mut template = ResponseTemplate::new(429).set_body_string("Too Many Requests");
        if let Some(seconds) = retry_after {
            template = template.insert_header("Retry-After", seconds);
        }
        mock.answer_first(5, None, template).await;
        let mut ws = Workspace::new(&mock.url());
        let tokens: Vec<String> = (0..8).map(|i| format!("{}/t{i}", 100 + i % 3)).collect();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        ws.manifest(&tokens);
        let apply = ws.run(&["apply", "--auto-approve", "--parallelism", "4"]);
        assert_eq!(apply.code, 0, "{retry_after:?}: {}", apply.all());
        assert!(
            apply.stderr.contains("rate limited (429), retrying"),
            "{}",
            apply.stderr
        );
        assert_eq!(mock.issued().len(), 8, "{retry_after:?}");
        assert_eq!(mock.create_requests().await.len(), 8 + 5);
        let mut created: Vec<String> = mock
            .issued()
            .iter()
            .map(|i| format!("{}/{}", i.account_id, i.name))
            .collect();
        created.sort();
        created.dedup();
        assert_eq!(created.len(), 8, "a token was created twice");
        assert_eq!(ws.state_addresses().len(), 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shedding_load_beyond_its_concurrency_gets_every_create_once() {
    let mock = MockLogzio::start_with(Behaviour {
        delay: Duration::from_millis(10),
        shed_concurrency: Some(3),
        ..Behaviour::default()
    })
    .await;
    let mut ws = Workspace::new(&mock.url());
    let tokens: Vec<String> = (0..300)
        .map(|i| format!("{}/t{i}", [1, 2, 3, 7][i % 4]))
        .collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    ws.manifest(&tokens);
    // Default flags: the ceiling is well above what the server takes.
    let apply = ws.run(&[
        "apply",
        "--auto-approve",
        "--max-creates",
        "300",
        "--output",
        "json",
    ]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let events: Vec<serde_json::Value> = apply
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let mut created: Vec<String> = mock
        .issued()
        .iter()
        .map(|i| format!("{}/{}", i.account_id, i.name))
        .collect();
    assert_eq!(created.len(), 300);
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 300, "a token was created twice");
    assert_eq!(ws.state_addresses().len(), 300);

    // Every 429 was a retry of a create, and tokenctl counted each one.
    let throttled = mock.throttled();
    assert_eq!(mock.create_requests().await.len() as u64, 300 + throttled);
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["throttled"], throttled, "{summary}");
    assert!(
        throttled <= 30,
        "{throttled} of 300 creates throttled: the controller keeps hammering"
    );
    let rate_limited = events
        .iter()
        .filter(|e| e["event"] == "rate_limited")
        .count() as u64;
    assert_eq!(rate_limited, throttled);

    // Progress events report the concurrency under the ceiling and count up.
    let progress: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "progress").collect();
    assert!(!progress.is_empty(), "{}", apply.stdout);
    let mut done = 0;
    for event in &progress {
        assert_eq!(
            (event["total"].as_u64(), event["ceiling"].as_u64()),
            (Some(300), Some(16))
        );
        let concurrency = event["concurrency"].as_u64().unwrap();
        assert!((1..=16).contains(&concurrency), "{event}");
        let now_done = event["done"].as_u64().unwrap();
        assert!(now_done >= done, "{event}");
        done = now_done;
    }
    assert!(
        progress.iter().any(|e| e["eta_ms"].is_u64()),
        "no time left was reported"
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// Answers every create of an address with 429 and `Retry-After: 0` for
/// its first `refusals` attempts, and records when each attempt came.
struct RefusingApi {
    refusals: usize,
    calls: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

impl tokenctl::api::TokenApi for RefusingApi {
    fn create(
        &self,
        account_id: u64,
        name: &str,
    ) -> impl Future<Output = Result<tokenctl::api::CreatedToken, tokenctl::api::CreateError>> + Send
    {
        let address = format!("{account_id}/{name}");
        let mut calls = self.calls.lock().unwrap();
        let attempt = calls.iter().filter(|(a, _)| *a == address).count();
        calls.push((address, std::time::Instant::now()));
        let id = calls.len() as u64;
        let result = if attempt < self.refusals {
            Err(tokenctl::api::CreateError::RateLimited {
                retry_after: Some(Duration::ZERO),
                message: "Too Many Requests".into(),
            })
        } else {
            Ok(tokenctl::api::CreatedToken {
                id,
                name: name.to_string(),
                token: tokenctl::secret::Secret::new(format!("secret-{id}")),
                created_at: 0,
            })
        };
        std::future::ready(result)
    }
}

/// Keeps delivered secrets in memory.
struct MemorySink;

impl tokenctl::sink::SecretSink for MemorySink {
    fn deliver(
        &mut self,
        _token: &tokenctl::sink::NewToken<'_>,
    ) -> Result<(), tokenctl::sink::SinkError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Runs an in-process apply of `creates` against `api` with `retry`.
async fn apply_in_process(
    api: &RefusingApi,
    creates: &[tokenctl::model::address::Address],
    retry: &tokenctl::ops::create::RetryPolicy,
) -> tokenctl::ops::create::Report {
    use tokenctl::backend::JournalWriter;
    use tokenctl::model::journal::Record;
    let dir = tempfile::tempdir().unwrap();
    let journal = JournalWriter::create(
        &dir.path().join("journal"),
        &Record::Begin {
            lineage: "test".into(),
            serial: 0,
            started: 0,
            pid: 0,
            host: None,
        },
    )
    .unwrap();
    let journal = tokenctl::backend::Journal::File(journal);
    let rescue = tokenctl::sink::Rescue::new(dir.path().join("rescue"));
    let interrupt = std::sync::atomic::AtomicBool::new(false);
    let apply = tokenctl::ops::create::Apply {
        api,
        journal: &journal,
        sinks: vec![Box::new(MemorySink)],
        rescue: &rescue,
        retry,
        parallelism: 4,
        interrupt: &interrupt,
        clock: &tokenctl::time::SystemClock,
    };
    apply.run(creates, &mut |_| {}).await
}

/// The default policy's shape, scaled down so a test waits milliseconds.
fn scaled_policy(patience: Duration) -> tokenctl::ops::create::RetryPolicy {
    tokenctl::ops::create::RetryPolicy {
        base_delay: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(60),
        patience,
    }
}

#[tokio::test]
async fn a_burst_of_429_with_retry_after_zero_does_not_spin() {
    let creates: Vec<tokenctl::model::address::Address> = (0..6)
        .map(|i| tokenctl::model::address::Address::new(1, format!("t{i}")))
        .collect();
    let policy = scaled_policy(Duration::from_secs(1));
    // `Retry-After: 0` backs off from the base, never less.
    let floor = policy.base_delay;

    // Five refusals each, then the create goes through.
    let api = RefusingApi {
        refusals: 5,
        calls: Default::default(),
    };
    let report = apply_in_process(&api, &creates, &policy).await;
    let all = |created, failed| Counts {
        created,
        failed,
        in_doubt: 0,
        not_attempted: 0,
    };
    assert_eq!(report.counts(), all(6, 0));
    assert_eq!(report.throttled, 30);
    let calls = api.calls.into_inner().unwrap();
    assert_eq!(calls.len(), 6 * 6, "each create: five 429s, then one 200");
    assert_spaced(&calls, floor);

    // A server that never stops refusing: every create gives up once its
    // waits would pass the policy's patience, a floor apart, and nothing
    // more is sent.
    let api = RefusingApi {
        refusals: usize::MAX,
        calls: Default::default(),
    };
    let report = apply_in_process(&api, &creates, &policy).await;
    assert_eq!(report.counts(), all(0, 6));
    let calls = api.calls.into_inner().unwrap();
    assert_eq!(report.throttled, calls.len() as u64);
    assert_spaced(&calls, floor);
    // Waits of 5 ms doubling to at most 40 ms (60 with jitter), within 1 s.
    for create in &creates {
        let address = create.to_string();
        let sent = calls.iter().filter(|(a, _)| *a == address).count();
        assert!(
            (1 + 1000 / 60..=1 + 1000 / 5).contains(&sent),
            "{address}: {sent}"
        );
    }
}

#[tokio::test]
async fn twelve_429s_in_a_row_are_waited_out_and_every_token_created() {
    let creates: Vec<tokenctl::model::address::Address> = ["a", "b", "c"]
        .iter()
        .map(|name| tokenctl::model::address::Address::new(1, *name))
        .collect();
    let api = RefusingApi {
        refusals: 12,
        calls: Default::default(),
    };
    let report = apply_in_process(&api, &creates, &scaled_policy(Duration::from_secs(60))).await;
    assert_eq!(
        report.counts(),
        Counts {
            created: 3,
            failed: 0,
            in_doubt: 0,
            not_attempted: 0
        }
    );
    assert_eq!(api.calls.into_inner().unwrap().len(), 3 * 13);
}

/// Checks that the attempts of each address are at least `floor` apart.
fn assert_spaced(calls: &[(String, std::time::Instant)], floor: Duration) {
    let mut last: HashMap<&str, std::time::Instant> = HashMap::new();
    for (address, at) in calls {
        if let Some(previous) = last.insert(address, *at) {
            let gap = at.duration_since(previous);
            assert!(gap >= floor, "{address} sent again after {gap:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applies_at_once_one_proceeds_the_other_fails_fast_or_waits() {
    let mock = MockLogzio::answering_after(Duration::from_millis(700)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let first = ws
        .command(&["apply", "--auto-approve", "--parallelism", "1"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;

    let second = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(second.code, 1, "{}", second.all());
    assert!(
        second.stderr.contains("the state is locked by tester@"),
        "{}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .contains("apply --auto-approve --parallelism 1"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("--lock-timeout"),
        "{}",
        second.stderr
    );

    // A plan needs no lock; one made now sees the apply's journal so far and
    // is refused as stale once the apply has recorded its outcome.
    let during = ws.run(&["plan", "-o", "during.plan"]);
    assert_eq!(during.code, 0, "{}", during.all());
    assert!(
        during.stderr.contains("an apply is running"),
        "{}",
        during.stderr
    );

    // A waiter gets the lock when the first finishes, and finds nothing to do.
    let waiter = ws
        .command(&["apply", "--auto-approve", "--lock-timeout", "60s"], &[])
        .spawn()
        .unwrap();
    let first = ws.finish(first);
    assert_eq!(first.code, 0, "{}", first.all());
    let waiter = ws.finish(waiter);
    assert_eq!(waiter.code, 0, "{}", waiter.all());
    assert!(
        waiter.stdout.contains("Nothing to create."),
        "{}",
        waiter.stdout
    );
    let stale = ws.run(&["apply", "during.plan"]);
    assert_eq!(stale.code, 1, "{}", stale.all());
    assert!(
        stale.stderr.contains("the plan is stale"),
        "{}",
        stale.stderr
    );
    assert_sound(&ws, &mock, &[]).await;
    assert_eq!(mock.create_requests().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_rescues_the_secret_and_records_the_token() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(
        "tokens.yaml",
        "version: 1\nregion: eu\nsecrets:\n  file: secrets/logzio-tokens.jsonl\n  exec: [sh, -c, \"cat >/dev/null; echo vault is sealed >&2; exit 1\"]\ntokens:\n  - name: a\n    accountId: 1\n",
    );
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("rescue file"), "{}", apply.stderr);
    let rescue_dir = ws.path("home/.local/state/tokenctl/rescue");
    let (logs, files): (Vec<_>, Vec<_>) = std::fs::read_dir(&rescue_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .partition(|p| p.extension().is_some_and(|e| e == "log"));
    assert_eq!(files.len(), 1);
    // What the sink printed is kept beside it, not shown.
    assert_eq!(
        std::fs::read_to_string(&logs[0]).unwrap(),
        "vault is sealed\n"
    );
    let rescue = files[0].clone();
    assert!(
        apply.stderr.contains(&rescue.display().to_string()),
        "path not printed"
    );
    let token = &mock.issued()[0].token;
    assert!(
        std::fs::read_to_string(&rescue)
            .unwrap()
            .contains(token.as_str())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&rescue).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(ws.state_addresses(), ["1/a"], "the token must be recorded");
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_sink_is_refused_before_any_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    // The sink file's path is a folder: it cannot be opened for writing.
    std::fs::create_dir_all(ws.path("secrets/logzio-tokens.jsonl")).unwrap();
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("secret sink"), "{}", apply.stderr);

    ws.write(
        "tokens.yaml",
        "version: 1\nregion: eu\nsecrets:\n  exec: [no-such-secret-store]\ntokens:\n  - name: a\n    accountId: 1\n",
    );
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(
        apply
            .stderr
            .contains("`no-such-secret-store` was not found"),
        "{}",
        apply.stderr
    );
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_file_must_be_git_ignored() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let git = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(ws.dir.path())
        .status()
        .unwrap();
    assert!(git.success());
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(
        apply.stderr.contains("git does not ignore it"),
        "{}",
        apply.stderr
    );
    assert!(
        apply.stderr.contains("/secrets/logzio-tokens.jsonl"),
        "{}",
        apply.stderr
    );
    assert!(mock.create_requests().await.is_empty());
    ws.write(".gitignore", "/secrets/\n");
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_apply_finishes_in_flight_records_and_summarizes() {
    let mock = MockLogzio::answering_after(Duration::from_millis(1500)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let child = ws
        .command(&["apply", "--auto-approve", "--parallelism", "1"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let run = ws.finish(child);
    assert_eq!(run.code, 130, "{}", run.all());
    assert!(run.stderr.contains("Interrupted"), "{}", run.stderr);
    assert!(
        run.stdout
            .contains("1 created, 0 failed, 0 in doubt, 2 not attempted"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("interrupted: 1 created, 2 not attempted"),
        "{}",
        run.stderr
    );
    assert!(!ws.path("state/tokens.state.json.journal").exists());
    assert_eq!(ws.state_addresses(), ["1/a"]);
    assert_eq!(mock.create_requests().await.len(), 1);
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains("2 to create, 1 unchanged"),
        "{}",
        plan.stdout
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_refuses_an_address_that_is_not_in_doubt() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let run = ws.run(&["resolve", "1/a", "--abandon"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("1/a is not in doubt"), "{}", run.stderr);
    let both = ws.run(&["resolve", "1/a", "--abandon", "--adopt", "3"]);
    assert_eq!(both.code, 1, "--adopt and --abandon exclude each other");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_interrupt_exits_at_once_and_the_journal_keeps_the_next_run_correct() {
    use std::io::{BufRead, BufReader};

    let mock = MockLogzio::answering_after(Duration::from_secs(20)).await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&THREE);
    let mut child = ws
        .command(&["apply", "--auto-approve", "--parallelism", "1"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-TERM");
    // The second signal must reach a process that has seen the first.
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .expect("no word of the first interrupt");
        if line.contains("Interrupted:") {
            break;
        }
    }
    signal("-INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // It left without waiting for the create in flight, so nothing was
    // folded: the journal is still there...
    assert!(ws.path("state/tokens.state.json.journal").exists());
    assert!(!ws.state_path().exists());

    // ...and the next command records the create in flight as in doubt.
    assert_first_create_recovered_in_doubt(&mut ws, &mock).await;
}
