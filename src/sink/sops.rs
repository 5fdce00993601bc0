//! The `sops` sink: SOPS files encrypted to age recipients, meant to be
//! committed next to the manifest.
//!
//! By default each address has one file, its *home*
//! (`160343-ci-shipper.sops.yaml`), which a successor rewrites in place
//! only while it still holds the predecessor the state records; the
//! readable `address` and `id` tell which token a file holds without a
//! key. The predecessor is kept beside the home
//! (`….<id>.sops.yaml.previous`) until the state that rewrote it records
//! that a person retired or forgot it; read-backs also look in git history
//! (as Vault's look at versions), for homes rewritten before that was so.
//! `layout: per-token` writes one new file per token instead, as before;
//! the reader finds tokens in both.
//!
//! The files are SOPS v3 documents as the `sops` tool and Flux read them:
//! a random 256-bit data key per file, wrapped for each age recipient
//! (ASCII-armored, one `sops.age` entry per recipient); the `token` value
//! encrypted with AES-256-GCM under that key, with its key path as
//! additional data; and a MAC (SHA-512 over every value of the document,
//! the readable ones too, encrypted with the data key and the
//! `lastmodified` time as additional data), so editing a readable `id`
//! makes `sops -d` refuse the file. Only this small fixed schema is
//! written and read back; this is not a general SOPS implementation.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use age::armor::{ArmoredReader, ArmoredWriter, Format as ArmorFormat};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_yaml::{Mapping, Value};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::fsutil;
use crate::model::address::Address;
use crate::model::manifest::checked_string;
use crate::model::state::State;
use crate::secret::Secret;
use crate::sink::{
    ForApply, FoundSecret, Handover, HomeHolds, NewToken, SecretLookup, SecretSink, SinkContext,
    SinkError, SinkKind,
};
use crate::time::{self, SharedClock};

/// AES-256-GCM with SOPS's 32-byte nonces.
type SopsCipher = AesGcm<Aes256, U32>;

/// Which values SOPS encrypts: the key `token`, wherever it is.
pub const ENCRYPTED_REGEX: &str = "^(token)$";
const ENCRYPTED_KEY: &str = "token";
/// The SOPS version recorded in the files: one whose readers know every
/// field written here.
const SOPS_VERSION: &str = "3.8.1";
const NONCE_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// File names end so, which `sops -d FILE` needs to pick its YAML store.
pub const FILE_SUFFIX: &str = ".sops.yaml";
/// A predecessor kept beside its home until git holds it ends so: not in
/// `.yaml`, so that Flux and kustomize, which apply every YAML file of a
/// folder, never see two Secrets of one name.
pub const PREVIOUS_SUFFIX: &str = ".sops.yaml.previous";
/// Longest part of a token's name kept in a file or Kubernetes name.
const NAME_PART_MAX: usize = 40;
const ANNOTATION_PREFIX: &str = "tokenctl";

/// `secrets.sops`: where the files go, who can read them, their shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SopsSpec {
    /// Folder of the SOPS files, relative to the manifest's folder.
    #[serde(deserialize_with = "folder")]
    #[schemars(length(min = 1))]
    pub dir: PathBuf,
    /// age recipients (public keys) that can decrypt the files.
    #[serde(deserialize_with = "recipients")]
    #[schemars(schema_with = "recipients_schema")]
    pub age: Vec<String>,
    /// plain (the token's fields) or k8s-secret (a Kubernetes v1 Secret with stringData.token).
    #[serde(default, deserialize_with = "format")]
    #[schemars(schema_with = "format_schema")]
    pub format: SopsFormat,
    /// per-address (default: one file per address, which each successor rewrites in place) or per-token (one new file per token).
    #[serde(default, deserialize_with = "layout")]
    #[schemars(schema_with = "layout_schema")]
    pub layout: SopsLayout,
}

impl SopsSpec {
    /// Returns the sink; with `for_lookup`, loaded with the age identities
    /// of `SOPS_AGE_KEY_FILE` / `SOPS_AGE_KEY` (else sops's default key
    /// file), which writing never needs.
    fn sink(&self, ctx: &SinkContext<'_>, for_lookup: bool) -> Result<SopsSink, SinkError> {
        let dir = ctx.base_dir.join(&self.dir);
        let mut recipients = Vec::with_capacity(self.age.len());
        for key in &self.age {
            // The manifest parser checked each key already.
            recipients.push(parse_recipient(key).map_err(|err| SinkError {
                sink: format!("sops {}", dir.display()),
                detail: format!("{key}: {err}"),
                hint: None,
            })?);
        }
        let mut key_file_read = None;
        let identities = match for_lookup {
            true => {
                let var = |name: &str| ctx.vars.get(name).map(str::to_string);
                let (key_file, key) = (var("SOPS_AGE_KEY_FILE"), var("SOPS_AGE_KEY"));
                // Where sops itself looks when neither variable is set.
                let default_file = var("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .or_else(|| ctx.home.map(|home| home.join(".config")))
                    .map(|config| config.join("sops/age/keys.txt"))
                    .filter(|path| key_file.is_none() && key.is_none() && path.is_file())
                    .map(|path| path.display().to_string());
                key_file_read = key_file.clone().or(default_file.clone()).map(PathBuf::from);
                identities_from(key_file.or(default_file).as_deref(), key.as_deref()).map_err(
                    |detail| SinkError {
                        sink: format!("sops {}", dir.display()),
                        detail,
                        hint: Some("SOPS_AGE_KEY_FILE names a file of age identities (AGE-SECRET-KEY-1…); SOPS_AGE_KEY holds them".into()),
                    },
                )?
            }
            false => Vec::new(),
        };
        let mut sink = SopsSink::new(dir, recipients, self.format, identities);
        sink.key_file = key_file_read;
        sink.layout = self.layout;
        sink.vars = Some(ctx.vars.clone());
        Ok(sink)
    }
}

impl SinkKind for SopsSpec {
    fn open(
        &self,
        ctx: &SinkContext<'_>,
        apply: &ForApply<'_>,
    ) -> Result<Box<dyn SecretSink>, SinkError> {
        let mut sink = self.sink(ctx, false)?.with_clock(apply.clock.clone());
        sink.predecessors = apply.predecessors.clone();
        sink.check_committable(ctx.base_dir, ctx.vars, apply.creates)?;
        sink.check_writable()?;
        sink.check_homes(apply.creates)?;
        Ok(Box::new(sink))
    }

    fn home(&self, address: &Address) -> Option<String> {
        (self.layout == SopsLayout::PerAddress)
            .then(|| format!("sops {}", self.dir.join(home_name(address)).display()))
    }

    /// Reads the homes' readable fields: a local read, which needs no key.
    fn read_homes(
        &self,
        ctx: &SinkContext<'_>,
        successions: &[(Address, u64)],
        _remote: bool,
    ) -> Vec<(Address, HomeHolds)> {
        let Ok(sink) = self.sink(ctx, false) else {
            return Vec::new();
        };
        if sink.layout != SopsLayout::PerAddress {
            return Vec::new();
        }
        successions
            .iter()
            .map(|(address, predecessor)| {
                let holds = match sink.home_now(address) {
                    Home::Absent => HomeHolds::Empty,
                    Home::Holds { id, .. } if id == *predecessor => {
                        HomeHolds::Predecessor { version: None }
                    }
                    other => HomeHolds::Other(other.describe()),
                };
                (address.clone(), holds)
            })
            .collect()
    }

    /// Reads the homes' readable fields, the predecessors kept beside them
    /// and, for homes rewritten before those were kept, git history: a
    /// local read, which needs no key.
    fn read_handovers(
        &self,
        ctx: &SinkContext<'_>,
        superseded: &[(Address, u64, u64)],
        _remote: bool,
    ) -> Vec<(Address, u64, Handover)> {
        let Ok(sink) = self.sink(ctx, false) else {
            return Vec::new();
        };
        if sink.layout != SopsLayout::PerAddress {
            return Vec::new();
        }
        sink.handovers(superseded)
    }

    fn tidy(&self, ctx: &SinkContext<'_>, state: &State) -> Result<Vec<String>, SinkError> {
        self.sink(ctx, false)?.drop_retired_previous(state)
    }

