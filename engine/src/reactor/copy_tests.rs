//! Copy and migration tests: a shard copied to another member on its owner reactor while
//! written (router_tests' rig), target failures and their restarts, an abandoned copy, and a
//! seeded simulation of migrations under load. The simulation's test name says what it
//! checks; `TIDEPOOL_SEED=N` replays one seed.

use super::*;
use crate::reactor::CopyFailure;

/// Shard 1 of `rig(2, 4)`: owned by reactor 1, on M1 at block BASE.
const COPIED_SHARD: u64 = 1;
/// Where the copy goes on M2.
const TARGET_AT: u64 = 1000;

fn copy_rig() -> (Rig, BdevId, BdevId) {
    let rig = rig(2, 4);
    let p = json!({"name": "M2", "num_blocks": 4096, "block_size": BS});
    let m2 = create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap().0;
    let ee = create_bdev(&rig.reg, "bdev_error_create", json!({"base_name": "M2"}))
        .unwrap()
        .0;
    (rig, m2, ee)
}

/// Injects `kind` into the next `n` I/Os of type `what` on the copy's target, EE_M2.
fn inject_target(
    rig: &Rig,
    what: crate::bdev::error::InjectTarget,
    kind: crate::bdev::error::ErrorKind,
    n: u32,
) {
    let (_, b) = rig.reg.lookup("EE_M2").unwrap();
    b.downcast_ref::<crate::bdev::error::ErrorBdev>()
        .unwrap()
        .injection()
        .inject(what, kind, n);
}

fn fail_target_writes(rig: &Rig, n: u32) {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    inject_target(rig, InjectTarget::Write, ErrorKind::Failure, n);
}

/// Holds the next `n` writes to the copy's target until [`release_target`].
fn hold_target_writes(rig: &Rig, n: u32) {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    inject_target(rig, InjectTarget::Write, ErrorKind::Pending, n);
}

fn release_target(rig: &Rig) {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    inject_target(rig, InjectTarget::Clear, ErrorKind::Pending, 0);
}

/// Starts copying the copied shard to `target` on its owner and runs the copy to `Copied`
/// (every block on the target; writes still mirrored).
fn copy_to_copied(rig: &mut Rig, target: BdevId) -> crate::reactor::CopyHandle {
    let vol = rig.vol;
    let status = rig.rs[1]
        .ctx()
        .start_copy(copy_spec(vol, target, 5))
        .unwrap();
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        st.lock().unwrap().state == crate::reactor::CopyState::Copied
    });
    status
}

fn copy_spec(vol: BdevId, target: BdevId, max_restarts: u32) -> crate::reactor::CopySpec {
    crate::reactor::CopySpec {
        volume: vol,
        shard: COPIED_SHARD as u32,
        target,
        target_offset_blocks: TARGET_AT,
        chunk_blocks: 16,
        max_inflight: 2,
        max_restarts,
        max_blocks_per_s: 0,
    }
}

/// Writes batches of non-overlapping random ranges into the copied shard, from both
/// reactors, until `until()` holds; returns the model (block -> seed of its last write).
fn write_during(rig: &mut Rig, rng: &mut Rng, mut until: impl FnMut() -> bool) -> Vec<u64> {
    let first = COPIED_SHARD * SHARD;
    let mut model = vec![1u64; SHARD as usize];
    let mut seed = 100;
    let mut want = rig.done();
    for _ in 0..10_000 {
        if until() {
            return model;
        }
        // Four ranges in distinct quarters of the shard: no two overlap.
        for q in 0..4u64 {
            let n = 1 + rng.next_u64() % 8;
            let at = q * (SHARD / 4) + rng.next_u64() % (SHARD / 4 - n);
            seed += 1;
            let on = (seed % 2) as usize;
            rig.submit(on, rig.vol, IoType::Write, first + at, n, seed);
            for b in at..at + n {
                model[b as usize] = seed;
            }
            want += 1;
        }
        rig.settle(want);
        rig.release();
    }
    panic!("the copy did not end");
}

