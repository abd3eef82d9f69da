//! Data migrations of shards between members: the control plane's side.
//!
//! `shard_migrate {volume, shard, target_bdev}` reserves a free extent on the target member,
//! starts the copy on the shard's owner reactor (`reactor::copy`: chunked copy, mirrored
//! writes, restarts on target failures) and returns; a driver thread then watches the copy:
//!
//! 1. *Copied*: the owner holds new writes to the shard (`freeze`), and once the mirrored
//!    writes in flight are back and the copy is still whole, the target is flushed, the new
//!    placement is persisted on every member, and the route flips (the epoch advances);
//!    then the copy stops and the held writes go on to the target. A target failure while
//!    writes drain restarts the copy: the driver lets the writes go and waits again.
//! 2. *Abandoned* (more than `max_restarts` restarts, or the source failed): the placement
//!    stays, the target member is flagged, and the reason is kept. The balancer sends a
//!    flagged member no copies for [`FLAG_HOLD_NS`], or until a copy to it (one a user
//!    asked for) completes.
//!
//! Crash safety: the placement on the members names the source until step 1 persists it,
//! and by then every write acknowledged to a client is on the flushed target (writes were
//! mirrored and acknowledged after both halves, and none ran during the commit). So a
//! restart finds the shard wholly on the source or wholly on the target. Once the new
//! placement is written nothing names the source extent, but reads routed to it before the
//! flip may still be in flight (in the device, or queued for resources), on any reactor: it
//! stays out of use (`Pool::old_sources`; the migration shows `draining reads`) until every
//! reactor's channel of the source has returned what it held at the flip, so that a new
//! shard or copy placed there cannot change what those reads return (issue 26's finding 3).
//! A read that never comes back keeps it out of use until a restart. If that write times out,
//! it may still land (*undecided*): the copy then keeps mirroring until the pool is imported
//! again, a write whose target half fails is failed to its client (never acknowledged from
//! the source alone), and the volume's flushes reach the target too, so both places hold
//! every acknowledged write, flushed where the client flushed it.

use super::metadata::DATA_START_BYTES;
use super::{invalid, pool_of, PoolError, PoolService};
use crate::bdev::BdevId;
use crate::reactor::{CopyHandle, CopySpec, CopyState};
use crate::time::{self, Nanos};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Finished migrations `migration_get_status` keeps.
const KEPT: usize = 32;
/// How often the driver looks at a copy.
const DRIVER_TICK: Duration = Duration::from_millis(2);
/// Longest the commit may hold a shard's writes before it lets them go and tries again.
const FREEZE_LIMIT: Duration = Duration::from_secs(2);
/// Longest a moved shard's old source extent waits for the reads routed to it before the
/// flip; past it, the extent stays out of use until a restart. (Longer than an NVMe
/// command's timeout and the controller reset after it.)
const READ_DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// `migration_set_options`: how copies run.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MigrationOptions {
    #[serde(default = "default_chunk_kib")]
    pub chunk_kib: u32,
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u32,
    /// 0: no cap.
    #[serde(default)]
    pub max_mib_per_s: u64,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
}

fn default_chunk_kib() -> u32 {
    128
}
fn default_max_inflight() -> u32 {
    4
}
fn default_max_restarts() -> u32 {
    16
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            chunk_kib: default_chunk_kib(),
            max_inflight: default_max_inflight(),
            max_mib_per_s: 0,
            max_restarts: default_max_restarts(),
        }
    }
}

impl MigrationOptions {
    pub fn check(&self) -> Result<(), PoolError> {
        if !(4..=16384).contains(&self.chunk_kib) {
            return Err(invalid("chunk_kib", "must be 4 to 16384"));
        }
        if !(1..=64).contains(&self.max_inflight) {
            return Err(invalid("max_inflight", "must be 1 to 64"));
        }
        if self.max_restarts > 1_000_000 {
            return Err(invalid("max_restarts", "must be at most 1000000"));
        }
        // A cap above any device's rate (1 PiB/s) is no cap; beyond it the bytes overflow.
        if self.max_mib_per_s > 1 << 30 {
            return Err(invalid(
                "max_mib_per_s",
                "must be at most 1073741824 (0: no cap)",
            ));
        }
        Ok(())
    }
}

/// One migration, running or finished.
struct Record {
    volume: String,
    shard: u32,
    source: String,
    target: String,
    state: String,
    handle: CopyHandle,
    block_size: u64,
    started_ns: Nanos,
    /// When the driver first saw the copy whole (the commit starts then).
    copied_ns: Option<Nanos>,
    finished_ns: Option<Nanos>,
    error: Option<String>,
}

