//! The engine's threads: parking and waking over the lanes.

use super::*;
use crate::bdev::Completion;
use crate::reactor::{Ctx, Task, TaskId};
use std::sync::mpsc::{sync_channel, SyncSender};

/// Sends every notification it gets to the test thread.
struct Catcher {
    tx: SyncSender<u64>,
}

impl Task for Catcher {
    fn on_complete(&mut self, _: &mut Ctx, _: Completion) {}
    fn on_notify(&mut self, _: &mut Ctx, value: u64) {
        let _ = self.tx.send(value);
    }
}

/// Answers every notification to a task on another reactor.
struct Echo {
    to: (ReactorId, TaskId),
}

impl Task for Echo {
    fn on_complete(&mut self, _: &mut Ctx, _: Completion) {}
    fn on_notify(&mut self, ctx: &mut Ctx, value: u64) {
        ctx.notify(self.to.0, self.to.1, value);
    }
}

/// Two reactors that park after 1 ms of idleness pass a value there and back over their
/// lanes after both have parked again, many times: each round trip has to wake a parked
/// reactor twice (0 -> 1, then 1 -> 0). A lost wake-up would leave the message until the
/// reactor's next timer (its load sample, every 100 ms): round trips of ~50 ms on average
/// instead of well under a millisecond, which the median shows without tripping on one slow
/// round of a noisy host.
#[test]
fn a_message_on_a_lane_wakes_a_parked_peer() {
    let mut config = EngineConfig::new(vec![0, 1]);
    config.pin = false;
    config.park_after = Some(Duration::from_millis(1));
    config.max_park = Duration::from_secs(10);
    let engine = Engine::start(config, Arc::new(BdevRegistry::new())).unwrap();
    let wait = Duration::from_secs(5);
    let (tx, rx) = sync_channel(16);
    let catcher = engine
        .call_wait(0, wait, move |r| r.spawn(Box::new(Catcher { tx })))
        .unwrap();
    let echo = engine
        .call_wait(1, wait, move |r| {
            r.spawn(Box::new(Echo { to: (0, catcher) }))
        })
        .unwrap();
    let parks = |e: &Engine| e.stats().iter().map(|s| s.parks).collect::<Vec<_>>();
    let mut trips = Vec::new();
    for round in 0..20u64 {
        // A reactor publishes its park count when it wakes; once both have moved, both
        // have parked since the last round, and 10 ms later (1 ms idle) they park again.
        let before = parks(&engine);
        let deadline = Instant::now() + wait;
        while parks(&engine)
            .iter()
            .zip(&before)
            .any(|(now, then)| now == then)
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: the reactors never parked"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(10));
        let sent = Instant::now();
        engine
            .call(0, move |r| r.ctx().notify(1, echo, round))
            .unwrap();
        assert_eq!(
            rx.recv_timeout(wait),
            Ok(round),
            "round {round}: the value came back"
        );
        trips.push(sent.elapsed());
    }
    engine.stop();
    trips.sort();
    let median = trips[trips.len() / 2];
    assert!(
        median < Duration::from_millis(20),
        "median round trip between parked reactors {median:?} (all: {trips:?})"
    );
}

/// Sends one read to reactor 1 when it starts and tells the test thread when it comes back.
struct SendAway {
    bdev: crate::bdev::BdevId,
    pool: crate::DmaPool,
    done: SyncSender<bool>,
}

impl Task for SendAway {
    fn on_start(&mut self, ctx: &mut Ctx, id: TaskId) {
        let mut buf = self.pool.take().expect("a buffer");
        buf.set_len(512);
        let origin = crate::bdev::IoOrigin {
            reactor: ctx.reactor_id(),
            task: id,
            tag: 0,
        };
        let io = crate::bdev::IoRequest::new(crate::bdev::IoType::Read, 0, 1, Some(buf), origin);
        ctx.submit_on(1, self.bdev, io);
    }
    fn on_complete(&mut self, _: &mut Ctx, c: Completion) {
        let _ = self.done.send(c.status.is_success());
    }
}