    fn reader(&self, ctx: &SinkContext<'_>) -> Option<Result<Box<dyn SecretLookup>, SinkError>> {
        Some(
            self.sink(ctx, true)
                .map(|sink| Box::new(sink) as Box<dyn SecretLookup>),
        )
    }
}

fn folder<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    checked_string(d, "a folder (a string)", |text| {
        if text.trim().is_empty() {
            return Err("must not be empty".into());
        }
        let path = PathBuf::from(text);
        // The files are meant to be committed with the manifest: a folder
        // that leaves its repository would not be.
        if path.is_absolute() {
            return Err(format!(
                "`{text}` is absolute; write the folder relative to the manifest's folder, inside its repository, as the files are meant to be committed with it"
            ));
        }
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "`{text}` goes up with `..`; write a folder under the manifest's folder, as the files are meant to be committed with it"
            ));
        }
        Ok(path)
    })
}

fn recipients<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::{self, Deserialize, SeqAccess, Visitor};
    struct Recipient(String);
    impl<'de> Deserialize<'de> for Recipient {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            checked_string(d, "an age recipient (age1…)", |text| {
                parse_recipient(text).map(|_| Recipient(text.trim().to_string()))
            })
        }
    }
    struct ListVisitor;
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of age recipients, e.g. [age1…]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(Recipient(key)) = seq.next_element()? {
                keys.push(key);
            }
            if keys.is_empty() {
                return Err(de::Error::custom(
                    "needs at least one age recipient (age1…), the public key of whoever decrypts the files",
                ));
            }
            Ok(keys)
        }
    }
    d.deserialize_seq(ListVisitor)
}

fn recipients_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "items": { "type": "string", "pattern": "^age1[0-9a-z]+$" }
    })
}

/// Reads `format`; no value means the default, as no key does.
fn format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SopsFormat, D::Error> {
    use serde::Deserialize;
    struct Named(SopsFormat);
    impl<'de> Deserialize<'de> for Named {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            checked_string(d, "a SOPS file format", |text| {
                SopsFormat::from_name(text).map(Named).ok_or_else(|| {
                    let known: Vec<&str> = SopsFormat::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown format `{text}`; use {}", known.join(" or "))
                })
            })
        }
    }
    Ok(Option::<Named>::deserialize(d)?.map_or_else(SopsFormat::default, |Named(f)| f))
}

fn format_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = SopsFormat::ALL.iter().map(|f| f.name()).collect();
    schemars::json_schema!({ "enum": names })
}

/// Reads `layout`; no value means the default, as no key does.
fn layout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SopsLayout, D::Error> {
    use serde::Deserialize;
    struct Named(SopsLayout);
    impl<'de> Deserialize<'de> for Named {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            checked_string(d, "a layout of the SOPS files", |text| {
                SopsLayout::from_name(text).map(Named).ok_or_else(|| {
                    let known: Vec<&str> = SopsLayout::ALL.iter().map(|l| l.name()).collect();
                    format!("unknown layout `{text}`; use {}", known.join(" or "))
                })
            })
        }
    }
    Ok(Option::<Named>::deserialize(d)?.map_or_else(SopsLayout::default, |Named(l)| l))
}

fn layout_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = SopsLayout::ALL.iter().map(|l| l.name()).collect();
    schemars::json_schema!({ "enum": names })
}

/// Which files hold the tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SopsLayout {
    /// One file per address, its home, at a name without the id
    /// (`160343-ci-shipper.sops.yaml`); a successor rewrites it in place.
    #[default]
    PerAddress,
    /// One new file per token, named with its id
    /// (`160343-ci-shipper-5001.sops.yaml`); none is ever rewritten.
    PerToken,
}

impl SopsLayout {
    /// Every layout, in the order the manifest's help lists them.
    pub const ALL: [SopsLayout; 2] = [SopsLayout::PerAddress, SopsLayout::PerToken];

    /// Returns the name the manifest gives the layout.
    pub fn name(self) -> &'static str {
        match self {
            SopsLayout::PerAddress => "per-address",
            SopsLayout::PerToken => "per-token",
        }
    }

    /// Returns the layout named in a manifest, if it is one.
    pub fn from_name(name: &str) -> Option<SopsLayout> {
        SopsLayout::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// The document shape of a SOPS file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SopsFormat {
    /// Keys `address, accountId, name, id, createdAt, token`.
    #[default]
    Plain,
    /// A Kubernetes `v1` Secret with `stringData.token`.
    K8sSecret,
}

impl SopsFormat {
    /// Every format, in the order the manifest's help lists them.
    pub const ALL: [SopsFormat; 2] = [SopsFormat::Plain, SopsFormat::K8sSecret];

    /// Returns the name the manifest gives the format.
    pub fn name(self) -> &'static str {
        match self {
            SopsFormat::Plain => "plain",
            SopsFormat::K8sSecret => "k8s-secret",
        }
    }

    /// Returns the format named in a manifest, if it is one.
    pub fn from_name(name: &str) -> Option<SopsFormat> {
        SopsFormat::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Why a SOPS file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error("not a SOPS file as tokenctl writes them: {0}")]
    Format(String),
    #[error("none of the available age identities is a recipient of the file")]
    NoIdentity,
    #[error(
        "the MAC does not match the content: the file was changed after it was written, or its data key is wrong"
    )]
    Mac,
    #[error("{0}")]
    Crypto(String),
}

/// Parses an age X25519 recipient (`age1…`).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    text.trim()
        .parse::<age::x25519::Recipient>()
        .map_err(|_| "not an age recipient (age1…)".to_string())
}

/// Reads age identities from `SOPS_AGE_KEY_FILE` (a path) and `SOPS_AGE_KEY`
/// (the keys themselves), as `sops` does; returns none when neither is set.
pub fn identities_from(
    key_file: Option<&str>,
    key: Option<&str>,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, String> {
    let mut identities = Vec::new();
    let mut add = |text: &[u8], from: &str| -> Result<(), String> {
        // The identities are credentials: masked wherever text leaves.
        for line in String::from_utf8_lossy(text).lines() {
            if line.trim().starts_with("AGE-SECRET-KEY-") {
                crate::redact::register(line.trim());
            }
        }
        let file = age::IdentityFile::from_buffer(BufReader::new(text))
            .map_err(|e| format!("{from} holds no age identity: {e}"))?;
        let found = file
            .into_identities()
            .map_err(|e| format!("{from} holds an unusable identity: {e}"))?;
        identities.extend(found);
        Ok(())
    };
    if let Some(path) = key_file.filter(|p| !p.is_empty()) {
        let text =
            fs::read(path).map_err(|e| format!("cannot read SOPS_AGE_KEY_FILE {path}: {e}"))?;
        add(&text, &format!("SOPS_AGE_KEY_FILE {path}"))?;
    }
    if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
        add(key.as_bytes(), "SOPS_AGE_KEY")?;
    }
    Ok(identities)
}

/// Returns the file name for a token of the per-token layout: account,
/// name and id, kept to safe ASCII and bounded in length, so any file
/// system takes it.
pub fn file_name(address: &Address, id: u64) -> String {
    format!(
        "{}-{}-{id}{FILE_SUFFIX}",
        address.account_id,
        file_part(address)
    )
}

/// Returns the file name of an address's home (the per-address layout):
/// account and name, without an id, so that it stays the same across
/// successors.
pub fn home_name(address: &Address) -> String {
    format!("{}{FILE_SUFFIX}", home_stem(address))
}

/// Returns the name a predecessor's file is kept under beside its home
/// until git holds it.
pub fn previous_name(address: &Address, id: u64) -> String {
    format!("{}.{id}{PREVIOUS_SUFFIX}", home_stem(address))
}

/// Returns what a home's file name starts with: account and name, and,
/// when the name lost characters on the way, a digest of the address, so
/// two addresses never share a home.
fn home_stem(address: &Address) -> String {
    let name = file_part(address);
    match name == address.name {
        true => format!("{}-{name}", address.account_id),
        false => format!("{}-{name}-{}", address.account_id, address_digest(address)),
    }
}

