//! One NVMe submission/completion queue pair, polled by one thread.
//!
//! Contract (what makes the safe API sound):
//! - Every buffer a command names is owned by the queue from [`QueuePair::submit`] until its
//!   request completes: it comes back only inside a [`QueueCompletion`], so nothing else
//!   touches memory the controller may be reading or writing. The queue's own memory (the
//!   rings and one PRP-list page per command slot) lives in DMA pools it owns.
//! - A request is split into as many commands as the transfer limit (MDTS) and the 16-bit
//!   block count require; it completes once all its commands have, with the first failing
//!   command's status.
//! - Submissions only fill ring slots; [`QueuePair::ring`] writes the tail doorbell once for
//!   everything queued since the last ring. [`QueuePair::reap`] takes completions by phase
//!   tag and writes the head doorbell once per call. No interrupts are used.
//! - Memory the controller might still reach is never freed: a queue dropped while the
//!   controller may still use it (not deleted, controller not halted) leaks its rings and
//!   whatever buffers it holds, and says so in the log. [`Halted`] is the proof that the
//!   controller does no more DMA (CSTS.RDY and CC.EN both read 0, or the device is gone).

use super::pci::{Doorbell, Registers};
use super::spec::{self, CompletionEntry, Status, SubmissionEntry};
use crate::dma::{DmaBuf, DmaPool};
use std::mem::ManuallyDrop;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

/// The memory page size tidepool sets (CC.MPS = 0): 4 KiB.
pub const PAGE_BYTES: usize = 4096;
/// PRP entries in one list page; so the most pages one command moves through one list.
const PRP_PER_PAGE: usize = PAGE_BYTES / 8;
/// The most bytes one command moves: one PRP list page's worth (2 MiB).
pub const MAX_COMMAND_BYTES: usize = PRP_PER_PAGE * PAGE_BYTES;

/// What a request asks of the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        nsid: u32,
        lba: u64,
        blocks: u32,
    },
    Write {
        nsid: u32,
        lba: u64,
        blocks: u32,
    },
    Flush {
        nsid: u32,
    },
    WriteZeroes {
        nsid: u32,
        lba: u64,
        blocks: u32,
    },
    Deallocate {
        nsid: u32,
        lba: u64,
        blocks: u32,
    },
    /// An admin command as built; its data pointer is set from the buffer, if any.
    Raw(SubmissionEntry),
}

/// A finished request.
#[derive(Debug)]
pub struct QueueCompletion {
    pub user_data: u64,
    pub status: Status,
    /// Command-specific result (dword 0) of the request's last command.
    pub dw0: u32,
    pub buf: Option<DmaBuf>,
}

/// Proof that a controller does no more DMA; see the module contract.
#[derive(Clone, Copy, Debug)]
pub struct Halted(());

/// Reads the controller's state: `Some` when it is disabled and not ready, or gone.
pub fn halted(regs: &Registers) -> Option<Halted> {
    let csts = spec::Csts(regs.read32(spec::reg::CSTS));
    let cc = spec::Cc(regs.read32(spec::reg::CC));
    (csts.device_gone() || (!csts.ready() && !cc.enable())).then_some(Halted(()))
}

/// The status given to requests a controller reset took away: Command Abort Requested.
pub const ABORTED_BY_RESET: Status = Status(0x07);

/// How a queue pair is laid out.
#[derive(Clone, Copy, Debug)]
pub struct QueueGeometry {
    pub qid: u16,
    /// Ring entries (at most CAP.MQES + 1); one fewer commands can be in flight.
    pub entries: u16,
    pub doorbell_stride: u8,
    /// log2 of the namespace's block size (9 for 512 bytes, 12 for 4 KiB); 12 for admin.
    pub block_shift: u32,
    /// The most bytes one command moves (MDTS, at most [`MAX_COMMAND_BYTES`]).
    pub max_command_bytes: usize,
}

struct Pending {
    user_data: u64,
    buf: Option<DmaBuf>,
    commands_left: u16,
    status: Status,
    dw0: u32,
}

const FREE: u32 = u32::MAX;

