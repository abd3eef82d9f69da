//! I/O between reactors in the form it takes on the lanes: what the other reactor needs, and
//! no more.
//!
//! A request executed on another reactor travels as a [`LaneMsg::Io`]: the bdev, the type,
//! the range and the buffer, 32 bytes where the whole request is 72. The sender keeps the
//! rest (the request's origin, its range as given, its submit time) in a *remote slot*, and
//! the message carries the slot's index; the lane it arrives on names the sender. The
//! completion comes back as a [`LaneMsg::Done`]: the slot, the status and the buffer. The
//! sender rebuilds the completion from its slot and runs it as it would have run its own.
//! A one-shard volume request (most of a volume's requests) takes no remote slot: its
//! router's one-shard slot keeps the same fields, and the message names that slot, with the
//! top bit of the index set ([`SINGLE_SLOT`]).
//! A request whose offset, length or bdev does not fit the packed form (at or past block
//! 2^48, over 65,535 blocks long, a bdev id over 65,535) goes whole, boxed
//! ([`LaneMsg::IoWhole`]), with the same slot.
//!
//! Why: half of a two-reactor volume's requests cross (BENCHMARKS.md, volume section), and a
//! lane message costs the cache lines it fills on one core and empties on the other. With
//! batches moved in one copy (`ring::Lanes::push_batch`, the change that counted), 40-byte
//! messages cost a few per cent more per round trip than 32-byte ones in `tidepool-perf
//! --bench lanes` (20.0-21.6 against 19.3-19.9 ns close); on the volume and on null
//! `--remote` runs the 32-byte form measured 1.01-1.02x, inside the noise.
//!
//! On the executing reactor the request's origin is the sender, with task [`REMOTE_TASK`]
//! (or the router's task, for a volume's piece: the executing reactor must route it, not
//! take it as a new request) and the slot's index as its tag. So a completion whose origin
//! is another reactor always names a slot there. A reactor that passes a piece on (its shard
//! moved away) sends it from a slot of its own, and its completion comes back the same way.
//!
//! A request pushed into a reactor's inbox from outside that names another reactor as its
//! origin has no slot there: its completion goes back whole, boxed ([`LaneMsg::Complete`]).

use super::router::ROUTER_TASK;
use super::tag::SINGLE_LANE_SLOT;
use super::{Ctx, Reactor, ReactorId, TaskId};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::time::Nanos;
use tidepool_bindings::dma::DmaBuf;

/// The task id of requests another reactor sent here: their completions go back to it.
pub(super) const REMOTE_TASK: TaskId = TaskId::MAX - 1;

/// Set in a lane message's slot when it names the sender router's one-shard slot rather than
/// a remote slot (remote slots are numbered below it): a one-shard tag's own marker bit (see
/// `tag`), so the router's tag goes on the lane as it is.
const SINGLE_SLOT: u32 = SINGLE_LANE_SLOT;

/// What goes over a lane from one reactor to another.
pub enum LaneMsg {
    /// Execute this I/O here (see the module docs).
    Io(WireIo),
    /// The same, for a request the packed form cannot hold: the request as the executing
    /// reactor submits it (its origin names the sender's slot already).
    IoWhole(Box<(BdevId, IoRequest)>),
    /// An I/O this reactor sent has finished on the other.
    Done(WireDone),
    /// A completion for an I/O with no remote slot (see the module docs).
    Complete(Box<Completion>),
    /// A small value for a task (wake-ups, ping-pong).
    Notify { task: TaskId, value: u64 },
    /// Run a closure on the reactor.
    Call(Box<dyn FnOnce(&mut Reactor) + Send>),
}

// The point of the compact forms: at most 32 bytes, two messages to a 64-byte line on average
// (the whole request is 72 bytes). The enum needs no tag of its own: `WireIo`'s `io_type` and
// `routed` bytes have values to spare, and the other variants fit beside them.
const _: () = assert!(std::mem::size_of::<LaneMsg>() <= 32);

/// Bits of [`WireIo::offset_and_bdev`] that hold the offset; the bdev id is above them.
const OFFSET_BITS: u32 = 48;

