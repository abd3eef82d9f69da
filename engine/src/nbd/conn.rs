//! One NBD connection in transmission phase, served by a reactor as a poller task.
//!
//! Each poll: read what the socket has (one non-blocking read into `inbuf`), turn complete
//! requests into bdev I/O on this reactor, then write pending replies. Reading first means
//! each batch of replies acknowledges, in its TCP header, every request read so far: written
//! the other way round, the kernel sent pure ACKs for requests read after the replies (it acks
//! at once when more than a segment has come in since its last ACK) and the client's core,
//! the bottleneck with small writes, paid for them (4 KiB writes q16: +5 % with this order,
//! see BENCHMARKS.md's NBD notes). A request's data moves
//! in chunks of [`CHUNK_BYTES`] (a large request becomes several bdev I/Os answered by one
//! reply, in order). Replies go out in completion order, as the protocol allows.
//!
//! Bounds: at most [`MAX_REQUESTS`] requests in flight, chunk buffers from a fixed pool, and
//! no reading while the replies waiting for the socket hold more than [`OUT_HIGH_WATER`]
//! bytes (their data and their bookkeeping: see `Replies::held`). Each
//! bound stops the reading, never drops a request, so a fast client is slowed down, not failed.
//!
//! Durability: a write is answered only after the bdev completed it, and with FUA only after a
//! flush that followed it completed. A client that goes away (DISC, EOF, a socket error, a
//! protocol violation) stops the reading; the connection still waits for every I/O it started
//! before it closes, so what was acknowledged stays acknowledged.
//!
//! Protocol violations (a bad request magic) close this connection only; a bad request
//! (range, alignment, flags, read-only) gets an error reply and the connection goes on.

use super::proto::{self, Command, Geometry, Request};
use super::replies::Replies;
use super::waker::SocketWaker;
use super::{Export, Tally};
use crate::bdev::{BdevId, Completion, IoOrigin, IoRequest, IoStatus, IoType};
use crate::reactor::{Ctx, Task, TaskId};
use crate::time::Nanos;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tidepool_bindings::dma::{DmaBuf, DmaPool};
use tidepool_bindings::os::set_tcp_quickack;

/// Bytes of one data chunk (one bdev I/O).
pub const CHUNK_BYTES: usize = 128 << 10;
/// Chunk buffers per connection: enough for one maximum-size request.
const CHUNK_COUNT: usize = proto::MAX_PAYLOAD as usize / CHUNK_BYTES;
/// Requests a connection may have in flight.
pub const MAX_REQUESTS: usize = 256;
/// Reply bytes waiting for the socket above which the connection stops reading (read data
/// waiting here holds its chunk buffers, which bounds it too).
const OUT_HIGH_WATER: usize = 8 << 20;
/// Bytes read from the socket per poll.
const IN_BYTES: usize = 256 << 10;
/// Requests parsed per poll, so one connection cannot hold the reactor.
const REQUESTS_PER_POLL: usize = 64;
/// How long a closing connection waits for its client to take the last replies.
const CLOSE_GRACE_NS: Nanos = 5_000_000_000;

