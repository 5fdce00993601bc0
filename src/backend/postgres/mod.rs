//! The PostgreSQL backend: state, journal and lock in one database, so a
//! runner can die at any moment without a duplicate create or a lost record.
//!
//! - The state is one row per state name, holding the same JSON document
//!   as the file backend; every replaced version goes to `history`.
//! - The lock is a session-level advisory lock held on **one dedicated
//!   connection** for the whole command: never a pool, never a reconnect,
//!   so a lost connection is a lost lock and nothing more is written.
//!   Taking it moves the state's `fence` on; every journal write checks
//!   the fence in its transaction.
//! - A lease bounds how long a silent holder (stopped, cut off) keeps the
//!   lock: the server ends an idle session after `idle_session_timeout`,
//!   and a heartbeat keeps a live one busy.
//! - The journal is rows; each create's intent is committed
//!   (`synchronous_commit = on`) before its request, concurrent appends
//!   share one transaction (group commit), and a unique index refuses a
//!   second open intent for one address. The fold is one transaction with
//!   a compare-and-swap on the serial.
//! - Outcomes that can no longer be written (the connection is gone) go to
//!   a local recovery file (mode 0600), which the next run on that machine
//!   merges.

mod conn;
mod journal;
pub mod sql;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

pub use conn::{ConnSpec, Tls};
pub use journal::PgJournal;

use super::{Backend, BackendError, Journal, LockGuard, Reading};
use crate::backend::file::journal as file_journal;
use crate::backend::file::lock::Holder;
use crate::model::journal::{self as records_of, FoldSummary, Record};
use crate::model::state::{State, StateParseError, TOOL_VERSION};

/// The environment variable holding the connection string.
pub const CONN_STR_VAR: &str = "TOKENCTL_PG_CONN_STR";

/// How long a holder that went silent keeps the lock, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The variables that tune the sessions, with their accepted ranges.
pub const LEASE_VAR: &str = "TOKENCTL_PG_LEASE";
pub const LOCK_TIMEOUT_VAR: &str = "TOKENCTL_PG_LOCK_TIMEOUT";
pub const STATEMENT_TIMEOUT_VAR: &str = "TOKENCTL_PG_STATEMENT_TIMEOUT";
const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(3600));
const LOCK_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));
const STATEMENT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// How long tokenctl waits for an answer beyond the server's own
/// `statement_timeout`: past it the server is stopped or out of reach,
/// since a working one would have cancelled the statement itself.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// How every session is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgSettings {
    /// How long a silent lock holder keeps the lock.
    pub lease: Duration,
    /// The server's `lock_timeout`: how long a statement waits for a
    /// table or row lock another session holds.
    pub lock_timeout: Duration,
    /// The server's `statement_timeout`; tokenctl waits that long plus a
    /// margin for any answer.
    pub statement_timeout: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            lease: DEFAULT_LEASE,
            lock_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl PgSettings {
    /// Returns the settings from the variables' values, each parsed by
    /// `parse` (a duration such as `30s`); a value that does not parse or
    /// is out of its range is refused, naming the variable and the range.
    pub fn from_vars(
        lease: Option<&str>,
        lock_timeout: Option<&str>,
        statement_timeout: Option<&str>,
        parse: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<PgSettings, PgError> {
        let default = PgSettings::default();
        let read = |var: &'static str,
                    value: Option<&str>,
                    default: Duration,
                    range: (Duration, Duration)| {
            let Some(value) = value else {
                return Ok(default);
            };
            let refuse = || PgError::Setting {
                var,
                value: value.to_string(),
                min: human(range.0),
                max: human(range.1),
            };
            let duration = parse(value).map_err(|_| refuse())?;
            if duration < range.0 || duration > range.1 {
                return Err(refuse());
            }
            Ok(duration)
        };
        Ok(PgSettings {
            lease: read(LEASE_VAR, lease, default.lease, LEASE_RANGE)?,
            lock_timeout: read(
                LOCK_TIMEOUT_VAR,
                lock_timeout,
                default.lock_timeout,
                LOCK_TIMEOUT_RANGE,
            )?,
            statement_timeout: read(
                STATEMENT_TIMEOUT_VAR,
                statement_timeout,
                default.statement_timeout,
                STATEMENT_TIMEOUT_RANGE,
            )?,
        })
    }

    /// Returns how long tokenctl waits for any answer of the server.
    pub fn answer_within(&self) -> Duration {
        self.statement_timeout + ANSWER_MARGIN
    }
}

/// Returns a duration as a person writes it: `90s`, `1500ms`, `5m`.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the manifest selects the postgres backend, but {CONN_STR_VAR} is not set")]
    MissingConnStr,
    #[error("{CONN_STR_VAR} is not usable: {0}")]
    ConnStr(String),
    #[error("cannot set up TLS for PostgreSQL: {0}")]
    Tls(String),
    #[error("cannot connect to {location}: {detail}")]
    Connect { location: String, detail: String },
    #[error("{location}: {detail}")]
    Query { location: String, detail: String },
    #[error("{location} is read-only ({why}); nothing was changed")]
    ReadOnly { location: String, why: String },
    #[error("the state {location} is locked by {holder}")]
    Held { location: String, holder: String },
    #[error("the state in {location} is damaged: {detail}")]
    Corrupt { location: String, detail: String },
    #[error("the state in {location} was written by a newer tokenctl: {detail}")]
    Newer { location: String, detail: String },
    #[error("the connection to {location} was lost: {detail}")]
    Lost { location: String, detail: String },
    #[error("cannot use the password file {}: {why}", path.display())]
    PassFile { path: PathBuf, why: String },
    #[error("{var}={value} is not a duration from {min} to {max}")]
    Setting {
        var: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error(
        "no connection to {location} within connect_timeout ({}): the TCP connect, TLS and the startup handshake must finish within it",
        human(*after)
    )]
    ConnectTimeout { location: String, after: Duration },
    #[error(
        "{location}: a table or row tokenctl needs stayed locked by another session past lock_timeout ({}); nothing was changed by this statement",
        human(*after)
    )]
    LockTimeout { location: String, after: Duration },
    #[error(
        "{location}: a statement ran past statement_timeout ({}) and the server cancelled it",
        human(*after)
    )]
    StatementTimeout { location: String, after: Duration },
    #[error(
        "{location}: no answer within {} (statement_timeout {} plus {}): the server is stopped or out of reach",
        human(*after),
        human(*statement_timeout),
        human(ANSWER_MARGIN)
    )]
    NoAnswer {
        location: String,
        after: Duration,
        statement_timeout: Duration,
    },
}

