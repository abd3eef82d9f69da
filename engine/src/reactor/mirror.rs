//! A copy's mirrored writes: every client write, unmap or write-zeroes piece the owner
//! executes on a shard being copied goes to the source and to the target, and its client is
//! answered once both halves are back, with the source's status (the rules that keep the two
//! extents equal, and the exceptions, are in the `copy` module's docs).
//!
//! **Both halves at once** (issue 26). The two halves go out together, so a write during a
//! copy takes the slower of the two devices' latencies, not their sum. A buffer is owned by
//! one request, so the target half of a write carries a copy of the data in a buffer of the
//! copy's *mirror pool*: [`MIRROR_BUFS`] buffers of [`MIRROR_BUF_BYTES`] (the router's
//! bounce size, the largest piece of a request that crosses shards), mapped when the copy
//! starts, so a copy holds at most `MIRROR_BUFS * MIRROR_BUF_BYTES` (2 MiB; 512 KiB under
//! test, where there are fewer so that the simulator runs out) of them
//! whatever its clients do. The source half keeps the client's buffer, which the client
//! gets back. A write larger than a mirror buffer (a one-shard request sent on whole), one
//! that finds the pool empty, or any write of a copy whose pool could not be mapped, is sent
//! as before: to the source, then, once that is back, to the target with the same buffer.
//! Nothing fails for want of a mirror buffer. Unmap and write-zeroes carry no data and
//! always go in parallel.
//!
//! What does not change: a mirror keeps its slot until *both* halves are back, and the slot
//! is what the ordering rules look at (`mirror_overlaps`): a write overlapping it waits, a
//! chunk does not start over it. So two overlapping writes are never in flight together on
//! either extent, and a chunk never reads the source, or writes the target, under a mirror.
//!
//! **Statuses**, decided when the second half is back:
//! - both succeeded: the client is told so;
//! - the target half failed: as before, the copy restarts and the client gets the source's
//!   status; while undecided, the client gets the failure and the copy neither restarts nor
//!   is abandoned (see `copy`; a target half that does not answer at all: *Stalled*, below);
//! - the source half failed and the target half landed (only possible in parallel): the
//!   target now holds data the source may not, so the copy restarts (the target is copied
//!   again from the source), with a reason that says the source write failed; the client
//!   gets the source's failure. While undecided, the copy is not restarted: the client's
//!   failure stands, and either place may hold the block's old or new data, as after any
//!   failed write.
//!
//! **Giving up** (abandoned, stopped): a client whose source half is back and whose target
//! half is still out is answered at once (`answer_held_mirrors`): in parallel with the
//! source's own request and buffer, kept for it; sequentially with a new buffer of its size
//! (its own rides with the target half). A client whose source half is still out is
//! answered when that half is back, never before: the source's status is its answer. The
//! target half, until back, keeps the slot and is watched by the stall rule
//! (`target_since`) like a chunk's write.
//!
//! **Stalled, undecided** (`fail_stalled_mirrors`, from the poll loop). An undecided copy
//! never gives up, so its clients are answered only when both halves are back, but not
//! after [`TARGET_ANSWER_NS`] without an answer from the target: that mirror is marked
//! `stalled` and its client, once its source half is back (with the same request or buffer
//! as on giving up, above), gets [`TARGET_SILENT`], never success: the target lacks the
//! write, and after a restart the shard may be read there. The slot stays until the target
//! half is back (the ordering rules need it), so what overlaps it fails instead of waiting
//! behind it: the pieces in `deferred` when it stalls, and any new one at once
//! (`blocked_by_stalled`), as does every new write of a copy holding
//! [`MAX_STALLED_MIRRORS`]. None of those was sent anywhere. When the late target half
//! lands, the slot goes (its client had its answer) and overlapping writes are mirrored as
//! usual again.

use super::{free_slot, tag, CopyFailure, ShardCopy, TARGET_ANSWER_NS};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::reactor::router::{Hop, BOUNCE_CHUNK_BYTES, ROUTER_TASK};
use crate::reactor::tag::{CopyIo, MAX_COPY_SLOTS};
use crate::reactor::Ctx;
use tidepool_bindings::dma::{DmaBuf, DmaPool};