pub struct QueuePair {
    geo: QueueGeometry,
    /// The rings and list pages are dropped only when the queue is retired (see `Drop`).
    sq: ManuallyDrop<DmaBuf>,
    cq: ManuallyDrop<DmaBuf>,
    sq_tail: u16,
    sq_rung: u16,
    cq_head: u16,
    phase: bool,
    sq_doorbell: Doorbell,
    cq_doorbell: Doorbell,
    /// For each command id: the request it belongs to, or FREE.
    cid_request: Vec<u32>,
    free_cids: Vec<u16>,
    /// One page per command id, for its PRP list or Dataset Management ranges.
    lists: ManuallyDrop<Vec<DmaBuf>>,
    requests: Vec<Option<Pending>>,
    free_requests: Vec<u32>,
    max_blocks_per_command: u32,
    /// The controller no longer uses this queue's memory (deleted, or controller halted).
    retired: bool,
}

fn pool_buf(bytes: usize) -> std::io::Result<DmaBuf> {
    DmaPool::new(bytes, 1)?
        .take()
        .ok_or_else(|| std::io::Error::other("a fresh pool has a buffer"))
}

impl QueuePair {
    /// Allocates a queue pair's memory; the controller learns of it from
    /// [`QueuePair::create_commands`] (I/O queues) or from AQA/ASQ/ACQ (the admin queue).
    pub fn new(geo: QueueGeometry, regs: &Registers) -> std::io::Result<QueuePair> {
        assert!(geo.entries >= 2, "a queue needs at least two entries");
        assert!(geo.max_command_bytes >= PAGE_BYTES && geo.block_shift >= 9);
        let max_bytes = geo.max_command_bytes.min(MAX_COMMAND_BYTES);
        let max_blocks = ((max_bytes >> geo.block_shift) as u32).clamp(1, 1 << 16);
        let entries = geo.entries as usize;
        let no_doorbell = || std::io::Error::other(format!("no doorbell for queue {}", geo.qid));
        let sq_doorbell = regs
            .doorbell(spec::doorbell_offset(geo.qid, false, geo.doorbell_stride))
            .ok_or_else(no_doorbell)?;
        let cq_doorbell = regs
            .doorbell(spec::doorbell_offset(geo.qid, true, geo.doorbell_stride))
            .ok_or_else(no_doorbell)?;
        let mut sq = pool_buf(entries * 64)?;
        let mut cq = pool_buf(entries * 16)?;
        sq.as_mut_slice().fill(0);
        cq.as_mut_slice().fill(0);
        let slots = entries - 1;
        let list_pool = DmaPool::new(PAGE_BYTES, slots)?;
        let lists = (0..slots)
            .map(|_| list_pool.take().expect("pool sized for every slot"))
            .collect();
        Ok(QueuePair {
            geo,
            sq: ManuallyDrop::new(sq),
            cq: ManuallyDrop::new(cq),
            sq_tail: 0,
            sq_rung: 0,
            cq_head: 0,
            phase: true,
            sq_doorbell,
            cq_doorbell,
            cid_request: vec![FREE; slots],
            free_cids: (0..slots as u16).rev().collect(),
            lists: ManuallyDrop::new(lists),
            requests: (0..slots).map(|_| None).collect(),
            free_requests: (0..slots as u32).rev().collect(),
            max_blocks_per_command: max_blocks,
            retired: false,
        })
    }

    pub fn qid(&self) -> u16 {
        self.geo.qid
    }

    pub fn entries(&self) -> u16 {
        self.geo.entries
    }

    /// IOVAs of the submission and completion rings (for AQA/ASQ/ACQ or the create commands).
    pub fn ring_iovas(&self) -> (u64, u64) {
        (self.sq.iova(), self.cq.iova())
    }

    /// The admin commands that create this queue pair as an I/O queue: CQ first, then SQ.
    pub fn create_commands(&self) -> [SubmissionEntry; 2] {
        let (sq, cq) = self.ring_iovas();
        let q = self.geo.qid;
        [
            SubmissionEntry::create_io_cq(q, self.geo.entries, cq),
            SubmissionEntry::create_io_sq(q, self.geo.entries, sq, q),
        ]
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.requests.len() - self.free_requests.len()
    }