fn file_part(address: &Address) -> String {
    safe_part(&address.name, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })
}

/// Returns a valid Kubernetes object name (an RFC 1123 subdomain) for a
/// token: `logzio-<accountId>-<name>`, the same for every token of the
/// address (`id: None`, the per-address layout), or with the token's id
/// (the per-token layout). A name that lost characters on the way gets a
/// digest of the address instead of an id, so names stay distinct.
pub fn k8s_name(address: &Address, id: Option<u64>) -> String {
    let lower = address.name.to_ascii_lowercase();
    let name = safe_part(&lower, |c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let name = name.replace('_', "-");
    let tail = match id {
        Some(id) => format!("-{id}"),
        None if name != address.name => format!("-{}", address_digest(address)),
        None => String::new(),
    };
    format!("logzio-{}-{name}{tail}", address.account_id)
}

/// Returns the first 8 hex digits of the SHA-256 of the address.
fn address_digest(address: &Address) -> String {
    let digest = sha2::Sha256::digest(address.to_string().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps the characters `keep` allows, replaces runs of others with one
/// `_`, trims separators at the ends and bounds the length.
fn safe_part(name: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if keep(c) {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.truncate(NAME_PART_MAX);
    let trimmed = out.trim_matches(|c| c == '_' || c == '-');
    if trimmed.is_empty() {
        "token".into()
    } else {
        trimmed.to_string()
    }
}

/// Returns the document of a token before encryption; the token value is
/// only placed in it by [`encrypt`].
fn document(token: &NewToken<'_>, format: SopsFormat, layout: SopsLayout) -> Mapping {
    let address = token.address;
    let mut doc = Mapping::new();
    let s = |text: &str| Value::String(text.to_string());
    match format {
        SopsFormat::Plain => {
            doc.insert(s("address"), s(&address.to_string()));
            doc.insert(s("accountId"), Value::from(address.account_id));
            doc.insert(s("name"), s(&address.name));
            doc.insert(s("id"), Value::from(token.id));
            doc.insert(s("createdAt"), Value::from(token.created_at));
            doc.insert(s(ENCRYPTED_KEY), Value::Null);
        }
        SopsFormat::K8sSecret => {
            let key = |k: &str| s(&format!("{ANNOTATION_PREFIX}/{k}"));
            let mut annotations = Mapping::new();
            annotations.insert(key("address"), s(&address.to_string()));
            annotations.insert(key("account-id"), s(&address.account_id.to_string()));
            annotations.insert(key("name"), s(&address.name));
            annotations.insert(key("id"), s(&token.id.to_string()));
            annotations.insert(key("created-at"), s(&token.created_at.to_string()));
            let mut labels = Mapping::new();
            labels.insert(s("app.kubernetes.io/managed-by"), s("tokenctl"));
            labels.insert(key("account-id"), s(&address.account_id.to_string()));
            let mut metadata = Mapping::new();
            let id = (layout == SopsLayout::PerToken).then_some(token.id);
            metadata.insert(s("name"), s(&k8s_name(address, id)));
            metadata.insert(s("labels"), Value::Mapping(labels));
            metadata.insert(s("annotations"), Value::Mapping(annotations));
            let mut string_data = Mapping::new();
            string_data.insert(s(ENCRYPTED_KEY), Value::Null);
            doc.insert(s("apiVersion"), s("v1"));
            doc.insert(s("kind"), s("Secret"));
            doc.insert(s("metadata"), Value::Mapping(metadata));
            doc.insert(s("type"), s("Opaque"));
            doc.insert(s("stringData"), Value::Mapping(string_data));
        }
    }
    doc
}

/// Returns the SOPS file text for a new token, encrypted to `recipients`,
/// with `lastmodified` set to `now` (epoch seconds).
pub fn encrypt(
    token: &NewToken<'_>,
    format: SopsFormat,
    layout: SopsLayout,
    recipients: &[age::x25519::Recipient],
    now: i64,
) -> Result<String, SopsError> {
    if recipients.is_empty() {
        return Err(SopsError::Crypto("no age recipient is configured".into()));
    }
    let mut data_key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut *data_key);
    let mut doc = document(token, format, layout);
    let mut hash = Sha512::new();
    let mut failure = None;
    walk_leaves(&mut doc, &mut Vec::new(), &mut |value, path| {
        let encrypted = path.iter().any(|k| k == ENCRYPTED_KEY);
        // The token's placeholder stands for the secret; nothing else
        // ever holds it in plaintext.
        let plain = if encrypted {
            Plain::Str(token.token.expose())
        } else {
            match plain_of(value) {
                Ok(plain) => plain,
                Err(err) => {
                    failure.get_or_insert(err);
                    return;
                }
            }
        };
        hash.update(plain.bytes());
        if encrypted {
            match seal(&data_key, &plain, &additional_data(path)) {
                Ok(sealed) => *value = Value::String(sealed),
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
    });
    if let Some(err) = failure {
        return Err(err);
    }
    let lastmodified = time::rfc3339(now)
        .ok_or_else(|| SopsError::Crypto(format!("the time {now} has no calendar date")))?;
    let mac = hex_upper(&hash.finalize());
    let mac = seal(&data_key, &Plain::Str(&mac), &lastmodified)?;
    let mut age_keys = Vec::new();
    for recipient in recipients {
        age_keys.push(Value::Mapping(Mapping::from_iter([
            (
                Value::String("recipient".into()),
                Value::String(recipient.to_string()),
            ),
            (
                Value::String("enc".into()),
                Value::String(wrap_key(&data_key, recipient)?),
            ),
        ])));
    }
    let s = |text: &str| Value::String(text.to_string());
    let mut metadata = Mapping::new();
    metadata.insert(s("age"), Value::Sequence(age_keys));
    metadata.insert(s("lastmodified"), s(&lastmodified));
    metadata.insert(s("mac"), s(&mac));
    metadata.insert(s("encrypted_regex"), s(ENCRYPTED_REGEX));
    metadata.insert(s("version"), s(SOPS_VERSION));
    doc.insert(s("sops"), Value::Mapping(metadata));
    let mut out = String::new();
    emit_mapping(&doc, 0, &mut out);
    Ok(out)
}

/// Writes a mapping as block YAML that every YAML reader types alike.
///
/// A generic emitter leaves a string such as `1_000`, `0X1f` or
/// `2001-12-14` unquoted, which Go's YAML reader (and so `sops`) takes for a
/// number or a time: its MAC would then differ from the one written. So
/// every string is double-quoted (JSON string syntax is valid YAML), except
/// the armored data keys, which are plain ASCII and kept readable as
/// literal blocks, as `sops` writes them.
fn emit_mapping(map: &Mapping, indent: usize, out: &mut String) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&emit_key(key.as_str().unwrap_or_default()));
        out.push(':');
        emit_value(value, indent, out);
    }
}

fn emit_value(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Mapping(map) if map.is_empty() => out.push_str(" {}\n"),
        Value::Mapping(map) => {
            out.push('\n');
            emit_mapping(map, indent + 2, out);
        }
        Value::Sequence(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Sequence(items) => {
            out.push('\n');
            for item in items {
                if let Value::Mapping(map) = item {
                    // The first key goes on the dash's line.
                    let mut nested = String::new();
                    emit_mapping(map, indent + 2, &mut nested);
                    out.push_str(&" ".repeat(indent));
                    out.push_str("- ");
                    out.push_str(&nested[indent + 2..]);
                } else {
                    out.push_str(&" ".repeat(indent));
                    out.push('-');
                    emit_value(item, indent, out);
                }
            }
        }
        Value::String(text) if is_block_safe(text) => {
            out.push_str(if text.ends_with('\n') {
                " |\n"
            } else {
                " |-\n"
            });
            for line in text.lines() {
                out.push_str(&" ".repeat(indent + 2));
                out.push_str(line);
                out.push('\n');
            }
        }
        Value::String(text) => {
            out.push(' ');
            out.push_str(&quote(text));
            out.push('\n');
        }
        Value::Number(n) => out.push_str(&format!(" {n}\n")),
        Value::Bool(b) => out.push_str(&format!(" {b}\n")),
        Value::Null | Value::Tagged(_) => out.push_str(" null\n"),
    }
}

fn emit_key(key: &str) -> String {
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && key.starts_with(|c: char| c.is_ascii_alphabetic());
    if plain { key.to_string() } else { quote(key) }
}

/// Returns `text` as a double-quoted YAML scalar.
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// Tells whether a multi-line string reads back unchanged from a literal
/// block: printable ASCII lines without leading or trailing blanks, and at
/// most one final newline.
fn is_block_safe(text: &str) -> bool {
    text.contains('\n')
        && !text.ends_with("\n\n")
        && text.lines().all(|line| {
            !line.is_empty()
                && !line.starts_with(' ')
                && !line.ends_with(' ')
                && line.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        })
}

/// A token read back from a SOPS file, its MAC verified.
pub struct Decrypted {
    pub address: String,
    pub id: u64,
    pub created_at: Option<i64>,
    pub token: Secret,
}

/// The readable fields of a SOPS file, without decrypting it.
#[derive(Debug, PartialEq, Eq)]
pub struct Readable {
    pub address: String,
    pub id: u64,
}

/// Returns the readable address and id of a SOPS file tokenctl wrote.
pub fn readable(text: &str) -> Result<Readable, SopsError> {
    let doc: Mapping = serde_yaml::from_str(text).map_err(|e| SopsError::Format(e.to_string()))?;
    fields_of(&doc).map(|(address, id, _)| Readable { address, id })
}

/// Returns (address, id, createdAt) from either document shape.
fn fields_of(doc: &Mapping) -> Result<(String, u64, Option<i64>), SopsError> {
    let missing = |key: &str| SopsError::Format(format!("no readable `{key}`"));
    let fields = match doc.get("metadata").and_then(|m| m.get("annotations")) {
        Some(annotations) => annotations,
        None => &Value::Mapping(doc.clone()),
    };
    let pick = |plain: &str, k8s: &str| {
        fields
            .get(plain)
            .or_else(|| fields.get(format!("{ANNOTATION_PREFIX}/{k8s}")))
    };
    let number = |value: &Value| match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let address = pick("address", "address")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("address"))?
        .to_string();
    let id = pick("id", "id")
        .and_then(number)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| missing("id"))?;
    let created_at = pick("createdAt", "created-at").and_then(number);
    Ok((address, id, created_at))
}

