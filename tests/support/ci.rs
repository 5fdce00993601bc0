//! Stand-ins of what the CI step talks to besides Logz.io: the release host
//! the action and the components download tokenctl from, GitHub's and
//! GitLab's REST APIs (comments, notes, issues), and the two services'
//! template languages (`${{ }}` expressions, `$[[ inputs ]]`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Returns whether the tools the action's scripts and the components'
/// jobs need besides bash and git are here (curl, jq, tar, sha256sum):
/// under `CI=true` a missing one fails the test, elsewhere it is skipped.
pub fn have_script_tools() -> bool {
    [
        ("curl", "curl"),
        ("jq", "jq"),
        ("tar", "tar"),
        ("sha256sum", "coreutils"),
    ]
    .iter()
    .all(|(tool, package)| super::tools::require(tool, package).is_some())
}

/// The repository's root: the action's checkout.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release the examples pin.
pub const RELEASE: &str = "v0.1.0";

/// The Rust target whose release archive this machine would download.
pub fn release_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// The name of the release archive for this machine.
pub fn archive_name() -> String {
    format!("tokenctl-{}-{RELEASE}.tar.gz", release_target())
}

/// Returns the hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the release host serves for [`RELEASE`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The archive and a SHA256SUMS that lists it.
    Good,
    /// An archive other than the one SHA256SUMS lists, as a tampered
    /// mirror or a corrupted download would be.
    Tampered,
    /// No assets at all: every download answers 404.
    Missing,
}

/// A stand-in of the release host (GitHub's `releases/download`).
pub struct ReleaseHost {
    pub server: MockServer,
    /// The bytes of the archive SHA256SUMS lists.
    pub archive: Vec<u8>,
}

/// Builds a release archive laid out as the release workflow lays it out
/// (`tokenctl-<target>-<tag>/tokenctl`). Its `tokenctl` starts the binary
/// under test (a copy of the debug binary would weigh 140 MB per archive).
pub fn build_archive(dir: &Path) -> Vec<u8> {
    let folder = format!("tokenctl-{}-{RELEASE}", release_target());
    fs::create_dir_all(dir.join(&folder)).unwrap();
    let binary = dir.join(&folder).join("tokenctl");
    fs::write(
        &binary,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_tokenctl")
        ),
    )
    .unwrap();
    fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let archive = dir.join(archive_name());
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .arg(&folder)
        .status()
        .unwrap();
    assert!(status.success());
    fs::read(archive).unwrap()
}

impl ReleaseHost {
    pub async fn start(release: Release) -> ReleaseHost {
        let dir = tempfile::tempdir().unwrap();
        let archive = build_archive(dir.path());
        let server = MockServer::start().await;
        if release != Release::Missing {
            let sums = format!(
                "{}  {}\n{}  tokenctl-other-target-{RELEASE}.tar.gz\n",
                sha256_hex(&archive),
                archive_name(),
                sha256_hex(b"another archive")
            );
            let mut served = archive.clone();
            if release == Release::Tampered {
                served.extend_from_slice(b"appended by a tampering mirror");
            }
            Mock::given(method("GET"))
                .and(path(format!("/download/{RELEASE}/SHA256SUMS")))
                .respond_with(ResponseTemplate::new(200).set_body_string(sums))
                .mount(&server)
                .await;
            Mock::given(method("GET"))
                .and(path(format!("/download/{RELEASE}/{}", archive_name())))
                .respond_with(ResponseTemplate::new(200).set_body_bytes(served))
                .mount(&server)
                .await;
        }
        ReleaseHost { server, archive }
    }

    /// The base URL, as `<url>/<tag>/<asset>`.
    pub fn url(&self) -> String {
        format!("{}/download", self.server.uri())
    }

    /// Returns how many times the archive was downloaded.
    pub async fn archive_downloads(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path().ends_with(".tar.gz"))
            .count()
    }

    /// Returns how many requests reached the host.
    pub async fn requests(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .len()
    }
}

// --- GitHub expressions ------------------------------------------------------

