//! One io_uring queue pair on one file, used by one reactor.
//!
//! The queue owns every buffer the kernel may touch: a [`DmaBuf`] is moved in with its
//! submission and handed back only with its completion, and dropping the queue waits for all
//! in-flight I/O before any buffer returns to its pool. That makes the safe API sound.
//!
//! The file is registered (fixed file 0). With `fixed_buffers`, each DMA pool whose buffers
//! pass through the queue is registered once into a sparse buffer table and its I/O uses
//! READ_FIXED / WRITE_FIXED, which skips the kernel's page pinning per I/O.

use crate::dma::{DmaBuf, PoolShared};
use io_uring::{opcode, squeue, types, IoUring};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How a queue is set up.
#[derive(Clone, Debug)]
pub struct UringConfig {
    /// Submission queue size, and so the most I/Os in flight.
    pub entries: u32,
    /// Register pools and use fixed-buffer reads and writes.
    pub fixed_buffers: bool,
    /// Poll for completions instead of interrupts (NVMe with poll queues; needs O_DIRECT).
    pub iopoll: bool,
    /// A kernel thread polls the submission queue; idle time before it sleeps, in ms.
    pub sqpoll_idle_ms: Option<u32>,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            entries: 256,
            fixed_buffers: true,
            iopoll: false,
            sqpoll_idle_ms: None,
        }
    }
}

/// Operations a queue performs on its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UringOp {
    Read,
    Write,
    Fsync,
    /// Deallocate a range (fallocate PUNCH_HOLE | KEEP_SIZE; a discard on block devices).
    PunchHole,
    /// Zero a range (fallocate ZERO_RANGE | KEEP_SIZE).
    ZeroRange,
}

/// One finished operation.
#[derive(Debug)]
pub struct UringCompletion {
    pub user_data: u64,
    /// Bytes transferred, or a negative errno.
    pub result: i32,
    pub buf: Option<DmaBuf>,
}

struct InFlight {
    user_data: u64,
    buf: Option<DmaBuf>,
}

/// Pools registered with the ring: slot -> (pool id, liveness of the pool).
struct BufferTable {
    slots: Vec<Option<(u64, Weak<PoolShared>)>>,
}

const BUFFER_TABLE_SLOTS: u32 = 64;

pub struct UringQueue {
    ring: IoUring,
    file: Arc<File>,
    inflight: Vec<Option<InFlight>>,
    free_slots: Vec<u32>,
    buffers: Option<BufferTable>,
    unsubmitted: usize,
    /// A kernel thread takes the submission queue's entries (SQPOLL): once the tail is
    /// published and the thread woken if it sleeps, none of them is this side's to submit.
    sqpoll: bool,
    /// Completions appear only after an enter with GETEVENTS (IOPOLL, DEFER_TASKRUN).
    reap_needs_enter: bool,
}

/// `IORING_ENTER_GETEVENTS` from linux/io_uring.h.
const ENTER_GETEVENTS: u32 = 1;

impl UringQueue {
    pub fn new(file: Arc<File>, config: &UringConfig) -> io::Result<UringQueue> {
        let entries = config.entries.clamp(1, 4096).next_power_of_two();
        let mut builder = IoUring::builder();
        if config.iopoll {
            builder.setup_iopoll();
        }
        let mut defer_taskrun = false;
        if let Some(idle) = config.sqpoll_idle_ms {
            builder.setup_sqpoll(idle);
        } else {
            // Completion work waits until this (single) reactor thread asks for it in
            // `flush`, instead of interrupting the busy-polling thread once per completion.
            builder.setup_single_issuer().setup_defer_taskrun();
            defer_taskrun = true;
        }
        let ring = match builder.build(entries) {
            Ok(ring) => ring,
            // Kernels before 6.1 lack DEFER_TASKRUN: fall back to default task work.
            Err(_) if defer_taskrun => {
                defer_taskrun = false;
                let mut plain = IoUring::builder();
                if config.iopoll {
                    plain.setup_iopoll();
                }
                plain.build(entries)?
            }
            Err(e) => return Err(e),
        };
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        let buffers = if config.fixed_buffers {
            ring.submitter()
                .register_buffers_sparse(BUFFER_TABLE_SLOTS)
                .ok()
                .map(|_| BufferTable {
                    slots: vec![None; BUFFER_TABLE_SLOTS as usize],
                })
        } else {
            None
        };
        Ok(UringQueue {
            ring,
            file,
            inflight: (0..entries).map(|_| None).collect(),
            free_slots: (0..entries).rev().collect(),
            buffers,
            unsubmitted: 0,
            sqpoll: config.sqpoll_idle_ms.is_some(),
            reap_needs_enter: config.iopoll || defer_taskrun,
        })
    }

