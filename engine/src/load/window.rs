//! One entity's I/O over one sampling window: what the load monitor counts per shard, per
//! bdev channel and per reactor, on the hot path.
//!
//! A [`Window`] takes an I/O when it starts ([`Window::start`]: counts, bytes, queue depth,
//! access pattern) and when it ends ([`Window::end`]: latency). Windows of the same entity
//! from several reactors [`merge`](Window::merge) into one before anything is derived from
//! them, so a percentile is taken over every reactor's latencies, not averaged.
//!
//! Latency goes into a log-linear histogram: four buckets per power of two, so a percentile
//! read back is within 25 % of the true value (and never below it).

use crate::bdev::IoType;

/// Sub-buckets per power of two (as bits): 2 bits, four buckets.
const SUB_BITS: u32 = 2;
/// Enough buckets for any u64 nanosecond value.
const BUCKETS: usize = (64 << SUB_BITS) as usize;

/// Counters of one entity over one window. Cheap to update: a few adds per I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub read_ops: u64,
    pub write_ops: u64,
    /// Flush, unmap and write-zeroes requests.
    pub other_ops: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Reads and writes that began where the entity's previous read or write ended.
    pub sequential: u64,
    /// I/O started and not yet ended (carried over from one window to the next).
    pub inflight: u64,
    /// Most I/O in flight at once during the window.
    pub max_inflight: u64,
    /// Sum of the latencies of the I/O that ended in the window; divided by the window's
    /// length this is the average queue depth (Little's law).
    pub latency_sum_ns: u64,
    pub ended: u64,
    latency_buckets: Vec<u32>,
    /// Where the previous read or write ended, in blocks.
    next_block: u64,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            read_ops: 0,
            write_ops: 0,
            other_ops: 0,
            read_bytes: 0,
            write_bytes: 0,
            sequential: 0,
            inflight: 0,
            max_inflight: 0,
            latency_sum_ns: 0,
            ended: 0,
            latency_buckets: vec![0; BUCKETS],
            next_block: u64::MAX,
        }
    }
}

/// How an entity's reads and writes moved over its blocks during a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// No reads or writes.
    Idle,
    /// At least 80 % began where the previous one ended.
    Sequential,
    /// At most 20 % did.
    Random,
    Mixed,
}

impl Pattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Idle => "idle",
            Pattern::Sequential => "sequential",
            Pattern::Random => "random",
            Pattern::Mixed => "mixed",
        }
    }
}