/// Size of a mirror buffer: the largest piece the router cuts from a request that crosses
/// shards; a larger (one-shard) write is mirrored one half after the other.
pub const MIRROR_BUF_BYTES: usize = BOUNCE_CHUNK_BYTES;
/// Mirror buffers per copy: the most writes with data it mirrors in parallel at once.
#[cfg(not(test))]
pub const MIRROR_BUFS: usize = 16;
/// Fewer under test, so that the simulator's clients run the copy out of mirror buffers
/// and meet both ways of mirroring (with 16 they never did).
#[cfg(test)]
pub const MIRROR_BUFS: usize = 4;

/// A new copy's mirror pool, or none if it cannot be mapped (its mirrors then go one half
/// after the other).
pub(super) fn mirror_pool() -> Option<DmaPool> {
    DmaPool::new(MIRROR_BUF_BYTES, MIRROR_BUFS).ok()
}

/// The answer to a client write of an undecided copy whose target half has had no answer
/// for [`TARGET_ANSWER_NS`], and to a write held behind it: the target did not answer in
/// time (not the source's status: the source may well have it; a failed write may leave
/// either place with the old or the new data).
pub const TARGET_SILENT: IoStatus = IoStatus::Failed {
    errno: libc::ETIMEDOUT,
};

/// Stalled mirrors (target halves past [`TARGET_ANSWER_NS`], their clients answered) an
/// undecided copy keeps before it fails every new write at once: each keeps a slot and a
/// buffer until its target answers, and a target that answers none would otherwise gather
/// one for every write the clients, answered, send again.
#[cfg(not(test))]
pub const MAX_STALLED_MIRRORS: usize = 32;
/// Fewer under test, so that a test reaches the bound with few writes.
#[cfg(test)]
pub const MAX_STALLED_MIRRORS: usize = 8;

/// A client piece being mirrored: what the router changed in it, to put back, and where its
/// two halves are.
pub(super) struct Mirror {
    origin: IoOrigin,
    io_type: IoType,
    offset_blocks: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Both halves went out at once (the target's with a mirror buffer).
    parallel: bool,
    /// The source half's status, once it is back.
    source_status: Option<IoStatus>,
    /// When the target half was sent, while it is out.
    pub(super) target_since: Option<u64>,
    /// The target half's status, once it is back (none while out or if never sent).
    target_status: Option<IoStatus>,
    /// The request holding the client's buffer, back from its device while the other half
    /// is still out.
    held: Option<IoRequest>,
    /// The client has its answer (the copy gave up, or the target half stalled); the rest
    /// is only waited for.
    answered: bool,
    /// Its target half passed [`TARGET_ANSWER_NS`] while the copy was undecided: its client
    /// fails, and so do the writes that overlap it, until its target half is back.
    stalled: bool,
}

impl ShardCopy {
    /// The target half's buffer when `piece` can be mirrored in parallel: a copy of its data
    /// in a mirror buffer (or no buffer, for unmap and write-zeroes); `None` when it must go
    /// one half after the other.
    fn parallel_buffer(&self, piece: &IoRequest) -> Option<Option<DmaBuf>> {
        if !piece.io_type.has_data() {
            return Some(None);
        }
        let bytes = piece.num_blocks as usize * self.block_size;
        let data = piece.buf.as_ref().filter(|b| b.len() >= bytes)?;
        let pool = self
            .mirror_pool
            .as_ref()
            .filter(|p| bytes <= p.buf_size())?;
        let mut buf = pool.take()?;
        buf.set_len(bytes);
        buf.as_mut_slice()
            .copy_from_slice(&data.as_slice()[..bytes]);
        Some(Some(buf))
    }

