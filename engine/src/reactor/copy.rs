//! Copying a shard to another member while clients keep writing to it: the owner reactor's
//! side of a data migration. (Choosing the target extent, persisting the new placement and
//! flipping the route are the control plane's; see the pool service.)
//!
//! The copy reads the shard's source extent in chunks and writes them to the target extent,
//! at most `max_inflight` chunks at a time. Meanwhile every client write, unmap or
//! write-zeroes piece the owner executes on the shard is *mirrored*: written to the source
//! and to the target at once (the target half with a copy of the data from the copy's
//! bounded mirror pool; one half after the other, with the client's buffer, when no mirror
//! buffer fits or is free), and completed to the client with the source's status once both
//! are back (see `mirror`). Reads are served from the source by the normal route.
//!
//! A chunk never overwrites newer mirrored data on the target, because the two never overlap
//! in flight, and everything here runs on the one owner reactor:
//! - a client piece that overlaps a chunk in flight waits (in `deferred`) until that chunk's
//!   target write is back, then takes the normal path;
//! - so does one that overlaps a mirrored write in flight (either half), or an earlier
//!   piece still waiting (so that it cannot pass it): the source and the target each order
//!   the writes they hold on their own, so two overlapping writes in flight together could
//!   land on the source in one order and on the target in the other, and the block would
//!   change, unwritten, when the route flips to the target;
//! - a chunk does not start over a range a mirrored write is still writing (either half);
//!   it starts once the mirror is back, and then reads a source that already holds the
//!   write. A mirror keeps its slot until both halves are back.
//!
//! A chunk in flight counts for both rules whatever its generation, so a chunk left over
//! from before a restart cannot land on top of a newer write either. A mirror whose client
//! was answered early (the copy gave up, or, undecided, its target half stalled: below)
//! keeps its slot until its target half is back, so it still counts too (and no client is
//! answered before its source half is back: its request and buffer ride with it). An
//! undecided copy (below) starts no chunk at all: it is whole when it becomes undecided and
//! is never restarted.
//!
//! Writes sent to the source before the copy started are not mirrored, so no chunk is read
//! until they have landed (on a device a read may overtake a write): the copy marks the
//! owner's channel of the source when it starts and waits for what was in flight then
//! (`Ctx::mark_channel`); the control plane does the same on the other reactors first.
//!
//! If the copy gives up while writes wait in `deferred` (during a commit's freeze), they go
//! on to the source: nothing else would release them. Whenever it gives up (abandoned, or
//! stopped), the clients whose write waits only for its target half are answered from the
//! source (`retire_copy`, which every completion of a copy reaches), and a target write it
//! still has out is watched for [`TARGET_ANSWER_NS`] like an active copy's: one that never
//! answers marks the copy `target_stalled`, so its extent stays reserved.
//!
//! Pacing: chunks start only from the poll loop, at most [`CHUNKS_PER_POLL`] per iteration
//! (on a malloc member a chunk is two memory copies done inline), so client I/O keeps its
//! turn between them; `max_blocks_per_s` caps the rate further.
//!
//! Any failed target write, a chunk's or a mirror's, restarts the copy from the shard's first
//! block (a new generation; older chunks are let finish and ignored). So does a mirror whose
//! source half failed while its target half landed (the target then holds data the source
//! may not; the client gets the source's failure). The client's write is acknowledged from
//! the source: a target failure never reaches a client (but see *undecided*, below). After
//! `max_restarts` restarts the copy is abandoned, with the reason in its status, and stops
//! mirroring. A target write with no answer after [`TARGET_ANSWER_NS`] abandons the copy
//! too (a late write could land over a newer chunk, so it cannot restart): from then on
//! client writes go to the source alone, and those held behind that chunk go on at once. A
//! client write whose own target half is held is answered then, from its source half (with
//! its own buffer when the halves went in parallel; else with a new buffer of the same size,
//! for its own stays with the held write until the device gives it back, and is dropped
//! then).
//!
//! Memory: a copy maps its chunk buffers (`chunk_blocks * max_inflight` blocks) and its
//! mirror pool (`mirror::MIRROR_BUFS` of `mirror::MIRROR_BUF_BYTES`, 2 MiB) when it starts,
//! and takes no more on the I/O path (but for the rare buffer of an early answer, above).
//!
//! *Undecided* (`Ctx::keep_copy_undecided`): the commit's write of the new placement timed
//! out and may still land, so after a restart the shard may be read from the target. Then
//! an acknowledged write must be on the target too, and the rules above change:
//! - a failed target half fails its client write, with the target's status. It is not
//!   acknowledged from the source, and the copy is neither restarted nor abandoned: a
//!   restarted copy would stop being whole, yet the late placement could make the target the
//!   shard's home before the chunks covered that block again; an abandoned one would stop
//!   mirroring. (A failed source half under a landed target half fails its client as
//!   usual and does not restart the copy either: either place may hold the old or the new
//!   data.) Failing the write is the one exception to "a target failure never reaches a
//!   client", chosen over holding it: the target has answered, and a held write could only
//!   be retried on it until some limit and then failed anyway (every wait has a limit),
//!   while only a re-import ends the undecided state. A failed write leaves the block's old
//!   or new data on either place, as any failed write may;
//! - a slow target is waited for, not abandoned (its clients wait with it), for at most
//!   [`TARGET_ANSWER_NS`], the limit an active copy has: a client write whose target half
//!   has had no answer for that long fails with `mirror::TARGET_SILENT` (`ETIMEDOUT`: the
//!   target did not answer in time; the source's own failure if it failed), once its source
//!   half is back, never before, and never with success while its target half is out. That
//!   mirror is *stalled*: it keeps its slot until its target half is back (it may still
//!   land), so the writes that overlap it and wait in `deferred` are failed too (they were
//!   never sent: no block changed), and so is, at once, every new overlapping write while
//!   the slot lives (else they would queue without bound); writes elsewhere go on as usual.
//!   A copy holding `mirror::MAX_STALLED_MIRRORS` stalled mirrors fails every new write at
//!   once (each would keep a slot and a buffer), so its memory stays bounded. The copy stays
//!   undecided, active and mirroring; its status shows the reason (`TargetSilent`), not
//!   `target_stalled` (that flag is a copy's that gave up; `copy_target_busy` still says
//!   the write is out). A late target half that lands leaves the new data on the target: a
//!   failed write may leave either place with the old or the new data;
//! - no chunk is out (a copy is made undecided whole, while frozen), so this reasoning is
//!   about mirrors only; and the volume's flushes reach the target (`router`).

