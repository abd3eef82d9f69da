//! The balancer's decision, as a pure function of the load snapshot, the shards' owners and
//! the balancer's memory (how long the imbalance has lasted, which shards moved recently).
//!
//! A reactor's *score* is its weighted share of the executed requests, of the bytes moved and
//! of the busy time, so the scores of all reactors add up to 1 and the fair score is
//! `1 / reactors`. When the highest score stays above `threshold x fair` for
//! `sustain_samples` evaluations in a row, the balancer moves one shard from the highest to
//! the lowest reactor: the shard whose own score, taken off one and added to the other,
//! leaves the lowest maximum, which is not necessarily the hottest shard (moving a shard
//! that carries more than half the gap just swaps the roles). A move must lower the maximum
//! by a margin, and a shard that moved stays put for `cooldown`: together they keep shards
//! from going back and forth.

use crate::load::{ShardKey, Snapshot};
use crate::reactor::ReactorId;
use crate::time::Nanos;
use std::collections::BTreeMap;

/// How the balancer weighs and decides (the `balancer_set_options` parameters).
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub enabled: bool,
    pub interval_ns: Nanos,
    /// How far above the fair share (as a ratio) a reactor may go before it is relieved.
    pub imbalance_threshold: f64,
    /// Evaluations in a row the imbalance must last.
    pub sustain_samples: u32,
    /// How long a moved shard stays put.
    pub cooldown_ns: Nanos,
    /// Migrations in flight at once (a hand-off completes within its decision).
    pub max_concurrent: u32,
    pub weight_requests: f64,
    pub weight_bytes: f64,
    pub weight_busy: f64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            enabled: false,
            interval_ns: 1_000_000_000,
            imbalance_threshold: 1.25,
            sustain_samples: 3,
            cooldown_ns: 30_000_000_000,
            max_concurrent: 1,
            weight_requests: 1.0,
            weight_bytes: 0.0,
            weight_busy: 0.0,
        }
    }
}

/// A shard the balancer may move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlace {
    pub key: ShardKey,
    pub owner: ReactorId,
    /// The member bdev holding it.
    pub member: crate::bdev::BdevId,
    /// Its member is present (an unavailable shard is never moved).
    pub online: bool,
}

/// A move the balancer decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub key: ShardKey,
    pub from: ReactorId,
    pub to: ReactorId,
    /// Scores before, and as predicted after.
    pub max_before: f64,
    pub max_after: f64,
    pub reason: String,
}

/// What one evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No reactor published load yet, or nothing ran.
    NoLoad,
    Balanced {
        imbalance: f64,
    },
    /// Above the threshold, but not for long enough yet.
    Waiting {
        imbalance: f64,
        samples: u32,
    },
    /// Above the threshold for long enough, but no shard's move would help.
    Stuck {
        imbalance: f64,
        why: String,
    },
    Move(Move),
}

/// The balancer's memory between evaluations.
#[derive(Default)]
pub struct Memory {
    over: u32,
    /// The reactors' scores at the last evaluation.
    scores: Vec<f64>,
    /// Shard -> when it may move again.
    cooldown: BTreeMap<ShardKey, Nanos>,
}

impl Memory {
    /// Forgets the run of imbalanced samples (after a move: the next samples must show
    /// the new placement).
    pub fn restart_run(&mut self) {
        self.over = 0;
    }

    pub fn moved(&mut self, key: ShardKey, now: Nanos, cooldown: Nanos) {
        self.cooldown.insert(key, now.saturating_add(cooldown));
    }

    /// Whether a shard moved too recently to move again.
    /// The reactors' scores at the last evaluation (empty before one ran).
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }

    pub fn is_cooling(&self, key: &ShardKey, now: Nanos) -> bool {
        self.cooldown.get(key).is_some_and(|&until| until > now)
    }
}

