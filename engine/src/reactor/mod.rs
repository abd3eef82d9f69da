//! The reactor: one core's poll loop, as a step function.
//!
//! [`Reactor::poll`] runs one iteration, in this order, each step bounded by
//! [`ReactorConfig`]: drain the inbox and each lane from a peer (at most `inbox_batch`
//! messages from each), reap every open channel (at most `reap_batch` completions each) and
//! retry what a channel refused for lack of resources, hand the reaped completions to their
//! tasks (or to the reactor that issued them), run due timers (at most `timer_batch`), run
//! the pollers (tasks that serve sockets, each bounding its own work), and push the messages
//! queued for peers. It returns [`PollResult::Busy`] if any step did work.
//!
//! A poller that waits on something outside the reactor (a socket) must get the reactor woken
//! when it parks: [`Reactor::prepare_park`] asks every poller (`Task::on_park`) to arrange
//! that, for example by arming its socket in an epoll set whose thread wakes the inbox.
//!
//! Time comes in as an argument, so tests drive many reactors on one thread with a fake
//! clock; [`engine`] runs each reactor on a pinned thread with the real clock and parks it
//! when idle.
//!
//! Work on a reactor is done by [`Task`]s: objects that submit I/O through a [`Ctx`] and get
//! its completions, timers and notifications back. Completions are queued and then run,
//! never called from inside a submit. Channels are opened lazily, one per bdev per reactor.
//!
//! Cross-reactor I/O: [`Ctx::submit_on`] sends the request to the reactor that should execute
//! it on its lane (see `ring`), in a compact form whose rest the sender keeps (`remote`); the
//! completion comes back on the lane the other way and is run there. Router tags: `tag`.

mod blocking;
mod copy;
pub mod engine;
mod remote;
mod router;
mod tag;
mod timers;

use crate::bdev::iostat::IoStat;
use crate::bdev::{BdevChannel, BdevId, BdevRegistry, Completion, IoRequest, IoStatus, IoTypeSet};
use crate::load::{Monitor, ShardKey, StateTable, Window};
use crate::ring::{Inbox, Lanes};
use crate::time::Nanos;
use std::{collections::VecDeque, sync::Arc};
use timers::Timers;

pub use blocking::BlockingIoError;
pub use copy::{CopyError, CopyFailure, CopyHandle, CopySpec, CopyState, CopyStatus};
pub use engine::{Engine, EngineConfig, EngineError, ReactorStats};
pub use remote::LaneMsg;
pub use router::{RouteCounters, BOUNCE_CHUNK_BYTES};
pub use timers::TimerId;

/// Index of a reactor in its engine.
pub type ReactorId = u16;
/// Index of a task on its reactor; never reused, so a late completion cannot reach a newer task.
pub type TaskId = u32;

/// What one poll iteration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollResult {
    Busy,
    Idle,
}

/// What a reactor's inbox carries, and what [`Ctx::send`] takes. I/O messages carry the
/// request by value (its buffer included): no allocation per I/O. Between reactors they go
/// on the lanes in a compact form (see `remote`). An I/O message pushed from outside whose
/// origin names one of the task ids the engine keeps for its own I/O is dropped, with an
/// error in the log.
pub enum Message {
    /// Execute this I/O here; the completion goes back to `io.origin.reactor`.
    Submit { bdev: BdevId, io: IoRequest },
    /// An I/O this reactor issued has finished elsewhere.
    Complete(Completion),
    /// A small value for a task (wake-ups, ping-pong).
    Notify { task: TaskId, value: u64 },
    /// Run a closure on the reactor (control path: spawning tasks, queries).
    Call(Box<dyn FnOnce(&mut Reactor) + Send>),
}

/// Work that lives on a reactor.
pub trait Task {
    /// Called once, when the task is placed on its reactor.
    fn on_start(&mut self, _ctx: &mut Ctx, _id: TaskId) {}
    /// An I/O this task issued has finished.
    fn on_complete(&mut self, ctx: &mut Ctx, completion: Completion);
    /// A timer this task set is due.
    fn on_timer(&mut self, _ctx: &mut Ctx, _timer: TimerId) {}
    /// A [`Message::Notify`] for this task arrived.
    fn on_notify(&mut self, _ctx: &mut Ctx, _value: u64) {}
    /// Called every iteration while the task is a poller ([`Ctx::add_poller`]); returns how
    /// much work it did (0: none), and bounds that work itself.
    fn on_poll(&mut self, _ctx: &mut Ctx) -> usize {
        0
    }
    /// The reactor is about to park: a poller arranges to be woken when its source has
    /// work. Returning false keeps the reactor awake.
    fn on_park(&mut self, _ctx: &mut Ctx) -> bool {
        true
    }
}

