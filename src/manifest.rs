//! The manifest: which tokens should exist and where they live.
//!
//! Parsing is pure: it takes the text and the name to show in errors, and
//! returns a validated [`Manifest`] or an error that names file, line and
//! column and says what would be accepted.

use rustc_hash::FxHashMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::address::Address;
use crate::sops::{self, SopsFormat};

/// The manifest format version this tool reads.
pub const MANIFEST_VERSION: u64 = 1;

/// A parsed and validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub endpoint: Endpoint,
    pub secrets: SecretsConfig,
    /// Desired tokens, in the order the manifest lists them.
    pub tokens: Vec<Address>,
}

/// Where the API lives: a named region or an explicit base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Region(Region),
    Url(String),
}

impl Endpoint {
    /// Returns the API base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        match self {
            Endpoint::Region(region) => region.base_url(),
            Endpoint::Url(url) => url,
        }
    }
}

/// Where new secrets go, as the manifest says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsConfig {
    /// JSON Lines file, relative to the manifest's folder.
    pub file: Option<PathBuf>,
    /// A command that receives each new token as JSON on stdin.
    pub exec: Option<Vec<String>>,
    /// One SOPS file per new token, encrypted to age recipients.
    pub sops: Option<SopsConfig>,
    /// A KV version 2 store on Vault or OpenBao.
    pub vault: Option<VaultConfig>,
}

/// The `secrets.sops` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SopsConfig {
    /// Folder of the SOPS files, relative to the manifest's folder.
    pub dir: PathBuf,
    /// age recipients (`age1…`), each checked to parse.
    pub age: Vec<String>,
    pub format: SopsFormat,
}

/// The `secrets.vault` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// Mount of the KV version 2 engine, without slashes at its ends.
    pub mount: String,
    /// Path template under the mount, with `{accountId}`, `{name}`, `{id}`.
    pub path: String,
}

/// A Logz.io region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Us,
    Eu,
    Uk,
    Ca,
    Au,
    Nl,
    Wa,
}

const REGIONS: [(Region, &str, &str); 7] = [
    (Region::Us, "us", "https://api.logz.io"),
    (Region::Eu, "eu", "https://api-eu.logz.io"),
    (Region::Uk, "uk", "https://api-uk.logz.io"),
    (Region::Ca, "ca", "https://api-ca.logz.io"),
    (Region::Au, "au", "https://api-au.logz.io"),
    (Region::Nl, "nl", "https://api-nl.logz.io"),
    (Region::Wa, "wa", "https://api-wa.logz.io"),
];

