//! The simulator's pool metadata: the pool's description on every member, in the real slot
//! format (`pool::metadata`), written as the pool service writes it, and read back by an
//! import after every crash.
//!
//! **Contract.** [`Metadata`] holds the description last persisted and its generation, and
//! runs at most one persist at a time (the pool service's lock serializes them): the new
//! generation `g + 1` is written to its slot (`metadata::slot_of`) on each member in turn,
//! as reactor I/O on the simulated devices, so their faults apply: a write may fail, not
//! answer, or be torn by a crash, and a crash may come between two members' writes. As
//! `PoolService::persist`:
//! - every member acknowledged: the change is made ([`Outcome::Done`]);
//! - a member's write failed: the old description is written back to every member at
//!   `g + 3` (newer than any copy of `g + 1`, into the slot `g + 1` used), and then the
//!   change is refused ([`Outcome::Failed`]); if some member did not take the write back,
//!   it may keep `g + 1` with nothing newer over it, so the outcome is unknown, as below;
//! - a member's write had no answer within [`DEADLINE_NS`]: it may still land, so nothing is
//!   written over it and the pool is *suspended* (no change until the next import), and the
//!   change is [`Outcome::Unknown`].
//!
//! [`Metadata::import`] is what a restart does: each member's newer valid slot
//! (`metadata::decode`, `metadata::newest`: a torn slot fails its checksum and the other is
//! taken), the engine's own choice among them (`pool::import::choose`: the newest
//! generation, each member known by the identity its slot gives it), then the description
//! rewritten whole on every member at `g + 3` (as `PoolService::import`).
//!
//! The slots here are [`SLOT_BLOCKS`] blocks, not `metadata::SLOT_BYTES`: the description
//! of the simulator's small pool fits, and the devices stay small.

use super::client::spawn_recorders;
use super::device::SimDevice;
use crate::bdev::{BdevId, IoStatus, IoType};
use crate::pool::import::{choose, Choice};
use crate::pool::metadata::{self, PoolRecord};
use crate::reactor::{Reactor, TaskId};
use crate::rng::Rng;
use crate::testkit::{request, Recorder};
use crate::time::Nanos;
use crate::DmaPool;
use std::sync::Arc;

/// Blocks of one metadata slot on a simulated member (two slots from block 0).
pub const SLOT_BLOCKS: u64 = 8;
/// How long a metadata write may go unanswered before the persist counts as unknown: less
/// than `device::HANG_NS`, so a write that does not answer is given up on before it lands.
pub const DEADLINE_NS: u64 = 100_000_000;

/// What a persist was for; handed back with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Shard `shard`'s new owner reactor.
    Handoff { shard: usize, to: u16 },
    /// A copy's commit: shard `shard` placed on its target.
    Commit { shard: usize },
    /// `pool_remove_bdev`'s last step: the description without device `dev` (renumbered),
    /// written to the other members only, with no write back on failure (as `drop_member`:
    /// no placement changes, so either description is safe to find).
    Remove { dev: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done(Purpose),
    Failed(Purpose),
    Unknown(Purpose),
}

/// Counts for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetadataStats {
    pub persists: u64,
    pub write_backs: u64,
    pub unknown: u64,
    /// Crashes that came while a persist had written some members and not others.
    pub crashes_mid_persist: u64,
    pub imports: u64,
    /// Slots an import found invalid (torn, or never written) on a member that holds the pool.
    pub invalid_slots: u64,
}

/// One persist under way: `record` as `generation`, to the members in order.
struct Job {
    record: PoolRecord,
    generation: u64,
    /// The devices to write, by member index of `record`.
    targets: Vec<usize>,
    /// The next member to write.
    next: usize,
    /// When the write to member `next - 1` went out, while it is out.
    out_since: Option<Nanos>,
    purpose: Purpose,
    /// A write back after a failed persist: failures are only logged, as
    /// `PoolService::write_back` does, and then `purpose` is refused.
    write_back: bool,
    /// Every member so far acknowledged its write.
    all_acked: bool,
}

pub struct Metadata {
    /// The description last persisted (what the pool service keeps in memory).
    pub record: PoolRecord,
    pub generation: u64,
    /// The newest generation every member acknowledged: an import never finds an older one.
    whole: u64,
    /// A write timed out: no change until the next import.
    pub suspended: bool,
    pub stats: MetadataStats,
    /// The pool's members now: the device of each member index of `record`.
    pub members: Vec<usize>,
    job: Option<Job>,
    /// Every simulated device, in the pool or not (an import reads them all).
    devs: Vec<(BdevId, Arc<SimDevice>)>,
    recorders: Vec<(Recorder, TaskId)>,
    pool: DmaPool,
    /// Crash at the next chance between two members' writes of a persist.
    pub crash_mid_persist: bool,
}

