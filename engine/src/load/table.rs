//! The state table: one slot per reactor, where that reactor's load monitor publishes its
//! latest sample, and the figures readers derive from the slots.
//!
//! Writers: each reactor replaces its own slot once per sampling interval (a mutex held for a
//! pointer swap; never on the I/O path). Readers (`load_get_stats`, the balancer) take every
//! slot's newest sample and merge the windows of each entity (a bdev or shard that several
//! reactors touched) before deriving rates, averages and percentiles.

use super::window::{Pattern, Window};
use crate::bdev::BdevId;
use crate::reactor::ReactorId;
use crate::time::Nanos;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default sampling interval of the load monitor.
pub const DEFAULT_INTERVAL_NS: Nanos = 100_000_000;

/// A shard of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardKey {
    pub volume: BdevId,
    pub shard: u32,
}

/// What one reactor measured over one window.
#[derive(Clone, Debug)]
pub struct ReactorSample {
    pub reactor: ReactorId,
    /// When the window ended (the reactor's clock).
    pub at_ns: Nanos,
    pub window_ns: Nanos,
    /// Time spent in poll iterations that did work.
    pub busy_ns: Nanos,
    /// Bytes the frontend connections this reactor serves moved, both ways.
    pub net_bytes: u64,
    /// Requests this reactor took from tasks or peers (client requests and raw bdev I/O).
    pub taken: u64,
    /// Everything the reactor's channels executed: its I/O load.
    pub executed: Window,
    /// Per bdev channel of this reactor (only those with activity).
    pub bdevs: Vec<(BdevId, Window)>,
    /// Per shard of the volume requests this reactor took (only those with activity).
    pub shards: Vec<(ShardKey, Window)>,
}

/// The shared table.
pub struct StateTable {
    slots: Vec<Mutex<Option<Arc<ReactorSample>>>>,
    interval_ns: AtomicU64,
}

impl StateTable {
    pub fn new(reactors: usize) -> Arc<StateTable> {
        Arc::new(StateTable {
            slots: (0..reactors).map(|_| Mutex::new(None)).collect(),
            interval_ns: AtomicU64::new(DEFAULT_INTERVAL_NS),
        })
    }

    pub fn interval_ns(&self) -> Nanos {
        self.interval_ns.load(Ordering::Relaxed)
    }

    /// Sets the sampling interval; reactors pick it up at their next sample.
    pub fn set_interval_ns(&self, ns: Nanos) {
        self.interval_ns.store(ns.max(1), Ordering::Relaxed);
    }

    /// Replaces the reactor's slot with its newest sample.
    pub fn publish(&self, sample: ReactorSample) {
        let slot = &self.slots[sample.reactor as usize];
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(sample));
    }

    /// The newest sample of every reactor that published one, by reactor.
    pub fn samples(&self) -> Vec<Arc<ReactorSample>> {
        self.slots
            .iter()
            .filter_map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// Every reactor's latest figures, merged per entity.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(&self.samples())
    }
}

/// Figures derived from one entity's window.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub read_iops: f64,
    pub write_iops: f64,
    /// Reads, writes and the rest (flush, unmap, write-zeroes) per second.
    pub iops: f64,
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
    pub queue_depth_avg: f64,
    pub queue_depth_max: u64,
    pub latency_avg_us: f64,
    pub latency_p99_us: f64,
    pub read_share: f64,
    pub pattern: Pattern,
}

impl Load {
    /// The figures of `w`, a window `window_ns` long.
    pub fn of(w: &Window, window_ns: Nanos) -> Load {
        let secs = (window_ns.max(1)) as f64 / 1e9;
        Load {
            read_iops: w.read_ops as f64 / secs,
            write_iops: w.write_ops as f64 / secs,
            iops: w.ops() as f64 / secs,
            read_bytes_per_s: w.read_bytes as f64 / secs,
            write_bytes_per_s: w.write_bytes as f64 / secs,
            queue_depth_avg: w.latency_sum_ns as f64 / window_ns.max(1) as f64,
            queue_depth_max: w.max_inflight,
            latency_avg_us: w.latency_avg_ns() as f64 / 1e3,
            latency_p99_us: w.latency_quantile_ns(0.99) as f64 / 1e3,
            read_share: w.read_share(),
            pattern: w.pattern(),
        }
    }