    /// Commands a request needs.
    pub fn commands_for(&self, cmd: &Command) -> usize {
        match *cmd {
            Command::Read { blocks, .. } | Command::Write { blocks, .. } => {
                blocks.div_ceil(self.max_blocks_per_command) as usize
            }
            Command::WriteZeroes { blocks, .. } => blocks.div_ceil(1 << 16) as usize,
            Command::Flush { .. } | Command::Deallocate { .. } | Command::Raw(_) => 1,
        }
    }

    /// Queues a request (no doorbell yet). Hands the buffer back when the queue lacks room
    /// now, or could never take the request (it needs more commands than the queue has). Panics on a buffer too short for the transfer, or missing where one is needed: a
    /// caller's bug that would otherwise let the controller write past the buffer.
    pub fn submit(
        &mut self,
        cmd: Command,
        buf: Option<DmaBuf>,
        user_data: u64,
    ) -> Result<(), Refused> {
        assert!(!self.retired, "submit on a retired queue");
        let needed = self.commands_for(&cmd);
        if needed == 0 || needed > self.cid_request.len() {
            return Err(Refused::TooLarge(buf));
        }
        if needed > self.free_cids.len() {
            return Err(Refused::Full(buf));
        }
        let Some(request) = self.free_requests.pop() else {
            return Err(Refused::Full(buf));
        };
        let data_bytes = match cmd {
            Command::Read { blocks, .. } | Command::Write { blocks, .. } => {
                (blocks as usize) << self.geo.block_shift
            }
            _ => 0,
        };
        let base = match &buf {
            Some(b) => {
                assert!(b.len() >= data_bytes, "buffer shorter than the transfer");
                b.iova()
            }
            None => {
                assert!(data_bytes == 0, "a data transfer without a buffer");
                0
            }
        };
        let raw_len = buf.as_ref().map_or(0, |b| b.len());
        let mut done_blocks = 0u32;
        for _ in 0..needed {
            let cid = self.free_cids.pop().expect("counted above");
            self.cid_request[cid as usize] = request;
            let mut e = match cmd {
                Command::Read { nsid, lba, blocks } | Command::Write { nsid, lba, blocks } => {
                    let n = (blocks - done_blocks).min(self.max_blocks_per_command);
                    let op = if matches!(cmd, Command::Read { .. }) {
                        spec::nvm::READ
                    } else {
                        spec::nvm::WRITE
                    };
                    let mut e = SubmissionEntry::rw(op, nsid, lba + done_blocks as u64, n);
                    let off = (done_blocks as usize) << self.geo.block_shift;
                    let len = (n as usize) << self.geo.block_shift;
                    self.set_prps(&mut e, cid, base + off as u64, len);
                    done_blocks += n;
                    e
                }
                Command::WriteZeroes { nsid, lba, blocks } => {
                    let n = (blocks - done_blocks).min(1 << 16);
                    let e = SubmissionEntry::rw(
                        spec::nvm::WRITE_ZEROES,
                        nsid,
                        lba + done_blocks as u64,
                        n,
                    );
                    done_blocks += n;
                    e
                }
                Command::Flush { nsid } => SubmissionEntry::new(spec::nvm::FLUSH, nsid),
                Command::Deallocate { nsid, lba, blocks } => {
                    let page = &mut self.lists[cid as usize];
                    let range = spec::DsmRange {
                        attributes: 0,
                        blocks,
                        lba,
                    };
                    let bytes = page.as_mut_slice();
                    bytes[..16].fill(0);
                    bytes[0..4].copy_from_slice(&range.attributes.to_le_bytes());
                    bytes[4..8].copy_from_slice(&range.blocks.to_le_bytes());
                    bytes[8..16].copy_from_slice(&range.lba.to_le_bytes());
                    SubmissionEntry::deallocate(nsid, 1, page.iova())
                }
                Command::Raw(mut e) => {
                    if raw_len > 0 {
                        self.set_prps(&mut e, cid, base, raw_len.min(MAX_COMMAND_BYTES));
                    }
                    e
                }
            };
            e.set_cid(cid);
            self.push_entry(&e);
        }
        self.requests[request as usize] = Some(Pending {
            user_data,
            buf,
            commands_left: needed as u16,
            status: Status::SUCCESS,
            dw0: 0,
        });
        Ok(())
    }