fn bucket_of(v: u64) -> usize {
    let v = v.max(1);
    let msb = 63 - v.leading_zeros();
    if msb < SUB_BITS {
        return v as usize;
    }
    let sub = (v >> (msb - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    ((msb << SUB_BITS) | sub as u32) as usize
}

/// The largest value bucket `b` holds.
fn bucket_top(b: usize) -> u64 {
    let (msb, sub) = ((b >> SUB_BITS) as u32, (b & ((1 << SUB_BITS) - 1)) as u64);
    if msb < SUB_BITS {
        return b as u64;
    }
    let width = 1u64 << (msb - SUB_BITS);
    ((1u64 << msb) | (sub << (msb - SUB_BITS))).saturating_add(width - 1)
}

impl Window {
    /// An I/O of `num_blocks` blocks (`bytes` bytes) at `offset_blocks` starts.
    #[inline]
    pub fn start(&mut self, io_type: IoType, offset_blocks: u64, num_blocks: u32, bytes: u64) {
        match io_type {
            IoType::Read => {
                self.read_ops += 1;
                self.read_bytes += bytes;
            }
            IoType::Write => {
                self.write_ops += 1;
                self.write_bytes += bytes;
            }
            _ => self.other_ops += 1,
        }
        if io_type.has_data() {
            if offset_blocks == self.next_block {
                self.sequential += 1;
            }
            self.next_block = offset_blocks + num_blocks as u64;
        }
        self.inflight += 1;
        self.max_inflight = self.max_inflight.max(self.inflight);
    }

    /// An I/O started earlier ended after `latency_ns`.
    #[inline]
    pub fn end(&mut self, latency_ns: u64) {
        self.inflight = self.inflight.saturating_sub(1);
        self.latency_sum_ns += latency_ns;
        self.ended += 1;
        // bucket_of is below BUCKETS for every u64; the mask lets the compiler see it.
        self.latency_buckets[bucket_of(latency_ns) & (BUCKETS - 1)] += 1;
    }

    /// Whether anything happened in the window (or I/O is still in flight).
    pub fn is_active(&self) -> bool {
        self.ops() > 0 || self.ended > 0 || self.inflight > 0
    }

    pub fn ops(&self) -> u64 {
        self.read_ops + self.write_ops + self.other_ops
    }

    /// Hands back the window's counts and starts a new window; I/O in flight stays counted
    /// as in flight.
    pub fn take(&mut self) -> Window {
        let mut next = Window {
            inflight: self.inflight,
            max_inflight: self.inflight,
            next_block: self.next_block,
            ..Window::default()
        };
        std::mem::swap(self, &mut next);
        next
    }

    /// Adds another window of the same entity (another reactor's view of it).
    pub fn merge(&mut self, other: &Window) {
        self.read_ops += other.read_ops;
        self.write_ops += other.write_ops;
        self.other_ops += other.other_ops;
        self.read_bytes += other.read_bytes;
        self.write_bytes += other.write_bytes;
        self.sequential += other.sequential;
        self.inflight += other.inflight;
        // In flight at once on different reactors may overlap in time: the sum bounds it.
        self.max_inflight += other.max_inflight;
        self.latency_sum_ns += other.latency_sum_ns;
        self.ended += other.ended;
        for (a, b) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *a += b;
        }
    }

    /// The latency below which `q` (0..=1) of the ended I/O fell, rounded up to its bucket's
    /// top; 0 when nothing ended.
    pub fn latency_quantile_ns(&self, q: f64) -> u64 {
        if self.ended == 0 {
            return 0;
        }
        let want = ((self.ended as f64 * q).ceil() as u64).clamp(1, self.ended);
        let mut seen = 0u64;
        for (b, &n) in self.latency_buckets.iter().enumerate() {
            seen += n as u64;
            if seen >= want {
                return bucket_top(b);
            }
        }
        u64::MAX
    }

    pub fn latency_avg_ns(&self) -> u64 {
        self.latency_sum_ns.checked_div(self.ended).unwrap_or(0)
    }

    /// Reads over reads and writes (0 when there were neither).
    pub fn read_share(&self) -> f64 {
        let rw = self.read_ops + self.write_ops;
        if rw == 0 {
            0.0
        } else {
            self.read_ops as f64 / rw as f64
        }
    }

    pub fn pattern(&self) -> Pattern {
        let rw = self.read_ops + self.write_ops;
        if rw == 0 {
            return Pattern::Idle;
        }
        let share = self.sequential as f64 / rw as f64;
        if share >= 0.8 {
            Pattern::Sequential
        } else if share <= 0.2 {
            Pattern::Random
        } else {
            Pattern::Mixed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut last = 0;
        for v in [
            1u64,
            2,
            3,
            4,
            5,
            7,
            8,
            100,
            1_000,
            65_535,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket_of(v);
            assert!(b >= last, "bucket of {v} went backwards");
            last = b;
            let top = bucket_top(b);
            assert!(top >= v, "bucket {b} of {v} tops at {top}");
            assert!(top - v <= v / 4 + 1, "bucket {b} of {v} is too wide: {top}");
        }
    }

    #[test]
    fn quantiles_follow_the_latencies_within_a_bucket() {
        let mut w = Window::default();
        for i in 1..=1000u64 {
            w.start(IoType::Read, i * 8, 8, 4096);
            w.end(i * 1_000); // 1 us .. 1 ms
        }
        let p50 = w.latency_quantile_ns(0.5);
        let p99 = w.latency_quantile_ns(0.99);
        assert!((500_000..=625_000).contains(&p50), "p50 {p50}");
        assert!((990_000..=1_237_500).contains(&p99), "p99 {p99}");
        assert_eq!(w.latency_avg_ns(), 500_500);
        assert_eq!(w.latency_quantile_ns(1.0), bucket_top(bucket_of(1_000_000)));
        assert_eq!(Window::default().latency_quantile_ns(0.99), 0);
    }

    #[test]
    fn pattern_mix_and_depth() {
        let mut seq = Window::default();
        for i in 0..100 {
            seq.start(IoType::Write, i * 8, 8, 4096);
        }
        assert_eq!(seq.pattern(), Pattern::Sequential);
        assert_eq!((seq.write_ops, seq.write_bytes), (100, 409_600));
        assert_eq!((seq.inflight, seq.max_inflight), (100, 100));
        assert_eq!(seq.read_share(), 0.0);

        let mut rnd = Window::default();
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..100 {
            rnd.start(IoType::Read, rng.next_u64() % 1_000_000, 8, 4096);
            rnd.end(10);
        }
        assert_eq!(rnd.pattern(), Pattern::Random);
        assert_eq!((rnd.inflight, rnd.max_inflight), (0, 1));
        assert_eq!(rnd.read_share(), 1.0);

        let mut mixed = Window::default();
        for i in 0..100u64 {
            let at = if i % 2 == 0 {
                i * 1000
            } else {
                (i - 1) * 1000 + 8
            };
            mixed.start(IoType::Read, at, 8, 4096);
        }
        assert_eq!(mixed.pattern(), Pattern::Mixed);
        assert_eq!(Window::default().pattern(), Pattern::Idle);
        mixed.start(IoType::Flush, 0, 0, 0);
        assert_eq!(mixed.other_ops, 1);
    }

    #[test]
    fn take_keeps_inflight_and_merge_adds() {
        let mut w = Window::default();
        w.start(IoType::Read, 0, 1, 512);
        w.start(IoType::Read, 1, 1, 512);
        w.end(100);
        let first = w.take();
        assert_eq!((first.read_ops, first.ended, first.inflight), (2, 1, 1));
        assert_eq!(
            (w.read_ops, w.ended, w.inflight, w.max_inflight),
            (0, 0, 1, 1)
        );
        // The next window still sees the run continue.
        w.start(IoType::Read, 2, 1, 512);
        assert_eq!(w.sequential, 1);
        w.end(300);
        let mut merged = first.clone();
        merged.merge(&w);
        assert_eq!(
            (merged.read_ops, merged.ended, merged.sequential),
            (3, 2, 2)
        );
        assert_eq!(merged.latency_avg_ns(), 200);
        assert_eq!(merged.latency_quantile_ns(1.0), bucket_top(bucket_of(300)));
    }
}