#[test]
fn a_shard_copies_while_written_and_target_failures_restart_it_unseen() {
    let (mut rig, m2, ee) = copy_rig();
    let first = COPIED_SHARD * SHARD;
    rig.submit(0, rig.vol, IoType::Write, first, SHARD, 1);
    rig.settle(1);
    rig.release();
    fail_target_writes(&rig, 3);
    let vol = rig.vol;
    let status = rig.rs[1].ctx().start_copy(copy_spec(vol, ee, 10)).unwrap();
    // Only the owner copies, and one copy per shard.
    use crate::reactor::CopyError;
    assert_eq!(
        rig.rs[0].ctx().start_copy(copy_spec(vol, ee, 10)).err(),
        Some(CopyError::NotOwner {
            reactor: 0,
            shard: COPIED_SHARD as u32
        })
    );
    assert_eq!(
        rig.rs[1].ctx().start_copy(copy_spec(vol, ee, 10)).err(),
        Some(CopyError::AlreadyCopying(COPIED_SHARD as u32))
    );
    let seed = std::env::var("TIDEPOOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0c09);
    println!("a_shard_copies_while_written...: seed {seed} (TIDEPOOL_SEED)");
    let mut rng = Rng::new(seed);
    let st = Arc::clone(&status);
    let model = write_during(&mut rig, &mut rng, || {
        st.lock().unwrap().state == crate::reactor::CopyState::Copied
    });
    rig.all_success();
    let s = status.lock().unwrap().clone();
    assert_eq!(s.restarts, 3, "one restart per failed target write: {s:?}");
    assert_eq!(s.copied_blocks, SHARD);
    assert!(
        matches!(
            s.last_error,
            Some(CopyFailure::TargetWrite { .. } | CopyFailure::MirrorTarget { .. })
        ),
        "{s:?}"
    );
    // The target holds exactly what the source holds, and that is the last acknowledged
    // write of every block.
    let source = rig.read(rig.members[1], BASE, SHARD);
    let target = rig.read(m2, TARGET_AT, SHARD);
    assert!(source == target, "target differs from source");
    for (b, seed) in model.iter().enumerate() {
        let got = &source[b * BS as usize..(b + 1) * BS as usize];
        let want = pattern(first + b as u64, *seed);
        assert!(got.iter().all(|&x| x == want), "block {b}");
    }
    // Writes after the copy ended are still mirrored until it is stopped.
    rig.submit(1, rig.vol, IoType::Write, first + 5, 2, 77);
    rig.settle(rig.done() + 1);
    assert_eq!(
        rig.read(m2, TARGET_AT + 5, 2),
        rig.read(rig.members[1], BASE + 5, 2)
    );
    assert!(rig.rs[1].ctx().stop_copy(rig.vol, COPIED_SHARD as u32));
    assert!(!rig.rs[1].ctx().stop_copy(rig.vol, COPIED_SHARD as u32));
    rig.release();
}

#[test]
fn a_copy_whose_target_keeps_failing_is_abandoned_and_clients_never_see_it() {
    let (mut rig, _, ee) = copy_rig();
    fail_target_writes(&rig, 1000);
    let vol = rig.vol;
    let status = rig.rs[1].ctx().start_copy(copy_spec(vol, ee, 2)).unwrap();
    let mut rng = Rng::new(7);
    let st = Arc::clone(&status);
    write_during(&mut rig, &mut rng, || {
        matches!(
            st.lock().unwrap().state,
            crate::reactor::CopyState::Abandoned(_)
        )
    });
    rig.all_success();
    let s = status.lock().unwrap().clone();
    let crate::reactor::CopyState::Abandoned(why) = s.state else {
        unreachable!()
    };
    assert!(
        matches!(
            why,
            CopyFailure::TooManyRestarts {
                max_restarts: 2,
                restarts: 3,
                ..
            }
        ),
        "{why:?}"
    );
    let shown = why.to_string();
    assert!(
        shown.starts_with("abandoned after 2 restarts, at failure 3: a "),
        "{shown}"
    );
    assert_eq!(s.restarts, 3);
    // Abandoned: no longer mirrored; client writes go on to the source alone.
    rig.submit(0, rig.vol, IoType::Write, COPIED_SHARD * SHARD, 4, 9);
    rig.settle(rig.done() + 1);
    rig.all_success();
    assert!(!rig.rs[1].ctx().stop_copy(rig.vol, COPIED_SHARD as u32));
    rig.release();
}

#[test]
fn writes_held_by_a_freeze_go_on_when_the_copy_gives_up_meanwhile() {
    let (mut rig, _, ee) = copy_rig();
    let vol = rig.vol;
    let status = rig.rs[1].ctx().start_copy(copy_spec(vol, ee, 0)).unwrap();
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        st.lock().unwrap().state == crate::reactor::CopyState::Copied
    });
    // A write on the owner is mirrored: its source half is done, its target half will fail.
    fail_target_writes(&rig, 1);
    let first = COPIED_SHARD * SHARD;
    let before = rig.done();
    rig.submit(1, vol, IoType::Write, first, 2, 5);
    // The commit freezes the copy with that mirror in flight; the next write is held.
    let frozen = rig.rs[1].ctx().freeze_copy(vol, COPIED_SHARD as u32, true);
    assert_eq!(frozen, Some((1, true)));
    rig.submit(1, vol, IoType::Write, first + 8, 2, 6);
    // The target write fails: with no restarts allowed the copy gives up, and both writes
    // complete (to the source) instead of the held one waiting forever.
    rig.settle(before + 2);
    rig.all_success();
    assert!(matches!(
        status.lock().unwrap().state,
        crate::reactor::CopyState::Abandoned(_)
    ));
    rig.release();
    rig.check(first, 2, 5);
    rig.check(first + 8, 2, 6);
}

