//! The journal of one run as rows, written with group commit, and the
//! local recovery file for outcomes the database can no longer take.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::{PgError, detail};
use crate::backend::{JournalError, record_line};
use crate::model::journal::Record;

type Item = (Record, oneshot::Sender<Result<(), String>>);

/// Appends the records of one run to the journal rows of its state.
///
/// Appends go to one writer task, which writes everything queued in one
/// transaction (one commit, one WAL flush for the lot): each `append`
/// returns only after its row is committed, and rows keep their order.
pub struct PgJournal {
    sender: Option<mpsc::UnboundedSender<Item>>,
    lost: Arc<AtomicBool>,
    recovery: Arc<Mutex<Recovery>>,
    location: String,
}

/// Where outcomes go once the connection is gone.
struct Recovery {
    dir: Option<PathBuf>,
    begin: Record,
    run_id: i64,
    path: Option<PathBuf>,
}

impl Recovery {
    /// Appends `record` to this run's recovery file (made with its begin
    /// record on first use, mode 0600) and syncs it.
    fn save(&mut self, record: &Record) -> io::Result<PathBuf> {
        let dir = self
            .dir
            .clone()
            .ok_or_else(|| io::Error::other("neither XDG_STATE_HOME nor HOME is set"))?;
        let lineage = crate::model::journal::lineage(std::slice::from_ref(&self.begin))
            .unwrap_or("none")
            .to_string();
        let path = dir.join(format!("pg-{lineage}-run{}.jsonl", self.run_id));
        let fresh = self.path.is_none();
        if fresh {
            fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
            }
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path)?;
        let mut bytes = Vec::new();
        // A file that another command merged and removed meanwhile is made
        // again: it needs its begin record again, or it would be refused.
        if file.metadata()?.len() == 0 {
            bytes.extend(record_line(&self.begin));
        }
        bytes.extend(record_line(record));
        file.write_all(&bytes)?;
        file.sync_all()?;
        if fresh {
            crate::fsutil::sync_dir(&dir)?;
        }
        self.path = Some(path.clone());
        Ok(path)
    }
}

/// Returns the address a record is about, as the journal rows key it.
fn address_of(record: &Record) -> Option<String> {
    match record {
        Record::Begin { .. } => None,
        Record::Intent { address, .. }
        | Record::Created { address, .. }
        | Record::Failed { address, .. }
        | Record::Doubt { address, .. } => Some(address.to_string()),
    }
}

impl PgJournal {
    /// Writes the `begin` record and starts the writer task.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn open(
        client: Arc<Client>,
        schema: String,
        state_id: i64,
        run_id: i64,
        fence: i64,
        lost: Arc<AtomicBool>,
        begin: Record,
        recovery_dir: Option<PathBuf>,
        lease: Duration,
        location: String,
    ) -> Result<PgJournal, PgError> {
        let statement =
            client
                .prepare(&batch_sql(&schema))
                .await
                .map_err(|err| PgError::Query {
                    location: location.clone(),
                    detail: detail(&err),
                })?;
        let writer = Writer {
            client,
            statement,
            state_id,
            run_id,
            fence,
            lease,
        };
        writer
            .write(&[&begin])
            .await
            .map_err(|detail| PgError::Query {
                location: location.clone(),
                detail,
            })?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(writer.run(receiver, lost.clone()));
        Ok(PgJournal {
            sender: Some(sender),
            lost,
            recovery: Arc::new(Mutex::new(Recovery {
                dir: recovery_dir,
                begin,
                run_id,
                path: None,
            })),
            location,
        })
    }

    /// Appends one record and waits until it is committed. Once the
    /// connection is lost an intent fails at once (its create must not be
    /// sent), and an outcome goes to the local recovery file instead.
    pub async fn append(&self, record: &Record) -> Result<(), JournalError> {
        let result = if self.lost.load(Ordering::SeqCst) {
            Err("the connection was lost earlier in this run".to_string())
        } else {
            let (done, wait) = oneshot::channel();
            match self.sender.as_ref().map(|s| s.send((record.clone(), done))) {
                Some(Ok(())) => wait
                    .await
                    .unwrap_or_else(|_| Err("the journal writer stopped".into())),
                _ => Err("the journal writer stopped".into()),
            }
        };
        let Err(detail) = result else {
            return Ok(());
        };
        self.lost.store(true, Ordering::SeqCst);
        if matches!(record, Record::Intent { .. }) {
            return Err(self.error(detail));
        }
        let saved = self
            .recovery
            .lock()
            .map_err(|_| self.error(detail.clone()))?
            .save(record);
        match saved {
            Ok(_) => Ok(()),
            Err(err) => Err(self.error(format!(
                "{detail}; the recovery file could not be written either: {err}"
            ))),
        }
    }

    fn error(&self, detail: String) -> JournalError {
        JournalError::Remote {
            location: self.location.clone(),
            detail,
        }
    }

    /// Returns the recovery file, once one was written.
    pub fn recovery_file(&self) -> Option<PathBuf> {
        self.recovery.lock().ok().and_then(|r| r.path.clone())
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        // The writer task ends once the queue is closed and drained.
        self.sender.take();
    }
}

