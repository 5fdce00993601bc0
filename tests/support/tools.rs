//! The real tools some tests drive: `age`, `sops` and an OpenBao dev
//! server. Missing tools skip a test on a developer's machine and fail it
//! in CI (`CI=true`), where `.ci/run` installs them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Returns the path of `program` on PATH; without it, fails under CI and
/// returns `None` (skip) elsewhere.
pub fn require(program: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&super::host::path_os())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            !super::host::in_ci(),
            "`{program}` is required in CI: install {package} (.ci/run does)"
        );
        eprintln!("skipped: `{program}` is not installed (install {package})");
    }
    found
}

/// An age identity made by the real `age-keygen`.
pub struct AgeKey {
    pub file: PathBuf,
    pub recipient: String,
}

impl AgeKey {
    /// Generates a key into `dir/name`.
    pub fn generate(dir: &Path, name: &str) -> AgeKey {
        let file = dir.join(name);
        let status = Command::new("age-keygen")
            .arg("-o")
            .arg(&file)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&file).unwrap();
        let recipient = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .trim()
            .to_string();
        AgeKey { file, recipient }
    }
}

/// Runs `sops -d FILE` with the identity in `key_file`; returns the exit
/// status's success, stdout and stderr.
pub fn sops_decrypt(file: &Path, key_file: &Path) -> (bool, String, String) {
    let output = Command::new("sops")
        .arg("-d")
        .arg(file)
        .env_clear()
        .env("PATH", super::host::path())
        .env("HOME", key_file.parent().unwrap())
        .env("SOPS_AGE_KEY_FILE", key_file)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The root token of the test OpenBao server.
pub const BAO_ROOT_TOKEN: &str = "root-token-for-tests";

/// An OpenBao dev server on a free loopback port, killed when dropped.
pub struct Bao {
    child: Option<Child>,
    pub addr: String,
    /// The CA of a TLS server (`-dev-tls`).
    pub ca_file: Option<PathBuf>,
    client: reqwest::Client,
    _home: tempfile::TempDir,
}

impl Bao {
    /// Starts `bao server -dev` over plain HTTP and waits until it answers.
    pub async fn start() -> Bao {
        Self::start_with(false).await
    }

    /// Starts `bao server -dev`, with a generated CA and certificate when
    /// `tls`, and waits until it answers.
    pub async fn start_with(tls: bool) -> Bao {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let home = tempfile::tempdir().unwrap();
        let mut command = Command::new("bao");
        command.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={BAO_ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ]);
        if tls {
            command
                .arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", home.path().display()));
        }
        let child = command
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let scheme = if tls { "https" } else { "http" };
        let ca_file = tls.then(|| home.path().join("vault-ca.pem"));
        let mut bao = Bao {
            child: Some(child),
            addr: format!("{scheme}://127.0.0.1:{port}"),
            ca_file,
            client: reqwest::Client::new(),
            _home: home,
        };
        // Readiness, not speed: the limit only keeps a broken server from
        // hanging the run.
        for _ in 0..600 {
            if let Some(ca) = &bao.ca_file {
                let Ok(pem) = std::fs::read(ca) else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(cert) = reqwest::Certificate::from_pem(&pem) else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                bao.client = reqwest::Client::builder()
                    .add_root_certificate(cert)
                    .build()
                    .unwrap();
            }
            let health = bao
                .client
                .get(format!("{}/v1/sys/health", bao.addr))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return bao;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the OpenBao dev server did not come up at {}", bao.addr);
    }

    /// Sends an API request with the root token.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", BAO_ROOT_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Returns a token whose policy may only read `secret/data/*`.
    pub async fn read_only_token(&self) -> String {
        self.token_with_policy(
            "read-only",
            r#"path "secret/data/*" { capabilities = ["read"] }"#,
        )
        .await
    }

    /// Returns a token with the `default` policy and `policy` (HCL).
    pub async fn token_with_policy(&self, name: &str, policy: &str) -> String {
        let (status, _) = self
            .api(
                reqwest::Method::PUT,
                &format!("sys/policies/acl/{name}"),
                Some(serde_json::json!({ "policy": policy })),
            )
            .await;
        assert!(status < 300, "{status}");
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                "auth/token/create",
                Some(serde_json::json!({ "policies": [name] })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}
