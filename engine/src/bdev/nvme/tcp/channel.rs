//! One reactor's channel on a namespace of an NVMe/TCP controller: its own I/O queue, a TCP
//! connection it polls without blocking.
//!
//! Contract, beyond the bdev contract's:
//! - The queue is opened by the controller's thread when the first request comes (and again
//!   after each reconnect); until it is up, requests wait in order.
//! - A request larger than the controller's transfer limit (MDTS, and 65536 blocks) goes out
//!   as several commands and completes with the first failing command's NVMe status.
//! - A write whose data fits the capsule (IOCCSZ) carries it there; a larger one sends it in
//!   H2CData PDUs of at most MAXH2CDATA bytes each, after the controller's R2T. Reads come
//!   back in C2HData, copied once, into the request's buffer.
//! - A queue that fails (closed, reset, a malformed or unexpected PDU, a command older than
//!   `timeout_ms`) is dropped, the controller is told, and every request it held goes back to
//!   the front of the wait, to be sent again whole on the next queue. While the controller is
//!   failing I/O (past `fast_io_fail_timeout_sec`) requests fail with EIO, and once it is lost
//!   with ENODEV (see the module above).

use super::link::Link;
use super::{AskError, Health, QueueAsk, TcpController};
use crate::bdev::nvme::io_status;
use crate::bdev::{BdevChannel, Completion, DoneQueue, IoRequest, IoStatus, IoType};
use crate::nvmf::pdu::{self, Decoded, Pdu, Transfer};
use crate::time::Nanos;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use tidepool_bindings::nvme::spec::{nvm, Status, SubmissionEntry};

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 256 << 10;
/// How often the channel looks for commands older than the timeout.
const CHECK_INTERVAL_NS: Nanos = 100_000_000;
/// How long a channel waits before asking again when every I/O queue was taken.
const NO_QUEUE_RETRY_NS: Nanos = 1_000_000_000;
/// Blocks one Read, Write or Write Zeroes names at most (NLB is 16 bits).
const MAX_NLB: u32 = 1 << 16;
/// Times a request is sent again after its queue failed before it fails with EIO (SPDK's
/// `bdev_retry_count` default): a request that takes every queue down with it (a target
/// that resets on it) must not be resent for ever.
const MAX_RESENDS: u32 = 3;
/// Sent output is dropped from the buffer's front once this much of it has gone (the buffer
/// is otherwise emptied only when all of it has, which a steady stream may never allow).
const OUTPUT_COMPACT_BYTES: usize = 1 << 20;

/// One bdev request, possibly sent as several commands.
struct Request {
    io: IoRequest,
    /// Blocks covered by the commands sent so far; `started` once the first went.
    issued: u32,
    started: bool,
    /// Commands out.
    out: u32,
    status: IoStatus,
    /// Times it went back to the wait after its queue failed.
    resends: u32,
}

impl Request {
    fn fully_issued(&self) -> bool {
        self.started && self.issued >= self.io.num_blocks
    }
}

/// One command on the wire.
struct Command {
    request: u32,
    /// Where its data sits in the request's buffer, and how much.
    at: usize,
    bytes: usize,
    io_type: IoType,
    /// A write that waits for an R2T (its data was too large for the capsule).
    after_r2t: bool,
    sent_ns: Nanos,
}

/// The channel's connection: not asked for, being opened, or up.
enum Queue {
    None,
    Asked(Arc<QueueAsk>),
    Up(Box<Wire>),
}

/// An open I/O queue.
struct Wire {
    link: Link,
    generation: u64,
    /// Bytes received: `input[consumed..filled]` is not yet taken.
    input: Vec<u8>,
    consumed: usize,
    filled: usize,
    output: Vec<u8>,
    sent: usize,
    /// Commands out, by command id.
    commands: Vec<Option<Command>>,
    free_cids: Vec<u16>,
}

pub struct TcpChannel {
    ctrl: Arc<TcpController>,
    nsid: u32,
    block_size: u32,
    flush_has_work: bool,
    timeout_ns: Nanos,
    max_command_blocks: u32,
    in_capsule_bytes: usize,
    /// The largest PDU taken from the controller.
    max_pdu: u32,
    queue: Queue,
    requests: Vec<Option<Request>>,
    free_requests: Vec<u32>,
    /// Requests with commands still to send, in order.
    waiting: VecDeque<u32>,
    done: DoneQueue,
    /// The generation whose queue this channel saw fail (it waits for the next).
    failed_generation: Option<u64>,
    retry_ask_at: Nanos,
    next_check_ns: Nanos,
}

