//! Hands each new secret to every sink, on a thread of its own.

use std::io;

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
}

/// Hands `token` to every sink; for each that fails, the secret is kept in
/// a rescue file (written once per token) instead.
pub fn deliver_all(
    sinks: &mut [Box<dyn SecretSink>],
    rescue: &Rescue,
    token: &NewToken<'_>,
) -> Delivery {
    let mut delivery = Delivery::default();
    for sink in sinks.iter_mut() {
        if let Err(err) = sink.deliver(token) {
            delivery.rescue.get_or_insert_with(|| rescue.keep(token));
            delivery.failures.push(err);
        }
    }
    delivery
}

/// One secret on its way to the sink thread.
struct Handover {
    address: Address,
    id: u64,
    created_at: i64,
    token: Secret,
    done: tokio::sync::oneshot::Sender<Delivery>,
}

/// Runs the sinks on a thread of their own, so that their fsyncs and
/// commands do not stall the requests of other creates in flight.
pub struct SinkWorker {
    sender: Option<std::sync::mpsc::Sender<Handover>>,
    thread: Option<std::thread::JoinHandle<()>>,
    rescue: Rescue,
}

impl SinkWorker {
    /// Starts the thread; it owns the sinks until [`SinkWorker::finish`].
    pub fn start(mut sinks: Vec<Box<dyn SecretSink>>, rescue: Rescue) -> io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::channel::<Handover>();
        let own_rescue = rescue.clone();
        let thread = std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || {
                for handover in receiver {
                    let token = NewToken {
                        address: &handover.address,
                        id: handover.id,
                        created_at: handover.created_at,
                        token: &handover.token,
                    };
                    let delivery = deliver_all(&mut sinks, &rescue, &token);
                    let _ = handover.done.send(delivery);
                }
            })?;
        Ok(SinkWorker {
            sender: Some(sender),
            thread: Some(thread),
            rescue: own_rescue,
        })
    }

    /// Hands a new token to the sinks and waits until every sink has it
    /// (or its rescue file does).
    pub async fn deliver(
        &self,
        address: &Address,
        id: u64,
        created_at: i64,
        token: Secret,
    ) -> Delivery {
        let (done, wait) = tokio::sync::oneshot::channel();
        let handover = Handover {
            address: address.clone(),
            id,
            created_at,
            token,
            done,
        };
        let stopped = |rescue: Rescued| Delivery {
            failures: vec![SinkError {
                sink: "all sinks".into(),
                detail: "the sink thread stopped".into(),
                hint: None,
            }],
            rescue: Some(rescue),
        };
        let Some(sender) = self.sender.as_ref() else {
            return stopped(Rescued::Lost);
        };
        match sender.send(handover) {
            Ok(()) => wait.await.unwrap_or_else(|_| stopped(Rescued::Lost)),
            // The secret came back with the failed send: keep it.
            Err(std::sync::mpsc::SendError(handover)) => {
                let token = NewToken {
                    address: &handover.address,
                    id: handover.id,
                    created_at: handover.created_at,
                    token: &handover.token,
                };
                stopped(self.rescue.keep(&token))
            }
        }
    }

    /// Waits for the deliveries in progress and stops the thread.
    pub fn finish(mut self) {
        self.stop();
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