/// Decrypts the token of a SOPS file with any of `identities`, after
/// verifying the MAC over every value.
pub fn decrypt(
    text: &str,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Decrypted, SopsError> {
    let format_error = |detail: &str| SopsError::Format(detail.to_string());
    let mut doc: Mapping =
        serde_yaml::from_str(text).map_err(|e| SopsError::Format(e.to_string()))?;
    let metadata = doc
        .remove("sops")
        .ok_or_else(|| format_error("no `sops` metadata"))?;
    if metadata.get("encrypted_regex").and_then(Value::as_str) != Some(ENCRYPTED_REGEX) {
        return Err(format_error(&format!(
            "only files with encrypted_regex {ENCRYPTED_REGEX} are read"
        )));
    }
    let lastmodified = metadata
        .get("lastmodified")
        .and_then(Value::as_str)
        .ok_or_else(|| format_error("no `sops.lastmodified`"))?
        .to_string();
    let mac = metadata
        .get("mac")
        .and_then(Value::as_str)
        .ok_or_else(|| format_error("no `sops.mac`"))?
        .to_string();
    let wrapped: Vec<&str> = metadata
        .get("age")
        .and_then(Value::as_sequence)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.get("enc").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let data_key = wrapped
        .iter()
        .find_map(|enc| unwrap_key(enc, identities))
        .ok_or(SopsError::NoIdentity)?;
    let (address, id, created_at) = fields_of(&doc)?;
    let mut hash = Sha512::new();
    let mut token = None;
    let mut failure = None;
    walk_leaves(&mut doc, &mut Vec::new(), &mut |value, path| {
        let encrypted = path.iter().any(|k| k == ENCRYPTED_KEY);
        let result = if encrypted {
            value
                .as_str()
                .ok_or_else(|| SopsError::Format("an encrypted value is not a string".into()))
                .and_then(|sealed| open(&data_key, sealed, &additional_data(path)))
                .map(|(bytes, _)| {
                    hash.update(&bytes);
                    if path.last().map(String::as_str) == Some(ENCRYPTED_KEY) {
                        token = Some(bytes);
                    }
                })
        } else {
            plain_of(value).map(|plain| hash.update(plain.bytes()))
        };
        if let Err(err) = result {
            failure.get_or_insert(err);
        }
    });
    if let Some(err) = failure {
        return Err(err);
    }
    let (stored_mac, _) = open(&data_key, &mac, &lastmodified).map_err(|_| SopsError::Mac)?;
    if stored_mac.as_slice() != hex_upper(&hash.finalize()).as_bytes() {
        return Err(SopsError::Mac);
    }
    let token = token.ok_or_else(|| format_error("no `token` value"))?;
    let token = std::str::from_utf8(&token)
        .map_err(|_| format_error("the token is not text"))?
        .to_string();
    Ok(Decrypted {
        address,
        id,
        created_at,
        token: Secret::new(token),
    })
}

/// A leaf value as SOPS turns it into bytes for the MAC and the cipher.
enum Plain<'a> {
    Str(&'a str),
    Owned(String, &'static str),
}

impl Plain<'_> {
    /// Borrowed, never copied: the token's bytes stay in its `Secret`.
    fn bytes(&self) -> &[u8] {
        match self {
            Plain::Str(s) => s.as_bytes(),
            Plain::Owned(s, _) => s.as_bytes(),
        }
    }

    fn sops_type(&self) -> &'static str {
        match self {
            Plain::Str(_) => "str",
            Plain::Owned(_, kind) => kind,
        }
    }
}

fn plain_of(value: &Value) -> Result<Plain<'_>, SopsError> {
    match value {
        Value::String(s) => Ok(Plain::Str(s)),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Plain::Owned(n.to_string(), "int")),
        // SOPS writes booleans the way Python did.
        Value::Bool(b) => Ok(Plain::Owned(
            if *b { "True" } else { "False" }.into(),
            "bool",
        )),
        _ => Err(SopsError::Format(
            "a value that is not a string, integer or boolean".into(),
        )),
    }
}

/// Calls `f` on every leaf in document order with its key path; SOPS skips
/// nulls, and so does this.
fn walk_leaves(
    doc: &mut Mapping,
    path: &mut Vec<String>,
    f: &mut dyn FnMut(&mut Value, &[String]),
) {
    for (key, value) in doc.iter_mut() {
        path.push(key.as_str().unwrap_or_default().to_string());
        walk_value(value, path, f);
        path.pop();
    }
}

fn walk_value(value: &mut Value, path: &mut Vec<String>, f: &mut dyn FnMut(&mut Value, &[String])) {
    match value {
        Value::Mapping(map) => walk_leaves(map, path, f),
        Value::Sequence(items) => {
            for item in items {
                walk_value(item, path, f);
            }
        }
        // The token's placeholder is the one null that is a leaf.
        Value::Null if path.last().map(String::as_str) != Some(ENCRYPTED_KEY) => {}
        Value::Tagged(tagged) => walk_value(&mut tagged.value, path, f),
        _ => f(value, path),
    }
}

/// Returns SOPS's additional data for a value: its key path, `:`-joined,
/// with a trailing `:`.
fn additional_data(path: &[String]) -> String {
    let mut aad = path.join(":");
    aad.push(':');
    aad
}

fn seal(key: &[u8; 32], plain: &Plain<'_>, aad: &str) -> Result<String, SopsError> {
    let cipher = SopsCipher::new_from_slice(key)
        .map_err(|_| SopsError::Crypto("bad data key length".into()))?;
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            Nonce::<U32>::from_slice(&nonce),
            Payload {
                msg: plain.bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SopsError::Crypto("AES-GCM encryption failed".into()))?;
    let (data, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{}]",
        BASE64.encode(data),
        BASE64.encode(nonce),
        BASE64.encode(tag),
        plain.sops_type()
    ))
}