/// The values `${{ }}` expressions may read, by their dotted name
/// (`inputs.command`, `steps.run.outputs.exitcode`, `secrets.NAME`).
#[derive(Default, Clone)]
pub struct Context {
    pub values: BTreeMap<String, String>,
}

impl Context {
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_string(), value.to_string());
    }

    fn lookup(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(value) => value.clone(),
            // GitHub reads a missing step output as the empty string.
            None if name.starts_with("steps.") => String::new(),
            None => panic!("no stand-in for the expression `{name}`"),
        }
    }

    /// Substitutes each `${{ name }}`; anything but a plain name fails the
    /// test, so the files keep to what this runner plays.
    pub fn expand(&self, value: &str) -> String {
        let mut out = value.to_string();
        while let Some(start) = out.find("${{") {
            let end = start + out[start..].find("}}").unwrap() + 2;
            let name = out[start + 3..end - 2].trim().to_string();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "unsupported expression `{name}`"
            );
            let value = self.lookup(&name);
            out.replace_range(start..end, &value);
        }
        out
    }

    /// Evaluates an `if:` of `&&`-joined terms: `always()`, `success()`,
    /// `failure()`, `name == 'literal'`, `name != 'literal'`. Without a
    /// status function the step runs only while nothing failed.
    pub fn condition(&self, expression: Option<&str>, failed: bool) -> bool {
        let Some(expression) = expression else {
            return !failed;
        };
        let expression = expression.trim();
        let expression = expression
            .strip_prefix("${{")
            .and_then(|e| e.strip_suffix("}}"))
            .unwrap_or(expression);
        let mut status = None;
        let mut holds = true;
        for term in expression.split("&&").map(str::trim) {
            match term {
                "always()" => status = Some(true),
                "success()" => status = Some(!failed),
                "failure()" => status = Some(failed),
                _ => {
                    let (name, literal, equal) = if let Some((l, r)) = term.split_once("==") {
                        (l, r, true)
                    } else if let Some((l, r)) = term.split_once("!=") {
                        (l, r, false)
                    } else {
                        panic!("unsupported condition term `{term}`")
                    };
                    let literal = literal
                        .trim()
                        .strip_prefix('\'')
                        .and_then(|l| l.strip_suffix('\''))
                        .unwrap_or_else(|| panic!("not a string literal in `{term}`"));
                    holds &= (self.lookup(name.trim()) == literal) == equal;
                }
            }
        }
        status.unwrap_or(!failed) && holds
    }
}

/// Reads the `name=value` lines a step appended to its GITHUB_OUTPUT.
pub fn read_outputs(file: &Path) -> BTreeMap<String, String> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// --- GitLab components -------------------------------------------------------

/// Returns a component's `spec:` header and its jobs, as written.
pub fn component_parts(name: &str) -> (Value, String) {
    let file = repo_root().join(format!("templates/{name}.yml"));
    let text = fs::read_to_string(&file).unwrap();
    let (header, jobs) = text
        .split_once("\n---\n")
        .unwrap_or_else(|| panic!("{}: no `---` after the spec header", file.display()));
    (serde_yaml::from_str(header).unwrap(), jobs.to_string())
}

/// Renders a component as GitLab does for `include: component:`: each
/// `$[[ inputs.NAME ]]` becomes the input given, else its default; an
/// input without a default must be given, an unknown one is refused, and
/// a value must have its input's type.
pub fn render_component(name: &str, given: &BTreeMap<String, Value>) -> String {
    let (header, mut jobs) = component_parts(name);
    let inputs = header["spec"]["inputs"].as_object().unwrap().clone();
    for key in given.keys() {
        assert!(inputs.contains_key(key), "{name}: unknown input {key}");
    }
    let mut values = BTreeMap::new();
    for (key, spec) in &inputs {
        let value = given
            .get(key)
            .or(spec.get("default"))
            .unwrap_or_else(|| panic!("{name}: input {key} has no default and was not given"));
        let kind = spec["type"].as_str().unwrap_or("string");
        let text = match (kind, value) {
            ("string", Value::String(s)) => s.clone(),
            ("boolean", Value::Bool(b)) => b.to_string(),
            ("number", Value::Number(n)) => n.to_string(),
            _ => panic!("{name}: input {key} of type {kind} given {value}"),
        };
        values.insert(key.clone(), text);
    }
    while let Some(start) = jobs.find("$[[") {
        let end = start + jobs[start..].find("]]").unwrap() + 2;
        let reference = jobs[start + 3..end - 2].trim();
        let key = reference
            .strip_prefix("inputs.")
            .unwrap_or_else(|| panic!("{name}: unsupported `$[[ {reference} ]]`"));
        let value = values
            .get(key)
            .unwrap_or_else(|| panic!("{name}: `$[[ {reference} ]]` names no input"))
            .clone();
        jobs.replace_range(start..end, &value);
    }
    jobs
}

