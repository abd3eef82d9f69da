//! `--bench lanes`: what the lane mesh alone costs, without reactors or I/O.
//!
//! Two threads pinned to the first two cores of the engine's set play the two ends of a
//! crossed request: the first keeps [`IN_FLIGHT`] messages out on its lane to the second, the
//! second sends each one back on its own lane, and the first sends each returning message out
//! again. Both gather their messages and publish them [`BATCH`] at a time, and whatever is
//! left at the end of each pass, as reactors do. A round trip is one message each way: the
//! transport part of one crossed request (its submit and its completion).
//!
//! It runs five times, with the same traffic in slots of different kinds: the reactors' own
//! lane message ([`LaneMsg`], a `Notify`, so every slot is the size the I/O messages use: 32
//! bytes), the inbox's [`Message`] (which carries a whole request: what the lanes carried until
//! requests went on them in a compact form), and plain values of 16, 32 and 40 bytes. The
//! plain 32-byte value against the lane message is what the enum's handling costs (moves,
//! matches, drop glue) at the same size; 16 bytes is what a still more compact encoding would
//! save. Compare the figure with a `--remote` I/O run on null bdevs, where every request
//! crosses: the difference is the engine's own work per crossing, not the rings'.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool::reactor::{LaneMsg, Message};
use tidepool::ring::Lanes;

/// Messages kept in flight: the 256 requests of two q128 jobs.
const IN_FLIGHT: usize = 256;
/// Messages gathered before a batch is published (the reactors' `SEND_BATCH`).
const BATCH: usize = 64;
/// Messages taken off the lane per pass (the reactors' default `inbox_batch`).
const TAKE: usize = 128;
/// Slots per lane (the reactors' default inbox capacity, all of it on the one lane of two).
const LANE_SLOTS: usize = 4096;

/// A message the benchmark can stamp with its number and its trip count, and read back.
trait Payload: Send + 'static {
    fn new(id: u32, trip: u64) -> Self;
    fn id(&self) -> u32;
    fn trip(&self) -> u64;
}

impl Payload for LaneMsg {
    fn new(id: u32, trip: u64) -> LaneMsg {
        LaneMsg::Notify {
            task: id,
            value: trip,
        }
    }
    fn id(&self) -> u32 {
        match self {
            LaneMsg::Notify { task, .. } => *task,
            _ => unreachable!("the benchmark sends only notifications"),
        }
    }
    fn trip(&self) -> u64 {
        match self {
            LaneMsg::Notify { value, .. } => *value,
            _ => unreachable!("the benchmark sends only notifications"),
        }
    }
}

impl Payload for Message {
    fn new(id: u32, trip: u64) -> Message {
        Message::Notify {
            task: id,
            value: trip,
        }
    }
    fn id(&self) -> u32 {
        match self {
            Message::Notify { task, .. } => *task,
            _ => unreachable!("the benchmark sends only notifications"),
        }
    }
    fn trip(&self) -> u64 {
        match self {
            Message::Notify { value, .. } => *value,
            _ => unreachable!("the benchmark sends only notifications"),
        }
    }
}

/// A plain value of `W` words (no drop glue): a request's slot and status or offset in the
/// first two, the rest what a fuller encoding would add. 16, 32 (the lane message's size) and
/// 40 bytes are measured.
struct Plain<const W: usize>([u64; W]);

impl<const W: usize> Payload for Plain<W> {
    fn new(id: u32, trip: u64) -> Plain<W> {
        let mut words = [0; W];
        words[0] = id as u64;
        words[1] = trip;
        Plain(words)
    }
    fn id(&self) -> u32 {
        self.0[0] as u32
    }
    fn trip(&self) -> u64 {
        self.0[1]
    }
}

