//! The `uring` bdev: a regular file or a block device through io_uring.
//!
//! Each reactor's channel is its own ring ([`UringQueue`]) on a shared open file. The file is
//! opened with O_DIRECT by default (the page cache would hide the device), registered with
//! every ring, and every DMA pool whose buffers pass through a ring is registered too. IOPOLL
//! (NVMe poll queues) and SQPOLL are options. Flush is fsync, unmap punches a hole (a discard
//! on a block device), write-zeroes is fallocate ZERO_RANGE. The kernel runs only reads and
//! writes on a polled ring, so an `iopoll` channel keeps a second, plain ring on the same
//! file for those three: a polled bdev offers every I/O type and can be a pool member.
//!
//! A polled read or write that the block layer has to split never completes on Linux 6.1
//! (seen in the test guest: 512 KiB reads on QEMU's NVMe with poll queues hang, 256 KiB ones
//! do not; the split parts lose their polled flag). So a polled channel sends only transfers
//! that fit the device's limits unsplit ([`polled_max_bytes`]) to the polled ring, and larger
//! ones to the side ring.

use super::{
    check_block_size, check_uuid, new_uuid, Backing, BackingId, Bdev, BdevChannel, BdevError,
    BdevInfo, Completion, IoRequest, IoStatus, IoType, IoTypeSet,
};
use crate::time::Nanos;
use serde::Deserialize;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;
use tidepool_bindings::os;
use tidepool_bindings::uring::{UringConfig, UringOp, UringQueue};

/// SPDK's product name for this backend; `bdev_get_bdevs` shows it and delete methods check it.
pub const PRODUCT_NAME: &str = "URING bdev";

fn yes() -> bool {
    true
}

fn default_queue_depth() -> u32 {
    256
}

/// Requests coalesced per submission by default (at most the queue depth).
const DEFAULT_SUBMIT_BATCH: u32 = 4;

fn default_submit_hold_us() -> u32 {
    50
}

/// `bdev_uring_create` parameters: SPDK's `name`, `filename`, `block_size`, plus tidepool's
/// ring options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringCreateParams {
    pub name: String,
    pub filename: String,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub uuid: Option<String>,
    /// Open with O_DIRECT (default true).
    #[serde(default = "yes")]
    pub direct: bool,
    /// Register DMA pools with the ring (default true).
    #[serde(default = "yes")]
    pub fixed_buffers: bool,
    /// Completion polling (NVMe poll queues; needs `direct`).
    #[serde(default)]
    pub iopoll: bool,
    /// Kernel submission polling thread with this idle time in ms.
    #[serde(default)]
    pub sqpoll_idle_ms: Option<u32>,
    /// Ring size per reactor (most I/Os in flight per channel).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Submission coalescing (see [`Coalescer`]): requests handed to the kernel together
    /// while the device is busy; 1 submits each request at once. Default 4, or the queue
    /// depth when that is smaller.
    #[serde(default)]
    pub submit_batch: Option<u32>,
    /// Longest a request waits for its batch, in µs.
    #[serde(default = "default_submit_hold_us")]
    pub submit_hold_us: u32,
}

pub struct UringBdev {
    info: BdevInfo,
    params: UringCreateParams,
    /// The largest transfer a polled channel sends to its polled ring.
    polled_max: usize,
    backing: Backing,
    file: Arc<File>,
    ring: UringConfig,
}