impl crate::error::Hint for PgError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            PgError::MissingConnStr | PgError::ConnStr(_) => format!(
                "set {CONN_STR_VAR} to e.g. postgres://USER@HOST/DB?sslmode=verify-full&sslrootcert=CA.pem (the password may come from PGPASSWORD or ~/.pgpass); it is never read from the manifest or the command line"
            ),
            PgError::Tls(_) => "check sslrootcert: a PEM file of the CA that signed the server's certificate".into(),
            PgError::Connect { .. } => "check that the server is up and reachable, the user and password, and that the certificate matches the host name".into(),
            PgError::Query { .. } => "check the role's privileges (README: PostgreSQL backend); nothing was created".into(),
            PgError::ReadOnly { .. } => "point TOKENCTL_PG_CONN_STR at the primary (target_session_attrs=read-write), not a standby or a read-only database".into(),
            PgError::Held { .. } => "wait for it to finish, or pass --lock-timeout 5m to wait; the lock goes away with its holder's connection (a dead runner's at once, a silent one's after its lease)".into(),
            PgError::Corrupt { .. } => "the row was left untouched; the previous versions are in the history table".into(),
            PgError::Newer { .. } => format!("this is tokenctl {TOOL_VERSION}; upgrade to the version that wrote the state"),
            PgError::Lost { .. } => "no further create was started; outcomes not yet written are in the recovery file named above, which the next run on this machine merges (elsewhere they show as in doubt)".into(),
            PgError::PassFile { path, .. } => format!(
                "make it private (`chmod 600 {}`), as libpq requires, or set the password in {CONN_STR_VAR} or PGPASSWORD",
                path.display()
            ),
            PgError::Setting { var, .. } => format!(
                "set {var} to a duration such as 30s or 2m within that range, or unset it for the default (README: Shared state on PostgreSQL)"
            ),
            PgError::ConnectTimeout { .. } => "check that the server is up and not overloaded; a slow network may need connect_timeout=SECONDS in TOKENCTL_PG_CONN_STR".into(),
            PgError::LockTimeout { .. } => format!(
                "another session holds a lock on tokenctl's tables (see pg_locks and pg_stat_activity); end it, or raise {LOCK_TIMEOUT_VAR}"
            ),
            PgError::StatementTimeout { .. } => format!(
                "the server is overloaded or the state is very large; raise {STATEMENT_TIMEOUT_VAR} if the server is healthy"
            ),
            PgError::NoAnswer { .. } => "check the server (a stopped or hung postmaster) and the network; if an apply was interrupted, its journal rows are folded by the next command that reaches the database".into(),
        })
    }
}

/// Why a statement got no result.
enum DbError {
    Pg(tokio_postgres::Error),
    /// No answer within the bound: the server or the network is stalled.
    NoAnswer,
}