use super::router::ROUTER_TASK;
use super::tag::{CopyIo, RouterTag, MAX_COPIES, MAX_COPY_SLOTS};
use super::{Ctx, ReactorId};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use mirror::Mirror;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tidepool_bindings::dma::DmaPool;

#[path = "mirror.rs"]
pub(super) mod mirror;

/// Chunks a copy may start per poll iteration.
pub const CHUNKS_PER_POLL: usize = 1;
/// Longest a write to a copy's target may go unanswered before the copy is abandoned (while
/// undecided: before the client write it belongs to fails; see the module docs).
#[cfg(not(test))]
pub const TARGET_ANSWER_NS: u64 = 5_000_000_000;
#[cfg(test)]
pub const TARGET_ANSWER_NS: u64 = 200_000_000;

/// What to copy and how.
#[derive(Clone, Debug)]
pub struct CopySpec {
    pub volume: BdevId,
    pub shard: u32,
    pub target: BdevId,
    pub target_offset_blocks: u64,
    pub chunk_blocks: u32,
    pub max_inflight: usize,
    pub max_restarts: u32,
    /// Copy rate cap in blocks per second (0: none).
    pub max_blocks_per_s: u64,
}

/// Why `start_copy` refused a copy (nothing was started).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("chunk size and chunks in flight must be at least 1")]
    EmptyChunks,
    #[error("bdev {0} is not a volume")]
    NotAVolume(BdevId),
    #[error("the volume has no shard {0}")]
    NoShard(u32),
    #[error("reactor {reactor} does not own shard {shard}")]
    NotOwner { reactor: ReactorId, shard: u32 },
    #[error("shard {0} is unavailable")]
    Unavailable(u32),
    #[error("the target is the shard's own member")]
    TargetIsSource,
    #[error("shard {0} is already being copied")]
    AlreadyCopying(u32),
    #[error("reactor {reactor} already runs {MAX_COPIES} copies, the most one reactor may; try again when one has ended")]
    TooManyCopies { reactor: ReactorId },
    #[error("target bdev {0} cannot be opened")]
    TargetUnopened(BdevId),
    #[error("the target extent is past the end of the target")]
    TargetTooSmall,
    #[error("no memory for the copy's chunk buffers: {0}")]
    NoMemory(String),
}

