//! The shipped CI examples, checked as the CI services would: against their
//! published schemas, and played step by step (two merges, the first
//! pipeline's apply killed mid-run) against a local bare repository and the
//! mock API, counting creates. Also `state fold`, which the examples run.
//! Linux only: the runners' stand-ins find processes through /proc.

#![cfg(target_os = "linux")]

use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::mock_logzio::{CREATE_PATH, MockLogzio, OWNER_TOKEN};
use support::workspace::{self, Workspace};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci")
}

fn example(name: &str) -> String {
    fs::read_to_string(examples_dir().join(name)).unwrap()
}

// ---------------------------------------------------------------------------
// Schemas

/// Returns whether `check-jsonschema` can run. Under `CI=true` a missing
/// tool fails the test; elsewhere the test is skipped with a message.
fn have_check_jsonschema() -> bool {
    let found = Command::new("check-jsonschema")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "check-jsonschema is missing: `pip install check-jsonschema` (.ci/run does)"
        );
        // Straight to the stream: the test harness would hide an eprintln.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: check-jsonschema is not installed (pip install check-jsonschema)"
        );
    }
    found
}

fn check_schema(schema: &str, file: &Path) -> Output {
    Command::new("check-jsonschema")
        .args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_ci_example_passes_its_services_published_schema() {
    if !have_check_jsonschema() {
        return;
    }
    let mut checked = 0;
    for entry in fs::read_dir(examples_dir()).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let schema = if name.contains("github") {
            "vendor.github-workflows"
        } else if name.contains("gitlab") {
            "vendor.gitlab-ci"
        } else {
            panic!("examples/ci/{name}: no schema is known for it; add one here");
        };
        let output = check_schema(schema, &file);
        assert!(output.status.success(), "{name}: {}", text(&output));
        checked += 1;
    }
    // The apply pipelines (file and PostgreSQL backends) and the nightly
    // drift checks, for both services.
    assert_eq!(checked, 6);
}

#[test]
fn the_gitlab_schema_refuses_a_colon_in_a_plain_script_line() {
    if !have_check_jsonschema() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let line =
        r#"git diff --cached --quiet || git commit -m "tokenctl: record applied tokens [skip ci]""#;
    // As the example once had it: YAML reads the line as a mapping.
    let plain = dir.path().join("plain.yml");
    fs::write(&plain, format!("job:\n  script:\n    - {line}\n")).unwrap();
    let refused = check_schema("vendor.gitlab-ci", &plain);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("is not of type 'string'"));
    // The same line in a block scalar is a string, and passes.
    let block = dir.path().join("block.yml");
    fs::write(&block, format!("job:\n  script:\n    - |\n      {line}\n")).unwrap();
    let passed = check_schema("vendor.gitlab-ci", &block);
    assert!(passed.status.success(), "{}", text(&passed));
}

