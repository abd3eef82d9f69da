//! Reading and writing the pool's description in the members' metadata slots
//! ([`metadata`]): the newest whole slot of a member, a new generation on every member
//! (`persist`, with its write back after a failure), and wiping the slots.
//!
//! **Contract.** A change is made in memory only once every present member took its new
//! generation. After a failed write the old description goes back at a generation that
//! outranks any copy of the failed one; if a write's outcome is unknown (it timed out, or
//! a write back did not reach every member), the pool is suspended until it is imported
//! again, and the caller gets [`PoolError::Unknown`].

use super::metadata::{self, PoolRecord, Slot, SLOT_BYTES};
use super::{Pool, PoolError, PoolService};
use crate::bdev::BdevId;
use crate::reactor::BlockingIoError;

/// Blocks in one metadata slot.
pub(super) fn slot_blocks(block_size: u32) -> u64 {
    SLOT_BYTES / block_size as u64
}

pub(super) fn io_error(what: String) -> impl FnOnce(BlockingIoError) -> PoolError {
    move |e| PoolError::Io(format!("{what}: {e}"))
}

/// As [`io_error`], for a metadata write or flush: one that timed out may still land, so
/// its outcome is unknown ([`PoolError::Unknown`]).
pub(super) fn write_error(what: String) -> impl FnOnce(BlockingIoError) -> PoolError {
    move |e| match e {
        BlockingIoError::Timeout(_) => PoolError::Unknown(format!(
            "{what}: {e}; the write may still land, so whether the change was made is unknown"
        )),
        e => PoolError::Io(format!("{what}: {e}")),
    }
}

impl PoolService {
    /// Reads both slots of a member and returns the newer whole one.
    pub(super) fn read_newest(
        &self,
        id: BdevId,
        block_size: u32,
    ) -> Result<Option<Slot>, PoolError> {
        let blocks = slot_blocks(block_size);
        let mut slots = Vec::new();
        for slot in 0..2 {
            let buf = self
                .engine
                .read_blocks(id, slot * blocks, blocks as u32, self.deadline())
                .map_err(io_error(format!("reading metadata slot {slot}")))?;
            slots.push(metadata::decode(buf.as_slice()));
        }
        let b = slots.pop().expect("two slots");
        let a = slots.pop().expect("two slots");
        Ok(metadata::newest([a, b]))
    }

