//! What the balancer decides on: the mean of the snapshots it took since its last move (at
//! most [`HISTORY_LEN`]), not the newest one alone.
//!
//! One sample window (100 ms by default) is noisy: a probe saw a hot shard's share of a
//! member swing between 14 and 26 % from one window to the next. Deciding on single windows,
//! the balancer kept picking the shard that happened to read low, predicting a gain the next
//! window did not show, and moved hot shards back and forth for as long as the load lasted
//! (each data move a full copy). The mean over the samples since the last move removes most
//! of that noise without lag from before it: a move changes where load lands, so the history
//! starts again after each one (and `sustain_samples` already makes the next decision wait
//! for that many new samples).
//!
//! Entities missing from a snapshot (no I/O in that window) count as idle in it.

use crate::load::{Load, Pattern, ReactorLoad, Snapshot};
use std::collections::{BTreeMap, VecDeque};

/// Most snapshots the mean covers.
pub const HISTORY_LEN: usize = 16;

#[derive(Default)]
pub struct History {
    snapshots: VecDeque<Snapshot>,
}

impl History {
    /// Adds the newest snapshot; returns the mean of those kept.
    pub fn push(&mut self, snapshot: Snapshot) -> Snapshot {
        if self.snapshots.len() == HISTORY_LEN {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back(snapshot);
        mean(&self.snapshots)
    }

    /// Forgets what was measured before a move.
    pub fn clear(&mut self) {
        self.snapshots.clear();
    }
}

fn mean(snapshots: &VecDeque<Snapshot>) -> Snapshot {
    let n = snapshots.len().max(1) as f64;
    let mut reactors: BTreeMap<u16, Vec<&ReactorLoad>> = BTreeMap::new();
    let mut bdevs: BTreeMap<_, Vec<&Load>> = BTreeMap::new();
    let mut shards: BTreeMap<_, Vec<&Load>> = BTreeMap::new();
    for s in snapshots {
        for r in &s.reactors {
            reactors.entry(r.reactor).or_default().push(r);
        }
        for (k, l) in &s.bdevs {
            bdevs.entry(*k).or_default().push(l);
        }
        for (k, l) in &s.shards {
            shards.entry(*k).or_default().push(l);
        }
    }
    let avg =
        |xs: &[&ReactorLoad], f: fn(&ReactorLoad) -> f64| xs.iter().map(|r| f(r)).sum::<f64>() / n;
    let reactors = reactors
        .into_iter()
        .map(|(reactor, rs)| ReactorLoad {
            reactor,
            busy_ratio: avg(&rs, |r| r.busy_ratio),
            net_bytes_per_s: avg(&rs, |r| r.net_bytes_per_s),
            taken_per_s: avg(&rs, |r| r.taken_per_s),
            share: avg(&rs, |r| r.share),
            load: mean_load(&rs.iter().map(|r| &r.load).collect::<Vec<_>>(), n),
        })
        .collect();
    let mut shards: Vec<_> = shards
        .into_iter()
        .map(|(k, ls)| (k, mean_load(&ls, n)))
        .collect();
    shards.sort_by(|a, b| b.1.iops.total_cmp(&a.1.iops).then(a.0.cmp(&b.0)));
    Snapshot {
        reactors,
        bdevs: bdevs
            .into_iter()
            .map(|(k, ls)| (k, mean_load(&ls, n)))
            .collect(),
        shards,
    }
}

/// The mean of `loads` over `n` snapshots (those where the entity is missing count as idle);
/// latencies are the mean over the windows that had any, and the pattern is the newest.
fn mean_load(loads: &[&Load], n: f64) -> Load {
    let sum = |f: fn(&Load) -> f64| loads.iter().map(|l| f(l)).sum::<f64>();
    let seen = loads.len().max(1) as f64;
    let read_iops = sum(|l| l.read_iops) / n;
    let write_iops = sum(|l| l.write_iops) / n;
    Load {
        read_iops,
        write_iops,
        iops: sum(|l| l.iops) / n,
        read_bytes_per_s: sum(|l| l.read_bytes_per_s) / n,
        write_bytes_per_s: sum(|l| l.write_bytes_per_s) / n,
        queue_depth_avg: sum(|l| l.queue_depth_avg) / n,
        queue_depth_max: loads.iter().map(|l| l.queue_depth_max).max().unwrap_or(0),
        latency_avg_us: sum(|l| l.latency_avg_us) / seen,
        latency_p99_us: sum(|l| l.latency_p99_us) / seen,
        read_share: match read_iops + write_iops {
            t if t > 0.0 => read_iops / t,
            _ => 0.0,
        },
        pattern: loads.last().map_or(Pattern::Idle, |l| l.pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::decide::tests::load;
    use crate::load::ShardKey;

    fn snapshot(shards: &[(u32, f64)]) -> Snapshot {
        Snapshot {
            reactors: Vec::new(),
            bdevs: BTreeMap::new(),
            shards: shards
                .iter()
                .map(|&(shard, iops)| (ShardKey { volume: 1, shard }, load(iops)))
                .collect(),
        }
    }

    /// Each shard's figures are the mean over the kept snapshots, a snapshot without the
    /// shard counting as idle; hottest first; a move starts the history again.
    #[test]
    fn the_mean_covers_the_snapshots_since_the_last_move() {
        let mut h = History::default();
        h.push(snapshot(&[(0, 100.0), (1, 300.0)]));
        let m = h.push(snapshot(&[(0, 300.0)]));
        let iops: Vec<(u32, f64)> = m.shards.iter().map(|(k, l)| (k.shard, l.iops)).collect();
        assert_eq!(iops, [(0, 200.0), (1, 150.0)]);
        assert!((m.shards[1].1.read_bytes_per_s - 150.0 * 4096.0).abs() < 1e-6);
        h.clear();
        let m = h.push(snapshot(&[(1, 10.0)]));
        assert_eq!(m.shards.len(), 1);
        assert_eq!(m.shards[0].1.iops, 10.0);
        // Only the newest HISTORY_LEN count: here 17..=31 and 0.
        for i in 0..2 * HISTORY_LEN {
            h.push(snapshot(&[(1, i as f64)]));
        }
        let m = h.push(snapshot(&[(1, 0.0)]));
        let kept: usize = (HISTORY_LEN + 1..2 * HISTORY_LEN).sum();
        assert!((m.shards[0].1.iops - kept as f64 / HISTORY_LEN as f64).abs() < 1e-9);
    }
}
