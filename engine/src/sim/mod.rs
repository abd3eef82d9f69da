//! A seeded, deterministic simulation of the engine's data path, in the spirit of
//! TigerBeetle's VOPR (issue 26, "The simulator"; first version).
//!
//! **Contract.** One seed fixes everything: 2 or 3 real reactors with the real router, stepped
//! on this thread in a seeded order on a seeded fake clock; a volume whose shards live on
//! simulated member devices ([`device::SimDevice`]: memory, seeded latency, reordered
//! completions, failed reads and writes (a failed write lands in part half the time), copy
//! targets and metadata slots whose writes fail or do not answer); a client model that keeps
//! many overlapping reads, writes, flushes, write-zeroes and unmaps in flight at once
//! ([`client`]); and control actions taken while that I/O is in flight: hand-offs, and data
//! copies (`Ctx::start_copy`, the control plane's commit: mark the source on the other
//! reactors, freeze, persist the new placement, flip the route, stop; abandon on the copy's own
//! giving up, or cancel), and member removals (`pool_remove_bdev`: the member's shards copied
//! off one by one, then, once nothing reads or writes it, the renumbered description persisted
//! on the others and the member's slots wiped, or left as a failed wipe leaves them).
//!
//! Every change of placement or owner is persisted first, as the pool service persists it
//! ([`persist`]): the real `PoolRecord` in the real slot encoding, written member by member
//! through the reactors to the simulated devices, the old description written back after a
//! failed write, the pool suspended and the commit undecided (`keep_copy_undecided`) after a
//! write with no answer. Crashes come at any step, and in a quarter of the seeds once between
//! two members' writes of one persist: reactors, copies and requests in flight are gone, queued
//! writes (metadata slots included) land torn block by block, and a new process imports the
//! pool from the slots the devices hold (the newest valid slot of each, and the engine's own
//! choice among them, `pool::import::choose`) and takes the volume as that description places
//! and owns it. After every step the checker ([`model`]) checks:
//! - every read returns, in each block, a value the block may hold: the last acknowledged
//!   write or a write in flight (so no acknowledged write is lost, and no read returns data
//!   never written to that block);
//! - no client request fails unless a failure was injected, while it was in flight, on an
//!   extent that was then the source of one of its blocks (a target's failure must never
//!   reach a client; an undecided copy's target counts as a source until the import);
//!
//! and, once faults stop, that every request completes and every migration ends within
//! [`LIVENESS_NS`] of fake time, and that the whole volume reads back as the model says,
//! before and after a last crash.
//!
//! `TIDEPOOL_SEED=N` replays one seed; a failing seed panics with the command that replays
//! it (`TIDEPOOL_SIM_TRACE=1` says what the control plane does, `TIDEPOOL_SIM_WATCH=block`
//! follows one block). `TIDEPOOL_SIM_SEEDS=N` or `TIDEPOOL_SIM_MINUTES=M` run a soak
//! (`scripts/sim.sh`).
//!
//! **Not yet covered** (the next engineer's list): the control plane here is the
//! simulator's own copy of the pool service's steps (`copy_driver`'s mark, start, freeze,
//! persist, flip, stop; `PoolService::persist` and `import`'s choice of a description), not
//! that code, which runs on threads and wall-clock deadlines; volume create and delete, and
//! the balancer's choices (its moves are the random ones here) are not modelled; an
//! import's own rewrite is written whole, with no crash during it; members never go
//! missing (no degraded import). FLUSH durability: the device has no volatile cache, so every acknowledged
//! write must survive a crash (stricter than "every flushed one"), and the commit does not
//! flush the target.
//!
//! Mirrored writes are sent as `reactor::copy` sends them: both halves at once (issue 26),
//! or one after the other when the copy's mirror buffers are all out (4 under test, so the
//! clients get there), so a mirror's source and target halves are in flight together,
//! fail, hang and complete in either order here.
//!
//! **The switch that excluded a fault combination**: [`REUSE_SOURCE_EXTENT_AT_FLIP`] (on
//! since fix 3): off, it hid issue 26's finding 3 (seed 89), a source extent freed at the
//! flip while reads to it are in flight. (Two more switches, off until fix 1, hid issue
//! 26's finding 1, a target failure while a commit is undecided losing an acknowledged
//! write; commits are now undecided only when their metadata write has no answer.)

pub mod client;
pub mod device;
pub mod model;
pub mod persist;
mod world;

#[cfg(test)]
mod tests;

/// Whether a shard's old source extent goes back to the free list after the flip (to the
/// next copy), as the pool service gives it back (`pool::copy_driver::release_old_source`):
/// once every reactor's channel of the source has returned what it held at the flip. Off,
/// an old extent is never reused. Issue 26's finding 3: given back at the flip itself, as the
/// pool service did before the fix, seed 28 of an earlier version failed ("request 375:
/// block 95 holds bytes no write to it left (header: block 159, write 366)": a read of shard
/// 1 still on the device at its old extent returned a chunk of shard 2 copied there after
/// the flip), and seed 89 of this one does ("block 102 read back zeroes ..., but it may hold
/// only [718, 729]"; a chunk of zeroes copied over it).
pub const REUSE_SOURCE_EXTENT_AT_FLIP: bool = true;

/// Fake time allowed, after faults stop and the clients stop sending, for every request to
/// complete and every migration to end.
pub const LIVENESS_NS: u64 = 2_000_000_000;

pub use world::{run_seed, SeedReport};