/// Every statement on a connection, bounded by the time a working server
/// takes to answer or to cancel it itself.
trait Bounded {
    async fn one(
        &self,
        within: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError>;
    async fn opt(
        &self,
        within: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError>;
    async fn all(
        &self,
        within: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError>;
    async fn exec(
        &self,
        within: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError>;
    async fn batch(&self, within: Duration, sql: &str) -> Result<(), DbError>;
}

async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(DbError::Pg),
        Err(_) => Err(DbError::NoAnswer),
    }
}

impl Bounded for Client {
    async fn one(
        &self,
        limit: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        within(limit, self.query_one(sql, params)).await
    }
    async fn opt(
        &self,
        limit: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        within(limit, self.query_opt(sql, params)).await
    }
    async fn all(
        &self,
        limit: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        within(limit, self.query(sql, params)).await
    }
    async fn exec(
        &self,
        limit: Duration,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        within(limit, self.execute(sql, params)).await
    }
    async fn batch(&self, limit: Duration, sql: &str) -> Result<(), DbError> {
        within(limit, self.batch_execute(sql)).await
    }
}

/// Returns the server's message for a failed statement.
fn detail(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Where the state lives in PostgreSQL, and how to reach it.
pub struct PgBackend {
    spec: ConnSpec,
    schema: String,
    state: String,
    lease: Duration,
    settings: PgSettings,
    /// Where outcomes go that the database could not take.
    recovery_dir: Option<PathBuf>,
    /// The database work runs here, on a thread of its own, so that the
    /// heartbeat goes on while the command waits for a prompt or a sink.
    runtime: tokio::runtime::Runtime,
    /// The lock connection while this command holds the lock.
    locked: Arc<Mutex<Option<Arc<Locked>>>>,
}

/// A connection that holds the lock of one state.
struct Locked {
    client: Arc<Client>,
    state_id: i64,
    run_id: i64,
    fence: i64,
    key: i64,
    /// Set once the connection is gone: nothing more is sent on it.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl PgBackend {
    /// Returns the backend of state `state` in schema `schema` of the
    /// database `conn_str` names.
    /// The password comes from the string, else `password` (PGPASSWORD),
    /// else the password file `passfile`.
    pub fn new(
        conn_str: Option<&str>,
        password: Option<&str>,
        passfile: Option<&Path>,
        schema: &str,
        state: &str,
        settings: PgSettings,
        recovery_dir: Option<PathBuf>,
    ) -> Result<Self, PgError> {
        let conn_str = conn_str
            .filter(|c| !c.trim().is_empty())
            .ok_or(PgError::MissingConnStr)?;
        let mut spec = ConnSpec::parse(conn_str, password)?;
        if let Some(passfile) = passfile {
            spec.password_from_file(passfile)?;
        }
        let lease = settings.lease;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|err| PgError::Connect {
                location: spec.describe(),
                detail: format!("cannot start a thread: {err}"),
            })?;
        Ok(PgBackend {
            spec,
            schema: schema.to_string(),
            state: state.to_string(),
            lease: lease.max(Duration::from_secs(1)),
            settings,
            recovery_dir,
            runtime,
            locked: Arc::new(Mutex::new(None)),
        })
    }

    fn loc(&self) -> String {
        self.location()
    }

    /// Returns how long any one statement may go unanswered.
    fn within(&self) -> Duration {
        self.settings.answer_within()
    }

    fn query_err(&self) -> impl Fn(DbError) -> PgError + '_ {
        move |err| {
            let err = match err {
                DbError::Pg(err) => err,
                DbError::NoAnswer => {
                    return PgError::NoAnswer {
                        location: self.loc(),
                        after: self.within(),
                        statement_timeout: self.settings.statement_timeout,
                    };
                }
            };
            use tokio_postgres::error::SqlState;
            if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                return PgError::LockTimeout {
                    location: self.loc(),
                    after: self.settings.lock_timeout,
                };
            }
            // tokenctl cancels nothing itself: a cancelled statement is
            // one that ran past statement_timeout.
            if err.code() == Some(&SqlState::QUERY_CANCELED) {
                return PgError::StatementTimeout {
                    location: self.loc(),
                    after: self.settings.statement_timeout,
                };
            }
            if err.is_closed() {
                PgError::Lost {
                    location: self.loc(),
                    detail: detail(&err),
                }
            } else {
                PgError::Query {
                    location: self.loc(),
                    detail: detail(&err),
                }
            }
        }
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    fn current_lock(&self) -> Option<Arc<Locked>> {
        self.locked.lock().ok().and_then(|l| l.clone())
    }

    /// Opens a new connection, its driver running on the backend's thread,
    /// with the session's lock and statement timeouts set.
    async fn connect(&self) -> Result<Client, PgError> {
        let limit = self
            .spec
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(conn::DEFAULT_CONNECT_TIMEOUT);
        let connect_err = |err: tokio_postgres::Error| PgError::Connect {
            location: self.loc(),
            detail: detail(&err),
        };
        let timed_out = |_| PgError::ConnectTimeout {
            location: self.loc(),
            after: limit,
        };
        // The driver's own connect_timeout covers the TCP connect only: a
        // stopped server accepts the connection (the kernel does) and
        // never answers the startup message.
        let client = match self.spec.connector()? {
            None => {
                let (client, connection) =
                    tokio::time::timeout(limit, self.spec.config.connect(NoTls))
                        .await
                        .map_err(timed_out)?
                        .map_err(connect_err)?;
                tokio::spawn(connection);
                client
            }
            Some(tls) => {
                let (client, connection) =
                    tokio::time::timeout(limit, self.spec.config.connect(tls))
                        .await
                        .map_err(timed_out)?
                        .map_err(connect_err)?;
                tokio::spawn(connection);
                client
            }
        };
        client
            .batch(
                self.within(),
                &format!(
                    "SET lock_timeout = {}; SET statement_timeout = {}",
                    self.settings.lock_timeout.as_millis(),
                    self.settings.statement_timeout.as_millis()
                ),
            )
            .await
            .map_err(self.query_err())?;
        Ok(client)
    }

    /// Creates the schema and tables unless they exist. Two runners racing
    /// here both succeed: creation is serialized by a transaction-level
    /// advisory lock, and every statement is idempotent.
    async fn ensure_schema(&self, client: &Client) -> Result<(), PgError> {
        let s = &self.schema;
        let exists = client
            .one(
                self.within(),
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{s}.journal_one_open_intent")],
            )
            .await
            .map_err(self.query_err())?
            .get::<_, bool>(0);
        if exists {
            return Ok(());
        }
        self.check_writable(client).await?;
        let script = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('tokenctl schema {s}')); {} COMMIT;",
            sql::create(s)
        );
        client
            .batch(self.within(), &script)
            .await
            .map_err(self.query_err())?;
        Ok(())
    }

    /// Refuses a standby or a read-only database before anything is sent.
    async fn check_writable(&self, client: &Client) -> Result<(), PgError> {
        let row = client
            .one(
                self.within(),
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
                &[],
            )
            .await
            .map_err(self.query_err())?;
        let why = if row.get::<_, bool>(0) {
            "a standby in recovery"
        } else if row.get::<_, String>(1) == "on" {
            "default_transaction_read_only is on"
        } else {
            return Ok(());
        };
        Err(PgError::ReadOnly {
            location: self.loc(),
            why: why.into(),
        })
    }

    /// Returns the id of the state row, creating it if `create`.
    async fn state_id(&self, client: &Client, create: bool) -> Result<Option<i64>, PgError> {
        let s = &self.schema;
        if create {
            client
                .exec(
                    self.within(),
                    &format!(
                        "INSERT INTO {s}.states (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
                    ),
                    &[&self.state],
                )
                .await
                .map_err(self.query_err())?;
        }
        let row = client
            .opt(
                self.within(),
                &format!("SELECT id FROM {s}.states WHERE name = $1"),
                &[&self.state],
            )
            .await
            .map_err(self.query_err())?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Returns the advisory lock key of a state: the schema's oid and the
    /// state's id, so states of different schemas never share a key.
    async fn lock_key(&self, client: &Client, state_id: i64) -> Result<(u32, i64), PgError> {
        let oid: u32 = client
            .one(
                self.within(),
                "SELECT oid FROM pg_namespace WHERE nspname = $1",
                &[&self.schema],
            )
            .await
            .map_err(self.query_err())?
            .get(0);
        Ok((
            oid,
            ((u64::from(oid) << 32) | (state_id as u64 & 0xffff_ffff)) as i64,
        ))
    }

    /// Returns the run holding the lock of the state, if one does.
    async fn live_holder(&self, client: &Client, state_id: i64) -> Result<Option<String>, PgError> {
        let s = &self.schema;
        let (oid, _) = self.lock_key(client, state_id).await?;
        let row = client
            .opt(
                self.within(),
                &format!(
                    "SELECT r.user_name, r.host, r.pid, r.command, r.started, r.ci_job_url
                     FROM pg_locks l JOIN {s}.runs r ON r.backend_pid = l.pid
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                       AND l.classid = $1 AND l.objid = $2
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND r.state_id = $3 AND r.ended IS NULL
                     ORDER BY r.id DESC LIMIT 1"
                ),
                &[&oid, &(state_id as u32), &state_id],
            )
            .await
            .map_err(self.query_err())?;
        if let Some(row) = row {
            let holder = Holder {
                user: row.get(0),
                host: row.get(1),
                pid: row.get::<_, i32>(2) as u32,
                command: row.get(3),
                started: row.get(4),
                ci_job_url: row.get(5),
            };
            return Ok(Some(holder.to_string()));
        }
        // Held, but by no recorded run (between the lock and its row).
        let held: bool = client
            .one(
                self.within(),
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND objsubid = 1 AND classid = $1 AND objid = $2
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                &[&oid, &(state_id as u32)],
            )
            .await
            .map_err(self.query_err())?
            .get(0);
        Ok(held.then(|| "another run (no holder information yet)".to_string()))
    }

    /// Reads the state row and the journal rows in one snapshot.
    async fn snapshot(&self, client: &Client) -> Result<Snapshot, PgError> {
        client
            .batch(
                self.within(),
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            )
            .await
            .map_err(self.query_err())?;
        match self.read_snapshot(client).await {
            Ok(snapshot) => {
                client
                    .batch(self.within(), "COMMIT")
                    .await
                    .map_err(self.query_err())?;
                Ok(snapshot)
            }
            Err(err) => {
                // The lock connection goes on being used: never leave it
                // in an aborted transaction.
                let _ = client.batch(self.within(), "ROLLBACK").await;
                Err(err)
            }
        }
    }

    /// Reads the state row and the journal rows, inside the snapshot's
    /// transaction.
    async fn read_snapshot(&self, client: &Client) -> Result<Snapshot, PgError> {
        let s = &self.schema;
        let tx_err = self.query_err();
        let row = client
            .opt(
                self.within(),
                &format!("SELECT id, document FROM {s}.states WHERE name = $1"),
                &[&self.state],
            )
            .await
            .map_err(&tx_err)?;
        let mut snapshot = Snapshot::default();
        if let Some(row) = row {
            let id: i64 = row.get(0);
            snapshot.state_id = Some(id);
            // Parsed where the driver received it: a state of 100,000
            // tokens is tens of MiB, and a copy would double that.
            let document: Option<&str> = row.get(1);
            snapshot.state = document.map(|d| self.parse_state(d)).transpose()?;
            drop(row);
            let rows = client
                .all(
                self.within(),
                    &format!("SELECT seq, run_id, record FROM {s}.journal WHERE state_id = $1 ORDER BY seq"),
                    &[&id],
                )
                .await
                .map_err(&tx_err)?;
            for row in rows {
                let text: String = row.get(2);
                let record: Record =
                    serde_json::from_str(&text).map_err(|err| PgError::Corrupt {
                        location: self.loc(),
                        detail: format!(
                            "journal row {} does not parse: {err}",
                            row.get::<_, i64>(0)
                        ),
                    })?;
                snapshot.max_seq = row.get(0);
                snapshot.records.push((row.get(1), record));
            }
        }
        Ok(snapshot)
    }

    fn parse_state(&self, document: &str) -> Result<State, PgError> {
        State::from_json(document).map_err(|err| match err {
            StateParseError::Newer { .. } => PgError::Newer {
                location: self.loc(),
                detail: err.to_string(),
            },
            StateParseError::Corrupt(detail) => PgError::Corrupt {
                location: self.loc(),
                detail,
            },
        })
    }

    /// Stores `state` if the stored one is `expected`, keeping the old one
    /// in `history`, and deletes the journal rows up to `journal_upto` in
    /// the same transaction.
    async fn swap(
        &self,
        client: &Client,
        locked: Option<&Locked>,
        state_id: i64,
        expected: Option<(&str, u64)>,
        state: &State,
        journal_upto: Option<i64>,
    ) -> Result<(), BackendError> {
        let s = &self.schema;
        let err = self.query_err();
        let fail = |e| BackendError::Postgres(err(e));
        client.batch(self.within(), "BEGIN").await.map_err(fail)?;
        let result = async {
            let row = client
                .one(
                self.within(),
                    &format!("SELECT lineage, serial, fence FROM {s}.states WHERE id = $1 FOR UPDATE"),
                    &[&state_id],
                )
                .await
                .map_err(fail)?;
            let found: Option<(String, u64)> = match (row.get::<_, Option<String>>(0), row.get::<_, Option<i64>>(1)) {
                (Some(lineage), Some(serial)) => Some((lineage, serial as u64)),
                _ => None,
            };
            let fence: i64 = row.get(2);
            if let Some(locked) = locked
                && fence != locked.fence
            {
                return Err(BackendError::Postgres(PgError::Held {
                    location: self.loc(),
                    holder: "a newer run (this run's lock was lost, so it writes nothing)".into(),
                }));
            }
            let expected_owned = expected.map(|(l, s)| (l.to_string(), s));
            if found != expected_owned {
                let show = |v: &Option<(String, u64)>| match v {
                    Some((lineage, serial)) => format!("{serial} of lineage {lineage}"),
                    None => "no state".into(),
                };
                return Err(BackendError::Conflict {
                    location: self.loc(),
                    expected: show(&expected_owned),
                    found: show(&found),
                });
            }
            let run_id = locked.map(|l| l.run_id);
            client
                .exec(
                self.within(),
                    &format!(
                        "INSERT INTO {s}.history (state_id, lineage, serial, document, replaced_by)
                         SELECT id, lineage, serial, document, $2 FROM {s}.states
                         WHERE id = $1 AND document IS NOT NULL"
                    ),
                    &[&state_id, &run_id],
                )
                .await
                .map_err(fail)?;
            crate::failpoint::hit("before-state-write");
            client
                .exec(
                self.within(),
                    &format!(
                        "UPDATE {s}.states SET lineage = $2, serial = $3, document = $4, updated_at = now() WHERE id = $1"
                    ),
                    &[&state_id, &state.lineage, &(state.serial as i64), &state.to_json()],
                )
                .await
                .map_err(fail)?;
            if let Some(upto) = journal_upto {
                client
                    .exec(
                self.within(),
                        &format!("DELETE FROM {s}.journal WHERE state_id = $1 AND seq <= $2"),
                        &[&state_id, &upto],
                    )
                    .await
                    .map_err(fail)?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                client.batch(self.within(), "COMMIT").await.map_err(fail)?;
                crate::failpoint::hit("after-state-write");
                Ok(())
            }
            Err(err) => {
                let _ = client.batch(self.within(), "ROLLBACK").await;
                Err(err)
            }
        }
    }

    /// Returns the recovery files of runs of state lineage `lineage`.
    fn recovery_files(&self, lineage: &str) -> Vec<(PathBuf, Vec<Record>)> {
        let Some(dir) = &self.recovery_dir else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return found;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("pg-") && n.ends_with(".jsonl"))
            })
            .collect();
        paths.sort();
        for path in paths {
            if let Ok(Some(records)) = file_journal::read(&path)
                && records_of::lineage(&records) == Some(lineage)
            {
                found.push((path, records));
            }
        }
        found
    }

    /// Takes the lock on a new dedicated connection.
    async fn take_lock(&self, holder: &Holder, wait: Duration) -> Result<Locked, PgError> {
        let client = self.connect().await?;
        // Every intent must be on disk at the server before its request.
        let lease_ms = self.lease.as_millis().to_string();
        let version: i32 = client
            .one(
                self.within(),
                "SELECT current_setting('server_version_num')::integer",
                &[],
            )
            .await
            .map_err(self.query_err())?
            .get(0);
        // idle_session_timeout came with PostgreSQL 14; before it, a silent
        // holder keeps the lock until TCP gives up on its connection.
        let idle = if version >= 140_000 {
            format!("SET idle_session_timeout = {lease_ms};")
        } else {
            String::new()
        };
        client
            .batch(self.within(), &format!(
                "SET synchronous_commit = on; SET plan_cache_mode = force_custom_plan; {idle} SET idle_in_transaction_session_timeout = {lease_ms}"
            ))
            .await
            .map_err(self.query_err())?;
        self.check_writable(&client).await?;
        self.ensure_schema(&client).await?;
        let state_id = self
            .state_id(&client, true)
            .await?
            .ok_or_else(|| PgError::Query {
                location: self.loc(),
                detail: "the state row vanished as it was made".into(),
            })?;
        let (_, key) = self.lock_key(&client, state_id).await?;
        let deadline = Instant::now() + wait;
        loop {
            let got: bool = client
                .one(self.within(), "SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(self.query_err())?
                .get(0);
            if got {
                break;
            }
            if Instant::now() >= deadline {
                let holder = self
                    .live_holder(&client, state_id)
                    .await?
                    .unwrap_or_else(|| "another run, which just let go".into());
                return Err(PgError::Held {
                    location: self.loc(),
                    holder,
                });
            }
            tokio::time::sleep(Duration::from_millis(200).min(wait)).await;
        }
        let s = &self.schema;
        let fence: i64 = client
            .one(
                self.within(),
                &format!("UPDATE {s}.states SET fence = fence + 1 WHERE id = $1 RETURNING fence"),
                &[&state_id],
            )
            .await
            .map_err(self.query_err())?
            .get(0);
        let run_id: i64 = client
            .one(
                self.within(),
                &format!(
                    "INSERT INTO {s}.runs (state_id, fence, backend_pid, user_name, host, pid, command, started, ci_job_url)
                     VALUES ($1, $2, pg_backend_pid(), $3, $4, $5, $6, $7, $8) RETURNING id"
                ),
                &[
                    &state_id,
                    &fence,
                    &holder.user,
                    &holder.host,
                    &(holder.pid as i32),
                    &holder.command,
                    &holder.started,
                    &holder.ci_job_url,
                ],
            )
            .await
            .map_err(self.query_err())?
            .get(0);
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = Arc::new(client);
        tokio::spawn(heartbeat(
            client.clone(),
            lost.clone(),
            self.lease / 4,
            self.within(),
        ));
        Ok(Locked {
            client,
            state_id,
            run_id,
            fence,
            key,
            lost,
        })
    }
}

