//! Volume I/O on the reactors: split at shard boundaries, route each piece to its shard's
//! owner, forward pieces that reach a reactor that no longer owns their shard, and put the
//! pieces' completions back together on the reactor that took the request.
//!
//! A request to a volume (submitted by a task, or arriving from another reactor) becomes a
//! *parent* on the reactor that took it, and one or more *pieces*: plain [`IoRequest`]s whose
//! origin is this reactor's router ([`ROUTER_TASK`]) and whose tag names the parent (low 32
//! bits) and the piece's distance from the parent's start in blocks (high 32 bits).
//!
//! - A piece is sent to the volume on its owner reactor (`Ctx::send_io` with the volume's
//!   id, or `Ctx::send_single` for a one-shard request; a piece on its way is marked as one,
//!   see `remote`). The owner looks the shard up again in its own view of the table: if it
//!   still owns it, it translates the offset onto the member and submits on its own channel
//!   of that member; if not, it forwards the piece to the owner it sees. Forwarding converges
//!   because every reactor picks up the newest table as soon as it sees the epoch move.
//! - Completions follow the piece's origin back to the parent's reactor (the reactor's normal
//!   completion path; a forwarded piece's comes back through each reactor that passed it on,
//!   see `remote`) and are merged there: the first failure wins.
//! - A request inside one shard (the common case) is its own piece: the router keeps only
//!   the fields it overwrites (origin, offset, submit time) in a small slot, sends the request
//!   on with the caller's buffer (no copy), and restores them when the piece comes back. Its
//!   tag is a `RouterTag::Single` naming the slot (see `tag`). Sent to another reactor, it takes no
//!   remote slot: the lane message names this slot, which also keeps its type and length.
//! - A read or write that crosses shards is cut into pieces of at most
//!   [`BOUNCE_CHUNK_BYTES`] with buffers from this reactor's bounce pool, copied in (writes)
//!   or out (reads); when the pool is empty the parent waits, in order, for buffers to come
//!   back. Unmap and write-zeroes pieces carry no data and go out at once.
//! - FLUSH goes to every member holding a shard of the volume, on this reactor's channels:
//!   a flush covers every write completed before it, whichever queue pair carried it. That
//!   includes the target of a copy whose commit is undecided (`RouteTable::undecided_targets`):
//!   a restart may read the shard from there.
//! - A shard whose member is missing (degraded pool) fails its pieces with ENODEV.

use super::tag::{RouterTag, MAX_PARENTS, MAX_SINGLES};
use super::{Ctx, Endpoint, Geometry, TaskId};
use crate::bdev::iostat::IoStat;
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::load::Window;
use crate::volume::{RouteTable, ShardState, Volume};
use std::collections::VecDeque;
use std::sync::Arc;
use tidepool_bindings::dma::{DmaBuf, DmaPool};

/// The task id pieces carry as their origin: their completions go to the router.
pub(super) const ROUTER_TASK: TaskId = TaskId::MAX;
/// Size of a bounce buffer, the largest piece of a request that crosses shards.
pub const BOUNCE_CHUNK_BYTES: usize = 128 << 10;
/// Bounce buffers per reactor (8 MiB; mapped on first use, touched as used).
const BOUNCE_CHUNKS: usize = 64;

/// One reactor's view of one volume.
pub(super) struct VolumeSlot {
    volume: Arc<Volume>,
    /// This reactor's copy of the table; replaced when the volume's epoch moves.
    table: Arc<RouteTable>,
    /// Distinct online members of `table`, the targets of a flush.
    members: Vec<BdevId>,
    pub(super) geometry: Geometry,
    /// Requests this reactor took on the volume, by completion.
    pub(super) stats: IoStat,
    pub(super) closing: bool,
    /// Parents of this volume on this reactor.
    pub(super) inflight: usize,
    /// `log2(shard_blocks)` when that is a power of two (the usual case): shifts instead of
    /// divisions on every request.
    shard_shift: Option<u32>,
    shard_blocks: u64,
    /// The load monitor's window on each shard, for the requests this reactor took.
    shard_windows: Vec<Window>,
}