/// Decrypts an `ENC[AES256_GCM,...]` value; returns its bytes (wiped when
/// dropped: they may be the token) and type.
fn open(
    key: &[u8; 32],
    sealed: &str,
    aad: &str,
) -> Result<(Zeroizing<Vec<u8>>, String), SopsError> {
    let bad = || SopsError::Format("a value is not a SOPS AES256_GCM value".into());
    let inner = sealed
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(bad)?;
    let mut parts = [None; 4];
    for field in inner.split(',') {
        let (name, value) = field.split_once(':').ok_or_else(bad)?;
        let slot = ["data", "iv", "tag", "type"]
            .iter()
            .position(|n| *n == name)
            .ok_or_else(bad)?;
        parts[slot] = Some(value);
    }
    let [Some(data), Some(iv), Some(tag), Some(kind)] = parts else {
        return Err(bad());
    };
    let decode = |text: &str| BASE64.decode(text).map_err(|_| bad());
    let (mut data, iv, tag) = (decode(data)?, decode(iv)?, decode(tag)?);
    if iv.len() != NONCE_LEN || tag.len() != TAG_LEN {
        return Err(bad());
    }
    data.extend_from_slice(&tag);
    let cipher = SopsCipher::new_from_slice(key).map_err(|_| bad())?;
    let plain = cipher
        .decrypt(
            Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: &data,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SopsError::Mac)?;
    Ok((Zeroizing::new(plain), kind.to_string()))
}

/// Returns the data key encrypted to one age recipient, ASCII-armored.
fn wrap_key(key: &[u8; 32], recipient: &age::x25519::Recipient) -> Result<String, SopsError> {
    let crypto = |e: &dyn std::fmt::Display| SopsError::Crypto(format!("age: {e}"));
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
            .map_err(|e| crypto(&e))?;
    let mut out = Vec::new();
    let armored =
        ArmoredWriter::wrap_output(&mut out, ArmorFormat::AsciiArmor).map_err(|e| crypto(&e))?;
    let mut writer = encryptor.wrap_output(armored).map_err(|e| crypto(&e))?;
    writer.write_all(key).map_err(|e| crypto(&e))?;
    writer
        .finish()
        .and_then(|armored| armored.finish())
        .map_err(|e| crypto(&e))?;
    String::from_utf8(out).map_err(|e| crypto(&e))
}

fn unwrap_key(
    armored: &str,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Option<Zeroizing<[u8; 32]>> {
    let decryptor = age::Decryptor::new(ArmoredReader::new(armored.as_bytes())).ok()?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .ok()?;
    let mut key = Zeroizing::new(Vec::with_capacity(33));
    reader.read_to_end(&mut key).ok()?;
    <[u8; 32]>::try_from(key.as_slice())
        .ok()
        .map(Zeroizing::new)
}

/// Returns `path` with symbolic links followed as far as it exists, the
/// rest appended as written.
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = match parent.as_os_str().is_empty() {
                    true => PathBuf::from("."),
                    false => parent.to_path_buf(),
                };
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Writes SOPS files into a folder: an address's home, or one new file per
/// token.
pub struct SopsSink {
    dir: PathBuf,
    recipients: Vec<age::x25519::Recipient>,
    format: SopsFormat,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// The file the identities were read from, if any.
    key_file: Option<PathBuf>,
    layout: SopsLayout,
    /// The predecessor each successor of this apply replaces in its home.
    predecessors: rustc_hash::FxHashMap<Address, u64>,
    /// The environment git runs with, to read the homes' history; without
    /// it, history is not read.
    vars: Option<crate::vars::Vars>,
    /// Where the folder lies in its git work tree, once asked (`None`
    /// outside git, or without git).
    git: std::sync::OnceLock<Option<GitPlace>>,
    /// Runs just before the last check of a home and its rename, so a test
    /// can write the home there.
    #[cfg(test)]
    before_rename: Option<Box<dyn Fn() + Send>>,
    /// Tells the time each file records as written.
    clock: SharedClock,
}

/// The folder's place in its git work tree.
#[derive(Debug, Clone)]
struct GitPlace {
    /// The folder's path from the work tree's top, ending in `/` (empty at
    /// the top).
    prefix: String,
    /// Whether the clone is shallow: its history stops short.
    shallow: bool,
}

/// How many committed versions of a home a read-back looks at, newest
/// first: enough for the predecessors still waiting to be revoked when
/// the file was also rewritten for other reasons (`sops updatekeys`).
const HOME_HISTORY: usize = 50;

/// Returns the contents `git cat-file --batch` printed, one per object
/// asked, in order; `None` for one it did not find.
fn batch_blobs(mut out: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut blobs = Vec::new();
    while let Some(end) = out.iter().position(|b| *b == b'\n') {
        let header = String::from_utf8_lossy(&out[..end]).into_owned();
        out = &out[end + 1..];
        let mut fields = header.split(' ').skip(1);
        let (kind, size) = (fields.next(), fields.next().and_then(|s| s.parse().ok()));
        match (kind, size) {
            (Some(kind), Some(size)) if out.len() > size => {
                blobs.push((kind == "blob").then(|| out[..size].to_vec()));
                out = &out[size + 1..];
            }
            // `<object> missing`: no content follows.
            _ => blobs.push(None),
        }
    }
    blobs
}

/// Returns, from `git log --format=%x01%H --raw --no-abbrev` run in a
/// folder whose path from the top is `prefix`, the blobs of each file of
/// the folder itself whose name `wanted` accepts, newest first and without
/// repeats, at most [`HOME_HISTORY`] each: (name, commit, blob).
fn logged_blobs(
    out: &str,
    prefix: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, String, String)> {
    let mut commit = "";
    let mut seen: rustc_hash::FxHashMap<&str, Vec<&str>> = Default::default();
    let mut blobs = Vec::new();
    for line in out.lines() {
        if let Some(hash) = line.strip_prefix('\u{1}') {
            commit = hash.trim();
            continue;
        }
        // `:100644 100644 <old> <new> M\t<path>`
        let Some((fields, path)) = line.strip_prefix(':').and_then(|l| l.split_once('\t')) else {
            continue;
        };
        let Some(blob) = fields.split(' ').nth(3) else {
            continue;
        };
        let Some(name) = path.strip_prefix(prefix).filter(|n| !n.contains('/')) else {
            continue;
        };
        let valid = |hex: &str| hex.len() >= 40 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        // A deletion's new blob is all zeros.
        if !wanted(name) || !valid(blob) || !valid(commit) || blob.bytes().all(|b| b == b'0') {
            continue;
        }
        let versions = seen.entry(name).or_default();
        if versions.len() < HOME_HISTORY && !versions.contains(&blob) {
            versions.push(blob);
            blobs.push((name.to_string(), commit.to_string(), blob.to_string()));
        }
    }
    blobs
}

/// What an address's home holds, as its readable fields say.
enum Home {
    /// No file.
    Absent,
    /// A token of the address, and the file's text.
    Holds { id: u64, text: String },
    /// A file of another address. What it names is not repeated: it is
    /// text anyone who can write the folder chose.
    Foreign,
    /// Anything else, in words.
    Unknown(String),
}

impl Home {
    /// Says what the home holds, for messages: never text read from the
    /// file.
    fn describe(&self) -> String {
        match self {
            Home::Absent => "nothing".into(),
            Home::Holds { id, .. } => format!("token id {id}"),
            Home::Foreign => "a file of another address".into(),
            Home::Unknown(what) => what.clone(),
        }
    }
}

/// Tells whether a file name is one of the sink's: a SOPS file or a kept
/// predecessor, named in plain ASCII as tokenctl names them (a name with
/// control characters is never read, nor put in a message).
fn is_sops_name(name: &str) -> bool {
    (name.ends_with(FILE_SUFFIX) || name.ends_with(PREVIOUS_SUFFIX))
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_graphic())
}

impl SopsSink {
    /// Returns a sink writing to `dir`; `identities` (possibly none) are
    /// used only to read secrets back.
    pub fn new(
        dir: PathBuf,
        recipients: Vec<age::x25519::Recipient>,
        format: SopsFormat,
        identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    ) -> Self {
        SopsSink {
            dir,
            recipients,
            format,
            identities,
            key_file: None,
            layout: SopsLayout::default(),
            predecessors: Default::default(),
            vars: None,
            git: std::sync::OnceLock::new(),
            #[cfg(test)]
            before_rename: None,
            clock: SharedClock::default(),
        }
    }