/// Why a copy restarted or gave up: its status's `last_error`, and an abandoned copy's
/// reason (the control plane shows them as text, through `Display`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyFailure {
    /// A chunk's write to the target failed (restarts the copy).
    #[error("a copy write to the target failed ({status})")]
    TargetWrite { status: IoStatus },
    /// A mirrored write's target half failed (restarts the copy; while undecided, fails the
    /// client's write).
    #[error("a mirrored write to the target failed ({status})")]
    MirrorTarget { status: IoStatus },
    /// A mirrored write's source half failed while its target half landed, so the target
    /// held data the source may not (restarts the copy).
    #[error("a mirrored write to the source failed ({status}) after its target half landed")]
    MirrorSource { status: IoStatus },
    /// A chunk's read of the source failed (abandons the copy).
    #[error("reading the source failed ({status})")]
    SourceRead { status: IoStatus },
    /// A write to the target had no answer for `ms` (abandons the copy; while undecided, fails
    /// the client's write and those held behind it instead).
    #[error("a write to the target has had no answer for {ms} ms")]
    TargetSilent { ms: u64 },
    /// Failure `restarts` was one past the `max_restarts` allowed (abandons the copy).
    #[error("abandoned after {max_restarts} restarts, at failure {restarts}: {last}")]
    TooManyRestarts {
        max_restarts: u32,
        restarts: u32,
        last: Box<CopyFailure>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyState {
    Copying,
    /// Every block is on the target; writes are still mirrored until the copy is stopped.
    Copied,
    Abandoned(CopyFailure),
}

/// A copy's progress, shared with the control plane.
#[derive(Clone, Debug)]
pub struct CopyStatus {
    pub state: CopyState,
    pub copied_blocks: u64,
    pub total_blocks: u64,
    pub restarts: u32,
    pub last_error: Option<CopyFailure>,
    /// Abandoned with a write to the target unanswered: it may still land, so the target
    /// extent must stay reserved (see `pool::copy_driver`).
    pub target_stalled: bool,
}

pub type CopyHandle = Arc<Mutex<CopyStatus>>;

struct Chunk {
    start: u64,
    blocks: u32,
    generation: u32,
    /// When its write went to the target (none while it is read from the source).
    target_since: Option<u64>,
}

pub(super) struct ShardCopy {
    spec: CopySpec,
    status: CopyHandle,
    source: BdevId,
    source_offset: u64,
    total: u64,
    block_size: usize,
    cursor: u64,
    generation: u32,
    copied: u64,
    restarts: u32,
    /// The reactor's clock at the last pump (for the rate cap's restarts).
    now_hint: u64,
    active: bool,
    /// While set, write-like pieces wait (the control plane is committing the copy).
    frozen: bool,
    /// The commit's outcome is unknown (see [`Ctx::keep_copy_undecided`]).
    undecided: bool,
    /// Writes to the source that were in flight when the copy started have not all landed
    /// yet (see `Ctx::mark_channel`); no chunk is read before they have.
    settling: bool,
    /// When this generation started and what it has issued, for the rate cap.
    generation_start: u64,
    issued: u64,
    chunks: Vec<Option<Chunk>>,
    mirrors: Vec<Option<Mirror>>,
    /// Client pieces that overlapped a chunk in flight, in arrival order.
    deferred: VecDeque<IoRequest>,
    pool: DmaPool,
    /// Buffers for the target halves of mirrored writes sent in parallel (see `mirror`);
    /// none if they could not be mapped: then every mirror goes one half after the other.
    mirror_pool: Option<DmaPool>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl ShardCopy {
    fn chunk_overlaps(&self, range: (u64, u64)) -> bool {
        self.chunks
            .iter()
            .flatten()
            .any(|c| overlaps(range, (c.start, c.start + c.blocks as u64)))
    }

    /// Whether a piece waiting in `deferred` overlaps `range`: a later write must not pass an
    /// earlier one it overlaps (it could keep the earlier one waiting for as long as writes
    /// keep coming, and they would land in the other order).
    fn deferred_overlaps(&self, range: (u64, u64)) -> bool {
        let shard_start = self.spec.shard as u64 * self.total;
        self.deferred.iter().any(|p| {
            let at = p.offset_blocks - shard_start;
            overlaps(range, (at, at + p.num_blocks as u64))
        })
    }

    /// When each write now out to the target (a chunk's or a mirror's) was sent.
    fn target_writes_since(&self) -> impl Iterator<Item = u64> + '_ {
        let chunks = self
            .chunks
            .iter()
            .flatten()
            .filter_map(|ch| ch.target_since);
        chunks.chain(self.mirrors.iter().flatten().filter_map(|m| m.target_since))
    }

    fn mirror_overlaps(&self, range: (u64, u64)) -> bool {
        self.mirrors
            .iter()
            .flatten()
            .any(|m| overlaps(range, (m.start, m.end)))
    }

    fn publish(&self, state: Option<CopyState>, error: Option<CopyFailure>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = state {
            s.state = state;
        }
        if error.is_some() {
            s.last_error = error;
        }
        s.copied_blocks = self.copied;
        s.restarts = self.restarts;
    }

    fn restart(&mut self, why: CopyFailure) {
        if !self.active {
            return;
        }
        if self.undecided {
            // Never restarted nor abandoned while its placement may still land (see the
            // module docs); `mirror_complete` fails the client write instead. (No chunk is
            // out then: a copy is made undecided whole and frozen, before its writes go on.)
            self.publish(None, Some(why));
            return;
        }
        self.restarts += 1;
        self.generation += 1;
        self.cursor = 0;
        self.copied = 0;
        self.issued = 0;
        self.generation_start = self.now_hint;
        if self.restarts > self.spec.max_restarts {
            self.active = false;
            // `restarts` counts the failures that restart a copy (the target's, and a mirror's
            // source under a landed target half), chunks in flight together included, so it
            // ends one past `max_restarts`: say which failure ended it.
            let reason = CopyFailure::TooManyRestarts {
                max_restarts: self.spec.max_restarts,
                restarts: self.restarts,
                last: Box::new(why.clone()),
            };
            self.publish(Some(CopyState::Abandoned(reason)), Some(why));
        } else {
            self.publish(Some(CopyState::Copying), Some(why));
        }
    }
}

/// The tag of copy `copy`'s I/O `io`, kept in its slot `slot` (see `tag`).
fn tag(copy: usize, io: CopyIo, slot: usize) -> u64 {
    RouterTag::Copy { copy, io, slot }.encode()
}

/// A free index in `v`, below `bound` (the width of its field in an I/O tag: a table that
/// would outgrow it is a programmer error; copies are refused before, chunks are bounded by
/// `max_inflight`, mirrors by the client writes in flight).
fn free_slot<T>(v: &mut Vec<Option<T>>, bound: usize) -> usize {
    match v.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            assert!(v.len() < bound, "copy slots exhausted (at most {bound})");
            v.push(None);
            v.len() - 1
        }
    }
}

