//! The `vault` sink: each new secret written once to KV version 2 on
//! HashiCorp Vault or OpenBao, never overwriting what is there.
//!
//! The address and the token come only from the environment (`VAULT_ADDR`,
//! `VAULT_TOKEN` or `VAULT_TOKEN_FILE`, `VAULT_NAMESPACE`, `VAULT_CACERT`),
//! as Vault's own tools read them, never from the manifest.
//!
//! The client is reqwest's blocking one: sinks run on a plain thread of
//! their own (see `sink::SinkWorker`), and the pre-flight checks and
//! `resolve` run outside the async runtime, so a synchronous client fits
//! every caller without nesting a runtime inside another.

use std::fs;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use crate::model::address::Address;
use crate::model::manifest::checked_string;
use crate::secret::Secret;
use crate::sink::{
    ForApply, FoundSecret, Handover, HomeHolds, NewToken, SecretLookup, SecretSink, SinkContext,
    SinkError, SinkKind,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Stands for `{id}` when checking capabilities before ids exist; real ids
/// are positive, so it names no real secret.
const PROBE_ID: u64 = 0;

/// `secrets.vault`: the KV version 2 mount and the path of each token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultSpec {
    /// Mount of the KV version 2 engine, e.g. secret.
    #[serde(deserialize_with = "mount")]
    #[schemars(schema_with = "segments_schema")]
    pub mount: String,
    /// Path template under the mount with {accountId}, {name} and {id}; it must tell tokens apart.
    #[serde(deserialize_with = "path_template")]
    #[schemars(schema_with = "segments_schema")]
    pub path: String,
}

impl VaultSpec {
    /// Returns the sink, with the server and token of the `VAULT_*`
    /// variables.
    fn sink(&self, ctx: &SinkContext<'_>) -> Result<VaultSink, SinkError> {
        let client =
            VaultClient::from_env(&VaultEnv::from_vars(ctx.vars), &self.mount).map_err(|err| {
                SinkError {
                    sink: format!("vault {}", self.mount),
                    detail: err.detail,
                    hint: err.hint,
                }
            })?;
        Ok(VaultSink::new(client, self.path.clone()))
    }
}

impl SinkKind for VaultSpec {
    fn open(
        &self,
        ctx: &SinkContext<'_>,
        apply: &ForApply<'_>,
    ) -> Result<Box<dyn SecretSink>, SinkError> {
        let mut sink = self.sink(ctx)?;
        sink.predecessors = apply.predecessors.clone();
        sink.preflight(apply.creates).map_err(|err| SinkError {
            detail: format!("pre-flight: {}", err.detail),
            ..err
        })?;
        Ok(Box::new(sink))
    }

    fn home(&self, address: &Address) -> Option<String> {
        if self.path.contains("{id}") {
            return None;
        }
        let path = render_path(&self.path, address, PROBE_ID).ok()?;
        Some(format!("vault {}/data/{path}", self.mount))
    }

    /// Reads each home's current version, only with `remote`; stops at the
    /// first read that fails (the server is down, the token may not read).
    fn read_homes(
        &self,
        ctx: &SinkContext<'_>,
        successions: &[(Address, u64)],
        remote: bool,
    ) -> Vec<(Address, HomeHolds)> {
        if !remote || self.path.contains("{id}") || successions.is_empty() {
            return Vec::new();
        }
        let Ok(sink) = self.sink(ctx) else {
            return Vec::new();
        };
        let mut read = Vec::new();
        for (address, predecessor) in successions {
            let Ok(path) = render_path(&self.path, address, PROBE_ID) else {
                continue;
            };
            let Ok((stored, version)) = sink.client.read_version(&path, None) else {
                break;
            };
            let holds = match holding(&stored, version, *predecessor) {
                Ok(version) => HomeHolds::Predecessor {
                    version: Some(version),
                },
                Err(what) => HomeHolds::Other(what),
            };
            read.push((address.clone(), holds));
        }
        read
    }

    /// Reads each home's current version and, when it holds the current
    /// token, the versions before it, looking for the superseded one; only
    /// with `remote`. Stops at the first read that fails.
    fn read_handovers(
        &self,
        ctx: &SinkContext<'_>,
        superseded: &[(Address, u64, u64)],
        remote: bool,
    ) -> Vec<(Address, u64, Handover)> {
        if !remote || self.path.contains("{id}") || superseded.is_empty() {
            return Vec::new();
        }
        let Ok(sink) = self.sink(ctx) else {
            return Vec::new();
        };
        let mut read = Vec::new();
        for (address, old, current) in superseded {
            let Ok(path) = render_path(&self.path, address, PROBE_ID) else {
                continue;
            };
            match sink.handover(&path, *old, *current) {
                Ok(handover) => read.push((address.clone(), *old, handover)),
                Err(_) => break,
            }
        }
        read
    }

    fn reader(&self, ctx: &SinkContext<'_>) -> Option<Result<Box<dyn SecretLookup>, SinkError>> {
        Some(
            self.sink(ctx)
                .map(|sink| Box::new(sink) as Box<dyn SecretLookup>),
        )
    }
}