/// Bounds of one poll iteration, the inbox size and the room on the lanes from peers.
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    /// Messages the inbox holds; the lanes from all peers hold as many between them (see
    /// `Lanes::mesh`).
    pub inbox_capacity: usize,
    pub inbox_batch: usize,
    pub reap_batch: usize,
    pub timer_batch: usize,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            inbox_capacity: 4096,
            inbox_batch: 128,
            reap_batch: 256,
            timer_batch: 64,
        }
    }
}

/// What a request is checked against before it reaches a channel or the router.
#[derive(Clone, Copy)]
struct Geometry {
    block_size: u32,
    num_blocks: u64,
    supported: IoTypeSet,
}

/// What a bdev id leads to on this reactor: a device's queue pair, or a volume, whose I/O
/// the router splits and sends on to its members (see `router`).
enum Endpoint {
    Device(ChannelSlot),
    Volume(router::VolumeSlot),
}

impl Endpoint {
    fn geometry(&self) -> Geometry {
        match self {
            Endpoint::Device(s) => s.geometry,
            Endpoint::Volume(s) => s.geometry,
        }
    }
}

struct ChannelSlot {
    channel: Box<dyn BdevChannel>,
    geometry: Geometry,
    /// Requests the channel refused for lack of resources, retried after its completions.
    /// Bounded by what the reactor's tasks and peers have in flight.
    nomem: VecDeque<IoRequest>,
    /// What this channel returned (see `bdev::iostat`).
    stats: IoStat,
    /// The load monitor's window on this channel (see `load`).
    window: Window,
    /// The bdev is being deleted: new requests are aborted, and the channel is dropped once
    /// the I/O it holds has come back.
    closing: bool,
    /// The channel's last mark, if it ever had one (see `Ctx::mark_channel`).
    mark: Option<Mark>,
}

/// I/O in flight on a channel at one moment: what was submitted at or before `at`, of which
/// `pending` have not completed. Requests submitted after a mark get a submit time after its
/// `at`, so that none of them is ever taken for one a mark counts.
#[derive(Clone, Copy)]
struct Mark {
    at: Nanos,
    pending: usize,
}

/// Per-reactor counters, updated by the reactor and read by its engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub polls: u64,
    pub busy_polls: u64,
    pub ios_submitted: u64,
    pub ios_completed: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub nomem_retries: u64,
}

/// Everything a task may touch: the reactor without its task table.
pub struct Ctx {
    id: ReactorId,
    now: Nanos,
    config: ReactorConfig,
    /// Every reactor's inbox: messages to this reactor itself, and the parking handshake.
    peers: Arc<[Arc<Inbox<Message>>]>,
    /// This reactor's lanes to and from every peer: all traffic between reactors.
    lanes: Lanes<LaneMsg>,
    /// Messages for each peer (empty at this reactor's own index), in order, not yet on its
    /// lane: a batch being gathered, or what a full lane refused.
    outbox: Vec<Vec<LaneMsg>>,
    /// Messages for this reactor itself, on their way to its own inbox in the same way.
    to_self: Vec<Message>,
    /// Requests sent to other reactors, waiting for their completions (see `remote`).
    remote: remote::RemoteSlots,
    registry: Arc<BdevRegistry>,
    /// Indexed by bdev id; opened lazily.
    channels: Vec<Option<Endpoint>>,
    router: router::Router,
    route_counters: RouteCounters,
    /// Completions to run this iteration (reaped, returned from peers, or refused up front).
    ready: Vec<Completion>,
    timers: Timers,
    spawned: Vec<Box<dyn Task>>,
    next_task: TaskId,
    finished: Vec<TaskId>,
    /// Tasks polled every iteration, in the order they were added.
    pollers: Vec<TaskId>,
    counters: Counters,
    monitor: Monitor,
    /// Shards this reactor is copying to another member (see `copy`).
    copies: Vec<Option<copy::ShardCopy>>,
}

impl Ctx {
    pub fn reactor_id(&self) -> ReactorId {
        self.id
    }

    /// The time the current iteration started.
    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn reactor_count(&self) -> usize {
        self.peers.len()
    }

