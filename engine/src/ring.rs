//! The bounded lock-free rings reactors talk through.
//!
//! Two kinds, both bounded, both refusing a message when full (the sender decides what to
//! do; reactors keep what was refused, in order, see `reactor`):
//!
//! - An [`Inbox`] per reactor: a multi-producer ring (crossbeam's `ArrayQueue`) for anyone
//!   that is not a reactor (the control plane, tests), plus the reactor's parking flag.
//! - A [`Lanes`] mesh: one single-producer single-consumer ring (`rtrb`) per ordered pair of
//!   reactors, for the I/O traffic between them. Messages go on in batches
//!   ([`Lanes::push_batch`]): plain stores into the slots, then one release store of the
//!   lane's tail for the whole batch; the consumer takes them with acquire loads. There is
//!   no read-modify-write (a multi-producer ring needs a `lock`-prefixed compare-exchange
//!   per message), and the tail's cache line changes core once per batch, not once per
//!   message. Messages on one lane arrive in the order they were pushed.
//!
//! Parking handshake. A reactor that wants to sleep sets `parked`, then looks at its inbox
//! and lanes once more before it parks; a producer pushes, then looks at `parked` and
//! unparks the consumer if it is set. Both sides put a SeqCst fence between their write and
//! their read, so at least one of them sees the other's write: either the consumer sees the
//! message and does not sleep, or the producer sees `parked` and wakes it. `Thread::unpark`
//! is sticky, so an unpark that lands before the park is not lost. A lane producer runs the
//! handshake once per batch ([`Inbox::wake_if_parked`]).

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use tidepool_bindings::batch;

pub struct Inbox<T> {
    ring: ArrayQueue<T>,
    parked: AtomicBool,
    consumer: OnceLock<Thread>,
    /// Unparks issued; a statistic, so relaxed.
    wakeups: AtomicU64,
}

impl<T> Inbox<T> {
    pub fn with_capacity(capacity: usize) -> Inbox<T> {
        Inbox {
            ring: ArrayQueue::new(capacity.max(1)),
            parked: AtomicBool::new(false),
            consumer: OnceLock::new(),
            wakeups: AtomicU64::new(0),
        }
    }

    /// Names the thread that drains this inbox, so producers can wake it. Set once.
    pub fn set_consumer(&self, thread: Thread) {
        let _ = self.consumer.set(thread);
    }

