//! One simulated run: the reactors, devices, volume, client and control plane of one seed,
//! stepped until the clients stop, then until everything has ended (liveness), then read
//! back whole.

use super::client::{Client, ClientStats, Op, MAX_BLOCKS};
use super::device::{Faults, SimDevice};
use super::persist::{Metadata, MetadataStats, Outcome, Purpose, SLOT_BLOCKS};
use super::{LIVENESS_NS, REUSE_SOURCE_EXTENT_AT_FLIP};
use crate::bdev::{BdevId, BdevInfo, BdevRegistry, IoType, IoTypeSet};
use crate::pool::metadata::{MemberRecord, PoolRecord, ShardRecord, VolumeRecord};
use crate::reactor::{CopyHandle, CopySpec, CopyState, Reactor, ReactorConfig};
use crate::rng::Rng;
use crate::time::Nanos;
use crate::volume::{ShardRoute, ShardState, Volume, VolumeBdev};
use std::sync::Arc;

const BS: u64 = 512;
const SHARD: u64 = 64;
const SHARDS: u64 = 4;
const MEMBERS: usize = 4;
/// Shard-sized extents on each member.
const EXTENTS: u64 = 6;
/// Where extents start on a member: after the two metadata slots.
const BASE: u64 = 2 * SLOT_BLOCKS;
/// Steps during which clients send and control acts.
const ACTIVE_STEPS: u64 = 2_500;
/// Longest a commit holds a shard's writes before it lets them go and tries again.
const FREEZE_LIMIT_NS: u64 = 200_000;

/// What one seed did.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub reactors: usize,
    pub steps: u64,
    pub client: ClientStats,
    pub device_ops: u64,
    pub faults_injected: u64,
    pub handoffs: u64,
    pub copies_started: u64,
    pub committed: u64,
    pub abandoned: u64,
    pub cancelled: u64,
    pub restarts: u64,
    pub crashes: u64,
    /// Commits whose placement write had no answer: decided by the next import.
    pub undecided: u64,
    /// Commits the pool refused (a metadata write failed, or the pool was suspended).
    pub refused: u64,
    /// Member removals started, and completed (the member out of the pool).
    pub drains: u64,
    pub removals: u64,
    pub metadata: MetadataStats,
    /// Writes a device did not answer (until `device::HANG_NS`), counted in faults too.
    pub hung: u64,
}

enum Phase {
    /// Waiting for writes other reactors sent to the source before the copy to land.
    Settling,
    Copying(CopyHandle),
    /// Holding the shard's writes since `since` until none is in flight.
    Freezing(CopyHandle, Nanos),
    /// Writes held, the new placement being persisted (`Metadata`).
    Committing(CopyHandle),
    /// The new placement's write timed out: it may or may not have landed, as the next
    /// import finds. The copy mirrors on (`keep_copy_undecided`) until then.
    Undecided,
}

struct Migration {
    shard: usize,
    owner: usize,
    source: (usize, u64),
    target: (usize, u64),
    phase: Phase,
    spec: CopySpec,
}

struct World {
    rng: Rng,
    t: Nanos,
    rs: Vec<Reactor>,
    reg: Arc<BdevRegistry>,
    /// Active steps at which the process crashes.
    crash_steps: Vec<u64>,
    devs: Vec<(BdevId, Arc<SimDevice>)>,
    vol: BdevId,
    volume: Arc<Volume>,
    /// Each shard's (member, extent).
    placement: Vec<(usize, u64)>,
    free: Vec<Vec<u64>>,
    /// Old sources of moved shards, back to `free` once every reactor's channel of their
    /// member has returned what it held at the flip (as `pool::copy_driver` gives them back).
    old_sources: Vec<((usize, u64), BdevId)>,
    migrations: Vec<Migration>,
    /// The pool's description on the members, and its persists.
    meta: Metadata,
    /// The device being removed from the pool (`pool_remove_bdev`), while it is.
    draining: Option<usize>,
    client: Client,
    max_inflight: usize,
    target_write_fail_ppm: u32,
    report: SeedReport,
    /// Every placement each shard has had (for `source_failed`).
    history: Vec<Placed>,
    tracing: bool,
    /// Clients send and control acts (false once faults stop).
    active: bool,
}

