//! The controller driven by a fake clock: single steps, then whole runs
//! against simulated servers that shed load by concurrency or by rate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn sent(at: Instant, in_flight: usize) -> Sent {
    Sent { at, in_flight }
}

/// Answers `count` requests, each sent at `in_flight`, cleanly after `rtt`.
fn clean(c: &mut Controller, t: &mut Instant, count: usize, in_flight: usize, rtt: Duration) {
    for _ in 0..count {
        let at = *t;
        *t += rtt;
        c.on_success(sent(at, in_flight), *t);
    }
}

/// Answers `count` requests cleanly after `rtt`, each sent with the window
/// full.
fn full(c: &mut Controller, t: &mut Instant, count: usize, rtt: Duration) {
    for _ in 0..count {
        let in_flight = c.limit();
        clean(c, t, 1, in_flight, rtt);
    }
}

#[test]
fn probes_with_one_create_until_one_succeeds() {
    let t = Instant::now();
    let mut c = Controller::new(16);
    assert_eq!((c.limit(), c.phase()), (1, Phase::Probe));
    c.on_throttled(sent(t, 1), t + MS);
    c.on_other();
    assert_eq!((c.limit(), c.phase()), (1, Phase::Probe));
    c.on_success(sent(t, 1), t + 50 * MS);
    assert_eq!((c.limit(), c.phase()), (2, Phase::SlowStart));
    assert_eq!(c.throttled(), 1);
}

#[test]
fn slow_start_grows_by_one_per_clean_answer_up_to_the_ceiling() {
    let mut t = Instant::now();
    let mut c = Controller::new(8);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    for expected in 3..=8 {
        full(&mut c, &mut t, 1, 50 * MS);
        assert_eq!(c.limit(), expected);
    }
    assert_eq!(c.phase(), Phase::Steady);
    clean(&mut c, &mut t, 1000, 8, 50 * MS);
    assert_eq!(c.limit(), 8, "never above the ceiling");
}

#[test]
fn slow_start_does_not_grow_on_answers_from_an_unused_window() {
    let mut t = Instant::now();
    let mut c = Controller::new(16);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    full(&mut c, &mut t, 4, 50 * MS);
    assert_eq!(c.limit(), 6);
    // Only one create at a time is being sent (say, the last ones).
    clean(&mut c, &mut t, 20, 1, 50 * MS);
    assert_eq!(c.limit(), 6);
}

#[test]
fn a_429_cuts_by_half_and_records_the_plateau_once_per_event() {
    let mut t = Instant::now();
    let mut c = Controller::new(16);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    while c.limit() < 9 {
        full(&mut c, &mut t, 1, 50 * MS);
    }
    // The 9th in flight is refused: the server takes 8.
    let before_cut = t;
    c.on_throttled(sent(before_cut, 9), t + MS);
    assert_eq!((c.limit(), c.phase()), (4, Phase::Steady));
    // More 429s to requests sent before the cut are the same event.
    c.on_throttled(sent(before_cut, 10), t + 2 * MS);
    c.on_throttled(sent(before_cut, 8), t + 3 * MS);
    assert_eq!(c.limit(), 4);
    assert_eq!(c.throttled(), 3);
    // Fast recovery: one slot per clean answer, up to the plateau of 8.
    t += 3 * MS;
    clean(&mut c, &mut t, 4, 8, 50 * MS);
    assert_eq!(c.limit(), 8);
    clean(&mut c, &mut t, 10, 8, 50 * MS);
    assert_eq!(c.limit(), 8, "holds at the plateau before probing");
}

#[test]
fn a_throttled_probe_doubles_the_wait_before_the_next_one() {
    let mut t = Instant::now();
    let mut c = Controller::new(16);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    clean(&mut c, &mut t, 1, 2, 50 * MS);
    // Refused at 3 in flight: the plateau is 2.
    c.on_throttled(sent(t, 3), t + MS);
    t += MS;
    assert_eq!(c.limit(), 1);
    clean(&mut c, &mut t, 1, 2, 50 * MS);
    assert_eq!(c.limit(), 2);
    let mut answers_between_probes = Vec::new();
    for _ in 0..4 {
        let mut answers = 0;
        while c.limit() == 2 {
            clean(&mut c, &mut t, 1, 2, 50 * MS);
            answers += 1;
        }
        answers_between_probes.push(answers);
        assert_eq!(c.limit(), 3, "a probe one above the plateau");
        c.on_throttled(sent(t, 3), t + MS);
        t += MS;
        clean(&mut c, &mut t, 1, 2, 50 * MS);
        assert_eq!(c.limit(), 2);
    }
    assert_eq!(answers_between_probes, [4, 8, 16, 32]);
}

