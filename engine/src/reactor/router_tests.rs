//! Router tests: volumes on malloc members, reactors stepped on the test thread, so every
//! interleaving (a piece sitting in a ring while its shard changes owner) is chosen here.

use super::*;
use crate::bdev::{BdevInfo, BdevRegistry, IoStatus, IoType, IoTypeSet};
use crate::config::create_bdev;
use crate::reactor::{Reactor, ReactorConfig};
use crate::rng::Rng;
use crate::testkit::{reactors, request, run_until, Recorder};
use crate::volume::{ShardRoute, Volume, VolumeBdev};
use serde_json::json;

const BS: u64 = 512;
const SHARD: u64 = 256;
/// Where shards start on each member: not 0, so a missed translation shows.
const BASE: u64 = 64;

struct Rig {
    reg: Arc<BdevRegistry>,
    rs: Vec<Reactor>,
    vol: BdevId,
    volume: Arc<Volume>,
    members: [BdevId; 2],
    pool: DmaPool,
    rec: Vec<(Recorder, TaskId)>,
}

/// A volume of `shards` shards of 256 blocks over members M0 and M1 (shard i on member
/// i % 2), owned round the `n` reactors as `(i + i / 2) % n`.
fn rig(n: usize, shards: u64) -> Rig {
    rig_with(n, shards, |_, _| {})
}

/// `rig`, with `wrap(registry, member)` run after each member M0, M1 is made: it may stack
/// a bdev on it named `X{m}`, which then becomes the member instead.
fn rig_with(n: usize, shards: u64, wrap: impl Fn(&BdevRegistry, usize)) -> Rig {
    let reg = Arc::new(BdevRegistry::new());
    let mut members = [0; 2];
    for (m, id) in members.iter_mut().enumerate() {
        let p = json!({"name": format!("M{m}"), "num_blocks": 8192, "block_size": BS});
        *id = create_bdev(&reg, "bdev_malloc_create", p).unwrap().0;
        wrap(&reg, m);
        if let Some((x, _)) = reg.lookup(&format!("X{m}")) {
            *id = x;
        }
    }
    let routes = (0..shards)
        .map(|i| ShardRoute {
            owner: ((i + i / 2) % n as u64) as u16,
            member: members[(i % 2) as usize],
            member_name: format!("M{}", i % 2),
            offset_blocks: BASE + (i / 2) * SHARD,
            state: ShardState::Online,
        })
        .collect();
    let info = BdevInfo {
        name: "Vol0".into(),
        product_name: "",
        block_size: BS as u32,
        num_blocks: shards * SHARD,
        uuid: "00000000-0000-4000-8000-000000000000".into(),
        supported: IoTypeSet::all(),
    };
    let volume = Arc::new(Volume::new(info, "pool0", SHARD, routes));
    let vol = reg
        .register(Arc::new(VolumeBdev::new(Arc::clone(&volume))))
        .unwrap();
    let mut rs = reactors(n, &reg, ReactorConfig::default());
    let rec = rs
        .iter_mut()
        .map(|r| {
            let rec = Recorder::default();
            let task = r.spawn(Box::new(rec.clone()));
            (rec, task)
        })
        .collect();
    Rig {
        reg,
        rs,
        vol,
        volume,
        members,
        pool: DmaPool::new(1 << 20, 128).unwrap(),
        rec,
    }
}

/// The byte a block holds after `write_pattern(seed)`: depends on block and seed.
fn pattern(block: u64, seed: u64) -> u8 {
    (block.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7)) % 251) as u8 + 1
}

impl Rig {
    fn buf(&self, blocks: u64) -> DmaBuf {
        let mut b = self.pool.take().expect("test pool has room");
        b.set_len((blocks * BS) as usize);
        b
    }

    fn submit(&mut self, on: usize, bdev: BdevId, io_type: IoType, off: u64, n: u64, seed: u64) {
        let buf = match io_type {
            IoType::Write => {
                let mut b = self.buf(n);
                for (i, block) in b.as_mut_slice().chunks_mut(BS as usize).enumerate() {
                    block.fill(pattern(off + i as u64, seed));
                }
                Some(b)
            }
            IoType::Read => Some(self.buf(n)),
            _ => None,
        };
        let task = self.rec[on].1;
        let io = request(io_type, off, n as u32, buf, on as u16, task, seed);
        self.rs[on].ctx().submit(bdev, io);
    }