fn extent_at(extent: u64) -> u64 {
    BASE + extent * SHARD
}

/// The pool's first description: the members, and the volume's shards at `placement`,
/// shard `i` owned by reactor `i % reactors` (as the routes start).
fn pool_record(
    devs: &[(BdevId, Arc<SimDevice>)],
    placement: &[(usize, u64)],
    reactors: usize,
) -> PoolRecord {
    let members = (0..devs.len())
        .map(|m| MemberRecord {
            bdev_name: format!("D{m}"),
            uuid: format!("00000000-0000-4000-8000-{m:012x}"),
            absent_since: None,
            num_blocks: BASE + EXTENTS * SHARD,
            extents: EXTENTS,
        })
        .collect();
    let shards = (placement.iter().enumerate())
        .map(|(i, &(m, e))| ShardRecord {
            member: m as u32,
            extent: e,
            owner: (i % reactors) as u16,
        })
        .collect();
    PoolRecord {
        name: "simpool".into(),
        uuid: "00000000-0000-4000-8000-0000000000ff".into(),
        block_size: BS as u32,
        shard_blocks: SHARD,
        members,
        volumes: vec![VolumeRecord {
            name: "SimVol".into(),
            uuid: "00000000-0000-4000-8000-000000000026".into(),
            num_blocks: SHARDS * SHARD,
            shards,
        }],
        deleting: false,
    }
}

