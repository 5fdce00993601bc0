//! The PostgreSQL backend against a real server that the tests start
//! themselves: every runner in its own working folder (its own disk, as a
//! pipeline runner has), one database between them. Each fault is made to
//! happen — a crash at every step, the server dying, the lock holder's
//! connection killed, runners racing, a runner paused past its lease — and
//! is followed by a normal apply from another folder and the invariant
//! checks: no address sent twice, every issued secret in a sink or in
//! doubt, the state parses, no secret or password in any output.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use support::mock_logzio::MockLogzio;
use support::pg::{Cluster, PASSWORD};
use support::workspace::{Run, Workspace, addresses_in as addresses};

const SIX: [&str; 6] = ["1/a", "1/b", "1/c", "2/d", "2/e", "2/f"];

/// One database and the runners (working folders) that share it.
struct Team {
    conn: String,
    db: String,
    api: String,
}

impl Team {
    fn new(cluster: &Cluster, api: &str) -> Team {
        let db = cluster.create_db();
        Team {
            conn: cluster.conn_str(&db),
            db,
            api: api.to_string(),
        }
    }

    /// Returns a new runner: a folder with the manifest and no state.
    fn runner(&self, tokens: &[&str]) -> Workspace {
        let ws = Workspace::new(&self.api);
        let mut text = String::from(
            "version: 1\nregion: eu\nbackend:\n  postgres:\n    schema: tk\n    state: team\nsecrets:\n  file: secrets/logzio-tokens.jsonl\ntokens:\n",
        );
        for token in tokens {
            let (account, name) = token.split_once('/').unwrap();
            text.push_str(&format!("  - name: {name}\n    accountId: {account}\n"));
        }
        ws.write("tokens.yaml", &text);
        ws
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("TOKENCTL_PG_CONN_STR", self.conn.as_str())];
        env.extend_from_slice(extra);
        env
    }

    fn run(&self, ws: &mut Workspace, args: &[&str]) -> Run {
        ws.run_with(args, &self.env(&[]))
    }

    fn run_with(&self, ws: &mut Workspace, args: &[&str], extra: &[(&str, &str)]) -> Run {
        ws.run_with(args, &self.env(extra))
    }

    /// Returns the stored state, through `state pull`.
    fn state(&self, ws: &mut Workspace) -> serde_json::Value {
        let pull = self.run(ws, &["state", "pull"]);
        assert_eq!(pull.code, 0, "{}", pull.all());
        serde_json::from_str(&pull.stdout).unwrap()
    }
}

fn cluster() -> Option<&'static Cluster> {
    support::pg::shared()
}