impl Ctx {
    /// Starts copying shard `spec.shard` of `spec.volume` to `spec.target` on this reactor,
    /// which must own the shard.
    pub fn start_copy(&mut self, spec: CopySpec) -> Result<CopyHandle, CopyError> {
        if spec.chunk_blocks == 0 || spec.max_inflight == 0 {
            return Err(CopyError::EmptyChunks);
        }
        // Opens this reactor's view of the volume if no I/O has yet.
        let _ = self.channel(spec.volume);
        let (route, shard_blocks, block_size) = {
            let slot = self
                .volume_slot(spec.volume)
                .ok_or(CopyError::NotAVolume(spec.volume))?;
            let route = slot
                .route_of(spec.shard as u64)
                .ok_or(CopyError::NoShard(spec.shard))?;
            (route, slot.shard_blocks_of(), slot.block_size())
        };
        let (reactor, shard) = (self.id, spec.shard);
        if route.owner != self.id {
            return Err(CopyError::NotOwner { reactor, shard });
        }
        if route.state != crate::volume::ShardState::Online {
            return Err(CopyError::Unavailable(shard));
        }
        if route.member == spec.target {
            return Err(CopyError::TargetIsSource);
        }
        if self.copy_of(spec.volume, spec.shard as u64).is_some() {
            return Err(CopyError::AlreadyCopying(shard));
        }
        if self.copies.iter().filter(|c| c.is_some()).count() >= MAX_COPIES {
            return Err(CopyError::TooManyCopies { reactor });
        }
        let target_blocks = self
            .geometry(spec.target)
            .ok_or(CopyError::TargetUnopened(spec.target))?
            .1;
        if spec.target_offset_blocks + shard_blocks > target_blocks {
            return Err(CopyError::TargetTooSmall);
        }
        self.mark_channel(route.member);
        let settling = self.marked_pending(route.member) > 0;
        let chunk_bytes = spec.chunk_blocks as usize * block_size as usize;
        let pool = DmaPool::new(chunk_bytes, spec.max_inflight)
            .map_err(|e| CopyError::NoMemory(e.to_string()))?;
        let status = Arc::new(Mutex::new(CopyStatus {
            state: CopyState::Copying,
            copied_blocks: 0,
            total_blocks: shard_blocks,
            restarts: 0,
            last_error: None,
            target_stalled: false,
        }));
        let copy = ShardCopy {
            spec,
            status: Arc::clone(&status),
            source: route.member,
            source_offset: route.offset_blocks,
            total: shard_blocks,
            block_size: block_size as usize,
            cursor: 0,
            generation: 0,
            copied: 0,
            restarts: 0,
            now_hint: self.now,
            active: true,
            frozen: false,
            undecided: false,
            settling,
            generation_start: self.now,
            issued: 0,
            chunks: Vec::new(),
            mirrors: Vec::new(),
            deferred: VecDeque::new(),
            pool,
            mirror_pool: mirror::mirror_pool(),
        };
        let ci = free_slot(&mut self.copies, MAX_COPIES);
        self.copies[ci] = Some(copy);
        Ok(status)
    }