    /// Returns the sink with another layout of its files.
    pub fn with_layout(mut self, layout: SopsLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Returns the name of the file a token of `address` is written to,
    /// with `id` 0 standing for an id not known yet (per-token layout).
    fn file_for(&self, address: &Address, id: u64) -> String {
        match self.layout {
            SopsLayout::PerAddress => home_name(address),
            SopsLayout::PerToken => file_name(address, id),
        }
    }

    /// Returns the sink with `clock` telling the time its files record.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    fn fail(&self, detail: String, hint: Option<&str>) -> SinkError {
        SinkError {
            sink: SecretSink::describe(self),
            detail,
            hint: hint.map(str::to_string),
        }
    }

    /// Checks, before the first create, that the files would be committed
    /// with the manifest: the folder, symbolic links followed, lies in the
    /// manifest's repository (or under its folder, outside git), and git
    /// does not ignore files in it.
    pub fn check_committable(
        &self,
        base_dir: &Path,
        vars: &crate::vars::Vars,
        creates: &[Address],
    ) -> Result<(), SinkError> {
        let hint = Some(
            "set `secrets.sops.dir` to a folder of the manifest's repository that git does not ignore",
        );
        let git = |args: &[&str]| {
            let mut command = super::git(base_dir, vars);
            command.args(args);
            super::run_git(command, None, super::GIT_TIMEOUT)
                .ok()
                .filter(|out| out.status.success())
        };
        let toplevel = git(&["rev-parse", "--show-toplevel"])
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        let root = match &toplevel {
            Some(root) => root.clone(),
            None => base_dir.to_path_buf(),
        };
        let root = fs::canonicalize(&root).unwrap_or(root);
        let real = real_path(&self.dir);
        if !real.starts_with(&root) {
            return Err(self.fail(
                format!(
                    "the folder is {} once symbolic links are followed, outside {}; the SOPS files are meant to be committed with the manifest",
                    real.display(),
                    root.display()
                ),
                hint,
            ));
        }
        if toplevel.is_some() {
            // The folder's files in general, and each file this apply
            // writes: a rule may match names (`*-prod-*.sops.yaml`).
            let mut probes = vec![real.join(format!("probe{FILE_SUFFIX}"))];
            probes.extend(creates.iter().map(|a| real.join(self.file_for(a, 0))));
            let mut input = String::new();
            for probe in &probes {
                input.push_str(&probe.to_string_lossy());
                input.push('\n');
            }
            let mut check = super::git(&root, vars);
            check.args(["check-ignore", "--stdin"]);
            let ignored = super::run_git(check, Some(input.into_bytes()), super::GIT_TIMEOUT);
            if let Ok(out) = ignored
                && out.status.success()
            {
                let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                let probe = probes[0].to_string_lossy().into_owned();
                let detail = match listed.lines().find(|line| *line != probe) {
                    Some(file) if !listed.lines().any(|line| line == probe) => format!(
                        "git ignores {}, which this apply would write, so it would never be committed",
                        Path::new(file)
                            .file_name()
                            .map_or(file.into(), |n| n.to_string_lossy())
                    ),
                    _ => "git ignores the files in this folder, so they would never be committed"
                        .to_string(),
                };
                return Err(self.fail(
                    detail,
                    Some("remove the rule that ignores it (`git check-ignore -v FOLDER/x.sops.yaml` names it), or set `secrets.sops.dir` to another folder"),
                ));
            }
        }
        Ok(())
    }

    /// Checks, before the first create, that the folder can be made and
    /// written to.
    pub fn check_writable(&self) -> Result<(), SinkError> {
        let hint = Some("check the folder's permissions, or change `secrets.sops.dir`");
        fs::create_dir_all(&self.dir)
            .map_err(|e| self.fail(format!("cannot create the folder: {e}"), hint))?;
        tempfile::Builder::new()
            .prefix(".tokenctl-")
            .tempfile_in(&self.dir)
            .map(drop)
            .map_err(|e| self.fail(format!("cannot write in the folder: {e}"), hint))
    }

