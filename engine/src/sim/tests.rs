//! The simulator's tests: the CI run of [`CI_SEEDS`] seeds, the replay of one
//! (`TIDEPOOL_SEED`), the soak (`TIDEPOOL_SIM_SEEDS` / `TIDEPOOL_SIM_MINUTES`, see
//! `scripts/sim.sh`), and the proof that the checker fails on a planted lost write.

use super::persist::MetadataStats;
use super::{run_seed, SeedReport};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Seeds the CI test runs (1 to this), when no seed or soak is asked for: 500 in a debug
/// build (about 25 s here), 2000 in release (about 12 s).
const CI_SEEDS: u64 = if cfg!(debug_assertions) { 500 } else { 2000 };

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Runs one seed; a checker's finding or a panic in the engine panics with the command
/// that replays the seed.
fn run_or_panic(seed: u64) -> SeedReport {
    let replay = format!("TIDEPOOL_SEED={seed} cargo test --release -p tidepool --lib sim::");
    match catch_unwind(AssertUnwindSafe(|| run_seed(seed, false))) {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => panic!("simulation seed {seed} failed: {why}\nreplay: {replay}"),
        Err(p) => {
            eprintln!("simulation seed {seed} panicked; replay: {replay}");
            std::panic::resume_unwind(p)
        }
    }
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    ops: u64,
    faults: u64,
    blocks_checked: u64,
    failed_allowed: u64,
    handoffs: u64,
    copies: u64,
    committed: u64,
    abandoned: u64,
    cancelled: u64,
    restarts: u64,
    crashes: u64,
    undecided: u64,
    refused: u64,
    drains: u64,
    removals: u64,
    hung: u64,
    meta: MetadataStats,
}

impl Totals {
    fn add(&mut self, r: &SeedReport) {
        self.seeds += 1;
        self.ops += r.client.sent;
        self.faults += r.faults_injected;
        self.blocks_checked += r.client.blocks_checked;
        self.failed_allowed += r.client.failed_allowed;
        self.handoffs += r.handoffs;
        self.copies += r.copies_started;
        self.committed += r.committed;
        self.abandoned += r.abandoned;
        self.cancelled += r.cancelled;
        self.restarts += r.restarts;
        self.crashes += r.crashes;
        self.undecided += r.undecided;
        self.refused += r.refused;
        self.drains += r.drains;
        self.removals += r.removals;
        self.hung += r.hung;
        let (m, t) = (&r.metadata, &mut self.meta);
        t.persists += m.persists;
        t.write_backs += m.write_backs;
        t.unknown += m.unknown;
        t.crashes_mid_persist += m.crashes_mid_persist;
        t.imports += m.imports;
        t.invalid_slots += m.invalid_slots;
    }

    fn print(&self, elapsed: Duration) {
        let s = self.seeds.max(1) as f64;
        println!(
            "simulator: {} seeds in {:.1} s ({:.1} seeds/s); per seed: {:.0} client ops, {:.1} \
             faults injected ({:.2} writes unanswered), {:.0} blocks read and checked, {:.1} allowed client failures, {:.2} \
             hand-offs, {:.2} copies ({:.2} committed, {:.2} abandoned, {:.2} cancelled, {:.2} \
             restarts, {:.2} undecided, {:.2} refused), {:.2} member removals started ({:.2} \
             done), {:.2} crashes; metadata: {:.2} \
             persists ({:.2} written back after a failure, {:.2} unknown), {:.3} crashes \
             between the member writes of one persist, {:.2} imports finding {:.2} invalid \
             slots; found: nothing",
            self.seeds,
            elapsed.as_secs_f64(),
            self.seeds as f64 / elapsed.as_secs_f64().max(1e-9),
            self.ops as f64 / s,
            self.faults as f64 / s,
            self.hung as f64 / s,
            self.blocks_checked as f64 / s,
            self.failed_allowed as f64 / s,
            self.handoffs as f64 / s,
            self.copies as f64 / s,
            self.committed as f64 / s,
            self.abandoned as f64 / s,
            self.cancelled as f64 / s,
            self.restarts as f64 / s,
            self.undecided as f64 / s,
            self.refused as f64 / s,
            self.drains as f64 / s,
            self.removals as f64 / s,
            self.crashes as f64 / s,
            self.meta.persists as f64 / s,
            self.meta.write_backs as f64 / s,
            self.meta.unknown as f64 / s,
            self.meta.crashes_mid_persist as f64 / s,
            self.meta.imports as f64 / s,
            self.meta.invalid_slots as f64 / s,
        );
    }
}