    /// Stops mirroring and copying shard `shard` of `volume` (after its route flipped, or to
    /// cancel); I/O in flight finishes. Returns whether a copy was there.
    pub fn stop_copy(&mut self, volume: BdevId, shard: u32) -> bool {
        let Some(ci) = self.copy_of(volume, shard as u64) else {
            return false;
        };
        let c = self.copies[ci].as_mut().expect("found above");
        c.active = false;
        // The target's copy is discarded (or, after a flip, no mirror is out): clients
        // whose write still waits for its target half get their answer from the source.
        self.answer_held_mirrors(ci);
        self.release_deferred(ci);
        self.retire_copy(ci);
        true
    }

    /// The new placement of a copied shard may or may not have landed (its write timed out):
    /// every write must reach both members until the pool is imported again, so the copy is
    /// not abandoned when its target is slow to answer (its clients wait for the target, up
    /// to [`TARGET_ANSWER_NS`], then fail: see the module docs).
    pub fn keep_copy_undecided(&mut self, volume: BdevId, shard: u32) -> bool {
        let Some(ci) = self.copy_of(volume, shard as u64) else {
            return false;
        };
        self.copies[ci].as_mut().expect("found above").undecided = true;
        true
    }

    /// Whether a copy of this shard on this reactor, stopped or not, still has a write out to
    /// its target (a chunk's or a mirrored one): until it is back, it may land on the target
    /// extent.
    pub fn copy_target_busy(&self, volume: BdevId, shard: u32) -> bool {
        self.copies
            .iter()
            .flatten()
            .filter(|c| c.spec.volume == volume && c.spec.shard == shard)
            .any(|c| c.target_writes_since().next().is_some())
    }

    /// The active copy of a shard on this reactor.
    pub(super) fn copy_of(&self, volume: BdevId, shard: u64) -> Option<usize> {
        self.copies.iter().position(|c| {
            c.as_ref().is_some_and(|c| {
                c.active && c.spec.volume == volume && c.spec.shard as u64 == shard
            })
        })
    }

    /// One of a copy's own I/Os is back; returns a client piece's completion when that
    /// finished it.
    pub(super) fn copy_complete(&mut self, c: Completion) -> Option<Completion> {
        let RouterTag::Copy { copy: ci, io, slot } = RouterTag::decode(c.io.origin.tag) else {
            unreachable!("copy_complete takes a copy's I/O only");
        };
        let done = if let CopyIo::Mirror { target } = io {
            let done = self.mirror_complete(ci, slot, target, c);
            let freed = self.copies[ci]
                .as_ref()
                .is_some_and(|c| c.mirrors[slot].is_none());
            if freed {
                // Pieces held behind this mirror may go.
                self.release_deferred(ci);
            }
            done
        } else {
            self.chunk_complete(ci, slot, c);
            None
        };
        self.retire_copy(ci);
        done
    }

