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
use support::ci::{self, Context, Release, ReleaseHost};
use support::mock_logzio::{CREATE_PATH, MockLogzio, OWNER_TOKEN};
use support::workspace::{self, Workspace};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

pub(crate) fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci")
}

pub(crate) fn example(name: &str) -> String {
    fs::read_to_string(examples_dir().join(name)).unwrap()
}

// ---------------------------------------------------------------------------
// Schemas

/// Returns whether `check-jsonschema` can run. Under `CI=true` a missing
/// tool fails the test; elsewhere the test is skipped with a message.
pub(crate) fn have_check_jsonschema() -> bool {
    let found = Command::new("check-jsonschema")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !support::host::in_ci(),
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

pub(crate) fn check_schema(schema: &str, file: &Path) -> Output {
    Command::new("check-jsonschema")
        .args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .unwrap()
}

pub(crate) fn text(output: &Output) -> String {
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
pub(crate) const PUSH_TOKEN: &str = "push-token-for-tests";
pub(crate) const GITLAB_HOST: &str = "gitlab.example.invalid";
pub(crate) const GITLAB_PROJECT: &str = "group/tokens";

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
pub(crate) struct Forge {
    root: tempfile::TempDir,
    api_url: String,
    /// The stand-in release host's base URL, for installs of tokenctl.
    pub(crate) release_url: String,
    /// Every step's output, for the secrets scan.
    pub(crate) outputs: Mutex<Vec<String>>,
}

/// The result of one step or script: its exit code (`None`: skipped;
/// `Some(-1)`: killed by a signal).
#[derive(Debug)]
pub(crate) struct StepRun {
    pub(crate) name: String,
    pub(crate) code: Option<i32>,
}

/// When to kill a pipeline's apply, and the merge that lands meanwhile.
pub(crate) struct Interrupt {
    /// Creates the mock must have received.
    requests: usize,
    /// `created` events apply must have printed.
    created: usize,
    /// Tokens of the merge pushed while apply runs.
    merge: Vec<&'static str>,
}

impl Forge {
    /// A forge whose manifests point at the API at `api_url`; the jobs
    /// install tokenctl from the release host at `release_url`.
    pub(crate) fn new(api_url: &str, release_url: &str) -> Forge {
        let forge = Forge {
            root: tempfile::tempdir().unwrap(),
            api_url: api_url.to_string(),
            release_url: release_url.to_string(),
            outputs: Mutex::new(Vec::new()),
        };
        fs::create_dir_all(forge.path("home")).unwrap();
        // On PATH before the system's folders, for stand-ins of tools.
        fs::create_dir_all(forge.path("bin")).unwrap();
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

    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    pub(crate) fn bare(&self) -> PathBuf {
        self.path("origin.git")
    }

    /// The environment every process of the forge starts from.
    fn base_env(&self, command: &mut Command) {
        let path = format!("{}:{}", self.path("bin").display(), support::host::path());
        command
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env("GIT_CONFIG_GLOBAL", self.path("gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LANG", "C.UTF-8");
    }

    pub(crate) fn git(&self, dir: &Path, args: &[&str]) -> String {
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
    pub(crate) fn merge(&self, tokens: &[&str]) -> String {
        let mut manifest = format!(
            "version: 1\napi_url: {}\nsecrets:\n  file: secrets/logzio-tokens.jsonl\ntokens:\n",
            self.api_url
        );
        for token in tokens {
            let (account, name) = token.split_once('/').unwrap();
            manifest.push_str(&format!("  - name: {name}\n    accountId: {account}\n"));
        }
        self.merge_manifest(&manifest)
    }

    /// Merges `manifest` as tokens.yaml into main; returns the commit.
    pub(crate) fn merge_manifest(&self, manifest: &str) -> String {
        let dev = self.path("dev");
        if !self.git(&dev, &["ls-remote", "origin", "main"]).is_empty() {
            self.git(&dev, &["pull", "--quiet", "--rebase", "origin", "main"]);
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
    pub(crate) fn main_file(&self, name: &str) -> Option<String> {
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
    pub(crate) fn main_state(&self) -> (Vec<String>, Vec<String>) {
        let state = self.main_state_document();
        (
            workspace::addresses_in(&state, "tokens"),
            workspace::addresses_in(&state, "pending"),
        )
    }

    /// Runs a step's shell script in `dir`, as a child in a process group
    /// of its own.
    pub(crate) fn spawn_script(
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

    pub(crate) fn finish(&self, runner: &str, name: &str, child: Child) -> StepRun {
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
    pub(crate) async fn reach(
        &self,
        mock: &MockLogzio,
        workspace: &Path,
        interrupt: &Interrupt,
    ) -> String {
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
    pub(crate) fn assert_no_secret_outside_sinks(&self, secrets: &[String]) {
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
pub(crate) fn tokenctl_descendants(pid: u32) -> Vec<i32> {
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

pub(crate) fn kill_9(pid: i32) {
    // SAFETY: sends a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

pub(crate) fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other}"),
    }
}

// --- GitHub Actions --------------------------------------------------------

/// A GitHub job on one runner: its folders, its environment, what its
/// steps wrote (outputs, GITHUB_PATH) and the caches to save at its end.
pub(crate) struct GitHubJob<'a> {
    pub(crate) forge: &'a Forge,
    pub(crate) runner: String,
    pub(crate) workspace: PathBuf,
    temp: PathBuf,
    /// The job's environment: what the runner sets, and the workflow's.
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) context: Context,
    failed: bool,
    pub(crate) runs: Vec<StepRun>,
    /// Folders steps added to GITHUB_PATH, the latest first.
    path: Vec<String>,
    /// Caches missed on restore: (key, folder), saved when the job ends.
    saves: Vec<(String, PathBuf)>,
    steps: usize,
    /// The outputs of the last `uses:` of this repository's action.
    pub(crate) action_outputs: BTreeMap<String, String>,
}

impl<'a> GitHubJob<'a> {
    /// Prepares `runner` for a job of `event` (push or pull_request).
    pub(crate) fn new(forge: &'a Forge, runner: &str, event: &str) -> GitHubJob<'a> {
        let workspace = forge.path(runner).join("work");
        let temp = forge.path(runner).join("temp");
        fs::create_dir_all(&workspace).unwrap();
        fs::create_dir_all(&temp).unwrap();
        fs::create_dir_all(forge.path(runner).join("toolcache")).unwrap();
        let mut env = BTreeMap::new();
        for (key, value) in [
            ("CI", "true".to_string()),
            ("GITHUB_ACTIONS", "true".into()),
            ("GITHUB_EVENT_NAME", event.into()),
            ("GITHUB_REPOSITORY", ci::GITHUB_REPO.into()),
            ("GITHUB_SERVER_URL", "https://github.example.invalid".into()),
            ("GITHUB_API_URL", "http://127.0.0.1:9".into()),
            ("GITHUB_RUN_ID", "4242".into()),
            ("GITHUB_WORKSPACE", workspace.display().to_string()),
            ("RUNNER_TEMP", temp.display().to_string()),
            (
                "RUNNER_TOOL_CACHE",
                forge.path(runner).join("toolcache").display().to_string(),
            ),
        ] {
            env.insert(key.to_string(), value);
        }
        let mut context = Context::default();
        context.set("github.event_name", event);
        context.set("github.token", ci::GITHUB_TOKEN);
        context.set("secrets.LOGZIO_OWNER_TOKEN", OWNER_TOKEN);
        GitHubJob {
            forge,
            runner: runner.to_string(),
            workspace,
            temp,
            env,
            context,
            failed: false,
            runs: Vec::new(),
            path: Vec::new(),
            saves: Vec::new(),
            steps: 0,
            action_outputs: BTreeMap::new(),
        }
    }

    fn env_of(&self, value: &Value, context: &Context) -> BTreeMap<String, String> {
        value
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), context.expand(&str_of(v))))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Plays the steps of `job` in a workflow: `actions/checkout` as a
    /// fetch of the bare repository at `sha`, this repository's action as
    /// its composite steps, `if:` evaluated; an interrupt kills tokenctl
    /// during the action's apply, as a cancel or a lost runner would.
    pub(crate) async fn play_job(
        &mut self,
        workflow: &Value,
        job: &str,
        sha: &str,
        mock: &MockLogzio,
        interrupt: Option<&Interrupt>,
    ) -> Option<String> {
        let job = &workflow["jobs"][job];
        let context = self.context.clone();
        let workflow_env = self.env_of(&workflow["env"], &context);
        let job_env = self.env_of(&job["env"], &context);
        self.env.extend(workflow_env);
        self.env.extend(job_env);
        let mut merged = None;
        for (index, step) in job["steps"].as_array().unwrap().iter().enumerate() {
            let uses = step["uses"].as_str().unwrap_or("");
            let name = step["name"].as_str().unwrap_or(uses).to_string();
            if !self.context.condition(step["if"].as_str(), self.failed) {
                self.runs.push(StepRun { name, code: None });
                continue;
            }
            let (action, reference) = uses.split_once('@').unwrap_or((uses, ""));
            match action {
                "actions/checkout" => {
                    github_checkout(self.forge, &self.workspace, sha, &step["with"]);
                    self.runs.push(StepRun {
                        name,
                        code: Some(0),
                    });
                }
                "your-org/tokenctl" => {
                    let context = self.context.clone();
                    let step_env = self.env_of(&step["env"], &context);
                    merged = self
                        .play_action(reference, &step["with"], &step_env, mock, interrupt)
                        .await
                        .or(merged);
                }
                other => panic!("step {index}: no stand-in for `{other}`"),
            }
        }
        // The runner's post-job cache saves.
        for (key, folder) in std::mem::take(&mut self.saves) {
            if !self.failed && folder.exists() {
                let cache = self.forge.path("actions-cache").join(&key);
                fs::create_dir_all(cache.parent().unwrap()).unwrap();
                copy_dir(&folder, &cache);
            }
        }
        merged
    }

    /// Plays action.yml at the repository's root as a composite action
    /// used at `reference` with `with`, each step of it as GitHub runs it.
    async fn play_action(
        &mut self,
        reference: &str,
        with: &Value,
        step_env: &BTreeMap<String, String>,
        mock: &MockLogzio,
        interrupt: Option<&Interrupt>,
    ) -> Option<String> {
        let action: Value =
            serde_yaml::from_str(&fs::read_to_string(ci::repo_root().join("action.yml")).unwrap())
                .unwrap();
        let mut context = self.context.clone();
        context.set("github.action_ref", reference);
        context.set("github.action_repository", "your-org/tokenctl");
        context.set("github.action_path", &ci::repo_root().display().to_string());
        let inputs = action["inputs"].as_object().unwrap();
        for key in with.as_object().into_iter().flatten().map(|(k, _)| k) {
            assert!(inputs.contains_key(key), "the action has no input {key}");
        }
        for (key, spec) in inputs {
            let value = match with.get(key) {
                Some(value) => str_of(value),
                None => context.expand(&spec["default"].as_str().map_or_else(
                    || {
                        assert_ne!(spec["required"], true, "input {key} is required");
                        String::new()
                    },
                    str::to_string,
                )),
            };
            context.set(&format!("inputs.{key}"), &value);
        }
        let mut merged = None;
        for step in action["runs"]["steps"].as_array().unwrap() {
            let name = context.expand(step["name"].as_str().unwrap());
            if !context.condition(step["if"].as_str(), self.failed) {
                self.runs.push(StepRun { name, code: None });
                continue;
            }
            let id = step["id"].as_str().unwrap_or("");
            let code = if let Some(uses) = step["uses"].as_str() {
                let with = &step["with"];
                match uses.split('@').next().unwrap() {
                    "actions/cache" => {
                        let key = context.expand(with["key"].as_str().unwrap());
                        let folder = PathBuf::from(context.expand(with["path"].as_str().unwrap()));
                        let cache = self.forge.path("actions-cache").join(&key);
                        if cache.exists() {
                            copy_dir(&cache, &folder);
                        } else {
                            self.saves.push((key, folder));
                        }
                        0
                    }
                    // Nothing to upload to: the test reads the runner's folder.
                    "actions/upload-artifact" => 0,
                    other => panic!("no stand-in for `{other}` in the action"),
                }
            } else {
                assert_eq!(
                    step["shell"], "bash",
                    "{name}: the action's steps run in bash"
                );
                let script = step["run"].as_str().unwrap();
                assert!(!script.contains("${{"), "{name}: expressions in run:");
                self.steps += 1;
                let output = self.temp.join(format!("output-{}", self.steps));
                let path_file = self.temp.join(format!("path-{}", self.steps));
                let mut env: BTreeMap<String, String> = self.env.clone();
                env.extend(step_env.clone());
                env.extend(self.env_of(&step["env"], &context));
                let system_path = support::host::path();
                let mut path = self.path.clone();
                path.push(self.forge.path("bin").display().to_string());
                path.push(system_path);
                for (key, value) in [
                    ("PATH", path.join(":")),
                    ("GITHUB_ACTION_PATH", ci::repo_root().display().to_string()),
                    ("GITHUB_OUTPUT", output.display().to_string()),
                    ("GITHUB_PATH", path_file.display().to_string()),
                    (
                        "GITHUB_STEP_SUMMARY",
                        self.temp.join("summary.md").display().to_string(),
                    ),
                ] {
                    env.insert(key.into(), value);
                }
                let dir = match step["working-directory"].as_str() {
                    Some(d) => self.workspace.join(context.expand(d)),
                    None => self.workspace.clone(),
                };
                let env: Vec<(String, String)> = env.into_iter().collect();
                let shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail"];
                let child = self.forge.spawn_script(&dir, &shell, script, &env);
                if let Some(interrupt) =
                    interrupt.filter(|_| id == "run" && context.values["inputs.command"] == "apply")
                {
                    merged = Some(self.forge.reach(mock, &self.workspace, interrupt).await);
                    let pids = tokenctl_descendants(child.id());
                    assert_eq!(pids.len(), 1, "{pids:?}");
                    kill_9(pids[0]);
                }
                let run = self.forge.finish(&self.runner, &name, child);
                for (key, value) in ci::read_outputs(&output) {
                    context.set(&format!("steps.{id}.outputs.{key}"), &value);
                }
                for line in fs::read_to_string(&path_file).unwrap_or_default().lines() {
                    self.path.insert(0, line.to_string());
                }
                run.code.unwrap()
            };
            self.failed |= code != 0;
            self.runs.push(StepRun {
                name,
                code: Some(code),
            });
        }
        self.action_outputs = action["outputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), context.expand(v["value"].as_str().unwrap())))
            .collect();
        merged
    }
}

/// Copies a folder's files into another, as a cache restore or save does.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Plays the `apply` job of the GitHub example for a push of `sha` to main.
async fn play_github(
    forge: &Forge,
    mock: &MockLogzio,
    runner: &str,
    sha: &str,
    interrupt: Option<&Interrupt>,
) -> (Vec<StepRun>, Option<String>, BTreeMap<String, String>) {
    let workflow: Value = serde_yaml::from_str(&example("github-actions.yml")).unwrap();
    let mut job = GitHubJob::new(forge, runner, "push");
    for (key, value) in [
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_REF_NAME", "main"),
        ("GITHUB_SHA", sha),
        ("TOKENCTL_RELEASE_URL", &forge.release_url),
    ] {
        job.env.insert(key.into(), value.into());
    }
    let merged = job.play_job(&workflow, "apply", sha, mock, interrupt).await;
    (job.runs, merged, job.action_outputs)
}

/// Does what `actions/checkout` does for a push: fetch the commit (or
/// `with.ref`) to `fetch-depth` (default 1, 0 for all), then check out
/// branch main at it.
pub(crate) fn github_checkout(forge: &Forge, workspace: &Path, sha: &str, with: &Value) {
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

/// Returns the job `name` of the component an example includes, rendered
/// with the example's inputs and `overrides` (the stand-in release host).
pub(crate) fn gitlab_component_job(
    example_file: &str,
    component: &str,
    name: &str,
    overrides: &[(&str, Value)],
) -> Value {
    let pipeline: Value = serde_yaml::from_str(&example(example_file)).unwrap();
    let mut inputs = ci::included_inputs(&pipeline, component);
    for (key, value) in overrides {
        inputs.insert(key.to_string(), value.clone());
    }
    let rendered: Value = serde_yaml::from_str(&ci::render_component(component, &inputs)).unwrap();
    rendered[name].clone()
}

pub(crate) fn gitlab_lines(job: &Value, key: &str) -> String {
    let mut script = String::new();
    for line in job[key].as_array().into_iter().flatten() {
        script.push_str(line.as_str().expect("a script line that is not a string"));
        script.push('\n');
    }
    script
}

/// The environment GitLab gives a job, plus the job's variables.
pub(crate) fn gitlab_env(
    job: &Value,
    workspace: &Path,
    extra: &[(&str, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in job["variables"].as_object().into_iter().flatten() {
        let value = str_of(value);
        assert!(
            !value.contains('$'),
            "{key}: variables are taken literally here"
        );
        env.insert(key.clone(), value);
    }
    for (key, value) in [
        ("CI", "true".to_string()),
        ("GITLAB_CI", "true".into()),
        ("CI_PROJECT_DIR", workspace.display().to_string()),
        ("CI_SERVER_HOST", GITLAB_HOST.into()),
        ("CI_PROJECT_PATH", GITLAB_PROJECT.into()),
        ("CI_PROJECT_ID", ci::GITLAB_PROJECT_ID.into()),
        ("CI_API_V4_URL", "http://127.0.0.1:9/api/v4".into()),
        (
            "CI_JOB_URL",
            "https://gitlab.example.invalid/group/tokens/-/jobs/7".into(),
        ),
        ("CI_DEFAULT_BRANCH", "main".into()),
    ] {
        env.insert(key.into(), value);
    }
    for (key, value) in extra {
        env.insert(key.to_string(), value.clone());
    }
    env
}

/// The runner's checkout: the pipeline's commit, detached, fetched to
/// `GIT_DEPTH` (GitLab's default 20).
pub(crate) fn gitlab_checkout(
    forge: &Forge,
    workspace: &Path,
    sha: &str,
    env: &BTreeMap<String, String>,
) {
    let depth: u64 = env.get("GIT_DEPTH").map_or(20, |d| d.parse().unwrap());
    let url = format!("file://{}", forge.bare().display());
    let git = |args: &[&str]| forge.git(workspace, args);
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
}

/// Runs a GitLab job on a fresh runner for `sha`: the checkout, then
/// `before_script` and `script` as one script, then `after_script`.
/// Returns the script's exit code and everything the job printed.
pub(crate) fn run_gitlab_job(
    forge: &Forge,
    runner: &str,
    sha: &str,
    job: &Value,
    extra: &[(&str, String)],
) -> (i32, String) {
    let workspace = forge.path(runner).join("work");
    fs::create_dir_all(&workspace).unwrap();
    let env = gitlab_env(job, &workspace, extra);
    gitlab_checkout(forge, &workspace, sha, &env);
    let env: Vec<(String, String)> = env.into_iter().collect();
    let script = format!(
        "{}{}",
        gitlab_lines(job, "before_script"),
        gitlab_lines(job, "script")
    );
    let child = forge.spawn_script(&workspace, &GITLAB_SHELL, &script, &env);
    let output = child.wait_with_output().unwrap();
    let mut log = text(&output);
    if job.get("after_script").is_some() {
        let after = gitlab_lines(job, "after_script");
        let child = forge.spawn_script(&workspace, &GITLAB_SHELL, &after, &env);
        log.push_str(&text(&child.wait_with_output().unwrap()));
    }
    forge
        .outputs
        .lock()
        .unwrap()
        .push(format!("{runner}:\n{log}"));
    (output.status.code().unwrap_or(-1), log)
}

/// The shell GitLab runs a job's scripts in here: bash with `-e` (and no
/// pipefail, which the component must set itself).
pub(crate) const GITLAB_SHELL: [&str; 4] = ["bash", "--noprofile", "--norc", "-e"];

/// Plays the `tokens:apply` job of the apply component, as the GitLab
/// example includes it, for a pipeline of `sha` on the default branch:
/// the runner's fetch of the commit (to `GIT_DEPTH`), `before_script` and
/// `script` as one script, then `after_script` in a shell of its own,
/// whatever the script did. An interrupt kills the whole script, as a
/// cancel or a timeout does.
async fn play_gitlab(
    forge: &Forge,
    mock: &MockLogzio,
    runner: &str,
    sha: &str,
    interrupt: Option<&Interrupt>,
) -> (Vec<StepRun>, Option<String>, BTreeMap<String, String>) {
    let job = gitlab_component_job(
        "gitlab-ci.yml",
        "apply",
        "tokens:apply",
        &[("release-url", Value::String(forge.release_url.clone()))],
    );
    let workspace = forge.path(runner).join("work");
    fs::create_dir_all(&workspace).unwrap();
    let env = gitlab_env(
        &job,
        &workspace,
        &[
            ("CI_PIPELINE_SOURCE", "push".into()),
            ("CI_COMMIT_SHA", sha.into()),
            ("CI_COMMIT_BRANCH", "main".into()),
            ("LOGZIO_API_TOKEN", OWNER_TOKEN.into()),
            ("STATE_PUSH_TOKEN", PUSH_TOKEN.into()),
        ],
    );
    gitlab_checkout(forge, &workspace, sha, &env);
    let env_list: Vec<(String, String)> = env.into_iter().collect();
    let script = format!(
        "{}{}",
        gitlab_lines(&job, "before_script"),
        gitlab_lines(&job, "script")
    );
    let child = forge.spawn_script(&workspace, &GITLAB_SHELL, &script, &env_list);
    let mut merged = None;
    if let Some(interrupt) = interrupt {
        merged = Some(forge.reach(mock, &workspace, interrupt).await);
        // SAFETY: signals the process group this test started.
        assert_eq!(unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) }, 0);
    }
    let script_run = forge.finish(runner, "script", child);
    let after = gitlab_lines(&job, "after_script");
    let child = forge.spawn_script(&workspace, &GITLAB_SHELL, &after, &env_list);
    let after_run = forge.finish(runner, "after_script", child);
    (vec![script_run, after_run], merged, BTreeMap::new())
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
) -> (Vec<StepRun>, Option<String>, BTreeMap<String, String>) {
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
    if !ci::have_script_tools() {
        return;
    }
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
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
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
    let (runs, second, outputs) =
        play(service, &forge, &mock, "runner-1", &first, Some(&interrupt)).await;
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
    // The apply step was killed (137, through the pipe to the log; -1 for
    // GitLab's script); the step that always runs after it succeeded.
    let expected: &[(&str, i32)] = match service {
        Service::GitHub => &[
            ("Install tokenctl", 0),
            ("tokenctl apply", 137),
            ("Record the state", 0),
        ],
        Service::GitLab => &[("script", -1), ("after_script", 0)],
    };
    assert_codes(&runs, expected);
    if let Service::GitHub = service {
        assert_eq!(outputs["exitcode"], "137", "{outputs:?}");
        assert_eq!(outputs["has-changes"], "true", "{outputs:?}");
    }
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
    let (runs, _, outputs) = play(service, &forge, &mock, "runner-2", &second, None).await;
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
        Service::GitHub => &[("tokenctl apply", 3), ("Record the state", 0)],
        Service::GitLab => &[("script", 3), ("after_script", 0)],
    };
    assert_codes(&runs, expected);
    if let Service::GitHub = service {
        assert_eq!(outputs["exitcode"], "3", "{outputs:?}");
    }
    // Each job downloaded the release: GitLab caches nothing between jobs,
    // and actions/cache saves only after a job that succeeded.
    assert_eq!(release.archive_downloads().await, 2);
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