/// A connected client socket.
pub enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Ends the connection both ways at once (the socket stays open until dropped).
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }

    pub fn set_timeouts(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and_then(|_| s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|_| s.set_write_timeout(t)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A request whose bdev I/O is under way.
struct Pending {
    cookie: u64,
    command: Command,
    length: u32,
    /// Read data, in order; a chunk is `None` while its I/O is out.
    chunks: Vec<Option<DmaBuf>>,
    /// Bdev I/Os not yet back.
    remaining: u32,
    /// The first error, as an NBD error value.
    error: u32,
    /// A write with FUA whose data is on the bdev: the flush comes next.
    fua: bool,
}

/// The payload of a write being read from the socket.
enum Receiving {
    /// Into the chunks of request `slot`.
    Payload {
        slot: usize,
        offset_blocks: u64,
        received: usize,
    },
    /// A refused write's payload, read and dropped to stay in step; then the error reply.
    Discard {
        remaining: u64,
        cookie: u64,
        error: u32,
    },
}

pub struct Connection {
    stream: Stream,
    peer: String,
    export: Arc<Export>,
    tally: Arc<Tally>,
    waker: Arc<SocketWaker>,
    bdev: BdevId,
    geometry: Geometry,
    pool: DmaPool,
    /// Chunks back from the bdev or the socket, reused last-in first-out so the next request
    /// gets a buffer that is still in the CPU's cache (the pool hands them out in rotation).
    spare: Vec<DmaBuf>,
    id: TaskId,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    receiving: Option<Receiving>,
    slots: Vec<Option<Pending>>,
    free_slots: Vec<usize>,
    replies: Replies,
    bdev_inflight: usize,
    /// Why the connection stopped reading; `None` while it serves.
    closing: Option<String>,
    /// When it stopped reading: replies a client does not take within [`CLOSE_GRACE_NS`]
    /// are dropped with the connection.
    closing_since: Nanos,
    /// The socket failed: replies can no longer be sent.
    broken: bool,
}

impl Connection {
    pub(super) fn new(
        stream: Stream,
        peer: String,
        export: Arc<Export>,
        tally: Arc<Tally>,
        waker: Arc<SocketWaker>,
    ) -> io::Result<Connection> {
        let pool = DmaPool::new(CHUNK_BYTES, CHUNK_COUNT)?;
        Ok(Connection {
            stream,
            peer,
            bdev: export.bdev,
            geometry: export.geometry,
            export,
            tally,
            waker,
            pool,
            spare: Vec::with_capacity(CHUNK_COUNT),
            id: 0,
            inbuf: vec![0; IN_BYTES + proto::REQUEST_BYTES],
            in_start: 0,
            in_end: 0,
            receiving: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            replies: Replies::default(),
            bdev_inflight: 0,
            closing: None,
            closing_since: 0,
            broken: false,
        })
    }

    fn stop_reading(&mut self, why: impl Into<String>) {
        if self.closing.is_none() {
            self.closing = Some(why.into());
            self.closing_since = crate::time::now();
        }
    }

    /// Writes pending replies; returns the bytes sent.
    fn send(&mut self) -> usize {
        if self.broken || self.replies.is_empty() {
            return 0;
        }
        let sent = self.replies.send(&mut self.stream, &mut self.spare);
        match sent {
            Ok(n) => n,
            Err(e) => {
                self.broken = true;
                self.stop_reading(format!("send failed: {e}"));
                0
            }
        }
    }

    /// One non-blocking read into `inbuf`; returns the bytes read.
    fn receive(&mut self) -> usize {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        } else if self.in_start > IN_BYTES / 2 {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        if self.in_end == self.inbuf.len() {
            return 0;
        }
        match self.stream.read(&mut self.inbuf[self.in_end..]) {
            Ok(0) => {
                self.stop_reading("client closed the connection");
                0
            }
            Ok(n) => {
                self.in_end += n;
                self.delay_acks();
                n
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => {
                self.broken = true;
                self.stop_reading(format!("receive failed: {e}"));
                0
            }
        }
    }

    /// Asks the kernel to hold back the ACK for what was just read so that it rides on the
    /// replies (TCP's delayed-ACK "pingpong" mode; the kernel leaves it on its own, when an
    /// ACK waited too long, so it is asked again after every read that brought data). Left
    /// in quick-ACK mode, the kernel acked requests with segments of their own, and each cost
    /// the client's core a wake of its socket, often splitting its next request's header from
    /// its payload (4 KiB writes q16: +7 % in an interleaved A/B, see BENCHMARKS.md's NBD notes).
    fn delay_acks(&self) {
        if let Stream::Tcp(s) = &self.stream {
            // A refusal only costs speed; there is nothing to do about it.
            let _ = set_tcp_quickack(s, false);
        }
    }

    /// Turns buffered bytes into requests; returns how many requests it started.
    fn process(&mut self, ctx: &mut Ctx) -> usize {
        let mut started = 0;
        while self.closing.is_none() && started < REQUESTS_PER_POLL {
            if let Some(receiving) = self.receiving.take() {
                if !self.continue_payload(ctx, receiving) {
                    break;
                }
                continue;
            }
            if self.in_end - self.in_start < proto::REQUEST_BYTES {
                break;
            }
            let header: &[u8; proto::REQUEST_BYTES] = self.inbuf
                [self.in_start..self.in_start + proto::REQUEST_BYTES]
                .try_into()
                .expect("28 bytes");
            let request = match proto::parse_request(header) {
                Ok(r) => r,
                Err(bad) => {
                    self.stop_reading(format!("protocol violation: request magic {:#x}", bad.0));
                    break;
                }
            };
            let verdict = proto::check_request(&request, &self.geometry);
            if !self.has_room_for(&request, verdict.is_ok()) {
                break;
            }
            self.in_start += proto::REQUEST_BYTES;
            started += 1;
            match verdict {
                Ok(()) => self.start(ctx, request),
                Err(error) => self.refuse(request, error),
            }
        }
        started
    }

    /// Whether the request's slot and buffers are available now (a refused request needs
    /// no buffers).
    fn has_room_for(&self, r: &Request, accepted: bool) -> bool {
        if self.slots.len() - self.free_slots.len() >= MAX_REQUESTS {
            return false;
        }
        if accepted && matches!(r.command, Command::Read | Command::Write) {
            let free = self.pool.available() + self.spare.len();
            return free >= (r.length as usize).div_ceil(CHUNK_BYTES);
        }
        true
    }

    /// Answers a request `check_request` refused; a write's payload is read and dropped.
    fn refuse(&mut self, r: Request, error: u32) {
        if r.command == Command::Write {
            self.receiving = Some(Receiving::Discard {
                remaining: r.length as u64,
                cookie: r.cookie,
                error,
            });
        } else {
            self.replies.push(error, r.cookie, Vec::new());
        }
    }

    /// Starts a request `check_request` accepted.
    fn start(&mut self, ctx: &mut Ctx, r: Request) {
        let bs = self.geometry.block_size as u64;
        let offset_blocks = r.offset / bs;
        match r.command {
            Command::Disc => self.stop_reading("client disconnected (NBD_CMD_DISC)"),
            Command::Read => {
                let n = (r.length as usize).div_ceil(CHUNK_BYTES);
                let slot = self.new_slot(&r, n);
                for i in 0..n {
                    let buf = self.chunk(r.length, i);
                    let blocks = (buf.len() as u64 / bs) as u32;
                    let chunk_offset = offset_blocks + (i * CHUNK_BYTES) as u64 / bs;
                    self.submit(ctx, slot, i, IoType::Read, chunk_offset, blocks, Some(buf));
                }
            }
            Command::Write => {
                let n = (r.length as usize).div_ceil(CHUNK_BYTES);
                let slot = self.new_slot(&r, n);
                for i in 0..n {
                    let buf = self.chunk(r.length, i);
                    self.pending(slot).chunks[i] = Some(buf);
                }
                self.receiving = Some(Receiving::Payload {
                    slot,
                    offset_blocks,
                    received: 0,
                });
            }
            Command::Flush => {
                let slot = self.new_slot(&r, 0);
                self.submit(ctx, slot, 0, IoType::Flush, 0, 0, None);
            }
            Command::Trim | Command::WriteZeroes => {
                let slot = self.new_slot(&r, 0);
                let kind = if r.command == Command::Trim {
                    IoType::Unmap
                } else {
                    IoType::WriteZeroes
                };
                let blocks = (r.length as u64 / bs) as u32;
                self.submit(ctx, slot, 0, kind, offset_blocks, blocks, None);
            }
            Command::Other(_) => unreachable!("refused by check_request"),
        }
    }

    /// Moves payload bytes from `inbuf`; returns false when it needs more bytes.
    fn continue_payload(&mut self, ctx: &mut Ctx, receiving: Receiving) -> bool {
        let available = self.in_end - self.in_start;
        match receiving {
            Receiving::Discard {
                remaining,
                cookie,
                error,
            } => {
                let take = remaining.min(available as u64) as usize;
                self.in_start += take;
                let remaining = remaining - take as u64;
                if remaining == 0 {
                    self.replies.push(error, cookie, Vec::new());
                    true
                } else {
                    self.receiving = Some(Receiving::Discard {
                        remaining,
                        cookie,
                        error,
                    });
                    false
                }
            }
            Receiving::Payload {
                slot,
                offset_blocks,
                mut received,
            } => {
                let length = self.pending(slot).length as usize;
                let mut left = available;
                while left > 0 && received < length {
                    let i = received / CHUNK_BYTES;
                    let within = received % CHUNK_BYTES;
                    let buf = self.slots[slot].as_mut().expect("live slot").chunks[i]
                        .as_mut()
                        .expect("write chunk held until submitted");
                    let n = (buf.len() - within).min(left);
                    buf.as_mut_slice()[within..within + n]
                        .copy_from_slice(&self.inbuf[self.in_start..self.in_start + n]);
                    self.in_start += n;
                    left -= n;
                    received += n;
                }
                if received < length {
                    self.receiving = Some(Receiving::Payload {
                        slot,
                        offset_blocks,
                        received,
                    });
                    return false;
                }
                self.export
                    .bytes_written
                    .fetch_add(length as u64, Ordering::Relaxed);
                let bs = self.geometry.block_size as u64;
                let chunks = self.pending(slot).chunks.len();
                for i in 0..chunks {
                    let buf = self.pending(slot).chunks[i].take().expect("write chunk");
                    let blocks = (buf.len() as u64 / bs) as u32;
                    let at = offset_blocks + (i * CHUNK_BYTES) as u64 / bs;
                    self.submit(ctx, slot, i, IoType::Write, at, blocks, Some(buf));
                }
                true
            }
        }
    }

    fn chunk(&mut self, length: u32, i: usize) -> DmaBuf {
        let mut buf = self
            .spare
            .pop()
            .or_else(|| self.pool.take())
            .expect("has_room_for checked the pool");
        let len = (length as usize - i * CHUNK_BYTES).min(CHUNK_BYTES);
        buf.set_len(len);
        buf
    }

    fn new_slot(&mut self, r: &Request, chunks: usize) -> usize {
        let pending = Pending {
            cookie: r.cookie,
            command: r.command,
            length: r.length,
            chunks: (0..chunks).map(|_| None).collect(),
            remaining: 0,
            error: 0,
            // FUA holds for every command that changes data (the spec allows it on any).
            fua: matches!(
                r.command,
                Command::Write | Command::WriteZeroes | Command::Trim
            ) && r.flags & proto::CMD_FLAG_FUA != 0,
        };
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i] = Some(pending);
                i
            }
            None => {
                self.slots.push(Some(pending));
                self.slots.len() - 1
            }
        }
    }

    fn pending(&mut self, slot: usize) -> &mut Pending {
        self.slots[slot].as_mut().expect("live slot")
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        ctx: &mut Ctx,
        slot: usize,
        chunk: usize,
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u32,
        buf: Option<DmaBuf>,
    ) {
        self.pending(slot).remaining += 1;
        self.bdev_inflight += 1;
        let origin = IoOrigin {
            reactor: ctx.reactor_id(),
            task: self.id,
            tag: ((slot as u64) << 32) | chunk as u64,
        };
        let io = IoRequest::new(io_type, offset_blocks, num_blocks, buf, origin);
        ctx.submit(self.bdev, io);
    }

    /// Every I/O of the request is back: flush for FUA, or reply and free the slot.
    fn finish_request(&mut self, ctx: &mut Ctx, slot: usize) {
        let p = self.pending(slot);
        if p.fua && p.error == 0 {
            p.fua = false;
            self.submit(ctx, slot, 0, IoType::Flush, 0, 0, None);
            return;
        }
        let p = self.slots[slot].take().expect("live slot");
        self.free_slots.push(slot);
        if p.command != Command::Read || p.error != 0 {
            self.replies.push(p.error, p.cookie, Vec::new());
        } else {
            let data = p.chunks.into_iter().flatten().collect();
            self.replies.push(0, p.cookie, data);
            self.export
                .bytes_read
                .fetch_add(p.length as u64, Ordering::Relaxed);
        }
    }

    fn close(&mut self, ctx: &mut Ctx) {
        let why = self.closing.as_deref().unwrap_or("closed");
        log::info!(
            "nbd: {} left export '{}': {why}",
            self.peer,
            self.export.name
        );
        let _ = self.waker.deregister(self.stream.as_raw_fd());
        self.export.connections.fetch_sub(1, Ordering::AcqRel);
        self.tally.leave(ctx.reactor_id());
        ctx.finish(self.id);
    }
}

