//! The simulator's member device: a bdev of its own, backed by memory, whose behaviour comes
//! from the seed.
//!
//! Every request is given a completion time when it is submitted (a latency drawn from the
//! device's own generator, now and then a long one), so completions come back out of order,
//! and overlapping requests in flight together take effect in the order they complete, not
//! the order they were sent: a write's bytes land, and a read's bytes are taken, when its
//! completion is reaped. That is what a real queue pair allows, and what the copy's
//! ordering rules (`reactor::copy`) must survive.
//!
//! Faults, each with a probability in parts per million set by the simulator and switched
//! off all at once for the liveness phase ([`SimDevice::stop_faults`]):
//! - a read fails (`EIO`) and returns nothing;
//! - a write fails (`EIO`), and writes nothing or, half the time, some of its blocks (as a
//!   device may fail a write that reached its medium in part).
//!
//! A crash (the reactors, and so the channels, dropped) lands each block of the writes still
//! queued or not, from the seed: torn writes.
//!
//! Each injected failure is logged with the range it hit and when, so the checker can tell a
//! client failure the model allows (a source extent failed under it) from one it does not.
//!
//! `plant_lost_write` makes the device acknowledge one write without writing it: the checker
//! must then fail (see `sim::tests`); it is the proof that the checker can.
//!
//! Everything runs on the simulator's one thread; the mutex is there because a bdev must be
//! `Sync`, and is never contended.

use crate::bdev::{
    Bdev, BdevChannel, BdevError, BdevInfo, Completion, IoRequest, IoStatus, IoType, IoTypeSet,
};
use crate::rng::Rng;
use crate::time::Nanos;
use serde_json::json;
use std::sync::{Arc, Mutex, MutexGuard};

/// `EIO`: what an injected failure completes with.
const EIO: i32 = 5;
/// How late a write that "does not answer" answers: three times the copy's
/// `TARGET_ANSWER_NS` in test builds (200 ms; `reactor::copy` is private to the reactor), so
/// the engine must give up on it first.
pub const HANG_NS: u64 = 600_000_000;

/// Requests one channel holds before it refuses more (`submit` returns them: the reactor's
/// nomem queue retries them).
const CHANNEL_DEPTH: usize = 64;

/// The probabilities of a device's faults, in parts per million per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub read_fail_ppm: u32,
    pub write_fail_ppm: u32,
    /// Longest ordinary latency; one request in 50 takes up to 20 times this.
    pub max_latency_ns: u64,
}

/// One injected failure: which device range, and when it completed.
#[derive(Clone, Copy, Debug)]
pub struct InjectedFailure {
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub at: Nanos,
}

struct DiskState {
    bytes: Vec<u8>,
    rng: Rng,
    faults: Faults,
    faults_on: bool,
    /// Acknowledge the next write at or past this block without writing it (a planted bug).
    plant_lost_write: Option<u64>,
    injected: Vec<InjectedFailure>,
    /// Extra write failure probability on block ranges `[start, end)` (a copy's target).
    write_fail_ranges: Vec<(u64, u64, u32)>,
    /// Requests completed.
    ops: u64,
    /// Writes that did not answer (until `HANG_NS`).
    hung: u64,
}

/// A memory-backed device with seeded latency, reordering and failures.
pub struct SimDevice {
    info: BdevInfo,
    state: Arc<Mutex<DiskState>>,
}

fn lock(m: &Mutex<DiskState>) -> MutexGuard<'_, DiskState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimDevice {
    pub fn new(name: &str, block_size: u32, num_blocks: u64, seed: u64) -> SimDevice {
        SimDevice {
            info: BdevInfo {
                name: name.to_string(),
                product_name: "tidepool simulated device",
                block_size,
                num_blocks,
                uuid: format!("00000000-0000-4000-8000-{:012x}", seed & 0xffff_ffff_ffff),
                supported: IoTypeSet::all(),
            },
            state: Arc::new(Mutex::new(DiskState {
                bytes: vec![0; (block_size as u64 * num_blocks) as usize],
                rng: Rng::new(seed),
                faults: Faults {
                    max_latency_ns: 1_000,
                    ..Faults::default()
                },
                faults_on: true,
                plant_lost_write: None,
                injected: Vec::new(),
                write_fail_ranges: Vec::new(),
                ops: 0,
                hung: 0,
            })),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Writes overlapping `[start, end)` also fail with probability `ppm` (0: no longer).
    pub fn set_range_write_fail(&self, start: u64, end: u64, ppm: u32) {
        let mut s = lock(&self.state);
        s.write_fail_ranges.retain(|r| (r.0, r.1) != (start, end));
        if ppm > 0 {
            s.write_fail_ranges.push((start, end, ppm));
        }
    }

    /// No more injected failures from now on (latency and reordering go on).
    pub fn stop_faults(&self) {
        lock(&self.state).faults_on = false;
    }

    /// Makes the next write at or past block `from_block` (client data, not the pool's
    /// metadata) be acknowledged and not done.
    pub fn plant_lost_write(&self, from_block: u64) {
        lock(&self.state).plant_lost_write = Some(from_block);
    }

    /// The failures injected so far.
    pub fn injected(&self) -> Vec<InjectedFailure> {
        lock(&self.state).injected.clone()
    }

    /// Writes that did not answer so far.
    pub fn hung(&self) -> u64 {
        lock(&self.state).hung
    }

    /// Requests completed so far.
    pub fn ops(&self) -> u64 {
        lock(&self.state).ops
    }

    /// `len` bytes from block `offset_blocks`, read straight from memory (an import, with no
    /// process running).
    pub fn read_raw(&self, offset_blocks: u64, len: usize) -> Vec<u8> {
        let at = (offset_blocks * self.info.block_size as u64) as usize;
        lock(&self.state).bytes[at..at + len].to_vec()
    }

    /// Writes `data` at block `offset_blocks` straight to memory (pool creation, an import's
    /// rewrite).
    pub fn write_raw(&self, offset_blocks: u64, data: &[u8]) {
        let at = (offset_blocks * self.info.block_size as u64) as usize;
        lock(&self.state).bytes[at..at + data.len()].copy_from_slice(data);
    }
}

impl Bdev for SimDevice {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(SimChannel {
            state: Arc::clone(&self.state),
            block_size: self.info.block_size as u64,
            queued: Vec::with_capacity(CHANNEL_DEPTH),
            seq: 0,
        }))
    }

    fn config_entry(&self) -> serde_json::Value {
        json!({"method": "sim_device", "params": {"name": self.info.name}})
    }
}

