//! Hands each new secret to every sink, on a thread of its own.
//!
//! Every secret a create received ends in every sink or in a rescue file:
//! a sink that fails (or panics) is not tried again during the run, so
//! the secrets behind it are rescued at once instead of each waiting for
//! the same failure; and a create that stops waiting (an interrupt) keeps
//! its secret itself, since it shares it with the sink thread.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::{NewToken, Rescue, Rescued, SecretSink, SinkError};
use crate::model::address::Address;
use crate::secret::Secret;

/// What happened when one secret was handed to the sinks.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The sinks that failed.
    pub failures: Vec<SinkError>,
    /// `None` when every sink took the secret; otherwise where it was
    /// kept instead.
    pub rescue: Option<Rescued>,
    /// The secret was rescued because the run was interrupted, before
    /// every sink had it: no sink failed.
    pub interrupted: bool,
}

/// Hands `token` to every sink; for each that fails, the secret is kept in
/// a rescue file (written once per token) instead.
pub fn deliver_all(
    sinks: &mut [Box<dyn SecretSink>],
    rescue: &Rescue,
    token: &NewToken<'_>,
) -> Delivery {
    let mut broken = vec![false; sinks.len()];
    deliver_each(sinks, &mut broken, rescue, token)
}

/// Hands `token` to every sink not `broken` yet; a sink that fails or
/// panics is marked broken, and the secret goes to a rescue file when any
/// sink did not take it.
fn deliver_each(
    sinks: &mut [Box<dyn SecretSink>],
    broken: &mut [bool],
    rescue: &Rescue,
    token: &NewToken<'_>,
) -> Delivery {
    let mut delivery = Delivery::default();
    for (sink, broken) in sinks.iter_mut().zip(broken.iter_mut()) {
        let result = if *broken {
            Err(SinkError {
                sink: sink.describe(),
                detail: "not tried: it failed earlier in this run".into(),
                hint: None,
            })
        } else {
            // A sink's bug must not take the secret down with it.
            panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(token))).unwrap_or_else(|_| {
                Err(SinkError {
                    sink: sink.describe(),
                    detail: "the sink failed unexpectedly (it panicked)".into(),
                    hint: None,
                })
            })
        };
        if let Err(err) = result {
            *broken = true;
            delivery.rescue.get_or_insert_with(|| rescue.keep(token));
            delivery.failures.push(err);
        }
    }
    delivery
}

/// Where a secret is: waiting for the sink thread, taken by it, or kept
/// in a rescue file by its create (the thread then skips it).
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const RESCUED: u8 = 2;
/// Every sink has it, or its rescue file does.
const DONE: u8 = 3;

/// The secrets of this process on their way to the sinks, with where to
/// rescue them: a second interrupt, which exits at once, first writes
/// every one a sink may not have yet to a rescue file
/// ([`rescue_all_in_flight`]).
static IN_FLIGHT: std::sync::Mutex<Vec<(std::sync::Weak<Parcel>, Rescue)>> =
    std::sync::Mutex::new(Vec::new());

/// Writes every secret still on its way to a sink to a rescue file, for a
/// process about to exit at once (a second interrupt). A secret a sink is
/// taking right now may end in both, which loses nothing. Returns how many
/// were written.
pub fn rescue_all_in_flight() -> usize {
    let in_flight = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    let mut saved = 0;
    for (parcel, rescue) in in_flight.iter() {
        let Some(parcel) = parcel.upgrade() else {
            continue;
        };
        if matches!(parcel.state.load(Ordering::SeqCst), QUEUED | TAKEN)
            && rescue.keep(&parcel.new_token()).file().is_some()
        {
            // The sink thread skips one it has not started on.
            let _ =
                parcel
                    .state
                    .compare_exchange(QUEUED, RESCUED, Ordering::SeqCst, Ordering::SeqCst);
            saved += 1;
        }
    }
    saved
}

/// One secret on its way to the sinks, shared by its create and the sink
/// thread.
struct Parcel {
    address: Address,
    id: u64,
    created_at: i64,
    token: Secret,
    state: AtomicU8,
}

impl Parcel {
    fn new_token(&self) -> NewToken<'_> {
        NewToken {
            address: &self.address,
            id: self.id,
            created_at: self.created_at,
            token: &self.token,
        }
    }
}

/// One secret handed to the sink thread.
struct Handover {
    parcel: Arc<Parcel>,
    done: tokio::sync::oneshot::Sender<Delivery>,
}

/// How often a create waiting for the sinks looks for an interrupt.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// Runs the sinks on a thread of their own, so that their fsyncs and
/// commands do not stall the requests of other creates in flight.
pub struct SinkWorker {
    sender: Option<std::sync::mpsc::Sender<Handover>>,
    thread: Option<std::thread::JoinHandle<()>>,
    rescue: Rescue,
    /// The sinks' names, for messages.
    names: String,
}