fn nbd_error(status: IoStatus) -> u32 {
    match status {
        IoStatus::Success => 0,
        IoStatus::Failed { .. } | IoStatus::Nvme { .. } => proto::EIO,
        IoStatus::Invalid => proto::EINVAL,
        IoStatus::Unsupported => proto::ENOTSUP,
        IoStatus::Aborted => proto::ESHUTDOWN,
    }
}

impl Task for Connection {
    fn on_start(&mut self, ctx: &mut Ctx, id: TaskId) {
        self.id = id;
        if let Err(e) = self.waker.start_poller(ctx, id, self.stream.as_raw_fd()) {
            log::warn!("nbd: {}: cannot watch the socket: {e}", self.peer);
        }
    }

    fn on_complete(&mut self, ctx: &mut Ctx, c: Completion) {
        self.bdev_inflight -= 1;
        let slot = (c.io.origin.tag >> 32) as usize;
        let chunk = (c.io.origin.tag & 0xffff_ffff) as usize;
        let status = c.status;
        let Some(p) = self.slots.get_mut(slot).and_then(|s| s.as_mut()) else {
            return;
        };
        if !status.is_success() && p.error == 0 {
            p.error = nbd_error(status);
        }
        match c.io.io_type {
            IoType::Read => p.chunks[chunk] = c.io.buf,
            _ => self.spare.extend(c.io.buf),
        }
        p.remaining -= 1;
        if p.remaining == 0 {
            self.finish_request(ctx, slot);
        }
    }

