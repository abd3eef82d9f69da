//! Device balancing, the balancer's second question: inside each pool, does one member carry
//! more than its share of the I/O the pool's members executed? If so, for `sustain_samples`
//! evaluations in a row, the shard whose data move best evens the members goes to the least
//! loaded member with a free extent (a data migration, which the balancer starts and the
//! copy driver finishes). Members that are missing, being drained, or flagged by an
//! abandoned copy never receive a shard. Scores use the reactor weights for requests and
//! bytes (busy time belongs to reactors, not devices).

use super::decide::{Memory, Options, ShardPlace};
use crate::bdev::BdevId;
use crate::load::{ShardKey, Snapshot};
use crate::time::Nanos;
use std::collections::BTreeMap;

pub use crate::pool::MemberState as Member;

/// A data move the balancer decided.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceMove {
    pub key: ShardKey,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// How long each pool's imbalance has lasted.
#[derive(Default)]
pub struct DeviceMemory {
    over: BTreeMap<String, u32>,
}

/// One evaluation over every pool; at most one move.
pub fn evaluate(
    snapshot: &Snapshot,
    members: &[Member],
    shards: &[ShardPlace],
    o: &Options,
    memory: &mut DeviceMemory,
    cooldown: &Memory,
    now: Nanos,
) -> Option<DeviceMove> {
    let mut pools: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in members {
        pools.entry(&m.pool).or_default().push(m);
    }
    let load = |bdev: BdevId| {
        snapshot.bdevs.get(&bdev).map_or((0.0, 0.0), |l| {
            (l.iops, l.read_bytes_per_s + l.write_bytes_per_s)
        })
    };
    for (pool, ms) in pools {
        if ms.len() < 2 {
            continue;
        }
        let (tr, tb) = ms.iter().fold((0.0, 0.0), |(r, b), m| {
            let (x, y) = load(m.bdev);
            (r + x, b + y)
        });
        let wr = if tr > 0.0 { o.weight_requests } else { 0.0 };
        let wb = if tb > 0.0 { o.weight_bytes } else { 0.0 };
        if wr + wb <= 0.0 {
            memory.over.remove(pool);
            continue;
        }
        let score = |r: f64, b: f64| {
            (wr * if tr > 0.0 { r / tr } else { 0.0 } + wb * if tb > 0.0 { b / tb } else { 0.0 })
                / (wr + wb)
        };
        let scores: Vec<f64> = ms
            .iter()
            .map(|m| {
                let (r, b) = load(m.bdev);
                score(r, b)
            })
            .collect();
        let fair = 1.0 / ms.len() as f64;
        let (hot, &max) = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("two members or more");
        if max / fair <= o.imbalance_threshold {
            memory.over.remove(pool);
            continue;
        }
        let over = memory.over.entry(pool.to_string()).or_insert(0);
        *over += 1;
        if *over < o.sustain_samples {
            continue;
        }
        // The coolest member that may take a shard.
        let Some((cold, _)) = scores
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != hot && ms[*i].open && ms[*i].free_extents > 0)
            .min_by(|a, b| a.1.total_cmp(b.1))
        else {
            continue;
        };
        let candidates = shards
            .iter()
            .filter(|s| s.online && s.member == ms[hot].bdev && !cooldown.is_cooling(&s.key, now))
            .filter_map(|s| {
                let (_, l) = snapshot.shards.iter().find(|(k, _)| *k == s.key)?;
                Some((
                    s.key,
                    score(l.iops, l.read_bytes_per_s + l.write_bytes_per_s),
                ))
            });
        let best = super::decide::best_move(&scores, hot, cold, fair, candidates);
        if let Some((key, after)) = best {
            *over = 0;
            return Some(DeviceMove {
                key,
                from: ms[hot].name.clone(),
                to: ms[cold].name.clone(),
                reason: format!(
                    "member '{}' of pool '{pool}' executes {:.0} % of its I/O ({:.2}x its fair \
                     share); this shard's move leaves at most {:.0} %",
                    ms[hot].name,
                    max * 100.0,
                    max / fair,
                    after * 100.0
                ),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::{load, opts};
    use super::*;

    fn key(i: u32) -> ShardKey {
        ShardKey {
            volume: 9,
            shard: i,
        }
    }

    /// Shards of 100 IOPS each on members 0 and 1 (bdev ids 10 and 11).
    fn world(on: &[u32], free1: u64, open1: bool) -> (Snapshot, Vec<Member>, Vec<ShardPlace>) {
        let mut snap = Snapshot::default();
        let mut per = [0.0; 2];
        let mut shards = Vec::new();
        for (i, &m) in on.iter().enumerate() {
            per[m as usize] += 100.0;
            snap.shards.push((key(i as u32), load(100.0)));
            shards.push(ShardPlace {
                key: key(i as u32),
                owner: 0,
                member: 10 + m as BdevId,
                online: true,
            });
        }
        snap.bdevs.insert(10, load(per[0]));
        snap.bdevs.insert(11, load(per[1]));
        let members = vec![
            Member {
                pool: "p".into(),
                bdev: 10,
                name: "M0".into(),
                free_extents: 4,
                open: true,
            },
            Member {
                pool: "p".into(),
                bdev: 11,
                name: "M1".into(),
                free_extents: free1,
                open: open1,
            },
        ];
        (snap, members, shards)
    }

    #[test]
    fn a_hot_member_sheds_a_shard_to_the_cool_one_after_sustain() {
        let (snap, members, shards) = world(&[0, 0, 0, 1], 4, true);
        let mut mem = DeviceMemory::default();
        let cool = Memory::default();
        assert_eq!(
            evaluate(&snap, &members, &shards, &opts(), &mut mem, &cool, 0),
            None
        );
        let mv = evaluate(&snap, &members, &shards, &opts(), &mut mem, &cool, 1).unwrap();
        assert_eq!((mv.from.as_str(), mv.to.as_str()), ("M0", "M1"));
        assert_eq!(mv.key.shard, 0);
        assert!(mv.reason.contains("75 %"), "{}", mv.reason);
        // Balanced members move nothing.
        let (snap, members, shards) = world(&[0, 1, 0, 1], 4, true);
        let mut mem = DeviceMemory::default();
        for t in 0..5 {
            assert_eq!(
                evaluate(&snap, &members, &shards, &opts(), &mut mem, &cool, t),
                None
            );
        }
    }

    #[test]
    fn no_shard_goes_to_a_full_or_closed_member_or_while_cooling() {
        let cool = Memory::default();
        for (free, open) in [(0, true), (4, false)] {
            let (snap, members, shards) = world(&[0, 0, 0, 0], free, open);
            let mut mem = DeviceMemory::default();
            for t in 0..4 {
                assert_eq!(
                    evaluate(&snap, &members, &shards, &opts(), &mut mem, &cool, t),
                    None
                );
            }
        }
        let (snap, members, shards) = world(&[0, 0, 0, 0], 4, true);
        let mut cooling = Memory::default();
        for i in 0..4 {
            cooling.moved(key(i), 0, 1_000);
        }
        let mut mem = DeviceMemory::default();
        for t in 0..4 {
            assert_eq!(
                evaluate(&snap, &members, &shards, &opts(), &mut mem, &cooling, t),
                None
            );
        }
        assert!(evaluate(&snap, &members, &shards, &opts(), &mut mem, &cooling, 2_000).is_some());
    }
}