/// Polls every reactor `n` times on the real clock.
fn poll_rounds(rig: &mut Rig, n: usize) {
    for _ in 0..n {
        for r in rig.rs.iter_mut() {
            r.poll(crate::time::now());
        }
    }
}

#[test]
fn a_copy_reads_no_chunk_before_writes_already_on_their_way_to_the_source_land() {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    let mut rig = rig_with(2, 4, |reg, m| {
        if m == 1 {
            create_bdev(reg, "bdev_error_create", json!({"base_name": "M1"})).unwrap();
        }
    });
    let p = json!({"name": "M2", "num_blocks": 4096, "block_size": BS});
    let m2 = create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap().0;
    let (vol, first) = (rig.vol, COPIED_SHARD * SHARD);
    rig.submit(1, vol, IoType::Write, first, SHARD, 1);
    rig.settle(1);
    rig.release();
    // A write on its way to the source: the device holds it.
    let source = rig.reg.lookup("EE_M1").unwrap().1;
    let injection = Arc::clone(
        source
            .downcast_ref::<crate::bdev::error::ErrorBdev>()
            .unwrap()
            .injection(),
    );
    injection.inject(InjectTarget::Write, ErrorKind::Pending, 1);
    rig.submit(1, vol, IoType::Write, first, 16, 2);
    poll_rounds(&mut rig, 10);
    assert_eq!(rig.done(), 1, "the device holds the write");
    // The copy starts on the owner meanwhile: reading the first chunk now would give the
    // target the blocks from before that write.
    let status = rig.rs[1].ctx().start_copy(copy_spec(vol, m2, 0)).unwrap();
    poll_rounds(&mut rig, 100);
    assert_eq!(
        status.lock().unwrap().copied_blocks,
        0,
        "no chunk before it lands"
    );
    injection.inject(InjectTarget::Clear, ErrorKind::Pending, 0);
    rig.settle(2);
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        st.lock().unwrap().state == crate::reactor::CopyState::Copied
    });
    rig.all_success();
    rig.release();
    let target = rig.read(m2, TARGET_AT, SHARD);
    for b in 0..SHARD {
        let want = pattern(first + b, if b < 16 { 2 } else { 1 });
        let got = &target[(b * BS) as usize..((b + 1) * BS) as usize];
        assert!(got.iter().all(|&x| x == want), "target block {b}");
    }
}

/// Reads `[off, off + n)` of `bdev` on reactor 0 with the fake clock at `*t` (the real
/// clock of `Rig::read` would move time under a simulation's feet).
fn read_at(rig: &mut Rig, t: &mut u64, bdev: BdevId, off: u64, n: u64) -> Vec<u8> {
    let before = rig.rec[0].0.count();
    rig.submit(0, bdev, IoType::Read, off, n, 0);
    let mut rounds = 0;
    while rig.rec[0].0.count() == before {
        *t += 1_000;
        for r in rig.rs.iter_mut() {
            r.poll(*t);
        }
        rounds += 1;
        assert!(rounds < 100_000, "a read did not complete");
    }
    let done = rig.rec[0].0.done.borrow_mut().pop().unwrap();
    assert_eq!(done.status, IoStatus::Success);
    done.buf.unwrap().as_slice().to_vec()
}

/// Tags reads in the simulation (the rest is the op's index in its batch).
const READ_TAG: u64 = 1 << 40;

/// Whether block `at` of `data` holds what the model says volume block `block` holds: the
/// pattern of its last write, or zeroes if it was never written.
fn block_matches_model(data: &[u8], at: u64, block: u64, model: &[u64]) -> bool {
    let m = model[block as usize];
    let want = if m == 0 { 0 } else { pattern(block, m) };
    data[(at * BS) as usize..((at + 1) * BS) as usize]
        .iter()
        .all(|&x| x == want)
}

/// The seeds the simulation runs in CI (208 abandons a copy); `TIDEPOOL_SEED` runs one of
/// your choice.
const SIM_SEEDS: [u64; 7] = [1, 2, 3, 0x5eed, 0xbeef, 0x2026, 208];

