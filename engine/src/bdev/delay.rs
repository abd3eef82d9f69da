//! The `delay` bdev: passes I/O to its base bdev and holds each completion for an added
//! latency, drawn from a distribution with the configured average and p99 (reads use the read
//! pair, every other type the write pair). Latencies are in microseconds, as in SPDK.
//!
//! The distribution: 98% of I/Os get a fixed `body` latency and 2% a latency uniform on
//! `[p99 - spread, p99 + spread]`. Half of that tail lies above p99, so exactly 1% of I/Os
//! exceed p99 and the 99th percentile is p99; `body = (avg - 0.02 * p99) / 0.98` makes the
//! mean the average. That needs `avg <= p99 <= 50 * avg`, which creation checks.
//! The added latency starts when the base completes, as in SPDK's delay bdev.

use super::{
    check_uuid, Bdev, BdevChannel, BdevError, BdevInfo, BdevRef, Completion, IoRequest, IoType,
};
use crate::rng::Rng;
use crate::time::Nanos;
use serde::Deserialize;
use serde_json::json;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// SPDK's product name for this backend; `bdev_get_bdevs` shows it and delete methods check it.
pub const PRODUCT_NAME: &str = "delay";

/// `bdev_delay_create` parameters (SPDK's names; microseconds).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayCreateParams {
    pub base_bdev_name: String,
    pub name: String,
    pub avg_read_latency: u64,
    pub p99_read_latency: u64,
    pub avg_write_latency: u64,
    pub p99_write_latency: u64,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// `bdev_delay_update_latency` latency types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyType {
    AvgRead,
    P99Read,
    AvgWrite,
    P99Write,
}

/// Largest latency accepted, 60 s: more is a typo, not a test.
const MAX_LATENCY_US: u64 = 60_000_000;

fn check_pair(avg_param: &'static str, avg: u64, p99: u64) -> Result<(), BdevError> {
    if avg > MAX_LATENCY_US || p99 > MAX_LATENCY_US {
        return Err(BdevError::invalid(
            avg_param,
            "latencies are limited to 60 s",
        ));
    }
    if p99 < avg {
        return Err(BdevError::invalid(
            avg_param,
            format!("average {avg} us is above the p99 {p99} us"),
        ));
    }
    if p99 > avg.saturating_mul(50) {
        return Err(BdevError::invalid(
            avg_param,
            format!("p99 {p99} us is more than 50x the average {avg} us"),
        ));
    }
    Ok(())
}

/// The four latencies, changeable at run time; each channel reads them per I/O.
pub struct Latencies {
    avg_read_us: AtomicU64,
    p99_read_us: AtomicU64,
    avg_write_us: AtomicU64,
    p99_write_us: AtomicU64,
}

impl Latencies {
    fn pair(&self, read: bool) -> (u64, u64) {
        // Relaxed: each value is independent, and a sample that mixes an old and a new value
        // during an update is harmless.
        if read {
            (
                self.avg_read_us.load(Ordering::Relaxed),
                self.p99_read_us.load(Ordering::Relaxed),
            )
        } else {
            (
                self.avg_write_us.load(Ordering::Relaxed),
                self.p99_write_us.load(Ordering::Relaxed),
            )
        }
    }

    /// Changes one latency; refuses a value that breaks `avg <= p99 <= 50 * avg`.
    pub fn update(&self, which: LatencyType, us: u64) -> Result<(), BdevError> {
        let (read, is_avg) = match which {
            LatencyType::AvgRead => (true, true),
            LatencyType::P99Read => (true, false),
            LatencyType::AvgWrite => (false, true),
            LatencyType::P99Write => (false, false),
        };
        let (avg, p99) = self.pair(read);
        let (avg, p99) = if is_avg { (us, p99) } else { (avg, us) };
        check_pair("latency_us", avg, p99)?;
        let slot = match which {
            LatencyType::AvgRead => &self.avg_read_us,
            LatencyType::P99Read => &self.p99_read_us,
            LatencyType::AvgWrite => &self.avg_write_us,
            LatencyType::P99Write => &self.p99_write_us,
        };
        slot.store(us, Ordering::Relaxed);
        Ok(())
    }
}

/// Draws one added latency in ns for the given average and p99 in µs (see the module docs).
pub fn sample_latency_ns(rng: &mut Rng, avg_us: u64, p99_us: u64) -> u64 {
    let (avg, p99) = (avg_us as f64 * 1e3, p99_us as f64 * 1e3);
    let body = ((avg - 0.02 * p99) / 0.98).max(0.0);
    let u = rng.next_f64();
    if u >= 0.02 {
        return body as u64;
    }
    let spread = (p99 - body) / 2.0;
    let x = u / 0.02; // uniform in [0, 1)
    (p99 - spread + 2.0 * spread * x) as u64
}

pub struct DelayBdev {
    info: BdevInfo,
    base: BdevRef,
    latencies: Arc<Latencies>,
    /// Channels opened so far: with the name, the seed of each channel's latency draws, so
    /// that a run that opens the same channels in the same order draws the same latencies
    /// (what seeded simulations rely on).
    channels_opened: AtomicU64,
}

