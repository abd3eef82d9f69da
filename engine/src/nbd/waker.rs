//! Wakes parked reactors when their client sockets have work.
//!
//! A busy reactor polls its sockets itself and never involves this thread. Before a reactor
//! parks, each of its connections arms its socket here (one-shot, see `bindings::epoll`);
//! when a socket becomes readable (or writable, if replies wait), this thread unparks the
//! reactor whose id is the socket's token. Arming re-checks readiness, so bytes that arrived
//! between the connection's last read and the park are not missed, and an unpark that lands
//! before the park is kept by the thread (see `ring`).

use crate::reactor::{Ctx, Message, ReactorId, TaskId};
use crate::ring::Inbox;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tidepool_bindings::epoll::Epoll;

/// How often the thread looks at its stop flag.
const WAIT_MS: i32 = 100;

pub struct SocketWaker {
    epoll: Epoll,
    /// Each reactor's inbox, by id, as its connections registered them.
    inboxes: Mutex<Vec<Option<Arc<Inbox<Message>>>>>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SocketWaker {
    pub fn start() -> io::Result<Arc<SocketWaker>> {
        let waker = Arc::new(SocketWaker {
            epoll: Epoll::new()?,
            inboxes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let runner = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name("nbd_waker".into())
            .spawn(move || runner.run())?;
        *waker.thread.lock().expect("waker lock") = Some(thread);
        Ok(waker)
    }

    /// Starts a socket's task as a poller on the reactor running it, and watches its socket
    /// for that reactor (what every socket-serving task does in `Task::on_start`).
    pub fn start_poller(&self, ctx: &mut Ctx, id: TaskId, fd: RawFd) -> io::Result<()> {
        ctx.add_poller(id);
        self.register(fd, ctx.reactor_id(), ctx.own_inbox())
    }

    /// Watches `fd` for reactor `reactor`, whose inbox is `inbox`.
    pub fn register(
        &self,
        fd: RawFd,
        reactor: ReactorId,
        inbox: &Arc<Inbox<Message>>,
    ) -> io::Result<()> {
        {
            let mut inboxes = self.inboxes.lock().expect("waker lock");
            let i = reactor as usize;
            if inboxes.len() <= i {
                inboxes.resize(i + 1, None);
            }
            inboxes[i] = Some(Arc::clone(inbox));
        }
        self.epoll.add(fd, reactor as u64)
    }

    /// Asks for one wake-up of `reactor` when `fd` is readable (or writable).
    pub fn arm(&self, fd: RawFd, reactor: ReactorId, writable: bool) -> io::Result<()> {
        self.epoll.arm(fd, reactor as u64, writable)
    }

    pub fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.epoll.remove(fd)
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().expect("waker lock").take() {
            let _ = t.join();
        }
    }

    fn run(&self) {
        let mut tokens = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            tokens.clear();
            if let Err(e) = self.epoll.wait(&mut tokens, WAIT_MS) {
                log::error!("nbd: socket waker failed: {e}; reactors fall back to timed wake-ups");
                return;
            }
            if tokens.is_empty() {
                continue;
            }
            let inboxes = self.inboxes.lock().expect("waker lock");
            for &t in &tokens {
                if let Some(Some(inbox)) = inboxes.get(t as usize) {
                    inbox.wake();
                }
            }
        }
    }
}