/// Returns the inputs an example gives the component `name`
/// (`include: - component: .../<name>@<version>`).
pub fn included_inputs(pipeline: &Value, name: &str) -> BTreeMap<String, Value> {
    let suffix = format!("/tokenctl/{name}@");
    let include = pipeline["include"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["component"].as_str().is_some_and(|c| c.contains(&suffix)))
        .unwrap_or_else(|| panic!("no include of the {name} component"));
    include["inputs"]
        .as_object()
        .map(|m| m.clone().into_iter().collect())
        .unwrap_or_default()
}

// --- Forges' REST APIs -------------------------------------------------------

/// A list of items (comments, notes or issues) a forge API keeps, with
/// the writes that reached it.
#[derive(Default)]
pub struct Items {
    pub items: Vec<Value>,
    pub created: usize,
    pub updated: usize,
}

pub type Store = Arc<Mutex<Items>>;

/// Decodes a request body: JSON (GitHub) or a form (GitLab's curl
/// `--data-urlencode`).
fn fields(request: &Request) -> BTreeMap<String, String> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&request.body) {
        return map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or(v.to_string())))
            .collect();
    }
    String::from_utf8_lossy(&request.body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Answers a list, a create or an update of one kind of item, paging as
/// the forges do (`per_page`, `page`) and filtering on `state`/`labels`.
struct ItemsApi {
    store: Store,
    /// The field holding an item's text (`body`, or GitLab's issue
    /// `description`).
    text: &'static str,
    /// The field holding an item's number in its URL (`id`, `number`, `iid`).
    key: &'static str,
    token_header: (&'static str, String),
    /// The state of an open item (`open`, GitLab's `opened`).
    open_state: &'static str,
}

impl Respond for ItemsApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (header, token) = &self.token_header;
        let authorized = request
            .headers
            .get(*header)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == token);
        if !authorized {
            return ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"}));
        }
        let mut store = self.store.lock().unwrap();
        let query: BTreeMap<String, String> = request
            .url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let last = request.url.path_segments().unwrap().next_back().unwrap();
        match request.method.as_str() {
            "GET" => {
                let per_page: usize = query.get("per_page").map_or(30, |p| p.parse().unwrap());
                let page: usize = query.get("page").map_or(1, |p| p.parse().unwrap());
                let listed: Vec<Value> = store
                    .items
                    .iter()
                    .filter(|i| {
                        query
                            .get("labels")
                            .is_none_or(|l| i["labels"].as_array().unwrap().iter().any(|x| x == l))
                    })
                    .filter(|i| {
                        query
                            .get("state")
                            .is_none_or(|s| i["state"] == *s || s == "all")
                    })
                    .skip((page - 1) * per_page)
                    .take(per_page)
                    .cloned()
                    .collect();
                ResponseTemplate::new(200).set_body_json(Value::Array(listed))
            }
            "POST" => {
                let fields = fields(request);
                let number = store.items.len() as u64 + 1;
                let labels: Vec<Value> = match fields.get("labels") {
                    Some(l) if l.starts_with('[') => serde_json::from_str(l).unwrap(),
                    Some(l) => l.split(',').map(|x| json!(x)).collect(),
                    None => vec![],
                };
                let item = json!({
                    "id": 1000 + number, "number": number, "iid": number,
                    self.text: fields.get(self.text).cloned().unwrap_or_default(),
                    "title": fields.get("title").cloned().unwrap_or_default(),
                    "labels": labels, "state": self.open_state,
                });
                store.items.push(item.clone());
                store.created += 1;
                ResponseTemplate::new(201).set_body_json(item)
            }
            "PATCH" | "PUT" => {
                let fields = fields(request);
                let key = self.key;
                let Some(item) = store
                    .items
                    .iter_mut()
                    .find(|i| i[key].as_u64().is_some_and(|n| n.to_string() == last))
                else {
                    return ResponseTemplate::new(404)
                        .set_body_json(json!({"message": "Not Found"}));
                };
                for (field, value) in fields {
                    item[field] = json!(value);
                }
                let item = item.clone();
                store.updated += 1;
                ResponseTemplate::new(200).set_body_json(item)
            }
            other => panic!("unexpected method {other}"),
        }
    }
}