impl DelayBdev {
    pub fn create(p: &DelayCreateParams, base: BdevRef) -> Result<DelayBdev, BdevError> {
        if p.name.is_empty() {
            return Err(BdevError::invalid("name", "must not be empty"));
        }
        if let Some(u) = &p.uuid {
            check_uuid(u)?;
        }
        check_pair("avg_read_latency", p.avg_read_latency, p.p99_read_latency)?;
        check_pair(
            "avg_write_latency",
            p.avg_write_latency,
            p.p99_write_latency,
        )?;
        let b = base.info();
        Ok(DelayBdev {
            info: BdevInfo::stacked_on(b, p.name.clone(), PRODUCT_NAME, p.uuid.as_ref()),
            base,
            latencies: Arc::new(Latencies {
                avg_read_us: AtomicU64::new(p.avg_read_latency),
                p99_read_us: AtomicU64::new(p.p99_read_latency),
                avg_write_us: AtomicU64::new(p.avg_write_latency),
                p99_write_us: AtomicU64::new(p.p99_write_latency),
            }),
            channels_opened: AtomicU64::new(0),
        })
    }

    pub fn latencies(&self) -> &Arc<Latencies> {
        &self.latencies
    }
}

impl DelayBdev {
    fn channel_seed(&self) -> u64 {
        // FNV-1a of the name, then the channel's number.
        let name = self
            .info
            .name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let n = self.channels_opened.fetch_add(1, Ordering::Relaxed);
        (name ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
    }
}

impl Bdev for DelayBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let base = self.base.open_channel()?;
        Ok(Box::new(DelayChannel {
            base,
            latencies: Arc::clone(&self.latencies),
            held: BinaryHeap::new(),
            scratch: Vec::with_capacity(256),
            rng: Rng::new(self.channel_seed()),
            seq: 0,
        }))
    }

    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.info().name.clone()]
    }

    fn driver_specific(&self) -> serde_json::Value {
        let (ar, pr) = self.latencies.pair(true);
        let (aw, pw) = self.latencies.pair(false);
        json!({"delay": {"base_bdev_name": self.base.info().name,
            "avg_read_latency": ar, "p99_read_latency": pr,
            "avg_write_latency": aw, "p99_write_latency": pw}})
    }

    fn config_entry(&self) -> serde_json::Value {
        let (ar, pr) = self.latencies.pair(true);
        let (aw, pw) = self.latencies.pair(false);
        json!({"method": "bdev_delay_create", "params": {
            "base_bdev_name": self.base.info().name, "name": self.info.name,
            "avg_read_latency": ar, "p99_read_latency": pr,
            "avg_write_latency": aw, "p99_write_latency": pw, "uuid": self.info.uuid}})
    }
}

/// A completion waiting for its due time; ordered so the heap pops the earliest first.
struct Held {
    due: Nanos,
    seq: u64,
    completion: Completion,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct DelayChannel {
    base: Box<dyn BdevChannel>,
    latencies: Arc<Latencies>,
    /// Completions not yet due. Bounded by the I/Os its submitters have in flight.
    held: BinaryHeap<Held>,
    scratch: Vec<Completion>,
    rng: Rng,
    seq: u64,
}

impl BdevChannel for DelayChannel {
    fn submit(&mut self, io: IoRequest, now: Nanos) -> Result<(), IoRequest> {
        self.base.submit(io, now)
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        self.base.poll(now, max, &mut self.scratch);
        for completion in self.scratch.drain(..) {
            let (avg, p99) = self.latencies.pair(completion.io.io_type == IoType::Read);
            let due = now + sample_latency_ns(&mut self.rng, avg, p99);
            self.seq += 1;
            self.held.push(Held {
                due,
                seq: self.seq,
                completion,
            });
        }
        let mut n = 0;
        while n < max && self.held.peek().is_some_and(|h| h.due <= now) {
            out.push(self.held.pop().expect("peeked").completion);
            n += 1;
        }
        n
    }

    fn inflight(&self) -> usize {
        self.base.inflight() + self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_distribution_has_the_configured_mean_and_p99() {
        let mut rng = Rng::new(42);
        let mut v: Vec<u64> = (0..200_000)
            .map(|_| sample_latency_ns(&mut rng, 100, 1000))
            .collect();
        v.sort_unstable();
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
        let p99 = v[v.len() * 99 / 100] as f64;
        assert!((mean / 100_000.0 - 1.0).abs() < 0.02, "mean {mean}");
        assert!((p99 / 1_000_000.0 - 1.0).abs() < 0.02, "p99 {p99}");
    }

    #[test]
    fn bad_pairs_are_refused() {
        assert!(check_pair("a", 100, 50).is_err());
        assert!(check_pair("a", 10, 1000).is_err());
        assert!(check_pair("a", 0, 0).is_ok());
        assert!(check_pair("a", 100, 100).is_ok());
    }
}
