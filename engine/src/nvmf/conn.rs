//! One NVMe/TCP queue pair on the target side: a host's TCP connection, served by a reactor
//! as a poller task (as NBD's connections are).
//!
//! **Contract.** The connection reads PDUs ([`pdu::decode`]) and answers them in order:
//! 1. ICReq: ICResp with the digests the host asked for, data aligned as it asked (CPDA 0),
//!    and [`MAX_H2C_DATA`] bytes per H2CData PDU.
//! 2. The first command capsule must be a Fabrics Connect with its 1024 bytes of data in the
//!    capsule; [`Controllers::connect`] makes or joins the controller, and the response
//!    carries the controller id (or the refusal's status, IATTR and IPO). Anything else
//!    before it is a sequence error.
//! 3. On queue 0, admin commands go to the controller ([`Controller::execute_admin`]): data
//!    goes back in one C2HData PDU, then the response capsule.
//! 4. On an I/O queue: Read, Write, Flush, Write Zeroes and Dataset Management (deallocate)
//!    on the controller's namespaces, each executed on the reactor's channel of the
//!    namespace's bdev. A write's data comes in the capsule (up to [`IN_CAPSULE_BYTES`]) or,
//!    above that, after an R2T for all of it (the host then sends H2CData PDUs of at most
//!    [`MAX_H2C_DATA`]); a read's data goes back in one C2HData. A command needs a data buffer
//!    of the connection's pool ([`DATA_BUFFERS`] of [`MAX_TRANSFER`], the MDTS): when none is
//!    free it waits, in order, for one to come back.
//!
//! Bad input never panics and changes nothing outside the command: an out-of-range LBA, an
//! unknown namespace or opcode, a transfer above MDTS, or a write whose data length is not the
//! command's gets its NVMe status; a malformed PDU, a PDU out of sequence (H2CData for no R2T,
//! a second ICReq), or a data digest error ends the connection with a C2HTermReq carrying the
//! Fatal Error Status, and only this connection. When the connection ends (the host closed it,
//! or a fatal error), it stops reading, waits for the I/O it started, and leaves its queue (the
//! admin queue takes its controller with it).
//!
//! Keep alive: an admin queue whose host sent no command for its Keep Alive Timeout (Connect's
//! KATO, or Set Features Keep Alive Timer) ends, and with it the controller; every queue of a
//! controller that ended ends too.
//!
//! Not yet: SQ flow control (responses carry SQHD, and the host's queue size bounds the
//! commands in flight), and the C2HData SUCCESS optimisation.

use super::admin::AdminReply;
use super::connect::{lock, Connected, Controllers, Directory, QueueReport};
use super::fabrics::{self, Codes, ConnectData, FabricsCommand, CONNECT_DATA_BYTES};
use super::pdu::{self, Decoded, Fes, Framing, InitConnection, Pdu, PduError, Transfer};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::nbd::waker::SocketWaker;
use crate::reactor::{Ctx, Task, TaskId};
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tidepool_bindings::dma::{DmaBuf, DmaPool};
use tidepool_bindings::nvme::spec::{nvm, CompletionEntry, Status, SubmissionEntry};

/// Bytes of data a command capsule may carry.
pub const IN_CAPSULE_BYTES: u32 = 8192;
/// Bytes per H2CData PDU (ICResp's MAXH2CDATA).
pub const MAX_H2C_DATA: u32 = 128 << 10;
/// The largest transfer of one command (MDTS 5: 32 pages of 4 KiB).
pub const MDTS: u8 = 5;
pub const MAX_TRANSFER: usize = 4096 << MDTS;
/// Data buffers per connection.
pub const DATA_BUFFERS: usize = 32;
/// The largest PDU a host may send: a capsule with in-capsule data, or an H2CData, with
/// header, padding and digests.
const MAX_PDU: u32 = 8 + 64 + 4 + IN_CAPSULE_BYTES + 4 + MAX_H2C_DATA;
/// Bytes read from the socket per poll.
const READ_CHUNK: usize = 256 << 10;
/// Pieces one `writev` takes at most.
const IOV_MAX_PER_SEND: usize = 32;
/// The input grows by this much when less than `READ_MIN_SPACE` is left to read into.
const READ_SPACE: usize = 64 << 10;
const READ_MIN_SPACE: usize = 16 << 10;

