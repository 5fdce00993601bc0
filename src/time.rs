//! Wall time: the clock tokenctl reads, and the one way it writes a time,
//! in a file format (SOPS's `lastmodified`) as on the screen.
//!
//! Only [`SystemClock`] reads the system's time; everything else is given
//! a [`Clock`], so a test sets the time instead of waiting for it.
//! Timeouts and backoff measure durations with the monotonic
//! `Instant`, which is not wall time and appears in no record.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;

/// Tells the time.
pub trait Clock: Send + Sync {
    /// Returns the current time.
    fn now(&self) -> Timestamp;

    /// Returns the current time in whole seconds since the epoch, as the
    /// state and the journal record it.
    fn epoch_seconds(&self) -> i64 {
        self.now().as_second()
    }
}

/// A clock to share (with a sink's thread, say): the system's unless
/// one is given.
#[derive(Clone)]
pub struct SharedClock(Arc<dyn Clock>);

impl SharedClock {
    /// Shares `clock`.
    pub fn new(clock: impl Clock + 'static) -> Self {
        SharedClock(Arc::new(clock))
    }
}

impl<C: Clock + 'static> From<Arc<C>> for SharedClock {
    /// Shares a clock its owner keeps a handle on (a test that moves it).
    fn from(clock: Arc<C>) -> Self {
        SharedClock(clock)
    }
}

impl Default for SharedClock {
    fn default() -> Self {
        SharedClock::new(SystemClock)
    }
}

impl Deref for SharedClock {
    type Target = dyn Clock;

    fn deref(&self) -> &(dyn Clock + 'static) {
        &*self.0
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedClock")
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // ALLOWED: the one reader of the wall clock.
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that says what it is told: for tests.
#[derive(Debug)]
pub struct TestClock {
    now: Mutex<Timestamp>,
}

impl TestClock {
    /// Returns a clock standing at `epoch_seconds` (held within years
    /// -9999 to 9999).
    pub fn at(epoch_seconds: i64) -> Self {
        TestClock {
            now: Mutex::new(timestamp(epoch_seconds)),
        }
    }

    /// Moves the clock to `epoch_seconds`.
    pub fn set(&self, epoch_seconds: i64) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = timestamp(epoch_seconds);
    }

    /// Moves the clock on by `seconds`.
    pub fn advance(&self, seconds: i64) {
        let now = self.epoch_seconds();
        self.set(now + seconds);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn timestamp(epoch_seconds: i64) -> Timestamp {
    Timestamp::from_second(epoch_seconds).unwrap_or(if epoch_seconds < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Returns epoch seconds as an RFC 3339 UTC time to the second, e.g.
/// `2021-05-24T12:11:51Z`: the form of SOPS's `lastmodified` and of every
/// time tokenctl shows. `None` outside years -9999 to 9999, which have no
/// such form.
pub fn rfc3339(epoch_seconds: i64) -> Option<String> {
    let time = Timestamp::from_second(epoch_seconds).ok()?;
    Some(time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Shows epoch seconds as an RFC 3339 UTC time, or as the number where it
/// has no calendar date.
pub fn utc(epoch_seconds: i64) -> String {
    rfc3339(epoch_seconds).unwrap_or_else(|| format!("{epoch_seconds} (epoch seconds)"))
}

/// Parses epoch seconds, or an RFC 3339 time such as
/// `2021-05-24T12:11:51Z`, into epoch seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    text.parse::<Timestamp>()
        .map(|time| time.as_second())
        .map_err(|_| {
            format!("`{text}` is not a time; write epoch seconds or e.g. 2021-05-24T12:11:51Z")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_621_858_311), "2021-05-24T12:11:51Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_100).as_deref(),
            Some("2023-11-14T22:15:00Z")
        );
    }

    #[test]
    fn a_time_without_a_calendar_date_is_shown_as_a_number() {
        assert_eq!(rfc3339(i64::MAX), None);
        assert_eq!(utc(i64::MAX), format!("{} (epoch seconds)", i64::MAX));
    }

    #[test]
    fn parses_times_back() {
        for seconds in [0, 951_782_400, 1_621_858_311] {
            assert_eq!(parse_time(&utc(seconds)), Ok(seconds));
        }
        assert_eq!(parse_time("1621858311"), Ok(1_621_858_311));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2021-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn a_test_clock_says_what_it_is_told() {
        let clock = TestClock::at(1_000);
        assert_eq!(clock.epoch_seconds(), 1_000);
        clock.advance(61);
        assert_eq!(clock.epoch_seconds(), 1_061);
        clock.set(5);
        assert_eq!(clock.now(), Timestamp::from_second(5).unwrap());
    }
}