/// Keeps the lock connection busy so that the server's idle timeout ends
/// it only when this process stops answering; marks it lost when it fails.
///
/// A ping waits behind whatever else the connection carries (a large
/// snapshot, a fold): the session is busy then, not idle, and keeps its
/// lock. So a slow ping is waited for as long as any statement
/// (`answer_within`), not a fraction of the lease, or a large state would
/// make a healthy run give up its own lock.
async fn heartbeat(
    client: Arc<Client>,
    lost: Arc<std::sync::atomic::AtomicBool>,
    every: Duration,
    answer_within: Duration,
) {
    use std::sync::atomic::Ordering;
    loop {
        tokio::time::sleep(every).await;
        if lost.load(Ordering::SeqCst) {
            return;
        }
        let ping = tokio::time::timeout(answer_within, client.simple_query("SELECT 1")).await;
        if !matches!(ping, Ok(Ok(_))) {
            lost.store(true, Ordering::SeqCst);
            return;
        }
        if std::sync::Arc::strong_count(&client) == 1 {
            return;
        }
    }
}

/// The state row and the journal rows, read in one snapshot.
#[derive(Default)]
struct Snapshot {
    state_id: Option<i64>,
    state: Option<State>,
    /// Each journal row with its run.
    records: Vec<(i64, Record)>,
    max_seq: i64,
}