/// A deterministic simulation of migrations under load: three reactors stepped on a fake
/// clock, a volume of 8 shards on a slow member (a delay bdev) and a plain one; batches of
/// random reads and writes from every reactor; meanwhile shards are copied one at a time to
/// fresh targets (error bdevs) that fail a random number of writes, and committed the way
/// the control plane does (hold writes, flip the route, stop). It checks that every read
/// returns the last acknowledged write, that no client sees a failure, that each target
/// holds exactly its shard after the copy, and that restarts equal the injected failures.
fn simulate(seed: u64) {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    use crate::reactor::{CopySpec, CopyState};
    println!("migration simulation: seed {seed} (replay: TIDEPOOL_SEED={seed})");
    let mut rng = Rng::new(seed);
    let shards = 8u64;
    let mut rig = rig_with(3, shards, |reg, m| {
        if m == 0 {
            let p = json!({"base_bdev_name": "M0", "name": "X0", "avg_read_latency": 20,
                "p99_read_latency": 200, "avg_write_latency": 5, "p99_write_latency": 100});
            create_bdev(reg, "bdev_delay_create", p).unwrap();
        }
    });
    let targets: Vec<BdevId> = (0..shards)
        .map(|i| {
            let p = json!({"name": format!("T{i}"), "num_blocks": 1024, "block_size": BS});
            create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap();
            let e = json!({"base_name": format!("T{i}")});
            create_bdev(&rig.reg, "bdev_error_create", e).unwrap().0
        })
        .collect();
    let total = shards * SHARD;
    let mut model = vec![0u64; total as usize];
    let mut t = 1_000u64;
    let step = |rig: &mut Rig, t: &mut u64| {
        *t += 1_000;
        for r in rig.rs.iter_mut() {
            r.poll(*t);
        }
    };
    // (shard, owner, target index, handle, injected failures)
    let mut copy: Option<(u64, usize, usize, crate::reactor::CopyHandle, u32)> = None;
    let mut next_target = 0usize;
    let mut migrated = 0;
    let mut submitted = 0usize;
    let mut reads_checked = 0u64;
    let mut abandoned = 0;
    let mut restarts = 0u32;
    for batch in 1..=150u64 {
        // A batch of disjoint random reads and writes.
        let mut ops = Vec::new();
        let mut off = rng.next_u64() % 16;
        while off < total {
            let n = (1 + rng.next_u64() % 48).min(total - off);
            match rng.next_u64() % 3 {
                0 => ops.push((IoType::Write, off, n)),
                1 => ops.push((IoType::Read, off, n)),
                _ => {}
            }
            off += n + rng.next_u64() % 64;
        }
        let before = rig.done();
        for (i, &(io_type, off, n)) in ops.iter().enumerate() {
            let on = (rng.next_u64() % 3) as usize;
            // A read's tag names its op; a write's is the batch (its pattern's seed).
            let tag = if io_type == IoType::Read {
                READ_TAG | i as u64
            } else {
                batch
            };
            rig.submit(on, rig.vol, io_type, off, n, tag);
            submitted += 1;
        }
        let mut rounds = 0;
        while rig.done() < before + ops.len() {
            step(&mut rig, &mut t);
            rounds += 1;
            assert!(
                rounds < 100_000,
                "seed {seed}: batch {batch} did not complete"
            );
        }
        // No client saw a failure; reads saw the model before the batch (nothing they
        // overlap was written in it).
        for (r, _) in &rig.rec {
            for d in r.done.borrow().iter() {
                assert_eq!(
                    d.status,
                    IoStatus::Success,
                    "seed {seed}: a client saw a failure"
                );
                if d.tag & READ_TAG == 0 {
                    continue;
                }
                let (_, off, n) = ops[(d.tag & !READ_TAG) as usize];
                let data = d.buf.as_ref().unwrap().as_slice();
                for b in 0..n {
                    assert!(
                        block_matches_model(data, b, off + b, &model),
                        "seed {seed}: batch {batch} read block {}",
                        off + b
                    );
                    reads_checked += 1;
                }
            }
            r.done.borrow_mut().clear();
        }
        for &(io_type, off, n) in &ops {
            if io_type == IoType::Write {
                model[off as usize..(off + n) as usize].fill(batch);
            }
        }
        rig.release();
        if batch % 10 == 0 {
            // Spot-check the whole volume against the model.
            for b in (0..total).step_by(97) {
                let vol = rig.vol;
                let got = read_at(&mut rig, &mut t, vol, b, 1);
                let want = if model[b as usize] == 0 {
                    0
                } else {
                    pattern(b, model[b as usize])
                };
                assert!(
                    got.iter().all(|&x| x == want),
                    "seed {seed}: block {b} after batch {batch}"
                );
            }
        }
        // Migrations: start one when none runs; commit or drop it when it ends.
        match copy.take() {
            None if next_target < targets.len() && rng.next_u64().is_multiple_of(4) => {
                let shard = rng.next_u64() % shards;
                let owner = rig.volume.table().shards[shard as usize].owner as usize;
                let failures = (rng.next_u64() % 4) as u32;
                let target = targets[next_target];
                let inj = rig.reg.get(target).unwrap();
                inj.downcast_ref::<crate::bdev::error::ErrorBdev>()
                    .unwrap()
                    .injection()
                    .inject(InjectTarget::Write, ErrorKind::Failure, failures);
                let spec = CopySpec {
                    volume: rig.vol,
                    shard: shard as u32,
                    target,
                    target_offset_blocks: 0,
                    chunk_blocks: 1 + (rng.next_u64() % 32) as u32,
                    max_inflight: 1 + (rng.next_u64() % 4) as usize,
                    max_restarts: 8,
                    max_blocks_per_s: 0,
                };
                let h = rig.rs[owner].ctx().start_copy(spec).unwrap();
                copy = Some((shard, owner, next_target, h, failures));
                next_target += 1;
            }
            None => {}
            Some((shard, owner, ti, h, failures)) => {
                let state = h.lock().unwrap().state.clone();
                match state {
                    CopyState::Copying => {
                        // Fail one more target write at a random moment of the copy: while
                        // at least half of it is left (so a chunk write will meet it) and
                        // every earlier failure has been met.
                        let (copied, met) = {
                            let st = h.lock().unwrap();
                            (st.copied_blocks, st.restarts)
                        };
                        let mut failures = failures;
                        if met == failures && copied < SHARD / 2 && rng.next_u64().is_multiple_of(3)
                        {
                            let inj = rig.reg.get(targets[ti]).unwrap();
                            inj.downcast_ref::<crate::bdev::error::ErrorBdev>()
                                .unwrap()
                                .injection()
                                .inject(InjectTarget::Write, ErrorKind::Failure, 1);
                            failures += 1;
                        }
                        copy = Some((shard, owner, ti, h, failures));
                    }
                    CopyState::Abandoned(why) => {
                        // More failures than max_restarts: given up, placement unchanged,
                        // and still nothing reached a client (the batches check that).
                        let s = h.lock().unwrap().clone();
                        assert_eq!(s.restarts, 9, "seed {seed}: {why}");
                        assert!(
                            failures >= 9,
                            "seed {seed}: abandoned after {failures} failures"
                        );
                        assert!(
                            matches!(
                                why,
                                CopyFailure::TooManyRestarts {
                                    max_restarts: 8,
                                    ..
                                }
                            ),
                            "{why}"
                        );
                        rig.rs[owner].ctx().stop_copy(rig.vol, shard as u32);
                        abandoned += 1;
                    }
                    CopyState::Copied => {
                        // Commit as the control plane does: hold writes until none is in
                        // flight, flip the route, stop the copy (the held writes go on).
                        let vol = rig.vol;
                        loop {
                            match rig.rs[owner].ctx().freeze_copy(vol, shard as u32, true) {
                                Some((0, true)) => break,
                                Some(_) => step(&mut rig, &mut t),
                                None => panic!("seed {seed}: the copy went away"),
                            }
                        }
                        let s = h.lock().unwrap().clone();
                        assert_eq!(
                            s.restarts, failures,
                            "seed {seed}: restarts = injected failures"
                        );
                        restarts += s.restarts;
                        // The target holds exactly the shard.
                        let first = shard * SHARD;
                        let held = read_at(&mut rig, &mut t, targets[ti], 0, SHARD);
                        for b in 0..SHARD {
                            assert!(
                                block_matches_model(&held, b, first + b, &model),
                                "seed {seed}: target block {b}"
                            );
                        }
                        let target = targets[ti];
                        rig.volume.update(|r| {
                            r[shard as usize].member = target;
                            r[shard as usize].member_name = format!("EE_T{ti}");
                            r[shard as usize].offset_blocks = 0;
                        });
                        assert!(rig.rs[owner].ctx().stop_copy(vol, shard as u32));
                        migrated += 1;
                    }
                }
            }
        }
    }
    println!(
        "seed {seed}: {submitted} requests, {reads_checked} blocks read and checked, \
         {migrated} migrations ({abandoned} more abandoned), {restarts} restarts"
    );
    assert!(
        migrated >= 2,
        "seed {seed}: only {migrated} migration(s) completed"
    );
    assert!(submitted > 1000, "seed {seed}: {submitted} requests");
}