impl VolumeSlot {
    pub(super) fn new(volume: Arc<Volume>) -> VolumeSlot {
        let info = volume.info();
        let geometry = Geometry {
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            supported: info.supported,
        };
        let table = volume.table();
        let members = online_members(&table);
        let shard_blocks = volume.shard_blocks();
        VolumeSlot {
            shard_windows: vec![Window::default(); table.shards.len()],
            shard_shift: shard_blocks
                .is_power_of_two()
                .then(|| shard_blocks.trailing_zeros()),
            shard_blocks,
            volume,
            table,
            members,
            geometry,
            stats: IoStat::default(),
            closing: false,
            inflight: 0,
        }
    }

    /// The shard holding volume block `offset_blocks`, and the offset inside it.
    #[inline]
    fn locate(&self, offset_blocks: u64) -> (u64, u64) {
        match self.shard_shift {
            Some(shift) => (
                offset_blocks >> shift,
                offset_blocks & (self.shard_blocks - 1),
            ),
            None => (
                offset_blocks / self.shard_blocks,
                offset_blocks % self.shard_blocks,
            ),
        }
    }

    /// Shard `shard`'s route in the newest table.
    pub(super) fn route_of(&mut self, shard: u64) -> Option<crate::volume::ShardRoute> {
        self.refresh();
        self.table.shards.get(shard as usize).cloned()
    }

    pub(super) fn shard_blocks_of(&self) -> u64 {
        self.shard_blocks
    }

    pub(super) fn block_size(&self) -> u32 {
        self.geometry.block_size
    }

    /// Hands back the windows of the shards that saw I/O and starts new ones.
    pub(super) fn take_shard_windows(&mut self) -> Vec<(u32, Window)> {
        self.shard_windows
            .iter_mut()
            .enumerate()
            .filter(|(_, w)| w.is_active())
            .map(|(i, w)| (i as u32, w.take()))
            .collect()
    }

    /// Counts a request (or piece) this reactor took that starts on shard `shard`.
    #[inline]
    fn shard_started(&mut self, shard: u64, io_type: IoType, offset_blocks: u64, num_blocks: u32) {
        let bytes = num_blocks as u64 * self.geometry.block_size as u64;
        if let Some(w) = self.shard_windows.get_mut(shard as usize) {
            w.start(io_type, offset_blocks, num_blocks, bytes);
        }
    }

    #[inline]
    fn shard_ended(&mut self, shard: u64, latency_ns: u64) {
        if let Some(w) = self.shard_windows.get_mut(shard as usize) {
            w.end(latency_ns);
        }
    }

    /// The route of shard `shard`, for a piece `within` blocks into it.
    #[inline]
    fn hop_at(&self, shard: u64, within: u64) -> Hop {
        let r = &self.table.shards[shard as usize];
        Hop {
            shard,
            within,
            owner: r.owner,
            member: r.member,
            member_offset_blocks: r.offset_blocks + within,
            state: r.state,
        }
    }

    /// Picks up a newer table if the epoch moved (one atomic load when it did not).
    #[inline]
    fn refresh(&mut self) {
        if self.volume.epoch() != self.table.epoch {
            self.table = self.volume.table();
            self.members = online_members(&self.table);
        }
    }
}

/// The members a flush of the volume goes to: those of its online shards, and those a shard
/// may have moved to without the table saying so (an undecided copy's target, which holds
/// acknowledged writes a restart may read the shard from).
fn online_members(table: &RouteTable) -> Vec<BdevId> {
    let mut members: Vec<BdevId> = table
        .shards
        .iter()
        .filter(|r| r.state == ShardState::Online)
        .map(|r| r.member)
        .chain(table.undecided_targets.iter().copied())
        .collect();
    members.sort_unstable();
    members.dedup();
    members
}

/// Where a piece goes, read from a reactor's view of the table.
#[derive(Clone, Copy)]
pub(super) struct Hop {
    pub(super) shard: u64,
    /// The piece's offset inside its shard.
    pub(super) within: u64,
    owner: u16,
    pub(super) member: BdevId,
    /// The piece's offset on the member.
    pub(super) member_offset_blocks: u64,
    state: ShardState,
}

/// A one-shard request taken on this reactor and sent on whole: what the router changed in
/// it, to put back when it returns.
struct Single {
    origin: IoOrigin,
    offset_blocks: u64,
    submit_time_ns: u64,
    volume: BdevId,
    shard: u32,
    /// What a completion that comes back over a lane no longer carries (see
    /// [`Ctx::single_returned`]).
    num_blocks: u32,
    io_type: IoType,
}