/// The lock of a state, held by a dedicated connection.
struct PgLock {
    slot: Arc<Mutex<Option<Arc<Locked>>>>,
    handle: tokio::runtime::Handle,
    schema: String,
}

impl LockGuard for PgLock {
    fn is_current(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.slot
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .is_some_and(|l| !l.lost.load(Ordering::SeqCst) && !l.client.is_closed())
    }
}

impl Drop for PgLock {
    fn drop(&mut self) {
        let Some(locked) = self.slot.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        // Inside an async context a blocking wait would panic; closing the
        // connection releases the lock as well.
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        let s = self.schema.clone();
        let _ = self.handle.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                let _ = locked
                    .client
                    .execute(
                        &format!("UPDATE {s}.runs SET ended = now() WHERE id = $1"),
                        &[&locked.run_id],
                    )
                    .await;
                let _ = locked
                    .client
                    .execute("SELECT pg_advisory_unlock($1)", &[&locked.key])
                    .await;
            })
            .await
        });
    }
}

impl Backend for PgBackend {
    fn location(&self) -> String {
        format!(
            "{} (schema {}, state {})",
            self.spec.describe(),
            self.schema,
            self.state
        )
    }

    fn load(&self) -> Result<Option<State>, BackendError> {
        let locked = self.current_lock();
        self.block_on(async {
            let owned;
            let client = match &locked {
                Some(locked) => &*locked.client,
                None => {
                    owned = self.connect().await?;
                    if !self.schema_exists(&owned).await? {
                        return Ok(None);
                    }
                    &owned
                }
            };
            Ok(self.snapshot(client).await?.state)
        })
    }