#[test]
fn simulated_migrations_under_load_keep_every_acknowledged_write() {
    let seeds: Vec<u64> = match std::env::var("TIDEPOOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => SIM_SEEDS.to_vec(),
    };
    for seed in seeds {
        simulate(seed);
    }
}

/// A target that holds a chunk's write and never answers: the copy is abandoned after
/// `TARGET_ANSWER_NS` (not restarted: the held write could land over a newer copy of its
/// chunk), and a client write held behind that chunk goes on to the source. It used to stay
/// `copying`, no error shown, with the client's write waiting as long as the device.
#[test]
fn a_target_that_does_not_answer_abandons_the_copy_and_frees_held_writes() {
    let (mut rig, _, ee) = copy_rig();
    hold_target_writes(&rig, 1);
    let vol = rig.vol;
    let mut spec = copy_spec(vol, ee, 5);
    spec.max_inflight = 1;
    let status = rig.rs[1].ctx().start_copy(spec).unwrap();
    // The first chunk's write is held; a client write into that chunk waits behind it.
    poll_rounds(&mut rig, 50);
    let first = COPIED_SHARD * SHARD;
    let before = rig.done();
    rig.submit(1, vol, IoType::Write, first + 2, 2, 42);
    poll_rounds(&mut rig, 50);
    assert_eq!(rig.done(), before, "held behind the chunk");
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        matches!(
            st.lock().unwrap().state,
            crate::reactor::CopyState::Abandoned(_)
        )
    });
    let why = status.lock().unwrap().last_error.clone();
    assert!(
        matches!(why, Some(CopyFailure::TargetSilent { .. })),
        "{why:?}"
    );
    assert!(why.unwrap().to_string().contains("no answer"));
    assert_eq!(status.lock().unwrap().restarts, 0);
    rig.settle(before + 1);
    rig.all_success();
    rig.release();
    rig.check(first + 2, 2, 42);
    release_target(&rig);
    poll_rounds(&mut rig, 50);
}

