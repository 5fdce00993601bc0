//! The sinks' specs as the manifest's `secrets`: read in the manifest's
//! pass, so that their errors are located, and listed in its JSON Schema.

use std::path::PathBuf;

use serde_json::Value;

use super::sops::{SopsFormat, SopsLayout};
use super::{ExecSpec, FileSpec, Secrets, SinkSpec, SopsSpec, VaultSpec};
use crate::model::address::Address;
use crate::model::manifest::{Manifest, ManifestError, Parsed};
use crate::model::schema::{manifest_schema, manifest_schema_text};

fn parse(text: &str, origin: &str) -> Result<Parsed<Secrets>, ManifestError> {
    Manifest::parse(text, origin)
}

fn reject(text: &str) -> ManifestError {
    match parse(text, "tokens.yaml") {
        Ok(parsed) => panic!("accepted: {:?}", parsed.manifest),
        Err(err) => err,
    }
}

const AGE_KEY: &str = "age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg";

#[test]
fn reads_a_file_sink() {
    let text = "version: 1\nregion: eu\nsecrets:\n  file: secrets/tokens.jsonl\ntokens:\n  - name: a\n    accountId: 1\n";
    let parsed = parse(text, "tokens.yaml").unwrap();
    assert_eq!(
        parsed.secrets.0,
        [SinkSpec::File(FileSpec {
            path: PathBuf::from("secrets/tokens.jsonl")
        })]
    );
    assert_eq!(parsed.manifest.tokens, [Address::new(1, "a")]);
    let none = parse("version: 1\nregion: eu\ntokens: []\n", "m").unwrap();
    assert!(none.secrets.0.is_empty());
}

#[test]
fn reads_an_exec_sink() {
    let text =
        "version: 1\nregion: us\nsecrets:\n  exec: [vault-put, --path, logzio]\ntokens: []\n";
    let parsed = parse(text, "m").unwrap();
    assert_eq!(
        parsed.secrets.get("exec"),
        Some(&SinkSpec::Exec(ExecSpec::new(vec![
            "vault-put".into(),
            "--path".into(),
            "logzio".into()
        ])))
    );
    let err = reject("version: 1\nregion: us\nsecrets:\n  exec: []\ntokens: []\n");
    assert_eq!(err.line, 4, "{err}");
    assert!(err.message.contains("at least the program"), "{err}");
}

#[test]
fn reads_an_exec_sink_with_settings() {
    let text = "version: 1\nregion: us\nsecrets:\n  exec:\n    command: [vault-put, logzio]\n    lookup: [vault-get, logzio]\n    pass_env: [VAULT_TOKEN, VAULT_ADDR]\n    timeout: 5m\ntokens: []\n";
    let parsed = parse(text, "m").unwrap();
    assert_eq!(
        parsed.secrets.get("exec"),
        Some(&SinkSpec::Exec(ExecSpec {
            argv: vec!["vault-put".into(), "logzio".into()],
            pass_env: vec!["VAULT_TOKEN".into(), "VAULT_ADDR".into()],
            timeout: std::time::Duration::from_secs(300),
            lookup: Some(vec!["vault-get".into(), "logzio".into()]),
        }))
    );
    let exec = |settings: &str| {
        reject(&format!(
            "version: 1\nregion: us\nsecrets:\n  exec:\n    command: [x]\n{settings}tokens: []\n"
        ))
    };
    let err = exec("    pass_env: [LOGZIO_API_TOKEN]\n");
    assert_eq!((err.line, err.column), (6, 16), "{err}");
    assert!(
        err.message
            .contains("LOGZIO_API_TOKEN is never passed to a command"),
        "{err}"
    );
    let err = exec("    pass_env: [\"VAULT TOKEN\"]\n");
    assert_eq!(err.line, 6, "{err}");
    assert!(
        err.message.contains("not an environment variable name"),
        "{err}"
    );
    let err = exec("    timeout: 2h\n");
    assert_eq!((err.line, err.column), (6, 14), "{err}");
    assert!(err.message.contains("between 1s and 1h"), "{err}");
    let err = exec("    timeout: soon\n");
    assert!(err.message.contains("not a duration"), "{err}");
    let err = exec("    lookup: []\n");
    assert!(err.message.contains("at least the program"), "{err}");
    let err = exec("    read_back: [x]\n");
    assert!(err.message.contains("unknown field `read_back`"), "{err}");
    let err = reject(
        "version: 1\nregion: us\nsecrets:\n  exec:\n    pass_env: [VAULT_TOKEN]\ntokens: []\n",
    );
    assert!(err.message.contains("missing field `command`"), "{err}");
    let err = reject("version: 1\nregion: us\nsecrets:\n  exec:\n    command: []\ntokens: []\n");
    assert!(err.message.contains("at least the program"), "{err}");
}