    /// Whether pools are registered and fixed-buffer I/O is used.
    pub fn fixed_buffers(&self) -> bool {
        self.buffers.is_some()
    }

    /// Operations submitted and not yet reaped.
    pub fn inflight(&self) -> usize {
        self.inflight.len() - self.free_slots.len()
    }

    /// Queues one operation. `len` is in bytes; for reads and writes it must equal the
    /// buffer's length (and so fit in a u32). Returns the buffer back when the queue is full.
    pub fn push(
        &mut self,
        op: UringOp,
        offset: u64,
        len: u64,
        buf: Option<DmaBuf>,
        user_data: u64,
    ) -> Result<(), Option<DmaBuf>> {
        let Some(slot) = self.free_slots.pop() else {
            return Err(buf);
        };
        let fd = types::Fixed(0);
        let entry: squeue::Entry = match (op, &buf) {
            (UringOp::Read | UringOp::Write, Some(b)) => {
                assert_eq!(b.len() as u64, len, "buffer length must match the I/O");
                let len = len as u32;
                let fixed = self.buffer_index(b);
                match (op, fixed) {
                    (UringOp::Read, Some(i)) => opcode::ReadFixed::new(fd, b.ptr(), len, i)
                        .offset(offset)
                        .build(),
                    (UringOp::Read, None) => {
                        opcode::Read::new(fd, b.ptr(), len).offset(offset).build()
                    }
                    (_, Some(i)) => opcode::WriteFixed::new(fd, b.ptr(), len, i)
                        .offset(offset)
                        .build(),
                    (_, None) => opcode::Write::new(fd, b.ptr(), len).offset(offset).build(),
                }
            }
            (UringOp::Read | UringOp::Write, None) => panic!("read and write need a buffer"),
            (UringOp::Fsync, _) => opcode::Fsync::new(fd).build(),
            (UringOp::PunchHole, _) => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            (UringOp::ZeroRange, _) => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: the buffer the entry points at is moved into `inflight[slot]` below and stays
        // there, at a fixed address inside its pool's mapping, until this slot's completion is
        // reaped; `Drop` waits for every in-flight entry. The fixed file is `self.file`, which
        // the queue keeps open. At most `entries` slots exist, so the SQ has room.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(
            pushed.is_ok(),
            "submission queue overflow despite slot accounting"
        );
        self.inflight[slot as usize] = Some(InFlight { user_data, buf });
        self.unsubmitted += 1;
        Ok(())
    }