impl TcpChannel {
    pub fn new(ctrl: Arc<TcpController>, nsid: u32, block_size: u32, timeout_ns: Nanos) -> Self {
        let max_bytes = ctrl.max_command_bytes();
        let max_command_blocks = (max_bytes / block_size).clamp(1, MAX_NLB);
        let in_capsule_bytes = ctrl.identity().in_capsule_bytes();
        TcpChannel {
            flush_has_work: ctrl.identity().has_volatile_write_cache(),
            max_pdu: max_bytes + 1024,
            ctrl,
            nsid,
            block_size,
            timeout_ns,
            max_command_blocks,
            in_capsule_bytes,
            queue: Queue::None,
            requests: Vec::new(),
            free_requests: Vec::new(),
            waiting: VecDeque::new(),
            done: DoneQueue::with_capacity(64),
            failed_generation: None,
            retry_ask_at: 0,
            next_check_ns: 0,
        }
    }

    /// Follows the controller: drops a queue of an older generation, fails what waits once
    /// I/O is to fail, asks for a queue when there is work, takes an opened one.
    fn follow_controller(&mut self, now: Nanos) {
        let health = self.ctrl.health();
        if let Queue::Up(w) = &self.queue {
            if health
                != (Health::Up {
                    generation: w.generation,
                })
            {
                self.drop_queue(None);
            }
        }
        match health {
            Health::Lost => self.fail_waiting(libc::ENODEV),
            Health::FailingIo => self.fail_waiting(libc::EIO),
            Health::Reconnecting => {}
            Health::Up { generation } => {
                if self.failed_generation == Some(generation) {
                    return;
                }
                match &self.queue {
                    Queue::None if !self.waiting.is_empty() && now >= self.retry_ask_at => {
                        self.queue = Queue::Asked(self.ctrl.ask_queue(generation));
                    }
                    Queue::Asked(ask) => {
                        let Some(result) = ask.take() else { return };
                        let asked_in = ask.generation;
                        self.queue = Queue::None;
                        match result {
                            // A queue of an older controller is no good (dropped: it closes).
                            Ok(_) if asked_in != generation => {}
                            Ok(link) => {
                                self.queue = Queue::Up(Box::new(Wire::new(link, generation)))
                            }
                            Err(AskError::Connection(why)) => {
                                self.failed_generation = Some(asked_in);
                                self.ctrl.report_failure(asked_in, why);
                            }
                            Err(AskError::NotUp) => {}
                            Err(e @ AskError::NoQueue(_)) => {
                                log::error!("nvme {}: {e}", self.ctrl.name());
                                self.retry_ask_at = now + NO_QUEUE_RETRY_NS;
                                self.fail_waiting(libc::EBUSY);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn finish(&mut self, id: u32, status: IoStatus) {
        let r = self.requests[id as usize].take().expect("a held request");
        self.free_requests.push(id);
        let status = if r.status.is_success() {
            status
        } else {
            r.status
        };
        self.done.push(r.io, status);
    }

    fn fail_waiting(&mut self, errno: i32) {
        while let Some(id) = self.waiting.pop_front() {
            self.finish(id, IoStatus::Failed { errno });
        }
    }

    /// Drops the queue; with a reason, the controller is told it failed. Every request it
    /// held goes back to the front of the wait.
    fn drop_queue(&mut self, failure: Option<String>) {
        let Queue::Up(w) = std::mem::replace(&mut self.queue, Queue::None) else {
            return;
        };
        if let Some(why) = failure {
            log::warn!(
                "nvme {}: I/O queue {} failed: {why}",
                self.ctrl.name(),
                w.link.qid
            );
            self.failed_generation = Some(w.generation);
            self.ctrl.report_failure(w.generation, why);
        }
        self.ctrl.release_queue(w.generation, w.link.qid);
        let mut out: Vec<u32> = w.commands.iter().flatten().map(|c| c.request).collect();
        out.sort_unstable();
        out.dedup();
        let mut again = Vec::with_capacity(out.len());
        for &id in &out {
            let r = self.requests[id as usize]
                .as_mut()
                .expect("a command's request");
            r.issued = 0;
            r.started = false;
            r.out = 0;
            r.status = IoStatus::Success;
            r.resends += 1;
            if r.resends <= MAX_RESENDS {
                again.push(id);
            }
        }
        self.waiting.retain(|id| out.binary_search(id).is_err());
        for &id in again.iter().rev() {
            self.waiting.push_front(id);
        }
        for id in out
            .into_iter()
            .filter(|id| again.binary_search(id).is_err())
        {
            self.finish(id, IoStatus::Failed { errno: libc::EIO });
        }
    }

    /// Sends what waits while command ids last.
    fn issue(&mut self, now: Nanos) {
        let Queue::Up(w) = &mut self.queue else {
            return;
        };
        while let Some(&id) = self.waiting.front() {
            let Some(cid) = w.free_cids.pop() else { return };
            let r = self.requests[id as usize]
                .as_mut()
                .expect("a waiting request");
            let Some((io_type, lba, blocks)) = Self::next_of(r, self.max_command_blocks) else {
                w.free_cids.push(cid);
                self.waiting.pop_front();
                continue;
            };
            let at = r.issued as usize * self.block_size as usize;
            let bytes = match io_type {
                IoType::Read | IoType::Write => blocks as usize * self.block_size as usize,
                _ => 0,
            };
            let mut sqe = match io_type {
                IoType::Read => SubmissionEntry::rw(nvm::READ, self.nsid, lba, blocks),
                IoType::Write => SubmissionEntry::rw(nvm::WRITE, self.nsid, lba, blocks),
                IoType::WriteZeroes => {
                    SubmissionEntry::rw(nvm::WRITE_ZEROES, self.nsid, lba, blocks)
                }
                IoType::Flush => SubmissionEntry::new(nvm::FLUSH, self.nsid),
                IoType::Unmap => SubmissionEntry::deallocate(self.nsid, 1, 0),
            };
            sqe.set_cid(cid);
            let mut after_r2t = false;
            let framing = w.link.framing;
            match io_type {
                IoType::Write if bytes <= self.in_capsule_bytes => {
                    sqe.set_sgl(bytes as u32, true);
                    let buf = r.io.buf.as_ref().expect("a write has its buffer");
                    let data = &buf.as_slice()[at..at + bytes];
                    pdu::encode_capsule_cmd(&mut w.output, &sqe, data, framing);
                }
                IoType::Write => {
                    after_r2t = true;
                    sqe.set_sgl(bytes as u32, false);
                    pdu::encode_capsule_cmd(&mut w.output, &sqe, &[], framing);
                }
                IoType::Unmap => {
                    // One range: attributes 0, length in blocks, first block.
                    let mut range = [0u8; 16];
                    range[4..8].copy_from_slice(&blocks.to_le_bytes());
                    range[8..16].copy_from_slice(&lba.to_le_bytes());
                    sqe.set_sgl(16, true);
                    pdu::encode_capsule_cmd(&mut w.output, &sqe, &range, framing);
                }
                _ => {
                    sqe.set_sgl(bytes as u32, false);
                    pdu::encode_capsule_cmd(&mut w.output, &sqe, &[], framing);
                }
            }
            w.commands[cid as usize] = Some(Command {
                request: id,
                at,
                bytes,
                io_type,
                after_r2t,
                sent_ns: now,
            });
            r.started = true;
            r.issued += blocks;
            r.out += 1;
            if r.fully_issued() {
                self.waiting.pop_front();
            }
        }
    }

    fn next_of(r: &Request, max_command_blocks: u32) -> Option<(IoType, u64, u32)> {
        if r.fully_issued() {
            return None;
        }
        let left = r.io.num_blocks - r.issued;
        let lba = r.io.offset_blocks + r.issued as u64;
        let blocks = match r.io.io_type {
            IoType::Read | IoType::Write => left.min(max_command_blocks),
            IoType::WriteZeroes => left.min(MAX_NLB),
            IoType::Unmap | IoType::Flush => left,
        };
        Some((r.io.io_type, lba, blocks))
    }

    /// Sends, receives and takes every whole PDU; an error is the queue's failure.
    fn exchange(&mut self) -> Result<(), String> {
        let Queue::Up(w) = &mut self.queue else {
            return Ok(());
        };
        w.send()?;
        let mut reads = 0;
        loop {
            let taken = self.take_pdus()?;
            let Queue::Up(w) = &mut self.queue else {
                return Ok(());
            };
            if taken == 0 && reads > 0 {
                break;
            }
            reads += 1;
            if !w.receive()? || reads > 4 {
                break;
            }
        }
        let Queue::Up(w) = &mut self.queue else {
            return Ok(());
        };
        w.send()
    }

    /// Takes the whole PDUs received; returns how many.
    fn take_pdus(&mut self) -> Result<usize, String> {
        let mut n = 0;
        loop {
            let Queue::Up(w) = &mut self.queue else {
                return Ok(n);
            };
            let avail = &w.input[w.consumed..w.filled];
            let (p, len) = match pdu::decode(avail, w.link.framing.digests, self.max_pdu) {
                Ok(Decoded::Pdu(p, len)) => (p, len),
                Ok(Decoded::Incomplete(need)) => {
                    w.make_room(need);
                    return Ok(n);
                }
                Err(e) => return Err(format!("malformed PDU: {e}")),
            };
            let start = w.consumed;
            w.consumed += len;
            n += 1;
            self.take_pdu(p, start)?;
        }
    }

    fn take_pdu(&mut self, p: Pdu, start: usize) -> Result<(), String> {
        let Queue::Up(w) = &mut self.queue else {
            return Ok(());
        };
        match p {
            Pdu::CapsuleResp(cqe) => {
                let c = w.take_command(cqe.cid)?;
                self.command_done(c, cqe.status());
            }
            Pdu::C2HData {
                transfer: t,
                last,
                success,
                data,
            } => {
                let c = w.command(t.cccid)?;
                if c.io_type != IoType::Read
                    || t.offset as usize + data.len() > c.bytes
                    || t.length as usize != data.len()
                {
                    return Err(format!("C2HData out of its command's range: {t:?}"));
                }
                let (request, at) = (c.request, c.at + t.offset as usize);
                let r = self.requests[request as usize].as_mut().expect("held");
                let buf = r.io.buf.as_mut().expect("a read has its buffer");
                let src = &w.input[start + data.start..start + data.end];
                buf.as_mut_slice()[at..at + src.len()].copy_from_slice(src);
                if last && success {
                    let c = w.take_command(t.cccid)?;
                    self.command_done(c, Status::SUCCESS);
                }
            }
            Pdu::R2T(t) => {
                let c = w.command(t.cccid)?;
                if !c.after_r2t || t.offset as u64 + t.length as u64 > c.bytes as u64 {
                    return Err(format!("R2T out of its command's range: {t:?}"));
                }
                let (request, at) = (c.request, c.at);
                let r = self.requests[request as usize].as_ref().expect("held");
                let buf = r.io.buf.as_ref().expect("a write has its buffer");
                let framing = w.link.framing;
                let (mut offset, end) = (t.offset, t.offset + t.length);
                while offset < end {
                    let n = (end - offset).min(w.link.max_h2c);
                    let piece = Transfer {
                        cccid: t.cccid,
                        ttag: t.ttag,
                        offset,
                        length: n,
                    };
                    let from = at + offset as usize;
                    let data = &buf.as_slice()[from..from + n as usize];
                    pdu::encode_h2c_data(&mut w.output, &piece, data, offset + n == end, framing);
                    offset += n;
                }
            }
            Pdu::TermReq { fes, .. } => {
                return Err(format!(
                    "the controller ended the connection (FES {fes:#x})"
                ))
            }
            other => return Err(format!("unexpected PDU {other:?}")),
        }
        Ok(())
    }

    fn command_done(&mut self, c: Command, status: Status) {
        let r = self.requests[c.request as usize]
            .as_mut()
            .expect("a command's request is held");
        r.out -= 1;
        if !status.is_success() && r.status.is_success() {
            r.status = io_status(status);
        }
        if r.out == 0 && r.fully_issued() {
            self.finish(c.request, IoStatus::Success);
        }
    }

    /// Fails the queue if a command has waited past the timeout.
    fn check_timeouts(&mut self, now: Nanos) -> Result<(), String> {
        if now < self.next_check_ns {
            return Ok(());
        }
        self.next_check_ns = now + CHECK_INTERVAL_NS;
        let Queue::Up(w) = &self.queue else {
            return Ok(());
        };
        let oldest = w.commands.iter().flatten().map(|c| c.sent_ns).min();
        match oldest {
            Some(at) if now.saturating_sub(at) > self.timeout_ns => Err(format!(
                "a command had no completion within {} ms",
                self.timeout_ns / 1_000_000
            )),
            _ => Ok(()),
        }
    }
}

impl Wire {
    fn new(link: Link, generation: u64) -> Wire {
        // One entry stays empty: a full queue holds entries - 1 commands.
        let depth = link.entries.saturating_sub(1).max(1);
        Wire {
            generation,
            input: vec![0; 2 * READ_CHUNK],
            consumed: 0,
            filled: 0,
            output: Vec::with_capacity(64 << 10),
            sent: 0,
            commands: (0..depth).map(|_| None).collect(),
            free_cids: (0..depth).rev().collect(),
            link,
        }
    }

    fn command(&self, cid: u16) -> Result<&Command, String> {
        self.commands
            .get(cid as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("a PDU for command {cid}, which is not out"))
    }

    fn take_command(&mut self, cid: u16) -> Result<Command, String> {
        let c = self
            .commands
            .get_mut(cid as usize)
            .and_then(Option::take)
            .ok_or_else(|| format!("a completion for command {cid}, which is not out"))?;
        self.free_cids.push(cid);
        Ok(c)
    }

    /// Makes room for a PDU of `need` bytes from `consumed`.
    fn make_room(&mut self, need: usize) {
        if self.consumed + need <= self.input.len() {
            return;
        }
        self.input.copy_within(self.consumed..self.filled, 0);
        self.filled -= self.consumed;
        self.consumed = 0;
        if need > self.input.len() {
            self.input.resize(need, 0);
        }
    }

    /// Reads what the socket has; false when it had nothing.
    fn receive(&mut self) -> Result<bool, String> {
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        }
        if self.input.len() - self.filled < READ_CHUNK / 4 {
            let need = self.filled - self.consumed + READ_CHUNK;
            self.make_room(need);
        }
        match self.link.stream.read(&mut self.input[self.filled..]) {
            Ok(0) => Err("the controller closed the connection".into()),
            Ok(n) => {
                self.filled += n;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Writes what the socket takes of the output.
    fn send(&mut self) -> Result<(), String> {
        while self.sent < self.output.len() {
            match self.link.stream.write(&self.output[self.sent..]) {
                Ok(0) => return Err("the connection took no bytes".into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.compact_output();
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.output.clear();
        self.sent = 0;
        Ok(())
    }

    /// Drops what has been sent from the front of the output, once there is much of it.
    fn compact_output(&mut self) {
        if self.sent >= OUTPUT_COMPACT_BYTES {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
    }
}

impl BdevChannel for TcpChannel {
    fn submit(&mut self, io: IoRequest, _now: Nanos) -> Result<(), IoRequest> {
        match self.ctrl.health() {
            Health::Lost => {
                self.done.push(
                    io,
                    IoStatus::Failed {
                        errno: libc::ENODEV,
                    },
                );
                return Ok(());
            }
            Health::FailingIo => {
                self.done.push(io, IoStatus::Failed { errno: libc::EIO });
                return Ok(());
            }
            _ => {}
        }
        if io.io_type == IoType::Flush && !self.flush_has_work {
            self.done.push(io, IoStatus::Success);
            return Ok(());
        }
        let r = Request {
            io,
            issued: 0,
            started: false,
            out: 0,
            status: IoStatus::Success,
            resends: 0,
        };
        let id = match self.free_requests.pop() {
            Some(id) => {
                self.requests[id as usize] = Some(r);
                id
            }
            None => {
                self.requests.push(Some(r));
                self.requests.len() as u32 - 1
            }
        };
        self.waiting.push_back(id);
        Ok(())
    }

    fn poll(&mut self, now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        self.follow_controller(now);
        if matches!(self.queue, Queue::Up(_)) {
            self.issue(now);
            let result = self.exchange().and_then(|()| self.check_timeouts(now));
            if let Err(why) = result {
                self.drop_queue(Some(why));
            }
        }
        self.done.drain_into(max, out)
    }

    fn inflight(&self) -> usize {
        // Requests taken and not yet answered, and those answered and not yet polled.
        self.requests.len() - self.free_requests.len() + self.done.len()
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        self.drop_queue(None);
    }
}
