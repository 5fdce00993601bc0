//! What a command runs with: the process environment, read once, the
//! clock, and the two output streams and the prompt, which nothing else in
//! tokenctl writes to.

use std::fs;
use std::io::{self, Write};

use crate::backend::postgres;
use crate::time::SharedClock;
use crate::vars::Vars;

/// The process environment the commands read, gathered in one place so that
/// tests can run commands with a controlled one.
// No Debug: it holds the owner token.
#[derive(Clone, Default)]
pub struct Env {
    /// Every variable, as read once; sinks read theirs here, and child
    /// processes get their environment from it.
    pub vars: Vars,
    pub api_token: Option<String>,
    pub api_url: Option<String>,
    pub no_color: bool,
    pub xdg_state_home: Option<String>,
    pub home: Option<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    /// The CI job running this command, from common CI variables.
    pub ci_job_url: Option<String>,
    /// Base delay of 429 backoff in milliseconds (`TOKENCTL_BACKOFF_MS`).
    pub backoff_ms: Option<u64>,
    /// The PostgreSQL connection string (`TOKENCTL_PG_CONN_STR`).
    pub pg_conn_str: Option<String>,
    /// The PostgreSQL password when the connection string has none
    /// (`PGPASSWORD`).
    pub pg_password: Option<String>,
    /// How long a silent lock holder keeps a PostgreSQL lock
    /// (`TOKENCTL_PG_LEASE`, a duration), as written: checked where the
    /// backend is opened, so a bad value is refused rather than ignored.
    pub pg_lease: Option<String>,
    /// `TOKENCTL_PG_LOCK_TIMEOUT` and `TOKENCTL_PG_STATEMENT_TIMEOUT`, as
    /// written.
    pub pg_lock_timeout: Option<String>,
    pub pg_statement_timeout: Option<String>,
    /// The PostgreSQL password file (`PGPASSFILE`; else `~/.pgpass`).
    pub pg_passfile: Option<String>,
    /// The wall clock every command reads: the system's, unless a test
    /// sets one.
    pub clock: SharedClock,
}

impl Env {
    /// Returns the user's home folder, if `HOME` is set.
    pub fn home(&self) -> Option<&std::path::Path> {
        self.home.as_deref().map(std::path::Path::new)
    }

    /// Reads the environment of this process.
    pub fn from_process() -> Env {
        Env::from_vars(Vars::from_process())
    }

    /// Reads the commands' settings from `vars`.
    pub fn from_vars(vars: Vars) -> Env {
        let var = |name: &str| vars.get(name).map(str::to_string);
        let github = match (
            var("GITHUB_SERVER_URL"),
            var("GITHUB_REPOSITORY"),
            var("GITHUB_RUN_ID"),
        ) {
            (Some(server), Some(repo), Some(run)) => {
                Some(format!("{server}/{repo}/actions/runs/{run}"))
            }
            _ => None,
        };
        let ci_job_url = github
            .or_else(|| var("CI_JOB_URL"))
            .or_else(|| var("BUILD_URL"))
            .or_else(|| var("CIRCLE_BUILD_URL"))
            .or_else(|| var("BUILDKITE_BUILD_URL"));
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| var("HOSTNAME"));
        Env {
            api_token: var("LOGZIO_API_TOKEN"),
            api_url: var("LOGZIO_API_URL"),
            no_color: var("NO_COLOR").is_some(),
            xdg_state_home: var("XDG_STATE_HOME"),
            home: var("HOME"),
            user: var("USER").or_else(|| var("LOGNAME")),
            host,
            ci_job_url,
            // A test knob, read only by the test suite's builds.
            backoff_ms: if cfg!(feature = "failpoints") {
                var("TOKENCTL_BACKOFF_MS").and_then(|v| v.parse().ok())
            } else {
                None
            },
            pg_conn_str: var(postgres::CONN_STR_VAR),
            pg_password: var("PGPASSWORD"),
            pg_lease: var(postgres::LEASE_VAR),
            pg_lock_timeout: var(postgres::LOCK_TIMEOUT_VAR),
            pg_statement_timeout: var(postgres::STATEMENT_TIMEOUT_VAR),
            pg_passfile: var("PGPASSFILE"),
            clock: SharedClock::default(),
            vars,
        }
    }
}

/// Which standard streams are terminals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terminal {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Writes to a stream that may be a pipe whose reader went away
/// (`tokenctl plan | head -1`): from then on, output is dropped instead of
/// failing the command, so it finishes and exits with its own code, as
/// ripgrep and cargo do.
pub struct ClosedPipeOk<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> ClosedPipeOk<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        ClosedPipeOk {
            inner,
            closed: false,
        }
    }
}

impl<W: Write> Write for ClosedPipeOk<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// The streams and environment a command runs with.
pub struct Io<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    pub terminal: Terminal,
    /// Reads one line of the user's answer to a prompt.
    pub read_line: &'a mut dyn FnMut() -> io::Result<String>,
}