/// Two writes to one block in flight together while the shard is mirrored, on a source that
/// answers the first after the second (a delay bdev, whose latency changes in between). Each
/// mirror half went out when the one before it came back, so the target took them in the
/// other order: the source held the second write, the target the first, and the block would
/// have changed, unwritten, when the route flipped. A write overlapping a mirror in flight
/// now waits for it, and both copies end with the second.
#[test]
fn overlapping_writes_land_in_one_order_on_source_and_target() {
    use crate::bdev::delay::LatencyType;
    let mut rig = rig_with(2, 4, |reg, m| {
        if m == 1 {
            let p = json!({"base_bdev_name": "M1", "name": "X1", "avg_read_latency": 10,
                "p99_read_latency": 10, "avg_write_latency": 1000, "p99_write_latency": 1000});
            create_bdev(reg, "bdev_delay_create", p).unwrap();
        }
    });
    let p = json!({"name": "M2", "num_blocks": 4096, "block_size": BS});
    let target = create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap().0;
    let vol = rig.vol;
    let status = copy_to_copied(&mut rig, target);
    let (_, x1) = rig.reg.lookup("X1").unwrap();
    let delay = x1
        .downcast_ref::<crate::bdev::delay::DelayBdev>()
        .unwrap()
        .latencies();
    let block = COPIED_SHARD * SHARD + 5;
    let before = rig.done();
    // The first write's answer takes 20 ms, the second's 1 ms (avg and p99 stay within 50x).
    delay.update(LatencyType::P99Write, 20_000).unwrap();
    delay.update(LatencyType::AvgWrite, 20_000).unwrap();
    rig.submit(1, vol, IoType::Write, block, 1, 1);
    poll_rounds(&mut rig, 20);
    delay.update(LatencyType::AvgWrite, 1000).unwrap();
    delay.update(LatencyType::P99Write, 1000).unwrap();
    rig.submit(1, vol, IoType::Write, block, 1, 2);
    rig.settle(before + 2);
    rig.all_success();
    rig.release();
    rig.check(block, 1, 2);
    let on_target = rig.read(target, TARGET_AT + 5, 1);
    assert!(
        on_target.iter().all(|&x| x == pattern(block, 2)),
        "the target holds the first write"
    );
    assert_eq!(
        status.lock().unwrap().state,
        crate::reactor::CopyState::Copied
    );
    rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32);
}