/// A stand-in of GitHub's REST API: a pull request's comments and the
/// repository's issues.
pub struct GitHubApi {
    pub server: MockServer,
    pub comments: Store,
    pub issues: Store,
}

pub const GITHUB_TOKEN: &str = "github-token-for-tests";
pub const GITHUB_REPO: &str = "acme/tokens";

impl GitHubApi {
    pub async fn start(pull_request: u64) -> GitHubApi {
        let server = MockServer::start().await;
        let comments = Store::default();
        let issues = Store::default();
        let auth = ("authorization", format!("Bearer {GITHUB_TOKEN}"));
        Mock::given(path_regex(format!(
            r"^/repos/{GITHUB_REPO}/issues/({pull_request}/comments|comments/\d+)$"
        )))
        .respond_with(ItemsApi {
            store: comments.clone(),
            text: "body",
            key: "id",
            token_header: auth.clone(),
            open_state: "open",
        })
        .mount(&server)
        .await;
        Mock::given(path_regex(format!(r"^/repos/{GITHUB_REPO}/issues(/\d+)?$")))
            .respond_with(ItemsApi {
                store: issues.clone(),
                text: "body",
                key: "number",
                token_header: auth,
                open_state: "open",
            })
            .mount(&server)
            .await;
        GitHubApi {
            server,
            comments,
            issues,
        }
    }

    pub fn url(&self) -> String {
        self.server.uri()
    }
}

/// A stand-in of GitLab's REST API (v4): a merge request's notes and the
/// project's issues.
pub struct GitLabApi {
    pub server: MockServer,
    pub notes: Store,
    pub issues: Store,
}

pub const GITLAB_API_TOKEN: &str = "gitlab-api-token-for-tests";
pub const GITLAB_PROJECT_ID: &str = "42";

impl GitLabApi {
    pub async fn start(merge_request: u64) -> GitLabApi {
        let server = MockServer::start().await;
        let notes = Store::default();
        let issues = Store::default();
        let auth = ("private-token", GITLAB_API_TOKEN.to_string());
        Mock::given(path_regex(format!(
            r"^/api/v4/projects/{GITLAB_PROJECT_ID}/merge_requests/{merge_request}/notes(/\d+)?$"
        )))
        .respond_with(ItemsApi {
            store: notes.clone(),
            text: "body",
            key: "id",
            token_header: auth.clone(),
            open_state: "opened",
        })
        .mount(&server)
        .await;
        Mock::given(path_regex(format!(
            r"^/api/v4/projects/{GITLAB_PROJECT_ID}/issues(/\d+)?$"
        )))
        .respond_with(ItemsApi {
            store: issues.clone(),
            text: "description",
            key: "iid",
            token_header: auth,
            open_state: "opened",
        })
        .mount(&server)
        .await;
        GitLabApi {
            server,
            notes,
            issues,
        }
    }

    /// CI_API_V4_URL.
    pub fn url(&self) -> String {
        format!("{}/api/v4", self.server.uri())
    }
}