    fn compare_and_swap(
        &self,
        expected: Option<(&str, u64)>,
        state: &State,
    ) -> Result<(), BackendError> {
        let locked = self.current_lock().ok_or_else(|| PgError::Query {
            location: self.loc(),
            detail: "a state write without the lock".into(),
        })?;
        self.block_on(self.swap(
            &locked.client,
            Some(&locked),
            locked.state_id,
            expected,
            state,
            None,
        ))
    }

    fn lock(&self, holder: &Holder, wait: Duration) -> Result<Box<dyn LockGuard>, BackendError> {
        let locked = self.block_on(self.take_lock(holder, wait))?;
        if let Ok(mut slot) = self.locked.lock() {
            *slot = Some(Arc::new(locked));
        }
        Ok(Box::new(PgLock {
            slot: self.locked.clone(),
            handle: self.runtime.handle().clone(),
            schema: self.schema.clone(),
        }))
    }

    fn recover(
        &self,
        before: Option<&State>,
        _host: Option<&str>,
    ) -> Result<Option<(Option<State>, FoldSummary)>, BackendError> {
        let locked = self.current_lock().ok_or_else(|| PgError::Query {
            location: self.loc(),
            detail: "a journal fold without the lock".into(),
        })?;
        let snapshot = self.block_on(self.snapshot(&locked.client))?;
        let lineage =
            before
                .map(|s| s.lineage.clone())
                .or_else(|| match snapshot.records.first() {
                    Some((_, Record::Begin { lineage, .. })) => Some(lineage.clone()),
                    _ => None,
                });
        let recovered = lineage
            .as_deref()
            .map(|l| self.recovery_files(l))
            .unwrap_or_default();
        if snapshot.records.is_empty() && recovered.is_empty() {
            return Ok(None);
        }
        let mut records: Vec<Record> = snapshot.records.into_iter().map(|(_, r)| r).collect();
        if let Some(lineage) = &lineage {
            for record in &records {
                if let Record::Begin { lineage: other, .. } = record
                    && other != lineage
                {
                    return Err(PgError::Corrupt {
                        location: self.loc(),
                        detail: format!(
                            "its journal belongs to another state (lineage {other}, the state has {lineage})"
                        ),
                    }
                    .into());
                }
            }
        }
        let base = before
            .cloned()
            .unwrap_or_else(|| State::new(lineage.clone().unwrap_or_default()));
        // A recovery file settles only creates still open: in the journal,
        // or pending in the state. One whose address was resolved (and
        // perhaps created again) since is old news and must not overwrite
        // the live token's record.
        let open: Vec<crate::model::address::Address> = records_of::fold(base.clone(), &records)
            .0
            .pending
            .into_iter()
            .map(|p| p.address)
            .collect();
        for (_, file) in &recovered {
            records.extend(
                file.iter()
                    .skip(1)
                    .filter(|record| match record {
                        Record::Created { address, .. }
                        | Record::Failed { address, .. }
                        | Record::Doubt { address, .. } => open.contains(address),
                        Record::Intent { .. } | Record::Begin { .. } => false,
                    })
                    .cloned(),
            );
        }
        let (mut folded, summary) = records_of::fold(base, &records);
        // What to store: nothing for a journal that recorded nothing on a
        // first run, the state as it was when the fold changed nothing,
        // else the fold with its serial moved on.
        let (stored, write) = match before {
            None if folded.tokens.is_empty() && folded.pending.is_empty() => (None, false),
            Some(before) if before.same_content(&folded) => (Some(before.clone()), false),
            _ => {
                folded.serial = match before {
                    None => folded.serial.max(1),
                    Some(b) => super::next_serial(b.serial).ok_or_else(|| {
                        BackendError::SerialExhausted {
                            location: self.loc(),
                            serial: b.serial,
                        }
                    })?,
                };
                folded.tool_version = TOOL_VERSION.to_string();
                (Some(folded), true)
            }
        };
        self.block_on(async {
            match (&stored, write) {
                (Some(state), true) => {
                    self.swap(
                        &locked.client,
                        Some(&locked),
                        locked.state_id,
                        before.map(|b| (b.lineage.as_str(), b.serial)),
                        state,
                        Some(snapshot.max_seq),
                    )
                    .await
                }
                _ => {
                    let s = &self.schema;
                    locked
                        .client
                        .exec(
                            self.within(),
                            &format!("DELETE FROM {s}.journal WHERE state_id = $1 AND seq <= $2"),
                            &[&locked.state_id, &snapshot.max_seq],
                        )
                        .await
                        .map_err(|e| BackendError::Postgres(self.query_err()(e)))?;
                    Ok(())
                }
            }
        })
        .map_err(|source| BackendError::JournalKept {
            source: Box::new(source),
            journal: format!("rows of {}", self.loc()),
        })?;
        crate::failpoint::hit("after-journal-removed");
        for (path, _) in recovered {
            let _ = std::fs::remove_file(path);
        }
        Ok(Some((stored, summary)))
    }

