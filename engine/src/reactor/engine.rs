//! Runs reactors on pinned threads.
//!
//! Each reactor thread pins itself to its core, then loops: `poll(now)`, account the time
//! to busy or idle, and when the reactor has been idle for `park_after` with nothing in
//! flight, park until the next timer or a push to its inbox (see `ring` for the handshake).
//! A busy reactor never parks, so it pays nothing for the feature; an idle one costs no CPU.
//!
//! Stopping lets each reactor drain the I/O its channels hold (up to 10 s) before it exits.
//!
//! Other threads reach a reactor only through its inbox: [`Engine::call`] runs a closure on
//! it, [`Engine::call_wait`] also waits for the closure's result, with a deadline; a call
//! that times out is cancelled (its closure never runs later).

use super::{Message, Reactor, ReactorConfig, ReactorId};
use crate::bdev::BdevRegistry;
use crate::load::StateTable;
use crate::ring::{Inbox, Lanes};
use crate::time::{self, Nanos};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How an engine runs its reactors.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One reactor per listed core, in this order.
    pub cores: Vec<usize>,
    /// Pin each reactor thread to its core.
    pub pin: bool,
    /// Idle time before a reactor parks; `None` never parks (pure busy polling).
    pub park_after: Option<Duration>,
    /// Longest single park, so a reactor re-checks its state at least this often.
    pub max_park: Duration,
    pub reactor: ReactorConfig,
}

impl EngineConfig {
    pub fn new(cores: Vec<usize>) -> EngineConfig {
        EngineConfig {
            cores,
            pin: true,
            park_after: Some(Duration::from_millis(1)),
            max_park: Duration::from_millis(100),
            reactor: ReactorConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("an engine needs at least one core")]
    NoCores,
    #[error("reactor {0} does not exist")]
    NoSuchReactor(usize),
    #[error("reactor {0} did not take the message in time (inbox full)")]
    InboxFull(usize),
    #[error("reactor {0} did not answer in time (the call was cancelled: it did not run)")]
    Timeout(usize),
    #[error("reactor {0} started the call but did not finish it in time: it looks stuck")]
    Stuck(usize),
    #[error("starting a reactor thread: {0}")]
    Spawn(String),
}

/// Counters one reactor publishes; written only by its thread, read by anyone (relaxed:
/// each is an independent statistic).
#[derive(Default)]
struct Published {
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    parks: AtomicU64,
    polls: AtomicU64,
}

/// A snapshot of one reactor's time, as SPDK's `framework_get_reactors` reports it (ticks are
/// nanoseconds: tick rate 1e9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactorStats {
    pub reactor: ReactorId,
    pub core: usize,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub parks: u64,
    pub polls: u64,
    pub wakeups: u64,
}

struct Handle {
    core: usize,
    thread: Option<JoinHandle<()>>,
    published: Arc<Published>,
}

pub struct Engine {
    inboxes: Arc<[Arc<Inbox<Message>>]>,
    handles: Vec<Handle>,
    stop: Arc<AtomicBool>,
    registry: Arc<BdevRegistry>,
    /// Where the reactors' load monitors publish (see `load`).
    state: Arc<StateTable>,
}