    pub fn registry(&self) -> &Arc<BdevRegistry> {
        &self.registry
    }

    /// Executes `io` on this reactor. An invalid request (range, buffer size, I/O type) or
    /// a bdev that is gone completes with an error status, through the same queue as any
    /// other completion.
    pub fn submit(&mut self, bdev: BdevId, mut io: IoRequest) {
        self.counters.ios_submitted += 1;
        if io.origin.task != router::ROUTER_TASK {
            self.monitor.taken += 1;
        }
        let now = self.now;
        io.submit_time_ns = now;
        let slot = match self.channel(bdev) {
            Some(Endpoint::Device(slot)) if !slot.closing => slot,
            Some(Endpoint::Volume(slot)) if !slot.closing => {
                if let Err(status) = validate(slot.geometry, &io) {
                    self.ready.push(Completion::new(io, status));
                } else {
                    self.volume_submit(bdev, io);
                }
                return;
            }
            _ => {
                self.ready.push(Completion::new(io, IoStatus::Aborted));
                return;
            }
        };
        if let Err(status) = validate(slot.geometry, &io) {
            self.ready.push(Completion::new(io, status));
            return;
        }
        if let Some(mark) = slot.mark {
            io.submit_time_ns = io.submit_time_ns.max(mark.at + 1);
        }
        let bytes = io.num_blocks as u64 * slot.geometry.block_size as u64;
        slot.window
            .start(io.io_type, io.offset_blocks, io.num_blocks, bytes);
        if !slot.nomem.is_empty() {
            // Keep order behind requests already waiting for resources.
            slot.nomem.push_back(io);
            return;
        }
        if let Err(io) = slot.channel.submit(io, now) {
            slot.nomem.push_back(io);
        }
    }

    /// Executes `io` on reactor `target` (here when it is this one); the completion comes
    /// back to this reactor.
    #[inline]
    pub fn submit_on(&mut self, target: ReactorId, bdev: BdevId, io: IoRequest) {
        if target == self.id {
            self.submit(bdev, io);
        } else {
            self.send_io(target, bdev, io);
        }
    }

    /// Sends a message to a reactor (this one included). Messages for a peer are gathered
    /// and go onto its lane [`SEND_BATCH`] at a time, and at the end of the iteration, each
    /// batch published with one store and followed by one wake-up handshake (see `ring`):
    /// publishing every message on its own made the peer's core and this one trade the
    /// lane's index line for every message. While a lane is full, messages wait here, in
    /// order (bounded by the I/O in flight). A request or a completion for a peer goes in the
    /// lane's compact form (see `remote`).
    pub fn send(&mut self, to: ReactorId, msg: Message) {
        if to == self.id {
            self.counters.messages_out += 1;
            self.to_self.push(msg);
            if self.to_self.len() >= SEND_BATCH {
                self.push_outbox(to as usize);
            }
            return;
        }
        match msg {
            Message::Submit { bdev, io } => self.send_io(to, bdev, io),
            Message::Complete(c) => self.send_lane(to, LaneMsg::Complete(Box::new(c))),
            Message::Notify { task, value } => self.send_lane(to, LaneMsg::Notify { task, value }),
            Message::Call(f) => self.send_lane(to, LaneMsg::Call(f)),
        }
    }

    /// [`Ctx::send`] to a peer, in the lane's form.
    #[inline]
    fn send_lane(&mut self, to: ReactorId, msg: LaneMsg) {
        self.counters.messages_out += 1;
        let queue = &mut self.outbox[to as usize];
        queue.push(msg);
        if queue.len() >= SEND_BATCH {
            self.push_outbox(to as usize);
        }
    }

    /// Moves what fits of peer `to`'s queued messages onto its lane (its own inbox for this
    /// reactor), then runs the peer's wake-up handshake. Returns how many went.
    fn push_outbox(&mut self, to: usize) -> usize {
        let pushed = if to == self.id as usize {
            self.peers[to].push_batch(&mut self.to_self)
        } else {
            self.lanes.push_batch(to, &mut self.outbox[to])
        };
        if pushed > 0 {
            self.peers[to].wake_if_parked();
        }
        pushed
    }

    /// Pushes every peer's queued messages (as far as the lanes take them). Returns how many
    /// went out.
    fn flush_outbox(&mut self) -> usize {
        let mut n = 0;
        for to in 0..self.outbox.len() {
            if !self.outbox[to].is_empty() {
                n += self.push_outbox(to);
            }
        }
        if !self.to_self.is_empty() {
            n += self.push_outbox(self.id as usize);
        }
        n
    }

