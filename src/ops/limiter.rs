//! Adaptive concurrency: how many creates may be in flight at once.
//!
//! The API's real bound is its rate limit, which the user does not know and
//! which can change; `--parallelism` is only a ceiling. [`Controller`] finds
//! the concurrency the server accepts the way TCP congestion control and
//! Netflix's concurrency-limits do:
//!
//! - a run starts with **one create alone** and opens up only after it
//!   succeeds, so a wrong owner token, region or URL costs one request;
//! - **slow start**: every clean answer adds one slot (the limit doubles
//!   per round trip) until the first 429, a rising answer time, or the
//!   ceiling;
//! - a 429 **cuts** the limit by half, once per congestion event (429s to
//!   requests sent before the cut are the same event), and records the
//!   *plateau*: one less than the number in flight when the throttled
//!   request was sent. Against a server that sheds load beyond L requests
//!   in flight that is exactly L;
//! - **fast recovery**: below the plateau every clean answer adds a slot
//!   again, so a cut costs about one round trip, not a slow climb;
//! - at the plateau the limit **holds**, and probes one slot above it only
//!   after a run of clean answers; every later 429 doubles the run required
//!   before the next probe (a clean probe halves it), so a server that stays
//!   at its limit sees a 429 every few hundred creates, not every few;
//! - a **rising answer time** (a smoothed answer time over twice the recent
//!   minimum, and 10 ms over it) is the early sign of a queue: the limit
//!   stops growing.
//!   Single slow answers (a heavy tail) are clipped so they cannot stop it.
//!
//! The core is pure: it is told when each request was sent, how many were in
//! flight then, and when and how it was answered, so its tests drive it with
//! a fake clock. [`Limiter`] wraps it for the apply's single-threaded
//! runtime.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The multiplicative cut on a 429.
const CUT: f64 = 0.5;
/// Clean round trips at the plateau before the first probe above it.
const FIRST_PROBE_WINDOWS: usize = 2;
/// Clean round trips at a probe's limit before it becomes the plateau.
const PROBE_CLEAN_WINDOWS: usize = 2;
/// Most clean round trips between probes, after many throttled ones.
const MAX_PROBE_WINDOWS: usize = 64;
/// A smoothed answer time this many times the minimum means a queue...
const LATENCY_TOLERANCE: f64 = 2.0;
/// ...if it is also this much longer: against a fast server (a local one
/// answering in a millisecond) answer times vary twofold without any queue.
const LATENCY_SLACK: Duration = Duration::from_millis(10);
/// Samples above this many times the minimum are clipped before smoothing,
/// so that one slow answer in a hundred does not read as a queue.
const LATENCY_CLIP: f64 = 4.0;
/// Weight of a new sample in the smoothed answer time.
const LATENCY_WEIGHT: f64 = 0.1;
/// Answers after which the minimum answer time is forgotten and measured
/// again, so a server that became slower for good is not read as queued
/// for ever.
const MIN_RTT_WINDOW: usize = 256;

/// What the limiter knew about a request when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub at: Instant,
    /// Requests in flight, this one included.
    pub in_flight: usize,
}

/// Where the controller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One create alone, until the first one succeeds.
    Probe,
    /// Growing by one slot per clean answer.
    SlowStart,
    /// At or below the plateau, probing above it now and then.
    Steady,
}

/// The adaptive concurrency controller (pure; see the module docs).
#[derive(Debug, Clone)]
pub struct Controller {
    ceiling: usize,
    limit: usize,
    phase: Phase,
    /// Highest limit known to be accepted.
    plateau: usize,
    /// Clean answers since the limit last reached the plateau or was cut.
    clean: usize,
    /// Clean round trips required at the plateau before the next probe.
    probe_windows: usize,
    /// When the current probe above the plateau started.
    probe_started: Option<Instant>,
    /// Clean answers to requests sent since the probe started.
    probe_clean: usize,
    last_cut: Option<Instant>,
    min_rtt: Option<Duration>,
    next_min_rtt: Option<Duration>,
    rtt_samples: usize,
    smoothed_rtt: Option<Duration>,
    throttled: u64,
}

