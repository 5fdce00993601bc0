//! Rescue files: a secret no sink would take, kept where only the user can
//! read it.

use std::io;
use std::path::{Path, PathBuf};

use super::{NewToken, create_private_dir};
use crate::fsutil;

/// How much of a token's name goes into its rescue file's name.
const RESCUE_NAME_CHARS: usize = 48;

/// Where a secret that a sink refused ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescued {
    /// In this rescue file, readable by the user alone.
    Saved(PathBuf),
    /// Nowhere: the rescue file could not be written either.
    Lost,
}

impl Rescued {
    /// Returns the rescue file, if the secret is in one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Rescued::Saved(path) => Some(path),
            Rescued::Lost => None,
        }
    }
}

/// Keeps secrets that no sink would take, so they are not lost.
#[derive(Debug, Clone)]
pub struct Rescue {
    dir: PathBuf,
}

impl Rescue {
    /// Returns a rescue folder at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Rescue { dir }
    }

    /// Returns the per-user default: `$XDG_STATE_HOME/tokenctl/rescue`, else
    /// `$HOME/.local/state/tokenctl/rescue`; `None` when neither variable
    /// is set, as a shared folder such as /tmp is no place for secrets.
    pub fn default_dir(xdg_state_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
        let base = match (xdg_state_home, home) {
            (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg),
            (_, Some(home)) if !home.is_empty() => Path::new(home).join(".local/state"),
            _ => return None,
        };
        Some(base.join("tokenctl").join("rescue"))
    }

    /// Returns the folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure a rescue file can be written, before any token exists
    /// that might need one: creates the folder (mode 0700) and writes and
    /// removes a probe file. An existing folder must belong to the user;
    /// one that others can enter is made private (or refused when the user
    /// does not own it).
    pub fn prepare(&self) -> io::Result<()> {
        create_private_dir(&self.dir)?;
        let probe = tempfile::Builder::new()
            .prefix(".probe-")
            .tempfile_in(&self.dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let folder = std::fs::metadata(&self.dir)?;
            // The probe was made by this process: its owner is the user.
            let user = probe.as_file().metadata()?.uid();
            if folder.uid() != user {
                return Err(io::Error::other(format!(
                    "the folder belongs to another user (uid {}), so others could read the secrets kept there",
                    folder.uid()
                )));
            }
            if folder.mode() & 0o077 != 0 {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        probe.close()
    }

    /// Saves a secret no sink took, and says where it ended up.
    pub fn keep(&self, token: &NewToken<'_>) -> Rescued {
        match self.save(token) {
            Ok(path) => Rescued::Saved(path),
            Err(_) => Rescued::Lost,
        }
    }

    /// Writes the token to its own 0600 file and returns the file's path.
    pub fn save(&self, token: &NewToken<'_>) -> io::Result<PathBuf> {
        create_private_dir(&self.dir)?;
        // Bounded whatever the name's length: the id and time make the file
        // name unique, the name's start only helps a person find it.
        let safe_name: String = token
            .address
            .name
            .chars()
            .take(RESCUE_NAME_CHARS)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.join(format!(
            "{}-{}-{}-{}.json",
            token.created_at, token.address.account_id, safe_name, token.id
        ));
        fsutil::write_atomic(&path, &token.to_json_line(), 0o600)?;
        Ok(path)
    }
}

/// Reads back the secrets kept in rescue files, so that a create whose
/// secret only a rescue file holds (no sink took it, or the run was
/// interrupted first) is settled from there, never abandoned.
pub struct RescueLookup {
    dir: PathBuf,
}

impl RescueLookup {
    /// Returns a reader of the rescue files in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        RescueLookup { dir }
    }
}

impl super::SecretLookup for RescueLookup {
    fn lookup(
        &self,
        address: &crate::model::address::Address,
    ) -> Result<Vec<super::FoundSecret>, super::SinkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(super::SinkError {
                    sink: self.describe(),
                    detail: format!("cannot read the folder: {e}"),
                    hint: None,
                });
            }
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                found.extend(super::FileLookup::new(path).lookup(address)?);
            }
        }
        found.sort_by_key(|f| (f.created_at, f.id));
        Ok(found)
    }

    fn describe(&self) -> String {
        format!("rescue files in {}", self.dir.display())
    }
}
