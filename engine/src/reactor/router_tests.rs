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
/// a bdev on it named `X{m}` (or an error bdev, `EE_M{m}`), which then becomes the member.
fn rig_with(n: usize, shards: u64, wrap: impl Fn(&BdevRegistry, usize)) -> Rig {
    let reg = Arc::new(BdevRegistry::new());
    let mut members = [0; 2];
    for (m, id) in members.iter_mut().enumerate() {
        let p = json!({"name": format!("M{m}"), "num_blocks": 8192, "block_size": BS});
        *id = create_bdev(&reg, "bdev_malloc_create", p).unwrap().0;
        wrap(&reg, m);
        for name in [format!("X{m}"), format!("EE_M{m}")] {
            if let Some((x, _)) = reg.lookup(&name) {
                *id = x;
            }
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

/// A member a shard may have moved to without the table saying so (an undecided copy's
/// target: its placement's write timed out and may still land) holds acknowledged writes a
/// restart may read the shard from: a flush of the volume, on any reactor, reaches it too.
/// It used to reach only the members the table names.
#[test]
fn flush_reaches_an_undecided_copy_s_target() {
    let mut rig = rig(2, 4);
    let p = json!({"name": "M2", "num_blocks": 4096, "block_size": BS});
    let m2 = create_bdev(&rig.reg, "bdev_malloc_create", p).unwrap().0;
    let epoch = rig.volume.epoch();
    assert_eq!(rig.volume.add_undecided_target(m2), epoch + 1);
    for on in 0..2 {
        rig.submit(on, rig.vol, IoType::Flush, 0, 0, 0);
        rig.settle(on + 1);
        let flushes = rig.rs[on]
            .ctx()
            .iostat(m2)
            .map_or(0, |s| s.ops[IoType::Flush as usize]);
        assert_eq!(
            flushes, 1,
            "reactor {on} did not flush the undecided target"
        );
    }
    rig.all_success();
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
        rig.rs[1].has_messages(),
        "the pieces wait on reactor 1's lane"
    );
    // The shard moves to reactor 2 while they wait.
    rig.volume.set_owner(1, 2);
    rig.settle(16);
    rig.all_success();
    assert_eq!(rig.rs[1].ctx().route_counters().forwarded, 16);
    // Reactor 1 sent them on from remote slots of its own, and their completions came back
    // through it to reactor 0: no slot is left waiting anywhere.
    for r in rig.rs.iter_mut() {
        assert_eq!(r.ctx().remote.in_flight(), 0);
    }
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
fn a_one_shard_request_crosses_without_a_remote_slot_and_returns_whole() {
    let mut rig = rig(2, 4);
    // Shard 1 is owned by reactor 1; reactor 0 takes a write inside it, then a read.
    assert_eq!(rig.volume.table().shards[1].owner, 1);
    rig.submit(0, rig.vol, IoType::Write, SHARD + 3, 5, 4);
    rig.rs[0].poll(1);
    assert!(rig.rs[1].has_messages(), "the request went to reactor 1");
    assert_eq!(
        rig.rs[0].ctx().remote.in_flight(),
        0,
        "its one-shard slot is all it keeps"
    );
    rig.settle(1);
    rig.submit(0, rig.vol, IoType::Read, SHARD + 3, 5, 4);
    rig.settle(2);
    assert_eq!(rig.rs[0].ctx().route_counters().remote, 2);
    // The completions reached the task that gave the requests (by their origin), as it
    // gave them: tag, range and type.
    let done = rig.rec[0].0.done.borrow();
    assert_eq!(done.len(), 2);
    for (c, io_type) in done.iter().zip([IoType::Write, IoType::Read]) {
        assert_eq!(c.status, IoStatus::Success);
        assert_eq!(c.io_type, io_type);
        assert_eq!((c.offset_blocks, c.num_blocks, c.tag), (SHARD + 3, 5, 4));
    }
    let read = done[1].buf.as_ref().unwrap().as_slice();
    for b in 0..5 {
        let want = pattern(SHARD + 3 + b, 4);
        assert!(read[(b * BS) as usize..((b + 1) * BS) as usize]
            .iter()
            .all(|&x| x == want));
    }
    drop(done);
    assert_eq!(rig.rs[0].ctx().io_outstanding(), 0);
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
            // Owners change between any two reactors' polls, so pieces already on a lane
            // (pushed during one poll, taken during the peer's next) get caught.
            for r in rig.rs.iter_mut() {
                if !rng.next_u64().is_multiple_of(3) {
                    r.poll(crate::time::now());
                }
                if rng.next_u64().is_multiple_of(4) {
                    let shard = (rng.next_u64() % 8) as usize;
                    rig.volume
                        .set_owner(shard, (rng.next_u64() % n as u64) as u16);
                }
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

#[path = "copy_tests.rs"]
mod copy_tests;