    /// Returns what the file at `path` holds for `address`, from its
    /// readable fields: no key is needed to tell which token a file holds.
    fn file_now(&self, path: &Path, address: &Address) -> Home {
        let unreadable = |e: io::Error| Home::Unknown(format!("a file that cannot be read ({e})"));
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Home::Absent,
            Err(e) => return unreadable(e),
            Ok(meta) if !meta.is_file() => {
                return Home::Unknown("something other than a regular file".into());
            }
            Ok(_) => {}
        }
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => return unreadable(e),
        };
        match readable(&text) {
            Err(_) => Home::Unknown("a file tokenctl did not write".into()),
            Ok(r) if r.address != address.to_string() => Home::Foreign,
            Ok(r) => Home::Holds { id: r.id, text },
        }
    }

    /// Returns what the home of `address` holds.
    fn home_now(&self, address: &Address) -> Home {
        self.file_now(&self.dir.join(home_name(address)), address)
    }

    /// Tells whether token `id` of `address` is kept beside its home.
    fn kept(&self, address: &Address, id: u64) -> bool {
        let path = self.dir.join(previous_name(address, id));
        matches!(self.file_now(&path, address), Home::Holds { id: held, .. } if held == id)
    }

    /// Returns why a create of `address` may not write its home, which
    /// holds `home`; `checked` when the pre-flight found it fine before.
    fn home_refusal(&self, address: &Address, home: &Home, checked: bool) -> SinkError {
        let path = self.dir.join(home_name(address));
        let since = match checked {
            true => " (it changed after the pre-flight check)",
            false => "",
        };
        match self.predecessors.get(address) {
            Some(predecessor) => self.fail(
                format!(
                    "the home {} holds {}{since}, not token id {predecessor}, the predecessor the state records; a successor replaces only its predecessor, so it was not overwritten",
                    path.display(),
                    home.describe()
                ),
                Some(&format!(
                    "see who changed it (`git log -p -- {}`): restore the predecessor's file, or move that file away and the successor starts the home afresh",
                    path.display()
                )),
            ),
            None => self.fail(
                format!(
                    "a file already exists at {} for {address}{since} (it holds {}); tokenctl never overwrites one",
                    path.display(),
                    home.describe()
                ),
                Some(
                    "if its token was revoked and forgotten, `git rm` the file (git history keeps it); else change `secrets.sops.dir`",
                ),
            ),
        }
    }

    /// Checks, before the first create, that each home this apply writes
    /// may be written: a first token's home is free, a successor's holds
    /// its predecessor (or nothing yet), and the predecessor can be kept
    /// beside it. Names are compared without case, as macOS and Windows
    /// file systems do.
    fn check_homes(&self, creates: &[Address]) -> Result<(), SinkError> {
        if self.layout != SopsLayout::PerAddress {
            return Ok(());
        }
        let mut names: rustc_hash::FxHashMap<String, &Address> = Default::default();
        for address in creates {
            if let Some(other) = names.insert(home_name(address).to_ascii_lowercase(), address) {
                return Err(self.fail(
                    format!(
                        "{other} and {address} would both be written to {} (file names differing only in case are one file on macOS and Windows)",
                        home_name(address)
                    ),
                    Some("rename one of the tokens, or set `layout: per-token`"),
                ));
            }
            let home = self.home_now(address);
            let predecessor = self.predecessors.get(address).copied();
            let fine = match (&home, predecessor) {
                (Home::Absent, _) => true,
                (Home::Holds { id, .. }, Some(predecessor)) => *id == predecessor,
                _ => false,
            };
            if !fine {
                return Err(self.home_refusal(address, &home, false));
            }
            // The predecessor is kept beside its home before the rename: a
            // file already at that name must be that copy.
            if let (Home::Holds { .. }, Some(predecessor)) = (&home, predecessor) {
                let path = self.dir.join(previous_name(address, predecessor));
                let kept = self.file_now(&path, address);
                let fine = match &kept {
                    Home::Absent => true,
                    Home::Holds { id, .. } => *id == predecessor,
                    Home::Foreign | Home::Unknown(_) => false,
                };
                if !fine {
                    return Err(self.fail(
                        format!(
                            "the predecessor token id {predecessor} is to be kept at {} before its home is rewritten, but that file holds {}",
                            path.display(),
                            kept.describe()
                        ),
                        Some("move that file away (`git log -- FILE` says where it came from); it is not the predecessor's copy"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes a token's file into its address's home: a new file when
    /// there is none; else, for a successor, in place of the predecessor
    /// it must still hold, which is first kept beside it.
    fn deliver_home(&self, token: &NewToken<'_>, text: &str) -> Result<(), SinkError> {
        let path = self.dir.join(home_name(token.address));
        let home = self.home_now(token.address);
        let predecessor = self.predecessors.get(token.address).copied();
        let held = match (home, predecessor) {
            (Home::Absent, _) => None,
            (Home::Holds { id, text }, Some(predecessor)) if id == predecessor => {
                Some((predecessor, text))
            }
            (other, _) => return Err(self.home_refusal(token.address, &other, true)),
        };
        let Some((predecessor, held)) = held else {
            return self.write_new(&path, text).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    self.home_refusal(token.address, &self.home_now(token.address), true)
                } else {
                    self.fail(format!("cannot write {}: {e}", path.display()), None)
                }
            });
        };
        // Kept whatever git holds: a clone's history may be shallow, and
        // a commit may never reach the branch.
        self.keep_previous(token.address, predecessor, &held)?;
        crate::failpoint::hit("sops-after-keep");
        match self.replace(&path, &held, text) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.home_refusal(token.address, &self.home_now(token.address), true)),
            Err(e) => Err(self.fail(format!("cannot write {}: {e}", path.display()), None)),
        }
    }

    /// Returns where the folder lies in its git work tree, asked once;
    /// `None` outside git, without git, or when git refuses the repository.
    fn git_place(&self) -> Option<&GitPlace> {
        let vars = self.vars.as_ref()?;
        self.git
            .get_or_init(|| {
                let mut command = super::git(&self.dir, vars);
                command.args(["rev-parse", "--is-shallow-repository", "--show-prefix"]);
                let out = super::run_git(command, None, super::GIT_TIMEOUT).ok()?;
                if !out.status.success() {
                    return None;
                }
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let mut lines = text.lines();
                let shallow = lines.next()? == "true";
                let prefix = lines.next().unwrap_or_default().trim().to_string();
                Some(GitPlace { prefix, shallow })
            })
            .as_ref()
    }

    /// Returns the committed versions of the homes named `names` (`None`:
    /// every home of the folder), newest first, as (name, commit, text):
    /// one `git log` and one `git cat-file --batch` whatever their number.
    /// Empty outside git; what git cannot answer in time is left out.
    fn home_history(&self, names: Option<&[String]>) -> Vec<(String, String, String)> {
        let (Some(vars), Some(place)) = (&self.vars, self.git_place()) else {
            return Vec::new();
        };
        if names.is_some_and(<[String]>::is_empty) {
            return Vec::new();
        }
        let mut log = super::git(&self.dir, vars);
        log.args([
            "log",
            "--no-show-signature",
            "--format=%x01%H",
            "--raw",
            "--no-abbrev",
            "--no-renames",
            "--",
        ]);
        // Names as literal paths of the folder, not patterns.
        match names {
            Some(names) => log.args(names.iter().map(|n| format!(":(literal){n}"))),
            None => log.arg("."),
        };
        let wanted = |name: &str| match names {
            Some(names) => names.iter().any(|n| n == name),
            None => name.ends_with(FILE_SUFFIX),
        };
        let Ok(out) = super::run_git(log, None, super::GIT_TIMEOUT) else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let blobs = logged_blobs(&text, &place.prefix, wanted);
        if blobs.is_empty() {
            return Vec::new();
        }
        let mut input = Vec::new();
        for (_, _, blob) in &blobs {
            input.extend_from_slice(blob.as_bytes());
            input.push(b'\n');
        }
        let mut batch = super::git(&self.dir, vars);
        batch.args(["cat-file", "--batch"]);
        let Ok(out) = super::run_git(batch, Some(input), super::GIT_TIMEOUT) else {
            return Vec::new();
        };
        blobs
            .into_iter()
            .zip(batch_blobs(&out.stdout))
            .filter_map(|((name, commit, _), blob)| {
                Some((name, commit, String::from_utf8(blob?).ok()?))
            })
            .collect()
    }

    /// Says, for each (address, superseded id, current id), whether the
    /// home holds the current token and held the superseded one before it:
    /// kept beside it, or, for a home rewritten before predecessors were
    /// always kept, in git history.
    fn handovers(&self, superseded: &[(Address, u64, u64)]) -> Vec<(Address, u64, Handover)> {
        let mut said: Vec<(&Address, u64, Option<Handover>)> = Vec::new();
        for (address, old, current) in superseded {
            let handover = match self.home_now(address) {
                Home::Holds { id, .. } if id == *current => {
                    self.kept(address, *old).then_some(Handover::Moved)
                }
                Home::Holds { id, .. } => Some(Handover::Holds(id)),
                other => Some(Handover::Behind(other.describe())),
            };
            said.push((address, *old, handover));
        }
        // History only for the homes the folder left open.
        let open: rustc_hash::FxHashSet<String> = said
            .iter()
            .filter(|(_, _, handover)| handover.is_none())
            .map(|(address, _, _)| home_name(address))
            .collect();
        let mut held: rustc_hash::FxHashMap<String, Vec<Readable>> = Default::default();
        if !open.is_empty() {
            let names: Vec<String> = open.into_iter().collect();
            for (name, _, text) in self.home_history(Some(&names)) {
                if let Ok(r) = readable(&text) {
                    held.entry(name).or_default().push(r);
                }
            }
        }
        said.into_iter()
            .map(|(address, old, handover)| {
                let handover = handover.unwrap_or_else(|| {
                    let wanted = address.to_string();
                    let was_there = held.get(&home_name(address)).is_some_and(|versions| {
                        versions.iter().any(|r| r.id == old && r.address == wanted)
                    });
                    match was_there {
                        true => Handover::Moved,
                        false => Handover::Elsewhere,
                    }
                });
                (address.clone(), old, handover)
            })
            .collect()
    }

    /// Keeps a predecessor's file beside its home, before the home is
    /// rewritten. A file already there that holds the same token (a run
    /// that stopped after keeping it; a copy `sops updatekeys` left as it
    /// was) is that copy.
    fn keep_previous(&self, address: &Address, id: u64, text: &str) -> Result<(), SinkError> {
        let path = self.dir.join(previous_name(address, id));
        match self.write_new(&path, text) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.kept(address, id) => Ok(()),
            Err(e) => Err(self.fail(
                format!(
                    "cannot keep the predecessor's file at {}: {e}; its home was not rewritten",
                    path.display()
                ),
                None,
            )),
        }
    }

    /// Replaces the file at `path` with `text` if it still holds
    /// `expected`: a temp file in the same folder, fsynced, renamed over
    /// it, and the folder fsynced, so a crash leaves one or the other.
    /// Returns false, writing nothing, when the file changed.
    fn replace(&self, path: &Path, expected: &str, text: &str) -> io::Result<bool> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".tokenctl-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        #[cfg(test)]
        if let Some(hook) = &self.before_rename {
            hook();
        }
        // Checked again as late as can be: a writer since is never
        // overwritten.
        if fs::read_to_string(path).ok().as_deref() != Some(expected) {
            return Ok(false);
        }
        tmp.persist(path).map_err(|e| e.error)?;
        crate::failpoint::hit("sops-after-rename");
        fsutil::sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Removes the predecessors kept beside their homes that `state` shows
    /// a person dropped: the kept file's readable address and id are a
    /// token the state retired or forgot. A file of another state's token
    /// never matches, so a folder shared by several manifests keeps theirs.
    /// Returns the names of the files removed.
    fn drop_retired_previous(&self, state: &State) -> Result<Vec<String>, SinkError> {
        if state.former.is_empty() {
            return Ok(Vec::new());
        }
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(format!("cannot read the folder: {e}"), None)),
        };
        let dropped: rustc_hash::FxHashSet<(String, u64)> = state
            .former
            .iter()
            .map(|f| (f.address.to_string(), f.id))
            .collect();
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_sops_name(&name) || !name.ends_with(PREVIOUS_SUFFIX) {
                continue;
            }
            let path = entry.path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(r) = readable(&text) else {
                continue;
            };
            if !dropped.contains(&(r.address, r.id)) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path.display().to_string()),
                Err(e) => failed.push(format!("cannot remove {}: {e}", path.display())),
            }
        }
        if !removed.is_empty() {
            fsutil::sync_dir(&self.dir)
                .map_err(|e| self.fail(format!("cannot sync the folder: {e}"), None))?;
        }
        match failed.is_empty() {
            true => Ok(removed),
            false => Err(self.fail(failed.join("; "), None)),
        }
    }

    /// Writes `text` to `path`, never replacing a file: it is written under
    /// a temp name, fsynced, and linked into place only if the name is free.
    fn write_new(&self, path: &Path, text: &str) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tokenctl-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
        fsutil::sync_dir(&self.dir)
    }

    /// Reads the tokens of the folder: every file of the sink, or, with
    /// `only`, the files named after that address (its home, the
    /// predecessors kept beside it, its per-token files); and for homes,
    /// their committed versions. Returns the tokens found (with the
    /// readable address of their file) and what could not be read, by
    /// address. Files of other addresses need no key: they are told apart
    /// by their readable fields.
    #[allow(clippy::type_complexity)]
    fn read_all(
        &self,
        only: Option<&Address>,
    ) -> Result<(Vec<(String, FoundSecret)>, Vec<(String, String)>), SinkError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(self.fail(format!("cannot read the folder: {e}"), None)),
        };
        let named = |name: &str| match only {
            None => true,
            Some(address) => {
                name == home_name(address)
                    || (name.starts_with(&format!("{}.", home_stem(address)))
                        && name.ends_with(PREVIOUS_SUFFIX))
                    || name.starts_with(&format!("{}-{}-", address.account_id, file_part(address)))
            }
        };
        let wanted = only.map(Address::to_string);
        let mut found: Vec<(String, FoundSecret)> = Vec::new();
        let mut unread = Vec::new();
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| is_sops_name(name) && named(name))
            .collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(r) = readable(&text) else {
                continue;
            };
            if wanted.as_ref().is_some_and(|w| *w != r.address) {
                continue;
            }
            match self.decrypted(&text, &path.display().to_string()) {
                Ok(secret) => found.push((r.address, secret)),
                Err(why) => unread.push((r.address, why)),
            }
        }
        // A home's predecessors that git holds, as Vault keeps versions:
        // a refresh can verify them and `retire --verify` see them revoked.
        if self.layout == SopsLayout::PerAddress && !self.identities.is_empty() {
            let home: Option<Vec<String>> = only.map(|address| vec![home_name(address)]);
            let history = self.home_history(home.as_deref());
            for (name, commit, text) in history {
                let Ok(r) = readable(&text) else {
                    continue;
                };
                if wanted.as_ref().is_some_and(|w| *w != r.address)
                    || found.iter().any(|(a, f)| *a == r.address && f.id == r.id)
                {
                    continue;
                }
                let place = format!(
                    "{} as of commit {}",
                    self.dir.join(&name).display(),
                    &commit[..12]
                );
                if let Ok(secret) = self.decrypted(&text, &place) {
                    found.push((r.address, secret));
                }
            }
        }
        found.sort_by(|(a, x), (b, y)| (a, x.created_at, x.id).cmp(&(b, y.created_at, y.id)));
        unread.sort();
        Ok((found, unread))
    }

    /// Decrypts a file's token, found at `place`; or says why it cannot.
    fn decrypted(&self, text: &str, place: &str) -> Result<FoundSecret, String> {
        if self.identities.is_empty() {
            return Err(format!(
                "{place} holds a secret, but no age identity is available to decrypt it (set SOPS_AGE_KEY_FILE to a file holding the age identity (AGE-SECRET-KEY-1…), or SOPS_AGE_KEY to the identity)"
            ));
        }
        match decrypt(text, &self.identities) {
            Ok(decrypted) => Ok(FoundSecret {
                id: decrypted.id,
                created_at: decrypted.created_at,
                token: decrypted.token,
                place: place.to_string(),
            }),
            Err(e) => {
                let hint = match e {
                    SopsError::NoIdentity => {
                        " (set SOPS_AGE_KEY_FILE (or SOPS_AGE_KEY) to the identity of one of the file's `sops.age` recipients)"
                    }
                    SopsError::Mac => {
                        " (restore the file as it was committed (`git log -p -- FILE`); an edited file cannot be trusted)"
                    }
                    SopsError::Format(_) | SopsError::Crypto(_) => "",
                };
                Err(format!("{place}: {e}{hint}"))
            }
        }
    }
}

