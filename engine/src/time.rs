//! The engine's clock: monotonic nanoseconds since the clock was made.
//!
//! Reactors take `now` as an argument (`Reactor::poll(now)`), so tests drive them with any
//! clock they like; the threads that run reactors for real read this one.

use std::sync::OnceLock;
use std::time::Duration;
use tidepool_bindings::tsc::TscClock;

/// Nanoseconds on the engine's clock.
pub type Nanos = u64;

pub const NANOS_PER_SEC: Nanos = 1_000_000_000;

static CLOCK: OnceLock<TscClock> = OnceLock::new();

/// The process-wide clock, calibrated on first use (about 10 ms, once).
pub fn clock() -> &'static TscClock {
    CLOCK.get_or_init(|| TscClock::calibrate(Duration::from_millis(10)))
}

/// Now, on the process-wide clock.
#[inline]
pub fn now() -> Nanos {
    clock().now_ns()
}
