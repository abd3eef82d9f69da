//! I/O between reactors in the form it takes on the lanes: what the other reactor needs, and
//! no more.
//!
//! A request executed on another reactor travels as a [`LaneMsg::Io`]: the bdev, the type,
//! the range and the buffer, 40 bytes where the whole request is 72. The sender keeps the
//! rest (the request's origin, its range as given, its submit time) in a *remote slot*, and
//! the message carries the slot's index. The completion comes back as a [`LaneMsg::Done`]:
//! the slot, the status and the buffer. The sender rebuilds the completion from its slot
//! and runs it as it would have run its own.
//!
//! Why: what a lane message costs is the cache lines it fills on one core and empties on the
//! other. Side by side on two cores far apart, 72-byte messages made 2.6x fewer round trips
//! per second than 16-byte ones (`tidepool-perf --bench lanes`), and half of a two-reactor
//! volume's requests cross (BENCHMARKS.md, volume section).
//!
//! On the executing reactor the request's origin is the sender, with task [`REMOTE_TASK`]
//! (or the router's task, for a volume's piece: the executing reactor must route it, not
//! take it as a new request) and the slot's index as its tag. So a completion whose origin
//! is another reactor always names a slot there. A reactor that passes a piece on (its shard
//! moved away) sends it from a slot of its own, and its completion comes back the same way.
//!
//! A request pushed into a reactor's inbox from outside that names another reactor as its
//! origin has no slot there: its completion goes back whole, boxed ([`LaneMsg::Complete`]).

use super::{router::ROUTER_TASK, Ctx, Reactor, ReactorId, TaskId};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::time::Nanos;
use tidepool_bindings::dma::DmaBuf;

/// The task id of requests another reactor sent here: their completions go back to it.
pub(super) const REMOTE_TASK: TaskId = TaskId::MAX - 1;

/// What goes over a lane from one reactor to another.
pub enum LaneMsg {
    /// Execute this I/O here (see the module docs).
    Io(WireIo),
    /// An I/O this reactor sent has finished on the other.
    Done(WireDone),
    /// A completion for an I/O with no remote slot (see the module docs).
    Complete(Box<Completion>),
    /// A small value for a task (wake-ups, ping-pong).
    Notify { task: TaskId, value: u64 },
    /// Run a closure on the reactor.
    Call(Box<dyn FnOnce(&mut Reactor) + Send>),
}

// The point of the compact forms: at most 40 bytes, eight messages to five 64-byte lines (the
// whole request's 72 bytes took nine).
const _: () = assert!(std::mem::size_of::<LaneMsg>() <= 40);

/// A request on its way to the reactor that executes it.
pub struct WireIo {
    offset_blocks: u64,
    buf: Option<DmaBuf>,
    /// The sender's remote slot.
    slot: u32,
    num_blocks: u32,
    bdev: BdevId,
    from: ReactorId,
    io_type: IoType,
    /// A volume's piece, routed by its sender's router.
    routed: bool,
}

/// A completion on its way back to the reactor that sent the request.
pub struct WireDone {
    buf: Option<DmaBuf>,
    slot: u32,
    status: IoStatus,
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
    /// Requests this reactor sent to other reactors whose completions have not come back (a
    /// stopping reactor waits for them: see `engine`).
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
        let wire = WireIo {
            offset_blocks: io.offset_blocks,
            buf: io.buf,
            slot,
            num_blocks: io.num_blocks,
            bdev,
            from: self.id,
            io_type: io.io_type,
            routed: io.origin.task == ROUTER_TASK,
        };
        self.send_lane(to, LaneMsg::Io(wire));
    }

    /// Sends a completion back to the reactor its origin names (another one).
    pub(super) fn send_done(&mut self, c: Completion) {
        let to = c.io.origin.reactor;
        let msg = match c.io.origin.task {
            REMOTE_TASK | ROUTER_TASK => LaneMsg::Done(WireDone {
                slot: c.io.origin.tag as u32,
                buf: c.io.buf,
                status: c.status,
            }),
            _ => LaneMsg::Complete(Box::new(c)),
        };
        self.send_lane(to, msg);
    }

    /// The completion of a request this reactor sent, rebuilt from its remote slot.
    pub(super) fn take_done(&mut self, done: WireDone) -> Completion {
        let kept = self.remote.take(done.slot);
        let io = IoRequest {
            io_type: kept.io_type,
            offset_blocks: kept.offset_blocks,
            num_blocks: kept.num_blocks,
            buf: done.buf,
            origin: kept.origin,
            submit_time_ns: kept.submit_time_ns,
        };
        Completion::new(io, done.status)
    }
}

impl WireIo {
    /// The request as the executing reactor submits it: from the sender, tagged with its slot.
    pub(super) fn into_request(self) -> (BdevId, IoRequest) {
        let origin = IoOrigin {
            reactor: self.from,
            task: if self.routed {
                ROUTER_TASK
            } else {
                REMOTE_TASK
            },
            tag: self.slot as u64,
        };
        let io = IoRequest::new(
            self.io_type,
            self.offset_blocks,
            self.num_blocks,
            self.buf,
            origin,
        );
        (self.bdev, io)
    }
}