    fn done(&self) -> usize {
        self.rec.iter().map(|(r, _)| r.count()).sum()
    }

    /// Polls until `want` completions were recorded in all.
    fn settle(&mut self, want: usize) {
        let rec: Vec<Recorder> = self.rec.iter().map(|(r, _)| r.clone()).collect();
        run_until(&mut self.rs, || {
            rec.iter().map(|r| r.count()).sum::<usize>() >= want
        });
    }

    /// Reads `[off, off + n)` of `bdev` on reactor 0 and returns the bytes.
    fn read(&mut self, bdev: BdevId, off: u64, n: u64) -> Vec<u8> {
        let before = self.rec[0].0.count();
        self.submit(0, bdev, IoType::Read, off, n, 0);
        let rec = self.rec[0].0.clone();
        run_until(&mut self.rs, || rec.count() > before);
        let done = rec.done.borrow_mut().pop().unwrap();
        assert_eq!(done.status, IoStatus::Success);
        done.buf.unwrap().as_slice().to_vec()
    }

    /// Checks a volume range against the pattern, and the same blocks on the members.
    fn check(&mut self, off: u64, n: u64, seed: u64) {
        let via_volume = self.read(self.vol, off, n);
        for b in 0..n {
            let want = pattern(off + b, seed);
            let got = &via_volume[(b * BS) as usize..((b + 1) * BS) as usize];
            assert!(got.iter().all(|&x| x == want), "volume block {}", off + b);
            let shard = (off + b) / SHARD;
            let member = self.members[(shard % 2) as usize];
            let at = BASE + (shard / 2) * SHARD + (off + b) % SHARD;
            let raw = self.read(member, at, 1);
            assert!(raw.iter().all(|&x| x == want), "member block {at}");
        }
    }

    /// Returns the buffers the recorders hold to the test pool.
    fn release(&self) {
        for (r, _) in &self.rec {
            for d in r.done.borrow_mut().iter_mut() {
                d.buf = None;
            }
        }
    }

    fn all_success(&self) {
        for (r, _) in &self.rec {
            for s in r.statuses() {
                assert_eq!(s, IoStatus::Success);
            }
        }
    }
}

#[test]
fn pieces_go_to_their_owners_and_land_at_their_extents() {
    let mut rig = rig(3, 8);
    // Inside one shard, across two shards, across every shard (1 MiB: eight bounce pieces).
    rig.submit(0, rig.vol, IoType::Write, 0, 8 * SHARD, 3);
    rig.settle(1);
    rig.submit(1, rig.vol, IoType::Write, 10, 8, 1);
    rig.submit(2, rig.vol, IoType::Write, SHARD - 4, 8, 2);
    rig.settle(3);
    rig.all_success();
    rig.check(0, 10, 3);
    rig.check(10, 8, 1);
    rig.check(18, SHARD - 22, 3);
    rig.check(SHARD - 4, 8, 2);
    rig.check(SHARD + 4, 7 * SHARD - 4, 3);
    let counters: Vec<RouteCounters> = rig
        .rs
        .iter_mut()
        .map(|r| r.ctx().route_counters())
        .collect();
    // Reactor 0 took the big write and the reads: it kept pieces and sent pieces. The
    // small writes' shards (0, 0 and 1) are owned by reactors 0 and 1: both went out.
    assert!(
        counters[0].local > 0 && counters[0].remote > 0,
        "{counters:?}"
    );
    assert!(
        counters[1].remote == 1 && counters[2].remote == 2,
        "{counters:?}"
    );
    assert!(counters.iter().all(|c| c.forwarded == 0));
    assert_eq!(
        rig.rs
            .iter_mut()
            .map(|r| r.ctx().io_outstanding())
            .sum::<usize>(),
        0
    );
}

#[test]
fn crossing_reads_reassemble_and_unmap_and_zeroes_cross_shards() {
    let mut rig = rig(2, 4);
    rig.submit(0, rig.vol, IoType::Write, 0, 4 * SHARD, 5);
    rig.settle(1);
    rig.check(0, 4 * SHARD, 5);
    // Zero a range over shards 0..2 and unmap one over shards 2..3 (malloc unmap zeroes).
    rig.submit(1, rig.vol, IoType::WriteZeroes, SHARD - 10, SHARD + 20, 0);
    rig.submit(0, rig.vol, IoType::Unmap, 3 * SHARD - 5, 10, 0);
    rig.settle(3);
    rig.all_success();
    let bytes = rig.read(rig.vol, 0, 4 * SHARD);
    for b in 0..4 * SHARD {
        let zero = (SHARD - 10..2 * SHARD + 10).contains(&b)
            || (3 * SHARD - 5..3 * SHARD + 5).contains(&b);
        let want = if zero { 0 } else { pattern(b, 5) };
        assert_eq!(bytes[(b * BS) as usize], want, "block {b}");
    }
}