/// One request on its way: completes at `due` (ties broken by submission order).
struct Queued {
    due: Nanos,
    seq: u64,
    io: IoRequest,
}

struct SimChannel {
    state: Arc<Mutex<DiskState>>,
    block_size: u64,
    queued: Vec<Queued>,
    seq: u64,
}

impl BdevChannel for SimChannel {
    fn submit(&mut self, io: IoRequest, now: Nanos) -> Result<(), IoRequest> {
        if self.queued.len() >= CHANNEL_DEPTH {
            return Err(io);
        }
        let mut s = lock(&self.state);
        let max = s.faults.max_latency_ns.max(1);
        let end = io.offset_blocks + io.num_blocks as u64;
        // One in 8 of a range's failures is a write that does not answer (until HANG_NS).
        let hang_ppm = match io.io_type {
            IoType::Write | IoType::WriteZeroes | IoType::Unmap if s.faults_on => s
                .write_fail_ranges
                .iter()
                .filter(|r| r.0 < end && io.offset_blocks < r.1)
                .map(|r| r.2 / 8)
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        let latency = if hang_ppm > 0 && s.rng.next_u64() % 1_000_000 < hang_ppm as u64 {
            s.hung += 1;
            HANG_NS
        } else if s.rng.next_u64().is_multiple_of(50) {
            s.rng.next_u64() % (20 * max)
        } else {
            s.rng.next_u64() % max
        };
        drop(s);
        self.seq += 1;
        self.queued.push(Queued {
            due: now + 1 + latency,
            seq: self.seq,
            io,
        });
        Ok(())
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        // Due requests in completion order; the rest stay.
        let mut due: Vec<Queued> = Vec::new();
        let mut i = 0;
        while i < self.queued.len() {
            if self.queued[i].due <= now {
                due.push(self.queued.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|q| (q.due, q.seq));
        let mut n = 0;
        for q in due {
            if n >= max {
                self.queued.push(q);
                continue;
            }
            let Queued { mut io, .. } = q;
            let status = self.execute(&mut io, now);
            out.push(Completion::new(io, status));
            n += 1;
        }
        n
    }

    fn inflight(&self) -> usize {
        self.queued.len()
    }
}

/// A channel goes only when its reactor does: the process crashed. What the device had not
/// done yet may still land, in part: each block of a write or zeroing in the queue lands or
/// not, from the seed (a torn write).
impl Drop for SimChannel {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        self.queued.sort_by_key(|q| (q.due, q.seq));
        for q in &self.queued {
            land_in_part(&mut s, &q.io, self.block_size as usize);
        }
    }
}

/// Lands each block of a write or zeroing `io`, or not, from the seed: a write torn by a
/// crash, or one the device failed after it reached the medium in part.
fn land_in_part(s: &mut DiskState, io: &IoRequest, bs: usize) {
    if !matches!(
        io.io_type,
        IoType::Write | IoType::WriteZeroes | IoType::Unmap
    ) {
        return;
    }
    for i in 0..io.num_blocks as usize {
        if !s.rng.next_u64().is_multiple_of(2) {
            continue;
        }
        let at = (io.offset_blocks as usize + i) * bs;
        if at + bs > s.bytes.len() {
            continue;
        }
        match (&io.buf, io.io_type) {
            (Some(buf), IoType::Write) => {
                s.bytes[at..at + bs].copy_from_slice(&buf.as_slice()[i * bs..(i + 1) * bs])
            }
            (_, IoType::Write) => {}
            _ => s.bytes[at..at + bs].fill(0),
        }
    }
}

impl SimChannel {
    /// Does what `io` asks, now, or injects a failure.
    fn execute(&mut self, io: &mut IoRequest, now: Nanos) -> IoStatus {
        let mut s = lock(&self.state);
        s.ops += 1;
        let bs = self.block_size;
        let range = (io.offset_blocks * bs) as usize
            ..((io.offset_blocks + io.num_blocks as u64) * bs) as usize;
        let end = io.offset_blocks + io.num_blocks as u64;
        let fail_ppm = match io.io_type {
            IoType::Read => s.faults.read_fail_ppm,
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => s
                .write_fail_ranges
                .iter()
                .filter(|r| r.0 < end && io.offset_blocks < r.1)
                .map(|r| r.2)
                .fold(s.faults.write_fail_ppm, u32::max),
            IoType::Flush => 0,
        };
        if s.faults_on && fail_ppm > 0 && (s.rng.next_u64() % 1_000_000) < fail_ppm as u64 {
            s.injected.push(InjectedFailure {
                offset_blocks: io.offset_blocks,
                num_blocks: io.num_blocks as u64,
                at: now,
            });
            // A failed write may have reached the medium, in part (half of them do here).
            if s.rng.next_u64().is_multiple_of(2) {
                land_in_part(&mut s, io, bs as usize);
            }
            return IoStatus::Failed { errno: EIO };
        }
        if range.end > s.bytes.len() {
            return IoStatus::Invalid;
        }
        match io.io_type {
            IoType::Read => {
                let Some(buf) = io.buf.as_mut() else {
                    return IoStatus::Invalid;
                };
                buf.as_mut_slice()[..range.len()].copy_from_slice(&s.bytes[range]);
            }
            IoType::Write => {
                let Some(buf) = io.buf.as_ref() else {
                    return IoStatus::Invalid;
                };
                if s.plant_lost_write.is_some_and(|b| io.offset_blocks >= b) {
                    s.plant_lost_write = None;
                    return IoStatus::Success;
                }
                s.bytes[range.clone()].copy_from_slice(&buf.as_slice()[..range.len()]);
            }
            IoType::WriteZeroes | IoType::Unmap => s.bytes[range].fill(0),
            IoType::Flush => {}
        }
        IoStatus::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::IoOrigin;
    use crate::DmaPool;

    fn io(pool: &DmaPool, io_type: IoType, byte: u8, tag: u64) -> IoRequest {
        let mut b = pool.take().expect("room");
        b.set_len(512);
        b.as_mut_slice().fill(byte);
        let origin = IoOrigin {
            reactor: 0,
            task: 0,
            tag,
        };
        IoRequest::new(io_type, 0, 1, Some(b), origin)
    }

    fn run(ch: &mut Box<dyn BdevChannel>, t: &mut Nanos, want: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        while out.len() < want {
            *t += 100;
            ch.poll(*t, 16, &mut out);
            assert!(*t < 1_000_000_000, "the device did not answer");
        }
        out
    }

    /// Whether a completed read's buffer holds only `byte`.
    fn holds_only(c: &Completion, byte: u8) -> bool {
        let buf = c.io.buf.as_ref().expect("a read has its buffer");
        buf.as_slice().iter().all(|&b| b == byte)
    }

    /// Two writes to one block in flight together land in the order they complete, which
    /// the seed decides; a read sees the last; a failure is logged, and its block landed or
    /// not (both happen).
    #[test]
    fn overlapping_writes_land_in_completion_order_and_failures_are_logged() {
        let pool = DmaPool::new(512, 16).unwrap();
        let (mut reordered, mut failed_landed) = (0, 0);
        for seed in 1..=40 {
            let d = SimDevice::new("T", 512, 8, seed);
            d.set_faults(Faults {
                max_latency_ns: 10_000,
                ..Faults::default()
            });
            let mut ch = d.open_channel().unwrap();
            let mut t = 0;
            ch.submit(io(&pool, IoType::Write, 1, 1), t).unwrap();
            ch.submit(io(&pool, IoType::Write, 2, 2), t).unwrap();
            let done = run(&mut ch, &mut t, 2);
            let last = done[1].io.origin.tag as u8;
            reordered += usize::from(last == 1);
            ch.submit(io(&pool, IoType::Read, 0, 3), t).unwrap();
            let read = run(&mut ch, &mut t, 1);
            assert!(holds_only(&read[0], last));
            d.set_faults(Faults {
                write_fail_ppm: 1_000_000,
                max_latency_ns: 10,
                ..Faults::default()
            });
            ch.submit(io(&pool, IoType::Write, 9, 4), t).unwrap();
            let failed = run(&mut ch, &mut t, 1);
            assert_eq!(failed[0].status, IoStatus::Failed { errno: EIO });
            assert_eq!(d.injected().len(), 1);
            ch.submit(io(&pool, IoType::Read, 0, 5), t).unwrap();
            let read = run(&mut ch, &mut t, 1);
            let landed = holds_only(&read[0], 9);
            assert!(landed || holds_only(&read[0], last));
            failed_landed += usize::from(landed);
        }
        assert!(
            (3..=37).contains(&failed_landed),
            "{failed_landed} of 40 failed writes landed"
        );
        assert!(
            (5..=35).contains(&reordered),
            "{reordered} of 40 seeds reordered"
        );
    }
}
