//! The `uring` bdev: a regular file or a block device through io_uring.
//!
//! Each reactor's channel is its own ring ([`UringQueue`]) on a shared open file. The file is
//! opened with O_DIRECT by default (the page cache would hide the device), registered with
//! every ring, and every DMA pool whose buffers pass through a ring is registered too. IOPOLL
//! (NVMe poll queues) and SQPOLL are options. Flush is fsync, unmap punches a hole (a discard
//! on a block device), write-zeroes is fallocate ZERO_RANGE.

use super::{
    check_block_size, check_uuid, new_uuid, Bdev, BdevChannel, BdevError, BdevInfo, Completion,
    IoRequest, IoStatus, IoType, IoTypeSet,
};
use crate::time::Nanos;
use serde::Deserialize;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;
use tidepool_bindings::os;
use tidepool_bindings::uring::{UringConfig, UringOp, UringQueue};

fn yes() -> bool {
    true
}

fn default_queue_depth() -> u32 {
    256
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
}

pub struct UringBdev {
    info: BdevInfo,
    params: UringCreateParams,
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
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if p.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(&p.filename)
            .map_err(|e| BdevError::os(format!("opening '{}'", p.filename), e))?;
        let meta = file
            .metadata()
            .map_err(|e| BdevError::os(format!("stat '{}'", p.filename), e))?;
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
        let ring = UringConfig {
            entries: p.queue_depth,
            fixed_buffers: p.fixed_buffers,
            iopoll: p.iopoll,
            sqpoll_idle_ms: p.sqpoll_idle_ms,
        };
        // Probe once here, so a kernel or file that refuses the ring fails the create call
        // rather than the first I/O.
        UringQueue::new(
            Arc::new(file.try_clone().map_err(|e| BdevError::os("dup", e))?),
            &ring,
        )
        .map_err(|e| BdevError::os(format!("io_uring on '{}'", p.filename), e))?;
        Ok(UringBdev {
            info: BdevInfo {
                name: p.name.clone(),
                product_name: "URING bdev",
                block_size,
                num_blocks,
                uuid: p.uuid.clone().unwrap_or_else(new_uuid),
                supported: IoTypeSet::all(),
            },
            params: p.clone(),
            file: Arc::new(file),
            ring,
        })
    }
}

impl Bdev for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let queue = UringQueue::new(Arc::clone(&self.file), &self.ring)
            .map_err(|e| BdevError::os(format!("io_uring for '{}'", self.info.name), e))?;
        let depth = self.ring.entries.next_power_of_two() as usize;
        Ok(Box::new(UringChannel {
            queue,
            block_size: self.info.block_size as u64,
            requests: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
        }))
    }

    fn driver_specific(&self) -> serde_json::Value {
        json!({"uring": {"filename": self.params.filename, "direct": self.params.direct,
            "fixed_buffers": self.params.fixed_buffers, "iopoll": self.params.iopoll,
            "sqpoll_idle_ms": self.params.sqpoll_idle_ms, "queue_depth": self.params.queue_depth}})
    }

    fn config_entry(&self) -> serde_json::Value {
        json!({"method": "bdev_uring_create", "params": {
            "name": self.info.name, "filename": self.params.filename,
            "block_size": self.info.block_size, "uuid": self.info.uuid,
            "direct": self.params.direct, "fixed_buffers": self.params.fixed_buffers,
            "iopoll": self.params.iopoll, "sqpoll_idle_ms": self.params.sqpoll_idle_ms,
            "queue_depth": self.params.queue_depth}})
    }
}

struct UringChannel {
    queue: UringQueue,
    block_size: u64,
    /// Requests in flight (without their buffers, which the queue holds), by slot.
    requests: Vec<Option<IoRequest>>,
    free: Vec<u32>,
}

impl BdevChannel for UringChannel {
    fn submit(&mut self, mut io: IoRequest, _now: Nanos) -> Result<(), IoRequest> {
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
        match self.queue.push(op, offset, len, io.buf.take(), slot as u64) {
            Ok(()) => {
                self.requests[slot as usize] = Some(io);
                Ok(())
            }
            Err(buf) => {
                self.free.push(slot);
                io.buf = buf;
                Err(io)
            }
        }
    }

    fn poll(&mut self, _now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        // A failed enter leaves the entries queued; the next poll tries again.
        let _ = self.queue.flush();
        let requests = &mut self.requests;
        let free = &mut self.free;
        let block_size = self.block_size;
        self.queue.reap(max, |done| {
            let slot = done.user_data as u32;
            let mut io = requests[slot as usize]
                .take()
                .expect("completion for an empty request slot");
            free.push(slot);
            io.buf = done.buf;
            let expected = if io.io_type.has_data() {
                io.num_blocks as i64 * block_size as i64
            } else {
                0
            };
            let status = match done.result {
                r if r < 0 => IoStatus::Failed { errno: -r },
                r if io.io_type.has_data() && r as i64 != expected => {
                    // A short transfer: the file shrank under us, or the device is failing.
                    IoStatus::Failed { errno: libc::EIO }
                }
                _ => IoStatus::Success,
            };
            out.push(Completion::new(io, status));
        })
    }

    fn inflight(&self) -> usize {
        self.queue.inflight()
    }
}