    /// Whether messages wait to go out.
    fn has_outgoing(&self) -> bool {
        !self.to_self.is_empty() || self.outbox.iter().any(|q| !q.is_empty())
    }

    /// Notifies a task on a reactor (this one included).
    pub fn notify(&mut self, to: ReactorId, task: TaskId, value: u64) {
        self.send(to, Message::Notify { task, value });
    }

    /// Places a new task on this reactor; it starts after the current callback returns.
    pub fn spawn(&mut self, task: Box<dyn Task>) -> TaskId {
        let id = self.next_task;
        self.next_task += 1;
        self.spawned.push(task);
        id
    }

    /// Removes a task once the current callback returns; later events for it are dropped.
    pub fn finish(&mut self, task: TaskId) {
        self.finished.push(task);
    }

    /// Makes `task` a poller: its `on_poll` runs every iteration until it finishes.
    pub fn add_poller(&mut self, task: TaskId) {
        if !self.pollers.contains(&task) {
            self.pollers.push(task);
        }
    }

    /// This reactor's inbox; `wake()` on it unparks the reactor (for wake-up sources).
    pub fn own_inbox(&self) -> &Arc<Inbox<Message>> {
        &self.peers[self.id as usize]
    }

    /// Calls `task.on_timer` at `first_due`, then every `period` (0: once).
    pub fn add_timer(&mut self, task: TaskId, first_due: Nanos, period: Nanos) -> TimerId {
        self.timers.add(task, first_due, period)
    }

    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.timers.cancel(timer);
    }

    /// Block size and count of a bdev as this reactor sees it (opening its channel).
    pub fn geometry(&mut self, bdev: BdevId) -> Option<(u32, u64)> {
        self.channel(bdev).map(|e| {
            let g = e.geometry();
            (g.block_size, g.num_blocks)
        })
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Counts bytes a frontend connection served by this reactor moved (either way), for
    /// the load monitor.
    pub fn count_net_bytes(&mut self, bytes: u64) {
        self.monitor.net_bytes += bytes;
    }

    /// The state table this reactor publishes its load samples to.
    pub fn state_table(&self) -> &Arc<StateTable> {
        &self.monitor.table
    }

    #[inline]
    fn channel(&mut self, bdev: BdevId) -> Option<&mut Endpoint> {
        let i = bdev as usize;
        if matches!(self.channels.get(i), Some(Some(_))) {
            return self.channels[i].as_mut();
        }
        self.open_endpoint(bdev)
    }

    /// Opens this reactor's endpoint on `bdev` (first use): a channel, or a volume's view.
    #[cold]
    fn open_endpoint(&mut self, bdev: BdevId) -> Option<&mut Endpoint> {
        let i = bdev as usize;
        let b = self.registry.get(bdev)?;
        let endpoint = match crate::volume::VolumeBdev::of(&*b) {
            Some(volume) => Endpoint::Volume(router::VolumeSlot::new(volume)),
            None => {
                let info = b.info();
                let channel = match b.open_channel() {
                    Ok(c) => c,
                    Err(e) => {
                        log::error!(
                            "reactor {}: opening a channel on '{}': {e}",
                            self.id,
                            b.info().name
                        );
                        return None;
                    }
                };
                Endpoint::Device(ChannelSlot {
                    channel,
                    geometry: Geometry {
                        block_size: info.block_size,
                        num_blocks: info.num_blocks,
                        supported: info.supported,
                    },
                    nomem: VecDeque::new(),
                    stats: IoStat::default(),
                    window: Window::default(),
                    closing: false,
                    mark: None,
                })
            }
        };
        if self.channels.len() <= i {
            self.channels.resize_with(i + 1, || None);
        }
        self.channels[i] = Some(endpoint);
        self.channels[i].as_mut()
    }

    /// Closes this reactor's channel on a bdev that is being deleted: requests waiting for
    /// resources and any submitted from now on complete as aborted; the channel itself is
    /// dropped at once if it holds no I/O, otherwise when its last I/O comes back (a
    /// channel's drop must not strand requests it still holds). Returns whether it is gone.
    pub fn close_channel(&mut self, bdev: BdevId) -> bool {
        let slot = match self.channels.get_mut(bdev as usize) {
            Some(Some(Endpoint::Device(slot))) => slot,
            Some(Some(Endpoint::Volume(slot))) => {
                // A volume holds no I/O itself; it closes once its parents are done.
                slot.closing = true;
                if slot.inflight == 0 {
                    self.channels[bdev as usize] = None;
                    return true;
                }
                return false;
            }
            _ => return true,
        };
        slot.closing = true;
        for io in slot.nomem.drain(..) {
            self.ready.push(Completion::new(io, IoStatus::Aborted));
        }
        if slot.channel.inflight() == 0 {
            self.channels[bdev as usize] = None;
            return true;
        }
        false
    }

    /// Marks the I/O in flight now on this reactor's channel of `bdev` (queued for resources
    /// included); [`Ctx::marked_pending`] then counts those not yet completed. A data copy
    /// starts reading only once the writes that were on their way to its source when it
    /// started have landed: a read may overtake a write on the device (io_uring, O_DIRECT).
    pub fn mark_channel(&mut self, bdev: BdevId) {
        let now = self.now;
        if let Some(Endpoint::Device(slot)) = self.channel(bdev) {
            // Past the last mark's time: what was submitted after it counts too.
            let at = slot.mark.map_or(now, |m| now.max(m.at + 1));
            let pending = slot.channel.inflight() + slot.nomem.len();
            slot.mark = Some(Mark { at, pending });
        }
    }

    /// Requests that were in flight on this reactor's channel of `bdev` at its last mark and
    /// have not completed yet.
    pub fn marked_pending(&self, bdev: BdevId) -> usize {
        match self.channels.get(bdev as usize) {
            Some(Some(Endpoint::Device(slot))) => slot.mark.map_or(0, |m| m.pending),
            _ => 0,
        }
    }

    /// What this reactor's channel on the bdev has returned so far.
    pub fn iostat(&self, bdev: BdevId) -> Option<IoStat> {
        match self.channels.get(bdev as usize)?.as_ref()? {
            Endpoint::Device(s) => Some(s.stats),
            Endpoint::Volume(s) => Some(s.stats),
        }
    }

    /// I/O taken by channels and not yet reaped, plus requests waiting for resources, plus
    /// volume requests taken here and waiting for their pieces.
    pub fn io_outstanding(&self) -> usize {
        let devices: usize = self
            .channels
            .iter()
            .flatten()
            .map(|e| match e {
                Endpoint::Device(s) => s.channel.inflight() + s.nomem.len(),
                Endpoint::Volume(_) => 0,
            })
            .sum();
        devices + self.router.inflight
    }
}