/// A target that holds a mirrored write and never answers: when the copy is abandoned for
/// it, the client's write is answered from the source (with a buffer of its size) instead of
/// waiting as long as the target does; the held write, once the target lets it go, is
/// dropped and the copy retired.
#[test]
fn a_client_write_whose_target_half_is_held_is_answered_when_the_copy_gives_up() {
    let (mut rig, _, ee) = copy_rig();
    let vol = rig.vol;
    let status = copy_to_copied(&mut rig, ee);
    hold_target_writes(&rig, 1);
    let block = COPIED_SHARD * SHARD + 9;
    let before = rig.done();
    rig.submit(1, vol, IoType::Write, block, 3, 77);
    poll_rounds(&mut rig, 50);
    assert_eq!(rig.done(), before, "waits for its target half");
    rig.settle(before + 1);
    let state = status.lock().unwrap().state.clone();
    assert!(
        matches!(
            state,
            crate::reactor::CopyState::Abandoned(CopyFailure::TargetSilent { .. })
        ),
        "{state:?}"
    );
    rig.all_success();
    {
        let done = rig.rec[1].0.done.borrow();
        let last = done.last().unwrap();
        assert_eq!(last.buf.as_ref().map(|b| b.len()), Some(3 * BS as usize));
    }
    rig.release();
    rig.check(block, 3, 77);
    assert!(rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    release_target(&rig);
    poll_rounds(&mut rig, 50);
    assert!(!rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    // (`check`'s reads take their own completions off the recorder.)
    assert_eq!(rig.done(), before + 1, "no second answer to the write");
}

/// A copied shard's target holds a mirrored write to block 0, and a write to blocks 0-7
/// waits behind it; a later write to block 5 overlaps only the waiting one, and waits too
/// rather than pass it (it used to go out at once: a stream of such writes could keep the
/// big one waiting, and they landed in the other order). All three land in order.
#[test]
fn a_write_does_not_pass_an_earlier_one_waiting_behind_a_mirror() {
    let (mut rig, _, ee) = copy_rig();
    let vol = rig.vol;
    copy_to_copied(&mut rig, ee);
    let first = COPIED_SHARD * SHARD;
    hold_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, first, 1, 1);
    poll_rounds(&mut rig, 10);
    rig.submit(1, vol, IoType::Write, first, 8, 2);
    rig.submit(1, vol, IoType::Write, first + 5, 1, 3);
    poll_rounds(&mut rig, 20);
    assert_eq!(
        rig.done(),
        0,
        "the later write waits behind the earlier one"
    );
    release_target(&rig);
    rig.settle(3);
    rig.all_success();
    rig.release();
    rig.check(first, 5, 2);
    rig.check(first + 5, 1, 3);
    rig.check(first + 6, 2, 2);
    for (b, seed) in [(0, 2), (5, 3), (7, 2)] {
        let on_target = rig.read(ee, TARGET_AT + b, 1);
        assert!(
            on_target.iter().all(|&x| x == pattern(first + b, seed)),
            "{b}"
        );
    }
}

/// A copy stopped (cancelled, or refused at its commit) while a mirrored write waits for a
/// target that does not answer: the client is answered from the source at once.
#[test]
fn stopping_a_copy_answers_writes_that_wait_for_its_target() {
    let (mut rig, _, ee) = copy_rig();
    let vol = rig.vol;
    copy_to_copied(&mut rig, ee);
    let block = COPIED_SHARD * SHARD + 3;
    hold_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, block, 2, 9);
    poll_rounds(&mut rig, 20);
    assert_eq!(rig.done(), 0);
    assert!(rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32));
    rig.settle(1);
    rig.all_success();
    rig.release();
    rig.check(block, 2, 9);
    release_target(&rig);
    poll_rounds(&mut rig, 50);
    assert!(!rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
}

/// A reactor runs at most `tag::MAX_COPIES` copies at once (the width of the copy index in
/// an I/O tag): one more is refused with an error, not started under an index that decodes
/// as another copy's. Once one ends, a new one may start.
#[test]
fn copies_past_the_tag_s_cap_are_refused_and_a_slot_comes_back_when_one_ends() {
    use crate::reactor::tag::MAX_COPIES;
    let mut rig = rig(1, MAX_COPIES as u64 + 1);
    let p = json!({"name": "M2", "num_blocks": 4096, "block_size": BS});
    let m2 = create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap().0;
    let vol = rig.vol;
    let spec = |shard: u32| crate::reactor::CopySpec {
        shard,
        target_offset_blocks: 0,
        ..copy_spec(vol, m2, 0)
    };
    for shard in 0..MAX_COPIES as u32 {
        rig.rs[0]
            .ctx()
            .start_copy(spec(shard))
            .unwrap_or_else(|e| panic!("copy {shard}: {e}"));
    }
    let err = rig.rs[0]
        .ctx()
        .start_copy(spec(MAX_COPIES as u32))
        .expect_err("one copy past the cap must be refused");
    assert_eq!(err, crate::reactor::CopyError::TooManyCopies { reactor: 0 });
    assert!(err.to_string().contains("256 copies"), "{err}");
    assert!(rig.rs[0].ctx().stop_copy(vol, 3));
    rig.rs[0].ctx().start_copy(spec(MAX_COPIES as u32)).unwrap();
}