impl Region {
    /// Returns the region's API base URL.
    pub fn base_url(self) -> &'static str {
        Self::entry(self).2
    }

    /// Returns the region's code, as written in a manifest.
    pub fn code(self) -> &'static str {
        Self::entry(self).1
    }

    /// Tells whether Logz.io has retired the region.
    pub fn is_deprecated(self) -> bool {
        matches!(self, Region::Nl | Region::Wa)
    }

    fn entry(self) -> (Region, &'static str, &'static str) {
        REGIONS
            .into_iter()
            .find(|(region, _, _)| *region == self)
            .unwrap_or(REGIONS[0])
    }

    fn from_code(code: &str) -> Option<Region> {
        REGIONS
            .into_iter()
            .find(|(_, c, _)| c.eq_ignore_ascii_case(code))
            .map(|(region, _, _)| region)
    }

    fn supported_codes() -> String {
        REGIONS
            .iter()
            .filter(|(region, _, _)| !region.is_deprecated())
            .map(|(_, code, _)| *code)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The result of parsing: the manifest and any warnings about it.
#[derive(Debug)]
pub struct Parsed {
    pub manifest: Manifest,
    pub warnings: Vec<String>,
}

/// Why a manifest was rejected, with the place it points at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ManifestError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl Manifest {
    /// Parses and validates manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Parsed, ManifestError> {
        let raw: RawManifest = match serde_yaml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => return Err(yaml_error(&err, text, origin)),
        };
        let at_top = |message: String, hint: Option<String>| ManifestError {
            origin: origin.to_string(),
            line: 1,
            column: 1,
            message,
            hint,
        };
        if raw.version.is_none() {
            return Err(at_top(
                "the manifest has no `version`".into(),
                Some(format!(
                    "add `version: {MANIFEST_VERSION}` as the first line"
                )),
            ));
        }
        let mut warnings = Vec::new();
        let endpoint = match (raw.region, raw.api_url) {
            (Some(_), Some(_)) => {
                return Err(at_top(
                    "the manifest sets both `region` and `api_url`".into(),
                    Some(
                        "keep one: `region` for Logz.io's regions, `api_url` for any other address"
                            .into(),
                    ),
                ));
            }
            (None, None) => {
                return Err(at_top(
                    "the manifest sets neither `region` nor `api_url`".into(),
                    Some(format!(
                        "add `region: <code>` with one of {}",
                        Region::supported_codes()
                    )),
                ));
            }
            (Some(RegionField(region)), None) => {
                if region.is_deprecated() {
                    warnings.push(format!(
                        "region `{}` is deprecated by Logz.io; move to a current region ({})",
                        region.code(),
                        Region::supported_codes()
                    ));
                }
                Endpoint::Region(region)
            }
            (None, Some(ApiUrlField(url))) => Endpoint::Url(url),
        };
        let secrets = raw
            .secrets
            .map(|s| SecretsConfig {
                file: s.file.map(PathBuf::from),
                exec: s.exec.map(|ExecField(argv)| argv),
                sops: s.sops.map(|sops| SopsConfig {
                    dir: PathBuf::from(sops.dir.0),
                    age: sops.age.0,
                    format: sops.format.map_or(SopsFormat::Plain, |f| f.0),
                }),
                vault: s.vault.map(|vault| VaultConfig {
                    mount: vault.mount.0,
                    path: vault.path.0,
                }),
            })
            .unwrap_or_default();
        let tokens: Vec<Address> = raw
            .tokens
            .into_iter()
            .map(|t| Address::new(t.account_id.0, t.name.0))
            .collect();
        check_duplicates(&tokens, text, origin)?;
        Ok(Parsed {
            manifest: Manifest {
                endpoint,
                secrets,
                tokens,
            },
            warnings,
        })
    }
}

fn check_duplicates(tokens: &[Address], text: &str, origin: &str) -> Result<(), ManifestError> {
    let mut seen: FxHashMap<&Address, usize> =
        FxHashMap::with_capacity_and_hasher(tokens.len(), Default::default());
    for (index, address) in tokens.iter().enumerate() {
        if let Some(first) = seen.insert(address, index) {
            let (first_line, _) = locate_token(text, first).unwrap_or((0, 0));
            let (line, column) = locate_token(text, index).unwrap_or((1, 1));
            return Err(ManifestError {
                origin: origin.to_string(),
                line,
                column,
                message: format!(
                    "token {address} is declared twice: at line {first_line} and again at line {line}"
                ),
                hint: Some(
                    "remove one of the two entries; an address (accountId/name) must be unique"
                        .into(),
                ),
            });
        }
    }
    Ok(())
}

fn yaml_error(err: &serde_yaml::Error, text: &str, origin: &str) -> ManifestError {
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut message = err.to_string();
    // serde_yaml appends the location, which we show in front instead.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    if text.trim().is_empty() {
        message = "the manifest is empty".into();
    }
    let hint = hint_for(&message);
    ManifestError {
        origin: origin.to_string(),
        line,
        column,
        message,
        hint,
    }
}

fn hint_for(message: &str) -> Option<String> {
    let hint = if message.contains("unknown field") {
        "remove the key or correct its spelling"
    } else if message.contains("accountId") {
        "write the sub-account's numeric id without quotes, e.g. `accountId: 160343`"
    } else if message.contains(".name") {
        "quote a name that YAML would read as a number or boolean, e.g. `name: \"2024\"`"
    } else if message.contains("missing field") {
        "each token needs `name` and `accountId`; the manifest needs `version` and `tokens`"
    } else if message.contains("the manifest is empty") {
        "start it with `version: 1`, a `region` and a `tokens` list; see examples/tokens.yaml"
    } else {
        return None;
    };
    Some(hint.to_string())
}

