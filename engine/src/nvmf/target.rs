//! The NVMe/TCP target's listeners: a TCP listener per address a subsystem listens on, each
//! with an accept thread that places every new connection on a reactor (round robin) as a
//! [`TargetConnection`] poller. All listeners share the target's controllers, so a host may
//! connect its admin queue through one address and its I/O queues through another.
//!
//! **Contract.** [`NvmfTarget::listen`] binds the address before it returns (an address in
//! use, or one that does not parse, is an error and changes nothing); listening twice on one
//! address is allowed and counted, so two subsystems may share a port, and the port closes
//! when the last of them stops listening ([`NvmfTarget::stop_listening`]). Stopping a
//! listener does not end the connections it accepted. At most [`MAX_CONNECTIONS`] are live;
//! past that, new ones are closed at once.

use super::conn::{self, TargetConnection};
use super::connect::{Controllers, Directory, Limits};
use crate::nbd::waker::SocketWaker;
use crate::reactor::Engine;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Connections the target serves at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest the accept thread sleeps before it looks at its stop flag again.
const ACCEPT_WAKE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error("'{0}' is not an address to listen on")]
    BadAddress(String),
    #[error("cannot listen on {address}: {reason}")]
    Bind { address: String, reason: String },
}

struct Listener {
    address: SocketAddr,
    /// Subsystems (or callers) listening here.
    users: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the accept threads share.
struct Shared {
    engine: Arc<Engine>,
    controllers: Arc<Controllers>,
    directory: Arc<dyn Directory + Send + Sync>,
    waker: Arc<SocketWaker>,
    live: Arc<AtomicUsize>,
    next_reactor: AtomicUsize,
}

pub struct NvmfTarget {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<Listener>>,
}

impl NvmfTarget {
    pub fn new(
        engine: Arc<Engine>,
        directory: Arc<dyn Directory + Send + Sync>,
        limits: Limits,
    ) -> std::io::Result<NvmfTarget> {
        // What a connection serves (`conn`): no more, whatever the transport's options say.
        let limits = Limits {
            in_capsule_bytes: limits.in_capsule_bytes.min(conn::IN_CAPSULE_BYTES),
            mdts: limits.mdts.min(conn::MDTS),
            ..limits
        };
        Ok(NvmfTarget {
            shared: Arc::new(Shared {
                engine,
                controllers: Arc::new(Controllers::new(limits)),
                directory,
                waker: SocketWaker::start()?,
                live: Arc::new(AtomicUsize::new(0)),
                next_reactor: AtomicUsize::new(0),
            }),
            listeners: Mutex::new(Vec::new()),
        })
    }

    fn listeners(&self) -> MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controllers the target's queues share (for listings).
    pub fn controllers(&self) -> &Arc<Controllers> {
        &self.shared.controllers
    }

    /// Connections live now.
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Listens on `address` (`host:port`); returns the address bound (port 0 picks one).
    pub fn listen(&self, address: &str) -> Result<SocketAddr, ListenError> {
        let wanted = address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ListenError::BadAddress(address.into()))?;
        let mut listeners = self.listeners();
        if let Some(l) = listeners.iter_mut().find(|l| l.address == wanted) {
            l.users += 1;
            return Ok(l.address);
        }
        let bind = |e: std::io::Error| ListenError::Bind {
            address: address.into(),
            reason: e.to_string(),
        };
        let socket = TcpListener::bind(wanted).map_err(bind)?;
        socket.set_nonblocking(true).map_err(bind)?;
        let bound = socket.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("nvmf_accept".into())
                .spawn(move || accept_loop(socket, &shared, &stop))
                .map_err(bind)?
        };
        log::info!("nvmf: listening on {bound}");
        listeners.push(Listener {
            address: bound,
            users: 1,
            stop,
            thread: Some(thread),
        });
        Ok(bound)
    }

    /// One user less of `address`; the port closes with its last. Returns whether it was
    /// listened on.
    pub fn stop_listening(&self, address: SocketAddr) -> bool {
        let mut listeners = self.listeners();
        let Some(i) = listeners.iter().position(|l| l.address == address) else {
            return false;
        };
        listeners[i].users -= 1;
        if listeners[i].users == 0 {
            let mut l = listeners.remove(i);
            l.stop.store(true, Ordering::Release);
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
            log::info!("nvmf: stopped listening on {address}");
        }
        true
    }
}

impl Drop for NvmfTarget {
    fn drop(&mut self) {
        for l in self.listeners().iter_mut() {
            l.stop.store(true, Ordering::Release);
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
        }
        self.shared.waker.stop();
    }
}

fn accept_loop(socket: TcpListener, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        if !tidepool_bindings::os::wait_readable(&socket, ACCEPT_WAKE).unwrap_or(true) {
            continue;
        }
        let (stream, peer) = match socket.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("nvmf: accept failed: {e}");
                std::thread::sleep(ACCEPT_WAKE);
                continue;
            }
        };
        if shared.live.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            log::warn!("nvmf: refusing {peer}: {MAX_CONNECTIONS} connections are live");
            continue;
        }
        let conn = TargetConnection::new(
            stream,
            peer.to_string(),
            Arc::clone(&shared.controllers),
            Arc::clone(&shared.directory),
            Arc::clone(&shared.waker),
            Arc::clone(&shared.live),
        );
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("nvmf: {peer}: {e}");
                continue;
            }
        };
        let reactors = shared.engine.reactor_count();
        let reactor = shared.next_reactor.fetch_add(1, Ordering::AcqRel) % reactors;
        let placed = shared.engine.call(reactor, move |r| {
            r.spawn(Box::new(conn));
        });
        if placed.is_err() {
            log::warn!("nvmf: {peer}: reactor {reactor} did not take the connection");
        }
    }
}
