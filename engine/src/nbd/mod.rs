//! The NBD server: bdevs exported to Linux, QEMU and libnbd clients.
//!
//! - [`proto`]: the wire format and the request checker.
//! - [`handshake`]: fixed newstyle negotiation, run on a short-lived thread per client with
//!   timeouts (it is rare and not on the data path).
//! - [`conn`]: a client in transmission phase, served by a reactor as a poller task; the
//!   connection is placed on the reactor with the fewest connections.
//! - [`replies`]: a connection's unsent replies, written from the DMA buffers with `writev`.
//! - [`tcp`]: settings of an accepted TCP socket (no delay; no pacing for clients on this host).
//! - [`waker`]: unparks a reactor when one of its sockets has work.
//!
//! [`NbdService`] holds the export table and, while it runs, the [`NbdServer`] listener. An
//! export claims its bdev in the registry, so an exported bdev cannot be deleted or claimed by
//! anyone else. Deleting an export, or stopping the server, stops its connections from
//! reading; each then finishes the I/O it started, sends its replies and closes, and the call
//! waits for that (with a deadline) before it returns.
//!
//! Limits: [`MAX_CONNECTIONS`] clients, [`MAX_HANDSHAKES`] of them negotiating at once, each
//! handshake at most [`HANDSHAKE_TIMEOUT`] per read or write and [`HANDSHAKE_DEADLINE`] in all.

pub mod conn;
pub mod handshake;
pub mod proto;
pub mod replies;
pub mod tcp;
pub mod waker;

use crate::bdev::{BdevError, BdevId, BdevRegistry, IoType};
use crate::reactor::{Engine, ReactorId};
use crate::socket_path::{bind_private, BindError, PathTaken};
use conn::{Connection, Stream};
use handshake::{ExportDirectory, ExportView};
use proto::Geometry;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use waker::SocketWaker;

pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:10809";
pub const MAX_CONNECTIONS: usize = 128;
pub const MAX_HANDSHAKES: usize = 16;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole negotiation's limit: a client that trickles its options a byte at a time
/// (each read within `HANDSHAKE_TIMEOUT`) would otherwise hold a handshake slot for hours,
/// and [`MAX_HANDSHAKES`] such clients would lock every new one out.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(30);
/// How long deleting an export or stopping the server waits for connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the accept thread sleeps before it looks at the stop flag again.
const ACCEPT_WAKE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NbdError {
    #[error("export '{0}' already exists")]
    Exists(String),
    #[error("export '{0}' not found")]
    NotFound(String),
    #[error("the NBD server is already listening on {0}")]
    Running(String),
    #[error("the NBD server is not running")]
    NotRunning,
    #[error("{0}")]
    Busy(String),
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("{0}")]
    Bdev(#[from] BdevError),
    #[error("listening on {address}: {reason}")]
    Listen { address: String, reason: String },
}

/// One exported bdev.
pub struct Export {
    pub name: String,
    pub bdev_name: String,
    pub read_only: bool,
    bdev: BdevId,
    geometry: Geometry,
    flags: u16,
    /// Deleted, or the server is stopping: connections stop reading and close.
    closing: AtomicBool,
    server_stopping: Arc<AtomicBool>,
    /// See [`NbdService::stop_server`]: connections send nothing more.
    replies_cut: Arc<AtomicBool>,
    pub connections: AtomicUsize,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

impl Export {
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed) || self.server_stopping.load(Ordering::Relaxed)
    }

    fn replies_cut(&self) -> bool {
        self.replies_cut.load(Ordering::Acquire)
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "bdev_name": self.bdev_name,
            "read_only": self.read_only,
            "size": self.geometry.size,
            "block_size": self.geometry.block_size,
            "connections": self.connections.load(Ordering::Relaxed),
            "bytes_read": self.bytes_read.load(Ordering::Relaxed),
            "bytes_written": self.bytes_written.load(Ordering::Relaxed),
            "closing": self.closing.load(Ordering::Relaxed),
        })
    }
}

/// Connections per reactor, for placing new ones and for the connection limit.
#[derive(Default)]
pub struct Tally {
    per_reactor: Mutex<Vec<usize>>,
}