struct Writer {
    client: Arc<Client>,
    /// The batch insert, prepared once: a statement sent as text would
    /// cost a second round trip on every batch.
    statement: tokio_postgres::Statement,
    state_id: i64,
    run_id: i64,
    fence: i64,
    lease: Duration,
}

impl Writer {
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<Item>, lost: Arc<AtomicBool>) {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesOrdered;
        // A few batches are sent without waiting for the one before
        // (pipelining on the one connection): the server commits them in
        // order, and a create's intent waits for less than a round trip
        // more than its own commit. An outcome is only ever sent after its
        // intent was acknowledged, so no batch depends on another's order.
        const IN_FLIGHT: usize = 4;
        let writer = &self;
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                item = receiver.recv(), if open && in_flight.len() < IN_FLIGHT => {
                    let Some(first) = item else {
                        open = false;
                        continue;
                    };
                    let mut batch = vec![first];
                    while let Ok(item) = receiver.try_recv() {
                        batch.push(item);
                    }
                    let lost = lost.clone();
                    in_flight.push_back(async move {
                        let result = if lost.load(Ordering::SeqCst) {
                            Err("the connection was lost earlier in this run".to_string())
                        } else {
                            let records: Vec<&Record> = batch.iter().map(|(r, _)| r).collect();
                            writer.write(&records).await
                        };
                        if result.is_err() {
                            lost.store(true, Ordering::SeqCst);
                        }
                        for (_, done) in batch {
                            let _ = done.send(result.clone());
                        }
                    });
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            }
        }
    }

    /// Writes `records` in one transaction that first checks the fence:
    /// a run whose lock was taken over writes nothing.
    async fn write(&self, records: &[&Record]) -> Result<(), String> {
        let mut addresses = Vec::with_capacity(records.len());
        let mut opens = Vec::with_capacity(records.len());
        let mut lines = Vec::with_capacity(records.len());
        let mut closes = Vec::new();
        for record in records {
            let address = address_of(record);
            if let (Record::Created { .. } | Record::Failed { .. }, Some(a)) = (record, &address) {
                closes.push(a.clone());
            }
            opens.push(matches!(record, Record::Intent { .. }));
            addresses.push(address);
            lines.push(serde_json::to_string(record).unwrap_or_default());
        }

        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &self.state_id,
            &self.run_id,
            &self.fence,
            &addresses,
            &opens,
            &lines,
            &closes,
        ];
        let write = self.client.execute(&self.statement, &params);
        match tokio::time::timeout(self.lease, write).await {
            Ok(Ok(n)) if n as usize == records.len() => Ok(()),
            Ok(Ok(_)) => Err(
                "this run's lock was taken over (its fence moved on); it writes nothing more"
                    .into(),
            ),
            Ok(Err(err)) => Err(detail(&err)),
            Err(_) => Err(format!(
                "no answer within the lease of {}s",
                self.lease.as_secs()
            )),
        }
    }
}

/// Returns the statement that writes one batch of records in schema `s`,
/// after checking the run's fence.
fn batch_sql(s: &str) -> String {
    format!(
        "WITH fence AS (
                 SELECT fence FROM {s}.states WHERE id = $1 AND fence = $3 FOR SHARE
             ), closed AS (
                 UPDATE {s}.journal SET open = false
                 WHERE state_id = $1 AND open AND address = ANY($7) AND EXISTS (SELECT 1 FROM fence)
             )
             INSERT INTO {s}.journal (state_id, run_id, address, open, record)
             SELECT $1, $2, a, o, r
             FROM unnest($4::text[], $5::bool[], $6::text[]) WITH ORDINALITY AS x(a, o, r, n)
             WHERE EXISTS (SELECT 1 FROM fence)
             ORDER BY n"
    )
}
