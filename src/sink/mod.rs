//! Secret sinks: the only places a token value is ever written.
//!
//! One file per kind of sink: `file` (JSON Lines), `exec` (a command),
//! `sops` (encrypted files to commit), `vault` (KV v2). `worker` runs the
//! sinks on a thread of their own during an apply; `rescue` keeps a secret
//! that a sink refused.

mod exec;
mod file;
mod rescue;
pub mod sops;
pub mod vault;
mod worker;

use std::fs;
use std::io;
use std::path::Path;

use crate::address::Address;
use crate::secret::Secret;

pub use exec::{ExecSink, WITHHELD_FROM_EXEC};
pub use file::{FileLookup, FileSink};
pub use rescue::Rescue;
pub use worker::{Delivery, SinkWorker, deliver_all};

/// A token just created, with its secret, on its way to the sinks.
pub struct NewToken<'a> {
    pub address: &'a Address,
    pub id: u64,
    pub created_at: i64,
    pub token: &'a Secret,
}

impl NewToken<'_> {
    /// Returns the JSON object a sink receives, on one line.
    fn to_json_line(&self) -> String {
        let mut line = serde_json::json!({
            "address": self.address.to_string(),
            "accountId": self.address.account_id,
            "name": self.address.name,
            "id": self.id,
            "createdAt": self.created_at,
            "token": self.token.expose(),
        })
        .to_string();
        line.push('\n');
        line
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

    /// Returns every secret held, oldest first, when the sink can list them
    /// in one go more cheaply than address by address (a refresh reads all).
    fn lookup_all(&self) -> Option<Result<Vec<(Address, FoundSecret)>, SinkError>> {
        None
    }

    /// Names the sink for messages.
    fn describe(&self) -> String;
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
mod tests;