// ---------------------------------------------------------------------------
// state fold

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_fold_records_a_left_journal_and_removes_it() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b", "2/c"]);
    let nothing = ws.run(&["state", "fold"]);
    assert_eq!(nothing.code, 0, "{}", nothing.all());
    assert_eq!(
        nothing.stdout,
        "Nothing to fold: there is no journal at state/tokens.state.json.journal.\n"
    );

    let crash = ws.run_with(
        &["apply", "--auto-approve", "--parallelism", "1"],
        &[("TOKENCTL_FAILPOINT", "after-outcome")],
    );
    assert_ne!(crash.code, 0, "the failpoint did not fire: {}", crash.all());
    let journal = ws.path("state/tokens.state.json.journal");
    assert!(journal.exists());

    let fold = ws.run(&["state", "fold"]);
    assert_eq!(fold.code, 0, "{}", fold.all());
    assert!(!journal.exists(), "the journal is still there");
    // 1/a was created and journaled; the next create may have started
    // while its outcome was made durable, so it is created, in doubt or
    // absent (it may even have been journaled in the same group commit).
    let created = ws.state_addresses();
    let pending = ws.pending_addresses();
    match created.as_slice() {
        [a] if a == "1/a" => assert!(pending.is_empty() || pending == ["1/b"], "{pending:?}"),
        [a, b] if a == "1/a" && b == "1/b" => assert!(pending.is_empty(), "{pending:?}"),
        other => panic!("unexpected state after the crash: {other:?}"),
    }
    let mut expected =
        String::from("Folded state/tokens.state.json.journal into state/tokens.state.json.\n");
    if !pending.is_empty() {
        expected.push_str(
            "1 create(s) in doubt; settle each with `tokenctl resolve ADDRESS`:\n  ? 1/b\n",
        );
    }
    assert_eq!(fold.stdout, expected);
    let summary = format!("{} created", created.len());
    assert!(fold.stderr.contains(&summary), "{}", fold.stderr);

    let again = ws.run(&["state", "fold"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again.stdout.starts_with("Nothing to fold"),
        "{}",
        again.stdout
    );
    ws.assert_secrets_only_in_sink(
        &mock
            .issued()
            .into_iter()
            .map(|i| i.token)
            .collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------------------
// Pipelines

/// What the first merge declares: account 1 answers at once, account 2
/// never answers in time (its creates are in flight when the apply dies).
const FIRST_MERGE: [&str; 6] = ["1/a", "1/b", "2/c", "2/d", "2/e", "2/f"];
/// What the second merge adds.
const SECOND_MERGE: [&str; 2] = ["3/g", "3/h"];
const SLOW_ACCOUNT: u64 = 2;
const PUSH_TOKEN: &str = "push-token-for-tests";
const GITLAB_HOST: &str = "gitlab.example.invalid";
const GITLAB_PROJECT: &str = "group/tokens";

/// Creates for one account that answer only after a long delay while
/// `slow` is set (else at once), issuing tokens as the mock does.
struct SlowCreates {
    issued: Arc<Mutex<Vec<String>>>,
    slow: Arc<std::sync::atomic::AtomicBool>,
}

impl Respond for SlowCreates {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let token = format!("mock-secret-{}", uuid::Uuid::new_v4());
        let mut issued = self.issued.lock().unwrap();
        issued.push(token.clone());
        let delay = match self.slow.load(std::sync::atomic::Ordering::SeqCst) {
            true => Duration::from_secs(120),
            false => Duration::ZERO,
        };
        ResponseTemplate::new(200)
            .set_delay(delay)
            .set_body_json(serde_json::json!({
                "id": 9000 + issued.len(), "name": body["name"], "token": token,
                "createdAt": 1_700_000_000u64,
            }))
    }
}

/// The git host of the pipelines: a bare repository, a clone where merges
/// are made, and runners' folders, all in one temp folder with a git
/// configuration of their own.
struct Forge {
    root: tempfile::TempDir,
    api_url: String,
    /// Every step's output, for the secrets scan.
    outputs: Mutex<Vec<String>>,
}

/// The result of one step or script: its exit code (`None`: skipped;
/// `Some(-1)`: killed by a signal).
#[derive(Debug)]
struct StepRun {
    name: String,
    code: Option<i32>,
}

/// When to kill a pipeline's apply, and the merge that lands meanwhile.
struct Interrupt {
    /// Creates the mock must have received.
    requests: usize,
    /// `created` events apply must have printed.
    created: usize,
    /// Tokens of the merge pushed while apply runs.
    merge: Vec<&'static str>,
}

impl Forge {
    fn new(api_url: &str) -> Forge {
        let forge = Forge {
            root: tempfile::tempdir().unwrap(),
            api_url: api_url.to_string(),
            outputs: Mutex::new(Vec::new()),
        };
        fs::create_dir_all(forge.path("home")).unwrap();
        fs::create_dir_all(forge.path("bin")).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokenctl"), forge.path("bin/tokenctl"))
            .unwrap();
        // The runners must set their own identity; the push URL of the
        // GitLab example leads to the bare repository.
        fs::write(
            forge.path("gitconfig"),
            format!(
                "[init]\n\tdefaultBranch = main\n[user]\n\tuseConfigOnly = true\n[url \"{}\"]\n\tinsteadOf = https://oauth2:{PUSH_TOKEN}@{GITLAB_HOST}/{GITLAB_PROJECT}.git\n",
                forge.bare().display()
            ),
        )
        .unwrap();
        forge.git(
            forge.root.path(),
            &["init", "--quiet", "--bare", "origin.git"],
        );
        // Refuses the first push that changes the state once, as a push
        // that lost a race would be, so the examples' retry runs.
        let hook = forge.bare().join("hooks/pre-receive");
        fs::write(
            &hook,
            format!(
                "#!/bin/sh\nwhile read old new ref; do\n  if [ ! -e '{0}' ] && [ \"$old\" != 0000000000000000000000000000000000000000 ] && git diff --name-only \"$old\" \"$new\" | grep -q '^state/'; then\n    touch '{0}'\n    echo 'refused once: another push got there first' >&2\n    exit 1\n  fi\ndone\n",
                forge.path("refused-once").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        forge.git(
            forge.root.path(),
            &[
                "clone",
                "--quiet",
                &forge.bare().display().to_string(),
                "dev",
            ],
        );
        forge
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn bare(&self) -> PathBuf {
        self.path("origin.git")
    }

    /// The environment every process of the forge starts from.
    fn base_env(&self, command: &mut Command) {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env("GIT_CONFIG_GLOBAL", self.path("gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LANG", "C.UTF-8");
    }

    fn git(&self, dir: &Path, args: &[&str]) -> String {
        let mut command = Command::new("git");
        self.base_env(&mut command);
        let output = command
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.invalid")
            .env("GIT_COMMITTER_NAME", "dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.invalid")
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", text(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Merges a manifest declaring `tokens` into main, as a pull request
    /// would, and returns the merge's commit.
    fn merge(&self, tokens: &[&str]) -> String {
        let dev = self.path("dev");
        if !self.git(&dev, &["ls-remote", "origin", "main"]).is_empty() {
            self.git(&dev, &["pull", "--quiet", "--rebase", "origin", "main"]);
        }
        let mut manifest = format!(
            "version: 1\napi_url: {}\nsecrets:\n  file: secrets/logzio-tokens.jsonl\ntokens:\n",
            self.api_url
        );
        for token in tokens {
            let (account, name) = token.split_once('/').unwrap();
            manifest.push_str(&format!("  - name: {name}\n    accountId: {account}\n"));
        }
        fs::write(dev.join("tokens.yaml"), manifest).unwrap();
        fs::write(
            dev.join(".gitignore"),
            "/secrets/\n/state/*.lock\n/state/*.backup\n",
        )
        .unwrap();
        self.git(&dev, &["add", "--all"]);
        self.git(&dev, &["commit", "--quiet", "-m", "merge"]);
        self.git(&dev, &["push", "--quiet", "origin", "HEAD:main"]);
        self.git(&dev, &["rev-parse", "HEAD"])
    }

    /// Returns a file of main's tip in the bare repository.
    fn main_file(&self, name: &str) -> Option<String> {
        let mut command = Command::new("git");
        self.base_env(&mut command);
        let output = command
            .args(["show", &format!("main:{name}")])
            .current_dir(self.bare())
            .output()
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Returns the state document on main.
    fn main_state_document(&self) -> Value {
        let text = self
            .main_file("state/tokens.state.json")
            .expect("no state on main");
        serde_json::from_str(&text).unwrap()
    }

    /// Returns (created, pending) addresses of the state on main, sorted.
    fn main_state(&self) -> (Vec<String>, Vec<String>) {
        let state = self.main_state_document();
        (
            workspace::addresses_in(&state, "tokens"),
            workspace::addresses_in(&state, "pending"),
        )
    }

    /// Runs a step's shell script in `dir`, as a child in a process group
    /// of its own.
    fn spawn_script(
        &self,
        dir: &Path,
        shell: &[&str],
        script: &str,
        env: &[(String, String)],
    ) -> Child {
        let file = self.path(&format!("script-{}.sh", uuid::Uuid::new_v4()));
        fs::write(&file, script).unwrap();
        let mut command = Command::new(shell[0]);
        self.base_env(&mut command);
        command
            .args(&shell[1..])
            .arg(&file)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command.spawn().unwrap()
    }

    fn finish(&self, runner: &str, name: &str, child: Child) -> StepRun {
        let output = child.wait_with_output().unwrap();
        let all = text(&output);
        self.outputs
            .lock()
            .unwrap()
            .push(format!("{runner}: {name}:\n{all}"));
        StepRun {
            name: name.to_string(),
            code: Some(output.status.code().unwrap_or(-1)),
        }
    }

    /// Waits until the apply under way has got as far as `interrupt` says,
    /// pushes the merge that lands meanwhile, and returns its commit.
    async fn reach(&self, mock: &MockLogzio, workspace: &Path, interrupt: &Interrupt) -> String {
        mock.wait_for_requests(interrupt.requests).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = fs::read_to_string(workspace.join("apply.jsonl")).unwrap_or_default();
            if events.matches("\"event\":\"created\"").count() >= interrupt.created {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "apply printed no created events:\n{events}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.merge(&interrupt.merge)
    }

    /// Fails if a secret appears in any step's output, in any file of the
    /// runners' folders but their secret sinks, or in anything pushed.
    fn assert_no_secret_outside_sinks(&self, secrets: &[String]) {
        assert!(!secrets.is_empty());
        let mut texts: Vec<(String, String)> = self
            .outputs
            .lock()
            .unwrap()
            .iter()
            .map(|o| ("a step's output".to_string(), o.clone()))
            .collect();
        let mut history = Command::new("git");
        self.base_env(&mut history);
        let history = history
            .args(["log", "--all", "-p", "--format=%H %s"])
            .current_dir(self.bare())
            .output()
            .unwrap();
        texts.push(("the history".into(), text(&history)));
        for file in walk(self.root.path()) {
            let sink = file.ends_with("secrets/logzio-tokens.jsonl");
            let git = file
                .components()
                .any(|c| c.as_os_str() == ".git" || c.as_os_str() == "origin.git");
            if !sink && !git {
                let bytes = fs::read(&file).unwrap_or_default();
                texts.push((
                    file.display().to_string(),
                    String::from_utf8_lossy(&bytes).into(),
                ));
            }
        }
        for (what, text) in texts {
            for secret in secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{what} holds a secret:\n{text}"
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_symlink() {
            continue;
        }
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Finds the `tokenctl` processes among the descendants of `pid`.
fn tokenctl_descendants(pid: u32) -> Vec<i32> {
    let mut parents: HashMap<i32, Vec<(i32, String)>> = HashMap::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head
            .split_once(" (")
            .map(|(_, c)| c)
            .unwrap_or("")
            .to_string();
        let Some(ppid) = tail.split(' ').nth(1).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        parents.entry(ppid).or_default().push((child, comm));
    }
    let mut found = Vec::new();
    let mut queue = vec![pid as i32];
    while let Some(parent) = queue.pop() {
        for (child, comm) in parents.get(&parent).into_iter().flatten() {
            if comm == "tokenctl" {
                found.push(*child);
            }
            queue.push(*child);
        }
    }
    found
}

fn kill_9(pid: i32) {
    // SAFETY: sends a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other}"),
    }
}

/// Checks that an install step installs tokenctl as the examples promise:
/// with `--locked`, from the repository named in `TOKENCTL_REPO`.
fn assert_install_line(line: &str, env: &BTreeMap<String, String>) {
    assert_eq!(
        line.trim(),
        r#"cargo install --locked --git "$TOKENCTL_REPO" tokenctl"#
    );
    let repo = env.get("TOKENCTL_REPO").expect("TOKENCTL_REPO is not set");
    assert!(repo.starts_with("https://"), "{repo}");
}

// --- GitHub Actions --------------------------------------------------------

/// Substitutes `${{ secrets.NAME }}`; any other expression fails the test,
/// so the example keeps to what this runner plays.
fn github_expand(value: &str, secrets: &BTreeMap<&str, &str>) -> String {
    let mut out = value.to_string();
    while let Some(start) = out.find("${{") {
        let end = start + out[start..].find("}}").unwrap() + 2;
        let expression = out[start + 3..end - 2].trim();
        let name = expression
            .strip_prefix("secrets.")
            .unwrap_or_else(|| panic!("unsupported expression {expression}"));
        let secret = secrets
            .get(name)
            .unwrap_or_else(|| panic!("no secret {name}"));
        out.replace_range(start..end, secret);
    }
    out
}

fn env_of(value: &Value, secrets: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), github_expand(&str_of(v), secrets)))
                .collect()
        })
        .unwrap_or_default()
}

/// Plays the `apply` job of the GitHub example for a push of `sha` to main,
/// as a GitHub runner does: each `run:` step a bash script (`shell: bash`
/// is `bash --noprofile --norc -eo pipefail`, none is `bash -e`), `if:`
/// evaluated, `actions/checkout` as a fetch of the bare repository.
async fn play_github(
    forge: &Forge,
    mock: &MockLogzio,
    runner: &str,
    sha: &str,
    interrupt: Option<&Interrupt>,
) -> (Vec<StepRun>, Option<String>) {
    let workflow: Value = serde_yaml::from_str(&example("github-actions.yml")).unwrap();
    let job = &workflow["jobs"]["apply"];
    let secrets = BTreeMap::from([("LOGZIO_OWNER_TOKEN", OWNER_TOKEN)]);
    let mut env = env_of(&workflow["env"], &secrets);
    env.extend(env_of(&job["env"], &secrets));
    let workspace = forge.path(runner).join("work");
    fs::create_dir_all(&workspace).unwrap();
    let temp = forge.path(runner).join("temp");
    fs::create_dir_all(&temp).unwrap();
    for (key, value) in [
        ("CI", "true".to_string()),
        ("GITHUB_ACTIONS", "true".into()),
        ("GITHUB_EVENT_NAME", "push".into()),
        ("GITHUB_REF", "refs/heads/main".into()),
        ("GITHUB_REF_NAME", "main".into()),
        ("GITHUB_SHA", sha.into()),
        ("GITHUB_WORKSPACE", workspace.display().to_string()),
        ("RUNNER_TEMP", temp.display().to_string()),
        ("GITHUB_OUTPUT", temp.join("output").display().to_string()),
        ("GITHUB_ENV", temp.join("env").display().to_string()),
    ] {
        env.insert(key.into(), value);
    }
    let default_shell = job["defaults"]["run"]["shell"]
        .as_str()
        .or(workflow["defaults"]["run"]["shell"].as_str())
        .map(str::to_string);
    let mut failed = false;
    let mut runs = Vec::new();
    let mut merged = None;
    for (index, step) in job["steps"].as_array().unwrap().iter().enumerate() {
        let name = step["name"]
            .as_str()
            .or(step["uses"].as_str())
            .unwrap_or("run")
            .to_string();
        let condition = step["if"].as_str().map(|c| c.trim().to_string());
        let go = match condition.as_deref() {
            None | Some("success()") => !failed,
            Some("always()") => true,
            Some("failure()") => failed,
            Some(other) => panic!("step {index}: unsupported condition `{other}`"),
        };
        if !go {
            runs.push(StepRun { name, code: None });
            continue;
        }
        let mut step_env: Vec<(String, String)> = env.clone().into_iter().collect();
        step_env.extend(env_of(&step["env"], &secrets));
        let run = if let Some(uses) = step["uses"].as_str() {
            let action = uses.split('@').next().unwrap();
            let code = match action {
                "actions/checkout" => {
                    github_checkout(forge, &workspace, sha, &step["with"]);
                    0
                }
                // The binary under test is on PATH already.
                "dtolnay/rust-toolchain" => 0,
                // Nothing to upload to: the test reads the runner's folder.
                "actions/upload-artifact" => 0,
                other => panic!("step {index}: no stand-in for action {other}"),
            };
            StepRun {
                name,
                code: Some(code),
            }
        } else {
            let script = step["run"].as_str().unwrap();
            assert!(!script.contains("${{"), "step {index}: expressions in run:");
            if script.contains("cargo install") {
                assert_install_line(script, &env);
                runs.push(StepRun {
                    name,
                    code: Some(0),
                });
                continue;
            }
            let shell = step["shell"]
                .as_str()
                .map(str::to_string)
                .or(default_shell.clone());
            let shell: &[&str] = match shell.as_deref() {
                None => &["bash", "-e"],
                Some("bash") => &["bash", "--noprofile", "--norc", "-eo", "pipefail"],
                Some(other) => panic!("step {index}: unsupported shell {other}"),
            };
            let child = forge.spawn_script(&workspace, shell, script, &step_env);
            if let Some(interrupt) = interrupt.filter(|_| script.contains("tokenctl apply")) {
                merged = Some(forge.reach(mock, &workspace, interrupt).await);
                let pids = tokenctl_descendants(child.id());
                assert_eq!(pids.len(), 1, "{pids:?}");
                kill_9(pids[0]);
            }
            forge.finish(runner, &name, child)
        };
        failed |= run.code != Some(0);
        runs.push(run);
    }
    (runs, merged)
}

/// Does what `actions/checkout` does for a push: fetch the commit (or
/// `with.ref`) to `fetch-depth` (default 1, 0 for all), then check out
/// branch main at it.
fn github_checkout(forge: &Forge, workspace: &Path, sha: &str, with: &Value) {
    let depth = with["fetch-depth"].as_u64().unwrap_or(1);
    let url = format!("file://{}", forge.bare().display());
    let git = |args: &[&str]| forge.git(workspace, args);
    git(&["init", "--quiet"]);
    git(&["remote", "add", "origin", &url]);
    let target = match with["ref"].as_str() {
        Some(reference) => format!("+refs/heads/{reference}:refs/remotes/origin/main"),
        None => format!("+{sha}:refs/remotes/origin/main"),
    };
    if depth == 0 {
        git(&[
            "fetch",
            "--quiet",
            "origin",
            "+refs/heads/*:refs/remotes/origin/*",
        ]);
        if with["ref"].is_null() {
            git(&["fetch", "--quiet", "origin", &target]);
        }
    } else {
        git(&[
            "fetch",
            "--quiet",
            &format!("--depth={depth}"),
            "origin",
            &target,
        ]);
    }
    git(&[
        "checkout",
        "--quiet",
        "--force",
        "-B",
        "main",
        "refs/remotes/origin/main",
    ]);
}

// --- GitLab CI -------------------------------------------------------------

/// Resolves `extends` one level deep, as GitLab merges a job with its
/// template (maps merged, other values replaced).
fn gitlab_job(pipeline: &Value, name: &str) -> Value {
    let job = pipeline[name].clone();
    let Some(parent) = job["extends"].as_str() else {
        return job;
    };
    let mut merged = pipeline[parent].clone();
    for (key, value) in job.as_object().unwrap() {
        match (merged.get_mut(key), value) {
            (Some(Value::Object(base)), Value::Object(extra)) => {
                base.extend(extra.clone());
            }
            _ => {
                merged[key] = value.clone();
            }
        }
    }
    merged
}

fn gitlab_lines(job: &Value, key: &str, env: &BTreeMap<String, String>) -> String {
    let mut script = String::new();
    for line in job[key].as_array().into_iter().flatten() {
        let line = line.as_str().expect("a script line that is not a string");
        if line.contains("cargo install") {
            assert_install_line(line, env);
            continue;
        }
        script.push_str(line);
        script.push('\n');
    }
    script
}

/// Plays the `tokens:apply` job of the GitLab example for a pipeline of
/// `sha` on the default branch: the runner's fetch of the commit (to
/// `GIT_DEPTH`), `before_script` and `script` as one bash script with `-e`
/// (and no pipefail, which the example must set itself), then
/// `after_script` in a shell of its own, whatever the script did. An
/// interrupt kills the whole script, as a cancel or a timeout does.
async fn play_gitlab(
    forge: &Forge,
    mock: &MockLogzio,
    runner: &str,
    sha: &str,
    interrupt: Option<&Interrupt>,
) -> (Vec<StepRun>, Option<String>) {
    let pipeline: Value = serde_yaml::from_str(&example("gitlab-ci.yml")).unwrap();
    let job = gitlab_job(&pipeline, "tokens:apply");
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for variables in [&pipeline["variables"], &job["variables"]] {
        for (key, value) in variables.as_object().into_iter().flatten() {
            let value = str_of(value);
            assert!(
                !value.contains('$'),
                "{key}: variables are taken literally here"
            );
            env.insert(key.clone(), value);
        }
    }
    let workspace = forge.path(runner).join("work");
    fs::create_dir_all(&workspace).unwrap();
    for (key, value) in [
        ("CI", "true".to_string()),
        ("GITLAB_CI", "true".into()),
        ("CI_PIPELINE_SOURCE", "push".into()),
        ("CI_COMMIT_SHA", sha.into()),
        ("CI_COMMIT_BRANCH", "main".into()),
        ("CI_DEFAULT_BRANCH", "main".into()),
        ("CI_PROJECT_DIR", workspace.display().to_string()),
        ("CI_SERVER_HOST", GITLAB_HOST.into()),
        ("CI_PROJECT_PATH", GITLAB_PROJECT.into()),
        ("LOGZIO_API_TOKEN", OWNER_TOKEN.into()),
        ("STATE_PUSH_TOKEN", PUSH_TOKEN.into()),
    ] {
        env.insert(key.into(), value);
    }
    // The runner's checkout: the pipeline's commit, detached.
    let depth: u64 = env.get("GIT_DEPTH").map_or(20, |d| d.parse().unwrap());
    let url = format!("file://{}", forge.bare().display());
    let git = |args: &[&str]| forge.git(&workspace, args);
    git(&["init", "--quiet"]);
    git(&["remote", "add", "origin", &url]);
    let refspec = "+refs/heads/main:refs/remotes/origin/main";
    if depth == 0 {
        git(&["fetch", "--quiet", "origin", refspec]);
    } else {
        git(&[
            "fetch",
            "--quiet",
            &format!("--depth={depth}"),
            "origin",
            refspec,
        ]);
    }
    git(&["checkout", "--quiet", "--force", sha]);

    let env_list: Vec<(String, String)> = env.clone().into_iter().collect();
    let shell = ["bash", "--noprofile", "--norc", "-e"];
    let script = format!(
        "{}{}",
        gitlab_lines(&job, "before_script", &env),
        gitlab_lines(&job, "script", &env)
    );
    let child = forge.spawn_script(&workspace, &shell, &script, &env_list);
    let mut merged = None;
    if let Some(interrupt) = interrupt {
        merged = Some(forge.reach(mock, &workspace, interrupt).await);
        // SAFETY: signals the process group this test started.
        assert_eq!(unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) }, 0);
    }
    let script_run = forge.finish(runner, "script", child);
    let after = gitlab_lines(&job, "after_script", &env);
    let child = forge.spawn_script(&workspace, &shell, &after, &env_list);
    let after_run = forge.finish(runner, "after_script", child);
    (vec![script_run, after_run], merged)
}

// --- The scenario ----------------------------------------------------------

#[derive(Clone, Copy)]
enum Service {
    GitHub,
    GitLab,
}

async fn play(
    service: Service,
    forge: &Forge,
    mock: &MockLogzio,
    runner: &str,
    sha: &str,
    interrupt: Option<&Interrupt>,
) -> (Vec<StepRun>, Option<String>) {
    match service {
        Service::GitHub => play_github(forge, mock, runner, sha, interrupt).await,
        Service::GitLab => play_gitlab(forge, mock, runner, sha, interrupt).await,
    }
}

fn code_of(runs: &[StepRun], name: &str) -> Option<i32> {
    runs.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {runs:?}"))
        .code
}

/// Checks the exit code of each named step.
fn assert_codes(runs: &[StepRun], expected: &[(&str, i32)]) {
    for (name, code) in expected {
        assert_eq!(code_of(runs, name), Some(*code), "step {name}: {runs:?}");
    }
}

/// Two merges to main; the first one's pipeline is killed mid-apply while
/// the second merge lands, then the second one's pipeline runs from a fresh
/// runner. No address may be created twice, the creates in flight must be
/// pending in the state pushed to main, and the exit codes must say so.
async fn two_merges_with_a_killed_apply(service: Service) {
    let mock = MockLogzio::start().await;
    let slow = Arc::new(Mutex::new(Vec::new()));
    let slowness = Arc::new(std::sync::atomic::AtomicBool::new(true));
    Mock::given(method("POST"))
        .and(path(CREATE_PATH))
        .and(body_partial_json(
            serde_json::json!({"accountId": SLOW_ACCOUNT}),
        ))
        .respond_with(SlowCreates {
            issued: slow.clone(),
            slow: slowness.clone(),
        })
        .with_priority(1)
        .mount(&mock.server)
        .await;
    let forge = Forge::new(&mock.url());
    let first = forge.merge(&FIRST_MERGE);

    // Pipeline 1: 1/a and 1/b are created, then creates of the slow account
    // are in flight when the job dies (as many as the adaptive concurrency
    // had let out; the rest are not attempted). Meanwhile the second merge
    // lands on main.
    let interrupt = Interrupt {
        requests: 3,
        created: 2,
        merge: FIRST_MERGE.iter().chain(&SECOND_MERGE).copied().collect(),
    };
    let (runs, second) = play(service, &forge, &mock, "runner-1", &first, Some(&interrupt)).await;
    let second = second.unwrap();
    let sent = mock.create_requests().await;
    let slow_addresses: Vec<&str> = FIRST_MERGE[2..].to_vec();
    let in_flight: Vec<&str> = slow_addresses
        .iter()
        .copied()
        .filter(|a| sent.iter().any(|s| s == a))
        .collect();
    let not_attempted: Vec<&str> = slow_addresses
        .iter()
        .copied()
        .filter(|a| !in_flight.contains(a))
        .collect();
    assert!(!in_flight.is_empty(), "{sent:?}");
    // The next pipeline's creates of that account answer at once.
    slowness.store(false, std::sync::atomic::Ordering::SeqCst);
    // The apply step was killed (137; -1 for GitLab's script); the steps
    // that always run after it succeeded.
    let expected: &[(&str, i32)] = match service {
        Service::GitHub => &[
            ("Apply the saved plan", 137),
            ("Plan", 0),
            ("Fold the journal into the state", 0),
            ("Commit and push the state", 0),
        ],
        Service::GitLab => &[("script", -1), ("after_script", 0)],
    };
    assert_codes(&runs, expected);
    assert_eq!(
        forge.main_state(),
        (
            vec!["1/a".to_string(), "1/b".into()],
            in_flight.iter().map(|a| a.to_string()).collect()
        ),
        "the state pushed by the killed pipeline"
    );
    assert!(forge.main_file("state/tokens.state.json.journal").is_none());
    assert!(
        forge.path("refused-once").exists(),
        "the push never had to retry"
    );
    // The state commit was rebased onto the merge that landed meanwhile.
    let parent = forge.git(&forge.bare(), &["rev-parse", "main~1"]);
    assert_eq!(parent, second, "the state commit is not on the latest main");

    let recorded = forge.main_state_document();

    // Pipeline 2, for the second merge, on a fresh runner.
    let (runs, _) = play(service, &forge, &mock, "runner-2", &second, None).await;
    // It planned on the state the first one pushed, not on its own commit.
    let plan: Value =
        serde_json::from_str(&fs::read_to_string(forge.path("runner-2/work/tokens.plan")).unwrap())
            .unwrap();
    assert_eq!(
        plan["state"],
        serde_json::json!({"lineage": recorded["lineage"], "serial": recorded["serial"]}),
        "{plan}"
    );
    let mut creates: Vec<&str> = not_attempted.clone();
    creates.extend(SECOND_MERGE);
    assert_eq!(plan["creates"], serde_json::json!(creates), "{plan}");
    // Creates in doubt fail the apply step (exit 3); the state is still
    // committed and pushed.
    let expected: &[(&str, i32)] = match service {
        Service::GitHub => &[
            ("Apply the saved plan", 3),
            ("Commit and push the state", 0),
        ],
        Service::GitLab => &[("script", 3), ("after_script", 0)],
    };
    assert_codes(&runs, expected);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for address in mock.create_requests().await {
        *counts.entry(address).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = FIRST_MERGE
        .iter()
        .chain(&SECOND_MERGE)
        .map(|a| (a.to_string(), 1))
        .collect();
    assert_eq!(counts, expected, "creates received by the API");
    let mut created: Vec<String> = vec!["1/a".into(), "1/b".into()];
    created.extend(not_attempted.iter().map(|a| a.to_string()));
    created.extend(SECOND_MERGE.iter().map(|a| a.to_string()));
    assert_eq!(
        forge.main_state(),
        (created, in_flight.iter().map(|a| a.to_string()).collect()),
        "the state on main after both pipelines"
    );

    let mut secrets: Vec<String> = mock.issued().into_iter().map(|i| i.token).collect();
    secrets.extend(slow.lock().unwrap().iter().cloned());
    assert_eq!(secrets.len(), 8);
    forge.assert_no_secret_outside_sinks(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_github_example_survives_a_killed_apply_and_a_second_merge() {
    two_merges_with_a_killed_apply(Service::GitHub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gitlab_example_survives_a_killed_job_and_a_second_merge() {
    two_merges_with_a_killed_apply(Service::GitLab).await;
}