impl Metadata {
    /// A pool made on `devs` with description `record`: generations 1 and 2 on every member
    /// (as `pool_create` leaves it), written straight to the devices.
    pub fn create(
        record: PoolRecord,
        devs: &[(BdevId, Arc<SimDevice>)],
        rs: &mut [Reactor],
    ) -> Metadata {
        let bs = record.block_size as usize;
        let mut m = Metadata {
            record,
            generation: 2,
            whole: 2,
            suspended: false,
            stats: MetadataStats::default(),
            members: (0..devs.len()).collect(),
            job: None,
            devs: devs.to_vec(),
            recorders: spawn_recorders(rs),
            pool: DmaPool::new(SLOT_BLOCKS as usize * bs, 2).expect("a slot buffer"),
            crash_mid_persist: false,
        };
        // Generation 1 then 2, as `pool_create` writes them: both slots hold the pool.
        m.write_all_now(1);
        m.write_all_now(2);
        m
    }

    /// Writes the description as `generation` to every member at once, with no faults (pool
    /// creation, and an import's rewrite).
    fn write_all_now(&mut self, generation: u64) {
        for (index, &dev) in self.members.iter().enumerate() {
            let bytes = Self::encode(&self.record, index, generation);
            self.devs[dev]
                .1
                .write_raw(metadata::slot_of(generation) * SLOT_BLOCKS, &bytes);
        }
    }

    /// The device each member of `record` is (members are named `D<device>`).
    fn devices_of(record: &PoolRecord) -> Vec<usize> {
        (record.members.iter())
            .map(|m| m.bdev_name[1..].parse().expect("a simulated member name"))
            .collect()
    }

    fn encode(record: &PoolRecord, index: usize, generation: u64) -> Vec<u8> {
        let bytes = metadata::encode(record, index as u32, generation, record.block_size)
            .expect("the simulator's pool description fits a slot");
        assert!(
            bytes.len() as u64 <= SLOT_BLOCKS * record.block_size as u64,
            "the simulator's pool description needs {} bytes; raise SLOT_BLOCKS",
            bytes.len()
        );
        bytes
    }

    /// Whether a change may start now: no persist under way, the pool not suspended.
    pub fn idle(&self) -> bool {
        self.job.is_none() && !self.suspended
    }

    /// Starts persisting `record` for `purpose`; the caller checked [`Metadata::idle`].
    pub fn begin(&mut self, record: PoolRecord, purpose: Purpose) {
        assert!(self.idle(), "one persist at a time");
        self.stats.persists += 1;
        self.job = Some(Job {
            targets: Self::devices_of(&record),
            record,
            generation: self.generation + 1,
            next: 0,
            out_since: None,
            purpose,
            write_back: false,
            all_acked: true,
        });
    }

    /// Whether a persist has written some members and not all (a crash now comes between
    /// the member writes of one persist).
    pub fn part_way(&self) -> bool {
        self.job.as_ref().is_some_and(|j| {
            let written = j.next - usize::from(j.out_since.is_some());
            written > 0 && written < j.targets.len()
        })
    }