/// A copy whose commit is undecided (its placement may still land, and a restart would then
/// read the shard from the target) and a mirrored write whose target half fails: the client
/// must not be told the write is done, for the target lacks it. The copy used to restart
/// (so it was no longer whole) and acknowledge the write from the source alone. Now the
/// write fails with the target's status, the copy stays whole and keeps mirroring.
#[test]
fn an_undecided_copy_fails_a_write_its_target_failed_and_is_never_restarted() {
    let (mut rig, m2, ee) = copy_rig();
    let vol = rig.vol;
    let status = copy_to_copied(&mut rig, ee);
    assert!(rig.rs[1]
        .ctx()
        .keep_copy_undecided(vol, COPIED_SHARD as u32));
    let block = COPIED_SHARD * SHARD + 7;
    fail_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, block, 2, 5);
    rig.settle(1);
    let acknowledged = rig.rec[1].0.statuses()[0].is_success();
    let on_target = rig.read(m2, TARGET_AT + 7, 2);
    let landed = on_target
        .chunks(BS as usize)
        .enumerate()
        .all(|(i, b)| b.iter().all(|&x| x == pattern(block + i as u64, 5)));
    assert!(
        !acknowledged || landed,
        "an acknowledged write is missing on the undecided target"
    );
    let s = status.lock().unwrap().clone();
    assert_eq!(s.state, crate::reactor::CopyState::Copied, "{s:?}");
    assert_eq!(s.restarts, 0, "{s:?}");
    assert!(
        matches!(s.last_error, Some(CopyFailure::MirrorTarget { .. })),
        "{s:?}"
    );
    // Still mirrored: the next write lands on both places and is acknowledged.
    rig.release();
    rig.submit(1, vol, IoType::Write, block, 2, 6);
    rig.settle(2);
    assert!(rig.rec[1].0.statuses()[1].is_success());
    rig.release();
    rig.check(block, 2, 6);
    let on_target = rig.read(m2, TARGET_AT + 7, 2);
    assert!(on_target
        .chunks(BS as usize)
        .enumerate()
        .all(|(i, b)| b.iter().all(|&x| x == pattern(block + i as u64, 6))));
    rig.rs[1].ctx().stop_copy(vol, COPIED_SHARD as u32);
}

/// A copy abandoned for its target's failures (past `max_restarts`) while another mirrored
/// write waits for a target half that does not answer: that client is answered from the
/// source at once, and the stall rule still watches the held write, so the copy is marked
/// `target_stalled` (its extent stays reserved). The client used to wait as long as the
/// target (`stop_copy` finds active copies only, and the stall check skipped abandoned
/// ones), and `target_stalled` was never set.
#[test]
fn an_abandoned_copy_answers_writes_held_on_its_target_and_is_still_watched_for_stalls() {
    let (mut rig, _, ee) = copy_rig();
    let vol = rig.vol;
    let status = rig.rs[1].ctx().start_copy(copy_spec(vol, ee, 0)).unwrap();
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        st.lock().unwrap().state == crate::reactor::CopyState::Copied
    });
    let first = COPIED_SHARD * SHARD;
    hold_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, first + 3, 2, 8);
    poll_rounds(&mut rig, 20);
    assert_eq!(rig.done(), 0, "waits for its target half");
    fail_target_writes(&rig, 1);
    rig.submit(1, vol, IoType::Write, first + 40, 2, 9);
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || {
        matches!(
            st.lock().unwrap().state,
            crate::reactor::CopyState::Abandoned(_)
        )
    });
    rig.settle(2);
    rig.all_success();
    rig.release();
    rig.check(first + 3, 2, 8);
    rig.check(first + 40, 2, 9);
    assert!(rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    let st = Arc::clone(&status);
    run_until(&mut rig.rs, || st.lock().unwrap().target_stalled);
    release_target(&rig);
    poll_rounds(&mut rig, 50);
    assert!(!rig.rs[1].ctx().copy_target_busy(vol, COPIED_SHARD as u32));
    assert_eq!(rig.done(), 2, "no second answer to the held write");
}

#[path = "mirror_tests.rs"]
mod mirror_tests;