/// A request taken on this reactor that was cut into pieces (or a flush), waiting for them.
struct Parent {
    io: IoRequest,
    volume: BdevId,
    pending: u32,
    status: IoStatus,
    /// For a read or write that crosses shards: the next volume block to cut a piece from.
    split_next: Option<u64>,
}

impl Parent {
    fn end_blocks(&self) -> u64 {
        self.io.offset_blocks + self.io.num_blocks as u64
    }
}

/// Per-reactor router state. Parents are bounded by what the reactor's tasks and peers
/// have in flight; pieces per parent by the shards it crosses or the bounce pool.
#[derive(Default)]
pub(super) struct Router {
    singles: Vec<Option<Single>>,
    singles_free: Vec<u32>,
    parents: Vec<Option<Parent>>,
    free: Vec<u32>,
    /// Split parents with nothing in flight, waiting for bounce buffers, oldest first.
    waiting: VecDeque<u32>,
    bounce: Option<DmaPool>,
    pub(super) inflight: usize,
}

/// Pieces routed, as each reactor counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Pieces this reactor took whose shard it owns.
    pub local: u64,
    /// Pieces this reactor took and sent to the owner.
    pub remote: u64,
    /// Pieces that reached this reactor after their shard moved away, passed on.
    pub forwarded: u64,
}

fn piece_tag(parent: u32, delta_blocks: u64) -> u64 {
    RouterTag::Piece {
        parent,
        delta_blocks,
    }
    .encode()
}

impl Ctx {
    /// A valid request on volume `vol` (checked by `submit`): a piece from another reactor,
    /// or a new request from a task or a peer.
    pub(super) fn volume_submit(&mut self, vol: BdevId, mut io: IoRequest) {
        if io.origin.task == ROUTER_TASK {
            return self.route_piece(vol, io);
        }
        let one_shard = match self.volume_slot(vol) {
            Some(slot) => {
                slot.inflight += 1;
                slot.refresh();
                // `submit` checked that a non-flush request has at least one block (a
                // flush has none, and is never a one-shard request).
                let (first, within) = slot.locate(io.offset_blocks);
                let end = io.offset_blocks + io.num_blocks as u64;
                let one = io.io_type != IoType::Flush && slot.locate(end - 1).0 == first;
                if one {
                    slot.shard_started(first, io.io_type, io.offset_blocks, io.num_blocks);
                }
                one.then(|| (first, slot.hop_at(first, within)))
            }
            None => unreachable!("submit resolved the volume"),
        };
        self.router.inflight += 1;
        if let Some((shard, hop)) = one_shard {
            let single = Single {
                origin: io.origin,
                offset_blocks: io.offset_blocks,
                submit_time_ns: io.submit_time_ns,
                volume: vol,
                shard: shard as u32,
                num_blocks: io.num_blocks,
                io_type: io.io_type,
            };
            let idx = match self.router.singles_free.pop() {
                Some(i) => {
                    self.router.singles[i as usize] = Some(single);
                    i
                }
                None => {
                    // Bounded by the requests in flight, far below the tag's flag bits.
                    assert!(
                        self.router.singles.len() < MAX_SINGLES,
                        "one-shard slots exhausted"
                    );
                    self.router.singles.push(Some(single));
                    (self.router.singles.len() - 1) as u32
                }
            };
            io.origin = IoOrigin {
                reactor: self.id,
                task: ROUTER_TASK,
                tag: RouterTag::Single { slot: idx }.encode(),
            };
            return self.route_via(vol, hop, io);
        }
        let parent = Parent {
            io,
            volume: vol,
            pending: 0,
            status: IoStatus::Success,
            split_next: None,
        };
        let idx = match self.router.free.pop() {
            Some(i) => {
                self.router.parents[i as usize] = Some(parent);
                i
            }
            None => {
                // Bounded by the requests in flight, far below the tag's field.
                assert!(
                    self.router.parents.len() < MAX_PARENTS,
                    "parent slots exhausted"
                );
                self.router.parents.push(Some(parent));
                (self.router.parents.len() - 1) as u32
            }
        };
        let (io_type, offset, end) = {
            let p = self.parent(idx);
            (p.io.io_type, p.io.offset_blocks, p.end_blocks())
        };
        let (shard_blocks, first, last, members) = match self.volume_slot(vol) {
            Some(slot) => {
                let members = if io_type == IoType::Flush {
                    slot.members.clone()
                } else {
                    Vec::new()
                };
                let first = slot.locate(offset).0;
                let last = slot.locate(end.max(1) - 1).0;
                (slot.shard_blocks, first, last, members)
            }
            None => unreachable!("submit resolved the volume"),
        };
        if io_type == IoType::Flush {
            self.parent_mut(idx).pending = members.len() as u32;
            for member in &members {
                let piece = self.piece(idx, io_type, 0, 0, None);
                self.submit(*member, piece);
            }
            if members.is_empty() {
                let c = self.finish_parent(idx);
                self.ready.push(c);
            }
            return;
        }
        if !io_type.has_data() {
            self.parent_mut(idx).pending = (last - first + 1) as u32;
            for shard in first..=last {
                let start = offset.max(shard * shard_blocks);
                let stop = end.min((shard + 1) * shard_blocks);
                let piece = self.piece(idx, io_type, start, (stop - start) as u32, None);
                self.count_piece(vol, shard, &piece);
                self.route_piece(vol, piece);
            }
        } else {
            self.parent_mut(idx).split_next = Some(offset);
            self.pump(idx);
        }
    }

