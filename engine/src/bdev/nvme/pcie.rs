//! The PCIe transport of the `nvme` bdev: one reactor's channel is its own I/O queue pair on
//! the controller, driven through VFIO (see [`controller`](super::controller)).
//!
//! Contract: see the module above. The channel submits without a system call, rings the
//! doorbell once per poll step, reaps by phase tag, and after a reset or a surprise removal
//! hands back what it held as failed (EIO, ENODEV). Nothing is retried here.

use super::controller::Controller;
use super::io_status;
use crate::bdev::{BdevChannel, Completion, DoneQueue, IoRequest, IoStatus, IoType};
use crate::time::Nanos;
use std::sync::Arc;
use tidepool_bindings::nvme::queue::{Command, QueuePair, Refused};

/// How often a channel looks for timed-out commands and a fatal controller status.
const CHECK_INTERVAL_NS: Nanos = 100_000_000;

pub struct NvmeChannel {
    ctrl: Arc<Controller>,
    nsid: u32,
    block_shift: u32,
    flush_has_work: bool,
    timeout_ns: u64,
    /// None after a reset took the queue, until the next request makes a new one.
    qp: Option<QueuePair>,
    /// The controller's reset generation `qp` belongs to.
    generation: u64,
    /// Requests in flight (their buffers are in the queue pair), by slot, with when they went.
    requests: Vec<Option<(IoRequest, Nanos)>>,
    free: Vec<u32>,
    /// Requests answered without the device (no work, or refused).
    done: DoneQueue,
    next_check_ns: Nanos,
}

impl NvmeChannel {
    /// Opens this reactor's queue pair on namespace `nsid`.
    pub fn open(
        ctrl: &Arc<Controller>,
        nsid: u32,
        block_size: u32,
    ) -> Result<NvmeChannel, super::controller::NvmeError> {
        let block_shift = block_size.trailing_zeros();
        let generation = ctrl.generation();
        let qp = ctrl.create_io_queue(nsid, block_shift)?;
        let slots = qp.entries() as usize;
        Ok(NvmeChannel {
            ctrl: Arc::clone(ctrl),
            nsid,
            block_shift,
            flush_has_work: ctrl.identity().has_volatile_write_cache(),
            timeout_ns: ctrl.command_timeout().as_nanos() as u64,
            qp: Some(qp),
            generation,
            requests: (0..slots).map(|_| None).collect(),
            free: (0..slots as u32).rev().collect(),
            done: DoneQueue::with_capacity(slots),
            next_check_ns: 0,
        })
    }

    /// Fails every request a reset took, and drops the dead queue pair.
    fn catch_up_with_reset(&mut self) {
        let Some(mut qp) = self.qp.take() else {
            self.generation = self.ctrl.generation();
            return;
        };
        if let Some(halted) = self.ctrl.halted_since_reset() {
            let (requests, free, done) = (&mut self.requests, &mut self.free, &mut self.done);
            qp.abandon_all(halted, |c| {
                if let Some((mut io, _)) = requests[c.user_data as usize].take() {
                    free.push(c.user_data as u32);
                    io.buf = c.buf;
                    done.push(io, IoStatus::Failed { errno: libc::EIO });
                }
            });
        } else {
            // Gone without a halt proof: keep the queue (its memory leaks on drop).
            log::error!("nvme {}: queue taken by a failed reset", self.ctrl.name());
        }
        drop(qp);
        self.generation = self.ctrl.generation();
    }

    fn command(&self, io: &IoRequest) -> Option<Command> {
        let (nsid, lba, blocks) = (self.nsid, io.offset_blocks, io.num_blocks);
        Some(match io.io_type {
            IoType::Read => Command::Read { nsid, lba, blocks },
            IoType::Write => Command::Write { nsid, lba, blocks },
            IoType::Flush if self.flush_has_work => Command::Flush { nsid },
            IoType::Flush => return None,
            IoType::WriteZeroes => Command::WriteZeroes { nsid, lba, blocks },
            IoType::Unmap => Command::Deallocate { nsid, lba, blocks },
        })
    }