/// Round trips per second between `cores[0]` and `cores[1]` for each message size.
pub fn lanes(cores: &[usize], duration: Duration) -> anyhow::Result<Value> {
    let [a, b, ..] = cores else {
        anyhow::bail!("--bench lanes needs two cores (-m 0x3, say)");
    };
    let runs = [
        measure::<LaneMsg>("lane_message", *a, *b, duration)?,
        measure::<Message>("inbox_message", *a, *b, duration)?,
        measure::<Plain<2>>("plain_16_message", *a, *b, duration)?,
        measure::<Plain<4>>("plain_32_message", *a, *b, duration)?,
        measure::<Plain<5>>("plain_40_message", *a, *b, duration)?,
    ];
    let mut report = json!({"in_flight": IN_FLIGHT, "batch": BATCH});
    for (key, bytes, per_s) in runs {
        println!(
            "lanes, {} ({bytes} B): {:.1} M round trips/s, {:.1} ns per round trip on each core",
            key.replace('_', " "),
            per_s / 1e6,
            1e9 / per_s
        );
        report[key] = json!({"message_bytes": bytes, "round_trips_per_s": per_s,
                             "ns_per_round_trip_per_core": 1e9 / per_s});
    }
    Ok(json!({ "lanes": report }))
}

/// The report's key, the slot size and the round trips per second for messages of type `T`.
fn measure<T: Payload>(
    key: &'static str,
    a: usize,
    b: usize,
    duration: Duration,
) -> anyhow::Result<(&'static str, usize, f64)> {
    Ok((
        key,
        std::mem::size_of::<T>(),
        round_trips::<T>(a, b, duration)?,
    ))
}

fn round_trips<T: Payload>(a: usize, b: usize, duration: Duration) -> anyhow::Result<f64> {
    let mut mesh = Lanes::<T>::mesh(2, LANE_SLOTS);
    let far_end = mesh.pop().expect("a mesh of two");
    let near_end = mesh.pop().expect("a mesh of two");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || echo(far_end, b, &stop))
    };
    let result = drive(near_end, a, duration);
    stop.store(true, Ordering::Relaxed);
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    let per_s = result?;
    echoed?;
    Ok(per_s)
}

/// The first end: sends [`IN_FLIGHT`] messages, then sends each returning one out again.
fn drive<T: Payload>(mut lanes: Lanes<T>, core: usize, duration: Duration) -> anyhow::Result<f64> {
    pin(core)?;
    let mut out: Vec<T> = (0..IN_FLIGHT as u32).map(|id| T::new(id, 0)).collect();
    lanes.push_batch(1, &mut out);
    // The trip each message is on: one that comes back on another trip was lost, duplicated
    // or garbled on the way.
    let mut trips = vec![0u64; IN_FLIGHT];
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        let taken = pass(&mut lanes, 1, &mut out, |msg| {
            let (id, trip) = (msg.id() as usize, msg.trip());
            anyhow::ensure!(
                trips.get(id) == Some(&trip),
                "message {id} came back on trip {trip}, expected {:?}",
                trips.get(id)
            );
            trips[id] = trip + 1;
            Ok(T::new(id as u32, trip + 1))
        })?;
        let before = done;
        done += taken as u64;
        // The clock is read once every 4096 round trips.
        if done >> 12 != before >> 12 && start.elapsed() >= duration {
            break;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// The second end: sends every message back.
fn echo<T: Payload>(mut lanes: Lanes<T>, core: usize, stop: &AtomicBool) -> anyhow::Result<()> {
    pin(core)?;
    let mut out: Vec<T> = Vec::with_capacity(IN_FLIGHT);
    while !stop.load(Ordering::Relaxed) {
        pass(&mut lanes, 0, &mut out, Ok)?;
    }
    Ok(())
}

/// One pass of a poll loop, as a reactor does it: takes at most [`TAKE`] messages off the one
/// incoming lane, sends `reply(message)` for each towards peer `to`, [`BATCH`] at a time and
/// what is left at the end. Returns how many it took.
fn pass<T: Payload>(
    lanes: &mut Lanes<T>,
    to: usize,
    out: &mut Vec<T>,
    mut reply: impl FnMut(T) -> anyhow::Result<T>,
) -> anyhow::Result<usize> {
    let mut taken = 0;
    while taken < TAKE {
        let Some(msg) = lanes.pop(0) else { break };
        taken += 1;
        out.push(reply(msg)?);
        if out.len() >= BATCH {
            lanes.push_batch(to, out);
        }
    }
    lanes.push_batch(to, out);
    Ok(taken)
}

fn pin(core: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        tidepool::reactor::engine::pin_current_thread(core),
        "could not pin a thread to core {core}"
    );
    Ok(())
}
