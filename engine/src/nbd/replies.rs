//! The replies a connection has yet to send, sent with vectored writes.
//!
//! A reply is its 16-byte header and, for a successful read, the DMA chunks the bdev filled:
//! the data goes to the socket straight from those buffers (no copy), and each buffer returns
//! to its pool once its last byte is sent. `send` writes as much as the socket takes, at most
//! [`MAX_SLICES`] buffers per system call, and remembers where a partial write stopped.

use super::proto::{simple_reply, SIMPLE_REPLY_BYTES};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use tidepool_bindings::dma::DmaBuf;

/// Buffers handed to one `writev`.
const MAX_SLICES: usize = 64;

struct Reply {
    header: [u8; SIMPLE_REPLY_BYTES],
    data: Vec<DmaBuf>,
}

impl Reply {
    fn segments(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.header[..]).chain(self.data.iter().map(|b| b.as_slice()))
    }

    fn len(&self) -> usize {
        SIMPLE_REPLY_BYTES + self.data.iter().map(|b| b.len()).sum::<usize>()
    }
}

#[derive(Default)]
pub struct Replies {
    queue: VecDeque<Reply>,
    /// Bytes of the front reply already sent.
    sent_of_front: usize,
    /// Bytes queued and not yet sent.
    pending: usize,
}

impl Replies {
    /// Queues a reply: error 0 with `data` for a read, or an error with none.
    pub fn push(&mut self, error: u32, cookie: u64, data: Vec<DmaBuf>) {
        let reply = Reply {
            header: simple_reply(error, cookie),
            data,
        };
        self.pending += reply.len();
        self.queue.push_back(reply);
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Memory the queue holds: the bytes waiting and each reply's bookkeeping. What bounds
    /// the queue (a refused request's reply is 16 bytes on the wire but some 60 in memory,
    /// so a client sending bad requests and reading nothing held 2.5 times the bound).
    pub fn held(&self) -> usize {
        self.pending + self.queue.len() * std::mem::size_of::<Reply>()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes until the socket would block or everything is sent; returns the bytes sent.
    /// `WouldBlock` and `Interrupted` are not errors. The buffers of fully sent replies go to
    /// `spent`.
    pub fn send<W: Write>(&mut self, w: &mut W, spent: &mut Vec<DmaBuf>) -> io::Result<usize> {
        let mut total = 0;
        while !self.queue.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_SLICES);
            let mut skip = self.sent_of_front;
            'fill: for reply in &self.queue {
                for seg in reply.segments() {
                    if skip >= seg.len() {
                        skip -= seg.len();
                        continue;
                    }
                    slices.push(IoSlice::new(&seg[skip..]));
                    skip = 0;
                    if slices.len() == MAX_SLICES {
                        break 'fill;
                    }
                }
            }
            let n = match w.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n;
            self.advance(n, spent);
        }
        Ok(total)
    }

    fn advance(&mut self, mut n: usize, spent: &mut Vec<DmaBuf>) {
        self.pending -= n;
        while n > 0 {
            let front_left =
                self.queue.front().expect("sent bytes were queued").len() - self.sent_of_front;
            if n < front_left {
                self.sent_of_front += n;
                return;
            }
            n -= front_left;
            let done = self.queue.pop_front().expect("front exists");
            spent.extend(done.data);
            self.sent_of_front = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidepool_bindings::dma::DmaPool;

    /// A writer that takes at most `chunk` bytes per call and blocks every other call.
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_free_buffers() {
        let pool = DmaPool::new(4096, 8).unwrap();
        let mut r = Replies::default();
        let mut expected = Vec::new();
        for i in 0..3u8 {
            let mut data = Vec::new();
            expected.extend(simple_reply(0, i as u64));
            for j in 0..2u8 {
                let mut b = pool.take().unwrap();
                b.set_len(1000 + j as usize);
                b.as_mut_slice().fill(i * 10 + j);
                expected.extend_from_slice(b.as_slice());
                data.push(b);
            }
            r.push(0, i as u64, data);
        }
        r.push(22, 9, Vec::new());
        expected.extend(simple_reply(22, 9));
        assert_eq!(r.pending(), expected.len());
        assert_eq!(pool.available(), 2);
        let mut w = Trickle {
            got: Vec::new(),
            chunk: 333,
            calls: 0,
        };
        let mut spent = Vec::new();
        while !r.is_empty() {
            r.send(&mut w, &mut spent).unwrap();
        }
        assert_eq!(w.got, expected);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.held(), 0);
        assert_eq!(spent.len(), 6, "every sent buffer is handed back");
        drop(spent);
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn held_counts_each_reply_s_bookkeeping_not_only_its_wire_bytes() {
        let mut r = Replies::default();
        for cookie in 0..1000 {
            r.push(22, cookie, Vec::new());
        }
        assert_eq!(r.pending(), 1000 * SIMPLE_REPLY_BYTES);
        assert!(r.held() >= 1000 * (SIMPLE_REPLY_BYTES + 32), "{}", r.held());
    }
}
