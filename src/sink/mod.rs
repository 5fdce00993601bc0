//! Secret sinks: the only places a token value is ever written.
//!
//! One file per kind of sink: `file` (JSON Lines), `exec` (a command),
//! `sops` (encrypted files to commit), `vault` (KV v2). Each file holds the
//! sink's manifest settings (its spec), how it opens, and the sink itself;
//! [`SinkSpec`] lists the kinds. `worker` runs the sinks on a thread of
//! their own during an apply; `rescue` keeps a secret that a sink refused.

mod exec;
mod file;
mod rescue;
pub mod sops;
pub mod vault;
mod worker;

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, Visitor};
use zeroize::Zeroizing;

use crate::model::address::Address;
pub use crate::model::lifecycle::{Handover, HomeHolds};
use crate::model::state::State;
use crate::secret::Secret;

pub use exec::{ExecLookup, ExecSink, ExecSpec};
pub use file::{FileLookup, FileSink, FileSpec};
pub use rescue::{Rescue, RescueLookup, Rescued};
pub use sops::SopsSpec;
pub use vault::VaultSpec;
pub use worker::{Delivery, SinkWorker, deliver_all, rescue_all_in_flight};

/// A token just created, with its secret, on its way to the sinks.
pub struct NewToken<'a> {
    pub address: &'a Address,
    pub id: u64,
    pub created_at: i64,
    pub token: &'a Secret,
}

impl NewToken<'_> {
    /// Returns the JSON object a sink receives, on one line, in memory that
    /// is wiped when dropped.
    fn to_json_line(&self) -> Zeroizing<Vec<u8>> {
        // Keys in the order a JSON map sorts them, as the files always had.
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(rename = "accountId")]
            account_id: u64,
            address: String,
            #[serde(rename = "createdAt")]
            created_at: i64,
            id: u64,
            name: &'a str,
            token: &'a str,
        }
        let line = Line {
            account_id: self.address.account_id,
            address: self.address.to_string(),
            created_at: self.created_at,
            id: self.id,
            name: &self.address.name,
            token: self.token.expose(),
        };
        // Room for the worst escaping (six bytes a character), so that the
        // buffer never grows and leaves a copy of the token behind.
        let room = 6 * (line.token.len() + line.name.len() + line.address.len()) + 128;
        let mut bytes = Zeroizing::new(Vec::with_capacity(room));
        // Writing to memory fails only for a map with non-string keys.
        let _ = serde_json::to_writer(&mut *bytes, &line);
        bytes.push(b'\n');
        bytes
    }
}

/// Why a sink could not take a secret, or could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("secret sink {sink}: {detail}")]
pub struct SinkError {
    pub sink: String,
    pub detail: String,
    pub hint: Option<String>,
}

impl crate::error::Hint for SinkError {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

/// Receives new secrets.
pub trait SecretSink: Send {
    /// Hands over one new token; returns once it is durable.
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError>;

    /// Names the sink for messages.
    fn describe(&self) -> String;
}

/// A secret read back from a sink.
pub struct FoundSecret {
    pub id: u64,
    pub created_at: Option<i64>,
    pub token: Secret,
    /// Where it was found, for messages (a file or a path; never the value).
    pub place: String,
}

/// Reads back what a sink holds, without needing to write to it: `resolve`
/// uses every sink that can.
pub trait SecretLookup {
    /// Returns the secrets held for `address`, oldest first.
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError>;

    /// Returns the secrets held for `address`, oldest first, and what
    /// could not be read (a file encrypted to a retired key, say), which
    /// does not stop the search of the rest.
    fn lookup_noting(
        &self,
        address: &Address,
    ) -> Result<(Vec<FoundSecret>, Vec<String>), SinkError> {
        self.lookup(address).map(|found| (found, Vec::new()))
    }

    /// Returns the secret of token `id` of `address`, for a sink that
    /// reads by id (an exec `lookup` command) rather than by address;
    /// `None` for the others.
    fn lookup_id(
        &self,
        address: &Address,
        id: u64,
    ) -> Option<Result<Option<FoundSecret>, SinkError>> {
        let _ = (address, id);
        None
    }