fn mount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_string(d, "a KV mount (a string)", |text| {
        check_segments(text, "the mount").map(|()| text.to_string())
    })
}

fn path_template<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_string(d, "a path template (a string)", |text| {
        check_path_template(text).map(|()| text.to_string())
    })
}

fn segments_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "pattern": "^[^/]+(/[^/]+)*$" })
}

/// Checks a Vault path or mount: segments separated by single `/`, none of
/// them empty, `.` or `..` (a URL would fold those into another path).
fn check_segments(text: &str, what: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    if text
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "{what} `{text}` has an empty, `.` or `..` segment; write it like `logzio/tokens`, without a leading or trailing `/`"
        ));
    }
    Ok(())
}

/// Checks a path template: known placeholders only, and one that tells
/// tokens apart.
fn check_path_template(text: &str) -> Result<(), String> {
    check_segments(text, "the path")?;
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("the path `{text}` has a `{{` without its `}}`"))?;
        let name = &after[..close];
        if !["accountId", "name", "id"].contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}` in the path; use {{accountId}}, {{name}} or {{id}}"
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("the path `{text}` has a `}}` without its `{{`"));
    }
    let distinct =
        text.contains("{id}") || (text.contains("{name}") && text.contains("{accountId}"));
    if !distinct {
        return Err(format!(
            "the path `{text}` would be the same for different tokens; include {{accountId}} and {{name}}, or {{id}}"
        ));
    }
    Ok(())
}

/// The `VAULT_*` variables, as read from the environment.
#[derive(Default)]
pub struct VaultEnv {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub namespace: Option<String>,
    pub cacert: Option<String>,
    /// How requests reach the server (never through a proxy over http).
    pub proxies: crate::net::Proxies,
}

impl VaultEnv {
    /// Reads the variables from `vars`; empty ones count as unset.
    pub fn from_vars(vars: &crate::vars::Vars) -> Self {
        let var = |name: &str| vars.get(name).map(str::to_string);
        VaultEnv {
            addr: var("VAULT_ADDR"),
            token: var("VAULT_TOKEN"),
            token_file: var("VAULT_TOKEN_FILE"),
            namespace: var("VAULT_NAMESPACE"),
            cacert: var("VAULT_CACERT"),
            proxies: crate::net::Proxies::from_vars(vars),
        }
    }
}

/// Why Vault could not be reached or refused a request.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct VaultError {
    pub detail: String,
    pub hint: Option<String>,
}

impl VaultError {
    fn new(detail: impl Into<String>) -> Self {
        VaultError {
            detail: detail.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Returns the secret's path under the mount for a token: the template with
/// `{accountId}`, `{name}` and `{id}` filled in. A name's `/` separates
/// segments as it does in the address; a segment that is empty, `.` or `..`
/// is refused, since a URL would fold it into another path.
pub fn render_path(template: &str, address: &Address, id: u64) -> Result<String, String> {
    let path = template
        .replace("{accountId}", &address.account_id.to_string())
        .replace("{id}", &id.to_string())
        .replace("{name}", &address.name);
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "the Vault path `{path}` for {address} has an empty, `.` or `..` segment"
        ));
    }
    Ok(path)
}

/// A KV version 2 client for one mount.
pub struct VaultClient {
    base: Url,
    token: Secret,
    namespace: Option<String>,
    mount: String,
    http: Client,
}

/// What a read of a secret's path found.
pub enum Stored {
    /// Nothing was ever written there.
    Nothing,
    /// A live secret's data.
    Live(serde_json::Map<String, Value>),
    /// Versions exist but the current one is deleted or destroyed; a
    /// check-and-set create would still be refused.
    Deleted,
}

impl VaultClient {
    /// Returns a client for `mount` from the `VAULT_*` variables.
    pub fn from_env(env: &VaultEnv, mount: &str) -> Result<Self, VaultError> {
        let addr = env.addr.as_deref().ok_or_else(|| {
            VaultError::new("VAULT_ADDR is not set")
                .hint("set VAULT_ADDR to the server's address, e.g. https://vault.example.com:8200")
        })?;
        let base = check_addr(addr)?;
        let token = match (&env.token, &env.token_file) {
            (Some(token), _) => token.trim().to_string(),
            (None, Some(path)) => fs::read_to_string(path)
                .map_err(|e| VaultError::new(format!("cannot read VAULT_TOKEN_FILE {path}: {e}")))?
                .trim()
                .to_string(),
            (None, None) => String::new(),
        };
        if token.is_empty() {
            return Err(VaultError::new("no Vault token was given")
                .hint("set VAULT_TOKEN, or VAULT_TOKEN_FILE to a file holding the token"));
        }
        let mut builder = env
            .proxies
            .blocking_client_builder()
            .map_err(|e| VaultError::new(e.to_string()))?
            // A redirect would carry the token to another place.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("tokenctl/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &env.cacert {
            let pem = fs::read(path)
                .map_err(|e| VaultError::new(format!("cannot read VAULT_CACERT {path}: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| {
                    VaultError::new(format!("VAULT_CACERT {path} holds no PEM certificate"))
                        .hint("set VAULT_CACERT to the PEM file of the CA that signed the server's certificate")
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| VaultError::new(format!("cannot set up the HTTP client: {e}")))?;
        Ok(VaultClient {
            base,
            token: Secret::new(token),
            namespace: env.namespace.clone(),
            mount: mount.to_string(),
            http,
        })
    }

    /// Names the mount and server, for messages: the address's scheme,
    /// host and port only, so no credentials in it are ever shown.
    pub fn describe(&self) -> String {
        format!(
            "vault {} mount {}",
            self.base.origin().ascii_serialization(),
            self.mount
        )
    }

    /// Checks that the mount is a KV version 2 engine: a write to a
    /// version 1 mount at `data/...` would succeed as a different secret.
    /// The server names the mount a path lies in, so a folder inside a
    /// mount (`secret/logzio` in `secret/`) is refused too: KV version 2
    /// puts `data/` after the mount, and writes to `secret/logzio/data/...`
    /// would all fail after the tokens exist. `template` is the path
    /// template, for the hint.
    pub fn check_kv2(&self, template: &str) -> Result<(), VaultError> {
        let api_path = format!("sys/internal/ui/mounts/{}", self.mount);
        let request = self.request(Method::GET, &api_path)?;
        let response = self.send(request, &format!("cannot look up mount {}", self.mount))?;
        let status = response.status();
        let (body, text) = answer(response);
        let hint = "set `secrets.vault.mount` to a KV version 2 mount (`vault secrets list -detailed` shows each mount's version)";
        if !status.is_success() {
            return Err(refusal(status, &text, &format!("mount {}", self.mount)).hint(hint));
        }
        let data = &body["data"];
        let version = match &data["options"]["version"] {
            Value::String(v) => v.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        if data["type"].as_str() != Some("kv") || version != "2" {
            return Err(VaultError::new(format!(
                "mount {} is not a KV version 2 engine (type {}, version {})",
                self.mount,
                data["type"].as_str().unwrap_or("unknown"),
                if version.is_empty() { "1" } else { &version }
            ))
            .hint(hint));
        }
        let real = data["path"].as_str().unwrap_or_default().trim_matches('/');
        if !real.is_empty() && real != self.mount {
            let folder = self
                .mount
                .strip_prefix(real)
                .map(|rest| rest.trim_matches('/'))
                .filter(|rest| !rest.is_empty());
            return Err(match folder {
                Some(folder) => VaultError::new(format!(
                    "{} is not a mount but the folder {folder} inside the KV version 2 mount {real}; every write would fail",
                    self.mount
                ))
                .hint(format!(
                    "set `secrets.vault.mount: {real}` and `secrets.vault.path: \"{folder}/{template}\"`"
                )),
                None => VaultError::new(format!(
                    "the server reports the mount of {} as {real}",
                    self.mount
                ))
                .hint(format!("set `secrets.vault.mount: {real}`")),
            });
        }
        Ok(())
    }

    /// Returns the API path of a secret's data, as capabilities name it.
    pub fn data_path(&self, path: &str) -> String {
        format!("{}/data/{path}", self.mount)
    }

    fn request(&self, method: Method, api_path: &str) -> Result<RequestBuilder, VaultError> {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| VaultError::new("VAULT_ADDR cannot have a path"))?;
            segments.pop_if_empty().push("v1");
            segments.extend(api_path.split('/'));
        }
        let mut request = self
            .http
            .request(method, url)
            .header("X-Vault-Token", self.token.expose())
            .header("X-Vault-Request", "true");
        if let Some(namespace) = &self.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        Ok(request)
    }

    fn send(&self, request: RequestBuilder, what: &str) -> Result<Response, VaultError> {
        request.send().map_err(|e| {
            let mut cause = String::new();
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                cause.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            VaultError::new(format!("{what}: {}{cause}", without_url(&e)))
                .hint("check VAULT_ADDR and that the server is up; for a server whose certificate a private CA signed, set VAULT_CACERT to that CA's PEM file")
        })
    }

    /// Returns what the token may do on each API path.
    pub fn capabilities(&self, paths: &[String]) -> Result<Vec<Vec<String>>, VaultError> {
        let request = self
            .request(Method::POST, "sys/capabilities-self")?
            .json(&json!({ "paths": paths }));
        let response = self.send(request, "cannot ask Vault for the token's capabilities")?;
        let status = response.status();
        let (body, text) = answer(response);
        if !status.is_success() {
            return Err(refusal(status, &text, "the token's capabilities").hint(
                "check VAULT_TOKEN (or VAULT_TOKEN_FILE): it may be wrong or expired, or lack the `default` policy, which lets a token read its own capabilities; check VAULT_NAMESPACE too",
            ));
        }
        Ok(paths
            .iter()
            .map(|path| {
                body.get(path)
                    .or_else(|| body.get("data").and_then(|d| d.get(path)))
                    .and_then(Value::as_array)
                    .map(|caps| {
                        caps.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Reads the current version at `path` under the mount.
    pub fn read(&self, path: &str) -> Result<Stored, VaultError> {
        self.read_version(path, None).map(|(stored, _)| stored)
    }

    /// Reads `version` at `path` (`None`: the current one), with the
    /// version number the server reports.
    pub fn read_version(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<(Stored, Option<u64>), VaultError> {
        let mut request = self.request(Method::GET, &self.data_path(path))?;
        if let Some(version) = version {
            request = request.query(&[("version", version)]);
        }
        let response = self.send(request, &format!("cannot read {}", self.data_path(path)))?;
        let status = response.status();
        let (body, text) = answer(response);
        let number = body["data"]["metadata"]["version"].as_u64();
        match status {
            StatusCode::OK => Ok((
                body["data"]["data"]
                    .as_object()
                    .cloned()
                    .map_or(Stored::Deleted, Stored::Live),
                number,
            )),
            // KV v2 answers 404 for a deleted current version too, with
            // the version's metadata in the body.
            StatusCode::NOT_FOUND if body["data"]["metadata"].is_object() => {
                Ok((Stored::Deleted, number))
            }
            StatusCode::NOT_FOUND => Ok((Stored::Nothing, None)),
            _ => Err(refusal(status, &text, &self.data_path(path))),
        }
    }

    /// Names the address and the token id a home holds in the secret's
    /// `custom_metadata`, for people and tools reading the path. Best
    /// effort: the secret itself is already written, and a policy may
    /// allow the data path only.
    pub fn describe_home(&self, path: &str, address: &Address, id: u64) {
        let api_path = format!("{}/metadata/{path}", self.mount);
        let request = self.request(Method::POST, &api_path).map(|r| {
            r.json(&json!({ "custom_metadata": {
                "tokenctl-address": address.to_string(),
                "tokenctl-id": id.to_string(),
            }}))
        });
        if let Ok(request) = request {
            let _ = self.send(request, "cannot describe the home");
        }
    }

    /// Lists the keys under `folder` (metadata), `[]` when there are none.
    pub fn list(&self, folder: &str) -> Result<Vec<String>, VaultError> {
        let api_path = format!("{}/metadata/{folder}", self.mount);
        let api_path = api_path.trim_end_matches('/');
        let request = self
            .request(Method::GET, api_path)?
            .query(&[("list", "true")]);
        let response = self.send(request, &format!("cannot list {api_path}"))?;
        let status = response.status();
        let (body, text) = answer(response);
        match status {
            StatusCode::OK => Ok(body["data"]["keys"]
                .as_array()
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()),
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            _ => Err(refusal(status, &text, api_path)),
        }
    }

    /// Creates the secret at `path`, refused by the server if any version
    /// exists there (check-and-set 0).
    pub fn create(&self, path: &str, data: Value) -> Result<(), VaultError> {
        self.write(path, data, 0)
    }

    /// Writes a new version at `path` only if the current one is still
    /// `cas` (0: none), so a concurrent writer is never overwritten.
    pub fn write(&self, path: &str, data: Value, cas: u64) -> Result<(), VaultError> {
        let request = self
            .request(Method::POST, &self.data_path(path))?
            .json(&json!({ "options": { "cas": cas }, "data": data }));
        let response = self.send(request, &format!("cannot write {}", self.data_path(path)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let (body, text) = answer(response);
        let message = server_message(&body);
        let exists = || {
            match cas {
            0 => VaultError::new(format!(
                "a secret already exists at {}; it was not overwritten",
                self.data_path(path)
            ))
            .hint("someone wrote it after the pre-flight check: move it away and keep the rescued secret there, or keep theirs and revoke the new token"),
            _ => VaultError::new(format!(
                "the secret at {} changed after it was checked (its version is no longer {cas}); it was not overwritten",
                self.data_path(path)
            ))
            .hint("another writer replaced the predecessor: see `vault kv metadata get` for who wrote the newest version, then put the rescued secret there by hand or revoke the new token"),
        }
        };
        if status == StatusCode::BAD_REQUEST && message.contains("check-and-set") {
            return Err(exists());
        }
        // A policy that may `create` but not `update` gets 403 for a path
        // that has a secret: look, so the message says what happened.
        if status == StatusCode::FORBIDDEN
            && matches!(self.read(path), Ok(Stored::Live(_) | Stored::Deleted))
        {
            return Err(exists());
        }
        Err(refusal(status, &text, &self.data_path(path)))
    }
}

/// Checks `VAULT_ADDR`: https, or http to a loopback host (a dev server);
/// plain HTTP elsewhere would send the token in the clear.
fn check_addr(addr: &str) -> Result<Url, VaultError> {
    let hint = "set VAULT_ADDR to https://HOST:PORT (http:// only for a loopback address)";
    // Credentials in the address are masked in every message, and in
    // whatever else tokenctl prints, whether or not it is accepted.
    let shown = addr_for_display(addr);
    let url = Url::parse(addr).map_err(|e| {
        VaultError::new(format!("VAULT_ADDR `{shown}` is not a URL: {e}")).hint(hint)
    })?;
    let loopback = url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(VaultError::new(format!(
            "VAULT_ADDR `{shown}` must use https:// (http:// only for a loopback address)"
        ))
        .hint(hint)),
    }
}

/// Returns `VAULT_ADDR` for a message, its userinfo masked (and
/// registered, so it is masked everywhere): also when the text is no URL
/// at all, such as `user:pw@vault:8200` without a scheme.
fn addr_for_display(addr: &str) -> String {
    if addr.contains("://") {
        return crate::redact::url_for_display(addr);
    }
    let authority_end = addr.find(['/', '?', '#']).unwrap_or(addr.len());
    let (authority, rest) = addr.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let secret = userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw);
            crate::redact::register(secret);
            format!("{}@{host}{rest}", crate::redact::MASK)
        }
        None => addr.to_string(),
    }
}

/// Returns the server's `errors`, on one line: Vault wraps several in a
/// multi-line "N errors occurred:" list of `* ` items.
fn server_message(body: &Value) -> String {
    let mut parts = Vec::new();
    for error in body["errors"].as_array().into_iter().flatten() {
        for line in error.as_str().unwrap_or_default().lines() {
            let line = line.trim().trim_start_matches("* ").trim();
            let header = line.ends_with("occurred:") && line.contains("error");
            if !line.is_empty() && !header {
                parts.push(line.to_string());
            }
        }
    }
    parts.join("; ")
}

/// Reads an answer's body once: as JSON when it is, and as text.
fn answer(response: Response) -> (Value, String) {
    let text = response.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (body, text)
}

/// Returns what the server said in an error body, as server messages are
/// shown: Vault's `errors` on one line, or else the body itself, with
/// every credential masked before it is cut to length (a proxy may echo
/// the request, its `X-Vault-Token` and the secret included).
fn vault_message(text: &str) -> String {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let errors = server_message(&body);
    let said = if errors.is_empty() { text } else { &errors };
    if said.trim().is_empty() {
        return String::new();
    }
    crate::api::server_message(said)
}

fn refusal(status: StatusCode, text: &str, what: &str) -> VaultError {
    let message = vault_message(text);
    let message = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    VaultError::new(format!("Vault answered {status} for {what}{message}"))
}

/// Returns a request error's kind, without its URL (which holds the
/// secret's path) so messages stay short; the cause follows it.
fn without_url(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "the request timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    }
}

/// Writes each new token to a KV version 2 path made from a template.
pub struct VaultSink {
    client: VaultClient,
    template: String,
    /// The predecessor each successor of this apply replaces in its home.
    predecessors: rustc_hash::FxHashMap<Address, u64>,
}

/// A secret's data, as KV v2 keeps it.
type SecretData = serde_json::Map<String, Value>;

/// Returns the version of a home that holds token `predecessor`, or what
/// the home holds instead, in words.
fn holding(stored: &Stored, version: Option<u64>, predecessor: u64) -> Result<u64, String> {
    let held = match stored {
        Stored::Live(data) => data.get("id").and_then(Value::as_u64),
        _ => None,
    };
    match (held, version) {
        (Some(id), Some(version)) if id == predecessor => Ok(version),
        (held, _) => Err(match (stored, held) {
            (Stored::Nothing, _) => "nothing".to_string(),
            (Stored::Deleted, _) => "a deleted version".to_string(),
            (Stored::Live(_), Some(id)) => format!("token id {id}"),
            (Stored::Live(_), None) => "a secret tokenctl did not write".to_string(),
        }),
    }
}

/// How many versions of a home a read-back looks at, newest first: the
/// current token and the predecessors still waiting to be revoked.
const HOME_VERSIONS: u64 = 10;

impl VaultSink {
    /// Returns a sink writing through `client` to paths from `template`.
    pub fn new(client: VaultClient, template: String) -> Self {
        VaultSink {
            client,
            template,
            predecessors: Default::default(),
        }
    }

    /// Tells whether the template names one place per address (no
    /// `{id}`): the address's home, which consumers read at a fixed path
    /// and a successor replaces in place.
    fn has_homes(&self) -> bool {
        !self.template.contains("{id}")
    }

    /// Checks that the home at `path` holds token `predecessor`; returns
    /// the version that holds it.
    fn home_holds(&self, path: &str, predecessor: u64) -> Result<u64, VaultError> {
        let (stored, version) = self.client.read_version(path, None)?;
        holding(&stored, version, predecessor).map_err(|what| {
            VaultError::new(format!(
                "the home {} holds {what}, not token id {predecessor}, the predecessor the state records; a successor replaces only its predecessor",
                self.client.data_path(path)
            ))
            .hint("find out who wrote it (`vault kv metadata get`); put the predecessor back, or retire it and resolve the address by hand")
        })
    }

    /// Says whether the home at `path` holds token `current` and, in one of
    /// the versions before it, token `old`.
    fn handover(&self, path: &str, old: u64, current: u64) -> Result<Handover, VaultError> {
        let (stored, version) = self.client.read_version(path, None)?;
        let version = match holding(&stored, version, current) {
            Ok(version) => version,
            Err(what) => {
                return Ok(match &stored {
                    Stored::Live(data) => match data.get("id").and_then(Value::as_u64) {
                        Some(id) => Handover::Holds(id),
                        None => Handover::Behind(what),
                    },
                    _ => Handover::Behind(what),
                });
            }
        };
        for older in (version.saturating_sub(HOME_VERSIONS).max(1)..version).rev() {
            if let (Stored::Live(data), _) = self.client.read_version(path, Some(older))?
                && data.get("id").and_then(Value::as_u64) == Some(old)
            {
                return Ok(Handover::Moved);
            }
        }
        Ok(Handover::Elsewhere)
    }

    fn fail(&self, err: VaultError) -> SinkError {
        SinkError {
            sink: self.client.describe(),
            detail: err.detail,
            hint: err.hint,
        }
    }

    /// Returns a policy path that covers every path of the template: the
    /// part before the first placeholder, then `*` (Vault allows a glob
    /// only at the end, and a name may hold `/`).
    fn policy_glob(&self) -> String {
        let fixed = self.template.split('{').next().unwrap_or_default();
        format!("{}*", self.client.data_path(fixed))
    }

    /// Checks, before the first create, that the paths of `creates` are
    /// distinct, that the token can create and read them, and that no
    /// secret exists at any of them yet.
    pub fn preflight(&self, creates: &[Address]) -> Result<(), SinkError> {
        let has_id = self.template.contains("{id}");
        let mut paths = Vec::with_capacity(creates.len());
        for address in creates {
            let path = render_path(&self.template, address, PROBE_ID).map_err(|e| {
                self.fail(VaultError::new(e).hint(
                    "change `secrets.vault.path`, or the token's name, so that every segment has a name",
                ))
            })?;
            if !has_id && let Some((other, _)) = paths.iter().find(|(_, p)| *p == path) {
                return Err(self.fail(
                    VaultError::new(format!(
                        "{other} and {address} would both be written to {path}"
                    ))
                    .hint("include {accountId} and {name} (or {id}) in `secrets.vault.path`"),
                ));
            }
            paths.push((address, path));
        }
        let api_paths: Vec<String> = paths
            .iter()
            .map(|(_, p)| self.client.data_path(p))
            .collect();
        let capabilities = self
            .client
            .capabilities(&api_paths)
            .map_err(|e| self.fail(e))?;
        for (api_path, caps) in api_paths.iter().zip(&capabilities) {
            let can = |what: &str| caps.iter().any(|c| c == what || c == "root");
            if !can("create") || !can("read") {
                let held = if caps.is_empty() {
                    "none".to_string()
                } else {
                    caps.join(", ")
                };
                return Err(self.fail(
                    VaultError::new(format!(
                        "the token cannot create and read {api_path} (its capabilities there: {held})"
                    ))
                    .hint(format!(
                        "grant the token a policy with `path \"{}\" {{ capabilities = [\"create\", \"read\"] }}`",
                        self.policy_glob()
                    )),
                ));
            }
        }
        self.client
            .check_kv2(&self.template)
            .map_err(|e| self.fail(e))?;
        // A path with the id in it cannot exist before its token does.
        if has_id {
            return Ok(());
        }
        for (address, path) in &paths {
            // A successor's home must hold its predecessor, and the token
            // must be allowed to write a new version over it.
            if let Some(predecessor) = self.predecessors.get(*address) {
                self.home_holds(path, *predecessor)
                    .map_err(|e| self.fail(e))?;
                let api_path = self.client.data_path(path);
                let caps = self
                    .client
                    .capabilities(std::slice::from_ref(&api_path))
                    .map_err(|e| self.fail(e))?;
                let can_update = caps
                    .first()
                    .is_some_and(|c| c.iter().any(|c| c == "update" || c == "root"));
                if !can_update {
                    return Err(self.fail(
                        VaultError::new(format!(
                            "the token cannot update {api_path}, where the successor of {address} replaces its predecessor"
                        ))
                        .hint(format!(
                            "rotation writes a new version of the home: grant `path \"{}\" {{ capabilities = [\"create\", \"read\", \"update\"] }}`",
                            self.policy_glob()
                        )),
                    ));
                }
                continue;
            }
            match self.client.read(path).map_err(|e| self.fail(e))? {
                Stored::Nothing => {}
                Stored::Live(_) | Stored::Deleted => {
                    return Err(self.fail(
                        VaultError::new(format!(
                            "a secret already exists at {} (for {address}); tokenctl never overwrites one",
                            self.client.data_path(path)
                        ))
                        .hint("move or delete that secret (all its versions: `vault kv metadata delete`), or change `secrets.vault.path`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl SecretSink for VaultSink {
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError> {
        let path = render_path(&self.template, token.address, token.id)
            .map_err(|e| self.fail(VaultError::new(e)))?;
        let data = json!({
            "address": token.address.to_string(),
            "accountId": token.address.account_id,
            "name": token.address.name,
            "id": token.id,
            "createdAt": token.created_at,
            "token": token.token.expose(),
        });
        if !self.has_homes() {
            return self.client.create(&path, data).map_err(|e| self.fail(e));
        }
        // The home: created when nothing is there; for a successor,
        // replaced only while it holds the predecessor, with check-and-set
        // on the version that holds it (Vault keeps that version).
        let cas = match self.predecessors.get(token.address) {
            Some(predecessor) => self
                .home_holds(&path, *predecessor)
                .map_err(|e| self.fail(e))?,
            None => 0,
        };
        self.client
            .write(&path, data, cas)
            .map_err(|e| self.fail(e))?;
        self.client.describe_home(&path, token.address, token.id);
        Ok(())
    }

    fn describe(&self) -> String {
        self.client.describe()
    }
}

impl SecretLookup for VaultSink {
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError> {
        let paths = if self.template.contains("{id}") {
            self.paths_by_id(address)?
        } else {
            vec![
                render_path(&self.template, address, PROBE_ID)
                    .map_err(|e| self.fail(VaultError::new(e)))?,
            ]
        };
        let mut found = Vec::new();
        for (path, data) in self.stored(paths)? {
            // A secret at a listed path may belong to another address when
            // the template does not hold {name}.
            if data.get("address").and_then(Value::as_str) != Some(address.to_string().as_str()) {
                continue;
            }
            let secret = (|| {
                Some(FoundSecret {
                    id: data.get("id")?.as_u64()?,
                    created_at: data.get("createdAt").and_then(Value::as_i64),
                    token: Secret::new(data.get("token")?.as_str()?.to_string()),
                    place: self.client.data_path(&path),
                })
            })();
            found.extend(secret);
        }
        found.sort_by_key(|f| (f.created_at, f.id));
        Ok(found)
    }

    fn describe(&self) -> String {
        self.client.describe()
    }
}

impl VaultSink {
    /// Returns what is stored at `paths`: for a home, its current version
    /// and the versions before it (a predecessor waiting to be revoked is
    /// there), newest first.
    fn stored(&self, paths: Vec<String>) -> Result<Vec<(String, SecretData)>, SinkError> {
        let mut stored = Vec::new();
        for path in paths {
            let (current, version) = self
                .client
                .read_version(&path, None)
                .map_err(|e| self.fail(e))?;
            if let Stored::Live(data) = current {
                stored.push((path.clone(), data));
            }
            let (true, Some(version)) = (self.has_homes(), version) else {
                continue;
            };
            for older in (version.saturating_sub(HOME_VERSIONS).max(1)..version).rev() {
                if let (Stored::Live(data), _) = self
                    .client
                    .read_version(&path, Some(older))
                    .map_err(|e| self.fail(e))?
                {
                    stored.push((path.clone(), data));
                }
            }
        }
        Ok(stored)
    }

    /// Returns the paths of an address's secrets when `{id}` is the
    /// template's last segment: the ids listed under the rest of it.
    fn paths_by_id(&self, address: &Address) -> Result<Vec<String>, SinkError> {
        let Some(prefix) = self
            .template
            .strip_suffix("{id}")
            .filter(|p| p.is_empty() || p.ends_with('/'))
            .filter(|p| !p.contains("{id}"))
        else {
            return Err(self.fail(
                VaultError::new("the path template holds {id} other than as its last segment, so the secrets of an address cannot be listed")
                    .hint("look the secret up in Vault by hand, then use `tokenctl resolve ADDRESS --adopt ID`"),
            ));
        };
        let folder = if prefix.is_empty() {
            String::new()
        } else {
            render_path(prefix.trim_end_matches('/'), address, PROBE_ID)
                .map_err(|e| self.fail(VaultError::new(e)))?
        };
        let keys = self.client.list(&folder).map_err(|e| self.fail(e))?;
        Ok(keys
            .into_iter()
            .filter(|key| key.parse::<u64>().is_ok())
            .map(|key| {
                if folder.is_empty() {
                    key
                } else {
                    format!("{folder}/{key}")
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_filled_in_and_checked() {
        let address = Address::new(160343, "ci shipper/ü");
        assert_eq!(
            render_path("logzio/{accountId}/{name}", &address, 7).unwrap(),
            "logzio/160343/ci shipper/ü"
        );
        assert_eq!(render_path("t/{id}", &address, 7).unwrap(), "t/7");
        for name in ["..", "a/../b", "a//b", "./x", "x/"] {
            let err = render_path("t/{accountId}/{name}", &Address::new(1, name), 1).unwrap_err();
            assert!(err.contains("segment"), "{name}: {err}");
        }
    }

    #[test]
    fn a_home_holds_its_predecessor_only_with_its_id_in_a_live_version() {
        let live = |data: Value| Stored::Live(data.as_object().unwrap().clone());
        assert_eq!(holding(&live(json!({"id": 7})), Some(4), 7), Ok(4));
        assert_eq!(
            holding(&live(json!({"id": 8})), Some(4), 7),
            Err("token id 8".into())
        );
        assert_eq!(
            holding(&live(json!({"token": "x"})), Some(4), 7),
            Err("a secret tokenctl did not write".into())
        );
        assert_eq!(holding(&Stored::Nothing, None, 7), Err("nothing".into()));
        assert_eq!(
            holding(&Stored::Deleted, Some(5), 7),
            Err("a deleted version".into())
        );
    }

    #[test]
    fn server_errors_fit_on_one_line() {
        let body = json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]});
        assert_eq!(server_message(&body), "permission denied");
        let body = json!({"errors": ["a", "b"]});
        assert_eq!(server_message(&body), "a; b");
        assert_eq!(server_message(&Value::Null), "");
    }

    #[test]
    fn an_echoed_request_is_masked_before_the_message_is_cut() {
        let vault_token = "hvs.vault-unit-echo-token-0123456789";
        crate::redact::register(vault_token);
        // The token straddles the 300th character: cut first, masked
        // later, its start would survive.
        let echo = format!(
            "{}X-Vault-Token={vault_token} {}",
            "x".repeat(290),
            "y".repeat(400)
        );
        let body = json!({ "errors": [echo] }).to_string();
        let err = refusal(StatusCode::INTERNAL_SERVER_ERROR, &body, "secret/data/a");
        assert!(!err.detail.contains("hvs.vault-unit"), "{}", err.detail);
        assert!(err.detail.chars().count() < 400, "{}", err.detail);
        // A proxy's page, not Vault's JSON: shown the same way.
        let page = format!("<html>{}{vault_token}</html>", "z".repeat(500));
        let err = refusal(StatusCode::BAD_GATEWAY, &page, "secret/data/a");
        assert!(!err.detail.contains("hvs.vault"), "{}", err.detail);
        assert!(err.detail.chars().count() < 400, "{}", err.detail);
        assert_eq!(
            refusal(StatusCode::FORBIDDEN, "", "p").detail,
            "Vault answered 403 Forbidden for p"
        );
    }

    #[test]
    fn a_refused_address_never_shows_its_password() {
        for addr in [
            "ftp://ci:addr-unit-pw-1@vault.example.com:8200",
            "http://ci:addr-unit-pw-1@vault.example.com:8200",
            "ci:addr-unit-pw-1@vault.example.com:8200",
            "https://ci:addr-unit-pw-1@vault example.com:8200",
        ] {
            let err = check_addr(addr).unwrap_err();
            assert!(!err.detail.contains("addr-unit-pw"), "{}", err.detail);
            assert!(err.detail.contains("vault"), "{}", err.detail);
        }
        // An accepted address's password is masked everywhere from then on.
        assert!(check_addr("https://ci:addr-unit-pw-2@vault.example.com").is_ok());
        assert!(!crate::redact::redact("x addr-unit-pw-2 y").contains("addr-unit-pw-2"));
    }

    #[test]
    fn the_address_must_be_https_unless_loopback() {
        assert!(check_addr("https://vault.example.com:8200").is_ok());
        assert!(check_addr("http://127.0.0.1:8200").is_ok());
        assert!(check_addr("http://localhost:8200").is_ok());
        let err = check_addr("http://vault.example.com").unwrap_err();
        assert!(err.detail.contains("https://"), "{err}");
        assert!(check_addr("vault:8200").is_err());
    }

    #[test]
    fn a_client_needs_an_address_and_a_token() {
        let err = VaultClient::from_env(&VaultEnv::default(), "secret")
            .err()
            .unwrap();
        assert!(err.detail.contains("VAULT_ADDR"), "{err}");
        let env = VaultEnv {
            addr: Some("http://127.0.0.1:1".into()),
            ..VaultEnv::default()
        };
        let err = VaultClient::from_env(&env, "secret").err().unwrap();
        assert!(err.detail.contains("no Vault token"), "{err}");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        fs::write(&ca, "not a certificate\n").unwrap();
        let env = VaultEnv {
            addr: Some("https://vault.example.com".into()),
            token: Some("t".into()),
            cacert: Some(ca.display().to_string()),
            ..VaultEnv::default()
        };
        let err = VaultClient::from_env(&env, "secret").err().unwrap();
        assert!(err.detail.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn urls_encode_each_segment() {
        let env = VaultEnv {
            addr: Some("http://127.0.0.1:1".into()),
            token: Some("t".into()),
            ..VaultEnv::default()
        };
        let client = VaultClient::from_env(&env, "kv/team").unwrap();
        let request = client
            .request(Method::GET, &client.data_path("logzio/1/a b?#ü"))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            request.url().as_str(),
            "http://127.0.0.1:1/v1/kv/team/data/logzio/1/a%20b%3F%23%C3%BC"
        );
    }
}