#[test]
fn flush_reaches_every_member_and_volume_stats_count_requests() {
    let mut rig = rig(2, 4);
    rig.submit(1, rig.vol, IoType::Flush, 0, 0, 0);
    rig.settle(1);
    rig.all_success();
    for m in rig.members {
        let stat = rig.rs[1]
            .ctx()
            .iostat(m)
            .expect("reactor 1 opened the member");
        assert_eq!(stat.ops[IoType::Flush as usize], 1);
    }
    let vstat = rig.rs[1].ctx().iostat(rig.vol).unwrap();
    assert_eq!(vstat.ops[IoType::Flush as usize], 1);
}

#[test]
fn a_piece_in_a_ring_when_its_shard_changes_owner_is_forwarded_not_failed() {
    let mut rig = rig(3, 8);
    // Shard 1 is owned by reactor 1. Reactor 0 takes writes to it and sends the pieces.
    assert_eq!(rig.volume.table().shards[1].owner, 1);
    for k in 0..16 {
        rig.submit(0, rig.vol, IoType::Write, SHARD + k * 8, 8, 9);
    }
    rig.rs[0].poll(1);
    assert_eq!(rig.done(), 0);
    assert!(
        !rig.rs[1].inbox().is_empty(),
        "the pieces wait in reactor 1's ring"
    );
    // The shard moves to reactor 2 while they wait.
    rig.volume.set_owner(1, 2);
    rig.settle(16);
    rig.all_success();
    assert_eq!(rig.rs[1].ctx().route_counters().forwarded, 16);
    assert!(rig.rs[2].ctx().iostat(rig.members[1]).unwrap().ops[IoType::Write as usize] >= 16);
    rig.check(SHARD, 128, 9);
    // Moved again, back to the reactor that takes the requests: they stay local.
    rig.volume.set_owner(1, 0);
    let before = rig.rs[0].ctx().route_counters();
    rig.submit(0, rig.vol, IoType::Write, SHARD, 8, 10);
    rig.settle(17);
    assert_eq!(rig.rs[0].ctx().route_counters().local, before.local + 1);
}

#[test]
fn an_unavailable_shard_fails_its_io_with_enodev_and_leaves_others_alone() {
    let mut rig = rig(2, 4);
    rig.volume
        .update(|shards| shards[2].state = ShardState::Unavailable);
    rig.submit(0, rig.vol, IoType::Write, 2 * SHARD, 8, 1);
    rig.submit(1, rig.vol, IoType::Read, 2 * SHARD - 4, 8, 2);
    rig.submit(0, rig.vol, IoType::Write, 0, 8, 3);
    rig.settle(3);
    let mut statuses: Vec<IoStatus> = rig.rec.iter().flat_map(|(r, _)| r.statuses()).collect();
    statuses.sort_by_key(|s| format!("{s:?}"));
    let enodev = IoStatus::Failed {
        errno: libc::ENODEV,
    };
    assert_eq!(statuses, [enodev, enodev, IoStatus::Success]);
}

#[test]
fn crossing_requests_wait_for_bounce_buffers_and_all_complete() {
    // 24 writes of 1 MiB, each crossing shards: 192 bounce pieces against 64 buffers.
    let mut rig = rig(2, 8);
    for k in 0..24u64 {
        rig.submit(
            (k % 2) as usize,
            rig.vol,
            IoType::Write,
            (k % 4) * 64,
            2048 - 256,
            20 + k,
        );
    }
    rig.settle(24);
    rig.all_success();
    assert_eq!(
        rig.rs
            .iter_mut()
            .map(|r| r.ctx().io_outstanding())
            .sum::<usize>(),
        0
    );
    for r in rig.rs.iter_mut() {
        if let Some(pool) = &r.ctx().router.bounce {
            assert_eq!(
                pool.available(),
                pool.count(),
                "every bounce buffer came back"
            );
        }
    }
}