    /// Tells whether the sink reads by id ([`SecretLookup::lookup_id`]).
    fn reads_by_id(&self) -> bool {
        false
    }

    /// Returns what a person should know about the secrets' files, such
    /// as one that others can read.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Returns every secret held, oldest first, when the sink can list them
    /// in one go more cheaply than address by address (a refresh reads all).
    fn lookup_all(&self) -> Option<Result<Vec<(Address, FoundSecret)>, SinkError>> {
        None
    }

    /// Returns every secret held, as [`SecretLookup::lookup_all`], and
    /// what could not be read, by address (a file encrypted to a retired
    /// key), which does not stop the rest.
    #[allow(clippy::type_complexity)]
    fn lookup_all_noting(
        &self,
    ) -> Option<Result<(Vec<(Address, FoundSecret)>, Vec<(Address, String)>), SinkError>> {
        self.lookup_all()
            .map(|all| all.map(|found| (found, Vec::new())))
    }

    /// Names the sink for messages.
    fn describe(&self) -> String;
}

/// Returns `git -C dir`, run with the environment a child may have (no
/// credential tokenctl reads) and with the repository's fsmonitor and
/// hooks off: a repository's own configuration is not trusted to run
/// programs that would see tokenctl's environment. A partial clone does not
/// fetch missing objects on demand, and nothing prompts: run it with
/// [`run_git`], which bounds its time.
pub(crate) fn git(dir: &Path, vars: &crate::vars::Vars) -> std::process::Command {
    let mut command = std::process::Command::new("git");
    command
        .env_clear()
        .envs(vars.for_child(&[]))
        .env("GIT_NO_LAZY_FETCH", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .arg("-C")
        .arg(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        });
    command
}

/// How long one git command may take before it is killed: long enough to
/// walk a large history, short enough that a hung git (a lock, a network
/// filesystem) does not hang the command.
pub(crate) const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a git command with `input` on its stdin, its output captured, for
/// at most `timeout`; kills it then (an error of kind `TimedOut`).
pub(crate) fn run_git(
    mut command: std::process::Command,
    input: Option<Vec<u8>>,
    timeout: std::time::Duration,
) -> io::Result<std::process::Output> {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Each stream on a thread of its own, so that a full pipe never blocks
    // the child while it is waited for.
    let writing = child.stdin.take().zip(input).map(|(mut stdin, input)| {
        std::thread::spawn(move || {
            use std::io::Write as _;
            // A child that exits without reading all of it is no error here.
            let _ = stdin.write_all(&input);
        })
    });
    let reader = |stream: Option<Box<dyn io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    );
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait()? {
            Some(status) => break status,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "git did not finish within {}",
                        humantime::format_duration(timeout)
                    ),
                ));
            }
        }
    };
    if let Some(writing) = writing {
        let _ = writing.join();
    }
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Where a sink's settings are read: what opening one may need.
pub struct SinkContext<'a> {
    /// The folder relative paths in a spec start from: the manifest's.
    pub base_dir: &'a Path,
    /// The user's home folder, where tools keep their default key files.
    pub home: Option<&'a Path>,
    /// The environment, read once: sinks read their variables here, and
    /// a command they run gets its environment from it.
    pub vars: &'a crate::vars::Vars,
}

/// The apply a sink is opened for.
pub struct ForApply<'a> {
    /// The private folder for rescue files (and a failed command's output).
    pub rescue_dir: &'a Path,
    /// The tokens the apply will create, for checks that need their names.
    pub creates: &'a [Address],
    /// For a create that succeeds a token (a rotation, or a re-creation
    /// after a confirmed revocation): the predecessor's id, which a sink's
    /// home for the address must still hold before it is replaced.
    pub predecessors: &'a rustc_hash::FxHashMap<Address, u64>,
    /// Tells the time, for sinks that record when they wrote.
    pub clock: &'a crate::time::SharedClock,
}

/// One kind of sink, as the manifest configures it: its spec type
/// implements this, and [`SinkSpec`] lists it.
pub trait SinkKind {
    /// Opens the sink for an apply, after the checks that can refuse
    /// before any token exists.
    fn open(
        &self,
        ctx: &SinkContext<'_>,
        apply: &ForApply<'_>,
    ) -> Result<Box<dyn SecretSink>, SinkError>;

