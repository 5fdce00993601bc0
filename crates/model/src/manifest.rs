//! The manifest: which tokens should exist and where they live.
//!
//! Parsing is pure: it takes the text and the name to show in errors, and
//! returns a validated [`Manifest`] or an error that names file, line and
//! column and says what would be accepted.
//!
//! The `secrets` map is read by a type the caller names (the sinks' own
//! specs): this crate knows no sink, and the specs are read in the same
//! pass as the rest, so their errors point at their place too.

use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::address::Address;

/// The manifest format version this tool reads.
pub const MANIFEST_VERSION: u64 = 1;

/// A parsed and validated manifest, but for its `secrets` (see [`Parsed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub endpoint: Endpoint,
    /// Desired tokens, in the order the manifest lists them.
    pub tokens: Vec<Address>,
    /// Rotation and what to do about revoked tokens.
    pub lifecycle: Lifecycle,
    /// Where the state, its journal and its lock live.
    pub backend: BackendConfig,
}

/// The manifest's `backend`: where the state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackendConfig {
    /// The state file given by `--state` (the default).
    #[default]
    File,
    /// A PostgreSQL database named by `TOKENCTL_PG_CONN_STR`.
    Postgres {
        /// The schema holding tokenctl's tables.
        schema: String,
        /// The name of this state among those the schema holds.
        state: String,
    },
}

/// What happens to a token after it is made: the manifest's top-level
/// settings, and the tokens that set their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub default: Policy,
    pub per_token: FxHashMap<Address, Policy>,
}

impl Lifecycle {
    /// Returns the policy of one token.
    pub fn policy(&self, address: &Address) -> Policy {
        self.per_token.get(address).copied().unwrap_or(self.default)
    }

    /// Tells whether any token is re-created when found revoked.
    pub fn recreates_any(&self) -> bool {
        let recreates = |p: &Policy| p.on_revoked == OnRevoked::Recreate;
        recreates(&self.default) || self.per_token.values().any(recreates)
    }
}

/// One token's lifecycle settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Age in seconds after which a successor is created.
    pub rotate_after: Option<u64>,
    pub on_revoked: OnRevoked,
}

/// What to do about a token a refresh finds revoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnRevoked {
    /// Show it; create nothing.
    #[default]
    Report,
    /// Plan a successor.
    Recreate,
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