/// Whether `task` is one of the ids the engine keeps for its own I/O: the router's (a volume's
/// pieces) and the remote slots' (requests from another reactor). No task gets one: task ids
/// count up from 0.
fn reserved_task(task: TaskId) -> bool {
    task == router::ROUTER_TASK || task == remote::REMOTE_TASK
}

#[inline]
fn validate(slot: Geometry, io: &IoRequest) -> Result<(), IoStatus> {
    if !slot.supported.contains(io.io_type) {
        return Err(IoStatus::Unsupported);
    }
    let end = io.offset_blocks.checked_add(io.num_blocks as u64);
    if io.io_type != crate::bdev::IoType::Flush
        && (io.num_blocks == 0 || end.is_none_or(|e| e > slot.num_blocks))
    {
        return Err(IoStatus::Invalid);
    }
    if io.io_type.has_data() {
        let want = io.num_blocks as usize * slot.block_size as usize;
        if io.buf.as_ref().is_none_or(|b| b.len() != want) {
            return Err(IoStatus::Invalid);
        }
    }
    Ok(())
}

/// Messages gathered for a peer before they go onto its lane as one batch (one tail store,
/// one wake-up handshake): enough to spread those over many messages, few enough that the
/// peer starts on them while this reactor is still busy. Each batch moves the lane's tail
/// line to the peer's core, and on a host whose cores are far apart (a cache line takes
/// ~200 ns between them) that is what a batch costs: 64 instead of 16 made a volume's
/// 4 KiB randwrite over two such cores 12 % faster, and changed nothing on close cores
/// (BENCHMARKS.md, volume section). The iteration's last batch goes whatever its size, so
/// a lone request does not wait for company.
const SEND_BATCH: usize = 64;

/// Passes over the ready queue per iteration: the second runs what the first queued (a
/// request a task submitted from its completion callback that failed up front, say).
const COMPLETION_PASSES: usize = 2;