impl Engine {
    pub fn start(config: EngineConfig, registry: Arc<BdevRegistry>) -> Result<Engine, EngineError> {
        if config.cores.is_empty() {
            return Err(EngineError::NoCores);
        }
        // Calibrate the clock before any reactor reads it.
        time::now();
        let inboxes = Reactor::inboxes(config.cores.len(), config.reactor.inbox_capacity);
        let mut lanes = Lanes::mesh(config.cores.len(), config.reactor.inbox_capacity).into_iter();
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicUsize::new(config.cores.len()));
        let state = StateTable::new(config.cores.len());
        let mut engine = Engine {
            inboxes: Arc::clone(&inboxes),
            handles: Vec::new(),
            stop: Arc::clone(&stop),
            registry: Arc::clone(&registry),
            state: Arc::clone(&state),
        };
        for (i, &core) in config.cores.iter().enumerate() {
            let published = Arc::new(Published::default());
            let lanes = lanes.next().expect("one element of the mesh per core");
            let thread = {
                let (inboxes, registry, stop, published, state, draining) = (
                    Arc::clone(&inboxes),
                    Arc::clone(&registry),
                    Arc::clone(&stop),
                    Arc::clone(&published),
                    Arc::clone(&state),
                    Arc::clone(&draining),
                );
                let config = config.clone();
                std::thread::Builder::new()
                    .name(format!("reactor_{core}"))
                    .spawn(move || {
                        let reactor = Reactor::new(
                            i as ReactorId,
                            inboxes,
                            lanes,
                            registry,
                            config.reactor.clone(),
                            state,
                        );
                        let shared = Shutdown {
                            stop: &stop,
                            draining: &draining,
                        };
                        run_reactor(reactor, core, &config, shared, &published);
                    })
                    .map_err(|e| EngineError::Spawn(e.to_string()))?
            };
            engine.handles.push(Handle {
                core,
                thread: Some(thread),
                published,
            });
        }
        Ok(engine)
    }

    pub fn reactor_count(&self) -> usize {
        self.handles.len()
    }

    /// The state table the reactors publish their load samples to.
    pub fn state_table(&self) -> &Arc<StateTable> {
        &self.state
    }

    pub fn registry(&self) -> &Arc<BdevRegistry> {
        &self.registry
    }

    /// The core each reactor runs on.
    pub fn cores(&self) -> Vec<usize> {
        self.handles.iter().map(|h| h.core).collect()
    }

    /// Runs `f` on reactor `reactor`; waits up to a second for room in its inbox.
    pub fn call(
        &self,
        reactor: usize,
        f: impl FnOnce(&mut Reactor) + Send + 'static,
    ) -> Result<(), EngineError> {
        let inbox = self
            .inboxes
            .get(reactor)
            .ok_or(EngineError::NoSuchReactor(reactor))?;
        let mut msg = Message::Call(Box::new(f));
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match inbox.push(msg) {
                Ok(()) => return Ok(()),
                Err(back) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(_) => return Err(EngineError::InboxFull(reactor)),
            }
        }
    }

    /// Runs `f` on reactor `reactor` and returns its result, waiting up to `timeout`.
    ///
    /// A timeout cancels the call: `Err(Timeout)` means `f` never ran and never will, so a
    /// caller that gives up can treat the call as not made (a `start_copy` that arrived late
    /// would otherwise mirror into an extent its caller never reserved). The caller and the
    /// reactor race for one atomic claim: the reactor runs `f` only if it takes the claim
    /// first; the caller, at its deadline, cancels only if it takes it first. If the reactor
    /// won (it is running `f` right now), the caller waits for the result once more, up to
    /// `timeout`: `f` runs inside one poll step and ends promptly unless the reactor is stuck,
    /// which is `Err(Stuck)`, and then `f`'s effect is unknown.
    pub fn call_wait<R: Send + 'static>(
        &self,
        reactor: usize,
        timeout: Duration,
        f: impl FnOnce(&mut Reactor) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // WAITING until one side claims it: RUNNING (the reactor) or CANCELLED (the caller).
        let claim = Arc::new(AtomicU8::new(WAITING));
        let taken = Arc::clone(&claim);
        self.call(reactor, move |r| {
            // AcqRel with the caller's compare_exchange below: exactly one of the two wins.
            if taken
                .compare_exchange(WAITING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = tx.send(f(r));
            }
        })?;
        match rx.recv_timeout(timeout) {
            Ok(result) => return Ok(result),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The reactor dropped the closure unrun: it is stopping.
                return Err(EngineError::Timeout(reactor));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if claim
            .compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Err(EngineError::Timeout(reactor));
        }
        rx.recv_timeout(timeout)
            .map_err(|_| EngineError::Stuck(reactor))
    }

    /// As [`Engine::call_wait`], but a timeout does not cancel `f`: it still runs when the
    /// reactor gets to it. For calls whose late run is wanted rather than harmful (stopping a
    /// copy: better late than mirroring on forever). `Err(Timeout)` then means "not yet".
    pub fn call_wait_or_later<R: Send + 'static>(
        &self,
        reactor: usize,
        timeout: Duration,
        f: impl FnOnce(&mut Reactor) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.call(reactor, move |r| {
            let _ = tx.send(f(r));
        })?;
        rx.recv_timeout(timeout)
            .map_err(|_| EngineError::Timeout(reactor))
    }

    /// Pushes a message from outside the reactors (for example an I/O from a client thread).
    pub fn push(&self, reactor: usize, msg: Message) -> Result<(), Message> {
        match self.inboxes.get(reactor) {
            Some(inbox) => inbox.push(msg),
            None => Err(msg),
        }
    }

    pub fn stats(&self) -> Vec<ReactorStats> {
        self.handles
            .iter()
            .enumerate()
            .map(|(i, h)| ReactorStats {
                reactor: i as ReactorId,
                core: h.core,
                busy_ns: h.published.busy_ns.load(Ordering::Relaxed),
                idle_ns: h.published.idle_ns.load(Ordering::Relaxed),
                parks: h.published.parks.load(Ordering::Relaxed),
                polls: h.published.polls.load(Ordering::Relaxed),
                wakeups: self.inboxes[i].wakeups(),
            })
            .collect()
    }

    /// Stops every reactor and joins its thread. Channels close as reactors drop, and a
    /// channel with I/O in flight waits for it (see `bindings::uring`).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        for inbox in self.inboxes.iter() {
            inbox.wake();
        }
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Pins the calling thread to `core` (for client threads that must not share a reactor's
/// core). Returns false when the host refuses.
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// What the reactors share about stopping.
struct Shutdown<'a> {
    /// Set by [`Engine::stop`]: leave the poll loop and drain.
    stop: &'a AtomicBool,
    /// Reactors that still have I/O of their own in flight, sent away or waiting to go out.
    draining: &'a AtomicUsize,
}