#[test]
fn simulated_engine_keeps_every_acknowledged_write_under_faults() {
    let started = Instant::now();
    let mut totals = Totals::default();
    if let Some(seed) = env_u64("TIDEPOOL_SEED") {
        let r = run_or_panic(seed);
        println!("seed {} on {} reactors: {r:?}", r.seed, r.reactors);
        totals.add(&r);
        totals.print(started.elapsed());
        return;
    }
    let minutes = env_u64("TIDEPOOL_SIM_MINUTES");
    let seeds = env_u64("TIDEPOOL_SIM_SEEDS");
    if minutes.is_some() || seeds.is_some() {
        // A soak: from a first seed of the caller's (or the clock's), one after another.
        let first = env_u64("TIDEPOOL_SIM_FIRST").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() << 20)
        });
        println!("simulator soak: first seed {first}");
        let until = minutes.map(|m| started + Duration::from_secs(m * 60));
        let mut seed = first;
        while seeds.is_none_or(|n| totals.seeds < n) && until.is_none_or(|u| Instant::now() < u) {
            totals.add(&run_or_panic(seed));
            seed += 1;
            if totals.seeds.is_multiple_of(1000) {
                totals.print(started.elapsed());
            }
        }
        totals.print(started.elapsed());
        return;
    }
    for seed in 1..=CI_SEEDS {
        totals.add(&run_or_panic(seed));
    }
    totals.print(started.elapsed());
    assert_eq!(totals.seeds, CI_SEEDS);
    // The seeds must have exercised what they claim to.
    assert!(totals.committed > CI_SEEDS, "too few committed copies");
    assert!(totals.abandoned > 0 && totals.cancelled > 0 && totals.handoffs > CI_SEEDS);
    assert!(totals.restarts > 0 && totals.faults > 0 && totals.failed_allowed > 0);
    assert!(totals.crashes > CI_SEEDS / 2, "too few crashes");
    assert!(totals.undecided > 0 && totals.hung > 0 && totals.refused > 0);
    let m = &totals.meta;
    assert!(m.write_backs > 0 && m.unknown > 0 && m.invalid_slots > 0);
    assert!(
        m.crashes_mid_persist > 0,
        "no crash between the member writes of a persist"
    );
    assert!(totals.removals > 0, "no member was ever removed");
}

/// The checker must fail when a member acknowledges a write it did not do.
#[test]
fn the_checker_catches_a_lost_write() {
    let mut caught = 0;
    for seed in 1..=40 {
        match run_seed(seed, true) {
            Err(why) if why.contains("lost") => caught += 1,
            Err(why) => panic!("seed {seed}: unexpected finding: {why}"),
            Ok(_) => {}
        }
    }
    // A lost write that a later write covers before anyone reads it cannot be seen by any
    // checker; about half of these seeds read the block first.
    assert!(
        caught >= 15,
        "only {caught} of 40 seeds caught the lost write"
    );
}

/// One seed is one run: the same seed twice does the same thing, step for step.
#[test]
fn a_seed_replays_exactly() {
    for seed in [7, 10_007] {
        let a = format!("{:?}", run_seed(seed, false).unwrap());
        let b = format!("{:?}", run_seed(seed, false).unwrap());
        assert_eq!(a, b, "seed {seed} ran two ways");
    }
}