/// One reactor: its context and its tasks.
pub struct Reactor {
    ctx: Ctx,
    tasks: Vec<Option<Box<dyn Task>>>,
    inbox: Arc<Inbox<Message>>,
    /// Reused buffer for the completions run in one iteration.
    running: Vec<Completion>,
}

impl Reactor {
    /// A reactor that drains `peers[id]` and its `lanes` (its element of a [`Lanes::mesh`]),
    /// can message every other peer, and publishes its load to `state`.
    pub fn new(
        id: ReactorId,
        peers: Arc<[Arc<Inbox<Message>>]>,
        lanes: Lanes<LaneMsg>,
        registry: Arc<BdevRegistry>,
        config: ReactorConfig,
        state: Arc<StateTable>,
    ) -> Reactor {
        let inbox = Arc::clone(&peers[id as usize]);
        let peers_len = peers.len();
        Reactor {
            ctx: Ctx {
                id,
                now: 0,
                peers,
                outbox: (0..peers_len).map(|_| Vec::new()).collect(),
                to_self: Vec::new(),
                remote: remote::RemoteSlots::default(),
                lanes,
                registry,
                channels: Vec::new(),
                router: router::Router::default(),
                route_counters: RouteCounters::default(),
                ready: Vec::with_capacity(config.reap_batch),
                timers: Timers::default(),
                spawned: Vec::new(),
                next_task: 0,
                finished: Vec::new(),
                pollers: Vec::new(),
                counters: Counters::default(),
                config,
                monitor: Monitor::new(state),
                copies: Vec::new(),
            },
            tasks: Vec::new(),
            inbox,
            running: Vec::new(),
        }
    }

    /// Makes `n` inboxes for a set of reactors.
    pub fn inboxes(n: usize, capacity: usize) -> Arc<[Arc<Inbox<Message>>]> {
        (0..n)
            .map(|_| Arc::new(Inbox::with_capacity(capacity)))
            .collect()
    }

    pub fn ctx(&mut self) -> &mut Ctx {
        &mut self.ctx
    }

    pub fn id(&self) -> ReactorId {
        self.ctx.id
    }

    /// Places a task on this reactor and starts it.
    pub fn spawn(&mut self, task: Box<dyn Task>) -> TaskId {
        let id = self.ctx.spawn(task);
        self.settle_tasks();
        id
    }