    fn parent(&self, idx: u32) -> &Parent {
        self.router.parents[idx as usize]
            .as_ref()
            .expect("a live parent")
    }

    fn parent_mut(&mut self, idx: u32) -> &mut Parent {
        self.router.parents[idx as usize]
            .as_mut()
            .expect("a live parent")
    }

    pub(super) fn volume_slot(&mut self, vol: BdevId) -> Option<&mut VolumeSlot> {
        match self.channels.get_mut(vol as usize) {
            Some(Some(Endpoint::Volume(slot))) => Some(slot),
            _ => None,
        }
    }

    /// A piece of parent `idx` covering `[offset, offset + n)` of the volume.
    fn piece(
        &self,
        idx: u32,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u32,
        buf: Option<DmaBuf>,
    ) -> IoRequest {
        let delta = offset_blocks.saturating_sub(self.parent(idx).io.offset_blocks);
        let origin = IoOrigin {
            reactor: self.id,
            task: ROUTER_TASK,
            tag: piece_tag(idx, delta),
        };
        IoRequest::new(io_type, offset_blocks, num_blocks, buf, origin)
    }

    /// Cuts and sends bounce-buffered pieces of a crossing read or write while buffers last.
    fn pump(&mut self, idx: u32) {
        loop {
            let (vol, io_type, next, end, bs) = {
                let p = self.parent(idx);
                let Some(next) = p.split_next else { return };
                let bs = match self.channels.get(p.volume as usize) {
                    Some(Some(Endpoint::Volume(s))) => s.geometry.block_size,
                    _ => unreachable!("a parent's volume stays open while it waits"),
                };
                (p.volume, p.io.io_type, next, p.end_blocks(), bs as u64)
            };
            if next >= end {
                return;
            }
            if self.router.bounce.is_none() {
                match DmaPool::new(BOUNCE_CHUNK_BYTES, BOUNCE_CHUNKS) {
                    Ok(pool) => self.router.bounce = Some(pool),
                    Err(e) => {
                        let p = self.parent_mut(idx);
                        p.status = IoStatus::Failed {
                            errno: e.raw_os_error().unwrap_or(libc::ENOMEM),
                        };
                        p.split_next = Some(end);
                        if p.pending == 0 {
                            let c = self.finish_parent(idx);
                            self.ready.push(c);
                        }
                        return;
                    }
                }
            }
            let Some(mut buf) = self.router.bounce.as_ref().and_then(|b| b.take()) else {
                if self.parent(idx).pending == 0 && !self.router.waiting.contains(&idx) {
                    self.router.waiting.push_back(idx);
                }
                return;
            };
            let shard_blocks = match self.volume_slot(vol) {
                Some(slot) => slot.volume.shard_blocks(),
                None => unreachable!("a parent's volume stays open while it waits"),
            };
            let shard_end = (next / shard_blocks + 1) * shard_blocks;
            let stop = end
                .min(shard_end)
                .min(next + BOUNCE_CHUNK_BYTES as u64 / bs);
            let n = stop - next;
            buf.set_len((n * bs) as usize);
            let p = self.parent_mut(idx);
            if io_type == IoType::Write {
                let from = ((next - p.io.offset_blocks) * bs) as usize;
                let src = p.io.buf.as_ref().expect("a write carries data");
                buf.as_mut_slice()
                    .copy_from_slice(&src.as_slice()[from..from + (n * bs) as usize]);
            }
            p.split_next = Some(stop);
            p.pending += 1;
            let piece = self.piece(idx, io_type, next, n as u32, Some(buf));
            self.count_piece(vol, next / shard_blocks, &piece);
            self.route_piece(vol, piece);
        }
    }