    fn on_poll(&mut self, ctx: &mut Ctx) -> usize {
        if self.closing.is_none() && self.export.is_closing() {
            self.stop_reading("the export or the server is shutting down");
        }
        if !self.broken && self.export.replies_cut() {
            // The daemon is stopping and has stopped waiting for this connection's I/O: its
            // last flush may already be done, so nothing more is acknowledged (a write that
            // lands now would be acknowledged without being durable). The client sees the
            // connection end.
            self.broken = true;
            self.stop_reading("the daemon stopped before this connection's I/O came back");
            let _ = self.stream.shutdown();
        }
        let mut net = 0;
        let mut work = 0;
        if self.replies.held() >= OUT_HIGH_WATER {
            // Make room before reading (see the module header for why reading comes first).
            net += self.send();
        }
        if self.closing.is_none() && self.replies.held() < OUT_HIGH_WATER {
            net += self.receive();
            work += self.process(ctx);
        }
        net += self.send();
        // The load monitor's network figure for this reactor.
        ctx.count_net_bytes(net as u64);
        work += net;
        if self.closing.is_some() && self.bdev_inflight == 0 {
            // Every started I/O is back; send what can still be sent, then go.
            self.send();
            let stuck = ctx.now().saturating_sub(self.closing_since) > CLOSE_GRACE_NS;
            if self.broken || self.replies.is_empty() || stuck {
                self.close(ctx);
                return work + 1;
            }
        }
        work
    }

    fn on_park(&mut self, ctx: &mut Ctx) -> bool {
        let writable = !self.replies.is_empty();
        self.waker
            .arm(self.stream.as_raw_fd(), ctx.reactor_id(), writable)
            .is_ok()
    }
}