impl Controller {
    /// Returns a controller that lets at most `ceiling` requests fly.
    pub fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Controller {
            ceiling,
            limit: 1,
            phase: Phase::Probe,
            plateau: ceiling,
            clean: 0,
            probe_windows: FIRST_PROBE_WINDOWS,
            probe_started: None,
            probe_clean: 0,
            last_cut: None,
            min_rtt: None,
            next_min_rtt: None,
            rtt_samples: 0,
            smoothed_rtt: None,
            throttled: 0,
        }
    }

    /// Returns how many requests may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Returns the ceiling (`--parallelism`).
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Returns the phase the controller is in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Returns how many answers were 429.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Returns the smoothed answer time of clean answers, once known.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.smoothed_rtt
    }

    /// Records a clean answer (the create succeeded) to a request sent as
    /// `sent`, answered at `now`.
    pub fn on_success(&mut self, sent: Sent, now: Instant) {
        self.sample_rtt(now.saturating_duration_since(sent.at));
        match self.phase {
            Phase::Probe => {
                self.phase = Phase::SlowStart;
                self.grow_in_slow_start();
            }
            Phase::SlowStart => {
                // Grow only while the window is in use: answers to requests
                // sent at a low concurrency say nothing about a higher one.
                if self.queueing() {
                    self.settle(self.limit);
                } else if sent.in_flight * 2 >= self.limit {
                    self.grow_in_slow_start();
                }
            }
            Phase::Steady => self.steady_success(sent, now),
        }
    }

    /// Records a 429 to a request sent as `sent`, answered at `now`.
    pub fn on_throttled(&mut self, sent: Sent, now: Instant) {
        self.throttled += 1;
        if self.phase == Phase::Probe {
            // The probe goes on alone until a create succeeds.
            return;
        }
        if self.last_cut.is_some_and(|cut| sent.at < cut) {
            // Sent before the last cut: part of the event already acted on.
            return;
        }
        let level = sent.in_flight.max(1);
        if self.phase == Phase::SlowStart {
            // The first 429 says where the server's limit is.
            self.plateau = (level - 1).clamp(1, self.ceiling);
        } else {
            if level <= self.plateau {
                // Throttled at or below what was accepted: the limit is
                // lower than believed (another client, or a per-second
                // limit whose burst made a probe look clean).
                self.plateau = (level - 1).max(1);
            }
            // Whether a probe was refused or the plateau was too high, the
            // server is at its limit: probe less often.
            self.probe_windows = (self.probe_windows * 2).min(MAX_PROBE_WINDOWS);
        }
        let cut = ((self.limit as f64) * CUT).floor() as usize;
        self.limit = cut.clamp(1, self.plateau);
        self.phase = Phase::Steady;
        self.clean = 0;
        self.probe_started = None;
        self.probe_clean = 0;
        self.last_cut = Some(now);
    }

    /// Records an answer that was neither clean nor a 429 (a refusal, an
    /// error, a timeout): it says nothing about the server's capacity.
    pub fn on_other(&mut self) {}

    fn grow_in_slow_start(&mut self) {
        self.limit = (self.limit + 1).min(self.ceiling);
        if self.limit == self.ceiling {
            self.settle(self.ceiling);
        }
    }

    /// Leaves slow start with `plateau` as the highest accepted limit.
    fn settle(&mut self, plateau: usize) {
        self.phase = Phase::Steady;
        self.plateau = plateau;
        self.clean = 0;
    }

    fn steady_success(&mut self, sent: Sent, now: Instant) {
        if self.limit < self.plateau {
            // Fast recovery after a cut, back to what was accepted.
            if !self.queueing() {
                self.limit += 1;
                if self.limit == self.plateau {
                    self.clean = 0;
                }
            }
            return;
        }
        if let Some(started) = self.probe_started {
            if sent.at >= started {
                self.probe_clean += 1;
            }
            // Two full windows at the new limit came back clean: accept it.
            // (One could be a token bucket's burst.)
            if self.probe_clean >= PROBE_CLEAN_WINDOWS * self.limit {
                self.plateau = self.limit;
                self.probe_started = None;
                self.probe_clean = 0;
                self.clean = 0;
                self.probe_windows = (self.probe_windows / 2).max(FIRST_PROBE_WINDOWS);
            }
            return;
        }
        self.clean += 1;
        if self.limit >= self.ceiling || self.queueing() {
            return;
        }
        if self.clean >= self.probe_windows * self.plateau && sent.in_flight >= self.limit {
            self.limit += 1;
            // Requests sent from now on fly at the new limit.
            self.probe_started = Some(now);
            self.probe_clean = 0;
        }
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        self.rtt_samples += 1;
        self.next_min_rtt = Some(self.next_min_rtt.map_or(rtt, |m| m.min(rtt)));
        let min = self.min_rtt.map_or(rtt, |m| m.min(rtt));
        self.min_rtt = Some(min);
        if self.rtt_samples.is_multiple_of(MIN_RTT_WINDOW) {
            self.min_rtt = self.next_min_rtt.take();
        }
        let clipped = rtt.min(min.mul_f64(LATENCY_CLIP));
        self.smoothed_rtt = Some(match self.smoothed_rtt {
            None => clipped,
            Some(s) => s.mul_f64(1.0 - LATENCY_WEIGHT) + clipped.mul_f64(LATENCY_WEIGHT),
        });
    }

    /// Returns true when answers take markedly longer than the minimum,
    /// the sign of a queue building on the server.
    fn queueing(&self) -> bool {
        match (self.smoothed_rtt, self.min_rtt) {
            (Some(smoothed), Some(min)) => {
                smoothed.as_secs_f64() > min.as_secs_f64() * LATENCY_TOLERANCE
                    && smoothed > min + LATENCY_SLACK
            }
            _ => false,
        }
    }
}

/// Lets requests into flight as the [`Controller`] allows, on one thread.
pub struct Limiter {
    controller: RefCell<Controller>,
    /// Slots taken: requests in flight, and throttled creates waiting to
    /// send again (they keep their slot, which paces the retries of a
    /// server that counts requests per second).
    in_flight: Cell<usize>,
    changed: Notify,
}

