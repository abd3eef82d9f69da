//! Inboxes: the bounded lock-free rings reactors talk through.
//!
//! An [`Inbox`] is a fixed-capacity multi-producer ring (crossbeam's `ArrayQueue`) drained by one
//! reactor. A full inbox refuses the push and hands the message back: every queue has a limit,
//! and the sender decides what to do (reactors keep a bounded backlog, see `reactor`).
//!
//! Parking handshake. A reactor that wants to sleep sets `parked`, then looks at the ring
//! once more before it parks; a producer pushes, then looks at `parked` and unparks the
//! consumer if it is set. Both sides put a SeqCst fence between their write and their read,
//! so at least one of them sees the other's write: either the consumer sees the message and
//! does not sleep, or the producer sees `parked` and wakes it. `Thread::unpark` is sticky, so
//! an unpark that lands before the park is not lost.

use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

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

    /// Pushes without the wake-up check: for a producer that pushes a batch and then calls
    /// [`Inbox::wake_if_parked`] once. Hands the message back when the ring is full.
    #[inline]
    pub fn push_quiet(&self, msg: T) -> Result<(), T> {
        self.ring.push(msg)
    }

    /// The second half of a batch of [`Inbox::push_quiet`]: the handshake of `push`, once.
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
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.ring.is_empty() {
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
