//! One benchmark job: a task on a reactor that keeps `depth` I/Os in flight against one bdev
//! until its end time, recording each I/O's latency in its own HdrHistogram.
//!
//! Offsets are aligned to the I/O size. Sequential jobs walk their range and wrap; random ones
//! draw uniformly. `verify` writes a pattern that encodes the offset and a pass number, reads
//! it back into the same buffer and compares; each write+read pair counts as two I/Os. Jobs
//! that share a bdev get disjoint slices of it, so verify never races with itself.
//!
//! The hot path reads the clock once per completion: that reading ends one I/O and starts the
//! next. Live counters are plain relaxed stores (one writer), read once a second by the main
//! thread.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use tidepool::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoType};
use tidepool::reactor::{Ctx, ReactorId, Task, TaskId};
use tidepool::rng::Rng;
use tidepool::time::{self, Nanos};
use tidepool::{DmaBuf, DmaPool};

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    Rw,
    RandRw,
    Verify,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            "verify" => Workload::Verify,
            _ => return None,
        })
    }

    fn random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }

    pub fn mixed(self) -> bool {
        matches!(self, Workload::Rw | Workload::RandRw)
    }
}

/// Live counters the main thread reads each second. Each job's sit on cache lines of their
/// own (128 bytes: a line and its prefetch pair): the job stores `ios` on every I/O, and two
/// jobs' counters on one line would make the reactors' cores trade it on every I/O.
#[derive(Default)]
#[repr(align(128))]
pub struct JobLive {
    pub ios: AtomicU64,
    pub errors: AtomicU64,
}

/// What a job reports when it ends.
pub struct JobResult {
    pub index: usize,
    pub ios: u64,
    pub errors: u64,
    pub elapsed_ns: Nanos,
    pub latency_ns: Histogram<u64>,
    pub first_verify_error: Option<String>,
}

pub struct JobSpec {
    pub index: usize,
    pub bdev: BdevId,
    /// Reactor that executes the I/O (the job's own, or a peer with `--remote`).
    pub exec_reactor: ReactorId,
    pub workload: Workload,
    pub read_percent: u32,
    pub depth: usize,
    pub io_blocks: u32,
    pub block_size: u32,
    /// The slice of the bdev this job uses, in blocks.
    pub first_block: u64,
    pub range_blocks: u64,
    pub duration_ns: Nanos,
    pub seed: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    submitted_ns: Nanos,
    offset_blocks: u64,
    /// Verify only: the write of this pass is done, the read-back is in flight.
    reading_back: bool,
    pass: u64,
}

pub struct Job {
    spec: JobSpec,
    id: TaskId,
    my_reactor: ReactorId,
    slots: Vec<Slot>,
    /// Buffers of idle slots (a slot's buffer travels with its I/O while in flight).
    spare: Vec<Option<DmaBuf>>,
    rng: Rng,
    next_seq_block: u64,
    latency_ns: Histogram<u64>,
    ios: u64,
    errors: u64,
    inflight: usize,
    start_ns: Nanos,
    end_ns: Nanos,
    last_done_ns: Nanos,
    live: Arc<JobLive>,
    result_tx: Option<SyncSender<JobResult>>,
    first_verify_error: Option<String>,
    /// `--timeline`: this job's per-interval figures.
    timeline: Option<crate::timeline::Recorder>,
}