#[derive(Default)]
struct Inner {
    options: MigrationOptions,
    running: Vec<Arc<Mutex<Record>>>,
    finished: VecDeque<Arc<Mutex<Record>>>,
    /// Members a copy to which failed, and when: the balancer sends them no copies for
    /// [`FLAG_HOLD_NS`].
    flagged: Vec<(String, Nanos)>,
}

/// How long a member a copy to which failed gets no copies from the balancer: long enough
/// not to retry a failing device over and over, short enough that a mended one is used again
/// without a restart (it used to be flagged for the daemon's life, with nothing showing it).
pub const FLAG_HOLD_NS: Nanos = 10 * 60 * 1_000_000_000;

impl Inner {
    /// Moves a copy that ended from the running list to the recent ones.
    fn retire(&mut self, rec: &Arc<Mutex<Record>>) {
        self.running.retain(|r| !Arc::ptr_eq(r, rec));
        if self.finished.len() == KEPT {
            self.finished.pop_front();
        }
        self.finished.push_back(Arc::clone(rec));
    }
}

#[derive(Default)]
pub struct Migrations {
    inner: Mutex<Inner>,
}

impl Migrations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a running copy matches `what`.
    fn any_running(&self, what: impl Fn(&Record) -> bool) -> bool {
        self.lock().running.iter().any(|r| what(&lock(r)))
    }

    /// Whether a copy is writing to bdev `target`.
    pub fn running_to(&self, target: &str) -> bool {
        self.any_running(|r| r.target == target)
    }

    /// Whether a copy reads from member `source`.
    pub fn running_from(&self, source: &str) -> bool {
        self.any_running(|r| r.source == source)
    }

    /// Whether a shard of `volume` is being copied.
    pub fn running_for_volume(&self, volume: &str) -> bool {
        self.any_running(|r| r.volume == volume)
    }

    pub fn running_for(&self, volume: &str, shard: u32) -> bool {
        self.any_running(|r| r.volume == volume && r.shard == shard)
    }
}