/// A slot for one create's requests. Report each answer with one of its
/// methods; dropping it frees the slot.
pub struct Permit<'a> {
    limiter: &'a Limiter,
    sent: Sent,
    /// False while [`Permit::resend`] waits for a slot again, so that a
    /// wait cut short (the future dropped) does not give a slot back twice.
    holding: bool,
}

impl Limiter {
    /// Returns a limiter with `ceiling` as its most requests in flight.
    pub fn new(ceiling: usize) -> Self {
        Limiter {
            controller: RefCell::new(Controller::new(ceiling)),
            in_flight: Cell::new(0),
            changed: Notify::new(),
        }
    }

    /// Waits for a slot; the request should be sent at once.
    pub async fn acquire(&self) -> Permit<'_> {
        self.take_slot().await;
        Permit {
            limiter: self,
            sent: self.sent_now(),
            holding: true,
        }
    }

    async fn take_slot(&self) {
        loop {
            // Made before the check, so a slot freed in between still wakes
            // this waiter.
            let changed = self.changed.notified();
            let in_flight = self.in_flight.get();
            if in_flight < self.limit() {
                self.in_flight.set(in_flight + 1);
                return;
            }
            changed.await;
        }
    }

    fn sent_now(&self) -> Sent {
        Sent {
            at: now(),
            in_flight: self.in_flight.get(),
        }
    }

    /// Returns the current limit.
    pub fn limit(&self) -> usize {
        self.controller.borrow().limit()
    }

    /// Returns the ceiling.
    pub fn ceiling(&self) -> usize {
        self.controller.borrow().ceiling()
    }

    /// Returns how many answers were 429.
    pub fn throttled(&self) -> u64 {
        self.controller.borrow().throttled()
    }

    fn release(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.changed.notify_waiters();
    }
}

impl Permit<'_> {
    /// Reports a clean answer.
    pub fn succeeded(self) {
        self.limiter
            .controller
            .borrow_mut()
            .on_success(self.sent, now());
    }

    /// Reports a 429; the slot stays taken for the retry.
    pub fn throttled(&mut self) {
        self.limiter
            .controller
            .borrow_mut()
            .on_throttled(self.sent, now());
    }

    /// Reports any other answer.
    pub fn other(self) {
        self.limiter.controller.borrow_mut().on_other();
    }

    /// Makes ready to send again after a 429. When the limit was cut below
    /// the slots taken, the slot goes back and is waited for like a new
    /// one, so retries too respect the lower limit.
    pub async fn resend(&mut self) {
        if self.limiter.in_flight.get() > self.limiter.limit() {
            self.holding = false;
            self.limiter.release();
            self.limiter.take_slot().await;
            self.holding = true;
        }
        self.sent = self.limiter.sent_now();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.holding {
            self.limiter.release();
        }
    }
}

/// Returns the time now from tokio's clock, which tests can pause.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What the progress of a run looks like at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub done: usize,
    pub total: usize,
    /// Requests allowed in flight now.
    pub concurrency: usize,
    pub ceiling: usize,
    /// Time left at the recent rate, once it can be measured.
    pub eta: Option<Duration>,
}

/// Tracks completions and says when the progress is worth showing again:
/// when the concurrency changed, or a second after it was last shown.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    eta: Eta,
    shown: Option<(Instant, usize)>,
}

/// Longest time between two progress reports while creates complete.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Progress {
    /// Returns the progress of a run of `total` creates.
    pub fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            eta: Eta::default(),
            shown: None,
        }
    }

    /// Records a create finished at `now`.
    pub fn complete(&mut self, now: Instant) {
        self.done += 1;
        self.eta.complete(now);
    }

    /// Returns a snapshot to show, when one is due.
    pub fn due(&mut self, concurrency: usize, ceiling: usize, now: Instant) -> Option<Snapshot> {
        let due = match self.shown {
            None => true,
            Some((at, shown)) => {
                shown != concurrency || now.saturating_duration_since(at) >= PROGRESS_EVERY
            }
        };
        if !due {
            return None;
        }
        self.shown = Some((now, concurrency));
        Some(Snapshot {
            done: self.done,
            total: self.total,
            concurrency,
            ceiling,
            eta: self.eta.left(self.total.saturating_sub(self.done)),
        })
    }
}

/// Estimates the time left from the rate of recent completions.
#[derive(Debug, Default)]
pub struct Eta {
    recent: VecDeque<Instant>,
}

/// Completions the rate is measured over.
const ETA_WINDOW: usize = 64;

impl Eta {
    /// Records a completion at `now`.
    pub fn complete(&mut self, now: Instant) {
        if self.recent.len() == ETA_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
    }

    /// Returns the time left for `remaining` completions at the recent
    /// rate, once there are two completions to measure it from.
    pub fn left(&self, remaining: usize) -> Option<Duration> {
        let (first, last) = (self.recent.front()?, self.recent.back()?);
        let span = last.saturating_duration_since(*first);
        let intervals = self.recent.len().checked_sub(1).filter(|n| *n > 0)?;
        Some(span.mul_f64(remaining as f64 / intervals as f64))
    }
}

#[cfg(test)]
mod tests;
