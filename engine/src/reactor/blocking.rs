//! Block I/O for the control path: one request, run on a reactor, waited for with a deadline.
//!
//! Pool metadata, shutdown flushes and similar rare work need "read these blocks" from a
//! thread that is not a reactor. [`Engine::io_wait`] spawns a one-shot task on a reactor,
//! which submits the request like any task would, and the calling thread waits for the
//! completion. Nothing here is for the data path: each call maps its own buffer.

use super::{Ctx, Engine, EngineError, Task};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use std::sync::mpsc;
use std::time::Duration;
use tidepool_bindings::dma::{DmaBuf, DmaPool};

/// Why a blocking I/O did not succeed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockingIoError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Status(IoStatus),
    #[error("cannot map a buffer of {0} bytes")]
    NoMemory(usize),
}

/// Hands the completion to the waiting thread, then leaves the reactor.
struct OneShot {
    io: Option<(BdevId, IoRequest)>,
    done: mpsc::SyncSender<Completion>,
}

impl Task for OneShot {
    fn on_start(&mut self, ctx: &mut Ctx, id: super::TaskId) {
        if let Some((bdev, mut io)) = self.io.take() {
            io.origin = IoOrigin {
                reactor: ctx.reactor_id(),
                task: id,
                tag: 0,
            };
            ctx.submit(bdev, io);
        }
    }

    fn on_complete(&mut self, ctx: &mut Ctx, c: Completion) {
        let me = c.io.origin.task;
        let _ = self.done.send(c);
        ctx.finish(me);
    }
}

impl Engine {
    /// Reads `num_blocks` blocks at `offset_blocks` of `bdev`.
    pub fn read_blocks(
        &self,
        bdev: BdevId,
        offset_blocks: u64,
        num_blocks: u32,
        timeout: Duration,
    ) -> Result<DmaBuf, BlockingIoError> {
        let bytes = num_blocks as usize * self.block_size(bdev)? as usize;
        let buf = Self::buffer(bytes)?;
        let io = request(IoType::Read, offset_blocks, num_blocks, Some(buf));
        let c = self.io_wait(bdev, io, timeout)?;
        Ok(c.io.buf.expect("a read returns its buffer"))
    }

    /// Writes `data` (whole blocks) at `offset_blocks` of `bdev`.
    pub fn write_blocks(
        &self,
        bdev: BdevId,
        offset_blocks: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), BlockingIoError> {
        let num_blocks = (data.len() / self.block_size(bdev)? as usize) as u32;
        let mut buf = Self::buffer(data.len())?;
        buf.as_mut_slice().copy_from_slice(data);
        let io = request(IoType::Write, offset_blocks, num_blocks, Some(buf));
        self.io_wait(bdev, io, timeout).map(drop)
    }

    /// Zeroes (`IoType::WriteZeroes`) or deallocates (`IoType::Unmap`) `num_blocks` blocks
    /// at `offset_blocks` of `bdev`.
    pub fn clear_blocks(
        &self,
        bdev: BdevId,
        how: IoType,
        offset_blocks: u64,
        num_blocks: u32,
        timeout: Duration,
    ) -> Result<(), BlockingIoError> {
        assert!(matches!(how, IoType::WriteZeroes | IoType::Unmap));
        self.io_wait(bdev, request(how, offset_blocks, num_blocks, None), timeout)
            .map(drop)
    }

    /// Flushes `bdev`.
    pub fn flush_wait(&self, bdev: BdevId, timeout: Duration) -> Result<(), BlockingIoError> {
        self.io_wait(bdev, request(IoType::Flush, 0, 0, None), timeout)
            .map(drop)
    }

    /// Closes every reactor's channel on a bdev that left the registry, and waits until the
    /// last one is gone (channels holding I/O close when it comes back). `Ok(n)` with the
    /// number of reactors still holding its I/O when `timeout` passed.
    pub fn close_channels(&self, bdev: BdevId, timeout: Duration) -> Result<usize, EngineError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut open = 0;
            for r in 0..self.reactor_count() {
                let closed = self.call_wait(r, Duration::from_secs(5), move |reactor| {
                    reactor.ctx().close_channel(bdev)
                })?;
                open += usize::from(!closed);
            }
            if open == 0 || std::time::Instant::now() >= deadline {
                return Ok(open);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn block_size(&self, bdev: BdevId) -> Result<u32, BlockingIoError> {
        self.registry()
            .get(bdev)
            .map(|b| b.info().block_size)
            .ok_or(BlockingIoError::Status(IoStatus::Aborted))
    }

    fn buffer(bytes: usize) -> Result<DmaBuf, BlockingIoError> {
        let pool = DmaPool::new(bytes.max(1), 1).map_err(|_| BlockingIoError::NoMemory(bytes))?;
        let mut buf = pool.take().expect("a new pool has its buffer");
        buf.set_len(bytes);
        Ok(buf)
    }

    /// Runs `io` on reactor 0 and waits up to `timeout` for a successful completion.
    fn io_wait(
        &self,
        bdev: BdevId,
        io: IoRequest,
        timeout: Duration,
    ) -> Result<Completion, BlockingIoError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.call(0, move |reactor| {
            reactor.spawn(Box::new(OneShot {
                io: Some((bdev, io)),
                done: tx,
            }));
        })?;
        let c = rx
            .recv_timeout(timeout)
            .map_err(|_| BlockingIoError::Timeout(timeout))?;
        if !c.status.is_success() {
            return Err(BlockingIoError::Status(c.status));
        }
        Ok(c)
    }
}

fn request(io_type: IoType, offset_blocks: u64, num_blocks: u32, buf: Option<DmaBuf>) -> IoRequest {
    // The origin is set by the task when it submits.
    let origin = IoOrigin {
        reactor: 0,
        task: 0,
        tag: 0,
    };
    IoRequest::new(io_type, offset_blocks, num_blocks, buf, origin)
}