/// A piece of what a connection sends.
enum Outgoing {
    Bytes(Vec<u8>),
    /// The first `usize` bytes of a buffer (it goes back to its pool once sent).
    Data(DmaBuf, usize),
}

impl Outgoing {
    fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Bytes(b) => b,
            Outgoing::Data(buf, len) => &buf.as_slice()[..*len],
        }
    }
}

/// Where the connection is in its life.
enum Phase {
    AwaitIcReq,
    AwaitConnect,
    Serving(Connected),
}

/// One namespace as the I/O queue sees it.
#[derive(Clone, Copy)]
struct Namespace {
    nsid: u32,
    bdev: BdevId,
    block_size: u32,
    num_blocks: u64,
}

impl Namespace {
    /// Whether blocks `[lba, lba + blocks)` are inside the namespace.
    fn contains(&self, lba: u64, blocks: u32) -> bool {
        lba < self.num_blocks && self.num_blocks - lba >= blocks as u64
    }
}

/// A command in flight on an I/O queue.
struct Command {
    cid: u16,
    io_type: IoType,
    ns: Namespace,
    lba: u64,
    blocks: u32,
    /// Bytes of data it moves (0 for flush, write zeroes).
    bytes: u32,
    /// A write's data received so far (after an R2T).
    received: u32,
    buf: Option<DmaBuf>,
    /// Deallocate ranges still to be sent, as (lba, blocks).
    ranges: Vec<(u64, u32)>,
    /// Requests out on the bdev.
    out: u32,
    status: Status,
}

pub struct TargetConnection {
    stream: TcpStream,
    peer: String,
    id: TaskId,
    controllers: Arc<Controllers>,
    directory: Arc<dyn Directory + Send + Sync>,
    waker: Arc<SocketWaker>,
    /// The target's count of live connections (this one counted until it closes).
    live: Arc<AtomicUsize>,
    /// Bytes received: `input[..filled]` (the rest is space to read into, zeroed only when
    /// it grows, so that a read does not clear its buffer first).
    input: Vec<u8>,
    filled: usize,
    /// What is to be sent, in order: `spliced` (PDU bytes, and read data handed to the socket
    /// from its DMA buffer, not copied), then `output`, where new bytes go.
    spliced: VecDeque<Outgoing>,
    output: Vec<u8>,
    /// Bytes of the first of them already sent.
    sent: usize,
    phase: Phase,
    /// The digests and data alignment negotiated at ICReq time.
    framing: Framing,
    namespaces: Vec<Namespace>,
    /// Commands in flight, by slot (the slot is an R2T's transfer tag and the I/O's tag).
    commands: Vec<Option<Command>>,
    /// Capsules waiting for a data buffer, in order.
    waiting: VecDeque<(SubmissionEntry, Vec<u8>)>,
    pool: DmaPool,
    sq_head: u16,
    /// Bdev requests out.
    inflight: usize,
    /// Why the connection ends, once it does.
    closing: Option<String>,
    /// The controller's end, once connected (see `ControllerSlot::ended`).
    ended: Option<Arc<AtomicBool>>,
    /// The subsystem connected to (reported to the directory when the queue ends).
    subsystem_nqn: String,
    /// On an admin queue: the keep alive timeout (0: none), and when a command last came.
    kato_ns: u64,
    last_admin_ns: u64,
}