/// A request on its way to the reactor that executes it.
pub struct WireIo {
    buf: Option<DmaBuf>,
    /// The offset in blocks (the low [`OFFSET_BITS`] bits) and the bdev id (above them).
    offset_and_bdev: u64,
    /// The sender's remote slot, or its router's one-shard slot ([`SINGLE_SLOT`] set).
    slot: u32,
    num_blocks: u16,
    io_type: IoType,
    /// A volume's piece, routed by its sender's router.
    routed: bool,
}

/// A completion on its way back to the reactor that sent the request.
pub struct WireDone {
    buf: Option<DmaBuf>,
    slot: u32,
    status: WireStatus,
}

/// An [`IoStatus`] in four bytes: success 0, a failure's errno as itself when positive (what
/// the OS and the engine give), the other outcomes small negative codes, and a failure with an
/// errno of 0 or less as `WIRE_FAILED_BELOW + errno` (an errno below i32::MIN + 4, which
/// nothing gives, arrives as i32::MIN + 4).
#[derive(Clone, Copy)]
struct WireStatus(i32);

const WIRE_INVALID: i32 = -1;
const WIRE_UNSUPPORTED: i32 = -2;
const WIRE_ABORTED: i32 = -3;
const WIRE_FAILED_BELOW: i32 = -4;
/// NVMe statuses take the bottom 2^11 values: `WIRE_NVME_BASE + (sct << 8 | sc)`. A failed
/// status with an errno so negative it would reach them is clamped above (no OS gives one).
const WIRE_NVME_BASE: i32 = i32::MIN;
const WIRE_NVME_END: i32 = WIRE_NVME_BASE + 0x800;

impl From<IoStatus> for WireStatus {
    #[inline]
    fn from(status: IoStatus) -> WireStatus {
        WireStatus(match status {
            IoStatus::Success => 0,
            IoStatus::Failed { errno } if errno > 0 => errno,
            IoStatus::Failed { errno } => {
                WIRE_FAILED_BELOW.saturating_add(errno).max(WIRE_NVME_END)
            }
            IoStatus::Invalid => WIRE_INVALID,
            IoStatus::Unsupported => WIRE_UNSUPPORTED,
            IoStatus::Aborted => WIRE_ABORTED,
            IoStatus::Nvme { sct, sc } => WIRE_NVME_BASE + (((sct as i32 & 7) << 8) | sc as i32),
        })
    }
}

impl From<WireStatus> for IoStatus {
    #[inline]
    fn from(wire: WireStatus) -> IoStatus {
        match wire.0 {
            0 => IoStatus::Success,
            errno if errno > 0 => IoStatus::Failed { errno },
            WIRE_INVALID => IoStatus::Invalid,
            WIRE_UNSUPPORTED => IoStatus::Unsupported,
            WIRE_ABORTED => IoStatus::Aborted,
            nvme if nvme < WIRE_NVME_END => {
                let code = nvme - WIRE_NVME_BASE;
                IoStatus::Nvme {
                    sct: (code >> 8) as u8,
                    sc: code as u8,
                }
            }
            below => IoStatus::Failed {
                errno: below - WIRE_FAILED_BELOW,
            },
        }
    }
}

/// What a sender keeps of a request it sent to another reactor.
struct RemoteIo {
    origin: IoOrigin,
    offset_blocks: u64,
    submit_time_ns: Nanos,
    num_blocks: u32,
    io_type: IoType,
}

/// A reactor's remote slots: requests it sent to other reactors that have not come back.
#[derive(Default)]
pub(super) struct RemoteSlots {
    slots: Vec<Option<RemoteIo>>,
    free: Vec<u32>,
}

