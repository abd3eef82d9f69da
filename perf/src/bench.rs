//! The two measurements that are not I/O jobs:
//!
//! - `ping`: the round-trip time of a message between two reactors (a `Notify` there and back,
//!   each leg through a lock-free inbox), recorded in an HdrHistogram.
//! - `idle`: the CPU an engine with idle reactors burns over a spell, and the completion time of
//!   the first I/O submitted from outside after a second of idleness (the reactor is parked
//!   then, so the time includes its wake-up). Alternating with those trials it measures the
//!   floor under them: how long a plain thread parked as long on the same core takes to run
//!   after an unpark, which is what the host charges for waking an idle core.
//! - `rpc`: JSON-RPC calls per second and round-trip latency against a running server, from
//!   one or more concurrent clients.

use crate::report::LatencyUs;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoType};
use tidepool::reactor::{Ctx, Engine, Message, ReactorId, Task, TaskId};
use tidepool::rpc::client::RpcClient;
use tidepool::time::{self, Nanos};
use tidepool::DmaPool;

/// Answers every ping with the same value.
struct Ponger {
    peer: (ReactorId, TaskId),
}

impl Task for Ponger {
    fn on_complete(&mut self, _: &mut Ctx, _: Completion) {}
    fn on_notify(&mut self, ctx: &mut Ctx, value: u64) {
        ctx.notify(self.peer.0, self.peer.1, value);
    }
}

/// Waits for a first notification naming the ponger's task, then sends a timestamp, waits for
/// it to come back, records the round trip, repeats.
struct Pinger {
    id: TaskId,
    peer: Option<(ReactorId, TaskId)>,
    end_ns: Nanos,
    rtt_ns: Histogram<u64>,
    tx: Option<SyncSender<Histogram<u64>>>,
}

impl Task for Pinger {
    fn on_start(&mut self, _: &mut Ctx, id: TaskId) {
        self.id = id;
    }
    fn on_complete(&mut self, _: &mut Ctx, _: Completion) {}
    fn on_notify(&mut self, ctx: &mut Ctx, value: u64) {
        let Some(peer) = self.peer else {
            let peer = (1, value as TaskId);
            self.peer = Some(peer);
            ctx.notify(peer.0, peer.1, time::now());
            return;
        };
        let sent = value;
        let now = time::now();
        self.rtt_ns
            .saturating_record(now.saturating_sub(sent).max(1));
        if now < self.end_ns {
            ctx.notify(peer.0, peer.1, now);
        } else if let Some(tx) = self.tx.take() {
            let _ = tx.send(std::mem::replace(
                &mut self.rtt_ns,
                Histogram::new(1).expect("valid"),
            ));
            ctx.finish(self.id);
        }
    }
}

/// Round trips between reactor 0 and reactor 1 for `duration`.
pub fn ping(engine: &Engine, duration: Duration) -> anyhow::Result<Value> {
    anyhow::ensure!(
        engine.reactor_count() >= 2,
        "ping needs two reactors: give -m 0x3 or --cores 0,1"
    );
    let wait = Duration::from_secs(5);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let end_ns = time::now() + duration.as_nanos() as Nanos;
    let pinger_id = engine.call_wait(0, wait, move |r| {
        r.spawn(Box::new(Pinger {
            id: 0,
            peer: None,
            end_ns,
            rtt_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            tx: Some(tx),
        }))
    })?;
    let ponger_id = engine.call_wait(1, wait, move |r| {
        r.spawn(Box::new(Ponger {
            peer: (0, pinger_id),
        }))
    })?;
    // Tell the pinger who the ponger is; that starts the exchange.
    let start = Message::Notify {
        task: pinger_id,
        value: ponger_id as u64,
    };
    if engine.push(0, start).is_err() {
        anyhow::bail!("reactor 0's inbox refused the start message");
    }
    let rtt = rx.recv_timeout(duration + Duration::from_secs(10))?;
    let lat = LatencyUs::from_ns(&rtt);
    println!(
        "reactor 0 <-> reactor 1 message round trip: {} samples, avg {:.3} us, p50 {:.3} us, p99 {:.3} us, p99.9 {:.3} us",
        rtt.len(),
        lat.avg,
        lat.p50,
        lat.p99,
        lat.p99_9
    );
    Ok(
        json!({"ping": {"round_trips": rtt.len(), "round_trips_per_s": rtt.len() as f64 / duration.as_secs_f64(), "latency_us": lat}}),
    )
}

