//! A thin epoll wrapper: the one place tidepool waits for socket readiness.
//!
//! Contract: every registration is one-shot. [`Epoll::arm`] asks for one event on a file
//! descriptor (readable, and writable when asked); after that event the descriptor stays
//! registered but silent until it is armed again. Arming re-checks the descriptor's state, so
//! readiness that arrived before the call is reported at once, never lost. Each registration
//! carries a `u64` token that [`Epoll::wait`] hands back.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag word and touches no memory of ours.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and own alone.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Registers `fd`, armed for one readable event.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, false)
    }

    /// Re-arms `fd` for one event: readable (or peer hang-up), and writable if `writable`.
    pub fn arm(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, writable)
    }

    /// Removes `fd`. Closing a descriptor removes it too; this is for descriptors that live on.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null is allowed since Linux 2.6.9).
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for events and appends their tokens to `tokens`.
    pub fn wait(&self, tokens: &mut Vec<u64>, timeout_ms: i32) -> io::Result<usize> {
        const MAX_EVENTS: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: the kernel writes at most MAX_EVENTS entries into `events`, which has room
        // for exactly that many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        tokens.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(n as usize)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT;
        if writable {
            flags |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: flags as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event that the kernel only reads during the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn one_event_per_arm_and_readiness_before_arming_is_reported() {
        let ep = Epoll::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        ep.add(b.as_raw_fd(), 7).unwrap();
        let mut tokens = Vec::new();
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 0, "nothing to read yet");
        a.write_all(b"x").unwrap();
        assert_eq!(ep.wait(&mut tokens, 1000).unwrap(), 1);
        assert_eq!(tokens, vec![7]);
        // One-shot: the unread byte does not report again until re-armed.
        tokens.clear();
        assert_eq!(ep.wait(&mut tokens, 0).unwrap(), 0);
        ep.arm(b.as_raw_fd(), 9, false).unwrap();
        assert_eq!(ep.wait(&mut tokens, 1000).unwrap(), 1);
        assert_eq!(tokens, vec![9]);
        ep.remove(b.as_raw_fd()).unwrap();
        assert!(
            ep.arm(b.as_raw_fd(), 9, false).is_err(),
            "removed fds cannot be armed"
        );
    }
}