/// The result of parsing: the manifest, its `secrets` as read by `S`
/// (empty when absent), and any warnings about it.
#[derive(Debug)]
pub struct Parsed<S> {
    pub manifest: Manifest,
    /// Where new secrets go, read by the sinks' type.
    pub secrets: S,
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
    /// `S` reads the `secrets` map.
    pub fn parse<S: DeserializeOwned + Default>(
        text: &str,
        origin: &str,
    ) -> Result<Parsed<S>, ManifestError> {
        // Editors on Windows save UTF-8 with a byte-order mark; it is not
        // part of the YAML and would otherwise hide the first key.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: RawManifest<S> = match serde_yaml::from_str(text) {
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
        let backend = match raw.backend {
            None => BackendConfig::File,
            Some(RawBackend { postgres }) => BackendConfig::Postgres {
                schema: postgres
                    .schema
                    .map_or_else(|| "tokenctl".into(), |SchemaName(s)| s),
                state: postgres
                    .state
                    .map_or_else(|| "default".into(), |StateName(s)| s),
            },
        };
        let secrets = raw.secrets.unwrap_or_default();
        let default = Policy {
            rotate_after: raw.rotate_after.map(|RotateAfter(s)| s),
            on_revoked: raw
                .on_revoked
                .map(|OnRevokedField(o)| o)
                .unwrap_or_default(),
        };
        let mut per_token = FxHashMap::default();
        let mut tokens: Vec<Address> = Vec::with_capacity(raw.tokens.0.len());
        for token in raw.tokens.0 {
            let address = Address::new(token.account_id.0, token.name.0);
            if token.rotate_after.is_some() || token.on_revoked.is_some() {
                let policy = Policy {
                    rotate_after: token
                        .rotate_after
                        .map(|RotateAfter(s)| s)
                        .or(default.rotate_after),
                    on_revoked: token
                        .on_revoked
                        .map(|OnRevokedField(o)| o)
                        .unwrap_or(default.on_revoked),
                };
                per_token.insert(address.clone(), policy);
            }
            tokens.push(address);
        }
        check_duplicates(&tokens, text, origin)?;
        Ok(Parsed {
            manifest: Manifest {
                endpoint,
                tokens,
                lifecycle: Lifecycle { default, per_token },
                backend,
            },
            secrets,
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
    } else if message.contains("leading zero") {
        "write the account id without leading zeros, exactly as the Logz.io UI shows it"
    } else if message.contains("accountId") {
        "write the sub-account's numeric id without quotes, e.g. `accountId: 160343`"
    } else if message.contains("starts or ends with white space") {
        "remove the white space at the start or end of the name"
    } else if message.contains("must not be empty") {
        "give every token a name, e.g. `name: ci-shipper`"
    } else if message.contains("invisible") || message.contains("control character") {
        "retype the name with visible characters only; such characters make two names look alike"
    } else if message.contains(".name") && message.contains("invalid type") {
        "quote a name that YAML would read as a number or boolean, e.g. `name: \"2024\"`"
    } else if message.contains("`tokens` has no value") {
        "list the tokens under `tokens:`, or write `tokens: []` to declare that none should exist"
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

/// Logz.io sub-account API tokens that should exist.
///
/// The manifest as written, before the checks that span fields; its JSON
/// Schema is generated from these types (see `schema.rs`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "tokenctl manifest",
    description = "Logz.io sub-account API tokens that should exist.",
    extend("oneOf" = [
        { "required": ["region"], "not": { "required": ["api_url"] } },
        { "required": ["api_url"], "not": { "required": ["region"] } }
    ])
)]
pub(crate) struct RawManifest<S> {
    /// Manifest format version.
    #[schemars(required)]
    version: Option<VersionField>,
    /// Logz.io region of the owner account (nl and wa are deprecated).
    region: Option<RegionField>,
    /// API base URL instead of a region: https://, or http:// to a loopback host.
    api_url: Option<ApiUrlField>,
    secrets: Option<S>,
    /// Age after which apply creates a successor and keeps the old token to be revoked, e.g. 90d (at least 1h). On a token, it wins over the top level.
    rotate_after: Option<RotateAfter>,
    /// What a refresh that finds the token revoked plans: report (the default) or recreate. On a token, it wins over the top level.
    on_revoked: Option<OnRevokedField>,
    /// Where the state, its journal and its lock live. Without it: the file given by --state.
    backend: Option<RawBackend>,
    /// The tokens that should exist; each address accountId/name is unique.
    tokens: TokenList,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    /// A PostgreSQL database; the connection string comes only from TOKENCTL_PG_CONN_STR.
    postgres: RawPostgres,
}

/// `backend.postgres`; the connection string is deliberately not a field:
/// it holds a password, and the manifest is committed.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    /// Schema of tokenctl's tables (default tokenctl), created on first use.
    schema: Option<SchemaName>,
    /// Name of this state; several can share one schema (default default).
    state: Option<StateName>,
}

/// `backend.postgres.schema`: a plain lower-case SQL identifier, so it
/// never needs quoting and cannot smuggle SQL into a statement.
struct SchemaName(String);
impl<'de> Deserialize<'de> for SchemaName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a schema name such as tokenctl", |text| {
            let mut chars = text.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
            let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !(first_ok && rest_ok && text.len() <= 63) {
                Err(format!(
                    "schema `{text}` is not a plain SQL name; use lower-case letters, digits and _ (at most 63, not starting with a digit or pg_)"
                ))
            } else if text.starts_with("pg_") || text == "information_schema" {
                Err(format!(
                    "schema `{text}` belongs to PostgreSQL itself; choose a name of your own such as tokenctl"
                ))
            } else if RESERVED_WORDS.binary_search(&text).is_ok() {
                Err(format!(
                    "schema `{text}` is a reserved word of PostgreSQL's SQL, which cannot name a schema unquoted; choose another such as tokenctl"
                ))
            } else {
                Ok(SchemaName(text.to_string()))
            }
        })
    }
}

/// PostgreSQL's key words that cannot name a schema without quotes (the
/// reserved ones and those that may only name a function or a type),
/// sorted; `pg_get_keywords()` lists them with category `R` or `T`.
pub(crate) const RESERVED_WORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// `backend.postgres.state`: the name of one state in the schema.
struct StateName(String);
impl<'de> Deserialize<'de> for StateName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "a state name such as default", |text| {
            let ok = !text.is_empty()
                && text.len() <= 200
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if ok {
                Ok(StateName(text.to_string()))
            } else {
                Err(format!(
                    "state `{text}` is not a usable name; use letters, digits and - _ . / (at most 200)"
                ))
            }
        })
    }
}

/// `rotate_after`: an age such as `90d` or `2160h`.
struct RotateAfter(u64);
impl<'de> Deserialize<'de> for RotateAfter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "an age such as 90d", |text| {
            let age = humantime::parse_duration(text.trim()).map_err(|err| {
                format!("rotate_after `{text}` is not an age ({err}); write e.g. 90d or 2160h")
            })?;
            if age.as_secs() < 3600 {
                return Err(format!(
                    "rotate_after `{text}` is shorter than an hour; rotation is meant for days, e.g. 90d"
                ));
            }
            Ok(RotateAfter(age.as_secs()))
        })
    }
}

/// `on_revoked`: `report` or `recreate`.
struct OnRevokedField(OnRevoked);
impl<'de> Deserialize<'de> for OnRevokedField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_string(d, "report or recreate", |text| match text {
            "report" => Ok(OnRevokedField(OnRevoked::Report)),
            "recreate" => Ok(OnRevokedField(OnRevoked::Recreate)),
            other => Err(format!(
                "on_revoked `{other}` is not known; use `report` (the default) or `recreate`"
            )),
        })
    }
}