impl TargetConnection {
    pub fn new(
        stream: TcpStream,
        peer: String,
        controllers: Arc<Controllers>,
        directory: Arc<dyn Directory + Send + Sync>,
        waker: Arc<SocketWaker>,
        live: Arc<AtomicUsize>,
    ) -> std::io::Result<TargetConnection> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let pool = DmaPool::new(MAX_TRANSFER, DATA_BUFFERS)?;
        live.fetch_add(1, Ordering::AcqRel);
        Ok(TargetConnection {
            stream,
            peer,
            id: 0,
            controllers,
            directory,
            waker,
            live,
            input: Vec::new(),
            filled: 0,
            spliced: VecDeque::new(),
            output: Vec::new(),
            sent: 0,
            phase: Phase::AwaitIcReq,
            framing: Framing::PLAIN,
            namespaces: Vec::new(),
            commands: Vec::new(),
            waiting: VecDeque::new(),
            pool,
            sq_head: 0,
            inflight: 0,
            closing: None,
            ended: None,
            subsystem_nqn: String::new(),
            kato_ns: 0,
            last_admin_ns: 0,
        })
    }

    fn receive(&mut self) -> usize {
        let mut n = 0;
        while self.closing.is_none() && n < READ_CHUNK {
            if self.input.len() - self.filled < READ_MIN_SPACE {
                self.input.resize(self.filled + READ_SPACE, 0);
            }
            match self.stream.read(&mut self.input[self.filled..]) {
                Ok(0) => self.end("the host closed the connection"),
                Ok(k) => {
                    self.filled += k;
                    n += k;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => self.end(&format!("reading: {e}")),
            }
        }
        n
    }

    /// Writes what the socket takes: with `write` while only bytes wait, with `writev` (no
    /// allocation: at most [`IOV_MAX_PER_SEND`] pieces a call) while read data does.
    fn send(&mut self) -> usize {
        let mut n = 0;
        loop {
            let result = if self.spliced.is_empty() {
                if self.sent == self.output.len() {
                    break;
                }
                self.stream.write(&self.output[self.sent..])
            } else {
                let mut iov = [IoSlice::new(&[]); IOV_MAX_PER_SEND];
                let mut used = 0;
                for o in self.spliced.iter().take(IOV_MAX_PER_SEND) {
                    let from = if used == 0 { self.sent } else { 0 };
                    iov[used] = IoSlice::new(&o.bytes()[from..]);
                    used += 1;
                }
                if used < IOV_MAX_PER_SEND && !self.output.is_empty() {
                    iov[used] = IoSlice::new(&self.output);
                    used += 1;
                }
                self.stream.write_vectored(&iov[..used])
            };
            match result {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.advance(k);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.end(&format!("writing: {e}"));
                    self.spliced.clear();
                    self.output.clear();
                    self.sent = 0;
                    break;
                }
            }
        }
        if self.spliced.is_empty() && self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
        n
    }

    /// Counts `k` bytes as sent: spliced pieces that went are dropped (a buffer goes back to
    /// its pool then).
    fn advance(&mut self, mut k: usize) {
        while k > 0 {
            let Some(front) = self.spliced.front() else {
                self.sent += k;
                return;
            };
            let left = front.bytes().len() - self.sent;
            if k < left {
                self.sent += k;
                return;
            }
            k -= left;
            self.spliced.pop_front();
            self.sent = 0;
        }
        if self.spliced.front().is_some_and(|o| o.bytes().is_empty()) {
            self.spliced.pop_front();
        }
    }

    /// Queues `data` of `buf` to be sent from where it lies, after what is queued so far.
    fn splice(&mut self, buf: DmaBuf, len: usize) {
        if !self.output.is_empty() {
            if self.spliced.is_empty() && self.sent > 0 {
                self.output.drain(..self.sent);
                self.sent = 0;
            }
            self.spliced
                .push_back(Outgoing::Bytes(std::mem::take(&mut self.output)));
        }
        self.spliced.push_back(Outgoing::Data(buf, len));
    }

    fn has_output(&self) -> bool {
        !self.spliced.is_empty() || !self.output.is_empty()
    }

    fn end(&mut self, why: &str) {
        if self.closing.is_none() {
            log::info!("nvmf: {}: {why}", self.peer);
            self.closing = Some(why.to_string());
        }
    }

    /// Ends the connection for a fatal PDU error: a C2HTermReq first.
    /// Ends the connection for a fatal PDU error: a C2HTermReq first, carrying the start of
    /// the offending PDU.
    fn terminate(&mut self, err: &PduError, offending: &[u8]) {
        let fes = err.fes.unwrap_or(Fes::DataOutOfRange);
        let offending = &offending[..offending.len().min(128)];
        pdu::encode_c2h_term_req(&mut self.output, fes, err, offending);
        self.end(&format!("protocol error: {err}"));
    }

    /// Takes every whole PDU in the input. (What is left, a PDU not all there yet, moves to
    /// the front once at the end: moving it per PDU would copy the rest every time.)
    fn process(&mut self, ctx: &mut Ctx) -> usize {
        let mut work = 0;
        let input = std::mem::take(&mut self.input);
        let end = self.filled;
        let mut at = 0;
        while self.closing.is_none() {
            let rest = &input[at..end];
            let (pdu, used) = match pdu::decode(rest, self.framing.digests, MAX_PDU) {
                Ok(Decoded::Pdu(p, used)) => (p, used),
                Ok(Decoded::Incomplete(_)) => break,
                Err(e) => {
                    self.terminate(&e, rest);
                    at = end;
                    break;
                }
            };
            if let Err(e) = self.take(ctx, pdu, &rest[..used]) {
                self.terminate(&e, &rest[..used]);
                at = end;
                break;
            }
            at += used;
            work += 1;
        }
        self.input = input;
        self.input.copy_within(at..end, 0);
        self.filled = end - at;
        work
    }

    fn sequence_error(what: &str) -> PduError {
        PduError {
            fes: Some(Fes::SequenceError),
            fei: 0,
            what: what.into(),
        }
    }

    fn take(&mut self, ctx: &mut Ctx, pdu: Pdu, input: &[u8]) -> Result<(), PduError> {
        match (&self.phase, pdu) {
            (Phase::AwaitIcReq, Pdu::IcReq(req)) => {
                if req.pfv != 0 {
                    return Err(PduError {
                        fes: Some(Fes::UnsupportedParameter),
                        fei: 8,
                        what: format!("PDU format version {}", req.pfv),
                    });
                }
                let resp = InitConnection {
                    pfv: 0,
                    data_alignment: 0,
                    digests: req.digests,
                    limit: MAX_H2C_DATA,
                };
                pdu::encode_ic_resp(&mut self.output, &resp);
                self.framing = Framing {
                    digests: req.digests,
                    pdo_align: (req.data_alignment as usize + 1) * 4,
                };
                self.phase = Phase::AwaitConnect;
                Ok(())
            }
            (Phase::AwaitConnect, Pdu::CapsuleCmd { sqe, data }) => {
                self.connect(&sqe, &input[data], ctx.now());
                Ok(())
            }
            (Phase::Serving(q), Pdu::CapsuleCmd { sqe, data }) => {
                self.sq_head = (self.sq_head + 1) % q.entries;
                if q.qid == 0 {
                    self.last_admin_ns = ctx.now();
                    self.admin(&sqe);
                } else if self.waiting.is_empty() && self.can_start(&sqe) {
                    self.start(ctx, &sqe, &input[data]);
                } else {
                    // Behind others, or no buffer free: in order, with a copy of its data.
                    self.waiting.push_back((sqe, input[data].to_vec()));
                }
                Ok(())
            }
            (
                Phase::Serving(_),
                Pdu::H2CData {
                    transfer,
                    last,
                    data,
                },
            ) => self.h2c_data(ctx, &transfer, last, &input[data]),
            (_, Pdu::TermReq { fes, .. }) => {
                self.end(&format!(
                    "the host terminated the connection (status {fes:#x})"
                ));
                Ok(())
            }
            _ => Err(Self::sequence_error("a PDU out of sequence")),
        }
    }

    fn respond(&mut self, cqe: CompletionEntry) {
        let mut cqe = cqe;
        if let Phase::Serving(q) = &self.phase {
            cqe.sq_head = self.sq_head;
            cqe.sq_id = q.qid;
        }
        pdu::encode_capsule_resp(&mut self.output, &cqe, self.framing);
    }

    fn connect(&mut self, sqe: &SubmissionEntry, data: &[u8], now: u64) {
        let cid = sqe.cid();
        let (recfmt, qid, sqsize, kato_ms) = match FabricsCommand::parse(sqe) {
            Ok(FabricsCommand::Connect {
                recfmt,
                qid,
                sqsize,
                kato_ms,
                ..
            }) => (recfmt, qid, sqsize, kato_ms),
            _ => {
                self.respond(fabrics::completion(
                    cid,
                    Codes::COMMAND_SEQUENCE_ERROR,
                    0,
                    0,
                ));
                return;
            }
        };
        let parsed = if data.len() == CONNECT_DATA_BYTES {
            ConnectData::parse(data)
        } else {
            Err(fabrics::ConnectRefusal::invalid_parameter(false, 24))
        };
        let connected = parsed.and_then(|d| {
            let q = self
                .controllers
                .connect(&*self.directory, recfmt, qid, sqsize, kato_ms, &d);
            q.map(|q| (q, d))
        });
        match connected {
            Ok((q, d)) => {
                let cntlid = q.cntlid;
                let slot = lock(&q.controller);
                let info = &slot.controller.namespaces;
                self.namespaces = slot
                    .bdevs
                    .iter()
                    .filter_map(|&(nsid, bdev)| {
                        let ns = info.iter().find(|n| n.nsid == nsid)?;
                        Some(Namespace {
                            nsid,
                            bdev,
                            block_size: ns.block_size,
                            num_blocks: ns.num_blocks,
                        })
                    })
                    .collect();
                self.ended = Some(Arc::clone(&slot.ended));
                if q.qid == 0 {
                    self.kato_ns = kato_ms as u64 * 1_000_000;
                    self.last_admin_ns = now;
                }
                drop(slot);
                log::info!(
                    "nvmf: {} connected queue {} of controller {cntlid}",
                    self.peer,
                    q.qid
                );
                if let Ok(local) = self.stream.local_addr() {
                    self.directory.queue_connected(&QueueReport {
                        subsystem_nqn: d.subsystem_nqn.clone(),
                        cntlid,
                        qid: q.qid,
                        host_nqn: d.host_nqn,
                        host_id: d.host_id,
                        local,
                        peer: self.peer.clone(),
                    });
                }
                self.subsystem_nqn = d.subsystem_nqn;
                self.sq_head = 1 % q.entries;
                self.phase = Phase::Serving(q);
                self.respond(fabrics::completion(cid, Codes::SUCCESS, cntlid as u32, 0));
            }
            Err(refusal) => {
                log::warn!(
                    "nvmf: {}: Connect of queue {qid} refused: {}",
                    self.peer,
                    fabrics::describe_refusal(refusal.status, refusal.dw0())
                );
                self.respond(fabrics::completion(cid, refusal.status, refusal.dw0(), 0));
            }
        }
    }

    fn admin(&mut self, sqe: &SubmissionEntry) {
        let Phase::Serving(q) = &self.phase else {
            return;
        };
        let reply = {
            let mut slot = lock(&q.controller);
            let reply = slot.controller.execute_admin(sqe);
            // Set Features Keep Alive Timer changes the timeout from now on.
            self.kato_ns = slot.controller.kato_ms as u64 * 1_000_000;
            reply
        };
        match reply {
            AdminReply::Complete(cqe) => self.respond(cqe),
            AdminReply::Data(bytes, cqe) => {
                pdu::encode_c2h_data(
                    &mut self.output,
                    cqe.cid,
                    0,
                    &bytes,
                    true,
                    false,
                    self.framing,
                );
                self.respond(cqe);
            }
            AdminReply::Held => {}
        }
    }

    fn fail(&mut self, cid: u16, status: Status) {
        self.respond(fabrics::completion(cid, status, 0, 0));
    }

    /// Whether a command can start now: it needs no data buffer, or one is free.
    fn can_start(&self, sqe: &SubmissionEntry) -> bool {
        let needs_buffer = matches!(
            sqe.opcode(),
            nvm::READ | nvm::WRITE | nvm::DATASET_MANAGEMENT
        );
        !needs_buffer || self.pool.available() > 0
    }

    /// Starts the waiting capsules, in order, while buffers last.
    fn start_waiting(&mut self, ctx: &mut Ctx) {
        while let Some((sqe, _)) = self.waiting.front() {
            if !self.can_start(sqe) {
                return;
            }
            let (sqe, data) = self.waiting.pop_front().expect("checked above");
            self.start(ctx, &sqe, &data);
        }
    }

    fn free_slot(&mut self) -> usize {
        match self.commands.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.commands.push(None);
                self.commands.len() - 1
            }
        }
    }

    /// One I/O command: checked, then its data asked for (R2T) or its I/O sent.
    fn start(&mut self, ctx: &mut Ctx, sqe: &SubmissionEntry, data: &[u8]) {
        let cid = sqe.cid();
        let Some(ns) = self.namespaces.iter().find(|n| n.nsid == sqe.nsid).copied() else {
            return self.fail(cid, Codes::INVALID_NAMESPACE);
        };
        let lba = sqe.cdw10 as u64 | (sqe.cdw11 as u64) << 32;
        let blocks = (sqe.cdw12 & 0xffff) + 1;
        let (io_type, bytes) = match sqe.opcode() {
            nvm::READ => (IoType::Read, blocks * ns.block_size),
            nvm::WRITE => (IoType::Write, blocks * ns.block_size),
            nvm::WRITE_ZEROES => (IoType::WriteZeroes, 0),
            nvm::FLUSH => (IoType::Flush, 0),
            nvm::DATASET_MANAGEMENT if sqe.cdw11 & (1 << 2) != 0 => {
                let ranges = (sqe.cdw10 & 0xff) + 1;
                (IoType::Unmap, ranges * 16)
            }
            // Dataset Management without deallocate: hints only, nothing to do.
            nvm::DATASET_MANAGEMENT => return self.fail(cid, Codes::SUCCESS),
            _ => return self.fail(cid, Codes::INVALID_OPCODE),
        };
        let ranged = matches!(io_type, IoType::Read | IoType::Write | IoType::WriteZeroes);
        if ranged && !ns.contains(lba, blocks) {
            return self.fail(cid, Codes::LBA_OUT_OF_RANGE);
        }
        if bytes as usize > MAX_TRANSFER {
            return self.fail(cid, Codes::INVALID_FIELD);
        }
        let mut buf = None;
        if bytes > 0 {
            let Some(mut b) = self.pool.take() else {
                // Not reached: start_waiting checked.
                return self.fail(cid, Codes::INTERNAL_ERROR);
            };
            b.set_len(bytes as usize);
            buf = Some(b);
        }
        let slot = self.free_slot();
        self.commands[slot] = Some(Command {
            cid,
            io_type,
            ns,
            lba,
            blocks,
            bytes,
            received: 0,
            buf,
            ranges: Vec::new(),
            out: 0,
            status: Codes::SUCCESS,
        });
        let needs_data = matches!(io_type, IoType::Write | IoType::Unmap);
        if !needs_data {
            return self.submit(ctx, slot);
        }
        if !data.is_empty() {
            // In the capsule: all of it, or the command is wrong.
            if data.len() != bytes as usize {
                self.commands[slot] = None;
                return self.fail(cid, Codes::SGL_INVALID_DESCRIPTOR);
            }
            let c = self.commands[slot].as_mut().expect("just made");
            if let Some(b) = c.buf.as_mut() {
                b.as_mut_slice().copy_from_slice(data);
            }
            c.received = bytes;
            return self.data_complete(ctx, slot);
        }
        // Ask for all of it; the host sends it in H2CData PDUs.
        let r2t = Transfer {
            cccid: cid,
            ttag: slot as u16,
            offset: 0,
            length: bytes,
        };
        pdu::encode_r2t(&mut self.output, &r2t, self.framing);
    }

    fn h2c_data(
        &mut self,
        ctx: &mut Ctx,
        t: &Transfer,
        last: bool,
        data: &[u8],
    ) -> Result<(), PduError> {
        let out_of_range = |what: &str| PduError {
            fes: Some(Fes::DataOutOfRange),
            fei: 8,
            what: what.into(),
        };
        let slot = t.ttag as usize;
        let Some(c) = self.commands.get_mut(slot).and_then(Option::as_mut) else {
            return Err(Self::sequence_error("H2CData for no R2T"));
        };
        if c.cid != t.cccid || t.offset != c.received || data.len() as u32 != t.length {
            return Err(out_of_range(
                "H2CData at an offset or length the R2T did not ask",
            ));
        }
        if t.length > MAX_H2C_DATA || c.received + t.length > c.bytes {
            return Err(out_of_range("H2CData past the command's data"));
        }
        if let Some(b) = c.buf.as_mut() {
            let at = c.received as usize;
            b.as_mut_slice()[at..at + data.len()].copy_from_slice(data);
        }
        c.received += t.length;
        if c.received == c.bytes {
            if !last {
                return Err(Self::sequence_error("the last H2CData is not marked last"));
            }
            self.data_complete(ctx, slot);
        }
        Ok(())
    }

    /// A write's or deallocate's data is all here: send its I/O.
    fn data_complete(&mut self, ctx: &mut Ctx, slot: usize) {
        let c = self.commands[slot].as_mut().expect("a live command");
        if c.io_type == IoType::Unmap {
            let raw = c.buf.take();
            let mut ranges = Vec::new();
            if let Some(raw) = raw.as_ref() {
                for r in raw.as_slice().chunks(16) {
                    let blocks = u32::from_le_bytes(r[4..8].try_into().expect("4 bytes"));
                    let lba = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
                    if blocks == 0 {
                        continue;
                    }
                    if !c.ns.contains(lba, blocks) {
                        c.status = Codes::LBA_OUT_OF_RANGE;
                        ranges.clear();
                        break;
                    }
                    ranges.push((lba, blocks));
                }
            }
            drop(raw);
            c.ranges = ranges;
        }
        self.submit(ctx, slot);
    }

    fn submit(&mut self, ctx: &mut Ctx, slot: usize) {
        let c = self.commands[slot].as_mut().expect("a live command");
        let origin = IoOrigin {
            reactor: ctx.reactor_id(),
            task: self.id,
            tag: slot as u64,
        };
        let bdev = c.ns.bdev;
        let io = match c.io_type {
            IoType::Unmap => {
                // One request per range (none: the command ends with its status).
                let ranges = std::mem::take(&mut c.ranges);
                if ranges.is_empty() {
                    let (cid, status) = (c.cid, c.status);
                    self.commands[slot] = None;
                    return self.fail(cid, status);
                }
                c.out = ranges.len() as u32;
                self.inflight += ranges.len();
                for (lba, blocks) in ranges {
                    ctx.submit(
                        bdev,
                        IoRequest::new(IoType::Unmap, lba, blocks, None, origin),
                    );
                }
                return;
            }
            IoType::Flush => IoRequest::new(IoType::Flush, 0, 0, None, origin),
            t => IoRequest::new(t, c.lba, c.blocks, c.buf.take(), origin),
        };
        c.out = 1;
        self.inflight += 1;
        ctx.submit(bdev, io);
    }

    fn finish(&mut self, ctx: &mut Ctx, slot: usize) {
        let Some(mut c) = self.commands.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if c.io_type == IoType::Read && c.status == Codes::SUCCESS {
            if let Some(buf) = c.buf.take() {
                let len = c.bytes as usize;
                let ddgst = pdu::encode_c2h_data_head(
                    &mut self.output,
                    c.cid,
                    0,
                    len,
                    true,
                    false,
                    self.framing,
                );
                let crc = ddgst.then(|| crc32c::crc32c(&buf.as_slice()[..len]));
                self.splice(buf, len);
                if let Some(crc) = crc {
                    self.output.extend_from_slice(&crc.to_le_bytes());
                }
            }
        }
        self.fail(c.cid, c.status);
        // Its buffer (if any) went back to the pool with `c`, or goes once its data is sent
        // (then `on_poll` starts what waits): the next capsules may start.
        drop(c);
        self.start_waiting(ctx);
    }

    fn close(&mut self, ctx: &mut Ctx) {
        if let Phase::Serving(q) = &self.phase {
            self.controllers.disconnect(q.cntlid, q.qid);
            self.directory
                .queue_disconnected(&self.subsystem_nqn, q.cntlid, q.qid);
        }
        let _ = self.waker.deregister(self.stream.as_raw_fd());
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.live.fetch_sub(1, Ordering::AcqRel);
        ctx.finish(self.id);
    }
}