    /// Moves the persist on: reaps its write, sends the next. Returns its outcome once it
    /// has one.
    pub fn poll(&mut self, rng: &mut Rng, rs: &mut [Reactor], now: Nanos) -> Option<Outcome> {
        let job = self.job.as_mut()?;
        let done: Vec<_> = self
            .recorders
            .iter()
            .flat_map(|(r, _)| r.done.borrow_mut().drain(..).collect::<Vec<_>>())
            .collect();
        if let Some(since) = job.out_since {
            match done.first().map(|d| d.status) {
                None if now.saturating_sub(since) > DEADLINE_NS => {
                    // It may still land: write nothing over it.
                    let purpose = job.purpose;
                    self.job = None;
                    self.suspended = true;
                    self.stats.unknown += 1;
                    return Some(Outcome::Unknown(purpose));
                }
                None => return None,
                Some(IoStatus::Success) => job.out_since = None,
                Some(_) if job.write_back => {
                    job.out_since = None;
                    job.all_acked = false;
                }
                Some(_) if matches!(job.purpose, Purpose::Remove { .. }) => {
                    // As `drop_member`: no write back; the next write goes to this one's
                    // slot (g + 3), leaving every member's slot of g whole.
                    let purpose = job.purpose;
                    self.generation = job.generation + 1;
                    self.job = None;
                    return Some(Outcome::Failed(purpose));
                }
                Some(_) => {
                    // As `persist`: the old description back at g + 3, to every member.
                    let (purpose, failed) = (job.purpose, job.generation);
                    self.generation = failed + 1;
                    self.stats.write_backs += 1;
                    self.job = Some(Job {
                        targets: self.members.clone(),
                        record: self.record.clone(),
                        generation: failed + 2,
                        next: 0,
                        out_since: None,
                        purpose,
                        write_back: true,
                        all_acked: true,
                    });
                    return None;
                }
            }
        }
        let job = self.job.as_mut().expect("still under way");
        if job.next == job.targets.len() {
            let job = self.job.take().expect("still under way");
            self.generation = job.generation;
            if job.all_acked {
                self.whole = job.generation;
            }
            if job.write_back && !job.all_acked {
                // A member may keep g + 1 with nothing newer over it (`pool::slots`).
                self.suspended = true;
                self.stats.unknown += 1;
                return Some(Outcome::Unknown(job.purpose));
            }
            if job.write_back {
                return Some(Outcome::Failed(job.purpose));
            }
            self.members = job.targets;
            self.record = job.record;
            return Some(Outcome::Done(job.purpose));
        }
        let index = job.next;
        let bytes = Self::encode(&job.record, index, job.generation);
        let job = self.job.as_mut().expect("still under way");
        let mut buf = self.pool.take().expect("one metadata write at a time");
        buf.set_len(bytes.len());
        buf.as_mut_slice().copy_from_slice(&bytes);
        let on = (rng.next_u64() % rs.len() as u64) as usize;
        let at = metadata::slot_of(job.generation) * SLOT_BLOCKS;
        let blocks = (bytes.len() / self.record.block_size as usize) as u32;
        let io = request(
            IoType::Write,
            at,
            blocks,
            Some(buf),
            on as u16,
            self.recorders[on].1,
            job.generation,
        );
        job.next += 1;
        job.out_since = Some(now);
        let dev = job.targets[index];
        rs[on].ctx().submit(self.devs[dev].0, io);
        None
    }

    /// The process crashed: the persist under way is gone (its write in flight lands, or
    /// not, or torn, as the device decides); the new reactors get new recorders.
    pub fn crash(&mut self, rs: &mut [Reactor]) {
        if self.part_way() {
            self.stats.crashes_mid_persist += 1;
        }
        self.job = None;
        self.recorders = spawn_recorders(rs);
    }

    /// A restart's import: each member's newer valid slot, and from those the description
    /// `pool::import::choose` takes (the engine's own choice), rewritten on every member.
    /// Returns it.
    pub fn import(&mut self) -> Result<&PoolRecord, String> {
        self.stats.imports += 1;
        let bs = self.record.block_size as u64;
        let mut slots = Vec::new();
        for (index, (_, d)) in self.devs.iter().enumerate() {
            let read = [0, 1].map(|s| {
                let bytes = d.read_raw(s * SLOT_BLOCKS, (SLOT_BLOCKS * bs) as usize);
                metadata::decode(&bytes)
            });
            self.stats.invalid_slots += read.iter().filter(|s| s.is_err()).count() as u64;
            if let Some(slot) = metadata::newest(read) {
                slots.push((index, format!("D{index}"), slot));
            }
        }
        // Every device is offered, a removed one too (its slot, if not wiped, names an older
        // numbering: `choose` leaves it out).
        let names: Vec<String> = (0..self.devs.len()).map(|i| format!("D{i}")).collect();
        let choice = choose(slots, &names, false).map_err(|e| format!("import: {e}"))?;
        let Choice::Bring {
            record,
            generation,
            members,
        } = choice
        else {
            return Err("import: the pool is marked for deletion".into());
        };
        // No member ever goes missing here: each must be found, as the device it is.
        let devices = Self::devices_of(&record);
        if let Some(i) = (0..members.len()).find(|&i| members[i] != Some(devices[i])) {
            return Err(format!(
                "import: member {i} ({}) is found as {:?} in generation {generation}",
                record.members[i].bdev_name, members[i]
            ));
        }
        if generation < self.whole {
            return Err(format!(
                "import: the newest description on the members is generation {generation}, \
                 older than generation {} every member acknowledged",
                self.whole
            ));
        }
        self.record = record;
        self.members = devices;
        self.generation = generation + 3;
        self.whole = self.generation;
        self.suspended = false;
        self.write_all_now(self.generation);
        Ok(&self.record)
    }
}