/// Seeded: rounds of non-overlapping writes of random place and size, taken by random
/// reactors, while shards change owner at random between polls; then every block must hold
/// its last write, read through the volume and at its member.
#[test]
fn random_writes_under_owner_changes_match_a_model() {
    let seed = std::env::var("TIDEPOOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004);
    println!("random_writes_under_owner_changes_match_a_model: seed {seed} (TIDEPOOL_SEED)");
    let mut rng = Rng::new(seed);
    let n = 3;
    let mut rig = rig(n, 8);
    let total = 8 * SHARD;
    let mut model = vec![0u64; total as usize]; // seed of the last write per block; 0: none
    let mut submitted = 0;
    for round in 1..=20u64 {
        // Cut the volume into random runs; write about half of them.
        let mut off = 0;
        while off < total {
            let len = (1 + rng.next_u64() % 300).min(total - off);
            if rng.next_u64().is_multiple_of(2) {
                let on = (rng.next_u64() % n as u64) as usize;
                let seed = round * 1000 + off;
                rig.submit(on, rig.vol, IoType::Write, off, len, seed);
                model[off as usize..(off + len) as usize].fill(seed);
                submitted += 1;
            }
            off += len;
        }
        while rig.done() < submitted {
            for r in rig.rs.iter_mut() {
                if !rng.next_u64().is_multiple_of(3) {
                    r.poll(crate::time::now());
                }
            }
            if rng.next_u64().is_multiple_of(4) {
                let shard = (rng.next_u64() % 8) as usize;
                rig.volume
                    .set_owner(shard, (rng.next_u64() % n as u64) as u16);
            }
        }
        rig.release();
    }
    rig.all_success();
    let bytes = rig.read(rig.vol, 0, total);
    for b in 0..total {
        let want = if model[b as usize] == 0 {
            0
        } else {
            pattern(b, model[b as usize])
        };
        assert_eq!(bytes[(b * BS) as usize], want, "seed {seed}: block {b}");
    }
    let forwarded: u64 = rig
        .rs
        .iter_mut()
        .map(|r| r.ctx().route_counters().forwarded)
        .sum();
    assert!(
        forwarded > 0,
        "seed {seed}: owner changes should have caught pieces in flight"
    );
    let _ = &rig.reg;
}

/// Polls every reactor at fake times `*t + 1000, *t + 2000, ...` until `want` completions.
fn settle_at(rig: &mut Rig, t: &mut u64, want: usize) {
    for _ in 0..10_000 {
        if rig.done() >= want {
            return;
        }
        *t += 1000;
        for r in rig.rs.iter_mut() {
            r.poll(*t);
        }
    }
    panic!("{} of {want} completions", rig.done());
}

#[test]
fn the_load_monitor_counts_per_shard_per_bdev_and_per_reactor() {
    // Shards 0..4: owners 0, 1, 1, 0; members M0, M1, M0, M1.
    let mut rig = rig(2, 4);
    let table = Arc::clone(rig.rs[0].ctx().state_table());
    table.set_interval_ns(1_000_000);
    let mut t = 1_000;
    for r in rig.rs.iter_mut() {
        r.poll(t);
    }
    // Reactor 0 takes 10 sequential writes on shard 1 and 5 scattered reads on shard 0;
    // reactor 1 takes 3 writes on shard 2.
    for i in 0..10 {
        rig.submit(0, rig.vol, IoType::Write, SHARD + i * 4, 4, 1);
    }
    for i in 0..5 {
        rig.submit(0, rig.vol, IoType::Read, (i * 37) % 200, 1, 0);
    }
    for i in 0..3 {
        rig.submit(1, rig.vol, IoType::Write, 2 * SHARD + i * 50, 2, 2);
    }
    settle_at(&mut rig, &mut t, 18);
    rig.all_success();
    assert!(
        table.samples().is_empty(),
        "no window closed before the interval"
    );
    let end = t + 1_000_000;
    for r in rig.rs.iter_mut() {
        r.poll(end);
    }
    let samples = table.samples();
    assert_eq!(samples.len(), 2);
    let (s0, s1) = (&samples[0], &samples[1]);
    assert_eq!((s0.reactor, s1.reactor), (0, 1));
    assert_eq!(s0.window_ns, end - 1_000);
    assert!(s0.busy_ns > 0 && s0.busy_ns <= s0.window_ns);
    assert_eq!((s0.taken, s1.taken), (15, 3));
    // Shards: counted where the requests were taken.
    let shard = |s: &crate::load::ReactorSample, i: u32| {
        s.shards
            .iter()
            .find(|(k, _)| k.volume == rig.vol && k.shard == i)
            .map(|(_, w)| w.clone())
    };
    let w1 = shard(s0, 1).expect("shard 1 on reactor 0");
    assert_eq!(
        (w1.write_ops, w1.write_bytes, w1.read_ops),
        (10, 10 * 4 * BS, 0)
    );
    assert_eq!(w1.pattern(), crate::load::Pattern::Sequential);
    assert_eq!((w1.ended, w1.inflight), (10, 0));
    let w0 = shard(s0, 0).expect("shard 0 on reactor 0");
    assert_eq!((w0.read_ops, w0.read_bytes), (5, 5 * BS));
    assert_eq!(w0.read_share(), 1.0);
    assert!(shard(s0, 2).is_none());
    assert_eq!(shard(s1, 2).expect("shard 2 on reactor 1").write_ops, 3);
    // Devices: counted where the pieces ran, the shard's owner.
    assert_eq!(s0.executed.ops(), 5);
    assert_eq!(s1.executed.ops(), 13);
    let snap = table.snapshot();
    let m0 = &snap.bdevs[&rig.members[0]];
    let m1 = &snap.bdevs[&rig.members[1]];
    let per_s = |ops: u64| ops as f64 * 1e9 / s0.window_ns as f64;
    assert!((m0.iops - per_s(8)).abs() < 1e-6, "M0: {m0:?}");
    assert!((m1.write_iops - per_s(10)).abs() < 1e-6, "M1: {m1:?}");
    let shares: Vec<f64> = snap.reactors.iter().map(|r| r.share).collect();
    assert!((shares[0] - 5.0 / 18.0).abs() < 1e-9, "{shares:?}");
    assert!((shares[1] - 13.0 / 18.0).abs() < 1e-9, "{shares:?}");
    // Hottest first: shard 1 (10), shard 0 (5), shard 2 (3).
    let order: Vec<u32> = snap.shards.iter().map(|(k, _)| k.shard).collect();
    assert_eq!(order, vec![1, 0, 2]);
    // The next window starts empty.
    let later = end + 1_000_000;
    for r in rig.rs.iter_mut() {
        r.poll(later);
    }
    let next = table.samples();
    assert_eq!(next[0].executed.ops(), 0);
    assert!(next[0].shards.is_empty() && next[0].bdevs.is_empty());
    rig.release();
}

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

fn fail_target_writes(rig: &Rig, n: u32) {
    use crate::bdev::error::{ErrorKind, InjectTarget};
    let (_, b) = rig.reg.lookup("EE_M2").unwrap();
    let inj = b.as_error_bdev().unwrap().injection();
    inj.inject(InjectTarget::Write, ErrorKind::Failure, n);
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
    assert!(rig.rs[0].ctx().start_copy(copy_spec(vol, ee, 10)).is_err());
    assert!(rig.rs[1].ctx().start_copy(copy_spec(vol, ee, 10)).is_err());
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
    assert!(s.last_error.unwrap().contains("failed"));
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
    assert!(why.contains("abandoned after 2 restarts"), "{why}");
    assert_eq!(s.restarts, 3);
    // Abandoned: no longer mirrored; client writes go on to the source alone.
    rig.submit(0, rig.vol, IoType::Write, COPIED_SHARD * SHARD, 4, 9);
    rig.settle(rig.done() + 1);
    rig.all_success();
    assert!(!rig.rs[1].ctx().stop_copy(rig.vol, COPIED_SHARD as u32));
    rig.release();
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
                    let m = model[(off + b) as usize];
                    let want = if m == 0 { 0 } else { pattern(off + b, m) };
                    let got = &data[(b * BS) as usize..((b + 1) * BS) as usize];
                    assert!(
                        got.iter().all(|&x| x == want),
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
                inj.as_error_bdev().unwrap().injection().inject(
                    InjectTarget::Write,
                    ErrorKind::Failure,
                    failures,
                );
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
                            inj.as_error_bdev().unwrap().injection().inject(
                                InjectTarget::Write,
                                ErrorKind::Failure,
                                1,
                            );
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
                        assert!(why.contains("abandoned after 8 restarts"), "{why}");
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
                            let m = model[(first + b) as usize];
                            let want = if m == 0 { 0 } else { pattern(first + b, m) };
                            let got = &held[(b * BS) as usize..((b + 1) * BS) as usize];
                            assert!(
                                got.iter().all(|&x| x == want),
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