impl UringBdev {
    pub fn create(p: &UringCreateParams) -> Result<UringBdev, BdevError> {
        if p.name.is_empty() {
            return Err(BdevError::invalid("name", "must not be empty"));
        }
        if let Some(u) = &p.uuid {
            check_uuid(u)?;
        }
        if p.iopoll && !p.direct {
            return Err(BdevError::invalid("iopoll", "needs direct: true"));
        }
        if !(1..=4096).contains(&p.queue_depth) {
            return Err(BdevError::invalid("queue_depth", "must be from 1 to 4096"));
        }
        let submit_batch = p
            .submit_batch
            .unwrap_or(DEFAULT_SUBMIT_BATCH.min(p.queue_depth));
        if !(1..=p.queue_depth).contains(&submit_batch) {
            return Err(BdevError::invalid(
                "submit_batch",
                format!("must be from 1 to queue_depth ({})", p.queue_depth),
            ));
        }
        if p.submit_hold_us > 10_000 {
            return Err(BdevError::invalid(
                "submit_hold_us",
                "must be at most 10000 (10 ms)",
            ));
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if p.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(&p.filename)
            .map_err(|e| BdevError::os(format!("opening '{}'", p.filename), e))?;
        lock_exclusively(&file, &p.filename)?;
        let meta = file
            .metadata()
            .map_err(|e| BdevError::os(format!("stat '{}'", p.filename), e))?;
        let backing = Backing {
            path: p.filename.clone(),
            id: BackingId::of(&meta),
        };
        let (size, device_block) = if meta.file_type().is_block_device() {
            let size = os::block_device_size(&file)
                .map_err(|e| BdevError::os(format!("size of '{}'", p.filename), e))?;
            let lbs = os::block_device_logical_block_size(&file)
                .map_err(|e| BdevError::os(format!("block size of '{}'", p.filename), e))?;
            (size, lbs)
        } else if meta.file_type().is_file() {
            (meta.len(), 512)
        } else {
            return Err(BdevError::invalid(
                "filename",
                format!(
                    "'{}' is neither a regular file nor a block device",
                    p.filename
                ),
            ));
        };
        let block_size = p.block_size.unwrap_or(device_block.max(4096));
        check_block_size(block_size)?;
        if block_size < device_block {
            return Err(BdevError::invalid(
                "block_size",
                format!("{block_size} is below the device's logical block size {device_block}"),
            ));
        }
        let num_blocks = size / block_size as u64;
        if num_blocks == 0 {
            return Err(BdevError::invalid(
                "filename",
                format!(
                    "'{}' is smaller than one {block_size}-byte block",
                    p.filename
                ),
            ));
        }
        let polled_max = if meta.file_type().is_block_device() {
            polled_max_bytes(&meta)
        } else {
            POLLED_MAX_FILE_BYTES
        };
        let ring = UringConfig {
            entries: p.queue_depth,
            fixed_buffers: p.fixed_buffers,
            iopoll: p.iopoll,
            sqpoll_idle_ms: p.sqpoll_idle_ms,
        };
        // Probe once here, so a kernel or file that refuses the ring fails the create call
        // rather than the first I/O.
        let mut probe = UringQueue::new(
            Arc::new(file.try_clone().map_err(|e| BdevError::os("dup", e))?),
            &ring,
        )
        .map_err(|e| BdevError::os(format!("io_uring on '{}'", p.filename), e))?;
        if p.iopoll {
            // A polled ring opens on any O_DIRECT file, but its I/O fails unless the device
            // completes by polling (NVMe poll queues): try one read.
            polled_read(&mut probe, block_size).map_err(|e| {
                BdevError::invalid(
                    "iopoll",
                    format!(
                        "a polled read of '{}' failed ({e}): polled I/O needs a file system \
                         and a device that complete it by polling (for NVMe, poll queues: \
                         nvme.poll_queues)",
                        p.filename
                    ),
                )
            })?;
        }
        Ok(UringBdev {
            info: BdevInfo {
                name: p.name.clone(),
                product_name: PRODUCT_NAME,
                block_size,
                num_blocks,
                uuid: p.uuid.clone().unwrap_or_else(new_uuid),
                // A polled channel sends what a polled ring cannot run to its side ring.
                supported: IoTypeSet::all(),
            },
            params: UringCreateParams {
                submit_batch: Some(submit_batch),
                ..p.clone()
            },
            backing,
            file: Arc::new(file),
            ring,
            polled_max,
        })
    }
}

/// The largest transfer a file (not a block device) takes polled: conservative, since the
/// filesystem's own limits are not known here.
const POLLED_MAX_FILE_BYTES: usize = 128 << 10;

/// The largest transfer a block device takes without splitting it, from its queue limits
/// (`max_sectors_kb`, and one page fewer than `max_segments` pages for a page-aligned
/// buffer); [`POLLED_MAX_FILE_BYTES`] when they cannot be read.
fn polled_max_bytes(meta: &std::fs::Metadata) -> usize {
    use std::os::unix::fs::MetadataExt;
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let read = |name: &str| -> Option<usize> {
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/queue/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    match (read("max_sectors_kb"), read("max_segments")) {
        (Some(kb), Some(segments)) => (kb << 10).min(segments.saturating_sub(1) * 4096).max(4096),
        _ => POLLED_MAX_FILE_BYTES,
    }
}

/// Takes an exclusive lock on `file` for as long as the bdev has it open: a second daemon
/// on the same file (or device) would import its pool too and hand out the same extents.
/// The kernel lets go of a file registered with a ring a little after the ring is closed, so
/// a bdev deleted just before may hold it for some milliseconds: the lock is retried for
/// [`LOCK_WAIT`].
fn lock_exclusively(file: &File, path: &str) -> Result<(), BdevError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BdevError::invalid(
                    "filename",
                    format!(
                        "'{path}' is locked by another process (another tidepoold has it open)"
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(BdevError::os(format!("locking '{path}'"), e))
            }
        }
    }
}