    /// The figures as `load_get_stats` shows them (added to `obj`'s fields).
    pub fn json_into(&self, obj: &mut serde_json::Map<String, Value>) {
        let round = |x: f64| (x * 100.0).round() / 100.0;
        for (k, v) in [
            ("read_iops", round(self.read_iops)),
            ("write_iops", round(self.write_iops)),
            ("read_bytes_per_s", round(self.read_bytes_per_s)),
            ("write_bytes_per_s", round(self.write_bytes_per_s)),
            ("queue_depth_avg", round(self.queue_depth_avg)),
            ("latency_avg_us", round(self.latency_avg_us)),
            ("latency_p99_us", round(self.latency_p99_us)),
            ("read_share", round(self.read_share)),
        ] {
            obj.insert(k.into(), json!(v));
        }
        obj.insert("queue_depth_max".into(), json!(self.queue_depth_max));
        obj.insert("pattern".into(), json!(self.pattern.as_str()));
    }
}

/// One reactor's figures.
#[derive(Clone, Debug)]
pub struct ReactorLoad {
    pub reactor: ReactorId,
    pub busy_ratio: f64,
    pub net_bytes_per_s: f64,
    pub taken_per_s: f64,
    /// This reactor's share of the I/O all reactors executed (0 when none did any).
    pub share: f64,
    pub load: Load,
}

/// The merged view of the table at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub reactors: Vec<ReactorLoad>,
    pub bdevs: BTreeMap<BdevId, Load>,
    /// Hottest first (by requests per second).
    pub shards: Vec<(ShardKey, Load)>,
}

impl Snapshot {
    pub fn of(samples: &[Arc<ReactorSample>]) -> Snapshot {
        let rate = |n: u64, ns: Nanos| n as f64 * 1e9 / ns.max(1) as f64;
        let total: f64 = samples
            .iter()
            .map(|s| rate(s.executed.ops(), s.window_ns))
            .sum();
        let reactors = samples
            .iter()
            .map(|s| {
                let load = Load::of(&s.executed, s.window_ns);
                ReactorLoad {
                    reactor: s.reactor,
                    busy_ratio: (s.busy_ns as f64 / s.window_ns.max(1) as f64).min(1.0),
                    net_bytes_per_s: rate(s.net_bytes, s.window_ns),
                    taken_per_s: rate(s.taken, s.window_ns),
                    share: if total > 0.0 { load.iops / total } else { 0.0 },
                    load,
                }
            })
            .collect();
        Snapshot {
            reactors,
            bdevs: merged(samples, |s| &s.bdevs).into_iter().collect(),
            shards: {
                let mut v = merged(samples, |s| &s.shards);
                v.sort_by(|a, b| b.1.iops.total_cmp(&a.1.iops).then(a.0.cmp(&b.0)));
                v
            },
        }
    }
}

/// Merges each key's windows over the samples; each window counts over its own sample's
/// length (the mean of the lengths that saw the key).
fn merged<K: Ord + Copy>(
    samples: &[Arc<ReactorSample>],
    part: impl Fn(&ReactorSample) -> &Vec<(K, Window)>,
) -> Vec<(K, Load)> {
    let mut acc: BTreeMap<K, (Window, Nanos, u64)> = BTreeMap::new();
    for s in samples {
        for (k, w) in part(s) {
            let e = acc.entry(*k).or_insert_with(|| (Window::default(), 0, 0));
            e.0.merge(w);
            e.1 += s.window_ns;
            e.2 += 1;
        }
    }
    acc.into_iter()
        .map(|(k, (w, ns, n))| (k, Load::of(&w, ns / n.max(1))))
        .collect()
}