/// Returns the line and column of the `index`-th entry of `tokens`.
///
/// serde gives no positions to values that parsed fine, but it attaches the
/// position of the node being read to any error raised while reading it. So
/// this walks the document again and fails on purpose at that entry. It runs
/// only on the error path.
fn locate_token(text: &str, index: usize) -> Option<(usize, usize)> {
    struct Document(usize);
    struct Tokens(usize);
    struct FailHere;

    impl<'de> DeserializeSeed<'de> for Document {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Document {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a manifest")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "tokens" {
                    map.next_value_seed(Tokens(self.0))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Tokens {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Tokens {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of tokens")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            for _ in 0..self.0 {
                seq.next_element::<IgnoredAny>()?;
            }
            seq.next_element_seed(FailHere)?;
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for FailHere {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for FailHere {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            // Every visit method defaults to an error, which is the point.
            f.write_str("nothing")
        }
    }

    let deserializer = serde_yaml::Deserializer::from_str(text);
    let err = Document(index).deserialize(deserializer).err()?;
    err.location().map(|l| (l.line(), l.column()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    version: Option<VersionField>,
    region: Option<RegionField>,
    api_url: Option<ApiUrlField>,
    secrets: Option<RawSecrets>,
    tokens: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    file: Option<String>,
    exec: Option<ExecField>,
    sops: Option<RawSops>,
    vault: Option<RawVault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSops {
    dir: NonEmpty,
    age: AgeRecipients,
    format: Option<SopsFormatField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    mount: VaultMount,
    path: VaultPath,
}

struct NonEmpty(String);
impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a folder (a string)", |text| {
            if text.trim().is_empty() {
                return Err("must not be empty".into());
            }
            Ok(NonEmpty(text.to_string()))
        })
    }
}

struct AgeRecipient(String);
impl<'de> Deserialize<'de> for AgeRecipient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "an age recipient (age1…)", |text| {
            sops::parse_recipient(text).map(|_| AgeRecipient(text.trim().to_string()))
        })
    }
}

struct AgeRecipients(Vec<String>);
impl<'de> Deserialize<'de> for AgeRecipients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = AgeRecipients;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of age recipients, e.g. [age1…]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AgeRecipients, A::Error> {
                let mut keys = Vec::new();
                while let Some(AgeRecipient(key)) = seq.next_element()? {
                    keys.push(key);
                }
                if keys.is_empty() {
                    return Err(de::Error::custom(
                        "needs at least one age recipient (age1…), the public key of whoever decrypts the files",
                    ));
                }
                Ok(AgeRecipients(keys))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

struct SopsFormatField(SopsFormat);
impl<'de> Deserialize<'de> for SopsFormatField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a SOPS file format", |text| {
            SopsFormat::from_name(text)
                .map(SopsFormatField)
                .ok_or_else(|| format!("unknown format `{text}`; use plain or k8s-secret"))
        })
    }
}

struct VaultMount(String);
impl<'de> Deserialize<'de> for VaultMount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a KV mount (a string)", |text| {
            check_vault_segments(text, "the mount").map(|()| VaultMount(text.to_string()))
        })
    }
}

struct VaultPath(String);
impl<'de> Deserialize<'de> for VaultPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a path template (a string)", |text| {
            check_vault_path(text).map(|()| VaultPath(text.to_string()))
        })
    }
}