    /// The registered-buffer index for the buffer's pool, registering the pool on first use.
    fn buffer_index(&mut self, buf: &DmaBuf) -> Option<u16> {
        let table = self.buffers.as_mut()?;
        let id = buf.pool_id();
        if let Some(i) = table
            .slots
            .iter()
            .position(|s| matches!(s, Some((pool, _)) if *pool == id))
        {
            return Some(i as u16);
        }
        let free = table
            .slots
            .iter()
            .position(|s| s.as_ref().is_none_or(|(_, weak)| weak.strong_count() == 0))?;
        let (base, len) = buf.pool_region();
        let iov = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        // SAFETY: the iovec covers the pool's whole mapping. The kernel pins those pages for as
        // long as the slot stays registered, so the pages outlive the mapping if the pool is
        // dropped first; a slot is only reused once its pool is gone.
        let rc = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(free as u32, &[iov], None)
        };
        if rc.is_err() {
            return None;
        }
        table.slots[free] = Some((id, buf.pool_weak()));
        Some(free as u16)
    }

    /// Operations pushed but not yet handed to the kernel.
    pub fn queued(&self) -> usize {
        self.unsubmitted
    }

    /// Hands queued operations to the kernel (and, under IOPOLL or deferred task running,
    /// lets it post completions). Never blocks.
    pub fn flush(&mut self) -> io::Result<()> {
        self.enter(true)
    }

    /// Lets the kernel post completions (needed under IOPOLL and deferred task running)
    /// without handing it the queued operations. Never blocks.
    pub fn poll_completions(&mut self) -> io::Result<()> {
        self.enter(false)
    }

    fn enter(&mut self, submit: bool) -> io::Result<()> {
        let to_submit = if submit { self.unsubmitted } else { 0 };
        let reap = self.reap_needs_enter && self.inflight() > to_submit;
        if to_submit == 0 && !reap {
            return Ok(());
        }
        let entered = if reap {
            // SAFETY: a plain io_uring_enter on our own ring: `to_submit` entries were pushed
            // and synced to the SQ tail, min_complete 0 never blocks, and no argument is passed.
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit as u32,
                    0,
                    ENTER_GETEVENTS,
                    None,
                )
            }
        } else {
            self.ring.submit()
        };
        match entered {
            Ok(n) => {
                // Under SQPOLL the count returned is what the thread has not taken yet, not
                // what this call handed over; everything pushed is the thread's now.
                self.unsubmitted = match self.sqpoll {
                    true => 0,
                    false => self.unsubmitted.saturating_sub(n),
                };
                Ok(())
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reaps up to `max` completions into `sink`.
    pub fn reap(&mut self, max: usize, mut sink: impl FnMut(UringCompletion)) -> usize {
        let mut reaped = 0;
        for cqe in self.ring.completion().take(max) {
            let slot = cqe.user_data() as u32;
            let done = self.inflight[slot as usize]
                .take()
                .expect("completion for a slot that has nothing in flight");
            self.free_slots.push(slot);
            sink(UringCompletion {
                user_data: done.user_data,
                result: cqe.result(),
                buf: done.buf,
            });
            reaped += 1;
        }
        reaped
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // Buffers must not return to their pools while the kernel may still write them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.inflight() > 0 && Instant::now() < deadline {
            let _ = self.ring.submit_and_wait(1);
            self.reap(usize::MAX, drop);
        }
        // Past the deadline, leak what is left rather than hand live memory back.
        for slot in self.inflight.iter_mut() {
            if let Some(done) = slot.take() {
                std::mem::forget(done.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaPool;
    use std::os::unix::fs::OpenOptionsExt;

    fn run_to_completion(q: &mut UringQueue) -> Vec<UringCompletion> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.inflight() > 0 {
            assert!(
                Instant::now() < deadline,
                "io_uring did not complete in time"
            );
            q.flush().unwrap();
            q.reap(64, |c| out.push(c));
        }
        out
    }

    #[test]
    fn direct_write_then_read_with_fixed_buffers() {
        let dir = std::env::temp_dir().join(format!("tp-uring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let mut q = UringQueue::new(Arc::new(file), &UringConfig::default()).unwrap();
        let pool = DmaPool::new(4096, 4).unwrap();
        let mut w = pool.take().unwrap();
        w.as_mut_slice().fill(0x5a);
        q.push(UringOp::Write, 8192, 4096, Some(w), 1).unwrap();
        let done = run_to_completion(&mut q);
        assert_eq!((done[0].user_data, done[0].result), (1, 4096));
        drop(done);
        let r = pool.take().unwrap();
        q.push(UringOp::Read, 8192, 4096, Some(r), 2).unwrap();
        let done = run_to_completion(&mut q);
        assert_eq!(done[0].result, 4096);
        assert!(done[0]
            .buf
            .as_ref()
            .unwrap()
            .as_slice()
            .iter()
            .all(|&b| b == 0x5a));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