    /// Names the address's home in this sink, when it has one: the fixed
    /// place its consumers read, which a successor replaces in place.
    /// `None` for sinks that keep a place per token (or none).
    fn home(&self, address: &Address) -> Option<String> {
        let _ = address;
        None
    }

    /// Reads what the homes of some successors hold now, for the plan:
    /// each address with the predecessor the state records. A sink whose
    /// homes are on a server reads them only with `remote`; what cannot be
    /// read is left out (the apply's pre-flight says why).
    fn read_homes(
        &self,
        ctx: &SinkContext<'_>,
        successions: &[(Address, u64)],
        remote: bool,
    ) -> Vec<(Address, HomeHolds)> {
        let _ = (ctx, successions, remote);
        Vec::new()
    }

    /// Reads, for superseded tokens, whether their consumers already read
    /// the address's current token at its home: each (address, superseded
    /// id, current id). A sink whose homes are on a server reads them only
    /// with `remote`; what cannot be read is left out, and the plan then
    /// claims nothing.
    fn read_handovers(
        &self,
        ctx: &SinkContext<'_>,
        superseded: &[(Address, u64, u64)],
        remote: bool,
    ) -> Vec<(Address, u64, Handover)> {
        let _ = (ctx, superseded, remote);
        Vec::new()
    }

    /// Removes, after an apply that went through, what the sink kept of
    /// tokens that `state` shows a person dropped (retired or forgotten):
    /// only copies of this state's own addresses, never on a guess.
    /// Returns what it removed, for a note.
    fn tidy(&self, ctx: &SinkContext<'_>, state: &State) -> Result<Vec<String>, SinkError> {
        let _ = (ctx, state);
        Ok(Vec::new())
    }

    /// Opens a reader of the secrets the sink holds, for sinks that can
    /// read back (`resolve`, `--refresh`); `None` for those that cannot.
    fn reader(&self, ctx: &SinkContext<'_>) -> Option<Result<Box<dyn SecretLookup>, SinkError>> {
        let _ = ctx;
        None
    }
}

/// Declares [`SinkSpec`]: one variant per kind of sink, named by its key
/// under the manifest's `secrets`.
macro_rules! sink_specs {
    ($($(#[$doc:meta])* $variant:ident($key:literal, $spec:ty),)*) => {
        /// One entry of the manifest's `secrets`: a kind of sink and its
        /// settings.
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
        pub enum SinkSpec {
            $($(#[$doc])* #[serde(rename = $key)] $variant($spec),)*
        }

        impl SinkSpec {
            /// The keys of the manifest's `secrets`, one per kind.
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            /// Returns the kind, to open it.
            pub fn kind(&self) -> &dyn SinkKind {
                match self {
                    $(SinkSpec::$variant(spec) => spec,)*
                }
            }

            /// Returns the key the manifest names this kind with.
            pub fn key(&self) -> &'static str {
                match self {
                    $(SinkSpec::$variant(_) => $key,)*
                }
            }
        }
    };
}

sink_specs! {
    /// A JSON Lines file, relative to the manifest's folder; mode 0600; must be git-ignored.
    File("file", FileSpec),
    /// A command run once per new token, with its JSON object on stdin: a list, or a map with command, pass_env and timeout.
    Exec("exec", ExecSpec),
    /// SOPS files, only the token encrypted, to age recipients: one per address, rewritten by each successor (or one per token); meant to be committed.
    Sops("sops", SopsSpec),
    /// KV version 2 on Vault or OpenBao; address and token from VAULT_ADDR and VAULT_TOKEN (or VAULT_TOKEN_FILE).
    Vault("vault", VaultSpec),
}

/// The manifest's `secrets`: a map with at most one entry per kind of
/// sink, kept in the manifest's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<SinkSpec>);

impl Secrets {
    /// Returns the spec of the given kind, if configured.
    pub fn get(&self, key: &str) -> Option<&SinkSpec> {
        self.0.iter().find(|spec| spec.key() == key)
    }
}

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretsVisitor;
        impl<'de> Visitor<'de> for SecretsVisitor {
            type Value = Secrets;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a map of secret sinks ({})", SinkSpec::KEYS.join(", "))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secrets, A::Error> {
                let mut specs: Vec<SinkSpec> = Vec::new();
                let mut seen: Vec<&'static str> = Vec::new();
                while let Some(key) = map.next_key_seed(KeySeed { seen: &seen })? {
                    seen.push(key);
                    // A key with no value (`file:`, `vault: ~`) configures
                    // nothing, as an absent key does.
                    if let Some(spec) = map.next_value_seed(EntrySeed { key })? {
                        specs.push(spec);
                    }
                }
                Ok(Secrets(specs))
            }
        }
        d.deserialize_map(SecretsVisitor)
    }
}