    /// Points a command at `len` bytes from `iova` (page aligned): PRP1, then PRP2 as the
    /// second page or as the list of the rest in this command id's list page.
    fn set_prps(&mut self, e: &mut SubmissionEntry, cid: u16, iova: u64, len: usize) {
        debug_assert!(iova.is_multiple_of(PAGE_BYTES as u64) && len <= MAX_COMMAND_BYTES);
        let pages = len.div_ceil(PAGE_BYTES);
        e.prp1 = iova;
        e.prp2 = match pages {
            0 | 1 => 0,
            2 => iova + PAGE_BYTES as u64,
            _ => {
                let list = &mut self.lists[cid as usize];
                let bytes = list.as_mut_slice();
                for i in 1..pages {
                    let at = (i - 1) * 8;
                    let page = iova + (i * PAGE_BYTES) as u64;
                    bytes[at..at + 8].copy_from_slice(&page.to_le_bytes());
                }
                list.iova()
            }
        };
    }

    fn push_entry(&mut self, e: &SubmissionEntry) {
        let slot = self.sq.ptr() as *mut SubmissionEntry;
        // SAFETY: `sq_tail < entries` and the ring holds `entries` 64-byte entries, so the
        // slot is inside the ring's buffer, which this queue owns. The controller reads only
        // slots between its head and the tail we rang; this slot is beyond that tail (a free
        // command id guarantees a free slot: every ring slot in use holds a live command).
        unsafe { slot.add(self.sq_tail as usize).write_volatile(*e) };
        self.sq_tail = (self.sq_tail + 1) % self.geo.entries;
    }

    /// Writes the submission doorbell if anything was queued since the last ring.
    pub fn ring(&mut self) {
        if self.sq_tail != self.sq_rung {
            self.sq_doorbell.ring(self.sq_tail as u32);
            self.sq_rung = self.sq_tail;
        }
    }

    /// Whether submissions wait for [`QueuePair::ring`].
    pub fn unrung(&self) -> bool {
        self.sq_tail != self.sq_rung
    }

    fn read_entry(&self, index: u16) -> CompletionEntry {
        let slot = self.cq.ptr() as *const CompletionEntry;
        // SAFETY: `index < entries`, inside the completion ring this queue owns. The
        // controller writes entries concurrently, so the read is volatile and its phase tag is
        // checked (with an acquire fence) before the other fields are trusted.
        unsafe { slot.add(index as usize).read_volatile() }
    }