impl SecretSink for SopsSink {
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError> {
        let now = self.clock.epoch_seconds();
        let text = encrypt(token, self.format, self.layout, &self.recipients, now)
            .map_err(|e| self.fail(e.to_string(), None))?;
        if self.layout == SopsLayout::PerAddress {
            return self.deliver_home(token, &text);
        }
        let path = self.dir.join(file_name(token.address, token.id));
        self.write_new(&path, &text)
            .map_err(|e| self.fail(format!("cannot write {}: {e}", path.display()), None))
    }

    fn describe(&self) -> String {
        format!("sops {}", self.dir.display())
    }
}

impl SecretLookup for SopsSink {
    /// Fails only when no file of the address could be read: then it
    /// names them all.
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError> {
        let (found, unread) = self.lookup_noting(address)?;
        if found.is_empty() && !unread.is_empty() {
            return Err(self.fail(unread.join("; "), None));
        }
        Ok(found)
    }

    /// Tries every file of the address: an older one encrypted to a key
    /// that was retired since must not hide the one that can be read.
    fn lookup_noting(
        &self,
        address: &Address,
    ) -> Result<(Vec<FoundSecret>, Vec<String>), SinkError> {
        let (found, unread) = self.read_all(Some(address))?;
        let mut found: Vec<FoundSecret> = found.into_iter().map(|(_, f)| f).collect();
        found.sort_by_key(|f| (f.created_at, f.id));
        Ok((found, unread.into_iter().map(|(_, why)| why).collect()))
    }

    fn lookup_all(&self) -> Option<Result<Vec<(Address, FoundSecret)>, SinkError>> {
        self.lookup_all_noting()
            .map(|all| all.map(|(found, _)| found))
    }

    /// Reads the folder once and walks git history once, whatever the
    /// number of addresses.
    #[allow(clippy::type_complexity)]
    fn lookup_all_noting(
        &self,
    ) -> Option<Result<(Vec<(Address, FoundSecret)>, Vec<(Address, String)>), SinkError>> {
        let parse = |address: String| address.parse::<Address>().ok();
        Some(self.read_all(None).map(|(found, unread)| {
            (
                found
                    .into_iter()
                    .filter_map(|(a, f)| Some((parse(a)?, f)))
                    .collect(),
                unread
                    .into_iter()
                    .filter_map(|(a, why)| Some((parse(a)?, why)))
                    .collect(),
            )
        }))
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(path) = &self.key_file {
            let what = format!("the age key file {}", path.display());
            warnings.extend(crate::sink::shared_file_warning(path, &what));
        }
        if self.layout == SopsLayout::PerAddress && self.git_place().is_some_and(|g| g.shallow) {
            warnings.push(format!(
                "{} lies in a shallow git clone: predecessors that only git history keeps (not beside their homes) cannot be read back and show as unverifiable; fetch the whole history first (`git fetch --unshallow`, or `fetch-depth: 0` in actions/checkout, `GIT_DEPTH: 0` in GitLab CI)",
                self.dir.display()
            ));
        }
        warnings
    }

    fn describe(&self) -> String {
        SecretSink::describe(self)
    }
}

#[cfg(test)]
mod tests;