    /// Whether a member's first block of either slot carries the tidepool magic.
    pub(super) fn has_metadata(&self, id: BdevId, block_size: u32) -> Result<bool, PoolError> {
        for slot in 0..2 {
            let buf = self
                .engine
                .read_blocks(id, slot * slot_blocks(block_size), 1, self.deadline())
                .map_err(io_error(format!("reading metadata slot {slot}")))?;
            if metadata::has_magic(buf.as_slice()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes `record` as `generation` to every present member, then flushes them.
    pub(super) fn write_generation(
        &self,
        record: &PoolRecord,
        generation: u64,
        members: &[Option<BdevId>],
    ) -> Result<(), PoolError> {
        let bs = record.block_size;
        let at = metadata::slot_of(generation) * slot_blocks(bs);
        // Every member's slot is encoded before any is written: a description too big for a
        // slot fails here, with nothing written (see `persist`).
        let mut slots = Vec::new();
        for (index, id) in members.iter().enumerate() {
            let Some(id) = *id else { continue };
            let bytes = metadata::encode(record, index as u32, generation, bs)
                .map_err(|e| PoolError::NoSpace(e.to_string()))?;
            slots.push((index, id, bytes));
        }
        for (index, id, bytes) in slots {
            let name = &record.members[index].bdev_name;
            self.engine
                .write_blocks(id, at, &bytes, self.deadline())
                .map_err(write_error(format!("writing pool metadata to '{name}'")))?;
        }
        for (index, id) in members.iter().enumerate() {
            let Some(id) = *id else { continue };
            let name = &record.members[index].bdev_name;
            self.engine
                .flush_wait(id, self.deadline())
                .map_err(write_error(format!("flushing pool metadata on '{name}'")))?;
        }
        Ok(())
    }

    /// Persists `record` as the pool's next generation; on failure writes the current
    /// description back (best effort) and leaves the pool as it was. A write that timed out
    /// is not written over (it may still land): the pool is suspended instead.
    ///
    /// The failed generation g+1 may be on some members (reached before the failure, or late).
    /// The write back goes out as g+3, as import's rewrite does: newer than any such copy
    /// (at g+1 the two would tie, and import would pick by member order), and into the slot
    /// the failed write used, so the slot holding g is never touched and a write back that is
    /// torn in turn still leaves g readable. The next record goes out as g+4.
    ///
    /// A write back that some member did not take leaves the outcome unknown: that member
    /// may hold g+1 (written before the failure, or by the failed write itself) with
    /// nothing newer over it, and an import would take the new description. The pool is
    /// then suspended and the error is [`PoolError::Unknown`], as for a write that timed
    /// out (a copy's commit stays undecided; issue 26's simulator found this, seed 55 at
    /// high metadata fault rates: a refused commit's target came back as the shard's home).
    pub(super) fn persist(&self, pool: &mut Pool, record: PoolRecord) -> Result<(), PoolError> {
        pool.check_changes_allowed()?;
        let generation = pool.generation + 1;
        if let Err(e) = self.write_generation(&record, generation, &pool.members) {
            if matches!(e, PoolError::NoSpace(_)) {
                // The description does not fit a slot: refused before anything was written.
                return Err(e);
            }
            if pool.suspend_if_unknown(&e) {
                // Writing the old description back could race with the late write.
                pool.generation = generation;
                return Err(e);
            }
            // As generation + 2 (write_back takes the next one), the failed write's slot.
            pool.generation = generation + 1;
            if !self.write_back(pool, |_| true) {
                let unknown = PoolError::Unknown(format!(
                    "{e}; writing the description back failed on a member, so the next \
                     import may still find the change"
                ));
                pool.suspend_if_unknown(&unknown);
                return Err(unknown);
            }
            log::error!("pool '{}': {e}", pool.record.name);
            return Err(e);
        }
        pool.generation = generation;
        pool.record = record;
        Ok(())
    }

    /// Zeroes the first block of the given slots on every present member.
    pub(super) fn wipe(
        &self,
        ids: &[Option<BdevId>],
        bs: u32,
        slots: &[u64],
    ) -> Result<(), PoolError> {
        self.wipe_in_order(ids, bs, slots).map_err(|(_, e)| e)
    }

    /// [`PoolService::wipe`], member after member; on failure, also the index in `ids` of
    /// the member it stopped at (those before it are wiped, those after it untouched).
    pub(super) fn wipe_in_order(
        &self,
        ids: &[Option<BdevId>],
        bs: u32,
        slots: &[u64],
    ) -> Result<(), (usize, PoolError)> {
        let zero = vec![0u8; bs as usize];
        for (index, id) in ids.iter().enumerate() {
            let Some(id) = *id else { continue };
            let name = || {
                self.registry
                    .get(id)
                    .map_or_else(|| format!("bdev #{id}"), |b| b.info().name.clone())
            };
            for &slot in slots {
                self.engine
                    .write_blocks(id, slot * slot_blocks(bs), &zero, self.deadline())
                    .map_err(|e| {
                        (
                            index,
                            write_error(format!("wiping pool metadata on '{}'", name()))(e),
                        )
                    })?;
            }
            self.engine.flush_wait(id, self.deadline()).map_err(|e| {
                (
                    index,
                    write_error(format!("flushing '{}' after wiping it", name()))(e),
                )
            })?;
        }
        Ok(())
    }

    /// Writes `pool`'s current description, at the next generation, to each of its members
    /// that `to` selects, one at a time so that one failing does not keep it from the
    /// others (best effort: failures are logged). The pool's generation moves past it
    /// whatever happens. Suspends the pool if a write's outcome is unknown. Returns whether
    /// every member it wrote to took it.
    pub(super) fn write_back(&self, pool: &mut Pool, to: impl Fn(usize) -> bool) -> bool {
        let generation = pool.generation + 1;
        pool.generation = generation;
        let members = pool.members.clone();
        let mut all = true;
        for (index, id) in members.iter().enumerate() {
            if id.is_none() || !to(index) {
                continue;
            }
            let mut only = vec![None; members.len()];
            only[index] = *id;
            if let Err(e) = self.write_generation(&pool.record, generation, &only) {
                log::error!(
                    "pool '{}': writing its description back failed: {e}",
                    pool.record.name
                );
                pool.suspend_if_unknown(&e);
                all = false;
            }
        }
        all
    }
}