    fn read(&self, holder: &Holder, host: Option<&str>) -> Result<Reading, BackendError> {
        let (snapshot, running) = self.block_on(async {
            let client = self.connect().await?;
            if !self.schema_exists(&client).await? {
                return Ok::<_, PgError>((Snapshot::default(), None));
            }
            let snapshot = self.snapshot(&client).await?;
            let running = match snapshot.state_id {
                Some(id) => self.live_holder(&client, id).await?,
                None => None,
            };
            Ok((snapshot, running))
        })?;
        // Outcomes this machine saved while its connection was down are
        // merged by the first command that can take the lock.
        let recovery_waiting = snapshot
            .state
            .as_ref()
            .is_some_and(|s| !self.recovery_files(&s.lineage).is_empty());
        if snapshot.records.is_empty() && !recovery_waiting {
            return Ok(Reading {
                state: snapshot.state,
                ..Reading::default()
            });
        }
        if running.is_none() {
            // A dead run's journal: record it, as the next writer would.
            match self.lock(holder, Duration::ZERO) {
                Ok(_guard) => {
                    let state = self.load()?;
                    return Ok(match self.recover(state.as_ref(), host)? {
                        Some((stored, summary)) => Reading {
                            state: stored,
                            recovered: Some(summary),
                            running: None,
                            in_progress: Vec::new(),
                        },
                        None => Reading {
                            state,
                            ..Reading::default()
                        },
                    });
                }
                Err(BackendError::Postgres(PgError::Held { .. })) => {}
                Err(err) => return Err(err),
            }
        }
        let lineage = snapshot
            .state
            .as_ref()
            .map(|s| s.lineage.clone())
            .or_else(|| match snapshot.records.first() {
                Some((_, Record::Begin { lineage, .. })) => Some(lineage.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let base = snapshot.state.unwrap_or_else(|| State::new(lineage));
        let records: Vec<Record> = snapshot.records.into_iter().map(|(_, r)| r).collect();
        let holder = running.unwrap_or_else(|| "a run that just started".into());
        Ok(Reading::running(base, &records, holder))
    }

    fn journal_location(&self) -> String {
        format!("the journal rows of {}", self.location())
    }

    fn has_journal(&self) -> Result<bool, BackendError> {
        let locked = self.current_lock();
        Ok(self.block_on(async {
            let owned;
            let client = match &locked {
                Some(locked) => &*locked.client,
                None => {
                    owned = self.connect().await?;
                    if !self.schema_exists(&owned).await? {
                        return Ok::<_, PgError>(false);
                    }
                    &owned
                }
            };
            let s = &self.schema;
            Ok(client
                .one(
                self.within(),
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM {s}.journal j JOIN {s}.states t ON t.id = j.state_id WHERE t.name = $1)"
                    ),
                    &[&self.state],
                )
                .await
                .map_err(self.query_err())?
                .get(0))
        })?)
    }

    fn discard_journal(&self, journal: Journal) -> Result<(), BackendError> {
        drop(journal);
        let locked = self.current_lock().ok_or_else(|| PgError::Query {
            location: self.loc(),
            detail: "a journal without the lock".into(),
        })?;
        let s = &self.schema;
        self.block_on(locked.client.exec(
            self.within(),
            &format!("DELETE FROM {s}.journal WHERE state_id = $1 AND run_id = $2"),
            &[&locked.state_id, &locked.run_id],
        ))
        .map_err(self.query_err())?;
        Ok(())
    }

    fn open_journal(&self, begin: &Record) -> Result<Journal, BackendError> {
        super::check_serial_can_move_on(begin, self.location())?;
        let locked = self.current_lock().ok_or_else(|| PgError::Query {
            location: self.loc(),
            detail: "a journal without the lock".into(),
        })?;
        let journal = self.block_on(PgJournal::open(
            locked.client.clone(),
            self.schema.clone(),
            locked.state_id,
            locked.run_id,
            locked.fence,
            locked.lost.clone(),
            begin.clone(),
            self.recovery_dir.clone(),
            self.lease,
            self.loc(),
        ))?;
        Ok(Journal::Postgres(journal))
    }
}

impl PgBackend {
    async fn schema_exists(&self, client: &Client) -> Result<bool, PgError> {
        Ok(client
            .one(
                self.within(),
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{}.journal_one_open_intent", self.schema)],
            )
            .await
            .map_err(self.query_err())?
            .get(0))
    }

    /// Returns the folder of recovery files.
    pub fn recovery_dir(&self) -> Option<&Path> {
        self.recovery_dir.as_deref()
    }
}