impl Tally {
    /// Picks the reactor with the fewest connections and counts one more there.
    fn join_least_loaded(&self, reactors: usize) -> ReactorId {
        let mut per = self.per_reactor.lock().expect("tally lock");
        let len = reactors.max(per.len());
        per.resize(len, 0);
        let (r, _) = per[..reactors]
            .iter()
            .enumerate()
            .min_by_key(|(_, &n)| n)
            .expect("at least one reactor");
        per[r] += 1;
        r as ReactorId
    }

    fn leave(&self, reactor: ReactorId) {
        let mut per = self.per_reactor.lock().expect("tally lock");
        if let Some(n) = per.get_mut(reactor as usize) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn total(&self) -> usize {
        self.per_reactor.lock().expect("tally lock").iter().sum()
    }
}

type ExportTable = RwLock<BTreeMap<String, Arc<Export>>>;

struct Directory<'a>(&'a ExportTable);

impl ExportDirectory for Directory<'_> {
    fn find(&self, name: &str) -> Option<ExportView> {
        let table = self.0.read().expect("export table");
        let e = table.get(name).filter(|e| !e.is_closing())?;
        Some(ExportView {
            size: e.geometry.size,
            block_size: e.geometry.block_size,
            flags: e.flags,
        })
    }

    fn names(&self) -> Vec<String> {
        self.0
            .read()
            .expect("export table")
            .keys()
            .cloned()
            .collect()
    }
}

/// The NBD side of the control plane: exports, and the server while it runs.
pub struct NbdService {
    engine: Arc<Engine>,
    registry: Arc<BdevRegistry>,
    exports: Arc<ExportTable>,
    tally: Arc<Tally>,
    server: Mutex<Option<NbdServer>>,
    server_stopping: Arc<AtomicBool>,
    replies_cut: Arc<AtomicBool>,
}