    fn chunk_complete(&mut self, ci: usize, slot: usize, c: Completion) {
        let Completion { mut io, status } = c;
        let copy = self.copies[ci].as_mut().expect("a copy with I/O in flight");
        let chunk = copy.chunks[slot].as_ref().expect("a live chunk");
        let current = chunk.generation == copy.generation && copy.active;
        let writing = io.io_type == IoType::Write;
        if !writing && current && status.is_success() {
            let now = self.now;
            let chunk = copy.chunks[slot].as_mut().expect("a live chunk");
            chunk.target_since = Some(now);
            io.io_type = IoType::Write;
            io.offset_blocks = copy.spec.target_offset_blocks + chunk.start;
            let target = copy.spec.target;
            self.submit(target, io);
            return;
        }
        let chunk = copy.chunks[slot].take().expect("a live chunk");
        if writing && !status.is_success() {
            // Every failed target write restarts the copy, one left over from an earlier
            // generation too: restarts count the target's failures.
            copy.restart(CopyFailure::TargetWrite { status });
        } else if current && !status.is_success() {
            copy.active = false;
            let why = CopyFailure::SourceRead { status };
            copy.publish(Some(CopyState::Abandoned(why.clone())), Some(why));
        } else if current && writing {
            copy.copied += chunk.blocks as u64;
            copy.publish(None, None);
        }
        self.release_deferred(ci);
    }

    /// Pieces that waited go on, in order; those still in the way of a chunk (or held by a
    /// freeze) wait again. (Writes in flight together have no order a client may rely on.)
    fn release_deferred(&mut self, ci: usize) {
        let Some(c) = self.copies[ci].as_mut() else {
            return;
        };
        let vol = c.spec.volume;
        let waiting: Vec<IoRequest> = c.deferred.drain(..).collect();
        for p in waiting {
            self.route_piece(vol, p);
        }
    }

    /// Starts up to [`CHUNKS_PER_POLL`] chunks while there is room and nothing in the way.
    fn pump_copy(&mut self, ci: usize) {
        if let Some(source) = self.copies[ci]
            .as_ref()
            .and_then(|c| c.settling.then_some(c.source))
        {
            if self.marked_pending(source) > 0 {
                return;
            }
            if let Some(c) = self.copies[ci].as_mut() {
                c.settling = false;
            }
        }
        for _ in 0..CHUNKS_PER_POLL {
            let Some(copy) = self.copies[ci].as_mut() else {
                return;
            };
            if !copy.active {
                return;
            }
            if copy.cursor >= copy.total {
                let idle = copy.chunks.iter().all(Option::is_none);
                if idle && copy.copied >= copy.total {
                    copy.publish(Some(CopyState::Copied), None);
                }
                return;
            }
            if copy.chunks.iter().flatten().count() >= copy.spec.max_inflight {
                return;
            }
            copy.now_hint = self.now;
            if copy.spec.max_blocks_per_s > 0 {
                let elapsed = self.now.saturating_sub(copy.generation_start);
                let allowed = (copy.spec.max_blocks_per_s as u128 * elapsed as u128 / 1_000_000_000)
                    as u64
                    + copy.spec.chunk_blocks as u64;
                if copy.issued >= allowed {
                    return; // `pump_copies` tries again next poll
                }
            }
            let n = (copy.spec.chunk_blocks as u64).min(copy.total - copy.cursor);
            let range = (copy.cursor, copy.cursor + n);
            if copy.mirror_overlaps(range) || copy.chunk_overlaps(range) {
                return;
            }
            let Some(mut buf) = copy.pool.take() else {
                return;
            };
            buf.set_len(n as usize * copy.block_size);
            let slot = free_slot(&mut copy.chunks, MAX_COPY_SLOTS);
            copy.chunks[slot] = Some(Chunk {
                start: copy.cursor,
                blocks: n as u32,
                generation: copy.generation,
                target_since: None,
            });
            let origin = IoOrigin {
                reactor: self.id,
                task: ROUTER_TASK,
                tag: tag(ci, CopyIo::Chunk, slot),
            };
            let at = copy.source_offset + copy.cursor;
            let io = IoRequest::new(IoType::Read, at, n as u32, Some(buf), origin);
            copy.cursor += n;
            copy.issued += n;
            let source = copy.source;
            self.submit(source, io);
        }
    }