    /// Whether a write to `range` must fail at once: it overlaps a stalled mirror (it would
    /// wait behind it for as long as the target does), or the copy holds
    /// [`MAX_STALLED_MIRRORS`] of them.
    fn blocked_by_stalled(&self, range: (u64, u64)) -> bool {
        let mut stalled = self.mirrors.iter().flatten().filter(|m| m.stalled);
        let mut n = 0;
        stalled.any(|m| {
            n += 1;
            n >= MAX_STALLED_MIRRORS || super::overlaps(range, (m.start, m.end))
        })
    }
}

impl Ctx {
    /// A write-like piece for a shard being copied, about to run here: mirror it, or hold it
    /// while a chunk covers its range. Returns the piece when it is not for a copy.
    pub(in crate::reactor) fn mirror_piece(
        &mut self,
        vol: BdevId,
        hop: &Hop,
        mut piece: IoRequest,
    ) -> Option<IoRequest> {
        let writes = matches!(
            piece.io_type,
            IoType::Write | IoType::Unmap | IoType::WriteZeroes
        );
        let ci = match (writes, self.copy_of(vol, hop.shard)) {
            (true, Some(ci)) => ci,
            _ => return Some(piece),
        };
        let now = self.now;
        let c = self.copies[ci].as_mut().expect("active copy");
        let range = (hop.within, hop.within + piece.num_blocks as u64);
        if c.blocked_by_stalled(range) {
            // Never sent anywhere: failing it changes no block.
            self.ready.push(Completion::new(piece, TARGET_SILENT));
            return None;
        }
        if c.frozen
            || c.chunk_overlaps(range)
            || c.mirror_overlaps(range)
            || c.deferred_overlaps(range)
        {
            c.deferred.push_back(piece);
            return None;
        }
        let target_buf = c.parallel_buffer(&piece);
        let slot = free_slot(&mut c.mirrors, MAX_COPY_SLOTS);
        c.mirrors[slot] = Some(Mirror {
            origin: piece.origin,
            io_type: piece.io_type,
            offset_blocks: piece.offset_blocks,
            start: range.0,
            end: range.1,
            parallel: target_buf.is_some(),
            source_status: None,
            target_since: target_buf.is_some().then_some(now),
            target_status: None,
            held: None,
            answered: false,
            stalled: false,
        });
        let origin = |target| IoOrigin {
            reactor: self.id,
            task: ROUTER_TASK,
            tag: tag(ci, CopyIo::Mirror { target }, slot),
        };
        let target_half = target_buf.map(|buf| {
            let at = c.spec.target_offset_blocks + range.0;
            let io = IoRequest::new(piece.io_type, at, piece.num_blocks, buf, origin(true));
            (c.spec.target, io)
        });
        piece.origin = origin(false);
        piece.offset_blocks = hop.member_offset_blocks;
        self.submit(hop.member, piece);
        if let Some((target, io)) = target_half {
            self.submit(target, io);
        }
        None
    }

    /// A half of mirror `slot` of copy `ci` is back; returns the client's completion when
    /// that finished it (both halves back, the client not yet answered).
    pub(super) fn mirror_complete(
        &mut self,
        ci: usize,
        slot: usize,
        target_half: bool,
        c: Completion,
    ) -> Option<Completion> {
        let Completion { mut io, status } = c;
        let now = self.now;
        let copy = self.copies[ci].as_mut().expect("a copy with I/O in flight");
        let m = copy.mirrors[slot].as_mut().expect("a live mirror");
        if target_half {
            m.target_since = None;
            m.target_status = Some(status);
            if !m.parallel {
                m.held = Some(io);
            } // else its mirror buffer goes back to the pool here
        } else {
            m.source_status = Some(status);
            if !m.parallel && status.is_success() && copy.active {
                // The source has it; now the target, with the same buffer.
                m.target_since = Some(now);
                io.offset_blocks = copy.spec.target_offset_blocks + m.start;
                io.origin.tag = tag(ci, CopyIo::Mirror { target: true }, slot);
                let target = copy.spec.target;
                self.submit(target, io);
                return None;
            }
            m.held = Some(io);
        }
        if m.source_status.is_none() || m.target_since.is_some() {
            // The other half is still out (a copy that gave up answers its client from
            // `retire_copy` once the source half is back).
            return None;
        }
        let m = copy.mirrors[slot].take().expect("a live mirror");
        let source_status = m.source_status.expect("checked above");
        let mut client_status = source_status;
        match m.target_status {
            Some(status) if !status.is_success() => {
                let why = CopyFailure::MirrorTarget { status };
                if copy.undecided && copy.active {
                    // The target may be the shard's home after a restart, and it lacks this
                    // write: the client must not take it as written (see the module docs).
                    copy.publish(None, Some(why));
                    if client_status.is_success() {
                        client_status = status;
                    }
                } else {
                    copy.restart(why);
                }
            }
            Some(_) if !source_status.is_success() => {
                // The target holds a write the source may lack: copy it again from the source
                // (an undecided copy is not restarted; the client's failure stands).
                copy.restart(CopyFailure::MirrorSource {
                    status: source_status,
                });
            }
            _ => {}
        }
        if m.answered {
            return None;
        }
        let mut io = m.held.expect("the client's request, back");
        io.origin = m.origin;
        io.offset_blocks = m.offset_blocks;
        Some(Completion::new(io, client_status))
    }