/// The `tokens` list. A bare `tokens:` is YAML for null, which would
/// silently declare that no token should exist: it is refused, and
/// `tokens: []` says so on purpose.
struct TokenList(Vec<RawToken>);
impl<'de> Deserialize<'de> for TokenList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = TokenList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of tokens")
            }
            fn visit_unit<E: de::Error>(self) -> Result<TokenList, E> {
                Err(E::custom(
                    "`tokens` has no value; an empty list must be written `tokens: []`",
                ))
            }
            fn visit_none<E: de::Error>(self) -> Result<TokenList, E> {
                self.visit_unit()
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenList, A::Error> {
                let mut tokens = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(token) = seq.next_element::<RawToken>()? {
                    tokens.push(token);
                }
                Ok(TokenList(tokens))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawToken {
    /// Token name: printable, not blank, no surrounding white space.
    name: TokenName,
    /// Sub-account id.
    #[serde(rename = "accountId")]
    account_id: AccountId,
    /// Age after which apply creates a successor and keeps the old token to be revoked, e.g. 90d (at least 1h). On a token, it wins over the top level.
    rotate_after: Option<RotateAfter>,
    /// What a refresh that finds the token revoked plans: report (the default) or recreate. On a token, it wins over the top level.
    on_revoked: Option<OnRevokedField>,
}

/// Implements `JsonSchema` for a field type whose `Deserialize` checks
/// the value: the schema says, as far as JSON Schema can, what it accepts.
macro_rules! field_schema {
    ($ty:ty, |$generator:ident| $schema:expr) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema($generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

field_schema!(
    VersionField,
    |_g| json_schema!({ "const": MANIFEST_VERSION })
);
field_schema!(RegionField, |_g| {
    let codes: Vec<&str> = REGIONS.iter().map(|(_, code, _)| *code).collect();
    json_schema!({ "enum": codes })
});
field_schema!(
    ApiUrlField,
    |_g| json_schema!({ "type": "string", "pattern": "^https?://" })
);
field_schema!(
    RotateAfter,
    |_g| json_schema!({ "type": "string", "pattern": "^\\s*[0-9]" })
);
field_schema!(
    OnRevokedField,
    |_g| json_schema!({ "enum": ["report", "recreate"] })
);
field_schema!(TokenList, |g| g.subschema_for::<Vec<RawToken>>());
field_schema!(SchemaName, |_g| {
    let mut refused: Vec<&str> = RESERVED_WORDS.to_vec();
    refused.push("information_schema");
    json_schema!({
        "type": "string",
        "pattern": "^[a-z_][a-z0-9_]{0,62}$",
        "not": { "anyOf": [{ "enum": refused }, { "pattern": "^pg_" }] }
    })
});
field_schema!(
    StateName,
    |_g| json_schema!({ "type": "string", "pattern": "^[A-Za-z0-9._/-]{1,200}$" })
);
field_schema!(
    AccountId,
    |_g| json_schema!({ "type": "integer", "minimum": 1 })
);
field_schema!(
    TokenName,
    |_g| json_schema!({ "type": "string", "minLength": 1, "pattern": "^\\S(.*\\S)?$" })
);

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
                // YAML reads digits with a leading zero as text, not a number.
                if v.len() > 1 && v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(format!(
                        "accountId {v} has a leading zero, so YAML reads it as text; write `accountId: {}`",
                        v.trim_start_matches('0')
                    )));
                }
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
pub fn checked_string<'de, D, T>(
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
            "token name {name:?} contains the control character U+{:04X}; use printable characters only",
            u32::from(c)
        ));
    }
    // Every invisible character is outside ASCII: most names skip the scan.
    if let Some(c) = name.chars().find(|&c| !c.is_ascii() && is_invisible(c)) {
        return Err(format!(
            "token name {} contains U+{:04X}{}, an invisible formatting character that makes names look alike",
            name.escape_default(),
            u32::from(c),
            invisible_name(c)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
    }
    if name.trim() != name {
        return Err(format!(
            "token name {name:?} starts or ends with white space; remove it"
        ));
    }
    Ok(())
}

/// Tells whether `c` is a format character (Unicode category Cf: zero-width
/// and bidirectional controls, soft hyphen, byte-order mark, tags), a line
/// or paragraph separator, or a filler that renders as nothing.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xE0100..=0xE01EF
    )
}

/// Names the invisible characters seen most often in copied text.
fn invisible_name(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => "a bidirectional control",
        '\u{2060}' => "WORD JOINER",
        '\u{FEFF}' => "BYTE ORDER MARK",
        _ => return None,
    })
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
    let url = url::Url::parse(text).map_err(|e| format!("api_url `{text}` is not a URL: {e}"))?;
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