impl SinkWorker {
    /// Starts the thread; it owns the sinks until [`SinkWorker::finish`].
    pub fn start(mut sinks: Vec<Box<dyn SecretSink>>, rescue: Rescue) -> io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::channel::<Handover>();
        let own_rescue = rescue.clone();
        let names = sinks
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join(", ");
        let thread = std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || {
                let mut broken = vec![false; sinks.len()];
                for handover in receiver {
                    let parcel = &handover.parcel;
                    // A secret its create already rescued is not handed to
                    // a sink that may be slow.
                    if parcel
                        .state
                        .compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err()
                    {
                        continue;
                    }
                    let delivery =
                        deliver_each(&mut sinks, &mut broken, &rescue, &parcel.new_token());
                    parcel.state.store(DONE, Ordering::SeqCst);
                    let _ = handover.done.send(delivery);
                }
            })?;
        Ok(SinkWorker {
            sender: Some(sender),
            thread: Some(thread),
            rescue: own_rescue,
            names,
        })
    }

    /// Hands a new token to the sinks and waits until every sink has it
    /// (or its rescue file does). When `interrupted` says so, before or
    /// while it waits, the secret goes to a rescue file at once instead.
    pub async fn deliver(
        &self,
        address: &Address,
        id: u64,
        created_at: i64,
        token: Secret,
        interrupted: &dyn Fn() -> bool,
    ) -> Delivery {
        let parcel = Arc::new(Parcel {
            address: address.clone(),
            id,
            created_at,
            token,
            state: AtomicU8::new(QUEUED),
        });
        {
            let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.retain(|(p, _)| p.strong_count() > 0);
            in_flight.push((Arc::downgrade(&parcel), self.rescue.clone()));
        }
        if interrupted()
            && let Some(delivery) = self.rescue_interrupted(&parcel)
        {
            return delivery;
        }
        let (done, mut wait) = tokio::sync::oneshot::channel();
        let handover = Handover {
            parcel: parcel.clone(),
            done,
        };
        let sent = self
            .sender
            .as_ref()
            .is_some_and(|sender| sender.send(handover).is_ok());
        if !sent {
            return self.stopped(&parcel);
        }
        let mut tried_rescue = false;
        loop {
            tokio::select! {
                delivery = &mut wait => {
                    // The thread ended without an answer: the secret is
                    // still here to keep.
                    return delivery.unwrap_or_else(|_| self.stopped(&parcel));
                }
                () = tokio::time::sleep(INTERRUPT_POLL) => {
                    if interrupted() && !tried_rescue {
                        tried_rescue = true;
                        if let Some(delivery) = self.rescue_interrupted(&parcel) {
                            return delivery;
                        }
                    }
                }
            }
        }
    }

    /// Keeps a secret the sinks do not have yet, as the run was
    /// interrupted: the sink thread skips it if it has not started on it.
    /// Returns `None` when the rescue file could not be written: the
    /// secret then keeps waiting for the sinks rather than go nowhere.
    fn rescue_interrupted(&self, parcel: &Parcel) -> Option<Delivery> {
        let rescued = self.rescue.keep(&parcel.new_token());
        rescued.file()?;
        // Only once it is safe in the rescue file: the sink thread skips it
        // if it has not started on it (if it has, it may end in both).
        let _ = parcel
            .state
            .compare_exchange(QUEUED, RESCUED, Ordering::SeqCst, Ordering::SeqCst);
        Some(Delivery {
            failures: vec![SinkError {
                sink: self.names.clone(),
                detail: "interrupted before every sink had the secret".into(),
                hint: None,
            }],
            rescue: Some(rescued),
            interrupted: true,
        })
    }

    /// Keeps a secret the sink thread cannot take any more.
    fn stopped(&self, parcel: &Parcel) -> Delivery {
        parcel.state.store(RESCUED, Ordering::SeqCst);
        Delivery {
            failures: vec![SinkError {
                sink: self.names.clone(),
                detail: "the sink thread stopped".into(),
                hint: None,
            }],
            rescue: Some(self.rescue.keep(&parcel.new_token())),
            interrupted: false,
        }
    }

    /// Waits for the deliveries in progress and stops the thread. With
    /// `wait` false (an interrupted run, whose undelivered secrets are all
    /// rescued) it does not wait for a sink that may be slow: the thread
    /// skips what is queued and ends with the process.
    pub fn finish(mut self, wait: bool) {
        if wait {
            self.stop();
        } else {
            self.sender.take();
            self.thread.take();
        }
    }

    fn stop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SinkWorker {
    fn drop(&mut self) {
        self.stop();
    }
}