#[test]
fn a_clean_probe_raises_the_plateau() {
    let mut t = Instant::now();
    let mut c = Controller::new(16);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    clean(&mut c, &mut t, 2, 2, 50 * MS);
    c.on_throttled(sent(t, 4), t + MS);
    t += MS;
    // Plateau 3; recover, then wait for the probe.
    clean(&mut c, &mut t, 2, 3, 50 * MS);
    assert_eq!(c.limit(), 3);
    while c.limit() == 3 {
        clean(&mut c, &mut t, 1, 3, 50 * MS);
    }
    // The server now takes more: a full window at 4 comes back clean.
    clean(&mut c, &mut t, 4, 4, 50 * MS);
    while c.limit() == 4 {
        clean(&mut c, &mut t, 1, 4, 50 * MS);
    }
    assert_eq!(c.limit(), 5, "probing goes on from the new plateau");
}

#[test]
fn a_429_below_the_plateau_lowers_it() {
    let mut t = Instant::now();
    let mut c = Controller::new(16);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    while c.limit() < 16 {
        full(&mut c, &mut t, 1, 50 * MS);
    }
    // Another client now takes most of the server: refused at 5 in flight.
    c.on_throttled(sent(t, 5), t + MS);
    t += MS;
    assert_eq!(c.limit(), 4);
    clean(&mut c, &mut t, 15, 4, 50 * MS);
    assert_eq!(c.limit(), 4);
    clean(&mut c, &mut t, 1, 4, 50 * MS);
    assert_eq!(c.limit(), 5, "probes again after four clean windows");
}

#[test]
fn rising_answer_times_stop_growth_but_a_heavy_tail_does_not() {
    let mut t = Instant::now();
    let mut c = Controller::new(64);
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    clean(&mut c, &mut t, 3, 4, 50 * MS);
    assert_eq!(c.limit(), 5);
    // A queue builds: answers take three times as long.
    for _ in 0..30 {
        full(&mut c, &mut t, 1, 150 * MS);
    }
    let held = c.limit();
    assert!(held < 20, "grew to {held} while answers slowed");
    assert_eq!(c.phase(), Phase::Steady);

    // One answer in a hundred at 1 s does not stop slow start.
    let mut c = Controller::new(64);
    let mut t = Instant::now();
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    for i in 0..62 {
        let rtt = if i % 10 == 5 { 1000 * MS } else { 50 * MS };
        full(&mut c, &mut t, 1, rtt);
    }
    assert_eq!(c.limit(), 64);

    // Nor does a fast server's jitter: 1 ms answers, then 3 ms ones.
    let mut c = Controller::new(64);
    let mut t = Instant::now();
    clean(&mut c, &mut t, 1, 1, MS);
    full(&mut c, &mut t, 62, 3 * MS);
    assert_eq!(c.limit(), 64);
}

#[test]
fn eta_follows_the_recent_rate() {
    let t = Instant::now();
    let mut progress = Progress::new(100);
    let first = progress.due(1, 16, t).unwrap();
    assert_eq!((first.done, first.eta), (0, None));
    assert_eq!(progress.due(1, 16, t + MS), None, "nothing changed");
    assert_eq!(progress.due(2, 16, t + 2 * MS).unwrap().concurrency, 2);
    for i in 0..10 {
        progress.complete(t + i * 100 * MS);
    }
    // Ten done, one every 100 ms: 90 more take 9 s.
    let snapshot = progress.due(2, 16, t + 1100 * MS).unwrap();
    assert_eq!(snapshot.done, 10);
    assert_eq!(snapshot.eta, Some(9000 * MS));
    assert_eq!(progress.due(2, 16, t + 1500 * MS), None);
    assert!(progress.due(2, 16, t + 2100 * MS).is_some(), "a second on");
}