/// Checks a Vault path or mount: segments separated by single `/`, none of
/// them empty, `.` or `..` (a URL would fold those into another path).
fn check_vault_segments(text: &str, what: &str) -> Result<(), String> {
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
fn check_vault_path(text: &str) -> Result<(), String> {
    check_vault_segments(text, "the path")?;
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

struct ExecField(Vec<String>);
impl<'de> Deserialize<'de> for ExecField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ArgvVisitor;
        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = ExecField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command as a list of strings, e.g. [vault-put, --path, logzio]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExecField, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                if argv.first().is_none_or(|program| program.trim().is_empty()) {
                    return Err(de::Error::custom(
                        "secrets.exec needs at least the program to run, e.g. [vault-put, --path, logzio]",
                    ));
                }
                Ok(ExecField(argv))
            }
        }
        d.deserialize_seq(ArgvVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: TokenName,
    #[serde(rename = "accountId")]
    account_id: AccountId,
}

struct VersionField;
impl<'de> Deserialize<'de> for VersionField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct VersionVisitor;
        impl<'de> Visitor<'de> for VersionVisitor {
            type Value = VersionField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the manifest version, an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VersionField, E> {
                match v {
                    MANIFEST_VERSION => Ok(VersionField),
                    newer if newer > MANIFEST_VERSION => Err(E::custom(format!(
                        "manifest version {newer} is newer than this tokenctl ({}) understands \
                         (version {MANIFEST_VERSION}); upgrade tokenctl",
                        env!("CARGO_PKG_VERSION")
                    ))),
                    other => Err(E::custom(format!(
                        "manifest version {other} does not exist; use `version: {MANIFEST_VERSION}`"
                    ))),
                }
            }
        }
        d.deserialize_any(VersionVisitor)
    }
}

struct AccountId(u64);
impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = AccountId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer account id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AccountId, E> {
                if v == 0 {
                    return Err(E::custom("accountId must be a positive integer, found 0"));
                }
                Ok(AccountId(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AccountId, E> {
                Err(E::custom(format!(
                    "accountId must be a positive integer, found {v}"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AccountId, E> {
                Err(E::custom(format!(
                    "accountId must be an integer, found the string {v:?}"
                )))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

struct TokenName(String);
impl<'de> Deserialize<'de> for TokenName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a token name (a string)", |name| {
            validate_name(name).map(|()| TokenName(name.to_string()))
        })
    }
}

/// Deserializes a string and checks it inside the deserializer, where
/// serde_yaml can still attach the value's position to the error. Other
/// YAML types (`123`, `true`) are refused rather than read as text.
fn checked_string<'de, D, T>(
    d: D,
    expecting: &'static str,
    check: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Checked<T> {
        expecting: &'static str,
        check: fn(&str) -> Result<T, String>,
    }
    impl<'de, T> Visitor<'de> for Checked<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.check)(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Checked { expecting, check })
}

/// Checks a token name; the error says what is wrong with it.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("token names must not be empty or only white space".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "token name {name:?} contains the control character {:?}; use printable characters only",
            c
        ));
    }
    if name.trim() != name {
        return Err(format!(
            "token name {name:?} starts or ends with white space; remove it"
        ));
    }
    Ok(())
}

struct RegionField(Region);
impl<'de> Deserialize<'de> for RegionField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a region code", |code| {
            Region::from_code(code).map(RegionField).ok_or_else(|| {
                format!(
                    "unknown region `{code}`; valid regions are {}",
                    Region::supported_codes()
                )
            })
        })
    }
}

struct ApiUrlField(String);
impl<'de> Deserialize<'de> for ApiUrlField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "an API base URL", |url| {
            check_api_url(url).map(ApiUrlField)
        })
    }
}

/// Checks an API base URL and returns it without a trailing slash.
///
/// `https://` is required, except for loopback hosts, which tests and local
/// mocks use; plain HTTP elsewhere would send the owner token in the clear.
pub fn check_api_url(text: &str) -> Result<String, String> {
    let url =
        reqwest::Url::parse(text).map_err(|e| format!("api_url `{text}` is not a URL: {e}"))?;
    let Some(host) = url.host_str() else {
        return Err(format!("api_url `{text}` has no host"));
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "api_url `{text}` uses http:// for a host that is not loopback; use https://"
            ));
        }
        other => {
            return Err(format!(
                "api_url `{text}` has scheme `{other}`; use https://"
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "api_url `{text}` must not have a query or fragment"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests;