impl NbdService {
    pub fn new(engine: Arc<Engine>, registry: Arc<BdevRegistry>) -> NbdService {
        NbdService {
            engine,
            registry,
            exports: Arc::new(RwLock::new(BTreeMap::new())),
            tally: Arc::new(Tally::default()),
            server: Mutex::new(None),
            server_stopping: Arc::new(AtomicBool::new(false)),
            replies_cut: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Exports `bdev_name` as `name` (claiming the bdev).
    pub fn create_export(
        &self,
        name: &str,
        bdev_name: &str,
        read_only: bool,
    ) -> Result<(), NbdError> {
        if name.is_empty() || name.len() > 256 || name.contains('\0') {
            return Err(NbdError::InvalidParam {
                param: "name",
                reason: "an export name is 1 to 256 bytes without NUL".into(),
            });
        }
        let mut table = self.exports.write().expect("export table");
        if table.contains_key(name) {
            return Err(NbdError::Exists(name.to_string()));
        }
        let (bdev, b) = self
            .registry
            .lookup(bdev_name)
            .ok_or_else(|| BdevError::NotFound(bdev_name.to_string()))?;
        self.registry
            .claim(bdev_name, &format!("NBD export '{name}'"))?;
        let info = b.info();
        let supported = info.supported;
        let geometry = Geometry {
            size: info.num_blocks * info.block_size as u64,
            block_size: info.block_size,
            read_only,
            can_trim: supported.contains(IoType::Unmap),
            can_write_zeroes: supported.contains(IoType::WriteZeroes),
        };
        let mut flags = proto::TFLAG_HAS_FLAGS | proto::TFLAG_CAN_MULTI_CONN;
        if read_only {
            flags |= proto::TFLAG_READ_ONLY;
        } else {
            if supported.contains(IoType::Flush) {
                flags |= proto::TFLAG_SEND_FLUSH | proto::TFLAG_SEND_FUA;
            }
            if geometry.can_trim {
                flags |= proto::TFLAG_SEND_TRIM;
            }
            if geometry.can_write_zeroes {
                flags |= proto::TFLAG_SEND_WRITE_ZEROES;
            }
        }
        table.insert(
            name.to_string(),
            Arc::new(Export {
                name: name.to_string(),
                bdev_name: bdev_name.to_string(),
                read_only,
                bdev,
                geometry,
                flags,
                closing: AtomicBool::new(false),
                server_stopping: Arc::clone(&self.server_stopping),
                replies_cut: Arc::clone(&self.replies_cut),
                connections: AtomicUsize::new(0),
                bytes_read: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
            }),
        );
        log::info!("nbd: exporting bdev '{bdev_name}' as '{name}'");
        Ok(())
    }

    /// Removes an export: its clients are disconnected once their I/O is done; then the bdev
    /// is released.
    /// Closes the export to new clients, waits up to [`DRAIN_TIMEOUT`] for its connections
    /// to finish their I/O and close, then removes it and releases its bdev. A connection
    /// closes only once every I/O it started is back, so if one is still open at the
    /// deadline (a device that does not answer), the export stays, closed and listed, with
    /// its bdev claimed, and the call fails -16: released, the bdev could go to a new user
    /// and the late write land on that user's data. Calling again finishes the job.
    pub fn delete_export(&self, name: &str) -> Result<(), NbdError> {
        let export = self
            .exports
            .read()
            .expect("export table")
            .get(name)
            .cloned()
            .ok_or_else(|| NbdError::NotFound(name.to_string()))?;
        export.closing.store(true, Ordering::Release);
        self.wait_for_connections(|| export.connections.load(Ordering::Acquire));
        let left = export.connections.load(Ordering::Acquire);
        if left > 0 {
            log::warn!("nbd: export '{name}' closed, but {left} connection(s) still wait for I/O");
            return Err(NbdError::Busy(format!(
                "export '{name}' is closed to new clients, but {left} connection(s) still \
                 wait for I/O on '{}'; it keeps the bdev until they finish (delete it again)",
                export.bdev_name
            )));
        }
        if self.remove_if_current(&export) {
            self.registry
                .release(&export.bdev_name, &format!("NBD export '{name}'"));
            log::info!("nbd: export '{name}' deleted");
        }
        Ok(())
    }

    /// Takes `export` out of the table if it is still the one listed under its name, and
    /// says whether it was. Two deletes of one export may both get here; by the time the
    /// second does, the first may have removed it and a new export taken the name, which the
    /// second must leave alone (its bdev stays claimed by it).
    fn remove_if_current(&self, export: &Arc<Export>) -> bool {
        let mut table = self.exports.write().expect("export table");
        if !table
            .get(&export.name)
            .is_some_and(|listed| Arc::ptr_eq(listed, export))
        {
            return false;
        }
        table.remove(&export.name);
        true
    }

    pub fn exports_json(&self, name: Option<&str>) -> Result<Value, NbdError> {
        let table = self.exports.read().expect("export table");
        match name {
            Some(n) => {
                let e = table
                    .get(n)
                    .ok_or_else(|| NbdError::NotFound(n.to_string()))?;
                Ok(json!([e.to_json()]))
            }
            None => Ok(Value::Array(table.values().map(|e| e.to_json()).collect())),
        }
    }

    /// Starts listening on `host:port` or `unix:PATH`.
    pub fn start_server(&self, address: &str) -> Result<(), NbdError> {
        let mut server = self.server.lock().expect("server lock");
        if let Some(s) = server.as_ref() {
            return Err(NbdError::Running(s.address.clone()));
        }
        self.server_stopping.store(false, Ordering::Release);
        self.replies_cut.store(false, Ordering::Release);
        let listener = Listener::bind(address)?;
        let shared = Arc::new(Shared {
            engine: Arc::clone(&self.engine),
            exports: Arc::clone(&self.exports),
            tally: Arc::clone(&self.tally),
            waker: SocketWaker::start().map_err(|e| NbdError::Listen {
                address: address.into(),
                reason: e.to_string(),
            })?,
            stop: AtomicBool::new(false),
            handshakes: AtomicUsize::new(0),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("nbd_accept".into())
                .spawn(move || accept_loop(listener, shared))
                .map_err(|e| NbdError::Listen {
                    address: address.into(),
                    reason: e.to_string(),
                })?
        };
        log::info!("nbd: listening on {address}");
        *server = Some(NbdServer {
            address: address.to_string(),
            shared,
            accept: Some(accept),
        });
        Ok(())
    }

    /// Stops listening and disconnects every client once its I/O is done.
    pub fn stop_server(&self) -> Result<(), NbdError> {
        let server = self
            .server
            .lock()
            .expect("server lock")
            .take()
            .ok_or(NbdError::NotRunning)?;
        self.server_stopping.store(true, Ordering::Release);
        let waker = server.stop_accepting();
        self.wait_for_connections(|| self.tally.total());
        if self.tally.total() > 0 {
            // Their I/O may come back after the daemon's last flush: from now on they
            // acknowledge nothing (see `Connection::on_poll`). Every reactor has seen the
            // flag once its call returns, before anything that follows (that flush).
            self.replies_cut.store(true, Ordering::Release);
            for r in 0..self.engine.reactor_count() {
                let _ = self.engine.call_wait(r, DRAIN_TIMEOUT, |_| {});
            }
            log::warn!(
                "nbd: {} connection(s) did not close in time; they are cut off, and \
                 what they still wait for is not acknowledged",
                self.tally.total()
            );
        }
        waker.stop();
        log::info!("nbd: server stopped");
        Ok(())
    }

    pub fn listen_address(&self) -> Option<String> {
        self.server
            .lock()
            .expect("server lock")
            .as_ref()
            .map(|s| s.address.clone())
    }

    /// The config entries that recreate the server and the exports.
    pub fn config_entries(&self) -> Vec<Value> {
        let mut entries = Vec::new();
        if let Some(address) = self.listen_address() {
            entries.push(json!({"method": "nbd_server_start",
                "params": {"listen_address": address}}));
        }
        for e in self.exports.read().expect("export table").values() {
            entries.push(json!({"method": "nbd_export_create",
                "params": {"name": e.name, "bdev_name": e.bdev_name, "read_only": e.read_only}}));
        }
        entries
    }

    /// Waits until `count()` is 0 or the deadline passes, waking every reactor so that a
    /// parked one sees its connections' closing flags.
    fn wait_for_connections(&self, count: impl Fn() -> usize) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while count() > 0 && Instant::now() < deadline {
            for r in 0..self.engine.reactor_count() {
                let _ = self.engine.call(r, |_| {});
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for NbdService {
    fn drop(&mut self) {
        let _ = self.stop_server();
    }
}

/// What the accept thread and the handshake threads share.
struct Shared {
    engine: Arc<Engine>,
    exports: Arc<ExportTable>,
    tally: Arc<Tally>,
    waker: Arc<SocketWaker>,
    stop: AtomicBool,
    handshakes: AtomicUsize,
}

/// The listener and its thread.
pub struct NbdServer {
    address: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl NbdServer {
    /// Stops the accept thread (handshakes under way find the stop flag and give up);
    /// returns the waker, which the remaining connections still use.
    fn stop_accepting(mut self) -> Arc<SocketWaker> {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        Arc::clone(&self.shared.waker)
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn bind(address: &str) -> Result<Listener, NbdError> {
        let fail = |reason: String| NbdError::Listen {
            address: address.to_string(),
            reason,
        };
        let listener = if let Some(path) = address.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(NbdError::InvalidParam {
                    param: "listen_address",
                    reason: "'unix:' needs a path".into(),
                });
            }
            let path = PathBuf::from(path);
            let too_long = |len: usize| {
                NbdError::InvalidParam {
                param: "listen_address",
                reason: format!(
                    "the path is {len} bytes; Unix socket paths are limited to {} (the socket is bound in its directory first, so that directory's path must leave room)",
                    crate::socket_path::MAX_SOCKET_PATH_BYTES
                ),
            }
            };
            // 0600 from its first moment, as the RPC socket: NBD has no authentication, so
            // whoever can connect can read and write every export.
            let l = bind_private(&path, "nbd").map_err(|e| match e {
                BindError::Taken(PathTaken::TooLong(len)) => too_long(len),
                BindError::StagedTooLong(_, len) => too_long(len),
                BindError::Taken(PathTaken::InUse) => {
                    fail("another server is listening there".into())
                }
                BindError::Taken(PathTaken::NotASocket) => {
                    fail("the path exists and is not a socket".into())
                }
                BindError::Taken(PathTaken::Io(e)) | BindError::Io(_, e) => fail(e.to_string()),
            })?;
            Listener::Unix(l, path)
        } else {
            let addrs: Vec<_> = address
                .to_socket_addrs()
                .map_err(|e| NbdError::InvalidParam {
                    param: "listen_address",
                    reason: format!("'{address}' is not host:port or unix:PATH ({e})"),
                })?
                .collect();
            Listener::Tcp(TcpListener::bind(&addrs[..]).map_err(|e| fail(e.to_string()))?)
        };
        let nb = match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        };
        nb.map_err(|e| fail(e.to_string()))?;
        Ok(listener)
    }

    fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                tcp::tune_client_socket(&s, &peer)?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept()?;
                Ok((Stream::Unix(s), format!("unix:{}", path.display())))
            }
        }
    }
}

impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        // Sleep in poll until a client connects or it is time to look at `stop` again: an
        // idle server wakes a few times a second, not hundreds.
        if !tidepool_bindings::os::wait_readable(&listener, ACCEPT_WAKE).unwrap_or(true) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("nbd: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Handshakes in progress count as connections: they become ones.
        let handshakes = shared.handshakes.load(Ordering::Acquire);
        let busy =
            handshakes >= MAX_HANDSHAKES || shared.tally.total() + handshakes >= MAX_CONNECTIONS;
        if busy {
            log::warn!("nbd: refusing {peer}: connection or handshake limit reached");
            continue;
        }
        shared.handshakes.fetch_add(1, Ordering::AcqRel);
        let for_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("nbd_handshake".into())
            .spawn(move || {
                serve_handshake(stream, peer, &for_thread);
                for_thread.handshakes.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            shared.handshakes.fetch_sub(1, Ordering::AcqRel);
            log::warn!("nbd: cannot start a handshake thread: {e}");
        }
    }
}

/// A handshake's stream under one deadline: every read or write waits at most until then
/// (and at most [`HANDSHAKE_TIMEOUT`]), and none starts after it.
struct Deadlined<'a> {
    stream: &'a mut Stream,
    until: std::time::Instant,
}

impl Deadlined<'_> {
    fn arm(&mut self) -> std::io::Result<()> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(self.expired());
        }
        self.stream.set_timeouts(Some(left.min(HANDSHAKE_TIMEOUT)))
    }

    fn expired(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the handshake took longer than {} s",
                HANDSHAKE_DEADLINE.as_secs()
            ),
        )
    }

    /// A socket timeout that fired at the deadline (give or take the timer's rounding) says
    /// so: it reads as EAGAIN otherwise.
    fn explain<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        match r {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && std::time::Instant::now() + Duration::from_millis(5) >= self.until =>
            {
                Err(self.expired())
            }
            r => r,
        }
    }
}