#[tokio::test]
async fn the_limiter_lets_in_what_the_controller_allows() {
    use futures_util::FutureExt;
    let limiter = Limiter::new(4);
    let first = limiter.acquire().await;
    assert!(
        limiter.acquire().now_or_never().is_none(),
        "one alone first"
    );
    first.succeeded();
    let mut a = limiter.acquire().await;
    let b = limiter.acquire().await;
    assert!(limiter.acquire().now_or_never().is_none(), "limit 2");
    b.succeeded();
    let c = limiter.acquire().await;
    let d = limiter.acquire().await;
    // Limit 3 with a, c, d in flight; a is refused and the limit is cut to
    // one, so a gives its slot back and waits its turn again.
    a.throttled();
    assert_eq!(limiter.limit(), 1);
    assert_eq!(limiter.throttled(), 1);
    {
        let mut resend = std::pin::pin!(a.resend());
        assert!(resend.as_mut().now_or_never().is_none());
        c.other();
        assert!(resend.as_mut().now_or_never().is_none());
        d.other();
        resend.await;
    }
    assert!(
        limiter.acquire().now_or_never().is_none(),
        "a holds the one slot"
    );
    drop(a);
    assert!(limiter.acquire().now_or_never().is_some());
}

#[tokio::test]
async fn a_resend_cut_short_gives_its_slot_back_once() {
    use futures_util::FutureExt;
    let limiter = Limiter::new(4);
    limiter.acquire().await.succeeded();
    let mut a = limiter.acquire().await;
    let b = limiter.acquire().await;
    a.throttled();
    // Over the limit of one: the resend gives a's slot back and waits.
    assert!(a.resend().now_or_never().is_none());
    drop(a);
    drop(b);
    // Both slots are free again, and no more: the limit is one.
    assert!(limiter.acquire().now_or_never().is_some());
    let held = limiter.acquire().await;
    assert!(limiter.acquire().now_or_never().is_none());
    drop(held);
}

/// How a simulated server refuses load.
#[derive(Clone, Copy)]
enum Shed {
    Nothing,
    /// 429 to a request arriving while `L` are being served.
    Concurrency(usize),
    /// 429 beyond a token bucket of `per_second`, holding `burst`.
    Rate {
        per_second: f64,
        burst: f64,
    },
}

struct Run {
    elapsed: Duration,
    throttled: u64,
    sent: usize,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Answer {
        ok: bool,
        at: Instant,
        in_flight: usize,
    },
    Retry,
}

/// Runs `n` creates against a simulated server the way `Limiter` and the
/// apply do: a throttled create keeps its slot through a 75 ms wait and
/// gives it back first if the limit was cut below the slots taken.
fn simulate(ceiling: usize, n: usize, rtt: impl Fn(usize) -> Duration, shed: Shed) -> Run {
    let start = Instant::now();
    let mut c = Controller::new(ceiling);
    let mut queue = BinaryHeap::new();
    let mut seq = 0u64;
    let (mut taken, mut fresh, mut done, mut sent_count) = (0usize, n, 0usize, 0usize);
    let mut waiting_for_slot = 0usize;
    let mut serving: Vec<Instant> = Vec::new();
    let (mut tokens, mut refilled) = (0.0f64, start);
    if let Shed::Rate { burst, .. } = shed {
        tokens = burst;
    }
    let mut now = start;
    let mut send = |now: Instant,
                    taken: usize,
                    queue: &mut BinaryHeap<_>,
                    seq: &mut u64,
                    sent_count: &mut usize| {
        let index = *sent_count;
        *sent_count += 1;
        serving.retain(|end| *end > now);
        let ok = match shed {
            Shed::Nothing => true,
            Shed::Concurrency(limit) => serving.len() < limit,
            Shed::Rate { per_second, burst } => {
                tokens =
                    (tokens + now.duration_since(refilled).as_secs_f64() * per_second).min(burst);
                refilled = now;
                tokens >= 1.0 && {
                    tokens -= 1.0;
                    true
                }
            }
        };
        let answered = if ok { now + rtt(index) } else { now + MS };
        if ok {
            serving.push(answered);
        }
        *seq += 1;
        queue.push(Reverse((
            answered,
            *seq,
            Step::Answer {
                ok,
                at: now,
                in_flight: taken,
            },
        )));
    };
    loop {
        // Start what the limit allows: throttled creates first.
        while taken < c.limit() && (waiting_for_slot > 0 || fresh > 0) {
            if waiting_for_slot > 0 {
                waiting_for_slot -= 1;
            } else {
                fresh -= 1;
            }
            taken += 1;
            send(now, taken, &mut queue, &mut seq, &mut sent_count);
        }
        let Some(Reverse((at, _, step))) = queue.pop() else {
            break;
        };
        now = at;
        match step {
            Step::Answer {
                ok: true,
                at,
                in_flight,
            } => {
                c.on_success(sent(at, in_flight), now);
                taken -= 1;
                done += 1;
            }
            Step::Answer {
                ok: false,
                at,
                in_flight,
            } => {
                c.on_throttled(sent(at, in_flight), now);
                seq += 1;
                queue.push(Reverse((now + 75 * MS, seq, Step::Retry)));
            }
            Step::Retry => {
                if taken > c.limit() {
                    taken -= 1;
                    waiting_for_slot += 1;
                } else {
                    send(now, taken, &mut queue, &mut seq, &mut sent_count);
                }
            }
        }
    }
    assert_eq!(done, n);
    Run {
        elapsed: now - start,
        throttled: c.throttled(),
        sent: sent_count,
    }
}