    /// Reads the route of the shard holding `offset_blocks` from this reactor's view.
    fn hop(&mut self, vol: BdevId, offset_blocks: u64) -> Option<Hop> {
        let slot = self.volume_slot(vol)?;
        slot.refresh();
        let (shard, within) = slot.locate(offset_blocks);
        Some(slot.hop_at(shard, within))
    }

    /// Sends a piece to its shard's owner, or executes it here if this reactor owns it.
    /// (Also how a piece that waited for a copy's chunk goes on.)
    pub(super) fn route_piece(&mut self, vol: BdevId, piece: IoRequest) {
        match self.hop(vol, piece.offset_blocks) {
            Some(hop) => self.route_via(vol, hop, piece),
            None => self.ready.push(Completion::new(piece, IoStatus::Aborted)),
        }
    }

    /// A piece of a parent taken here starts on `shard`: the shard's load counts it (once,
    /// where it is cut, however often it is forwarded or held).
    fn count_piece(&mut self, vol: BdevId, shard: u64, piece: &IoRequest) {
        if let Some(slot) = self.volume_slot(vol) {
            let (t, off, n) = (piece.io_type, piece.offset_blocks, piece.num_blocks);
            slot.shard_started(shard, t, off, n);
        }
    }

    /// `route_piece` with the route already read.
    #[inline]
    fn route_via(&mut self, vol: BdevId, hop: Hop, mut piece: IoRequest) {
        let here = piece.origin.reactor == self.id;
        if hop.owner != self.id && (hop.owner as usize) < self.peers.len() {
            if !here {
                self.route_counters.forwarded += 1;
                return self.send_io(hop.owner, vol, piece);
            }
            self.route_counters.remote += 1;
            if RouterTag::is_single(piece.origin.tag) {
                // Its one-shard slot already keeps what the completion needs.
                return self.send_single(hop.owner, vol, piece);
            }
            return self.send_io(hop.owner, vol, piece);
        }
        if here {
            self.route_counters.local += 1;
        }
        if hop.state != ShardState::Online {
            self.ready.push(Completion::new(
                piece,
                IoStatus::Failed {
                    errno: libc::ENODEV,
                },
            ));
            return;
        }
        if !self.copies.is_empty() {
            // A shard being copied to another member: writes go to both (see `copy`).
            match self.mirror_piece(vol, &hop, piece) {
                Some(p) => piece = p,
                None => return,
            }
        }
        piece.offset_blocks = hop.member_offset_blocks;
        self.submit(hop.member, piece);
    }

    /// A piece of a request taken on this reactor has finished (here or elsewhere); returns
    /// the request's completion if that was its last piece. (One-shard requests sent on
    /// whole come back through [`Ctx::single_complete`] first.)
    pub(super) fn piece_complete(&mut self, c: Completion) -> Option<Completion> {
        let (idx, delta) = match RouterTag::decode(c.io.origin.tag) {
            RouterTag::Copy { .. } => return self.copy_complete(c),
            RouterTag::Piece {
                parent,
                delta_blocks,
            } => (parent, delta_blocks),
            RouterTag::Single { .. } => unreachable!("single_complete takes one-shard requests"),
        };
        let Completion { io: piece, status } = c;
        let (vol, io_type, at, taken_at) = {
            let p = self.parent(idx);
            (
                p.volume,
                p.io.io_type,
                p.io.offset_blocks + delta,
                p.io.submit_time_ns,
            )
        };
        let now = self.now;
        let bs = match self.volume_slot(vol) {
            Some(slot) => {
                if io_type != IoType::Flush {
                    let shard = slot.locate(at).0;
                    slot.shard_ended(shard, now.saturating_sub(taken_at));
                }
                slot.geometry.block_size as usize
            }
            None => unreachable!("a parent's volume stays open while it waits"),
        };
        let p = self.parent_mut(idx);
        p.pending -= 1;
        if !status.is_success() && p.status.is_success() {
            p.status = status;
        }
        let split = p.split_next.is_some();
        if split {
            if !status.is_success() {
                // Stop cutting pieces; finish once those in flight are back.
                p.split_next = Some(p.end_blocks());
            }
            if let Some(bounce) = piece.buf {
                if p.io.io_type == IoType::Read && status.is_success() {
                    let from = delta as usize * bs;
                    let dst = p.io.buf.as_mut().expect("a read carries a buffer");
                    dst.as_mut_slice()[from..from + bounce.len()]
                        .copy_from_slice(bounce.as_slice());
                }
                drop(bounce);
            }
            self.pump(idx);
        } else if piece.buf.is_some() {
            p.io.buf = piece.buf;
        }
        let p = self.parent(idx);
        let last = p.pending == 0 && p.split_next.is_none_or(|next| next >= p.end_blocks());
        let done = last.then(|| self.finish_parent(idx));
        if split {
            self.pump_waiting();
        }
        done
    }