impl std::io::Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        let r = self.stream.read(buf);
        self.explain(r)
    }
}

impl std::io::Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        let r = self.stream.write(buf);
        self.explain(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Negotiates with one client and hands the connection to a reactor.
fn serve_handshake(mut stream: Stream, peer: String, shared: &Shared) {
    let prepared = stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_timeouts(Some(HANDSHAKE_TIMEOUT)));
    if let Err(e) = prepared {
        log::warn!("nbd: {peer}: {e}");
        return;
    }
    let mut limited = Deadlined {
        stream: &mut stream,
        until: std::time::Instant::now() + HANDSHAKE_DEADLINE,
    };
    let name = match handshake::negotiate(&mut limited, &Directory(&shared.exports)) {
        Ok(Some(name)) => name,
        Ok(None) => return,
        Err(e) => {
            log::info!("nbd: {peer}: handshake ended: {e}");
            return;
        }
    };
    let Some(export) = shared
        .exports
        .read()
        .expect("export table")
        .get(&name)
        .cloned()
    else {
        return;
    };
    if shared.stop.load(Ordering::Acquire) {
        return;
    }
    let ready = stream
        .set_timeouts(None)
        .and_then(|_| stream.set_nonblocking(true));
    if let Err(e) = ready {
        log::warn!("nbd: {peer}: {e}");
        return;
    }
    let reactor = shared
        .tally
        .join_least_loaded(shared.engine.reactor_count());
    export.connections.fetch_add(1, Ordering::AcqRel);
    let conn = match Connection::new(
        stream,
        peer.clone(),
        Arc::clone(&export),
        Arc::clone(&shared.tally),
        Arc::clone(&shared.waker),
    ) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("nbd: {peer}: no buffers for the connection: {e}");
            export.connections.fetch_sub(1, Ordering::AcqRel);
            shared.tally.leave(reactor);
            return;
        }
    };
    log::info!("nbd: {peer} on export '{name}', reactor {reactor}");
    let placed = shared.engine.call(reactor as usize, move |r| {
        r.spawn(Box::new(conn));
    });
    if placed.is_err() {
        // The closure (and the connection in it) was dropped with the message.
        log::warn!("nbd: {peer}: reactor {reactor} did not take the connection");
        export.connections.fetch_sub(1, Ordering::AcqRel);
        shared.tally.leave(reactor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant;

    #[test]
    fn the_unix_socket_is_0600_from_its_first_moment_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let registry = Arc::new(BdevRegistry::new());
        let mut config = crate::reactor::EngineConfig::new(vec![0]);
        config.pin = false;
        let engine = Arc::new(Engine::start(config, Arc::clone(&registry)).unwrap());
        let nbd = NbdService::new(Arc::clone(&engine), Arc::clone(&registry));
        let dir = crate::testkit::temp_file("nbd-mode-probe", 0)
            .parent()
            .unwrap()
            .to_path_buf();
        let path = dir.join("nbd-mode.sock");
        // The test process's umask (022 by default) would leave a plain bind at 0755.
        nbd.start_server(&format!("unix:{}", path.display()))
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "NBD socket mode {mode:o}");
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        nbd.stop_server().unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tidepool-nbd"))
            .collect();
        assert!(left.is_empty(), "private bind directories left: {left:?}");
    }

    #[test]
    fn a_late_second_delete_leaves_a_new_export_of_the_same_name_alone() {
        let registry = Arc::new(BdevRegistry::new());
        let malloc = serde_json::json!({"name": "M0", "num_blocks": 256, "block_size": 512});
        crate::config::create_bdev(&registry, "bdev_malloc_create", malloc).unwrap();
        let mut config = crate::reactor::EngineConfig::new(vec![0]);
        config.pin = false;
        let engine = Arc::new(Engine::start(config, Arc::clone(&registry)).unwrap());
        let nbd = NbdService::new(Arc::clone(&engine), Arc::clone(&registry));
        nbd.create_export("a", "M0", false).unwrap();
        let first = nbd.exports.read().unwrap().get("a").cloned().unwrap();
        // One delete finishes; a new export takes the name; then a second delete of the
        // first export, which had waited for its connections, reaches the table.
        nbd.delete_export("a").unwrap();
        nbd.create_export("a", "M0", true).unwrap();
        assert!(!nbd.remove_if_current(&first));
        let listed = nbd.exports_json(Some("a")).unwrap();
        assert_eq!(listed[0]["read_only"], true, "{listed}");
        let err = nbd.create_export("b", "M0", false).unwrap_err();
        assert!(
            err.to_string().contains("in use by NBD export 'a'"),
            "{err}"
        );
    }

    #[test]
    fn a_handshake_that_trickles_ends_at_its_deadline() {
        let (ours, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut stream = Stream::Unix(ours);
        // One byte every 20 ms: every single read is quick, the whole never ends.
        let trickle = std::thread::spawn(move || {
            while client.write_all(&[0]).is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = Instant::now();
        let mut limited = Deadlined {
            stream: &mut stream,
            until: started + Duration::from_millis(300),
        };
        let mut buf = [0u8; 1000];
        let err = limited.read_exact(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < HANDSHAKE_TIMEOUT, "{took:?}");
        drop(stream);
        trickle.join().unwrap();
    }
}