impl RemoteSlots {
    fn keep(&mut self, io: RemoteIo) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(io);
                i
            }
            None => {
                // Bounded by the I/O in flight, far below the bit that marks a router's slot.
                assert!(
                    (self.slots.len() as u32) < SINGLE_SLOT,
                    "remote slots exhausted"
                );
                self.slots.push(Some(io));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn take(&mut self, slot: u32) -> RemoteIo {
        let io = self.slots[slot as usize]
            .take()
            .expect("a completion names a live remote slot");
        self.free.push(slot);
        io
    }

    /// Requests sent and not yet back.
    pub(super) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Ctx {
    /// Requests this reactor sent to other reactors from remote slots whose completions have
    /// not come back (a stopping reactor waits for them: see `engine`). One-shard volume
    /// requests sent away hold no remote slot; they count in [`Ctx::io_outstanding`], as
    /// every request the router holds does.
    pub fn io_sent_away(&self) -> usize {
        self.remote.in_flight()
    }

    /// Sends `io` to reactor `to` (another one) to be executed there on `bdev`; its
    /// completion comes back here.
    pub(super) fn send_io(&mut self, to: ReactorId, bdev: BdevId, io: IoRequest) {
        let slot = self.remote.keep(RemoteIo {
            origin: io.origin,
            offset_blocks: io.offset_blocks,
            submit_time_ns: io.submit_time_ns,
            num_blocks: io.num_blocks,
            io_type: io.io_type,
        });
        let routed = io.origin.task == ROUTER_TASK;
        self.send_from_slot(to, bdev, io, slot, routed);
    }

    /// Sends a one-shard volume request this reactor's router took (`io.origin` is its
    /// one-shard slot) to its shard's owner `to`, without a remote slot: the router's slot
    /// keeps what the completion needs, and the lane message names it.
    pub(super) fn send_single(&mut self, to: ReactorId, vol: BdevId, io: IoRequest) {
        let slot = io.origin.tag as u32;
        debug_assert!(io.origin.task == ROUTER_TASK && slot & SINGLE_SLOT != 0);
        self.send_from_slot(to, vol, io, slot, true);
    }

    /// Sends `io`, kept in `slot` (a remote slot or a router's one-shard slot), to `to`.
    fn send_from_slot(
        &mut self,
        to: ReactorId,
        bdev: BdevId,
        io: IoRequest,
        slot: u32,
        routed: bool,
    ) {
        let msg = match WireIo::pack(bdev, io, slot, routed) {
            Ok(wire) => LaneMsg::Io(wire),
            Err(io) => {
                let origin = wire_origin(self.id, routed, slot);
                let whole =
                    IoRequest::new(io.io_type, io.offset_blocks, io.num_blocks, io.buf, origin);
                LaneMsg::IoWhole(Box::new((bdev, whole)))
            }
        };
        self.send_lane(to, msg);
    }

    /// Sends a completion back to the reactor its origin names (another one).
    pub(super) fn send_done(&mut self, c: Completion) {
        let to = c.io.origin.reactor;
        let msg = match c.io.origin.task {
            REMOTE_TASK | ROUTER_TASK => LaneMsg::Done(WireDone {
                slot: c.io.origin.tag as u32,
                buf: c.io.buf,
                status: c.status.into(),
            }),
            _ => LaneMsg::Complete(Box::new(c)),
        };
        self.send_lane(to, msg);
    }

    /// The completion of a request this reactor sent, rebuilt from its remote slot; or, for
    /// a one-shard volume request, the request's own completion, restored from its router
    /// slot and addressed to the task that gave it.
    pub(super) fn take_done(&mut self, done: WireDone) -> Completion {
        if done.slot & SINGLE_SLOT != 0 {
            // Counted as `dispatch` counts a one-shard piece's return on its way through.
            self.counters.ios_completed += 1;
            return self.single_returned(done.slot, done.buf, done.status.into());
        }
        let kept = self.remote.take(done.slot);
        let io = IoRequest {
            io_type: kept.io_type,
            offset_blocks: kept.offset_blocks,
            num_blocks: kept.num_blocks,
            buf: done.buf,
            origin: kept.origin,
            submit_time_ns: kept.submit_time_ns,
        };
        Completion::new(io, done.status.into())
    }
}

/// The origin a request from reactor `from`'s slot `slot` (remote, or its router's
/// one-shard slot) has on the executing one.
#[inline]
fn wire_origin(from: ReactorId, routed: bool, slot: u32) -> IoOrigin {
    IoOrigin {
        reactor: from,
        task: if routed { ROUTER_TASK } else { REMOTE_TASK },
        tag: slot as u64,
    }
}

impl WireIo {
    /// `io` on `bdev`, from slot `slot`, in the packed form; `io` back when its offset,
    /// length or bdev does not fit (see the module docs).
    #[inline]
    fn pack(bdev: BdevId, io: IoRequest, slot: u32, routed: bool) -> Result<WireIo, IoRequest> {
        let (Ok(num_blocks), Ok(bdev16), 0) = (
            u16::try_from(io.num_blocks),
            u16::try_from(bdev),
            io.offset_blocks >> OFFSET_BITS,
        ) else {
            return Err(io);
        };
        Ok(WireIo {
            buf: io.buf,
            offset_and_bdev: io.offset_blocks | (u64::from(bdev16) << OFFSET_BITS),
            slot,
            num_blocks,
            io_type: io.io_type,
            routed,
        })
    }

    /// The request as the executing reactor submits it: from `from` (the sender, which the
    /// lane it came on names), tagged with its slot.
    #[inline]
    pub(super) fn into_request(self, from: ReactorId) -> (BdevId, IoRequest) {
        let offset_blocks = self.offset_and_bdev & ((1 << OFFSET_BITS) - 1);
        let bdev = (self.offset_and_bdev >> OFFSET_BITS) as BdevId;
        let origin = wire_origin(from, self.routed, self.slot);
        let io = IoRequest::new(
            self.io_type,
            offset_blocks,
            u32::from(self.num_blocks),
            self.buf,
            origin,
        );
        (bdev, io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(offset_blocks: u64, num_blocks: u32) -> IoRequest {
        let origin = IoOrigin {
            reactor: 0,
            task: 0,
            tag: 0,
        };
        IoRequest::new(IoType::Read, offset_blocks, num_blocks, None, origin)
    }

    #[test]
    fn the_packed_form_holds_its_largest_values_and_refuses_the_next_ones() {
        let last_offset = (1u64 << OFFSET_BITS) - 1;
        let wire = WireIo::pack(65_535, read(last_offset, 65_535), 7, true)
            .unwrap_or_else(|_| panic!("the largest values fit"));
        let (bdev, io) = wire.into_request(3);
        assert_eq!(
            (bdev, io.offset_blocks, io.num_blocks),
            (65_535, last_offset, 65_535)
        );
        assert_eq!(io.io_type, IoType::Read);
        assert_eq!(io.origin, wire_origin(3, true, 7));
        let too_far = WireIo::pack(0, read(last_offset + 1, 1), 0, false);
        assert!(too_far.is_err(), "an offset at 2^48 goes whole");
        assert!(
            WireIo::pack(65_536, read(0, 1), 0, false).is_err(),
            "bdev 65,536"
        );
        assert!(
            WireIo::pack(0, read(0, 65_536), 0, false).is_err(),
            "65,536 blocks"
        );
        let refused = WireIo::pack(0, read(5, 65_536), 0, false).err().unwrap();
        assert_eq!((refused.offset_blocks, refused.num_blocks), (5, 65_536));
    }

    #[test]
    fn every_status_crosses_in_four_bytes_unchanged() {
        let statuses = [
            IoStatus::Success,
            IoStatus::Invalid,
            IoStatus::Unsupported,
            IoStatus::Aborted,
            IoStatus::Failed { errno: libc::EIO },
            IoStatus::Failed {
                errno: libc::ENODEV,
            },
            IoStatus::Failed { errno: i32::MAX },
            IoStatus::Failed { errno: 0 },
            IoStatus::Failed { errno: -1 },
            IoStatus::Failed {
                errno: i32::MIN + 4 + 0x800,
            },
            IoStatus::Nvme { sct: 2, sc: 0x80 },
            IoStatus::Nvme { sct: 0, sc: 0 },
            IoStatus::Nvme { sct: 7, sc: 0xff },
        ];
        for status in statuses {
            assert_eq!(IoStatus::from(WireStatus::from(status)), status);
        }
        let lowest = IoStatus::from(WireStatus::from(IoStatus::Failed { errno: i32::MIN }));
        assert_eq!(
            lowest,
            IoStatus::Failed {
                errno: i32::MIN + 4 + 0x800
            },
            "an errno no OS gives is clamped clear of the NVMe statuses"
        );
    }
}