    /// Pushes a message, waking the consumer if it is parked. Hands the message back when the
    /// ring is full.
    #[inline]
    pub fn push(&self, msg: T) -> Result<(), T> {
        self.ring.push(msg)?;
        // Pairs with the fence in `prepare_park`: see the module comment.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.wake();
        }
        Ok(())
    }

    /// Moves messages from the front of `queue` into the ring until it is full, without the
    /// wake-up check (the caller runs [`Inbox::wake_if_parked`] once afterwards). Returns how
    /// many moved; the rest stay in `queue`, in order. The same contract as
    /// [`Lanes::push_batch`].
    pub fn push_batch(&self, queue: &mut Vec<T>) -> usize {
        // Drain in place so that `queue` keeps its capacity (it is refilled every batch).
        let room = self.ring.capacity().saturating_sub(self.ring.len());
        let mut batch = queue.drain(..room.min(queue.len()));
        let mut moved = 0;
        let mut refused = Vec::new();
        while let Some(msg) = batch.next() {
            if let Err(msg) = self.ring.push(msg) {
                // Another producer took the room meanwhile: the rest goes back, in order.
                refused.push(msg);
                refused.extend(batch.by_ref());
                break;
            }
            moved += 1;
        }
        drop(batch);
        queue.splice(0..0, refused);
        moved
    }

    /// The second half of an [`Inbox::push_batch`]: the handshake of `push`, once.
    #[inline]
    pub fn wake_if_parked(&self) {
        // Pairs with the fence in `prepare_park`: see the module comment.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Wakes the consumer if it is parked (used to deliver a stop request).
    pub fn wake(&self) {
        if let Some(t) = self.consumer.get() {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            t.unpark();
        }
    }

    #[inline]
    pub fn pop(&self) -> Option<T> {
        self.ring.pop()
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Consumer side: announces the intent to park. Returns false (and withdraws the intent)
    /// if a message is already waiting, in which case the caller must not park.
    pub fn prepare_park(&self) -> bool {
        self.prepare_park_unless(|| false)
    }

    /// [`Inbox::prepare_park`] for a consumer with other sources (its lanes): `waiting` is
    /// asked after the fence whether any of them holds a message.
    pub fn prepare_park_unless(&self, waiting: impl FnOnce() -> bool) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.ring.is_empty() || waiting() {
            self.parked.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Consumer side: after waking.
    pub fn finish_park(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

/// The smallest lane [`Lanes::mesh`] makes (unless asked for less in all): room for a few
/// batches of messages.
const MIN_LANE_CAPACITY: usize = 64;

/// One reactor's ends of the lane mesh: a producer towards every peer and a consumer from
/// every peer.
///
/// Each end sits on cache lines of its own. An end holds the indices its reactor writes on
/// every batch (producer) or every message (consumer); the mesh is built on one thread, so
/// unpadded, the small vectors of different reactors came out of the allocator side by side
/// and shared lines, and every pop on one core took a line from the other.
pub struct Lanes<T> {
    /// `to[p]`: the producer of the lane towards peer `p`; `None` at this reactor's index.
    to: Vec<Option<CachePadded<rtrb::Producer<T>>>>,
    /// The consumers of the lanes from the other peers, in the order of the peers' indices.
    from: Vec<CachePadded<rtrb::Consumer<T>>>,
    /// This reactor's index: incoming lane `l` is from peer `l` when `l < own`, else `l + 1`.
    own: usize,
}

impl<T> Lanes<T> {
    /// The mesh for `n` reactors: element `i` is reactor `i`'s. A reactor's incoming lanes
    /// share `capacity` messages (each lane gets `capacity / (n - 1)`, at least 64 or
    /// `capacity` if that is less), so the mesh's memory grows with the reactor count, not
    /// its square: what does not fit waits with the sender.
    pub fn mesh(n: usize, capacity: usize) -> Vec<Lanes<T>> {
        let per_lane = (capacity / n.saturating_sub(1).max(1))
            .max(capacity.min(MIN_LANE_CAPACITY))
            .max(1);
        let mut lanes: Vec<Lanes<T>> = (0..n)
            .map(|own| Lanes {
                to: (0..n).map(|_| None).collect(),
                from: Vec::with_capacity(n.saturating_sub(1)),
                own,
            })
            .collect();
        for from in 0..n {
            for to in (0..n).filter(|&to| to != from) {
                let (producer, consumer) = rtrb::RingBuffer::new(per_lane);
                lanes[from].to[to] = Some(CachePadded::new(producer));
                lanes[to].from.push(CachePadded::new(consumer));
            }
        }
        lanes
    }

    /// Moves messages from the front of `queue` onto the lane towards peer `to`, as many as
    /// it has room for, and publishes them with one store. Returns how many moved; the rest
    /// stay in `queue`, in order. The caller runs the peer's wake-up handshake afterwards.
    ///
    /// The batch moves as bytes, one copy per contiguous run of slots: moved one message at
    /// a time (`rtrb`'s `fill_from_iter`), a round trip of lane messages cost each core 33 ns
    /// on close cores, against 19 ns (`tidepool-perf --bench lanes`).
    pub fn push_batch(&mut self, to: usize, queue: &mut Vec<T>) -> usize {
        let Some(Some(lane)) = self.to.get_mut(to) else {
            return 0;
        };
        // `write_chunk_uninit` reads the consumer's index only when the room this producer
        // last saw is too small; asking for the free slots first (`slots()`) would read it
        // every batch and pull that line, which the consumer writes on every pop, across
        // cores each time.
        let n = match lane.write_chunk_uninit(queue.len()) {
            Ok(chunk) => return batch::fill_chunk(chunk, queue),
            Err(rtrb::chunks::ChunkError::TooFewSlots(room)) => room,
        };
        match lane.write_chunk_uninit(n) {
            Ok(chunk) => batch::fill_chunk(chunk, queue),
            Err(_) => 0,
        }
    }

    /// How many incoming lanes there are (peers minus one).
    pub fn incoming(&self) -> usize {
        self.from.len()
    }

    /// The peer whose messages incoming lane `lane` carries.
    #[inline]
    pub fn sender(&self, lane: usize) -> usize {
        if lane < self.own {
            lane
        } else {
            lane + 1
        }
    }

    /// The next message on incoming lane `lane`, if any.
    #[inline]
    pub fn pop(&mut self, lane: usize) -> Option<T> {
        self.from[lane].pop().ok()
    }

    /// Whether no incoming lane holds a message.
    pub fn is_empty(&self) -> bool {
        self.from.iter().all(|lane| lane.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn full_ring_hands_the_message_back() {
        let inbox = Inbox::with_capacity(2);
        inbox.push(1).unwrap();
        inbox.push(2).unwrap();
        assert_eq!(inbox.push(3), Err(3));
        assert_eq!(inbox.pop(), Some(1));
        inbox.push(3).unwrap();
        assert_eq!(
            (inbox.pop(), inbox.pop(), inbox.pop()),
            (Some(2), Some(3), None)
        );
    }

    /// A batch goes in as far as the ring has room; the rest waits in the queue, in order.
    #[test]
    fn inbox_batch_takes_what_fits_and_leaves_the_rest_in_order() {
        let inbox = Inbox::with_capacity(2);
        let mut queue = vec![1, 2, 3];
        assert_eq!(inbox.push_batch(&mut queue), 2);
        assert_eq!(queue, [3]);
        assert_eq!(
            (inbox.pop(), inbox.pop(), inbox.pop()),
            (Some(1), Some(2), None)
        );
        assert_eq!(inbox.push_batch(&mut queue), 1);
        assert!(queue.is_empty());
    }

    /// Several producers push tagged sequences through a small ring while one consumer drains
    /// it: every message arrives exactly once and each producer's messages stay in order.
    #[test]
    fn multi_producer_stress_delivers_everything_once_in_order() {
        const PRODUCERS: u64 = 4;
        const PER_PRODUCER: u64 = 200_000;
        let inbox = Arc::new(Inbox::with_capacity(64));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let inbox = Arc::clone(&inbox);
                std::thread::spawn(move || {
                    for seq in 0..PER_PRODUCER {
                        let mut msg = (p << 32) | seq;
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while let Err(back) = inbox.push(msg) {
                            msg = back;
                            assert!(Instant::now() < deadline, "consumer stalled");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; PRODUCERS as usize];
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while received < PRODUCERS * PER_PRODUCER {
            assert!(Instant::now() < deadline, "messages lost: got {received}");
            match inbox.pop() {
                Some(msg) => {
                    let (p, seq) = ((msg >> 32) as usize, msg & 0xffff_ffff);
                    assert_eq!(seq, next[p], "producer {p} out of order");
                    next[p] += 1;
                    received += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(inbox.pop().is_none());
        assert!(next.iter().all(|&n| n == PER_PRODUCER));
    }

    /// A reactor's incoming lanes share the capacity it was given, down to a floor.
    #[test]
    fn lane_capacity_is_shared_among_a_reactors_peers() {
        let free_slots = |mesh: &mut Vec<Lanes<u8>>| {
            let mut queue = vec![0u8; 10_000];
            mesh[0].push_batch(1, &mut queue)
        };
        assert_eq!(free_slots(&mut Lanes::mesh(2, 4096)), 4096);
        assert_eq!(free_slots(&mut Lanes::mesh(5, 4096)), 1024);
        assert_eq!(free_slots(&mut Lanes::mesh(128, 4096)), 64);
        assert_eq!(free_slots(&mut Lanes::mesh(8, 2)), 2);
    }

    /// Each ordered pair of reactors has its own lane: messages arrive on the receiver's lane
    /// from their sender, in order; a full lane takes what fits and leaves the rest with the
    /// sender, in order; there is no lane from a reactor to itself.
    #[test]
    fn lanes_connect_every_ordered_pair_in_order_and_bounded() {
        let mut mesh = Lanes::<(usize, u32)>::mesh(3, 4);
        assert!(mesh.iter().all(|l| l.incoming() == 2 && l.is_empty()));
        for (from, lanes) in mesh.iter_mut().enumerate() {
            for to in (0..3).filter(|&to| to != from) {
                let mut queue: Vec<(usize, u32)> = (0..3).map(|seq| (from, seq)).collect();
                assert_eq!(lanes.push_batch(to, &mut queue), 3);
                assert!(queue.is_empty());
                queue.extend((3..6).map(|seq| (from, seq)));
                assert_eq!(lanes.push_batch(to, &mut queue), 1, "one slot left");
                assert_eq!(queue, [(from, 4), (from, 5)], "the rest waits, in order");
                assert_eq!(lanes.push_batch(to, &mut queue), 0, "lane is full");
            }
            let mut to_self = vec![(from, 0)];
            assert_eq!(lanes.push_batch(from, &mut to_self), 0, "no lane to itself");
            assert_eq!(lanes.push_batch(7, &mut to_self), 0, "no such peer");
            assert_eq!(to_self.len(), 1);
        }
        for (to, lanes) in mesh.iter_mut().enumerate() {
            assert!(!lanes.is_empty());
            let mut senders = Vec::new();
            for lane in 0..lanes.incoming() {
                let got: Vec<(usize, u32)> = std::iter::from_fn(|| lanes.pop(lane)).collect();
                let from = got[0].0;
                assert_ne!(from, to);
                assert_eq!(got, (0..4).map(|seq| (from, seq)).collect::<Vec<_>>());
                senders.push(from);
            }
            senders.sort_unstable();
            assert_eq!(senders, (0..3).filter(|&f| f != to).collect::<Vec<_>>());
            assert!(lanes.is_empty());
        }
    }

    /// A producer looks at the consumer's progress only when the room it last saw runs out
    /// (see `push_batch`): room the consumer freed since is found then, and used in order.
    #[test]
    fn a_full_lane_takes_messages_again_once_the_consumer_frees_room() {
        let mut mesh = Lanes::<u32>::mesh(2, 4);
        let mut queue: Vec<u32> = (0..4).collect();
        assert_eq!(mesh[0].push_batch(1, &mut queue), 4);
        queue.extend(4..7);
        assert_eq!(mesh[0].push_batch(1, &mut queue), 0, "the lane is full");
        assert_eq!(mesh[1].pop(0), Some(0));
        assert_eq!(mesh[1].pop(0), Some(1));
        assert_eq!(mesh[0].push_batch(1, &mut queue), 2, "the two freed slots");
        assert_eq!(queue, [6]);
        let got: Vec<u32> = std::iter::from_fn(|| mesh[1].pop(0)).collect();
        assert_eq!(got, [2, 3, 4, 5]);
        assert_eq!(mesh[0].push_batch(1, &mut queue), 1);
        assert_eq!(mesh[1].pop(0), Some(6));
        assert_eq!(mesh[1].pop(0), None);
    }

    /// The parking handshake never sleeps through a message: a consumer that parks with a long
    /// timeout still sees each of many messages promptly.
    #[test]
    fn parked_consumer_is_woken_by_every_push() {
        let inbox = Arc::new(Inbox::with_capacity(8));
        let consumer_inbox = Arc::clone(&inbox);
        let consumer = std::thread::spawn(move || {
            consumer_inbox.set_consumer(std::thread::current());
            let mut got = 0u32;
            let started = Instant::now();
            while got < 2000 {
                if let Some(_m) = consumer_inbox.pop() {
                    got += 1;
                    continue;
                }
                if consumer_inbox.prepare_park() {
                    std::thread::park_timeout(Duration::from_secs(5));
                    consumer_inbox.finish_park();
                }
                assert!(started.elapsed() < Duration::from_secs(60));
            }
            started.elapsed()
        });
        while inbox.consumer.get().is_none() {
            std::thread::yield_now();
        }
        for i in 0..2000u32 {
            while inbox.push(i).is_err() {
                std::thread::yield_now();
            }
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // 2000 messages with a 5 s park timeout: a single lost wake-up would take 5 s.
        let took = consumer.join().unwrap();
        assert!(
            took < Duration::from_secs(4),
            "a wake-up was lost: {took:?}"
        );
    }
}