    fn check_health(&mut self, now: Nanos) {
        if now < self.next_check_ns {
            return;
        }
        self.next_check_ns = now + CHECK_INTERVAL_NS;
        if self.ctrl.check_gone() {
            self.fail_gone();
            return;
        }
        if self.qp.as_ref().is_none_or(|q| q.inflight() == 0) {
            return;
        }
        let oldest = self.requests.iter().flatten().map(|(_, at)| *at).min();
        let reason = if self.ctrl.fatal() {
            Some("controller fatal status (CSTS.CFS)".to_string())
        } else {
            oldest
                .filter(|&at| now.saturating_sub(at) > self.timeout_ns)
                .map(|_| {
                    format!(
                        "a command had no completion within {} ms",
                        self.timeout_ns / 1_000_000
                    )
                })
        };
        if let Some(reason) = reason {
            if let Err(e) = self.ctrl.reset(self.generation, &reason) {
                log::error!("nvme {}: reset failed: {e}", self.ctrl.name());
            }
            self.catch_up_with_reset();
        }
    }

    /// Once the controller is gone: fails everything in flight with ENODEV if the device can
    /// do no more DMA (it reads all ones); a device the kernel merely asked back still
    /// completes what it holds, so its queue stays until that comes back.
    fn fail_gone(&mut self) {
        let Some(halted) = self.ctrl.halted_now() else {
            return;
        };
        if let Some(mut qp) = self.qp.take() {
            let (requests, free, done) = (&mut self.requests, &mut self.free, &mut self.done);
            qp.abandon_all(halted, |c| {
                if let Some((mut io, _)) = requests[c.user_data as usize].take() {
                    free.push(c.user_data as u32);
                    io.buf = c.buf;
                    let errno = libc::ENODEV;
                    done.push(io, IoStatus::Failed { errno });
                }
            });
        }
    }
}

impl BdevChannel for NvmeChannel {
    fn submit(&mut self, mut io: IoRequest, now: Nanos) -> Result<(), IoRequest> {
        self.check_health(now);
        if self.ctrl.is_gone() {
            self.fail_gone();
            self.done.push(
                io,
                IoStatus::Failed {
                    errno: libc::ENODEV,
                },
            );
            return Ok(());
        }
        if self.generation != self.ctrl.generation() {
            self.catch_up_with_reset();
        }
        let Some(cmd) = self.command(&io) else {
            self.done.push(io, IoStatus::Success);
            return Ok(());
        };
        if self.qp.is_none() {
            match self.ctrl.create_io_queue(self.nsid, self.block_shift) {
                Ok(qp) => self.qp = Some(qp),
                Err(e) => {
                    log::error!("nvme {}: no I/O queue: {e}", self.ctrl.name());
                    let errno = if self.ctrl.is_gone() {
                        libc::ENODEV
                    } else {
                        libc::EIO
                    };
                    self.done.push(io, IoStatus::Failed { errno });
                    return Ok(());
                }
            }
        }
        let qp = self.qp.as_mut().expect("made above");
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        match qp.submit(cmd, io.buf.take(), slot as u64) {
            Ok(()) => {
                self.requests[slot as usize] = Some((io, now));
                Ok(())
            }
            Err(Refused::Full(buf)) => {
                self.free.push(slot);
                io.buf = buf;
                Err(io)
            }
            Err(Refused::TooLarge(buf)) => {
                self.free.push(slot);
                io.buf = buf;
                self.done.push(io, IoStatus::Invalid);
                Ok(())
            }
        }
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        if self.generation != self.ctrl.generation() {
            self.catch_up_with_reset();
        }
        let mut n = self.done.drain_into(max, out);
        if let Some(qp) = self.qp.as_mut() {
            // Checked again here: a reset on another reactor may have begun since.
            if self.generation == self.ctrl.generation() {
                qp.ring();
            }
            let (requests, free, ctrl) = (&mut self.requests, &mut self.free, &self.ctrl);
            n += qp.reap(max - n, |c| {
                let (mut io, _) = requests[c.user_data as usize]
                    .take()
                    .expect("a completion for a request in flight");
                free.push(c.user_data as u32);
                io.buf = c.buf;
                if !c.status.is_success() {
                    ctrl.count_error(c.status);
                }
                out.push(Completion::new(io, io_status(c.status)));
            });
        }
        self.check_health(now);
        n
    }

    fn inflight(&self) -> usize {
        self.done.len() + self.qp.as_ref().map_or(0, |q| q.inflight())
    }
}

impl Drop for NvmeChannel {
    fn drop(&mut self) {
        if let Some(qp) = self.qp.take() {
            self.ctrl.delete_io_queue(qp, self.generation);
        }
    }
}