/// The invariants after any fault, over every runner's sink: the state
/// parses, each issued token is in some runner's sink with its id or in
/// doubt, no address was sent twice, and no secret or password was
/// printed or written outside a sink.
async fn assert_sound(team: &Team, runners: &mut [&mut Workspace], mock: &MockLogzio) {
    let state = team.state(runners[0]);
    assert!(state["serial"].is_u64(), "state does not parse: {state}");
    let pending = addresses(&state, "pending");
    let sinks: Vec<serde_json::Value> = runners.iter().flat_map(|ws| ws.sink_records()).collect();
    for issued in mock.issued() {
        let address = format!("{}/{}", issued.account_id, issued.name);
        let in_sink = sinks
            .iter()
            .any(|r| r["token"] == issued.token.as_str() && r["id"] == issued.id);
        // Adopted by a person after it was in doubt: recorded with its id.
        let recorded = state["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == issued.id && t["address"] == address.as_str());
        assert!(
            in_sink || pending.contains(&address) || recorded,
            "{address} was issued but is neither in a sink, in doubt nor recorded"
        );
        assert!(
            !in_sink || recorded || pending.contains(&address),
            "{address} is in a sink but not in the state"
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
    let secrets: Vec<String> = mock.issued().into_iter().map(|i| i.token).collect();
    for ws in runners.iter() {
        for run in &ws.runs {
            assert!(
                !run.contains(PASSWORD),
                "a run printed the password:\n{run}"
            );
        }
        if !secrets.is_empty() && !ws.sink_records().is_empty() {
            ws.assert_secrets_only_in_sink(&secrets);
        }
    }
}

/// Settles the creates in doubt as a person would (adopt what the server
/// issued, abandon the rest), then applies again: every address exists.
async fn settle_and_finish(team: &Team, ws: &mut Workspace, mock: &MockLogzio, tokens: &[&str]) {
    let state = team.state(ws);
    for address in addresses(&state, "pending") {
        let issued = mock
            .issued()
            .into_iter()
            .find(|i| format!("{}/{}", i.account_id, i.name) == address);
        let run = match issued {
            Some(issued) => team.run(
                ws,
                &["resolve", &address, "--adopt", &issued.id.to_string()],
            ),
            None => team.run(ws, &["resolve", &address, "--abandon"]),
        };
        assert_eq!(run.code, 0, "{}", run.all());
    }
    let apply = team.run(ws, &["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let state = team.state(ws);
    let mut expected: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(addresses(&state, "tokens"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_in_different_folders_share_state_journal_and_lock() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut first = team.runner(&SIX);
    let apply = team.run(&mut first, &["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(
        apply.stdout.contains("(schema tk, state team)"),
        "{}",
        apply.stdout
    );
    assert!(!first.path("state").exists(), "a state file was written");

    // Another runner, with nothing on its disk, sees every token.
    let mut second = team.runner(&SIX);
    let plan = team.run(&mut second, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.contains("0 to create, 6 unchanged"),
        "{}",
        plan.stdout
    );

    // `state pull` prints exactly the file backend's document.
    let pulled = team.run(&mut second, &["state", "pull"]);
    let state: tokenctl::model::state::State =
        tokenctl::model::state::State::from_json(&pulled.stdout).unwrap();
    assert_eq!(pulled.stdout, state.to_json());
    assert_eq!(state.tokens.len(), 6);
    let history: usize = cluster
        .psql(&team.db, "SELECT count(*) FROM tk.history")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(history, 0, "the first state has no earlier version");
    let journal = cluster
        .psql(&team.db, "SELECT count(*) FROM tk.journal")
        .unwrap();
    assert_eq!(journal, "0", "the journal rows were folded and removed");

    // --state names a file, which a postgres backend does not use.
    let refused = team.run(&mut second, &["plan", "--state", "x.json"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("keeps the state in PostgreSQL"),
        "{}",
        refused.stderr
    );
    assert_sound(&team, &mut [&mut first, &mut second], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_string_is_checked_and_its_password_never_shown() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&["1/a"]);
    let missing = ws.run(&["plan"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("TOKENCTL_PG_CONN_STR is not set"),
        "{}",
        missing.stderr
    );

    let wrong = format!(
        "postgres://postgres:wrong-{PASSWORD}@127.0.0.1:{}/{}?sslmode=disable",
        cluster.port, team.db
    );
    let run = ws.run_with(&["plan"], &[("TOKENCTL_PG_CONN_STR", &wrong)]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("password authentication failed"),
        "{}",
        run.stderr
    );
    assert!(!run.all().contains(PASSWORD), "{}", run.all());

    let remote = format!("postgres://postgres:{PASSWORD}@db.example:5432/x?sslmode=disable");
    let run = ws.run_with(&["plan"], &[("TOKENCTL_PG_CONN_STR", &remote)]);
    assert!(run.stderr.contains("loopback"), "{}", run.stderr);
    let prefer = format!("postgres://postgres:{PASSWORD}@127.0.0.1/x?sslmode=prefer");
    let run = ws.run_with(&["plan"], &[("TOKENCTL_PG_CONN_STR", &prefer)]);
    assert!(run.stderr.contains("plain text"), "{}", run.stderr);
    assert!(!run.all().contains(PASSWORD));

    // The password may come from PGPASSWORD instead.
    let bare = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} sslmode=disable",
        cluster.port, team.db
    );
    let run = ws.run_with(
        &["plan"],
        &[("TOKENCTL_PG_CONN_STR", &bare), ("PGPASSWORD", PASSWORD)],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(mock.issued().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_is_recovered_by_another_runner() {
    let Some(cluster) = cluster() else { return };
    let points = [
        "after-intent",
        "after-response",
        "after-sink",
        "after-outcome",
        "before-state-write",
        "after-state-write",
        "after-journal-removed",
    ];
    for point in points {
        let mock = MockLogzio::start().await;
        let team = Team::new(cluster, &mock.url());
        let mut crashed = team.runner(&SIX[..3]);
        let crash = team.run_with(
            &mut crashed,
            &["apply", "--auto-approve", "--parallelism", "1"],
            &[("TOKENCTL_FAILPOINT", point)],
        );
        assert_ne!(crash.code, 0, "{point}: the failpoint did not fire");

        // Another runner, on another disk, records what the crash left.
        let mut next = team.runner(&SIX[..3]);
        let apply = team.run(&mut next, &["apply", "--auto-approve"]);
        assert!(
            apply.code == 0 || apply.code == 3,
            "{point}: {}",
            apply.all()
        );
        assert_sound(&team, &mut [&mut next, &mut crashed], &mock).await;
        settle_and_finish(&team, &mut next, &mock, &SIX[..3]).await;
        assert_sound(&team, &mut [&mut next, &mut crashed], &mock).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runner_fails_fast_naming_the_holder_or_waits() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::answering_after(Duration::from_millis(700)).await;
    let team = Team::new(cluster, &mock.url());
    let mut first = team.runner(&SIX[..3]);
    let mut second = team.runner(&SIX[..3]);
    let child = first
        .command(
            &["apply", "--auto-approve", "--parallelism", "1"],
            &team.env(&[]),
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let fast = team.run(&mut second, &["apply", "--auto-approve"]);
    assert_eq!(fast.code, 1, "{}", fast.all());
    assert!(
        fast.stderr.contains("is locked by tester@"),
        "{}",
        fast.stderr
    );
    assert!(fast.stderr.contains("--lock-timeout"), "{}", fast.stderr);
    // A plan meanwhile reads the live run's journal in one snapshot.
    let plan = team.run(&mut second, &["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stderr.contains("an apply is running"),
        "{}",
        plan.stderr
    );
    // Its creates under way are in progress, not in doubt: it is alive.

    let json = team.run(&mut second, &["plan", "--output", "json"]);
    assert_eq!(json.code, 0, "{}", json.all());
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    for change in document["changes"].as_array().unwrap() {
        if let Some(reason) = change["reason"].as_str() {
            assert!(reason.starts_with("in progress"), "{change}");
        }
    }
    // `state pull` shows the same: what the running apply sent so far is
    // in the document, recorded or under way, though no row was stored.
    let sent = mock.create_requests().await;
    let pull = team.run(&mut second, &["state", "pull"]);
    assert_eq!(pull.code, 0, "{}", pull.all());
    assert!(
        pull.stderr.contains("an apply is running"),
        "{}",
        pull.stderr
    );
    let pulled: serde_json::Value = serde_json::from_str(&pull.stdout).unwrap();
    let mut held = addresses(&pulled, "tokens");
    held.extend(addresses(&pulled, "pending"));
    assert!(!sent.is_empty());
    for address in &sent {
        assert!(held.contains(address), "{address} is missing from {pulled}");
    }
    let waited = team.run(
        &mut second,
        &["apply", "--auto-approve", "--lock-timeout", "5m"],
    );
    assert_eq!(waited.code, 0, "{}", waited.all());
    assert!(
        waited.stdout.contains("Nothing to create."),
        "{}",
        waited.stdout
    );
    let done = first.finish(child);
    assert_eq!(done.code, 0, "{}", done.all());
    assert_sound(&team, &mut [&mut first, &mut second], &mock).await;
}

async fn race(runners: usize) {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::answering_after(Duration::from_millis(50)).await;
    let team = Team::new(cluster, &mock.url());
    let mut folders: Vec<Workspace> = (0..runners).map(|_| team.runner(&SIX)).collect();
    let children: Vec<_> = folders
        .iter()
        .map(|ws| {
            ws.command(
                &["apply", "--auto-approve", "--lock-timeout", "10m"],
                &team.env(&[]),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for (ws, child) in folders.iter_mut().zip(children) {
        let run = ws.finish(child);
        assert_eq!(run.code, 0, "{}", run.all());
    }
    assert_eq!(mock.create_requests().await.len(), SIX.len());
    let mut all: Vec<&mut Workspace> = folders.iter_mut().collect();
    assert_sound(&team, &mut all, &mock).await;
    assert_eq!(addresses(&team.state(all[0]), "tokens").len(), SIX.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_at_once_create_each_address_once() {
    race(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_runners_at_once_create_each_address_once() {
    race(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lock_holders_connection_stops_its_creates() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::answering_after(Duration::from_millis(800)).await;
    let team = Team::new(cluster, &mock.url());
    let mut first = team.runner(&SIX);
    let child = first
        .command(
            &["apply", "--auto-approve", "--parallelism", "1"],
            &team.env(&[]),
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(2).await;
    cluster
        .psql(
            &team.db,
            "SELECT pg_terminate_backend(backend_pid) FROM tk.runs WHERE ended IS NULL",
        )
        .unwrap();
    let killed = first.finish(child);
    assert_ne!(killed.code, 0, "{}", killed.all());
    let sent = mock.create_requests().await.len();
    assert!(
        sent < SIX.len(),
        "creates went on after the lock was lost: {sent}"
    );
    // The answer in flight reached the sink, and its outcome the local
    // recovery file, whose path was printed.
    assert!(killed.stderr.contains("recovery"), "{}", killed.all());

    let mut next = team.runner(&SIX);
    let apply = team.run(&mut next, &["apply", "--auto-approve"]);
    assert!(apply.code == 0 || apply.code == 3, "{}", apply.all());
    assert_sound(&team, &mut [&mut next, &mut first], &mock).await;
    // Back on the first runner, its recovery file settles what it knew.
    let merge = team.run(&mut first, &["plan"]);
    assert_eq!(merge.code, 0, "{}", merge.all());
    assert!(
        merge
            .stderr
            .contains("recorded the journal of an interrupted apply"),
        "{}",
        merge.all()
    );
    let recovery = first.path("home/.local/state/tokenctl/recovery");
    assert_eq!(
        std::fs::read_dir(&recovery).unwrap().count(),
        0,
        "merged files are removed"
    );
    settle_and_finish(&team, &mut next, &mock, &SIX).await;
    assert_sound(&team, &mut [&mut next, &mut first], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_paused_past_its_lease_sends_no_further_create() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::answering_after(Duration::from_millis(300)).await;
    let team = Team::new(cluster, &mock.url());
    let mut paused = team.runner(&SIX);
    let lease = [("TOKENCTL_PG_LEASE", "5s")];
    let child = paused
        .command(
            &["apply", "--auto-approve", "--parallelism", "1"],
            &team.env(&lease),
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The server ends the silent session after the lease; the other runner
    // waits for the lock, bounded by its timeout rather than a sleep.
    let mut other = team.runner(&SIX);
    let took_over = team.run_with(
        &mut other,
        &["apply", "--auto-approve", "--lock-timeout", "5m"],
        &lease,
    );
    assert!(
        took_over.code == 0 || took_over.code == 3,
        "{}",
        took_over.all()
    );
    let before = mock.create_requests().await.len();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let resumed = paused.finish(child);
    assert_ne!(resumed.code, 0, "{}", resumed.all());
    assert_eq!(
        mock.create_requests().await.len(),
        before,
        "the paused runner sent a create after losing its lease"
    );
    assert_sound(&team, &mut [&mut other, &mut paused], &mock).await;
    settle_and_finish(&team, &mut other, &mock, &SIX).await;
    assert_sound(&team, &mut [&mut other, &mut paused], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_file_from_another_runner_goes_stale() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut first = team.runner(&SIX[..2]);
    assert_eq!(team.run(&mut first, &["apply", "--auto-approve"]).code, 0);
    let mut planner = team.runner(&SIX[..3]);
    let plan = team.run(&mut planner, &["plan", "-o", "plan.json"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    let mut other = team.runner(&SIX[..3]);
    assert_eq!(team.run(&mut other, &["apply", "--auto-approve"]).code, 0);
    let stale = team.run(&mut planner, &["apply", "plan.json"]);
    assert_eq!(stale.code, 1, "{}", stale.all());
    assert!(stale.stderr.contains("stale"), "{}", stale.stderr);
    assert_sound(&team, &mut [&mut first, &mut other, &mut planner], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_push_moves_a_state_file_in_and_refuses_what_would_lose_tokens() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    // A repository on the file backend, migrated: push, then drop the file.
    let mut old = Workspace::new(&mock.url());
    old.manifest(&SIX[..2]);
    assert_eq!(old.run(&["apply", "--auto-approve"]).code, 0);
    let file_state = old.read("state/tokens.state.json");
    let mut ws = team.runner(&SIX[..2]);
    ws.write("old.json", &file_state);
    let push = team.run(&mut ws, &["state", "push", "old.json"]);
    assert_eq!(push.code, 0, "{}", push.all());
    assert_eq!(team.run(&mut ws, &["state", "pull"]).stdout, file_state);
    let plan = team.run(&mut ws, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.all());

    // Another lineage, and an older serial, are refused without --force.
    let mut other = Workspace::new(&mock.url());
    other.manifest(&["3/z"]);
    assert_eq!(other.run(&["apply", "--auto-approve"]).code, 0);
    ws.write("other.json", &other.read("state/tokens.state.json"));
    let refused = team.run(&mut ws, &["state", "push", "other.json"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("another state"),
        "{}",
        refused.stderr
    );
    let apply = team.run(&mut ws, &["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0);
    let mut older: serde_json::Value = serde_json::from_str(&file_state).unwrap();
    older["serial"] = 0.into();
    ws.write("older.json", &older.to_string());
    let refused = team.run(&mut ws, &["state", "push", "older.json"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("older"), "{}", refused.stderr);
    let forced = team.run(&mut ws, &["state", "push", "other.json", "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    let state = team.state(&mut ws);
    assert_eq!(addresses(&state, "tokens"), ["3/z"]);
    let history: usize = cluster
        .psql(&team.db, "SELECT count(*) FROM tk.history")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(history, 1, "the replaced version is kept");

    // An open journal (a crashed run's) refuses any push.
    let mut crashed = team.runner(&["3/z", "3/y"]);
    let crash = team.run_with(
        &mut crashed,
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-intent")],
    );
    assert_ne!(crash.code, 0);
    let refused = team.run(&mut ws, &["state", "push", "other.json", "--force"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("open journal"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_is_refused_before_any_create() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..2]);
    assert_eq!(team.run(&mut ws, &["plan"]).code, 0);
    cluster
        .psql(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                team.db
            ),
        )
        .unwrap();
    let apply = team.run(&mut ws, &["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(apply.stderr.contains("read-only"), "{}", apply.stderr);
    assert!(mock.issued().is_empty());
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_dying_mid_apply_loses_nothing() {
    // A cluster of its own: this test stops it.
    let Some(own) = Cluster::start() else { return };
    let mock = MockLogzio::answering_after(Duration::from_millis(800)).await;
    let team = Team::new(&own, &mock.url());
    let mut first = team.runner(&SIX);
    let child = first
        .command(
            &["apply", "--auto-approve", "--parallelism", "1"],
            &team.env(&[]),
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(2).await;
    own.stop_immediate();
    let died = first.finish(child);
    assert_ne!(died.code, 0, "{}", died.all());
    let sent = mock.create_requests().await.len();
    assert!(
        sent < SIX.len(),
        "creates went on without the database: {sent}"
    );
    own.start_server();
    let mut next = team.runner(&SIX);
    let apply = team.run(&mut next, &["apply", "--auto-approve"]);
    assert!(apply.code == 0 || apply.code == 3, "{}", apply.all());
    assert_sound(&team, &mut [&mut next, &mut first], &mock).await;
    settle_and_finish(&team, &mut next, &mock, &SIX).await;
    assert_sound(&team, &mut [&mut next, &mut first], &mock).await;
}

/// Makes a CA and a server certificate for 127.0.0.1 and localhost signed
/// by it, with the `openssl` command; returns (CA file, cert, key).
fn make_certificates(
    dir: &std::path::Path,
    ca_name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca_key = format!("{ca_name}.key");
    let ca_pem = format!("{ca_name}.pem");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca_name}"),
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    (
        dir.join(ca_pem),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_a_ca_file_connects_and_any_other_certificate_is_refused() {
    // A cluster of its own: this test turns TLS on and plain text off.
    let Some(own) = Cluster::start() else { return };
    let mock = MockLogzio::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path(), "team-ca");
    let (other_ca, _, _) = {
        let other = certs.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        make_certificates(&other, "other-ca")
    };
    for (from, name) in [(&cert, "server.crt"), (&key, "server.key")] {
        let to = own.folder().join(name);
        std::fs::copy(from, &to).unwrap();
        own.give_to_server(&to);
    }
    let key_path = own.folder().join("server.key");
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cert_path = own.folder().join("server.crt");
    for setting in [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", cert_path.display()),
        format!("ssl_key_file = '{}'", key_path.display()),
    ] {
        own.psql("postgres", &format!("ALTER SYSTEM SET {setting}"))
            .unwrap();
    }
    // Plain text is refused from now on, so a connection that works is TLS.
    let hba = own.folder().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("hostnossl all all all reject\n{rules}")).unwrap();
    own.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let team = Team::new(&own, &mock.url());
    let tls = |host: &str, root: &std::path::Path| {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/{}?sslmode=verify-full&sslrootcert={}",
            own.port,
            team.db,
            root.display()
        )
    };
    let mut ws = team.runner(&SIX[..2]);
    // The reload is asynchronous: wait until the server speaks TLS.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = ws.run_with(
            &["apply", "--auto-approve"],
            &[("TOKENCTL_PG_CONN_STR", &tls("localhost", &ca))],
        );
        if run.code == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", run.all());
        std::thread::sleep(Duration::from_millis(200));
    }
    let by_ip = ws.run_with(
        &["plan", "--detailed-exitcode"],
        &[("TOKENCTL_PG_CONN_STR", &tls("127.0.0.1", &ca))],
    );
    assert_eq!(by_ip.code, 0, "{}", by_ip.all());
    // A certificate from another CA, or checked against the public roots,
    // is refused before anything is read.
    let wrong = ws.run_with(
        &["plan"],
        &[("TOKENCTL_PG_CONN_STR", &tls("localhost", &other_ca))],
    );
    assert_eq!(wrong.code, 1, "{}", wrong.all());
    assert!(wrong.stderr.contains("cannot connect"), "{}", wrong.stderr);
    let public = format!(
        "postgres://postgres:{PASSWORD}@localhost:{}/{}?sslmode=verify-full",
        own.port, team.db
    );
    let refused = ws.run_with(&["plan"], &[("TOKENCTL_PG_CONN_STR", &public)]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    for run in &ws.runs {
        assert!(!run.contains(PASSWORD), "{run}");
    }
    assert_eq!(mock.issued().len(), 2);
}

/// Waits for a started run, killing it and failing the test when it has
/// not ended after `limit` (generous: it proves the run ends, not how fast).
fn finish_within(ws: &mut Workspace, mut child: std::process::Child, limit: Duration) -> Run {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let run = ws.finish(child);
            panic!("the run did not end within {limit:?}:\n{}", run.all());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ws.finish(child)
}

/// The manifest of a runner of `team`, for messages: where the state is.
fn location(cluster: &Cluster, db: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{db} (schema tk, state team)",
        cluster.port
    )
}

const CONN_HINT: &str = "hint: set TOKENCTL_PG_CONN_STR to e.g. postgres://USER@HOST/DB?sslmode=verify-full&sslrootcert=CA.pem (the password may come from PGPASSWORD or ~/.pgpass); it is never read from the manifest or the command line\n";

#[test]
fn a_malformed_connection_string_is_refused_without_quoting_it() {
    // No server needed: the string is refused before any connection.
    let mut ws = Workspace::new("http://127.0.0.1:9");
    let team = Team {
        conn: String::new(),
        db: String::new(),
        api: ws.api_url.clone(),
    };
    let runner = team.runner(&["1/a"]);
    ws.write(
        "tokens.yaml",
        &std::fs::read_to_string(runner.path("tokens.yaml")).unwrap(),
    );
    let cases = [
        (
            "pg://ci:Pw-Secret-1c@127.0.0.1:5432/db",
            "it looks like a URI but does not start with postgres:// or postgresql://",
        ),
        (
            "postgres:/ci:Pw-Secret-1c@127.0.0.1:5432/db",
            "it looks like a URI but does not start with postgres:// or postgresql://",
        ),
        (
            "postgres://ci:Pw-Secret-1c@127.0.0.1:5432/db?sslmode=Pw-Secret-mode",
            "the value of sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full; use verify-full, or disable for a loopback server",
        ),
        (
            "host=127.0.0.1 user=ci Pw-Secret-1c",
            "a word that is no known parameter has no value; write key=value pairs or a postgres:// URI",
        ),
    ];
    for (conn, why) in cases {
        let run = ws.run_with(&["plan"], &[("TOKENCTL_PG_CONN_STR", conn)]);
        assert_eq!(run.code, 1, "{conn}: {}", run.all());
        assert_eq!(run.stdout, "", "{conn}");
        assert_eq!(
            run.stderr,
            format!("error: TOKENCTL_PG_CONN_STR is not usable: {why}\n{CONN_HINT}"),
            "{conn}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_may_come_from_a_private_password_file() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&["1/a"]);
    let bare = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        cluster.port, team.db
    );
    ws.write(
        "home/.pgpass",
        &format!(
            "# host:port:database:user:password\nelsewhere:*:*:*:wrong\n127.0.0.1:{}:*:postgres:{PASSWORD}\n",
            cluster.port
        ),
    );
    let pgpass = ws.path("home/.pgpass");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = ws.run_with(&["plan"], &[("TOKENCTL_PG_CONN_STR", &bare)]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.all().contains(PASSWORD), "{}", run.all());

    // PGPASSFILE names another file; one that others may read is refused.
    std::fs::copy(&pgpass, ws.path("shared-pgpass")).unwrap();
    let shared = ws.path("shared-pgpass");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = ws.run_with(
        &["plan"],
        &[
            ("TOKENCTL_PG_CONN_STR", &bare),
            ("PGPASSFILE", shared.to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(
        run.stderr,
        format!(
            "error: cannot use the password file {0}: group or others may read it (mode 0644)\nhint: make it private (`chmod 600 {0}`), as libpq requires, or set the password in TOKENCTL_PG_CONN_STR or PGPASSWORD\n",
            shared.display()
        )
    );
}

#[test]
fn session_settings_out_of_range_are_refused_naming_the_variable() {
    let mut ws = Workspace::new("http://127.0.0.1:9");
    let team = Team {
        conn: "postgres://u@127.0.0.1/db?sslmode=disable".into(),
        db: String::new(),
        api: ws.api_url.clone(),
    };
    let runner = team.runner(&["1/a"]);
    ws.write(
        "tokens.yaml",
        &std::fs::read_to_string(runner.path("tokens.yaml")).unwrap(),
    );
    for value in ["abc", "-5s", "0", "1ms", "30d"] {
        let run = ws.run_with(&["plan"], &team.env(&[("TOKENCTL_PG_LEASE", value)]));
        assert_eq!(run.code, 1, "{value}: {}", run.all());
        assert_eq!(
            run.stderr,
            format!(
                "error: TOKENCTL_PG_LEASE={value} is not a duration from 5s to 1h\nhint: set TOKENCTL_PG_LEASE to a duration such as 30s or 2m within that range, or unset it for the default (README: Shared state on PostgreSQL)\n"
            ),
            "{value}"
        );
    }
    for (var, value, range) in [
        ("TOKENCTL_PG_LOCK_TIMEOUT", "0", "1s to 10m"),
        ("TOKENCTL_PG_STATEMENT_TIMEOUT", "2h", "1s to 1h"),
    ] {
        let run = ws.run_with(&["plan"], &team.env(&[(var, value)]));
        assert_eq!(run.code, 1, "{var}: {}", run.all());
        assert!(
            run.stderr.starts_with(&format!(
                "error: {var}={value} is not a duration from {range}\n"
            )),
            "{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_ends_plan_and_apply_with_a_named_timeout() {
    // A cluster of its own: this test stops it.
    let Some(own) = Cluster::start() else { return };
    let mock = MockLogzio::answering_after(Duration::from_millis(1500)).await;
    let mut team = Team::new(&own, &mock.url());
    team.conn.push_str("&connect_timeout=2");
    let mut ws = team.runner(&SIX[..3]);
    let settings = [
        ("TOKENCTL_PG_LEASE", "5s"),
        ("TOKENCTL_PG_STATEMENT_TIMEOUT", "1s"),
    ];
    assert_eq!(team.run(&mut ws, &["plan"]).code, 0);

    // An apply under way when the server stops: its journal writes go
    // unanswered, and the fold at its end is bounded too.
    let child = ws
        .command(
            &["apply", "--auto-approve", "--parallelism", "1"],
            &team.env(&settings),
        )
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let frozen = own.freeze();
    let apply = finish_within(&mut ws, child, Duration::from_secs(120));
    let plan = ws.command(&["plan"], &team.env(&settings)).spawn().unwrap();
    let plan = finish_within(&mut ws, plan, Duration::from_secs(120));
    drop(frozen);

    assert_ne!(apply.code, 0, "{}", apply.all());
    assert!(
        apply.stderr.contains(&format!(
            "error: {}: no answer within 6s (statement_timeout 1s plus 5s): the server is stopped or out of reach\n",
            location(&own, &team.db)
        )),
        "{}",
        apply.stderr
    );
    assert_eq!(plan.code, 1, "{}", plan.all());
    assert_eq!(plan.stdout, "");
    assert_eq!(
        plan.stderr,
        format!(
            "error: no connection to {} within connect_timeout (2s): the TCP connect, TLS and the startup handshake must finish within it\nhint: check that the server is up and not overloaded; a slow network may need connect_timeout=SECONDS in TOKENCTL_PG_CONN_STR\n",
            location(&own, &team.db)
        )
    );
    // Once the server is back, nothing was lost.
    let mut next = team.runner(&SIX[..3]);
    let apply = team.run(&mut next, &["apply", "--auto-approve"]);
    assert!(apply.code == 0 || apply.code == 3, "{}", apply.all());
    assert_sound(&team, &mut [&mut next, &mut ws], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_on_tokenctls_tables_ends_with_lock_timeout() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..2]);
    assert_eq!(team.run(&mut ws, &["apply", "--auto-approve"]).code, 0);
    ws.write("tokens.yaml", &team.runner(&SIX[..3]).read("tokens.yaml"));
    let mut holder = cluster.psql_spawn(
        &team.db,
        "lock-holder",
        "BEGIN; LOCK TABLE tk.states IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600)",
    );
    cluster.wait_until(
        &team.db,
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
           WHERE c.relname = 'states' AND l.mode = 'AccessExclusiveLock' AND l.granted)",
    );
    let settings = [("TOKENCTL_PG_LOCK_TIMEOUT", "1s")];
    let expected = format!(
        "error: {}: a table or row tokenctl needs stayed locked by another session past lock_timeout (1s); nothing was changed by this statement\nhint: another session holds a lock on tokenctl's tables (see pg_locks and pg_stat_activity); end it, or raise TOKENCTL_PG_LOCK_TIMEOUT\n",
        location(cluster, &team.db)
    );
    let plan = ws.command(&["plan"], &team.env(&settings)).spawn().unwrap();
    let plan = finish_within(&mut ws, plan, Duration::from_secs(120));
    let apply = ws
        .command(&["apply", "--auto-approve"], &team.env(&settings))
        .spawn()
        .unwrap();
    let apply = finish_within(&mut ws, apply, Duration::from_secs(120));
    cluster
        .psql(
            &team.db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'lock-holder'",
        )
        .unwrap();
    let _ = holder.wait();
    assert_eq!((plan.code, plan.stdout.as_str()), (1, ""), "{}", plan.all());
    assert_eq!(plan.stderr, expected);
    assert_eq!(
        (apply.code, apply.stdout.as_str()),
        (1, ""),
        "{}",
        apply.all()
    );
    assert_eq!(apply.stderr, expected);
    assert_eq!(mock.create_requests().await.len(), 2, "no create was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_on_the_lock_connection_keeps_the_lock() {
    // The heartbeat's ping queues behind the run's own statements on the
    // lock connection; a wait longer than half the lease there must not
    // make the run give up its lock and its creates.
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..1]);
    assert_eq!(team.run(&mut ws, &["apply", "--auto-approve"]).code, 0);
    ws.write("tokens.yaml", &team.runner(&SIX[..3]).read("tokens.yaml"));
    // The journal table is locked for 8 s: the run's snapshot on its lock
    // connection waits that long, the heartbeat's ping behind it, while
    // the lease is 5 s (a ping every 1.25 s).
    let mut holder = cluster.psql_spawn(
        &team.db,
        "slow-reader",
        "BEGIN; LOCK TABLE tk.journal IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8); COMMIT",
    );
    cluster.wait_until(
        &team.db,
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
           WHERE c.relname = 'journal' AND l.mode = 'AccessExclusiveLock' AND l.granted)",
    );
    let apply = team.run_with(
        &mut ws,
        &["apply", "--auto-approve"],
        &[
            ("TOKENCTL_PG_LEASE", "5s"),
            ("TOKENCTL_PG_LOCK_TIMEOUT", "1m"),
        ],
    );
    let _ = holder.wait();
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert_eq!(addresses(&team.state(&mut ws), "tokens"), SIX[..3]);
}

/// Writes the file backend's manifest of `tokens` into the runner `ws`,
/// returning the postgres one it had.
fn on_file_backend(ws: &Workspace, tokens: &[&str]) -> String {
    let postgres = ws.read("tokens.yaml");
    ws.manifest(tokens);
    postgres
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_left_at_the_path_is_refused_until_it_is_moved_in() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..3]);
    let postgres = on_file_backend(&ws, &SIX[..3]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.write("tokens.yaml", &postgres);
    let refusal = "error: tokens.yaml keeps the state in PostgreSQL (backend: postgres), but a state file is still at state/tokens.state.json; using the database now would plan without the tokens it records\nhint: move it into the database first: `tokenctl state push state/tokens.state.json` (it folds a journal beside it), then move state/tokens.state.json and its .journal and .backup out of the way and check `tokenctl plan` (README: Moving state)\n";
    for args in [
        &["plan"][..],
        &["apply", "--auto-approve"],
        &["state", "list"],
    ] {
        let run = team.run(&mut ws, args);
        assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{args:?}");
        assert_eq!(run.stderr, refusal, "{args:?}");
    }
    assert_eq!(
        mock.create_requests().await.len(),
        3,
        "nothing was created twice"
    );

    // The migration the hint describes.
    let push = team.run(&mut ws, &["state", "push", "state/tokens.state.json"]);
    assert_eq!(push.code, 0, "{}", push.all());
    let still = team.run(&mut ws, &["plan"]);
    assert_eq!(still.stderr, refusal, "the file is still there");
    std::fs::rename(ws.state_path(), ws.path("migrated.json")).unwrap();
    std::fs::remove_file(ws.path("state/tokens.state.json.backup")).ok();
    let plan = team.run(&mut ws, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert!(
        plan.stdout.contains("0 to create, 3 unchanged"),
        "{}",
        plan.stdout
    );

    // A journal alone at the path (a first apply that died) is refused too.
    let mut other = team.runner(&SIX[..3]);
    let postgres = on_file_backend(&other, &SIX[3..]);
    let crash = other.run_with(
        &["apply", "--auto-approve", "--parallelism", "1"],
        &[("TOKENCTL_FAILPOINT", "after-intent")],
    );
    assert_ne!(crash.code, 0);
    assert!(!other.state_path().exists());
    other.write("tokens.yaml", &postgres);
    let run = team.run(&mut other, &["plan"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.starts_with("error: tokens.yaml keeps the state in PostgreSQL (backend: postgres), but the journal of an apply is still at state/tokens.state.json.journal;"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_beside_a_pushed_state_file_is_folded_in_first() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..3]);
    let postgres = on_file_backend(&ws, &SIX[..1]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    // An apply on the file backend dies after recording 1/b as created.
    ws.manifest(&SIX[..3]);
    let crash = ws.run_with(
        &["apply", "--auto-approve", "--parallelism", "1"],
        &[("TOKENCTL_FAILPOINT", "after-outcome")],
    );
    assert_ne!(crash.code, 0, "{}", crash.all());
    assert!(ws.path("state/tokens.state.json.journal").exists());
    ws.write("tokens.yaml", &postgres);

    let push = team.run(&mut ws, &["state", "push", "state/tokens.state.json"]);
    assert_eq!(push.code, 0, "{}", push.all());
    // The next create may have been sent while 1/b's outcome was written:
    // then it is in doubt.
    assert!(
        push.stderr.starts_with(
            "note: recorded the journal of an interrupted apply in the state: 1 created, 0 failed, "
        ),
        "{}",
        push.stderr
    );
    assert!(!ws.path("state/tokens.state.json.journal").exists());
    std::fs::rename(ws.state_path(), ws.path("migrated.json")).unwrap();
    assert_eq!(addresses(&team.state(&mut ws), "tokens"), ["1/a", "1/b"]);
    assert_sound(&team, &mut [&mut ws], &mock).await;
    settle_and_finish(&team, &mut ws, &mock, &SIX[..3]).await;
    assert_sound(&team, &mut [&mut ws], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_drops_a_token_shows_the_diff_and_needs_force() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..2]);
    assert_eq!(team.run(&mut ws, &["apply", "--auto-approve"]).code, 0);
    let mut state = team.state(&mut ws);
    let serial = state["serial"].as_u64().unwrap();
    state["serial"] = (serial + 1).into();
    let dropped_id = state["tokens"][1]["id"].clone();
    state["tokens"].as_array_mut().unwrap().remove(1);
    ws.write(
        "dropped.json",
        &serde_json::to_string_pretty(&state).unwrap(),
    );

    let refused = team.run(&mut ws, &["state", "push", "dropped.json"]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert_eq!(
        refused.stderr,
        format!(
            "error: dropped.json would drop from the state what it records (the diff above shows it):\n  - token 1/b (id {dropped_id})\nhint: the state is the only record of these tokens, and the next apply would create each dropped address again; if they were revoked in the UI and this is meant, push again with --force\n"
        )
    );
    let location = location(cluster, &team.db);
    assert!(
        refused.stdout.starts_with(&format!(
            "--- {location} (before)\n+++ {location} (after)\n"
        )),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stdout.contains("-      \"address\": \"1/b\","),
        "{}",
        refused.stdout
    );
    assert_eq!(addresses(&team.state(&mut ws), "tokens"), SIX[..2]);

    let forced = team.run(&mut ws, &["state", "push", "dropped.json", "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert!(
        forced.stdout.contains("-      \"address\": \"1/b\","),
        "{}",
        forced.stdout
    );
    assert_eq!(addresses(&team.state(&mut ws), "tokens"), ["1/a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_that_cannot_move_on_is_never_stored() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut ws = team.runner(&SIX[..2]);
    assert_eq!(team.run(&mut ws, &["apply", "--auto-approve"]).code, 0);
    let mut state = team.state(&mut ws);
    for serial in [u64::MAX, i64::MAX as u64] {
        state["serial"] = serial.into();
        ws.write("huge.json", &serde_json::to_string_pretty(&state).unwrap());
        for args in [
            &["state", "push", "huge.json"][..],
            &["state", "push", "huge.json", "--force"],
        ] {
            let run = team.run(&mut ws, args);
            assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{}", run.all());
            assert_eq!(
                run.stderr,
                format!(
                    "error: huge.json has serial {serial}, which cannot move on (the largest serial is 9223372036854775807)\nhint: a serial moves on by one per write; push the document with the serial it had (`tokenctl state pull` shows the stored one)\n"
                )
            );
        }
    }
    // Nothing wrapped: the next change moves the stored serial on by one.
    let before = team.state(&mut ws)["serial"].as_u64().unwrap();
    ws.write("tokens.yaml", &team.runner(&SIX[..3]).read("tokens.yaml"));
    assert_eq!(team.run(&mut ws, &["apply", "--auto-approve"]).code, 0);
    assert_eq!(team.state(&mut ws)["serial"].as_u64().unwrap(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_pull_shows_what_the_journal_of_a_dead_run_records() {
    let Some(cluster) = cluster() else { return };
    let mock = MockLogzio::start().await;
    let team = Team::new(cluster, &mock.url());
    let mut crashed = team.runner(&SIX[..3]);
    // The first apply dies after recording its first create: no state
    // row was ever written, only journal rows.
    let crash = team.run_with(
        &mut crashed,
        &["apply", "--auto-approve", "--parallelism", "1"],
        &[("TOKENCTL_FAILPOINT", "after-outcome")],
    );
    assert_ne!(crash.code, 0, "{}", crash.all());
    let mut issued: Vec<String> = mock
        .issued()
        .into_iter()
        .map(|i| format!("{}/{}", i.account_id, i.name))
        .collect();
    issued.sort();

    let mut other = team.runner(&SIX[..3]);
    let pull = team.run(&mut other, &["state", "pull"]);
    assert_eq!(pull.code, 0, "{}", pull.all());
    assert!(
        pull.stderr.starts_with(
            "note: recorded the journal of an interrupted apply in the state: 1 created, 0 failed, "
        ),
        "{}",
        pull.stderr
    );
    // Every token the server issued is in the pulled document: recorded,
    // or in doubt when the run died before its outcome.
    let state: serde_json::Value = serde_json::from_str(&pull.stdout).unwrap();
    let tokens = addresses(&state, "tokens");
    assert_eq!(tokens.len(), 1, "{state}");
    let mut held = tokens;
    held.extend(addresses(&state, "pending"));
    held.sort();
    for address in &issued {
        assert!(held.contains(address), "{address} is missing from {state}");
    }
    assert_sound(&team, &mut [&mut other, &mut crashed], &mock).await;
    settle_and_finish(&team, &mut other, &mock, &SIX[..3]).await;
}