/// A reactor that stops while I/O it sent to another reactor is still out waits for the
/// completion (it comes back through this reactor's remote slot), as it waits for its own.
#[test]
fn a_stopping_reactor_waits_for_io_it_sent_to_another() {
    let registry = Arc::new(BdevRegistry::new());
    let null = serde_json::json!({"name": "N0", "num_blocks": 64, "block_size": 512});
    crate::config::create_bdev(&registry, "bdev_null_create", null).unwrap();
    // 300 ms reads: the stop comes while the read is out on reactor 1.
    let slow = serde_json::json!({"base_bdev_name": "N0", "name": "Slow",
        "avg_read_latency": 300_000, "p99_read_latency": 300_000,
        "avg_write_latency": 10, "p99_write_latency": 10});
    let (bdev, _) = crate::config::create_bdev(&registry, "bdev_delay_create", slow).unwrap();
    let mut config = EngineConfig::new(vec![0, 1]);
    config.pin = false;
    let engine = Engine::start(config, registry).unwrap();
    let (tx, rx) = sync_channel(1);
    let pool = crate::DmaPool::new(512, 1).unwrap();
    let task = SendAway {
        bdev,
        pool,
        done: tx,
    };
    engine
        .call_wait(0, Duration::from_secs(5), move |r| r.spawn(Box::new(task)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    engine.stop();
    assert_eq!(
        rx.try_recv(),
        Ok(true),
        "the read's completion reached its task before reactor 0 stopped"
    );
}

/// Reads from `slow` here when it starts; when that read is back, reads from `fast` on
/// reactor 1, and tells the test thread when that one is back.
struct LocalThenAway {
    slow: crate::bdev::BdevId,
    fast: crate::bdev::BdevId,
    pool: crate::DmaPool,
    done: SyncSender<bool>,
}

impl LocalThenAway {
    fn read(&self, ctx: &mut Ctx, id: TaskId, tag: u64) -> crate::bdev::IoRequest {
        let mut buf = self.pool.take().expect("a buffer");
        buf.set_len(512);
        let origin = crate::bdev::IoOrigin {
            reactor: ctx.reactor_id(),
            task: id,
            tag,
        };
        crate::bdev::IoRequest::new(crate::bdev::IoType::Read, 0, 1, Some(buf), origin)
    }
}

impl Task for LocalThenAway {
    fn on_start(&mut self, ctx: &mut Ctx, id: TaskId) {
        let io = self.read(ctx, id, 0);
        ctx.submit(self.slow, io);
    }
    fn on_complete(&mut self, ctx: &mut Ctx, c: Completion) {
        if c.io.origin.tag == 0 {
            let io = self.read(ctx, c.io.origin.task, 1);
            ctx.submit_on(1, self.fast, io);
        } else {
            let _ = self.done.send(c.status.is_success());
        }
    }
}

/// A reactor with nothing of its own to drain keeps serving its peers until they are done
/// too: reactor 0 sends a request to reactor 1 only after its own slow read, well after the
/// stop, and reactor 1 (idle at the stop) still executes it, at once.
#[test]
fn a_request_sent_late_in_a_peers_drain_is_served() {
    let registry = Arc::new(BdevRegistry::new());
    let null = serde_json::json!({"name": "N0", "num_blocks": 64, "block_size": 512});
    let (fast, _) = crate::config::create_bdev(&registry, "bdev_null_create", null).unwrap();
    let slow = serde_json::json!({"base_bdev_name": "N0", "name": "Slow",
        "avg_read_latency": 300_000, "p99_read_latency": 300_000,
        "avg_write_latency": 10, "p99_write_latency": 10});
    let (slow, _) = crate::config::create_bdev(&registry, "bdev_delay_create", slow).unwrap();
    let mut config = EngineConfig::new(vec![0, 1]);
    config.pin = false;
    let engine = Engine::start(config, registry).unwrap();
    let (tx, rx) = sync_channel(1);
    let pool = crate::DmaPool::new(512, 2).unwrap();
    let task = LocalThenAway {
        slow,
        fast,
        pool,
        done: tx,
    };
    engine
        .call_wait(0, Duration::from_secs(5), move |r| r.spawn(Box::new(task)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    engine.stop();
    let took = started.elapsed();
    assert_eq!(rx.try_recv(), Ok(true), "the late request was served");
    assert!(
        took < Duration::from_secs(5),
        "the stop waited {took:?} (the drain's deadline is 10 s)"
    );
}

/// A `call_wait` that times out has given up on its closure: the closure must not run later
/// (a late `start_copy`, say, would mirror into an extent nobody reserved), and the caller is
/// told so by the timeout.
#[test]
fn a_call_wait_that_timed_out_never_runs_its_closure_later() {
    let mut config = EngineConfig::new(vec![0]);
    config.pin = false;
    let engine = Engine::start(config, Arc::new(BdevRegistry::new())).unwrap();
    // Keep the reactor inside a call until the test lets it go.
    let (release, held) = sync_channel::<()>(1);
    engine
        .call(0, move |_| {
            let _ = held.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let late = engine.call_wait(0, Duration::from_millis(20), move |_| {
        flag.store(true, Ordering::SeqCst);
    });
    assert_eq!(late, Err(EngineError::Timeout(0)));
    release.send(()).unwrap();
    // The inbox runs in order: once this call is answered, the timed-out one had its turn.
    engine.call_wait(0, Duration::from_secs(5), |_| ()).unwrap();
    assert!(
        !ran.load(Ordering::SeqCst),
        "the closure of a call_wait that timed out ran later"
    );
}