    /// Gives every copy a chance to start chunks (the rate cap lets them out over time).
    /// Returns how many copies are active.
    pub(super) fn pump_copies(&mut self) -> usize {
        let n = self.copies.len();
        for ci in 0..n {
            self.abandon_if_target_stalled(ci);
            self.pump_copy(ci);
        }
        self.copies.iter().flatten().filter(|c| c.active).count()
    }

    /// Abandons copy `ci` if a write to its target has gone unanswered for
    /// [`TARGET_ANSWER_NS`], and lets the client writes held behind its chunks go on.
    /// A copy that already gave up (abandoned, or stopped) is checked too while it has
    /// target writes out: its extent must stay reserved if one of them never answers. An
    /// active undecided copy is never abandoned: its late target halves fail their clients
    /// (`fail_stalled_mirrors`).
    fn abandon_if_target_stalled(&mut self, ci: usize) {
        let now = self.now;
        let Some(c) = self.copies[ci].as_mut() else {
            return;
        };
        if c.active && c.undecided {
            // Never abandoned: its late writes fail their clients instead (see `mirror`).
            self.fail_stalled_mirrors(ci);
            return;
        }
        let oldest = c.target_writes_since().min();
        if oldest.is_none_or(|t| now.saturating_sub(t) <= TARGET_ANSWER_NS) {
            return;
        }
        c.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .target_stalled = true;
        if !c.active {
            // Already given up, with its own reason: only answer what it could not before.
            self.answer_held_mirrors(ci);
            return;
        }
        c.active = false;
        let why = CopyFailure::TargetSilent {
            ms: TARGET_ANSWER_NS / 1_000_000,
        };
        c.publish(Some(CopyState::Abandoned(why.clone())), Some(why));
        self.answer_held_mirrors(ci);
        self.release_deferred(ci);
    }

    /// Holds new write-like pieces of a shard being copied (`freeze`), or lets them go.
    /// Returns the mirrored writes still in flight and whether the copy is still whole
    /// (`Copied`); the control plane commits once that is (0, true).
    pub fn freeze_copy(
        &mut self,
        volume: BdevId,
        shard: u32,
        freeze: bool,
    ) -> Option<(usize, bool)> {
        let ci = self.copy_of(volume, shard as u64)?;
        let c = self.copies[ci].as_mut().expect("found above");
        c.frozen = freeze;
        let inflight = c.mirrors.iter().flatten().count();
        let whole = c.status.lock().unwrap_or_else(|p| p.into_inner()).state == CopyState::Copied;
        if !freeze {
            self.release_deferred(ci);
        }
        Some((inflight, whole))
    }

    /// Answers what a stopped copy still holds, and drops it once nothing of it is in
    /// flight. Every I/O completion of a copy ends here, so a copy that gave up there (a
    /// target failure past `max_restarts`, a source read failure) is seen at once.
    fn retire_copy(&mut self, ci: usize) {
        if self.copies[ci].as_ref().is_some_and(|c| !c.active) {
            // A copy that gave up mirrors nothing more and its target's copy is discarded:
            // clients whose write waits only for its target half are answered from the
            // source (nothing else would: `stop_copy` finds active copies only), and the
            // writes it held (during a commit's freeze, say) go on to the source.
            self.answer_held_mirrors(ci);
            if self.copies[ci]
                .as_ref()
                .is_some_and(|c| !c.deferred.is_empty())
            {
                self.release_deferred(ci);
            }
        }
        if let Some(c) = self.copies[ci].as_ref() {
            let idle =
                c.chunks.iter().all(Option::is_none) && c.mirrors.iter().all(Option::is_none);
            if !c.active && idle {
                self.copies[ci] = None;
            }
        }
        // An empty list keeps the I/O path's check to one length test.
        while matches!(self.copies.last(), Some(None)) {
            self.copies.pop();
        }
    }
}
