//! A temp folder with a manifest, and runs of the real binary in it with a
//! cleared environment.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::mock_logzio::OWNER_TOKEN;

/// One run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Returns stdout and stderr together, for messages and scans.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A project folder for end-to-end runs.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub api_url: String,
    pub runs: Vec<String>,
}

impl Workspace {
    /// Returns a folder whose runs talk to the API at `api_url`.
    pub fn new(api_url: &str) -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
            api_url: api_url.to_string(),
            runs: Vec::new(),
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes `tokens.yaml` declaring `tokens` (`accountId/name` each).
    pub fn manifest(&self, tokens: &[&str]) {
        let mut text = String::from(
            "version: 1\nregion: eu\nsecrets:\n  file: secrets/logzio-tokens.jsonl\ntokens:\n",
        );
        for token in tokens {
            let (account, name) = token.split_once('/').unwrap();
            text.push_str(&format!("  - name: {name}\n    accountId: {account}\n"));
        }
        if tokens.is_empty() {
            text = text.replace("tokens:\n", "tokens: []\n");
        }
        self.write("tokens.yaml", &text);
    }

    /// Writes `tokens.yaml` with `settings` (YAML lines) above the tokens.
    pub fn manifest_with(&self, settings: &str, tokens: &[&str]) {
        let mut text = format!(
            "version: 1\nregion: eu\nsecrets:\n  file: secrets/logzio-tokens.jsonl\n{settings}tokens:\n"
        );
        for token in tokens {
            let (account, name) = token.split_once('/').unwrap();
            text.push_str(&format!("  - name: {name}\n    accountId: {account}\n"));
        }
        self.write("tokens.yaml", &text);
    }

    /// Makes the state say a token was created `days` before it was.
    pub fn age_token(&self, address: &str, days: i64) {
        let mut state = self.state();
        for token in state["tokens"].as_array_mut().unwrap() {
            if token["address"] == address {
                let created = token["createdAt"].as_i64().unwrap();
                token["createdAt"] = serde_json::json!(created - days * 86_400);
            }
        }
        self.write(
            "state/tokens.state.json",
            &format!("{}\n", serde_json::to_string_pretty(&state).unwrap()),
        );
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    pub fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.path(relative)).unwrap_or_default()
    }

    pub fn state_path(&self) -> PathBuf {
        self.path("state/tokens.state.json")
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("state/tokens.state.json")).unwrap()
    }

    /// Returns the addresses the state records as created, sorted.
    pub fn state_addresses(&self) -> Vec<String> {
        self.addresses_in("tokens")
    }

    /// Returns the addresses the state holds as in doubt, sorted.
    pub fn pending_addresses(&self) -> Vec<String> {
        self.addresses_in("pending")
    }

    fn addresses_in(&self, list: &str) -> Vec<String> {
        addresses_in(&self.state(), list)
    }

    /// Returns the sink file's records.
    pub fn sink_records(&self) -> Vec<serde_json::Value> {
        self.read("secrets/logzio-tokens.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Runs tokenctl with `args` in the folder.
    pub fn run(&mut self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// Returns the command to run tokenctl in the folder, not yet started.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let home = self.path("home");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", super::host::path())
            .env("HOME", &home)
            .env("USER", "tester")
            .env("NO_COLOR", "1")
            .env("LOGZIO_API_TOKEN", OWNER_TOKEN)
            .env("LOGZIO_API_URL", &self.api_url)
            .env("TOKENCTL_BACKOFF_MS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    /// Waits for a started run and records its output.
    pub fn finish(&mut self, child: std::process::Child) -> Run {
        let output = child.wait_with_output().unwrap();
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.runs.push(run.all());
        run
    }

    /// Runs tokenctl with extra environment variables.
    pub fn run_with(&mut self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let child = self.command(args, env).spawn().unwrap();
        self.finish(child)
    }

    /// Fails if any secret appears in any output of any run so far or in
    /// any file of the folder other than the sink file and rescue files.
    pub fn assert_secrets_only_in_sink(&self, secrets: &[String]) {
        assert!(!secrets.is_empty(), "no secrets to look for");
        for (i, output) in self.runs.iter().enumerate() {
            for secret in secrets {
                assert!(
                    !output.contains(secret.as_str()),
                    "run {i} printed a secret:\n{output}"
                );
            }
        }
        let sink = self.path("secrets/logzio-tokens.jsonl");
        let rescue = self.path("home/.local/state/tokenctl/rescue");
        for file in walk(self.dir.path()) {
            if file == sink || file.starts_with(&rescue) {
                continue;
            }
            let bytes = fs::read(&file).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            for secret in secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} holds a secret",
                    file.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Returns the sorted addresses of one list (`tokens`, `pending`) of a
/// state document.
pub fn addresses_in(state: &serde_json::Value, list: &str) -> Vec<String> {
    let mut addresses: Vec<String> = state[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect();
    addresses.sort();
    addresses
}
