//! A monotonic nanosecond clock that costs a few nanoseconds to read.
//!
//! On x86_64 hosts whose CPU reports an invariant TSC (`constant_tsc` and `nonstop_tsc`), the
//! clock reads the TSC and scales it with a factor calibrated against `Instant` when the clock
//! is made; elsewhere it falls back to `Instant`. Readings are comparable across threads of
//! one process (the kernel keeps the TSCs of an invariant-TSC host in step).

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct TscClock {
    origin: Instant,
    /// TSC value at `origin`, or `None` when the TSC is not used.
    tsc_origin: Option<u64>,
    /// Nanoseconds per tick in 32.32 fixed point.
    ns_per_tick_q32: u64,
}

impl TscClock {
    /// Calibrates over about `calibration` (10 ms is plenty for a 0.1% error).
    pub fn calibrate(calibration: Duration) -> TscClock {
        let origin = Instant::now();
        if !invariant_tsc() {
            return TscClock {
                origin,
                tsc_origin: None,
                ns_per_tick_q32: 0,
            };
        }
        let t0 = read_tsc();
        let start = Instant::now();
        while start.elapsed() < calibration {
            std::hint::spin_loop();
        }
        let t1 = read_tsc();
        let elapsed_ns = start.elapsed().as_nanos();
        let ticks = (t1 - t0).max(1) as u128;
        let ns_per_tick_q32 = ((elapsed_ns << 32) / ticks) as u64;
        TscClock {
            origin: start,
            tsc_origin: Some(t0),
            ns_per_tick_q32,
        }
    }

    /// Nanoseconds since the clock was made.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self.tsc_origin {
            Some(t0) => {
                let ticks = read_tsc().wrapping_sub(t0) as u128;
                ((ticks * self.ns_per_tick_q32 as u128) >> 32) as u64
            }
            None => self.origin.elapsed().as_nanos() as u64,
        }
    }

    /// Whether the TSC is in use (false: `Instant` fallback).
    pub fn uses_tsc(&self) -> bool {
        self.tsc_origin.is_some()
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects and is available on every x86_64 CPU; it is only
    // reached when /proc/cpuinfo reported an invariant TSC.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read_tsc() -> u64 {
    0
}

fn invariant_tsc() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
        return false;
    };
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    has("constant_tsc") && has("nonstop_tsc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_instant_within_a_percent() {
        let clock = TscClock::calibrate(Duration::from_millis(10));
        let a = clock.now_ns();
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let b = clock.now_ns();
        let real = start.elapsed().as_nanos() as f64;
        let measured = (b - a) as f64;
        assert!(
            (measured / real - 1.0).abs() < 0.05,
            "tsc {measured} ns against instant {real} ns"
        );
        assert!(clock.now_ns() >= b, "clock went backwards");
    }
}