/// How long a uring bdev's create waits for its file's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads block 0 through `queue` and waits (up to a second) for it to complete.
fn polled_read(queue: &mut UringQueue, block_size: u32) -> std::io::Result<()> {
    let pool = tidepool_bindings::dma::DmaPool::new(block_size as usize, 1)?;
    let mut buf = pool.take().expect("a fresh pool has a buffer");
    // Pool buffers are whole pages; the read is one block (512 bytes, say).
    buf.set_len(block_size as usize);
    if queue
        .push(UringOp::Read, 0, block_size as u64, Some(buf), 0)
        .is_err()
    {
        return Err(std::io::Error::other("the ring took no request"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut result = None;
    while result.is_none() {
        if std::time::Instant::now() > deadline {
            // The queue's drop waits for the read (it owns the buffer until then).
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        queue.flush()?;
        queue.reap(1, |c| result = Some(c.result));
    }
    match result {
        Some(r) if r < 0 => Err(std::io::Error::from_raw_os_error(-r)),
        _ => Ok(()),
    }
}

impl Bdev for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn backing(&self) -> Option<&Backing> {
        Some(&self.backing)
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let queue = UringQueue::new(Arc::clone(&self.file), &self.ring)
            .map_err(|e| BdevError::os(format!("io_uring for '{}'", self.info.name), e))?;
        let depth = self.ring.entries.next_power_of_two() as usize;
        let side = match self.params.iopoll {
            true => {
                let plain = UringConfig {
                    entries: SIDE_RING_ENTRIES,
                    fixed_buffers: false,
                    iopoll: false,
                    sqpoll_idle_ms: None,
                };
                Some(
                    UringQueue::new(Arc::clone(&self.file), &plain).map_err(|e| {
                        BdevError::os(format!("side io_uring for '{}'", self.info.name), e)
                    })?,
                )
            }
            false => None,
        };
        Ok(Box::new(UringChannel {
            queue,
            side,
            polled_max: self.polled_max,
            block_size: self.info.block_size as u64,
            requests: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            coalescer: Coalescer {
                batch: self.params.submit_batch.unwrap_or(1) as usize,
                hold: self.params.submit_hold_us as Nanos * 1000,
                oldest_queued: None,
            },
        }))
    }

    fn driver_specific(&self) -> serde_json::Value {
        json!({"uring": {"filename": self.params.filename, "direct": self.params.direct,
            "fixed_buffers": self.params.fixed_buffers, "iopoll": self.params.iopoll,
            "sqpoll_idle_ms": self.params.sqpoll_idle_ms, "queue_depth": self.params.queue_depth,
            "submit_batch": self.params.submit_batch,
            "submit_hold_us": self.params.submit_hold_us}})
    }

    fn config_entry(&self) -> serde_json::Value {
        json!({"method": "bdev_uring_create", "params": {
            "name": self.info.name, "filename": self.params.filename,
            "block_size": self.info.block_size, "uuid": self.info.uuid,
            "direct": self.params.direct, "fixed_buffers": self.params.fixed_buffers,
            "iopoll": self.params.iopoll, "sqpoll_idle_ms": self.params.sqpoll_idle_ms,
            "queue_depth": self.params.queue_depth, "submit_batch": self.params.submit_batch,
            "submit_hold_us": self.params.submit_hold_us}})
    }
}

/// Submission coalescing. Each call into the kernel that submits requests costs a system call
/// and, on the device, a doorbell (a VM exit under virtualisation), so a busy device is better
/// fed in batches. While the device already holds at least `batch` requests, new ones wait in
/// the submission queue until `batch` of them are queued or the oldest has waited `hold`; the
/// device stays busy meanwhile, so throughput gains and the added latency is bounded by `hold`.
/// A device holding fewer than `batch` gets every request at once: a lightly loaded queue
/// (queue depth 1, say) pays nothing.
struct Coalescer {
    batch: usize,
    hold: Nanos,
    /// When the oldest request still queued was queued.
    oldest_queued: Option<Nanos>,
}

impl Coalescer {
    fn queued_one(&mut self, now: Nanos) {
        self.oldest_queued.get_or_insert(now);
    }

    /// Whether the queued requests go to the kernel now.
    fn submit_now(&mut self, queued: usize, in_device: usize, now: Nanos) -> bool {
        let Some(since) = self.oldest_queued else {
            return false;
        };
        let go = queued >= self.batch || in_device < self.batch || now - since >= self.hold;
        if go {
            self.oldest_queued = None;
        }
        go
    }
}

/// Entries of a polled channel's side ring (flush, unmap, write zeroes).
const SIDE_RING_ENTRIES: u32 = 32;

struct UringChannel {
    queue: UringQueue,
    /// With `iopoll`: a plain ring for the operations a polled ring cannot run.
    side: Option<UringQueue>,
    /// Transfers above this many bytes go to `side` too (see the module header).
    polled_max: usize,
    block_size: u64,
    /// Requests in flight (without their buffers, which the queue holds), by slot.
    requests: Vec<Option<IoRequest>>,
    free: Vec<u32>,
    coalescer: Coalescer,
}

impl BdevChannel for UringChannel {
    fn submit(&mut self, mut io: IoRequest, now: Nanos) -> Result<(), IoRequest> {
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        let op = match io.io_type {
            IoType::Read => UringOp::Read,
            IoType::Write => UringOp::Write,
            IoType::Flush => UringOp::Fsync,
            IoType::Unmap => UringOp::PunchHole,
            IoType::WriteZeroes => UringOp::ZeroRange,
        };
        let offset = io.offset_blocks * self.block_size;
        let len = io.num_blocks as u64 * self.block_size;
        let polled_max = self.polled_max;
        if let Some(side) = self
            .side
            .as_mut()
            .filter(|_| !io.io_type.has_data() || len as usize > polled_max)
        {
            return match side.push(op, offset, len, io.buf.take(), slot as u64) {
                Ok(()) => {
                    self.requests[slot as usize] = Some(io);
                    // Rare and not worth batching: to the kernel now.
                    let _ = side.flush();
                    Ok(())
                }
                Err(buf) => {
                    self.free.push(slot);
                    io.buf = buf;
                    Err(io)
                }
            };
        }
        match self.queue.push(op, offset, len, io.buf.take(), slot as u64) {
            Ok(()) => {
                self.requests[slot as usize] = Some(io);
                self.coalescer.queued_one(now);
                Ok(())
            }
            Err(buf) => {
                self.free.push(slot);
                io.buf = buf;
                Err(io)
            }
        }
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        let queued = self.queue.queued();
        let in_device = self.queue.inflight().saturating_sub(queued);
        if self.coalescer.submit_now(queued, in_device, now) {
            // A failed or partial enter (EAGAIN under memory pressure, say) leaves entries
            // queued: they count as queued now, so the next poll submits them again rather
            // than leaving them in the ring until some other request comes.
            let _ = self.queue.flush();
            if self.queue.queued() > 0 {
                self.coalescer.queued_one(now);
            }
        } else {
            let _ = self.queue.poll_completions();
        }
        let requests = &mut self.requests;
        let free = &mut self.free;
        let block_size = self.block_size;
        let mut finish = |done: tidepool_bindings::uring::UringCompletion| {
            let slot = done.user_data as u32;
            let mut io = requests[slot as usize]
                .take()
                .expect("completion for an empty request slot");
            free.push(slot);
            io.buf = done.buf;
            let status = transfer_status(&io, done.result, block_size);
            out.push(Completion::new(io, status));
        };
        let mut reaped = 0;
        if let Some(side) = self.side.as_mut().filter(|s| s.inflight() > 0) {
            let _ = side.flush();
            reaped = side.reap(max, &mut finish);
        }
        reaped + self.queue.reap(max - reaped, &mut finish)
    }

    fn inflight(&self) -> usize {
        self.queue.inflight() + self.side.as_ref().map_or(0, |s| s.inflight())
    }
}

/// An operation's status from its result: a negative errno, or the bytes moved.
fn transfer_status(io: &IoRequest, result: i32, block_size: u64) -> IoStatus {
    let expected = if io.io_type.has_data() {
        io.num_blocks as i64 * block_size as i64
    } else {
        0
    };
    match result {
        r if r < 0 => IoStatus::Failed { errno: -r },
        r if io.io_type.has_data() && r as i64 != expected => {
            // A short transfer: the file shrank under us, or the device is failing.
            IoStatus::Failed { errno: libc::EIO }
        }
        _ => IoStatus::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::Coalescer;

    fn coalescer() -> Coalescer {
        Coalescer {
            batch: 4,
            hold: 50_000,
            oldest_queued: None,
        }
    }

    #[test]
    fn nothing_queued_means_nothing_to_submit() {
        assert!(!coalescer().submit_now(0, 10, 0));
    }

    #[test]
    fn a_lightly_loaded_device_gets_each_request_at_once() {
        let mut c = coalescer();
        c.queued_one(100);
        assert!(
            c.submit_now(1, 3, 100),
            "3 in the device is below the batch of 4"
        );
        assert_eq!(c.oldest_queued, None);
    }

    #[test]
    fn a_busy_device_gets_full_batches() {
        let mut c = coalescer();
        for (queued, now) in [(1, 100), (2, 200), (3, 300)] {
            c.queued_one(now);
            assert!(!c.submit_now(queued, 28, now), "{queued} queued are held");
        }
        c.queued_one(400);
        assert!(c.submit_now(4, 28, 400), "the fourth completes the batch");
        // The next batch is timed from its own first request, not the last batch's.
        c.queued_one(500);
        assert!(!c.submit_now(1, 32, 500));
        assert!(!c.submit_now(1, 32, 500 + 49_999));
        assert!(
            c.submit_now(1, 32, 500 + 50_000),
            "held no longer than `hold`"
        );
    }

    #[test]
    fn a_draining_device_releases_what_is_held() {
        let mut c = coalescer();
        c.queued_one(0);
        assert!(!c.submit_now(2, 4, 10));
        assert!(c.submit_now(2, 3, 20), "the device fell below the batch");
    }
}