impl Job {
    pub fn new(
        spec: JobSpec,
        pool: &DmaPool,
        live: Arc<JobLive>,
        result_tx: SyncSender<JobResult>,
    ) -> Job {
        let bytes = spec.io_blocks as usize * spec.block_size as usize;
        let spare = (0..spec.depth)
            .map(|i| {
                let mut b = pool.take().expect("pool sized to the queue depth");
                b.set_len(bytes);
                // Writes carry a recognisable pattern rather than zeroes.
                b.as_mut_slice().fill(0x5a ^ i as u8);
                Some(b)
            })
            .collect();
        let slot = Slot {
            submitted_ns: 0,
            offset_blocks: 0,
            reading_back: false,
            pass: 0,
        };
        Job {
            slots: vec![slot; spec.depth],
            spare,
            rng: Rng::new(spec.seed ^ (spec.index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            next_seq_block: 0,
            latency_ns: crate::report::latency_histogram(),
            ios: 0,
            errors: 0,
            inflight: 0,
            start_ns: 0,
            end_ns: 0,
            last_done_ns: 0,
            id: 0,
            my_reactor: 0,
            live,
            result_tx: Some(result_tx),
            first_verify_error: None,
            timeline: None,
            spec,
        }
    }

    /// Records this job's figures per interval too (`--timeline`).
    pub fn with_timeline(mut self, recorder: crate::timeline::Recorder) -> Job {
        self.timeline = Some(recorder);
        self
    }

    fn next_offset(&mut self) -> u64 {
        let span = self.spec.range_blocks / self.spec.io_blocks as u64;
        let chunk = if self.spec.workload.random() {
            // Lemire's multiply-shift: uniform in [0, span) without a division.
            ((self.rng.next_u64() as u128 * span as u128) >> 64) as u64
        } else if self.spec.workload == Workload::Verify {
            // Never a position another slot still has in flight (its write and read-back):
            // completions come back out of order (on a volume, pieces on other reactors), so
            // the cycle can lap a slow slot. `span` >= the queue depth (checked at start-up)
            // leaves a free one within as many tries as there are slots.
            let busy = |c: u64| {
                let at = self.spec.first_block + c * self.spec.io_blocks as u64;
                self.slots
                    .iter()
                    .zip(&self.spare)
                    .any(|(s, spare)| spare.is_none() && s.offset_blocks == at)
            };
            let mut c = self.next_seq_block;
            for _ in 0..span {
                if !busy(c) {
                    break;
                }
                c = (c + 1) % span;
            }
            self.next_seq_block = (c + 1) % span;
            c
        } else {
            let c = self.next_seq_block;
            self.next_seq_block = (c + 1) % span;
            c
        };
        self.spec.first_block + chunk * self.spec.io_blocks as u64
    }

    fn pick_type(&mut self) -> IoType {
        match self.spec.workload {
            Workload::Read | Workload::RandRead => IoType::Read,
            Workload::Write | Workload::RandWrite | Workload::Verify => IoType::Write,
            Workload::Rw | Workload::RandRw => {
                if (self.rng.next_u64() % 100) < self.spec.read_percent as u64 {
                    IoType::Read
                } else {
                    IoType::Write
                }
            }
        }
    }

    /// Starts a new I/O on `slot` at time `now`.
    fn issue(&mut self, ctx: &mut Ctx, slot: usize, now: Nanos) {
        let offset = self.next_offset();
        let io_type = self.pick_type();
        let mut buf = self.spare[slot].take().expect("idle slot holds its buffer");
        let s = &mut self.slots[slot];
        s.offset_blocks = offset;
        s.submitted_ns = now;
        if self.spec.workload == Workload::Verify {
            s.pass += 1;
            s.reading_back = false;
            fill_pattern(buf.as_mut_slice(), offset, s.pass);
        }
        self.send(ctx, io_type, offset, buf, slot);
    }

    #[inline]
    fn send(&mut self, ctx: &mut Ctx, io_type: IoType, offset: u64, buf: DmaBuf, slot: usize) {
        self.inflight += 1;
        let origin = IoOrigin {
            reactor: self.my_reactor,
            task: self.id,
            tag: slot as u64,
        };
        let io = IoRequest::new(io_type, offset, self.spec.io_blocks, Some(buf), origin);
        ctx.submit_on(self.spec.exec_reactor, self.spec.bdev, io);
    }

    fn finish(&mut self, ctx: &mut Ctx) {
        if let Some(t) = self.timeline.as_mut() {
            t.finish();
        }
        if let Some(tx) = self.result_tx.take() {
            let latency_ns = std::mem::replace(
                &mut self.latency_ns,
                Histogram::new(1).expect("valid histogram"),
            );
            let _ = tx.send(JobResult {
                index: self.spec.index,
                ios: self.ios,
                errors: self.errors,
                elapsed_ns: self.last_done_ns.saturating_sub(self.start_ns).max(1),
                latency_ns,
                first_verify_error: self.first_verify_error.take(),
            });
        }
        ctx.finish(self.id);
    }
}

impl Task for Job {
    fn on_start(&mut self, ctx: &mut Ctx, id: TaskId) {
        self.id = id;
        self.my_reactor = ctx.reactor_id();
        let now = time::now();
        self.start_ns = now;
        self.end_ns = now + self.spec.duration_ns;
        if let Some(t) = self.timeline.as_mut() {
            t.start(now);
        }
        for slot in 0..self.spec.depth {
            self.issue(ctx, slot, now);
        }
    }

    fn on_complete(&mut self, ctx: &mut Ctx, c: Completion) {
        let now = time::now();
        self.inflight -= 1;
        let slot = c.io.origin.tag as usize;
        let s = self.slots[slot];
        let latency = now.saturating_sub(s.submitted_ns).max(1);
        self.latency_ns.saturating_record(latency);
        if let Some(t) = self.timeline.as_mut() {
            t.record(now, latency, c.status.is_success());
        }
        self.ios += 1;
        self.last_done_ns = now;
        let mut buf = c.io.buf.expect("benchmark I/O carries a buffer");
        if !c.status.is_success() {
            self.errors += 1;
            self.live.errors.store(self.errors, Ordering::Relaxed);
        } else if self.spec.workload == Workload::Verify {
            if !s.reading_back {
                // The write landed: read the same blocks back into the cleared buffer.
                buf.as_mut_slice().fill(0);
                self.slots[slot].reading_back = true;
                self.slots[slot].submitted_ns = now;
                self.live.ios.store(self.ios, Ordering::Relaxed);
                self.send(ctx, IoType::Read, s.offset_blocks, buf, slot);
                return;
            }
            if let Some(at) = check_pattern(buf.as_slice(), s.offset_blocks, s.pass) {
                self.errors += 1;
                self.live.errors.store(self.errors, Ordering::Relaxed);
                if self.first_verify_error.is_none() {
                    self.first_verify_error = Some(format!(
                        "verify mismatch at block {} byte {at} (pass {})",
                        s.offset_blocks, s.pass
                    ));
                }
            }
        }
        self.live.ios.store(self.ios, Ordering::Relaxed);
        self.spare[slot] = Some(buf);
        if now < self.end_ns {
            self.issue(ctx, slot, now);
        } else if self.inflight == 0 {
            self.finish(ctx);
        }
    }
}

/// Fills a buffer with 8-byte words that encode the offset, the pass and the word's index.
fn fill_pattern(buf: &mut [u8], offset_blocks: u64, pass: u64) {
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&pattern_word(offset_blocks, pass, i).to_le_bytes());
    }
}

/// The first byte offset where `buf` differs from the pattern, if any.
fn check_pattern(buf: &[u8], offset_blocks: u64, pass: u64) -> Option<usize> {
    buf.chunks_exact(8).enumerate().find_map(|(i, word)| {
        let want = pattern_word(offset_blocks, pass, i).to_le_bytes();
        (word != want).then_some(i * 8)
    })
}

#[inline]
fn pattern_word(offset_blocks: u64, pass: u64, index: usize) -> u64 {
    (offset_blocks << 24) ^ (pass << 48) ^ index as u64 ^ 0xa5a5_0000_0000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_a_flipped_byte_and_a_stale_pass() {
        let mut buf = vec![0u8; 4096];
        fill_pattern(&mut buf, 7, 3);
        assert_eq!(check_pattern(&buf, 7, 3), None);
        assert_eq!(check_pattern(&buf, 7, 2), Some(0));
        assert_eq!(check_pattern(&buf, 8, 3), Some(0));
        buf[1000] ^= 1;
        assert_eq!(check_pattern(&buf, 7, 3), Some(1000 / 8 * 8));
    }
}