    /// Takes up to `max` finished requests, calling `done` for each; returns how many.
    pub fn reap(&mut self, max: usize, mut done: impl FnMut(QueueCompletion)) -> usize {
        let mut finished = 0;
        let mut consumed = false;
        for _ in 0..self.geo.entries {
            if finished >= max {
                break;
            }
            let e = self.read_entry(self.cq_head);
            if e.phase() != self.phase {
                break;
            }
            fence(Ordering::Acquire);
            let e = self.read_entry(self.cq_head);
            consumed = true;
            self.cq_head += 1;
            if self.cq_head == self.geo.entries {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            let cid = e.cid as usize;
            let Some(&request) = self.cid_request.get(cid).filter(|&&r| r != FREE) else {
                log::error!(
                    "nvme queue {}: completion for command id {cid}, which is not in flight",
                    self.geo.qid
                );
                continue;
            };
            self.cid_request[cid] = FREE;
            self.free_cids.push(cid as u16);
            let p = self.requests[request as usize]
                .as_mut()
                .expect("a command's request is pending");
            let status = e.status();
            if !status.is_success() && p.status.is_success() {
                p.status = status.code();
            }
            p.dw0 = e.dw0;
            p.commands_left -= 1;
            if p.commands_left == 0 {
                let p = self.requests[request as usize].take().expect("pending");
                self.free_requests.push(request);
                finished += 1;
                done(QueueCompletion {
                    user_data: p.user_data,
                    status: p.status,
                    dw0: p.dw0,
                    buf: p.buf,
                });
            }
        }
        if consumed {
            self.cq_doorbell.ring(self.cq_head as u32);
        }
        finished
    }

    /// Hands back every request in flight with [`ABORTED_BY_RESET`], once the controller is
    /// halted (a reset throws away all its queues). The queue is retired: it takes no more.
    pub fn abandon_all(&mut self, _halted: Halted, mut done: impl FnMut(QueueCompletion)) {
        self.retired = true;
        for (i, slot) in self.requests.iter_mut().enumerate() {
            if let Some(p) = slot.take() {
                self.free_requests.push(i as u32);
                done(QueueCompletion {
                    user_data: p.user_data,
                    status: ABORTED_BY_RESET,
                    dw0: 0,
                    buf: p.buf,
                });
            }
        }
        self.cid_request.fill(FREE);
    }

    /// Runs one command to completion by polling, for admin work (bring-up, queue creation).
    /// On timeout the command stays in flight (its buffer with it) and the error says so.
    pub fn run(
        &mut self,
        cmd: SubmissionEntry,
        buf: Option<DmaBuf>,
        timeout: Duration,
    ) -> Result<(Status, u32, Option<DmaBuf>), QueueError> {
        const SYNC_TAG: u64 = u64::MAX;
        if self.submit(Command::Raw(cmd), buf, SYNC_TAG).is_err() {
            return Err(QueueError::Full);
        }
        self.ring();
        let deadline = Instant::now() + timeout;
        let mut result = None;
        loop {
            self.reap(usize::MAX, |c| {
                if c.user_data == SYNC_TAG {
                    result = Some((c.status, c.dw0, c.buf));
                }
            });
            if let Some(r) = result {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(QueueError::Timeout {
                    opcode: cmd.opcode(),
                    ms: timeout.as_millis() as u64,
                });
            }
            std::hint::spin_loop();
        }
    }

    /// Deletes this I/O queue pair through `admin` (SQ, then CQ) and retires it.
    pub fn delete(&mut self, admin: &mut QueuePair, timeout: Duration) -> Result<(), QueueError> {
        let q = self.geo.qid;
        for cmd in [
            SubmissionEntry::delete_io_sq(q),
            SubmissionEntry::delete_io_cq(q),
        ] {
            let (status, _, _) = admin.run(cmd, None, timeout)?;
            if !status.is_success() {
                return Err(QueueError::Refused {
                    opcode: cmd.opcode(),
                    status,
                });
            }
        }
        self.retired = true;
        Ok(())
    }

    /// Marks the queue retired because its controller is halted (nothing in it can be used).
    pub fn retire(&mut self, _halted: Halted) {
        self.retired = true;
    }
}

/// Why [`QueuePair::submit`] did not take a request; each hands its buffer back.
#[derive(Debug)]
pub enum Refused {
    /// No room now: submit it again after completions.
    Full(Option<DmaBuf>),
    /// More commands than the queue has: it can never be taken.
    TooLarge(Option<DmaBuf>),
}

/// Why a polled command did not complete.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    #[error("the queue is full")]
    Full,
    #[error("command {opcode:#04x} did not complete within {ms} ms")]
    Timeout { opcode: u8, ms: u64 },
    #[error("command {opcode:#04x} failed: {status}")]
    Refused { opcode: u8, status: Status },
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if self.retired {
            // SAFETY: each field is dropped exactly once, here, and never used after.
            unsafe {
                ManuallyDrop::drop(&mut self.sq);
                ManuallyDrop::drop(&mut self.cq);
                ManuallyDrop::drop(&mut self.lists);
            }
            return;
        }
        // The controller may still write the rings or the buffers of requests in flight:
        // never let that memory go back to a pool (the ManuallyDrop fields stay leaked).
        let held = self.inflight();
        log::error!(
            "nvme queue {} dropped while the controller may still use it: leaking its rings \
             and {held} buffers",
            self.geo.qid
        );
        for p in self.requests.iter_mut().filter_map(Option::take) {
            std::mem::forget(p.buf);
        }
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qid", &self.geo.qid)
            .field("entries", &self.geo.entries)
            .field("inflight", &self.inflight())
            .finish()
    }
}