    /// Answers the clients of copy `ci`'s mirrored writes whose source half is back and whose
    /// target half is still out, each with its source's status: with the source half's own
    /// request (parallel), or a new buffer of its size (one half after the other: the held
    /// write keeps the client's). Where no buffer can be had, that client waits as before.
    pub(super) fn answer_held_mirrors(&mut self, ci: usize) {
        self.answer_early(ci, false);
    }

    /// Copy `ci` is active and undecided: marks the mirrors whose target half has had no
    /// answer for [`TARGET_ANSWER_NS`] stalled, answers their clients with [`TARGET_SILENT`]
    /// once their source half is back (never before), and fails the writes waiting behind
    /// them (`mirror_piece` fails them). Each keeps its slot until its target half is back.
    pub(super) fn fail_stalled_mirrors(&mut self, ci: usize) {
        let now = self.now;
        let Some(c) = self.copies[ci].as_mut() else {
            return;
        };
        let mut newly = false;
        for m in c.mirrors.iter_mut().flatten() {
            let late = m
                .target_since
                .is_some_and(|t| now.saturating_sub(t) > TARGET_ANSWER_NS);
            if late && !m.stalled {
                m.stalled = true;
                newly = true;
            }
        }
        if !newly && !c.mirrors.iter().flatten().any(|m| m.stalled && !m.answered) {
            return;
        }
        if newly {
            // Neither restarted nor abandoned (see `copy`): the reason is only shown.
            let why = CopyFailure::TargetSilent {
                ms: TARGET_ANSWER_NS / 1_000_000,
            };
            c.publish(None, Some(why));
        }
        self.answer_early(ci, true);
        if newly {
            // Those overlapping a stalled mirror fail now; the rest wait again, in order.
            self.release_deferred(ci);
        }
    }

    /// Answers the clients of copy `ci`'s mirrors (the stalled ones only, if `stalled`)
    /// whose source half is back and whose target half is still out: with the source's
    /// status, or [`TARGET_SILENT`] for a stalled one the source did not fail.
    fn answer_early(&mut self, ci: usize, stalled: bool) {
        let Some(c) = self.copies[ci].as_mut() else {
            return;
        };
        let block_size = c.block_size;
        for m in c.mirrors.iter_mut().flatten() {
            let Some(source_status) = m.source_status else {
                continue;
            };
            if m.answered || m.target_since.is_none() || (stalled && !m.stalled) {
                continue;
            }
            let status = match m.stalled && source_status.is_success() {
                true => TARGET_SILENT,
                false => source_status,
            };
            let blocks = m.end - m.start;
            let mut io = match m.held.take() {
                Some(io) => io,
                None => {
                    let buf = match m.io_type.has_data() {
                        true => match DmaPool::new(blocks as usize * block_size, 1) {
                            Ok(pool) => pool.take().map(|mut b| {
                                b.set_len(blocks as usize * block_size);
                                b
                            }),
                            Err(_) => continue,
                        },
                        false => None,
                    };
                    IoRequest::new(m.io_type, m.offset_blocks, blocks as u32, buf, m.origin)
                }
            };
            io.origin = m.origin;
            io.offset_blocks = m.offset_blocks;
            m.answered = true;
            self.ready.push(Completion::new(io, status));
        }
    }
}