#[test]
fn finds_a_concurrency_limit_it_is_not_told() {
    let n = 2000;
    for limit in [1, 2, 3, 4, 6, 8, 12, 16] {
        let run = simulate(16, n, |_| 50 * MS, Shed::Concurrency(limit));
        let bound = 50 * MS * n as u32 / limit as u32;
        let ratio = run.elapsed.as_secs_f64() / bound.as_secs_f64();
        assert!(
            ratio <= 1.1,
            "L = {limit}: {:?}, {ratio:.2}× the bound",
            run.elapsed
        );
        assert!(
            run.throttled as usize * 100 <= n * 2,
            "L = {limit}: {} throttled",
            run.throttled
        );
        assert_eq!(run.sent, n + run.throttled as usize);
    }
}

#[test]
fn finds_a_rate_limit_it_is_not_told() {
    let n = 2000;
    for (per_second, burst) in [(20.0, 2.0), (20.0, 20.0), (100.0, 10.0), (100.0, 100.0)] {
        let run = simulate(16, n, |_| 50 * MS, Shed::Rate { per_second, burst });
        let bound = n as f64 / per_second;
        let ratio = run.elapsed.as_secs_f64() / bound;
        assert!(
            ratio <= 1.1,
            "R = {per_second}, burst {burst}: {:?}, {ratio:.2}× the bound",
            run.elapsed
        );
        assert!(
            run.throttled as usize * 20 <= n,
            "R = {per_second}: {} throttled",
            run.throttled
        );
    }
}

#[test]
fn reaches_the_ceiling_when_nothing_is_refused() {
    let n = 2000;
    let run = simulate(16, n, |_| 50 * MS, Shed::Nothing);
    let bound = 50 * MS * n as u32 / 16;
    assert!(run.elapsed.as_secs_f64() / bound.as_secs_f64() <= 1.05);
    assert_eq!(run.throttled, 0);
    // A heavy tail: one answer in a hundred takes 1 s. The slots those hold
    // are lost time, not a reason to slow down: the mean answer time
    // (59.5 ms) bounds the run, plus up to a second for a slow answer among
    // the last ones sent.
    let tail = |i: usize| if i % 100 == 49 { 1000 * MS } else { 50 * MS };
    let run = simulate(16, n, tail, Shed::Nothing);
    let bound = n as f64 * 0.0595 / 16.0 + 1.0;
    let ratio = run.elapsed.as_secs_f64() / bound;
    assert!(ratio <= 1.0, "{:?}, {ratio:.2}×", run.elapsed);
    assert_eq!(run.throttled, 0);
}

#[test]
fn survives_a_server_that_refuses_everything_for_a_while() {
    // The first 200 requests are refused; the limit falls to one and the
    // run still completes, with every refused request a retry.
    let mut c = Controller::new(16);
    let mut t = Instant::now();
    clean(&mut c, &mut t, 1, 1, 50 * MS);
    full(&mut c, &mut t, 10, 50 * MS);
    for _ in 0..200 {
        let at = t;
        t += 10 * MS;
        c.on_throttled(sent(at, c.limit()), t);
    }
    assert_eq!(c.limit(), 1);
    clean(&mut c, &mut t, 5, 1, 50 * MS);
    assert_eq!(c.limit(), 1, "no probe right after a long refusal");
}