#[test]
fn a_sops_folder_must_stay_under_the_manifest() {
    for (dir, says) in [
        ("/srv/secrets", "is absolute"),
        ("../secrets", "goes up with `..`"),
        ("secrets/../../x", "goes up with `..`"),
    ] {
        let err = reject(&format!(
            "version: 1\nregion: us\nsecrets:\n  sops:\n    dir: {dir}\n    age: [age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg]\ntokens: []\n"
        ));
        assert_eq!((err.line, err.column), (5, 10), "{dir}: {err}");
        assert!(err.message.contains(says), "{dir}: {err}");
    }
}

#[test]
fn sops_and_vault_sinks_are_read() {
    let text = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: secrets/tokens\n    age: [{AGE_KEY}]\n    format: k8s-secret\n  vault:\n    mount: secret\n    path: \"logzio/{{accountId}}/{{name}}\"\ntokens: []\n"
    );
    let secrets = parse(&text, "m").unwrap().secrets;
    assert_eq!(
        secrets.0,
        [
            SinkSpec::Sops(SopsSpec {
                dir: PathBuf::from("secrets/tokens"),
                age: vec![AGE_KEY.into()],
                format: SopsFormat::K8sSecret,
                layout: SopsLayout::PerAddress,
            }),
            SinkSpec::Vault(VaultSpec {
                mount: "secret".into(),
                path: "logzio/{accountId}/{name}".into(),
            })
        ]
    );
    let plain = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: s\n    age: [{AGE_KEY}]\ntokens: []\n"
    );
    let secrets = parse(&plain, "m").unwrap().secrets;
    let Some(SinkSpec::Sops(sops)) = secrets.get("sops") else {
        panic!("no sops sink: {secrets:?}");
    };
    assert_eq!(sops.format, SopsFormat::Plain);
}

#[test]
fn a_bad_age_recipient_is_located() {
    let text = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: s\n    age: [{AGE_KEY}, age1nope]\ntokens: []\n"
    );
    let err = parse(&text, "tokens.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "tokens.yaml:6:75: secrets.sops.age[1]: not an age recipient (age1…)"
    );
    let empty = "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: s\n    age: []\ntokens: []\n";
    let err = parse(empty, "m").unwrap_err();
    assert!(err.message.contains("at least one age recipient"), "{err}");
    let format = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: s\n    age: [{AGE_KEY}]\n    format: json\ntokens: []\n"
    );
    let err = parse(&format, "m").unwrap_err();
    assert!(
        err.message
            .contains("secrets.sops.format: unknown format `json`"),
        "{err}"
    );
    let layout = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: s\n    age: [{AGE_KEY}]\n    layout: per-file\ntokens: []\n"
    );
    let err = parse(&layout, "m").unwrap_err();
    assert!(
        err.message.contains(
            "secrets.sops.layout: unknown layout `per-file`; use per-address or per-token"
        ),
        "{err}"
    );
    let layout = layout.replace("per-file", "per-token");
    let secrets = parse(&layout, "m").unwrap().secrets;
    let Some(SinkSpec::Sops(sops)) = secrets.get("sops") else {
        panic!("no sops sink: {secrets:?}");
    };
    assert_eq!(sops.layout, SopsLayout::PerToken);
}

#[test]
fn vault_paths_are_checked() {
    for (path, expected) in [
        ("logzio/{name}", "the same for different tokens"),
        ("logzio/{accountId}/{nam}", "unknown placeholder `{nam}`"),
        ("/logzio/{id}", "empty, `.` or `..` segment"),
        ("logzio/../{id}", "empty, `.` or `..` segment"),
        ("logzio/{id", "without its `}`"),
    ] {
        let text = format!(
            "version: 1\nregion: eu\nsecrets:\n  vault:\n    mount: secret\n    path: \"{path}\"\ntokens: []\n"
        );
        let err = parse(&text, "m").unwrap_err();
        assert!(err.message.contains("secrets.vault.path"), "{path}: {err}");
        assert!(err.message.contains(expected), "{path}: {err}");
    }
    let text = "version: 1\nregion: eu\nsecrets:\n  vault:\n    mount: secret/\n    path: \"{id}\"\ntokens: []\n";
    let err = parse(text, "m").unwrap_err();
    assert!(err.message.contains("secrets.vault.mount"), "{err}");
}

#[test]
fn an_unknown_or_repeated_sink_is_located_at_its_key() {
    let err = reject("version: 1\nregion: eu\nsecrets:\n  file: a.jsonl\n  s3: x\ntokens: []\n");
    assert_eq!((err.line, err.column), (5, 3), "{err}");
    assert!(
        err.message
            .contains("unknown field `s3`, expected one of `file`, `exec`, `sops`, `vault`"),
        "{err}"
    );
    let err =
        reject("version: 1\nregion: eu\nsecrets:\n  file: a.jsonl\n  file: b.jsonl\ntokens: []\n");
    assert_eq!((err.line, err.column), (5, 3), "{err}");
    assert!(err.message.contains("duplicate field `file`"), "{err}");
}