/// Runs seed `seed`; `plant_lost_write` makes member 0 acknowledge one write it does not do
/// (the checker must catch it). Returns what the seed did, or what the checker found.
pub fn run_seed(seed: u64, plant_lost_write: bool) -> Result<SeedReport, String> {
    let mut w = World::new(seed);
    if plant_lost_write {
        w.devs[0].1.plant_lost_write(BASE);
    }
    for step in 0..ACTIVE_STEPS {
        let mid_persist = w.meta.crash_mid_persist && w.meta.part_way();
        if w.crash_steps.contains(&step) || mid_persist {
            if mid_persist {
                // Once per seed: between two members' writes of one persist.
                w.meta.crash_mid_persist = false;
            }
            w.crash()?;
        }
        w.step(true)?;
    }
    if w.meta.suspended {
        // Only an import decides a change whose metadata write had no answer (an undecided
        // commit among them), and ends the suspension.
        w.crash()?;
    }
    w.active = false;
    for (_, d) in &w.devs {
        d.stop_faults();
    }
    let stop = w.t;
    while !w.client.inflight.is_empty()
        || !w.migrations.is_empty()
        || w.copy_io_left()
        || !w.meta.idle()
    {
        if w.meta.suspended {
            // A metadata write sent before the faults stopped had no answer.
            w.crash()?;
        }
        if w.t - stop > LIVENESS_NS {
            return Err(format!(
                "liveness: {} request(s), {} migration(s) and copy I/O to a target: {} still \
                 running {} ns after faults stopped",
                w.client.inflight.len(),
                w.migrations.len(),
                w.copy_io_left(),
                LIVENESS_NS
            ));
        }
        w.step(false)?;
    }
    w.read_back()?;
    // And what the devices hold, with nothing of the process left: every acknowledged
    // write is on a device, not only in flight somewhere.
    w.crash()?;
    w.read_back()?;
    let mut r = w.report.clone();
    r.metadata = w.meta.stats;
    r.client = w.client.stats;
    r.device_ops = w.devs.iter().map(|(_, d)| d.ops()).sum();
    r.hung = w.devs.iter().map(|(_, d)| d.hung()).sum();
    r.faults_injected = w
        .devs
        .iter()
        .map(|(_, d)| d.injected().len() as u64 + d.hung())
        .sum();
    Ok(r)
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed ^ 0x5157_1a7e);
        let reg = Arc::new(BdevRegistry::new());
        let source_faults = rng.next_u64().is_multiple_of(2);
        let devs: Vec<(BdevId, Arc<SimDevice>)> = (0..MEMBERS)
            .map(|m| {
                let d = Arc::new(SimDevice::new(
                    &format!("D{m}"),
                    BS as u32,
                    BASE + EXTENTS * SHARD,
                    rng.next_u64(),
                ));
                d.set_faults(Faults {
                    read_fail_ppm: if source_faults {
                        (rng.next_u64() % 10_000) as u32
                    } else {
                        0
                    },
                    write_fail_ppm: if source_faults {
                        (rng.next_u64() % 10_000) as u32
                    } else {
                        0
                    },
                    max_latency_ns: 1_000 + rng.next_u64() % 30_000,
                });
                let id = reg.register(d.clone()).expect("a fresh registry");
                (id, d)
            })
            .collect();
        let n = 2 + (rng.next_u64() % 2) as usize;
        // Shard i on member i % 2 at extent i / 2; members 2 and 3 start empty.
        let placement: Vec<(usize, u64)> = (0..SHARDS).map(|i| ((i % 2) as usize, i / 2)).collect();
        let mut free: Vec<Vec<u64>> = (0..MEMBERS).map(|_| (0..EXTENTS).rev().collect()).collect();
        for &(m, e) in &placement {
            free[m].retain(|&x| x != e);
        }
        let routes = placement
            .iter()
            .enumerate()
            .map(|(i, &(m, e))| ShardRoute {
                owner: (i % n) as u16,
                member: devs[m].0,
                member_name: format!("D{m}"),
                offset_blocks: extent_at(e),
                state: ShardState::Online,
            })
            .collect();
        let info = BdevInfo {
            name: "SimVol".into(),
            product_name: "",
            block_size: BS as u32,
            num_blocks: SHARDS * SHARD,
            uuid: "00000000-0000-4000-8000-000000000026".into(),
            supported: IoTypeSet::all(),
        };
        let volume = Arc::new(Volume::new(info, "simpool", SHARD, routes));
        let vol = reg
            .register(Arc::new(VolumeBdev::new(Arc::clone(&volume))))
            .expect("a fresh registry");
        let mut rs = crate::testkit::reactors(n, &reg, ReactorConfig::default());
        let record = pool_record(&devs, &placement, n);
        let mut meta = Metadata::create(record, &devs, &mut rs);
        meta.crash_mid_persist = rng.next_u64().is_multiple_of(4);
        // Metadata writes fail, and one failure in 8 does not answer (until HANG_NS).
        let meta_fail_ppm = match rng.next_u64() % 4 {
            0 => 0,
            1 => 20_000,
            2 => 100_000,
            _ => 500_000,
        };
        for (_, d) in &devs {
            d.set_range_write_fail(0, BASE, meta_fail_ppm);
        }
        let max_inflight = 1 + (rng.next_u64() % 48) as usize;
        let client = Client::new(&mut rs, BS, SHARDS * SHARD, max_inflight);
        let target_write_fail_ppm = match rng.next_u64() % 3 {
            0 => 0,
            1 => 5_000,
            _ => 50_000,
        };
        let crash_steps = match rng.next_u64() % 4 {
            0 | 1 => vec![],
            2 => vec![rng.next_u64() % ACTIVE_STEPS],
            _ => vec![rng.next_u64() % ACTIVE_STEPS, rng.next_u64() % ACTIVE_STEPS],
        };
        let history = placement
            .iter()
            .enumerate()
            .map(|(shard, &(m, e))| Placed {
                shard,
                member: devs[m].0,
                offset_blocks: extent_at(e),
                from: 0,
                until: Nanos::MAX,
            })
            .collect();
        World {
            history,
            rng,
            t: 1_000,
            rs,
            reg,
            crash_steps,
            devs,
            vol,
            volume,
            placement,
            free,
            old_sources: Vec::new(),
            migrations: Vec::new(),
            meta,
            draining: None,
            client,
            max_inflight,
            target_write_fail_ppm,
            active: true,
            tracing: std::env::var_os("TIDEPOOL_SIM_TRACE").is_some(),
            report: SeedReport {
                seed,
                reactors: n,
                ..SeedReport::default()
            },
        }
    }

    fn step(&mut self, active: bool) -> Result<(), String> {
        self.report.steps += 1;
        // Once the clients stop, time runs faster: timeouts (a target that does not answer)
        // must come round within the liveness bound.
        self.t += 1 + self.rng.next_u64() % if active { 2_000 } else { 200_000 };
        if active {
            for _ in 0..self.rng.next_u64() % 4 {
                if self.client.inflight.len() < self.max_inflight {
                    self.client
                        .send(&mut self.rng, &mut self.rs, self.vol, self.t);
                }
            }
            self.control();
        }
        // Poll the reactors in a seeded order, some not at all this step.
        let mut order: Vec<usize> = (0..self.rs.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (self.rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for r in order {
            if !self.rng.next_u64().is_multiple_of(4) {
                self.rs[r].poll(self.t);
            }
        }
        let (devs, history, client) = (&self.devs, &self.history, &mut self.client);
        client.reap(|op, at| source_failed(devs, history, op, at))?;
        self.release_old_sources();
        if let Some(outcome) = self.meta.poll(&mut self.rng, &mut self.rs, self.t) {
            self.persisted(outcome);
        }
        self.advance_migrations()
    }

    /// Gives back the old sources whose reads have all come back.
    fn release_old_sources(&mut self) {
        let rs = &mut self.rs;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.old_sources)
            .into_iter()
            .partition(|(_, id)| rs.iter_mut().all(|r| r.ctx().marked_pending(*id) == 0));
        self.old_sources = waiting;
        for (source, _) in done {
            self.trace(format_args!("old source {source:?} is free"));
            self.free[source.0].push(source.1);
        }
    }

    /// The process crashes: reactors, their channels (with the requests the devices had
    /// not yet done: those never happen, or land torn) and copies are gone; the devices keep
    /// what they hold. A new process imports the pool from the members' metadata
    /// (`Metadata::import`) and takes the volume as that description places and owns it: a
    /// change whose persist was under way, or undecided, is there or not as the import finds.
    fn crash(&mut self) -> Result<(), String> {
        self.trace(format_args!("crash"));
        self.report.crashes += 1;
        self.rs.clear();
        let record = self.meta.import()?.clone();
        let shards = &record.volumes[0].shards;
        let undecided: Vec<(usize, (usize, u64))> = (self.migrations.iter())
            .filter(|m| matches!(m.phase, Phase::Undecided))
            .map(|m| (m.shard, m.target))
            .collect();
        for m in std::mem::take(&mut self.migrations) {
            self.end_target_faults(&m);
        }
        // The members the import found, a removal included (the device of each index).
        let members = self.meta.members.clone();
        self.draining = None;
        for (shard, s) in shards.iter().enumerate() {
            let placed = (members[s.member as usize], s.extent);
            if placed != self.placement[shard] {
                self.trace(format_args!("import: shard {shard} is at {placed:?}"));
                let old = self.placement[shard];
                self.flip(shard, placed, old);
            }
        }
        for (shard, (tm, te)) in undecided {
            if self.placement[shard] == (tm, te) {
                continue;
            }
            // The import kept the source: the target is no placement from now on.
            let (target_id, at, now) = (self.devs[tm].0, extent_at(te), self.t);
            for p in self.history.iter_mut().filter(|p| {
                p.shard == shard
                    && p.member == target_id
                    && p.offset_blocks == at
                    && p.until == Nanos::MAX
            }) {
                p.until = now;
            }
        }
        self.volume.update(|routes| {
            for (route, s) in routes.iter_mut().zip(shards) {
                route.owner = s.owner;
            }
        });
        // Nothing of the old process is in flight any more: every extent the description
        // does not place is free.
        self.old_sources.clear();
        self.free = (0..MEMBERS)
            .map(|dev| match members.iter().position(|&m| m == dev) {
                Some(m) => (0..EXTENTS)
                    .rev()
                    .filter(|&e| !record.places_shard_at(m as u32, e))
                    .collect(),
                None => Vec::new(),
            })
            .collect();
        let n = self.report.reactors;
        self.rs = crate::testkit::reactors(n, &self.reg, ReactorConfig::default());
        self.client.crash(&mut self.rs, self.t);
        self.meta.crash(&mut self.rs);
        Ok(())
    }

    /// A persist has its outcome: the change it was for is made, refused, or left to the
    /// next import (an unknown hand-off changes nothing until then).
    fn persisted(&mut self, outcome: Outcome) {
        self.trace(format_args!("persisted: {outcome:?}"));
        let vol = self.vol;
        let shard = match outcome {
            Outcome::Done(Purpose::Handoff { shard, to }) => {
                self.volume.set_owner(shard, to);
                self.report.handoffs += 1;
                return;
            }
            Outcome::Failed(Purpose::Handoff { .. })
            | Outcome::Unknown(Purpose::Handoff { .. }) => return,
            Outcome::Done(Purpose::Remove { dev }) => {
                // Out of the pool; its slots wiped, or left (a wipe that failed, or the
                // process died before it: an import must not take it back).
                self.draining = None;
                self.free[dev].clear();
                self.report.removals += 1;
                if self.rng.next_u64().is_multiple_of(2) {
                    let zero = vec![0u8; BS as usize];
                    self.devs[dev].1.write_raw(0, &zero);
                    self.devs[dev].1.write_raw(SLOT_BLOCKS, &zero);
                }
                self.trace(format_args!("D{dev} left the pool"));
                return;
            }
            Outcome::Failed(Purpose::Remove { .. }) | Outcome::Unknown(Purpose::Remove { .. }) => {
                // The drain stops (an unknown one: the import decides).
                self.draining = None;
                return;
            }
            Outcome::Done(Purpose::Commit { shard })
            | Outcome::Failed(Purpose::Commit { shard })
            | Outcome::Unknown(Purpose::Commit { shard }) => shard,
        };
        let i = (self.migrations.iter())
            .position(|m| m.shard == shard && matches!(m.phase, Phase::Committing(_)))
            .expect("a commit's migration");
        let m = &mut self.migrations[i];
        let Phase::Committing(h) = &m.phase else {
            unreachable!("found above")
        };
        let h = Arc::clone(h);
        let (target, source, owner) = (m.target, m.source, m.owner);
        let ctx = self.rs[owner].ctx();
        match outcome {
            Outcome::Done(_) => {
                // Flip the route to the target, then stop the copy (the writes it held go
                // on by the new route).
                self.flip(shard, target, source);
                self.rs[owner].ctx().stop_copy(vol, shard as u32);
                self.report.restarts += h.lock().unwrap().restarts as u64;
                self.report.committed += 1;
            }
            Outcome::Failed(_) => {
                // Refused: the placement stays; the writes go on, and the copy ends.
                ctx.freeze_copy(vol, shard as u32, false);
                ctx.stop_copy(vol, shard as u32);
                self.report.refused += 1;
            }
            Outcome::Unknown(_) => {
                // It may land: the writes go on, to both (`keep_copy_undecided`).
                ctx.keep_copy_undecided(vol, shard as u32);
                ctx.freeze_copy(vol, shard as u32, false);
                // Until an import decides, the target is a placement too: a write its target
                // half failed fails its client (issue 26's fix 1).
                self.history.push(Placed {
                    shard,
                    member: self.devs[target.0].0,
                    offset_blocks: extent_at(target.1),
                    from: self.t,
                    until: Nanos::MAX,
                });
                let st = h.lock().unwrap().clone();
                self.trace(format_args!("shard {shard} undecided: {st:?}"));
                self.migrations[i].phase = Phase::Undecided;
                self.report.undecided += 1;
                return;
            }
        }
        let m = self.migrations.remove(i);
        self.end_target_faults(&m);
    }

    /// `pool_remove_bdev` on `dev`, under way: its shards are moved off one copy at a time,
    /// then, once nothing reads or writes it (no copy from or to it, no old source on it
    /// whose reads are still in flight), the description without it is persisted.
    fn drain(&mut self, dev: usize) {
        if !self.meta.idle() {
            return;
        }
        let on_it: Vec<usize> = (0..SHARDS as usize)
            .filter(|&s| self.placement[s].0 == dev)
            .collect();
        let busy = |w: &World, shard: usize| w.migrations.iter().any(|m| m.shard == shard);
        if let Some(&shard) = on_it.iter().find(|&&s| !busy(self, s)) {
            if self.migrations.len() < 2 {
                self.start_migration(shard);
            }
            return;
        }
        let touched = self
            .migrations
            .iter()
            .any(|m| m.source.0 == dev || m.target.0 == dev)
            || self.old_sources.iter().any(|(s, _)| s.0 == dev);
        if !on_it.is_empty() || touched {
            return;
        }
        let Some(m) = self.meta.members.iter().position(|&d| d == dev) else {
            self.draining = None;
            return;
        };
        let mut record = self.meta.record.clone();
        record.members.remove(m);
        for s in &mut record.volumes[0].shards {
            if s.member as usize > m {
                s.member -= 1;
            }
        }
        self.trace(format_args!("D{dev}: removal persists"));
        self.meta.begin(record, Purpose::Remove { dev });
    }

    /// Control actions, with client I/O in flight: a hand-off, a new copy, a cancelled one,
    /// a member removal (`pool_remove_bdev`).
    fn control(&mut self) {
        if let Some(dev) = self.draining {
            self.drain(dev);
        }
        let roll = self.rng.next_u64() % 4_000;
        let shard = (self.rng.next_u64() % SHARDS) as usize;
        let migrating = self.migrations.iter().any(|m| m.shard == shard);
        if roll < 16 {
            // A hand-off (the pool service refuses one while the shard migrates), made once
            // the new owner is persisted.
            if migrating || !self.meta.idle() {
                return;
            }
            let owner = self.volume.table().shards[shard].owner as usize;
            let to =
                (owner + 1 + (self.rng.next_u64() as usize % (self.rs.len() - 1))) % self.rs.len();
            let mut record = self.meta.record.clone();
            record.volumes[0].shards[shard].owner = to as u16;
            let to = to as u16;
            self.meta.begin(record, Purpose::Handoff { shard, to });
        } else if roll < 56 {
            // Not while a change is being persisted: the pool service's lock orders them
            // (a hand-off of this shard would otherwise land under the copy).
            if !migrating && self.migrations.len() < 2 && self.meta.idle() {
                self.start_migration(shard);
            }
        } else if roll < 59 {
            // Start removing a member, while three or more are left (the volume needs two:
            // its four shards on six extents each).
            if self.draining.is_none() && self.meta.members.len() > 2 && !self.meta.suspended {
                let members = &self.meta.members;
                let dev = members[(self.rng.next_u64() % members.len() as u64) as usize];
                self.trace(format_args!("D{dev}: removal starts"));
                self.draining = Some(dev);
                self.report.drains += 1;
            }
        } else if roll < 61 && !self.migrations.is_empty() {
            // Cancel one (as a commit refused, or a user's stop).
            let i = (self.rng.next_u64() % self.migrations.len() as u64) as usize;
            if matches!(self.migrations[i].phase, Phase::Copying(_)) {
                let m = self.migrations.remove(i);
                self.rs[m.owner].ctx().stop_copy(self.vol, m.shard as u32);
                self.end_target_faults(&m);
                self.report.cancelled += 1;
            }
        }
    }

    fn start_migration(&mut self, shard: usize) {
        let source = self.placement[shard];
        // Members only, and not one being removed (it takes no new shards).
        let candidates: Vec<usize> = (self.meta.members.iter().copied())
            .filter(|&m| m != source.0 && Some(m) != self.draining && !self.free[m].is_empty())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let tm = candidates[(self.rng.next_u64() % candidates.len() as u64) as usize];
        let te = self.free[tm].pop().expect("checked above");
        let owner = self.volume.table().shards[shard].owner as usize;
        let source_id = self.devs[source.0].0;
        // As the control plane does first: writes other reactors sent to the source before
        // now must land before a chunk is read.
        for (i, r) in self.rs.iter_mut().enumerate() {
            if i != owner {
                r.ctx().mark_channel(source_id);
            }
        }
        let spec = CopySpec {
            volume: self.vol,
            shard: shard as u32,
            target: self.devs[tm].0,
            target_offset_blocks: extent_at(te),
            chunk_blocks: 1 + (self.rng.next_u64() % 32) as u32,
            max_inflight: 1 + (self.rng.next_u64() % 4) as usize,
            max_restarts: (self.rng.next_u64() % 6) as u32,
            max_blocks_per_s: 0,
        };
        self.migrations.push(Migration {
            shard,
            owner,
            source,
            target: (tm, te),
            phase: Phase::Settling,
            spec,
        });
    }

    fn end_target_faults(&self, m: &Migration) {
        let at = extent_at(m.target.1);
        self.devs[m.target.0]
            .1
            .set_range_write_fail(at, at + SHARD, 0);
        // The target extent is not given back: a write to it may still be in flight.
    }

    fn advance_migrations(&mut self) -> Result<(), String> {
        let mut i = 0;
        while i < self.migrations.len() {
            if self.advance(i)? {
                let m = self.migrations.remove(i);
                self.end_target_faults(&m);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Moves migration `i` on; returns whether it has ended.
    fn advance(&mut self, i: usize) -> Result<bool, String> {
        let vol = self.vol;
        let m = &mut self.migrations[i];
        let shard = m.shard as u32;
        match &m.phase {
            Phase::Settling => {
                let source_id = self.devs[m.source.0].0;
                let settled = self
                    .rs
                    .iter_mut()
                    .enumerate()
                    .all(|(r, x)| r == m.owner || x.ctx().marked_pending(source_id) == 0);
                if settled {
                    let h = self.rs[m.owner]
                        .ctx()
                        .start_copy(m.spec.clone())
                        .map_err(|e| format!("start_copy of shard {shard}: {e}"))?;
                    let at = extent_at(m.target.1);
                    self.devs[m.target.0].1.set_range_write_fail(
                        at,
                        at + SHARD,
                        self.target_write_fail_ppm,
                    );
                    m.phase = Phase::Copying(h);
                    self.report.copies_started += 1;
                    let (s, t) = (m.shard, m.target);
                    self.trace(format_args!("shard {s}: copy to {t:?} starts"));
                }
                Ok(false)
            }
            Phase::Copying(h) => {
                let state = h.lock().unwrap().state.clone();
                match state {
                    CopyState::Copying => Ok(false),
                    CopyState::Abandoned(_) => {
                        self.report.restarts += h.lock().unwrap().restarts as u64;
                        self.rs[m.owner].ctx().stop_copy(vol, shard);
                        self.report.abandoned += 1;
                        Ok(true)
                    }
                    CopyState::Copied => {
                        let h = Arc::clone(h);
                        self.rs[m.owner].ctx().freeze_copy(vol, shard, true);
                        m.phase = Phase::Freezing(h, self.t);
                        Ok(false)
                    }
                }
            }
            Phase::Undecided | Phase::Committing(_) => Ok(false),
            Phase::Freezing(h, since) => {
                let (h, since) = (Arc::clone(h), *since);
                let (s, target) = (m.shard, m.target);
                let ctx = self.rs[m.owner].ctx();
                match ctx.freeze_copy(vol, shard, true) {
                    // Given up while frozen, and retired: its status says why.
                    None => {
                        m.phase = Phase::Copying(h);
                        Ok(false)
                    }
                    Some((0, true)) if self.meta.suspended => {
                        // A change the pool refuses: the writes go on, and the copy ends.
                        ctx.freeze_copy(vol, shard, false);
                        ctx.stop_copy(vol, shard);
                        self.report.refused += 1;
                        Ok(true)
                    }
                    Some((0, true)) if self.meta.idle() => {
                        // Persist the new placement; the writes stay held until it is known
                        // (`persisted`).
                        m.phase = Phase::Committing(h);
                        let mut record = self.meta.record.clone();
                        let placed = &mut record.volumes[0].shards[s];
                        placed.member = (self.meta.members.iter())
                            .position(|&m| m == target.0)
                            .expect("a copy's target is a member")
                            as u32;
                        placed.extent = target.1;
                        self.meta.begin(record, Purpose::Commit { shard: s });
                        self.trace(format_args!("shard {s}: commit persists {target:?}"));
                        Ok(false)
                    }
                    Some((_, true)) if self.t - since < FREEZE_LIMIT_NS => Ok(false),
                    Some(_) => {
                        // Restarted meanwhile, or held too long: let the writes go, copy on.
                        ctx.freeze_copy(vol, shard, false);
                        m.phase = Phase::Copying(h);
                        Ok(false)
                    }
                }
            }
        }
    }

    /// Whether a stopped or abandoned copy still has writes out to its target (a target
    /// that did not answer); they too must come back once faults stop.
    fn copy_io_left(&mut self) -> bool {
        let vol = self.vol;
        self.rs
            .iter_mut()
            .any(|r| (0..SHARDS as u32).any(|shard| r.ctx().copy_target_busy(vol, shard)))
    }

    /// With `TIDEPOOL_SIM_TRACE` set, says what the control plane does (to diagnose a seed).
    fn trace(&self, what: std::fmt::Arguments) {
        if self.tracing {
            println!("sim t={} ns: {what}", self.t);
        }
    }

    /// Routes shard `shard` to `target`, its placement now.
    fn flip(&mut self, shard: usize, target: (usize, u64), source: (usize, u64)) {
        let (tm, te) = target;
        let target_id = self.devs[tm].0;
        self.trace(format_args!(
            "shard {shard} flips to {target:?} from {source:?}"
        ));
        self.volume.update(|routes| {
            routes[shard].member = target_id;
            routes[shard].member_name = format!("D{tm}");
            routes[shard].offset_blocks = extent_at(te);
        });
        self.placement[shard] = target;
        let now = self.t;
        for p in self.history.iter_mut() {
            if p.shard == shard && p.until == Nanos::MAX {
                p.until = now;
            }
        }
        self.history.push(Placed {
            shard,
            member: target_id,
            offset_blocks: extent_at(te),
            from: now,
            until: Nanos::MAX,
        });
        if REUSE_SOURCE_EXTENT_AT_FLIP {
            // Reads routed to the old extent before the flip may still be in flight: it
            // goes back once they are (`release_old_sources`).
            let source_id = self.devs[source.0].0;
            for r in self.rs.iter_mut() {
                r.ctx().mark_channel(source_id);
            }
            self.old_sources.push((source, source_id));
        }
    }

    /// Reads the whole volume back (nothing in flight) and checks it against the model.
    fn read_back(&mut self) -> Result<(), String> {
        let total = SHARDS * SHARD;
        let mut first = 0;
        while first < total {
            let n = MAX_BLOCKS.min(total - first);
            let on = (self.rng.next_u64() % self.rs.len() as u64) as usize;
            self.client
                .send_on(&mut self.rs, on, self.vol, self.t, IoType::Read, first, n);
            first += n;
            while !self.client.inflight.is_empty() {
                if self.report.steps > ACTIVE_STEPS + 10_000_000 {
                    return Err("the read-back did not complete".into());
                }
                self.step(false)?;
            }
        }
        Ok(())
    }
}

/// One placement a shard had: on `member` at `offset_blocks` from `from` until `until`.
struct Placed {
    shard: usize,
    member: BdevId,
    offset_blocks: u64,
    from: Nanos,
    until: Nanos,
}

/// Whether a failure was injected, between `op`'s sending and `at`, on a source extent
/// under it (or an undecided copy's target, a placement too until an import decides): any
/// placement its shards had meanwhile (a piece may have gone out between
/// two flips), once it was the source (a piece sent before a flip may fail after it).
fn source_failed(
    devs: &[(BdevId, Arc<SimDevice>)],
    history: &[Placed],
    op: &Op,
    at: Nanos,
) -> bool {
    let injected: Vec<_> = devs.iter().map(|(id, d)| (*id, d.injected())).collect();
    (op.first..op.first + op.n).any(|block| {
        let shard = (block / SHARD) as usize;
        history
            .iter()
            .filter(|p| p.shard == shard && p.from <= at && op.sent <= p.until)
            .any(|p| {
                let on = p.offset_blocks + block % SHARD;
                injected
                    .iter()
                    .filter(|(id, _)| *id == p.member)
                    .flat_map(|(_, log)| log)
                    .any(|f| {
                        // Not while the extent was a copy's target, before it served.
                        f.at >= op.sent.max(p.from)
                            && f.at <= at
                            && f.offset_blocks <= on
                            && on < f.offset_blocks + f.num_blocks
                    })
            })
    })
}