fn run_reactor(
    mut reactor: Reactor,
    core: usize,
    config: &EngineConfig,
    shutdown: Shutdown,
    published: &Published,
) {
    let stop = shutdown.stop;
    if config.pin {
        // Pinning can fail in a restricted cpuset; the reactor still runs, just unpinned.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
    }
    // Wake from a park on time rather than up to 50 µs late.
    let _ = tidepool_bindings::os::set_timer_slack_ns(1_000);
    reactor.inbox().set_consumer(std::thread::current());
    let park_after = config.park_after.map(|d| d.as_nanos() as Nanos);
    let max_park = config.max_park.as_nanos() as Nanos;
    let (mut busy_ns, mut idle_ns, mut parks, mut polls) = (0u64, 0u64, 0u64, 0u64);
    let mut last = time::now();
    let mut last_busy = last;
    let mut last_publish = last;
    while !stop.load(Ordering::Acquire) {
        let result = reactor.poll(last);
        let now = time::now();
        polls += 1;
        if result == super::PollResult::Busy {
            busy_ns += now - last;
            last_busy = now;
        } else {
            idle_ns += now - last;
            // An idle poll hints the core that this is a spin (PAUSE on x86): a reactor that
            // waits on another's pieces then leaves the core's pipeline to its sibling
            // hyperthread, which may be that very reactor. Side by side, a two-reactor volume
            // on null members ran 1.10x faster with it (BENCHMARKS.md, volume section).
            std::hint::spin_loop();
            if let Some(after) = park_after {
                if now - last_busy >= after && reactor.can_park() {
                    let until = reactor
                        .next_timer_due()
                        .map_or(now + max_park, |due| due.min(now + max_park));
                    if until > now && reactor.prepare_park() && reactor.announce_park() {
                        parks += 1;
                        std::thread::park_timeout(Duration::from_nanos(until - now));
                        reactor.inbox().finish_park();
                    }
                }
            }
        }
        let after = time::now();
        idle_ns += after - now;
        last = after;
        // Publish a few hundred times a second at most: the counters are for humans and
        // the balancer, and a store per poll would be pure overhead.
        if after - last_publish > 2_000_000 || polls % 4096 == 0 {
            published.busy_ns.store(busy_ns, Ordering::Relaxed);
            published.idle_ns.store(idle_ns, Ordering::Relaxed);
            published.parks.store(parks, Ordering::Relaxed);
            published.polls.store(polls, Ordering::Relaxed);
            last_publish = after;
        }
    }
    drain(&mut reactor, shutdown.draining);
    published.busy_ns.store(busy_ns, Ordering::Relaxed);
    published.idle_ns.store(idle_ns, Ordering::Relaxed);
    published.parks.store(parks, Ordering::Relaxed);
    published.polls.store(polls, Ordering::Relaxed);
}

/// Drains a stopping reactor: I/O already taken completes before the reactor (and its
/// channels) goes away, and so does I/O it sent to other reactors, whose completions come
/// back through it (a piece it passed on to a shard's new owner, say). It keeps polling until
/// every reactor is done, so that a request a peer sends it late in the peer's own drain is
/// served rather than stranded: a reactor counts itself out of `draining` while it has
/// nothing of its own left (nothing in flight, sent away or waiting to go out) and back in
/// when it has. Nothing it has sent can be lost when the count reaches zero: a request it
/// sent keeps it counted until the completion is back, and a completion it sent keeps the
/// receiver counted until it has run. (A request a task starts on a reactor that had already
/// counted itself out may find its peers gone once the count touched zero: it waits for the
/// deadline, as every request to another reactor did before the count.)
fn drain(reactor: &mut Reactor, draining: &AtomicUsize) {
    let deadline = time::now() + DRAIN_DEADLINE_NS;
    let mut counted_in = true;
    loop {
        let ctx = reactor.ctx();
        let busy = ctx.io_outstanding() > 0 || ctx.io_sent_away() > 0 || ctx.has_outgoing();
        if busy != counted_in {
            if busy {
                draining.fetch_add(1, Ordering::SeqCst);
            } else {
                draining.fetch_sub(1, Ordering::SeqCst);
            }
            counted_in = busy;
        }
        if (!counted_in && draining.load(Ordering::SeqCst) == 0) || time::now() >= deadline {
            return;
        }
        reactor.poll(time::now());
    }
}

/// The claim on a [`Engine::call_wait`] closure: nobody has it yet, the reactor runs it, or
/// its caller gave up on it.
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;

/// Longest a stopping reactor waits for its in-flight I/O.
const DRAIN_DEADLINE_NS: Nanos = 10_000_000_000;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