#[test]
fn sinks_keep_the_manifest_order() {
    let text = "version: 1\nregion: eu\nsecrets:\n  exec: [x]\n  file: a.jsonl\ntokens: []\n";
    let secrets = parse(text, "m").unwrap().secrets;
    let keys: Vec<&str> = secrets.0.iter().map(SinkSpec::key).collect();
    assert_eq!(keys, ["exec", "file"]);
}

#[test]
fn a_sink_with_no_value_configures_nothing() {
    for value in ["~", "null", ""] {
        let text = format!(
            "version: 1\nregion: eu\nsecrets:\n  file: {value}\n  exec: {value}\n  sops: {value}\n  vault: {value}\ntokens: []\n"
        );
        let secrets = parse(&text, "m").unwrap().secrets;
        assert!(secrets.0.is_empty(), "{value}: {secrets:?}");
    }
    // A null format is the default one.
    let text = format!(
        "version: 1\nregion: eu\nsecrets:\n  sops:\n    dir: s\n    age: [{AGE_KEY}]\n    format: ~\ntokens: []\n"
    );
    let secrets = parse(&text, "m").unwrap().secrets;
    let Some(SinkSpec::Sops(sops)) = secrets.get("sops") else {
        panic!("no sops sink: {secrets:?}");
    };
    assert_eq!(sops.format, SopsFormat::Plain);
    assert_eq!(sops.layout, SopsLayout::PerAddress);
}

#[test]
fn an_empty_secrets_file_name_is_refused() {
    let err = reject("version: 1\nregion: eu\nsecrets:\n  file: \"  \"\ntokens: []\n");
    assert_eq!(err.line, 4, "{err}");
    assert!(err.message.contains("must name a file"), "{err}");
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn every_key_the_schema_allows_the_parser_accepts() {
    let schema = manifest_schema::<Secrets>();
    assert_eq!(
        keys(&schema),
        [
            "api_url",
            "backend",
            "on_revoked",
            "region",
            "rotate_after",
            "secrets",
            "tokens",
            "version"
        ]
    );
    let mut sinks: Vec<&str> = SinkSpec::KEYS.to_vec();
    sinks.sort();
    assert_eq!(keys(&schema["properties"]["secrets"]), sinks);
    let secrets = &schema["properties"]["secrets"]["properties"];
    assert_eq!(keys(&secrets["sops"]), ["age", "dir", "format", "layout"]);
    assert_eq!(keys(&secrets["vault"]), ["mount", "path"]);
    for format in secrets["sops"]["properties"]["format"]["enum"]
        .as_array()
        .unwrap()
    {
        let format = format.as_str().unwrap();
        assert!(SopsFormat::from_name(format).is_some(), "{format}");
    }
    assert_eq!(
        keys(&schema["properties"]["backend"]["properties"]["postgres"]),
        ["schema", "state"]
    );
    assert_eq!(
        keys(&schema["properties"]["tokens"]["items"]),
        ["accountId", "name", "on_revoked", "rotate_after"]
    );
    let full = "version: 1\nregion: eu\nrotate_after: 90d\non_revoked: recreate\nbackend:\n  postgres:\n    schema: tk_1\n    state: team/prod\nsecrets:\n  file: s.jsonl\n  exec: [x]\n  sops:\n    dir: s\n    age: [age1jmqcemfy5a7pfh00qqexmjg40w6ztgwc6vx0f0h26cska0jzaelspqjvxg]\n    format: plain\n    layout: per-token\n  vault:\n    mount: secret\n    path: \"t/{accountId}/{name}\"\ntokens:\n  - name: a\n    accountId: 1\n    rotate_after: 30d\n    on_revoked: report\n";
    assert!(parse(full, "m").is_ok());
    let regions = schema["properties"]["region"]["enum"].as_array().unwrap();
    for region in regions {
        let text = format!(
            "version: 1\nregion: {}\ntokens: []\n",
            region.as_str().unwrap()
        );
        assert!(parse(&text, "m").is_ok(), "{region}");
    }
}

#[test]
fn keys_outside_the_schema_are_rejected_by_the_parser_too() {
    for extra in [
        "owner: x\n",
        "secrets:\n  vault: x\n",
        "backend:\n  postgres:\n    conn_str: x\n",
        "backend:\n  postgres:\n    schema: Bad-Name\n",
        "backend:\n  s3: {}\n",
        "secrets:\n  s3: x\n",
    ] {
        let text = format!("version: 1\nregion: eu\n{extra}tokens: []\n");
        assert!(parse(&text, "m").is_err(), "{extra}");
    }
    let text = "version: 1\nregion: eu\ntokens:\n  - name: a\n    accountId: 1\n    scope: x\n";
    assert!(parse(text, "m").is_err());
}

#[test]
fn the_committed_schema_file_is_current() {
    let committed = include_str!("../../tokenctl.schema.json");
    assert_eq!(
        committed.trim_end(),
        manifest_schema_text::<Secrets>(),
        "run `cargo run -- schema > tokenctl.schema.json`"
    );
}