/// The NVMe status of a bdev's answer.
fn nvme_status(s: IoStatus) -> Status {
    match s {
        IoStatus::Success => Codes::SUCCESS,
        IoStatus::Nvme { sct, sc } => Status::new(sct, sc),
        IoStatus::Invalid => Codes::INVALID_FIELD,
        IoStatus::Unsupported => Codes::INVALID_OPCODE,
        IoStatus::Aborted => Codes::ABORTED_SQ_DELETION,
        IoStatus::Failed { .. } => Codes::DATA_TRANSFER_ERROR,
    }
}

impl Task for TargetConnection {
    fn on_start(&mut self, ctx: &mut Ctx, id: TaskId) {
        self.id = id;
        if let Err(e) = self.waker.start_poller(ctx, id, self.stream.as_raw_fd()) {
            log::warn!("nvmf: {}: cannot watch the socket: {e}", self.peer);
        }
    }

    fn on_complete(&mut self, ctx: &mut Ctx, done: Completion) {
        self.inflight -= 1;
        let slot = done.io.origin.tag as usize;
        let Some(c) = self.commands.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !done.status.is_success() && c.status == Codes::SUCCESS {
            c.status = nvme_status(done.status);
        }
        if done.io.io_type == IoType::Read {
            c.buf = done.io.buf;
        }
        c.out -= 1;
        if c.out == 0 {
            self.finish(ctx, slot);
        }
    }

    fn on_poll(&mut self, ctx: &mut Ctx) -> usize {
        if self
            .ended
            .as_ref()
            .is_some_and(|e| e.load(Ordering::Acquire))
        {
            self.end("its controller ended");
        }
        if self.kato_ns > 0 && ctx.now().saturating_sub(self.last_admin_ns) > self.kato_ns {
            self.end("keep alive timeout: no admin command within the host's KATO");
        }
        let mut work = self.send();
        if self.closing.is_none() {
            work += self.receive();
            work += self.process(ctx);
        }
        work += self.send();
        if !self.waiting.is_empty() && self.closing.is_none() {
            // Buffers come back as their data is sent: capsules waiting for one may start.
            self.start_waiting(ctx);
        }
        ctx.count_net_bytes(work as u64);
        if self.closing.is_some() && self.inflight == 0 {
            self.send();
            self.close(ctx);
            return work + 1;
        }
        work
    }

    fn on_park(&mut self, ctx: &mut Ctx) -> bool {
        let writable = self.has_output();
        self.waker
            .arm(self.stream.as_raw_fd(), ctx.reactor_id(), writable)
            .is_ok()
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