/// Each reactor's score (indexed by reactor; they add up to 1 when anything ran) and each
/// shard's, on the same scale.
pub fn scores(
    snapshot: &Snapshot,
    shards: &[ShardPlace],
    reactors: usize,
    o: &Options,
) -> (Vec<f64>, BTreeMap<ShardKey, f64>) {
    let mut req = vec![0.0; reactors];
    let mut bytes = vec![0.0; reactors];
    let mut busy = vec![0.0; reactors];
    for r in &snapshot.reactors {
        let i = r.reactor as usize;
        if i < reactors {
            req[i] = r.load.iops;
            bytes[i] = r.load.read_bytes_per_s + r.load.write_bytes_per_s;
            busy[i] = r.busy_ratio;
        }
    }
    let total = |v: &[f64]| v.iter().sum::<f64>();
    let (tr, tb, tu) = (total(&req), total(&bytes), total(&busy));
    let metrics = [
        (o.weight_requests, tr),
        (o.weight_bytes, tb),
        (o.weight_busy, tu),
    ];
    let weight: f64 = metrics
        .iter()
        .filter(|(_, t)| *t > 0.0)
        .map(|(w, _)| w)
        .sum();
    let share = |x: f64, t: f64| if t > 0.0 { x / t } else { 0.0 };
    let score = |r: f64, b: f64, u: f64| {
        if weight <= 0.0 {
            return 0.0;
        }
        (o.weight_requests * share(r, tr)
            + o.weight_bytes * share(b, tb)
            + o.weight_busy * share(u, tu))
            / weight
    };
    let reactor_scores = (0..reactors)
        .map(|i| score(req[i], bytes[i], busy[i]))
        .collect();
    let owners: BTreeMap<ShardKey, ReactorId> = shards.iter().map(|p| (p.key, p.owner)).collect();
    let shard_scores = snapshot
        .shards
        .iter()
        .map(|(k, l)| {
            let b = l.read_bytes_per_s + l.write_bytes_per_s;
            // Busy time follows requests inside a reactor: the shard's part of its owner's.
            let u = owners
                .get(k)
                .map(|&r| r as usize)
                .filter(|&r| r < reactors && req[r] > 0.0)
                .map_or(0.0, |r| busy[r] * (l.iops / req[r]).min(1.0));
            (*k, score(l.iops, b, u))
        })
        .collect();
    (reactor_scores, shard_scores)
}

/// One evaluation at `now`.
pub fn evaluate(
    snapshot: &Snapshot,
    shards: &[ShardPlace],
    reactors: usize,
    o: &Options,
    memory: &mut Memory,
    now: Nanos,
) -> Verdict {
    memory.cooldown.retain(|_, until| *until > now);
    if reactors < 2 {
        return Verdict::NoLoad;
    }
    let (scores, shard_scores) = scores(snapshot, shards, reactors, o);
    memory.scores.clone_from(&scores);
    let sum: f64 = scores.iter().sum();
    if sum <= 0.0 {
        memory.over = 0;
        return Verdict::NoLoad;
    }
    let fair = 1.0 / reactors as f64;
    let (hot, &max) = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("at least two reactors");
    let (cold, _) = scores
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .expect("at least two reactors");
    let imbalance = max / fair;
    if imbalance <= o.imbalance_threshold {
        memory.over = 0;
        return Verdict::Balanced { imbalance };
    }
    memory.over += 1;
    if memory.over < o.sustain_samples {
        return Verdict::Waiting {
            imbalance,
            samples: memory.over,
        };
    }
    let mut cooling = 0;
    let candidates: Vec<(ShardKey, f64)> = shards
        .iter()
        .filter(|s| s.owner as usize == hot && s.online)
        .filter_map(|s| Some((s.key, *shard_scores.get(&s.key)?)))
        .filter(|&(key, _)| {
            let cool = memory.cooldown.contains_key(&key);
            cooling += usize::from(cool);
            !cool
        })
        .collect();
    match best_move(&scores, hot, cold, fair, candidates) {
        Some((key, after)) => Verdict::Move(Move {
            key,
            from: hot as ReactorId,
            to: cold as ReactorId,
            max_before: max,
            max_after: after,
            reason: format!(
                "reactor {hot} carries {:.0} % of the load ({imbalance:.2}x its fair share) \
                 for {} samples; this shard's move leaves at most {:.0} %",
                max * 100.0,
                memory.over,
                after * 100.0
            ),
        }),
        None => Verdict::Stuck {
            imbalance,
            why: if cooling > 0 {
                format!("{cooling} shard(s) of reactor {hot} are cooling down; no other move helps")
            } else {
                format!("no shard of reactor {hot} can move without making things no better")
            },
        },
    }
}

/// The move that best evens a set of scores (reactors, or members of a pool): of the
/// `candidates` (shard, score) on side `hot`, the one that, taken off it and added to side
/// `cold`, leaves the lowest maximum over every side; with that maximum. Moving the hottest
/// shard may only swap the two sides' roles, so it is not assumed. `None` unless the move
/// takes at least [`MIN_GAIN_OF_FAIR`] of the fair share off the maximum.
pub(super) fn best_move(
    scores: &[f64],
    hot: usize,
    cold: usize,
    fair: f64,
    candidates: impl IntoIterator<Item = (ShardKey, f64)>,
) -> Option<(ShardKey, f64)> {
    let (max, min) = (scores[hot], scores[cold]);
    let others = scores
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != hot && *i != cold)
        .map(|(_, &s)| s)
        .fold(0.0, f64::max);
    let mut best: Option<(ShardKey, f64)> = None;
    for (key, s) in candidates {
        if s <= 0.0 {
            continue;
        }
        let after = (max - s).max(min + s).max(others);
        if best.is_none_or(|(_, b)| after < b) {
            best = Some((key, after));
        }
    }
    best.filter(|&(_, after)| after < max - MIN_GAIN_OF_FAIR * fair)
}