    /// If `c` is a one-shard request sent on whole, puts back what the router changed (it is
    /// then the request's own completion, ready for its origin) and returns true; false for
    /// any other piece. Works in place: the completion is not moved.
    #[inline]
    pub(super) fn single_complete(&mut self, c: &mut Completion) -> bool {
        if !RouterTag::is_single(c.io.origin.tag) {
            return false;
        }
        let s = self.take_single(c.io.origin.tag);
        c.io.origin = s.origin;
        c.io.offset_blocks = s.offset_blocks;
        c.io.submit_time_ns = s.submit_time_ns;
        self.single_ended(&s, c);
        true
    }

    /// The completion of one-shard request `slot` (a [`RouterTag::Single`]) that came
    /// back from the reactor that executed it, ready for the task that gave the request: the
    /// lane brought only the status and the buffer, the slot has the rest.
    pub(super) fn single_returned(
        &mut self,
        slot: u32,
        buf: Option<DmaBuf>,
        status: IoStatus,
    ) -> Completion {
        let s = self.take_single(u64::from(slot));
        let io = IoRequest {
            io_type: s.io_type,
            offset_blocks: s.offset_blocks,
            num_blocks: s.num_blocks,
            buf,
            origin: s.origin,
            submit_time_ns: s.submit_time_ns,
        };
        let c = Completion::new(io, status);
        self.single_ended(&s, &c);
        c
    }

    /// Frees the one-shard slot that piece tag `tag` names and hands back what it kept.
    fn take_single(&mut self, tag: u64) -> Single {
        let RouterTag::Single { slot: idx } = RouterTag::decode(tag) else {
            unreachable!("a one-shard request's tag");
        };
        let s = self.router.singles[idx as usize]
            .take()
            .expect("a live one-shard request");
        self.router.singles_free.push(idx);
        self.router.inflight -= 1;
        s
    }

    /// Counts one-shard request `s`'s completion `c` (its fields restored) on its volume.
    fn single_ended(&mut self, s: &Single, c: &Completion) {
        let latency = self.now.saturating_sub(s.submit_time_ns);
        if let Some(slot) = self.volume_slot(s.volume) {
            slot.stats.record(c, slot.geometry.block_size, latency);
            slot.shard_ended(s.shard as u64, latency);
            slot.inflight -= 1;
        }
    }

    /// Gives returned bounce buffers to parents that wait for them, oldest first.
    fn pump_waiting(&mut self) {
        while let Some(&idx) = self.router.waiting.front() {
            if self
                .router
                .bounce
                .as_ref()
                .is_none_or(|b| b.available() == 0)
            {
                return;
            }
            self.router.waiting.pop_front();
            self.pump(idx);
        }
    }

    /// Frees parent `idx` and returns its completion.
    fn finish_parent(&mut self, idx: u32) -> Completion {
        let p = self.router.parents[idx as usize]
            .take()
            .expect("a live parent");
        self.router.free.push(idx);
        self.router.inflight -= 1;
        let c = Completion::new(p.io, p.status);
        let latency = self.now.saturating_sub(c.io.submit_time_ns);
        if let Some(slot) = self.volume_slot(p.volume) {
            slot.stats.record(&c, slot.geometry.block_size, latency);
            slot.inflight -= 1;
        }
        c
    }

    /// Pieces this reactor routed so far.
    pub fn route_counters(&self) -> RouteCounters {
        self.route_counters
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
