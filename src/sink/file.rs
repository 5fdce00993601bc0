//! The file sink: one JSON object per token appended to a 0600 file that
//! git would not commit, and its reader.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    ForApply, FoundSecret, NewToken, SecretLookup, SecretSink, SinkContext, SinkError, SinkKind,
    create_private_dir,
};
use crate::fsutil;
use crate::model::address::Address;
use crate::secret::Secret;

/// `secrets.file`: the path of the secrets file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct FileSpec {
    #[serde(deserialize_with = "file_path")]
    #[schemars(length(min = 1))]
    pub path: PathBuf,
}

fn file_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    crate::model::manifest::checked_string(d, "a file (a string)", |text| {
        if text.trim().is_empty() {
            return Err("must name a file".into());
        }
        Ok(PathBuf::from(text))
    })
}

impl FileSpec {
    /// Returns the file's path, relative ones taken from `base_dir`.
    fn path_in(&self, ctx: &SinkContext<'_>) -> PathBuf {
        ctx.base_dir.join(&self.path)
    }
}

impl SinkKind for FileSpec {
    fn open(
        &self,
        ctx: &SinkContext<'_>,
        _apply: &ForApply<'_>,
    ) -> Result<Box<dyn SecretSink>, SinkError> {
        Ok(Box::new(FileSink::open(&self.path_in(ctx), ctx.vars)?))
    }

    fn reader(&self, ctx: &SinkContext<'_>) -> Option<Result<Box<dyn SecretLookup>, SinkError>> {
        Some(Ok(Box::new(FileLookup::new(self.path_in(ctx)))))
    }
}

/// Appends one JSON object per token to a file of mode 0600, fsynced per
/// token, so each token costs the same however large the file is.
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    /// Opens (creating if needed) the sink file, after checking that it is
    /// private and would not be committed to git.
    pub fn open(path: &Path, vars: &crate::vars::Vars) -> Result<Self, SinkError> {
        let fail = |detail: String, hint: Option<String>| SinkError {
            sink: path.display().to_string(),
            detail,
            hint,
        };
        // Through a link, secrets would land wherever it points, perhaps in
        // a file git tracks, while every check looked at the link.
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(fail(
                "the secrets file is a symbolic link; tokenctl writes secrets only to a real file"
                    .into(),
                Some(format!(
                    "point secrets.file (or --secrets-out) at the file itself, not at the link {}",
                    path.display()
                )),
            ));
        }
        let dir = fsutil::parent_dir(path);
        create_private_dir(dir)
            .map_err(|e| fail(format!("cannot create folder {}: {e}", dir.display()), None))?;
        check_git_ignored(path, vars).map_err(|(detail, hint)| fail(detail, Some(hint)))?;
        let file = open_private_append(path).map_err(|e| {
            fail(
                format!("cannot open for writing: {e}"),
                Some(
                    "check the folder's permissions, or choose another file with --secrets-out"
                        .into(),
                ),
            )
        })?;
        check_private(&file).map_err(|detail| {
            fail(
                detail,
                Some(format!(
                    "run `chmod 600 {}` and check who could read it",
                    path.display()
                )),
            )
        })?;
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
        })
    }
}