/// Stores the time of each completion, for a thread outside the engine to see.
struct Signal {
    done_at: Arc<AtomicU64>,
}

impl Task for Signal {
    fn on_complete(&mut self, _: &mut Ctx, c: Completion) {
        let now = if c.status.is_success() {
            time::now()
        } else {
            u64::MAX
        };
        // Release: the waiting thread reads the time after it sees it.
        self.done_at.store(now, Ordering::Release);
    }
}

/// CPU use of idle reactors over `duration`, then first-I/O latency after 1 s idle, `trials`
/// times, against `bdev` on reactor 0.
pub fn idle(
    engine: &Engine,
    bdev: BdevId,
    duration: Duration,
    trials: u32,
) -> anyhow::Result<Value> {
    std::thread::sleep(Duration::from_millis(500)); // let start-up settle
    let cpu0 = tidepool_cpu_ns()?;
    let t0 = Instant::now();
    std::thread::sleep(duration);
    let cpu_ns = tidepool_cpu_ns()? - cpu0;
    let wall_ns = t0.elapsed().as_nanos() as f64;
    let cpu_percent = cpu_ns as f64 / wall_ns * 100.0;
    println!(
        "{} idle reactors over {:.1} s: {:.3}% of one core",
        engine.reactor_count(),
        wall_ns / 1e9,
        cpu_percent
    );

    let done_at = Arc::new(AtomicU64::new(0));
    let signal = {
        let done_at = Arc::clone(&done_at);
        engine.call_wait(0, Duration::from_secs(5), move |r| {
            r.spawn(Box::new(Signal { done_at }))
        })?
    };
    let (block_size, _) = engine
        .call_wait(0, Duration::from_secs(5), move |r| r.ctx().geometry(bdev))?
        .ok_or_else(|| anyhow::anyhow!("the idle bench's bdev is gone"))?;
    let pool = DmaPool::new(block_size as usize, 1)?;
    // This thread spins while it waits. On reactor 0's core it would hold the core the woken
    // reactor needs (the scheduler lets a running thread finish its slice), so it moves to
    // the core of another reactor, which stays parked throughout.
    if let Some(&core) = engine.cores().get(1) {
        tidepool::reactor::engine::pin_current_thread(core);
    }
    let floor = WakeFloor::start(engine.cores()[0]);
    let mut first_io_us = Vec::new();
    let mut floor_us = Vec::new();
    for _ in 0..trials {
        std::thread::sleep(Duration::from_secs(1));
        floor_us.push(floor.measure()?);
        std::thread::sleep(Duration::from_secs(1));
        done_at.store(0, Ordering::Relaxed);
        let mut buf = pool.take().expect("the buffer came back");
        buf.set_len(block_size as usize);
        let origin = IoOrigin {
            reactor: 0,
            task: signal,
            tag: 0,
        };
        let io = IoRequest::new(IoType::Read, 0, 1, Some(buf), origin);
        let start = time::now();
        if engine.push(0, Message::Submit { bdev, io }).is_err() {
            anyhow::bail!("reactor 0's inbox refused the I/O");
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let done = loop {
            let d = done_at.load(Ordering::Acquire);
            if d != 0 {
                break d;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the first I/O did not complete within 1 s"
            );
            std::hint::spin_loop();
        };
        anyhow::ensure!(done != u64::MAX, "the first I/O failed");
        first_io_us.push(done.saturating_sub(start) as f64 / 1e3);
        // Let the buffer travel home before the next trial.
        std::thread::sleep(Duration::from_millis(5));
    }
    floor.stop();
    let max = first_io_us.iter().cloned().fold(0.0, f64::max);
    let floor_max = floor_us.iter().cloned().fold(0.0, f64::max);
    println!(
        "first I/O after 1 s idle (submitted from outside, reactor parked): {} us (max {max:.1} us)",
        list_us(&first_io_us)
    );
    println!(
        "floor: a plain thread parked 1 s on the same core runs after an unpark in {} us (max {floor_max:.1} us)",
        list_us(&floor_us)
    );
    let stats = engine.stats();
    Ok(json!({"idle": {
        "reactors": engine.reactor_count(),
        "seconds": wall_ns / 1e9,
        "cpu_percent_of_one_core": cpu_percent,
        "first_io_us": first_io_us,
        "first_io_us_max": max,
        "thread_wake_floor_us": floor_us,
        "thread_wake_floor_us_max": floor_max,
        "parks": stats.iter().map(|s| s.parks).sum::<u64>(),
    }}))
}

fn list_us(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bare thread on a reactor's core that parks until told to stamp the time: the cheapest
/// wake-up there is, so its latency is the floor under a parked reactor's.
struct WakeFloor {
    thread: std::thread::JoinHandle<()>,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    woke_at: Arc<AtomicU64>,
}

impl WakeFloor {
    fn start(core: usize) -> WakeFloor {
        let go = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let woke_at = Arc::new(AtomicU64::new(0));
        let thread = {
            let (go, stop, woke_at) = (Arc::clone(&go), Arc::clone(&stop), Arc::clone(&woke_at));
            std::thread::spawn(move || {
                tidepool::reactor::engine::pin_current_thread(core);
                while !stop.load(Ordering::Acquire) {
                    std::thread::park();
                    if go.swap(false, Ordering::AcqRel) {
                        woke_at.store(time::now(), Ordering::Release);
                    }
                }
            })
        };
        WakeFloor {
            thread,
            go,
            stop,
            woke_at,
        }
    }

    /// Wakes the thread and spins until it has run; microseconds.
    fn measure(&self) -> anyhow::Result<f64> {
        self.woke_at.store(0, Ordering::Relaxed);
        let start = time::now();
        self.go.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let woke = self.woke_at.load(Ordering::Acquire);
            if woke != 0 {
                return Ok(woke.saturating_sub(start) as f64 / 1e3);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the parked thread did not run within 1 s"
            );
            std::hint::spin_loop();
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

fn tidepool_cpu_ns() -> anyhow::Result<u64> {
    Ok(tidepool::os::process_cpu_time_ns()?)
}

/// JSON-RPC round trips against the server at `socket`: `clients` threads, each a connection
/// sending `rpc_get_methods` one call at a time for `duration`. Reports calls per second and
/// the round-trip latency distribution over all clients.
pub fn rpc(
    socket: &str,
    clients: usize,
    cores: &[usize],
    duration: Duration,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=256).contains(&clients),
        "--clients must be from 1 to 256"
    );
    let request = br#"{"jsonrpc":"2.0","method":"rpc_get_methods","id":1}"#;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_string();
            let cores = cores.to_vec();
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                if !cores.is_empty() {
                    tidepool::os::set_current_thread_affinity(&cores)?;
                }
                let mut client = RpcClient::connect(&socket, Duration::from_secs(10))?;
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    let start = time::now();
                    let response = client.call_bytes(request)?;
                    hist.record((time::now() - start).max(1))?;
                    anyhow::ensure!(
                        !response.windows(7).any(|w| w == b"\"error\""),
                        "the server answered with an error: {}",
                        String::from_utf8_lossy(&response)
                    );
                }
                Ok(hist)
            })
        })
        .collect();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for t in threads {
        let hist = t
            .join()
            .map_err(|_| anyhow::anyhow!("an RPC client thread panicked"))??;
        total.add(&hist)?;
    }
    let lat = LatencyUs::from_ns(&total);
    let calls_per_s = total.len() as f64 / duration.as_secs_f64();
    println!(
        "rpc_get_methods with {clients} client(s): {calls_per_s:.0} calls/s, round trip avg {:.1} us, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        lat.avg, lat.p50, lat.p99, lat.p99_9
    );
    Ok(
        json!({"rpc": {"clients": clients, "calls": total.len(), "calls_per_s": calls_per_s, "latency_us": lat}}),
    )
}