fn lock(r: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a copy that did not complete ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The copy itself gave up (target writes failed past its restarts, or a source read
    /// failed): the target is kept out of later moves, as before.
    CopyFailed,
    /// The commit was refused or failed before the new placement was written.
    Refused,
    /// The new placement's write timed out: it may still land (see `PoolError::Unknown`).
    Unknown,
}

impl PoolService {
    pub fn migration_options(&self) -> MigrationOptions {
        self.migrations.lock().options.clone()
    }

    pub fn set_migration_options(&self, o: MigrationOptions) -> Result<(), PoolError> {
        o.check()?;
        self.migrations.lock().options = o;
        Ok(())
    }

    /// How the newest migration of a shard ended: `None` while it runs (or if there was
    /// none), else `Ok` when it completed or the reason it was abandoned.
    pub(super) fn migration_outcome(
        &self,
        volume: &str,
        shard: usize,
    ) -> Option<Result<(), String>> {
        let inner = self.migrations.lock();
        let newest = inner
            .running
            .iter()
            .chain(inner.finished.iter().rev())
            .find(|r| {
                let r = lock(r);
                r.volume == volume && r.shard as usize == shard
            })?;
        let r = lock(newest);
        r.finished_ns?;
        Some(match &r.error {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        })
    }

    #[cfg(test)]
    pub(super) fn set_before_flip(&self, f: impl Fn() + Send + 'static) {
        *self.before_flip.lock().unwrap() = Some(Box::new(f));
    }

    /// Whether a shard of volume `name` is being copied or committed now.
    pub fn migrating_volume(&self, name: &str) -> bool {
        self.migrations.running_for_volume(name)
    }

    /// Data migrations copying or committing now.
    pub fn running_migrations(&self) -> usize {
        self.migrations.lock().running.len()
    }

    /// Members whose copies were abandoned.
    pub fn flagged_members(&self) -> Vec<String> {
        let now = time::now();
        let mut inner = self.migrations.lock();
        inner
            .flagged
            .retain(|(_, at)| now.saturating_sub(*at) < FLAG_HOLD_NS);
        inner.flagged.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Starts copying a shard to `target` (a member of its pool); returns at once.
    pub(super) fn start_data_migration(
        self: &Arc<Self>,
        volume_name: &str,
        shard: usize,
        target: &str,
    ) -> Result<Value, PoolError> {
        let options = self.migration_options();
        if self.migrations.running_for(volume_name, shard as u32) {
            return Err(PoolError::Busy(format!(
                "shard {shard} of volume '{volume_name}' is already migrating"
            )));
        }
        let mut pools = self.lock();
        let pool = pool_of(&mut pools, volume_name)?;
        pool.check_changes_allowed()?;
        let (vol_id, volume) = pool.volumes[volume_name].clone();
        let vi = pool.record_index(volume_name);
        let placed = pool.record.volumes[vi].shards[shard];
        let members = &pool.record.members;
        let t = members
            .iter()
            .position(|m| m.bdev_name == target)
            .ok_or_else(|| {
                invalid(
                    "target_bdev",
                    format!("'{target}' is not a member of pool '{}'", pool.record.name),
                )
            })? as u32;
        let Some(target_id) = pool.members[t as usize] else {
            return Err(PoolError::Degraded(format!("member '{target}' is missing")));
        };
        if pool.draining.as_ref().is_some_and(|d| d.0 == t) {
            return Err(PoolError::Busy(format!(
                "member '{target}' is being removed from the pool"
            )));
        }
        if pool.members[placed.member as usize].is_none() {
            return Err(PoolError::Degraded(format!(
                "shard {shard} of volume '{volume_name}' is on a missing member"
            )));
        }
        if placed.member == t {
            return Err(invalid(
                "target_bdev",
                format!("shard {shard} of volume '{volume_name}' is already on '{target}'"),
            ));
        }
        let free = pool.free_extents();
        let extent = *free[t as usize].first().ok_or_else(|| {
            PoolError::NoSpace(format!(
                "member '{target}' has no free extent for the shard"
            ))
        })?;
        let record = &pool.record;
        let bs = record.block_size as u64;
        let target_offset = DATA_START_BYTES / bs + extent * record.shard_blocks;
        let chunk_blocks = ((options.chunk_kib as u64 * 1024 / bs).max(1)) as u32;
        let spec = CopySpec {
            volume: vol_id,
            shard: shard as u32,
            target: target_id,
            target_offset_blocks: target_offset,
            chunk_blocks,
            max_inflight: options.max_inflight as usize,
            max_restarts: options.max_restarts,
            max_blocks_per_s: options.max_mib_per_s * (1 << 20) / bs,
        };
        let owner = volume.table().shards[shard].owner as usize;
        let source_id = pool.members[placed.member as usize].expect("checked above");
        // Writes reactors other than the owner sent to the source before now must land
        // before a chunk is read: only the owner executes the shard's writes, but a reactor
        // it took the shard over from may still have some on their way ("I/O it already
        // started completes there", see `migrate`). (The owner marks its own channel when
        // the copy starts.)
        let others = (0..self.engine.reactor_count()).filter(|&r| r != owner);
        if let Err((reactor, pending)) =
            self.wait_for_marked(source_id, others, Duration::from_secs(10))
        {
            return Err(PoolError::Busy(format!(
                "{pending} earlier write(s) to the source are still in flight on reactor                  {reactor}; try again"
            )));
        }
        let handle = self
            .engine
            .call_wait(owner, Duration::from_secs(5), move |r| {
                r.ctx().start_copy(spec)
            })
            .map_err(|e| PoolError::Io(e.to_string()))?
            .map_err(|e| PoolError::Busy(e.to_string()))?;
        pool.reserved.push((t, extent));
        let pool_name = pool.record.name.clone();
        let source = members[placed.member as usize].bdev_name.clone();
        let rec = Arc::new(Mutex::new(Record {
            volume: volume_name.to_string(),
            shard: shard as u32,
            source: source.clone(),
            target: target.to_string(),
            state: "copying".into(),
            handle,
            block_size: bs,
            started_ns: time::now(),
            copied_ns: None,
            finished_ns: None,
            error: None,
        }));
        self.migrations.lock().running.push(Arc::clone(&rec));
        drop(pools);
        log::info!(
            "volume '{volume_name}': copying shard {shard} from '{source}' to '{target}' \
             (extent {extent})"
        );
        let me = Arc::clone(self);
        let job = Commit {
            pool: pool_name,
            volume: volume_name.to_string(),
            vol_id,
            shard,
            owner,
            target_id,
            extent,
            target_offset,
            source_id,
            source_extent: placed.extent,
        };
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || me.drive(&rec, job))
            .map_err(|e| PoolError::Io(format!("starting the migration driver: {e}")))?;
        Ok(
            json!({"volume": volume_name, "shard": shard, "source_bdev": source,
                  "target_bdev": target, "state": "copying"}),
        )
    }

    /// Waits until the I/O each of `reactors` has in flight now on its channel of `bdev`
    /// (queued for resources included) has come back (`Ctx::mark_channel`). `Err((reactor,
    /// pending))` names a reactor that still had some at `limit`, or did not answer.
    fn wait_for_marked(
        &self,
        bdev: BdevId,
        reactors: impl Iterator<Item = usize>,
        limit: Duration,
    ) -> Result<(), (usize, usize)> {
        let deadline = std::time::Instant::now() + limit;
        let step = Duration::from_secs(5);
        for r in reactors {
            let mark = move |reactor: &mut crate::reactor::Reactor| {
                let ctx = reactor.ctx();
                ctx.mark_channel(bdev);
                ctx.marked_pending(bdev)
            };
            let mut pending = self.engine.call_wait(r, step, mark).map_err(|_| (r, 1))?;
            while pending > 0 {
                if std::time::Instant::now() >= deadline {
                    return Err((r, pending));
                }
                std::thread::sleep(Duration::from_micros(200));
                pending = self
                    .engine
                    .call_wait(r, step, move |reactor| reactor.ctx().marked_pending(bdev))
                    .map_err(|_| (r, pending))?;
            }
        }
        Ok(())
    }

    /// After a flip: waits until the reads routed to the shard's old source extent before it
    /// have come back on every reactor, then gives the extent back (`Pool::old_sources`). One
    /// that does not come back within [`READ_DRAIN_LIMIT`] keeps the extent out of use until
    /// a restart.
    fn release_old_source(&self, rec: &Arc<Mutex<Record>>, job: &Commit) {
        lock(rec).state = "draining reads".into();
        let drained = self.wait_for_marked(
            job.source_id,
            0..self.engine.reactor_count(),
            READ_DRAIN_LIMIT,
        );
        let mut pools = self.lock();
        let Some(p) = pools.get_mut(&job.pool) else {
            return;
        };
        // The index now: a member removed meanwhile renumbers the rest.
        let Some(m) = p.member_index_of(job.source_id) else {
            return;
        };
        let old = (m, job.source_extent);
        if let Some(i) = p.old_sources.iter().position(|&o| o == old) {
            p.old_sources.swap_remove(i);
        }
        if let Err((reactor, pending)) = drained {
            log::error!(
                "volume '{}': shard {}'s old extent {} on '{}' stays out of use until a \
                 restart: {pending} I/O(s) routed to it before the move are still in flight \
                 on reactor {reactor}",
                job.volume,
                job.shard,
                job.source_extent,
                lock(rec).source
            );
            p.reserved.push(old);
        }
    }

    /// Watches one copy until it is committed or abandoned.
    fn drive(&self, rec: &Arc<Mutex<Record>>, job: Commit) {
        let outcome: Result<(), (String, Ending)> = loop {
            std::thread::sleep(DRIVER_TICK);
            let state = lock(rec)
                .handle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state
                .clone();
            match state {
                CopyState::Copying => continue,
                CopyState::Abandoned(why) => break Err((why.to_string(), Ending::CopyFailed)),
                CopyState::Copied => {
                    lock(rec).copied_ns.get_or_insert_with(time::now);
                    match self.commit(rec, &job) {
                        Ok(true) => break Ok(()),
                        Ok(false) => {
                            // A restart while committing: copy again.
                            lock(rec).copied_ns = None;
                            continue;
                        }
                        Err(e @ PoolError::Unknown(_)) => {
                            break Err((e.to_string(), Ending::Unknown))
                        }
                        Err(e) => break Err((e.to_string(), Ending::Refused)),
                    }
                }
            }
        };
        if let Err((why, Ending::Unknown)) = &outcome {
            // The new placement may still land, and an import would then read the shard from
            // the target: the copy keeps mirroring the shard's writes there, and keeps its
            // extent, until the pool is imported again (the pool is suspended meanwhile).
            log::error!(
                "volume '{}': shard {} may or may not have moved to '{}' ({why}); its writes \
                 go to both until the pool is imported again",
                job.volume,
                job.shard,
                lock(rec).target
            );
            // (`commit` made the copy undecided, and the volume's flushes reach the target.)
            let mut inner = self.migrations.lock();
            {
                let mut r = lock(rec);
                r.finished_ns = Some(time::now());
                r.state = "undecided".into();
                r.error = Some(why.clone());
            }
            inner.retire(rec);
            return;
        }
        // The copy is over either way: stop it (releasing held writes) and free the extent.
        // (Not cancelled if the reactor is slow to answer: a late stop beats none.)
        let (vol, shard) = (job.vol_id, job.shard as u32);
        let _ = self
            .engine
            .call_wait_or_later(job.owner, Duration::from_secs(5), move |r| {
                r.ctx().stop_copy(vol, shard)
            });
        if outcome.is_ok() {
            self.release_old_source(rec, &job);
        }
        // After an abandoned copy, writes still out to its target usually come back at once;
        // give them a second. (A committed copy's extent is the shard's now.)
        let mut target_busy = outcome.is_err();
        for _ in 0..100 {
            target_busy = target_busy
                && self
                    .engine
                    .call_wait(job.owner, Duration::from_secs(5), move |r| {
                        r.ctx().copy_target_busy(vol, shard)
                    })
                    .unwrap_or(true);
            if !target_busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let stalled = lock(rec)
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .target_stalled;
        if outcome.is_err() && (stalled || target_busy) {
            // A write to the target extent is still out (unanswered, or just slow) and may
            // still land: the extent stays reserved (no new shard placed there, the member
            // not removed) until the pool is imported again.
            log::error!(
                "volume '{}': shard {}'s target extent {} on '{}' stays reserved until a \
                 restart: a write to it is still out and may still land",
                job.volume,
                job.shard,
                job.extent,
                lock(rec).target
            );
        } else {
            // Only this pool's reservation: another pool may have reserved the same member
            // index and extent. The index is looked up again (a member removal renumbers).
            let mut pools = self.lock();
            if let Some(p) = pools.get_mut(&job.pool) {
                if let Some(t) = p.member_index_of(job.target_id) {
                    p.reserved.retain(|&r| r != (t, job.extent));
                }
            }
        }
        let mut inner = self.migrations.lock();
        {
            let mut r = lock(rec);
            r.finished_ns = Some(time::now());
            match &outcome {
                Ok(()) => {
                    r.state = "completed".into();
                    // The member takes copies again.
                    inner.flagged.retain(|(name, _)| *name != r.target);
                }
                Err((why, ending)) => {
                    r.state = "abandoned".into();
                    r.error = Some(why.clone());
                    // Only a copy that failed keeps its target out of later moves; a refused
                    // commit (a suspended pool, a volume gone) says nothing against it.
                    if *ending == Ending::CopyFailed {
                        inner.flagged.retain(|(name, _)| *name != r.target);
                        inner.flagged.push((r.target.clone(), time::now()));
                    }
                }
            }
            log::info!(
                "volume '{}': migration of shard {} to '{}' {}",
                r.volume,
                r.shard,
                r.target,
                r.error
                    .as_deref()
                    .map_or("completed".to_string(), |e| format!("abandoned: {e}"))
            );
        }
        inner.retire(rec);
    }

    /// Holds the shard's writes, and once the copy is whole with nothing in flight, flushes
    /// the target, persists the new placement and flips the route. Returns false when the
    /// copy restarted meanwhile (the writes go on; the driver waits again).
    fn commit(&self, rec: &Arc<Mutex<Record>>, job: &Commit) -> Result<bool, PoolError> {
        lock(rec).state = "committing".into();
        let (vol, shard, owner) = (job.vol_id, job.shard as u32, job.owner);
        let freeze = |on: bool| {
            self.engine
                .call_wait(owner, Duration::from_secs(5), move |r| {
                    r.ctx().freeze_copy(vol, shard, on)
                })
                .map_err(|e| PoolError::Io(e.to_string()))
        };
        let deadline = std::time::Instant::now() + FREEZE_LIMIT;
        let ready = loop {
            match freeze(true)? {
                Some((0, true)) => break true,
                Some((_, true)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => break false,
            }
        };
        if !ready {
            freeze(false)?;
            lock(rec).state = "copying".into();
            return Ok(false);
        }
        #[cfg(test)]
        if let Some(f) = self.before_flip.lock().unwrap().as_ref() {
            f();
        }
        let result = self.persist_and_flip(job);
        match &result {
            Ok(()) => {}
            Err(PoolError::Unknown(_)) => {
                // The placement may land later: the copy is made undecided in the same step
                // that lets the held writes go, so no write is mirrored before a failure of
                // its target half fails it instead of restarting the copy (`reactor::copy`).
                // Not cancelled if the reactor is slow: it must run, and before later calls.
                let _ = self
                    .engine
                    .call_wait_or_later(owner, Duration::from_secs(5), move |r| {
                        let ctx = r.ctx();
                        ctx.keep_copy_undecided(vol, shard);
                        ctx.freeze_copy(vol, shard, false)
                    });
            }
            // The placement stays on the source; let the writes go.
            Err(_) => {
                freeze(false)?;
            }
        }
        result.map(|()| true)
    }

    fn persist_and_flip(&self, job: &Commit) -> Result<(), PoolError> {
        self.engine
            .flush_wait(job.target_id, Duration::from_secs(10))
            .map_err(|e| PoolError::Io(format!("flushing the target: {e}")))?;
        let mut pools = self.lock();
        // The volume may have been deleted (and the name reused) while it copied.
        let pool = pool_of(&mut pools, &job.volume)?;
        let volume = Arc::clone(&pool.volumes[&job.volume].1);
        if pool.volumes[&job.volume].0 != job.vol_id {
            return Err(PoolError::NoPool(format!(
                "volume '{}' went away",
                job.volume
            )));
        }
        // The target's index now: a member removed while this copied renumbers the rest.
        let target_member = pool.member_index_of(job.target_id).ok_or_else(|| {
            PoolError::NoPool(format!("the target of volume '{}' went away", job.volume))
        })?;
        let vi = pool.record_index(&job.volume);
        let mut record = pool.record.clone();
        let s = &mut record.volumes[vi].shards[job.shard];
        let old_source = (s.member, s.extent);
        s.member = target_member;
        s.extent = job.extent;
        let member_name = record.members[target_member as usize].bdev_name.clone();
        if let Err(e) = self.persist(pool, record) {
            if matches!(e, PoolError::Unknown(_)) {
                // A restart may read the shard from the target: every flush of the volume
                // reaches it from now on, before the writes held by the freeze go on.
                volume.add_undecided_target(job.target_id);
            }
            return Err(e);
        }
        // Out of use until the reads already routed there are back (`release_old_source`).
        pool.old_sources.push(old_source);
        let (target_id, offset, shard) = (job.target_id, job.target_offset, job.shard);
        volume.update(|routes| {
            routes[shard].member = target_id;
            routes[shard].member_name = member_name;
            routes[shard].offset_blocks = offset;
        });
        Ok(())
    }

    /// `migration_get_status`: running migrations, then the recent finished ones.
    pub fn migrations_json(&self, volume: Option<&str>) -> Value {
        let inner = self.migrations.lock();
        let now = time::now();
        let rows: Vec<Value> = inner
            .running
            .iter()
            .chain(inner.finished.iter().rev())
            .filter_map(|r| {
                let r = lock(r);
                if volume.is_some_and(|v| v != r.volume) {
                    return None;
                }
                let s = r.handle.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let end = r.finished_ns.unwrap_or(now);
                let secs = end.saturating_sub(r.started_ns) as f64 / 1e9;
                let copied = s.copied_blocks * r.block_size;
                Some(json!({
                    "volume": r.volume, "shard": r.shard,
                    "source_bdev": r.source, "target_bdev": r.target,
                    "state": r.state,
                    "bytes_copied": copied, "bytes_total": s.total_blocks * r.block_size,
                    "restarts": s.restarts,
                    "last_error": r.error.clone().or(s.last_error.map(|e| e.to_string())),
                    "rate_mib_per_s": if secs > 0.0 { (copied as f64 / secs / 1048576.0 * 10.0).round() / 10.0 } else { 0.0 },
                    "elapsed_ms": (secs * 1000.0 * 1000.0).round() / 1000.0,
                    "copy_ms": r.copied_ns.map(|c| (c.saturating_sub(r.started_ns) as f64 / 1e3).round() / 1e3),
                    "started_ms": r.started_ns / 1_000_000,
                }))
            })
            .collect();
        Value::Array(rows)
    }
}

/// What the commit needs to know about a running copy.
struct Commit {
    pool: String,
    volume: String,
    vol_id: BdevId,
    shard: usize,
    owner: usize,
    target_id: BdevId,
    extent: u64,
    target_offset: u64,
    source_id: BdevId,
    /// The shard's extent on the source.
    source_extent: u64,
}