impl SecretSink for FileSink {
    fn deliver(&mut self, token: &NewToken<'_>) -> Result<(), SinkError> {
        crate::failpoint::panic_at("file-sink-panic", || {
            format!("a bug while holding {}", token.token.expose())
        });
        let line = token.to_json_line();
        let fail = |detail: String| SinkError {
            sink: self.path.display().to_string(),
            detail,
            hint: None,
        };
        let whole = self
            .file
            .metadata()
            .map_err(|e| fail(format!("cannot read the file's size: {e}")))?
            .len();
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // A full disk can take part of the line: cut it off, so the
            // next record does not glue onto it and every line parses.
            let detail = match self
                .file
                .set_len(whole)
                .and_then(|()| self.file.sync_data())
            {
                Ok(()) => {
                    format!("write failed: {err}; the file was cut back to its last whole record")
                }
                Err(cut) => format!(
                    "write failed: {err}, and cutting the partial record off failed too: {cut}"
                ),
            };
            return Err(fail(detail));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Reads a JSON Lines secrets file back, in the format [`FileSink`] writes.
pub struct FileLookup {
    path: PathBuf,
}

impl FileLookup {
    /// Returns a reader of the secrets file at `path`; a missing file holds
    /// nothing.
    pub fn new(path: PathBuf) -> Self {
        FileLookup { path }
    }
}

impl FileLookup {
    /// Reads every record. Lines are in delivery order, so a later line
    /// supersedes an earlier one; a torn last line (a crash mid-write) is
    /// skipped.
    fn records(&self) -> Result<Vec<(Address, FoundSecret)>, SinkError> {
        // Every token of the file is in these bytes: wiped when dropped.
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(SinkError {
                    sink: self.describe(),
                    detail: format!("cannot read: {e}"),
                    hint: None,
                });
            }
        };
        #[derive(serde::Deserialize)]
        struct Line {
            address: Address,
            id: u64,
            #[serde(rename = "createdAt")]
            created_at: Option<i64>,
            token: String,
        }
        let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<Line>(line).ok())
            .map(|line| {
                let found = FoundSecret {
                    id: line.id,
                    created_at: line.created_at,
                    token: Secret::new(line.token),
                    place: self.describe(),
                };
                (line.address, found)
            })
            .collect())
    }
}

impl SecretLookup for FileLookup {
    fn lookup(&self, address: &Address) -> Result<Vec<FoundSecret>, SinkError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|(a, _)| a == address)
            .map(|(_, found)| found)
            .collect())
    }

    fn lookup_all(&self) -> Option<Result<Vec<(Address, FoundSecret)>, SinkError>> {
        Some(self.records())
    }

    fn warnings(&self) -> Vec<String> {
        let what = format!("the secrets file {}", self.path.display());
        super::shared_file_warning(&self.path, &what)
            .into_iter()
            .collect()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn open_private_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(unix)]
fn check_private(file: &File) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the file is readable or writable by others (mode {:o}); secrets need mode 600",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &File) -> Result<(), String> {
    Ok(())
}

/// Refuses a path inside a git work tree that git would not ignore.
/// Without git on the machine there is nothing to commit it, so it passes.
fn check_git_ignored(path: &Path, vars: &crate::vars::Vars) -> Result<(), (String, String)> {
    let dir = fsutil::parent_dir(path);
    let git = |args: &[&str]| {
        let mut command = super::git(dir, vars);
        command.args(args);
        super::run_git(command, None, super::GIT_TIMEOUT)
    };
    let Ok(toplevel) = git(&["rev-parse", "--show-toplevel"]) else {
        return Ok(());
    };
    if !toplevel.status.success() {
        return Ok(());
    }
    let Some(file_name) = path.file_name() else {
        return Ok(());
    };
    let mut check = super::git(dir, vars);
    check.args(["check-ignore", "-q", "--"]).arg(file_name);
    let ignored = super::run_git(check, None, super::GIT_TIMEOUT).map(|out| out.status);
    match ignored {
        Ok(status) if status.success() => Ok(()),
        Ok(status) if status.code() == Some(1) => {
            let root = PathBuf::from(String::from_utf8_lossy(&toplevel.stdout).trim());
            let absolute = fs::canonicalize(dir)
                .map(|d| d.join(file_name))
                .unwrap_or_else(|_| path.to_path_buf());
            let relative = absolute.strip_prefix(&root).unwrap_or(&absolute);
            Err((
                "the file is inside a git work tree and git does not ignore it, so the secrets could be committed".into(),
                format!(
                    "add this line to {}: /{}",
                    root.join(".gitignore").display(),
                    relative.display()
                ),
            ))
        }
        _ => Ok(()),
    }
}