/// The least a move must take off the hottest side's share, as a fraction of the fair share.
/// Load that sits in a few hot shards cannot always be split evenly: moving one then only
/// swaps which side is hot, for a gain within the noise of the samples, and the next
/// evaluation moves it back (with 1 %, a probe saw the same shards move back and forth every
/// cooldown for minutes, each data move a full copy). A tenth of the fair share is above
/// that noise, and well below what a real imbalance gains.
pub(super) const MIN_GAIN_OF_FAIR: f64 = 0.10;

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn key(shard: u32) -> ShardKey {
        ShardKey { volume: 1, shard }
    }

    /// A move that only trades which side is hot, for a gain within sampling noise, is not
    /// made (the balancer moved such shards back and forth); one that takes a real share off
    /// the hottest side is.
    #[test]
    fn a_move_must_gain_a_tenth_of_the_fair_share() {
        let fair = 1.0 / 3.0;
        let scores = [0.45, 0.44, 0.11];
        assert_eq!(best_move(&scores, 0, 2, fair, [(key(0), 0.2)]), None);
        let scores = [0.45, 0.35, 0.20];
        let (k, after) = best_move(&scores, 0, 2, fair, [(key(1), 0.12)]).unwrap();
        assert_eq!(k, key(1));
        assert!((after - 0.35).abs() < 1e-9, "{after}");
    }
    use crate::load::{Load, Pattern, ReactorLoad};

    /// A load of `iops` 4 KiB random reads.
    pub(in crate::balancer) fn load(iops: f64) -> Load {
        Load {
            read_iops: iops,
            write_iops: 0.0,
            iops,
            read_bytes_per_s: iops * 4096.0,
            write_bytes_per_s: 0.0,
            queue_depth_avg: 1.0,
            queue_depth_max: 1,
            latency_avg_us: 10.0,
            latency_p99_us: 20.0,
            read_share: 1.0,
            pattern: Pattern::Random,
        }
    }

    /// Two reactors; shard i of volume 9 carries `per_shard[i]` IOPS and is owned by
    /// `owners[i]`.
    fn world(per_shard: &[f64], owners: &[u16]) -> (Snapshot, Vec<ShardPlace>) {
        let key = |i: usize| ShardKey {
            volume: 9,
            shard: i as u32,
        };
        let mut per_reactor = [0.0; 2];
        for (i, &x) in per_shard.iter().enumerate() {
            per_reactor[owners[i] as usize] += x;
        }
        let reactors = (0..2)
            .map(|r| ReactorLoad {
                reactor: r as u16,
                busy_ratio: 0.5,
                net_bytes_per_s: 0.0,
                taken_per_s: 0.0,
                share: 0.0,
                load: load(per_reactor[r]),
            })
            .collect();
        let shards = per_shard
            .iter()
            .enumerate()
            .map(|(i, &x)| (key(i), load(x)))
            .collect();
        let places = owners
            .iter()
            .enumerate()
            .map(|(i, &o)| ShardPlace {
                key: key(i),
                owner: o,
                member: 0,
                online: true,
            })
            .collect();
        (
            Snapshot {
                reactors,
                bdevs: Default::default(),
                shards,
            },
            places,
        )
    }

    /// The balancer switched on, deciding after two samples; the rest default.
    pub(in crate::balancer) fn opts() -> Options {
        Options {
            enabled: true,
            sustain_samples: 2,
            ..Options::default()
        }
    }

    #[test]
    fn balanced_load_moves_nothing_and_resets_the_run() {
        let (snap, places) = world(&[100.0, 100.0, 100.0, 100.0], &[0, 1, 0, 1]);
        let mut m = Memory::default();
        let v = evaluate(&snap, &places, 2, &opts(), &mut m, 0);
        assert_eq!(v, Verdict::Balanced { imbalance: 1.0 });
        let (empty, _) = world(&[0.0, 0.0], &[0, 1]);
        assert_eq!(
            evaluate(&empty, &places, 2, &opts(), &mut m, 0),
            Verdict::NoLoad
        );
    }

    #[test]
    fn an_imbalance_must_last_then_the_shard_that_best_evens_moves() {
        // Reactor 0 carries 700 of 1000: shards of 400, 200 and 100. The gap is 400: moving
        // the 400 swaps the roles (max stays 700/1000... no: 300 vs 700), the 200 leaves
        // 500/500: the best; the hottest is not it.
        let (snap, places) = world(&[400.0, 200.0, 100.0, 300.0], &[0, 0, 0, 1]);
        let mut m = Memory::default();
        let o = opts();
        let v = evaluate(&snap, &places, 2, &o, &mut m, 0);
        assert!(matches!(v, Verdict::Waiting { samples: 1, .. }), "{v:?}");
        let Verdict::Move(mv) = evaluate(&snap, &places, 2, &o, &mut m, 1) else {
            panic!("a sustained imbalance moves a shard");
        };
        assert_eq!((mv.key.shard, mv.from, mv.to), (1, 0, 1));
        assert!((mv.max_before - 0.7).abs() < 1e-9 && (mv.max_after - 0.5).abs() < 1e-9);
        assert!(mv.reason.contains("70 %"), "{}", mv.reason);
    }

    #[test]
    fn a_moved_shard_cools_down_and_no_move_that_does_not_help_is_made() {
        // One shard carries everything: moving it only swaps the roles.
        let (snap, places) = world(&[500.0, 0.0], &[0, 1]);
        let mut m = Memory::default();
        let o = Options {
            sustain_samples: 1,
            ..opts()
        };
        let v = evaluate(&snap, &places, 2, &o, &mut m, 0);
        assert!(matches!(v, Verdict::Stuck { .. }), "{v:?}");

        // Two equal hot shards on reactor 0: one moves; it may not come back during its
        // cooldown even if the load turns around.
        let (snap, places) = world(&[300.0, 300.0, 0.0], &[0, 0, 1]);
        let Verdict::Move(mv) = evaluate(&snap, &places, 2, &o, &mut m, 10) else {
            panic!("expected a move");
        };
        m.moved(mv.key, 10, o.cooldown_ns);
        m.restart_run();
        let moved = mv.key.shard as usize;
        let mut owners = [0u16, 0, 1];
        owners[moved] = 1;
        // Now reactor 1 is hot (the moved shard and a newly hot one).
        let mut load = [300.0, 300.0, 300.0];
        load[1 - moved] = 50.0;
        let (snap, places) = world(&load, &owners);
        let v = evaluate(&snap, &places, 2, &o, &mut m, 20);
        let Verdict::Move(back) = v else {
            panic!("the other hot shard of reactor 1 may move: {v:?}");
        };
        assert_ne!(back.key, mv.key, "the moved shard is cooling down");
        // After the cooldown it may move again.
        let later = 10 + o.cooldown_ns + 1;
        let (snap, places) = world(&[600.0, 0.0, 0.0], &[1, 0, 0]);
        let v = evaluate(&snap, &places, 2, &o, &mut m, later);
        assert!(
            matches!(v, Verdict::Stuck { .. }),
            "a lone hot shard stays: {v:?}"
        );
    }

    #[test]
    fn weights_change_what_counts() {
        // Reactor 0: few large requests; reactor 1: many small ones.
        let (mut snap, places) = world(&[100.0, 400.0], &[0, 1]);
        snap.reactors[0].load.read_bytes_per_s = 100.0 * 1048576.0;
        snap.reactors[1].load.read_bytes_per_s = 400.0 * 4096.0;
        let by_requests = scores(&snap, &places, 2, &opts()).0;
        assert!(by_requests[1] > by_requests[0]);
        let by_bytes = Options {
            weight_requests: 0.0,
            weight_bytes: 1.0,
            ..opts()
        };
        let s = scores(&snap, &places, 2, &by_bytes).0;
        assert!(s[0] > s[1]);
        assert!((s[0] + s[1] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_shard_gets_its_share_of_its_own_owners_busy_time() {
        // Reactor 0 serves 10 000 small IOPS at 30 % busy, reactor 1 50 large ones at 95 %:
        // shard 0, 500 IOPS on reactor 0, holds 5 % of reactor 0's busy time, not of
        // reactor 1's.
        let (mut snap, places) = world(&[500.0, 9500.0, 50.0], &[0, 0, 1]);
        snap.reactors[0].busy_ratio = 0.3;
        snap.reactors[1].busy_ratio = 0.95;
        let by_busy = Options {
            weight_requests: 0.0,
            weight_bytes: 0.0,
            weight_busy: 1.0,
            ..opts()
        };
        let (reactors, shards) = scores(&snap, &places, 2, &by_busy);
        let key = places[0].key;
        let want = 0.05 * reactors[0];
        assert!(
            (shards[&key] - want).abs() < 1e-9,
            "{} != {want}",
            shards[&key]
        );
    }
}