    /// Tasks still on the reactor.
    pub fn task_count(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_some()).count()
    }

    /// One iteration of the poll loop (see the module docs).
    pub fn poll(&mut self, now: Nanos) -> PollResult {
        self.ctx.now = now;
        self.ctx.counters.polls += 1;
        if self.ctx.monitor.poll_started(now) {
            self.sample_load(now);
        }
        let mut work = self.drain_inbox();
        work += self.reap_channels();
        work += self.run_completions();
        work += self.run_timers();
        work += self.run_pollers();
        if !self.ctx.copies.is_empty() {
            // A rate-capped copy waits for time to pass; active copies keep the reactor up.
            work += self.ctx.pump_copies();
        }
        work += self.flush_outbox();
        self.ctx.monitor.poll_ended(work > 0);
        if work > 0 {
            self.ctx.counters.busy_polls += 1;
            PollResult::Busy
        } else {
            PollResult::Idle
        }
    }

    /// Whether the reactor may sleep: nothing in flight, queued or due before `now`.
    pub fn can_park(&self) -> bool {
        self.ctx.ready.is_empty()
            && !self.ctx.has_outgoing()
            && self.ctx.io_outstanding() == 0
            && !self.has_messages()
    }

    /// Whether a message waits in the inbox or on a lane.
    pub fn has_messages(&self) -> bool {
        !self.inbox.is_empty() || !self.ctx.lanes.is_empty()
    }

    /// The last step before parking: announces it on the inbox and checks the inbox and
    /// lanes once more (see `ring`); false when a message is waiting. After waking, call
    /// `inbox().finish_park()`.
    pub fn announce_park(&self) -> bool {
        self.inbox
            .prepare_park_unless(|| !self.ctx.lanes.is_empty())
    }

    /// Asks every poller to arrange its wake-up before the reactor parks; false when one
    /// of them wants the reactor to stay awake.
    pub fn prepare_park(&mut self) -> bool {
        let mut ok = true;
        for i in 0..self.ctx.pollers.len() {
            let id = self.ctx.pollers[i];
            if let Some(Some(t)) = self.tasks.get_mut(id as usize) {
                ok &= t.on_park(&mut self.ctx);
            }
        }
        self.settle_tasks();
        ok
    }

    /// When the next timer (or load sample) is due, if any.
    pub fn next_timer_due(&self) -> Option<Nanos> {
        match (self.ctx.timers.next_due(), self.ctx.monitor.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes the load monitor's window: every channel's and shard's window goes into a
    /// sample in the state table (see `load`).
    fn sample_load(&mut self, now: Nanos) {
        let mut executed = Window::default();
        let mut bdevs = Vec::new();
        let mut shards = Vec::new();
        for (id, entry) in self.ctx.channels.iter_mut().enumerate() {
            match entry {
                Some(Endpoint::Device(slot)) if slot.window.is_active() => {
                    let w = slot.window.take();
                    executed.merge(&w);
                    bdevs.push((id as BdevId, w));
                }
                Some(Endpoint::Volume(slot)) => {
                    for (shard, w) in slot.take_shard_windows() {
                        let key = ShardKey {
                            volume: id as BdevId,
                            shard,
                        };
                        shards.push((key, w));
                    }
                }
                _ => {}
            }
        }
        let id = self.ctx.id;
        let sample = self.ctx.monitor.close(id, now, executed, bdevs, shards);
        self.ctx.monitor.table.publish(sample);
    }

    pub fn inbox(&self) -> &Arc<Inbox<Message>> {
        &self.inbox
    }

    /// Takes at most a batch of messages from the inbox and from each lane.
    fn drain_inbox(&mut self) -> usize {
        let batch = self.ctx.config.inbox_batch;
        let mut n = 0;
        while n < batch {
            let Some(msg) = self.inbox.pop() else { break };
            n += 1;
            self.take_message(msg);
        }
        for lane in 0..self.ctx.lanes.incoming() {
            let from = self.ctx.lanes.sender(lane) as ReactorId;
            let mut taken = 0;
            while taken < batch {
                let Some(msg) = self.ctx.lanes.pop(lane) else {
                    break;
                };
                taken += 1;
                self.take_lane_message(from, msg);
            }
            n += taken;
        }
        n
    }

    fn take_message(&mut self, msg: Message) {
        self.ctx.counters.messages_in += 1;
        match msg {
            Message::Submit { io, .. } | Message::Complete(Completion { io, .. })
                if reserved_task(io.origin.task) =>
            {
                // The router's and the remote slots' task ids name state that only the engine
                // creates, on the reactor the origin names; a request or completion from
                // outside that claims one would complete into a slot it does not own (or
                // none). Nothing runs it; its buffer goes back to its pool.
                log::error!(
                    "reactor {}: dropped a message from outside whose origin (reactor {}, \
                     task {}) is reserved for the engine's own I/O",
                    self.ctx.id,
                    io.origin.reactor,
                    io.origin.task
                );
            }
            Message::Submit { bdev, io } => self.ctx.submit(bdev, io),
            Message::Complete(c) => self.complete(c),
            Message::Notify { task, value } => self.notified(task, value),
            Message::Call(f) => self.call(f),
        }
    }

    /// Runs a message that came on the lane from reactor `from`.
    fn take_lane_message(&mut self, from: ReactorId, msg: LaneMsg) {
        self.ctx.counters.messages_in += 1;
        match msg {
            LaneMsg::Io(wire) => {
                let (bdev, io) = wire.into_request(from);
                self.ctx.submit(bdev, io);
            }
            LaneMsg::IoWhole(whole) => {
                let (bdev, io) = *whole;
                self.ctx.submit(bdev, io);
            }
            LaneMsg::Done(wire) => {
                let c = self.ctx.take_done(wire);
                self.complete(c);
            }
            LaneMsg::Complete(c) => self.complete(*c),
            LaneMsg::Notify { task, value } => self.notified(task, value),
            LaneMsg::Call(f) => self.call(f),
        }
    }

    fn complete(&mut self, c: Completion) {
        self.dispatch(c);
        self.settle_tasks();
    }

    fn notified(&mut self, task: TaskId, value: u64) {
        if let Some(Some(t)) = self.tasks.get_mut(task as usize) {
            t.on_notify(&mut self.ctx, value);
        }
        self.settle_tasks();
    }

    fn call(&mut self, f: Box<dyn FnOnce(&mut Reactor) + Send>) {
        f(self);
        self.settle_tasks();
    }

    fn reap_channels(&mut self) -> usize {
        let now = self.ctx.now;
        let max = self.ctx.config.reap_batch;
        let mut n = 0;
        for entry in self.ctx.channels.iter_mut() {
            let Some(Endpoint::Device(slot)) = entry else {
                continue;
            };
            let before = self.ctx.ready.len();
            let reaped = slot.channel.poll(now, max, &mut self.ctx.ready);
            for c in &self.ctx.ready[before..] {
                let latency = now.saturating_sub(c.io.submit_time_ns);
                slot.stats.record(c, slot.geometry.block_size, latency);
                slot.window.end(latency);
                if let Some(mark) = slot.mark.as_mut() {
                    if mark.pending > 0 && c.io.submit_time_ns <= mark.at {
                        mark.pending -= 1;
                    }
                }
            }
            n += reaped;
            if slot.closing {
                if slot.channel.inflight() == 0 {
                    *entry = None;
                }
                continue;
            }
            // Retry refused requests now that completions freed resources.
            while let Some(io) = slot.nomem.pop_front() {
                self.ctx.counters.nomem_retries += 1;
                if let Err(io) = slot.channel.submit(io, now) {
                    slot.nomem.push_front(io);
                    break;
                }
                n += 1;
            }
        }
        n
    }

    /// Runs the ready completions, and what they queue, in at most [`COMPLETION_PASSES`]
    /// passes.
    fn run_completions(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..COMPLETION_PASSES {
            if self.ctx.ready.is_empty() {
                break;
            }
            n += self.run_completions_once();
        }
        n
    }

    fn run_completions_once(&mut self) -> usize {
        let mut running = std::mem::take(&mut self.running);
        std::mem::swap(&mut running, &mut self.ctx.ready);
        let n = running.len();
        for c in running.drain(..) {
            self.dispatch(c);
        }
        self.running = running;
        if n > 0 {
            self.settle_tasks();
        }
        n
    }

    /// Hands a completion to whoever issued it: a peer, the router (a volume piece; the
    /// request it completes goes on at once), or a task.
    fn dispatch(&mut self, mut c: Completion) {
        loop {
            let origin = c.io.origin;
            if origin.reactor != self.ctx.id {
                self.ctx.send_done(c);
                return;
            }
            self.ctx.counters.ios_completed += 1;
            if origin.task != router::ROUTER_TASK {
                break;
            }
            // A piece: the request it completes (if any) goes on to its own origin.
            if self.ctx.single_complete(&mut c) {
                continue;
            }
            match self.ctx.piece_complete(c) {
                Some(done) => c = done,
                None => return,
            }
        }
        if let Some(Some(t)) = self.tasks.get_mut(c.io.origin.task as usize) {
            t.on_complete(&mut self.ctx, c);
        }
    }

    fn run_timers(&mut self) -> usize {
        let mut n = 0;
        while n < self.ctx.config.timer_batch {
            let Some((timer, task)) = self.ctx.timers.pop_due(self.ctx.now) else {
                break;
            };
            n += 1;
            if let Some(Some(t)) = self.tasks.get_mut(task as usize) {
                t.on_timer(&mut self.ctx, timer);
            }
            self.settle_tasks();
        }
        n
    }

    fn run_pollers(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.ctx.pollers.len() {
            let id = self.ctx.pollers[i];
            if let Some(Some(t)) = self.tasks.get_mut(id as usize) {
                n += t.on_poll(&mut self.ctx);
            }
        }
        if n > 0 || !self.ctx.finished.is_empty() || !self.ctx.spawned.is_empty() {
            self.settle_tasks();
        }
        n
    }

    /// Pushes what is left of the iteration's messages.
    fn flush_outbox(&mut self) -> usize {
        self.ctx.flush_outbox()
    }

    /// Starts spawned tasks and removes finished ones.
    fn settle_tasks(&mut self) {
        while !self.ctx.spawned.is_empty() {
            let spawned = std::mem::take(&mut self.ctx.spawned);
            let first = self.tasks.len() as TaskId;
            self.tasks.extend(spawned.into_iter().map(Some));
            for id in first..self.tasks.len() as TaskId {
                if let Some(t) = self.tasks[id as usize].as_mut() {
                    t.on_start(&mut self.ctx, id);
                }
            }
        }
        for id in self.ctx.finished.drain(..) {
            if let Some(slot) = self.tasks.get_mut(id as usize) {
                *slot = None;
            }
            self.ctx.timers.cancel_task(id);
            self.ctx.pollers.retain(|&p| p != id);
        }
    }
}

#[cfg(test)]
mod tests;