/// Reads a key of `secrets`, refusing unknown and repeated ones while the
/// key is read, so that the error points at it.
struct KeySeed<'s> {
    seen: &'s [&'static str],
}

impl<'de> de::DeserializeSeed<'de> for KeySeed<'_> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the name of a kind of secret sink")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<&'static str, E> {
        let Some(known) = SinkSpec::KEYS.iter().find(|k| **k == key) else {
            return Err(E::unknown_field(key, SinkSpec::KEYS));
        };
        if self.seen.contains(known) {
            return Err(E::duplicate_field(known));
        }
        Ok(known)
    }
}

/// Reads the value of the `secrets` entry `key`: nothing when it is null,
/// else the spec of that kind, read as the enum variant the key names.
struct EntrySeed {
    key: &'static str,
}

impl<'de> de::DeserializeSeed<'de> for EntrySeed {
    type Value = Option<SinkSpec>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<SinkSpec>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    type Value = Option<SinkSpec>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "the settings of the `{}` sink", self.key)
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<SinkSpec>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<SinkSpec>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<SinkSpec>, D::Error> {
        SinkSpec::deserialize(Entry {
            key: self.key,
            value: d,
        })
        .map(Some)
    }
}

/// One entry of `secrets`, its key and its value, read as an externally
/// tagged enum.
struct Entry<D> {
    key: &'static str,
    value: D,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Entry<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> de::EnumAccess<'de> for Entry<D> {
    type Error = D::Error;
    type Variant = Settings<D>;

    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Settings<D>), D::Error> {
        let key: de::value::StrDeserializer<'_, D::Error> = self.key.into_deserializer();
        let variant = seed.deserialize(key)?;
        Ok((variant, Settings(self.value)))
    }
}

impl<'de, D: Deserializer<'de>> de::VariantAccess<'de> for Settings<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        de::Deserialize::deserialize(self.0)
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("a sink's settings are a value or a map"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("a sink's settings are a value or a map"))
    }
}

/// A sink's settings, read as the value of its enum variant.
struct Settings<D>(D);

impl JsonSchema for Secrets {
    fn schema_name() -> Cow<'static, str> {
        "Secrets".into()
    }

    /// An object with one optional property per kind of sink, each taken
    /// from [`SinkSpec`]'s variants (which alone would allow one key).
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let variants = generator.subschema_for::<SinkSpec>();
        let mut properties = serde_json::Map::new();
        let one_of = variants
            .get("oneOf")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for variant in one_of {
            if let Some(props) = variant.get("properties").and_then(|p| p.as_object()) {
                for (key, value) in props {
                    let mut value = value.clone();
                    if let (Some(obj), Some(doc)) =
                        (value.as_object_mut(), variant.get("description"))
                    {
                        obj.insert("description".into(), doc.clone());
                    }
                    properties.insert(key.clone(), value);
                }
            }
        }
        json_schema!({
            "description": "Where new token values go.",
            "type": "object",
            "additionalProperties": false,
            "properties": properties,
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Returns a warning when the file at `path`, which holds secrets or a
/// key to them, can be read by other users.
pub(crate) fn shared_file_warning(path: &Path, what: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "{what} can be read by other users (mode {:o}); run `chmod 600` on it",
                mode & 0o777
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, what);
        None
    }
}

/// Creates a folder, and the ones above it, readable by the user alone.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod manifest_tests;
#[cfg(test)]
mod tests;
