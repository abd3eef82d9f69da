//! The JSON-RPC server on a Unix socket.
//!
//! Contract:
//! - The socket is created with mode 0600 and appears at its path already restricted
//!   (`socket_path::bind_private`, which the NBD server's Unix socket uses too).
//! - A live server on the path (one that accepts a connection) makes `start` fail; a stale
//!   socket file (nobody listening) is replaced; a path that is not a socket is left alone and
//!   refused.
//! - One thread per client, at most `max_clients`; the next one gets a -32603 error and is
//!   closed. A client's garbage, oversized request or silence affects only its own connection:
//!   a framing error is answered (-32700 or -32600) and that connection closed.
//! - Control threads run on `cpus` (the cores without reactors, when there are any), so a
//!   flood of calls competes with the reactors only when the host has no other core.
//! - `stop` stops accepting, closes every connection, joins every thread and removes the
//!   socket. Every wait in here has a timeout, so `stop` returns within about 100 ms plus the
//!   call a connection is running.

use super::dispatch;
use super::framing::{FramingError, Splitter};
use super::methods::Method;
use super::{RpcError, Services, INTERNAL_ERROR, INVALID_REQUEST, MAX_REQUEST_BYTES, PARSE_ERROR};
use crate::bdev::BdevRegistry;
use crate::reactor::Engine;
use crate::socket_path::{BindError, PathTaken};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a blocked read or accept looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A client that does not read its responses for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another tidepool is serving '{0}' (it accepted a connection); stop it or pick another path with -r")]
    InUse(PathBuf),
    #[error("'{0}' exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path, or the one it is bound at before it is renamed into place, is too long.
    #[error("socket path '{path}' is {len} bytes; Unix socket paths are limited to {max} (the socket is bound in its directory first, so that directory's path must leave room; pick a shorter path with -r)", max = crate::socket_path::MAX_SOCKET_PATH_BYTES, path = .0.display(), len = .1)]
    TooLong(PathBuf, usize),
    #[error("socket '{path}': {reason}")]
    Io { path: PathBuf, reason: String },
}

fn io_error(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub max_clients: usize,
    /// Cores for the server's threads; empty means no restriction.
    pub cpus: Vec<usize>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_clients: 64,
            cpus: Vec::new(),
        }
    }
}

struct Shared {
    services: Arc<Services>,
    methods: Vec<Method>,
    stop: AtomicBool,
    clients: AtomicUsize,
    options: ServerOptions,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct RpcServer {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// The server's socket, bound but not answering yet: a daemon takes its path before it
/// touches any device, so that a second daemon started on the same path (an overlapping
/// restart) stops before it imports a pool, instead of after. Clients that connect meanwhile
/// wait in the listen queue. Dropped unused, it removes the socket.
pub struct BoundSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl BoundSocket {
    pub fn bind(path: &Path) -> Result<BoundSocket, ServerError> {
        Ok(BoundSocket {
            path: path.to_path_buf(),
            listener: Some(bind_private(path)?),
        })
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl RpcServer {
    /// Serves every method on `engine` and `registry`, with the control threads on the cores
    /// that have no reactor (none when every core has one).
    pub fn for_engine(
        path: &Path,
        engine: &Arc<Engine>,
        registry: &Arc<BdevRegistry>,
        max_clients: usize,
    ) -> Result<RpcServer, ServerError> {
        let services = Arc::new(Services::new(engine, registry));
        RpcServer::for_services(path, services, max_clients)
    }

    /// As [`RpcServer::for_engine`], on services the caller keeps too (the daemon stops
    /// their NBD server at shutdown).
    pub fn for_services(
        path: &Path,
        services: Arc<Services>,
        max_clients: usize,
    ) -> Result<RpcServer, ServerError> {
        RpcServer::for_services_on(BoundSocket::bind(path)?, services, max_clients)
    }

    /// As [`RpcServer::for_services`], on a socket bound earlier.
    pub fn for_services_on(
        socket: BoundSocket,
        services: Arc<Services>,
        max_clients: usize,
    ) -> Result<RpcServer, ServerError> {
        RpcServer::for_services_with(socket, services, super::methods::all(), max_clients)
    }

    /// As [`RpcServer::for_services_on`], serving `methods` (the daemon adds the test-only
    /// ones when it is told to).
    pub fn for_services_with(
        socket: BoundSocket,
        services: Arc<Services>,
        methods: Vec<Method>,
        max_clients: usize,
    ) -> Result<RpcServer, ServerError> {
        let all_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let reactor_cores = services.engine.cores();
        let options = ServerOptions {
            max_clients,
            cpus: (0..all_cores)
                .filter(|c| !reactor_cores.contains(c))
                .collect(),
        };
        RpcServer::start_on(socket, services, methods, options)
    }

    pub fn start(
        path: &Path,
        services: Arc<Services>,
        methods: Vec<Method>,
        options: ServerOptions,
    ) -> Result<RpcServer, ServerError> {
        RpcServer::start_on(BoundSocket::bind(path)?, services, methods, options)
    }

    /// Starts answering on a socket bound earlier.
    pub fn start_on(
        mut socket: BoundSocket,
        services: Arc<Services>,
        methods: Vec<Method>,
        options: ServerOptions,
    ) -> Result<RpcServer, ServerError> {
        let path = socket.path.clone();
        let path = path.as_path();
        let listener = socket
            .listener
            .take()
            .expect("a bound socket holds its listener");
        listener
            .set_nonblocking(true)
            .map_err(|e| io_error(path, e))?;
        let shared = Arc::new(Shared {
            services,
            methods,
            stop: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            options,
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("rpc-accept".into())
                .spawn(move || accept_loop(listener, shared))
                .map_err(|e| io_error(path, e))?
        };
        log::info!("JSON-RPC server listening on {}", path.display());
        Ok(RpcServer {
            path: path.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Stops accepting, closes every connection, removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let connections = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for c in connections {
            let _ = c.join();
        }
        // Only remove the socket if it is still ours (a newer server may have replaced it).
        let _ = std::fs::remove_file(&self.path);
        log::info!("JSON-RPC server on {} stopped", self.path.display());
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
        }
    }
}

/// Binds the socket so that it is never reachable with looser permissions than 0600.
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    crate::socket_path::bind_private(path, "rpc").map_err(|e| match e {
        BindError::Taken(PathTaken::InUse) => ServerError::InUse(path.to_path_buf()),
        BindError::Taken(PathTaken::NotASocket) => ServerError::NotASocket(path.to_path_buf()),
        BindError::Taken(PathTaken::TooLong(len)) => ServerError::TooLong(path.to_path_buf(), len),
        BindError::Taken(PathTaken::Io(e)) => io_error(path, e),
        BindError::StagedTooLong(staged, len) => ServerError::TooLong(staged, len),
        BindError::Io(at, e) => io_error(&at, e),
    })
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    restrict_to(&shared.options.cpus);
    while !shared.stop.load(Ordering::Acquire) {
        // Sleep in poll until a client connects or it is time to look at `stop` again.
        if !tidepool_bindings::os::wait_readable(&listener, POLL_INTERVAL).unwrap_or(true) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("accept failed: {e}");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        if shared.clients.load(Ordering::Acquire) >= shared.options.max_clients {
            refuse(stream, shared.options.max_clients);
            continue;
        }
        shared.clients.fetch_add(1, Ordering::AcqRel);
        let conn_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("rpc-conn".into())
            .spawn(move || {
                restrict_to(&conn_shared.options.cpus);
                serve(stream, &conn_shared);
                conn_shared.clients.fetch_sub(1, Ordering::AcqRel);
            });
        let mut connections = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.retain(|h| !h.is_finished());
        match spawned {
            Ok(handle) => connections.push(handle),
            Err(e) => {
                shared.clients.fetch_sub(1, Ordering::AcqRel);
                log::warn!("cannot start a connection thread: {e}");
            }
        }
    }
}

fn restrict_to(cpus: &[usize]) {
    if !cpus.is_empty() {
        if let Err(e) = tidepool_bindings::os::set_current_thread_affinity(cpus) {
            log::warn!("cannot keep the RPC thread on cores {cpus:?}: {e}");
        }
    }
}

fn refuse(mut stream: UnixStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let e = RpcError::new(
        INTERNAL_ERROR,
        format!("too many clients (at most {max}); try again later"),
    );
    let _ = stream.write_all(&error_bytes(&e));
}

fn error_bytes(e: &RpcError) -> Vec<u8> {
    dispatch::encode(&dispatch::error_response(serde_json::Value::Null, e))
}

/// Serves one client until it hangs up, breaks the framing, or the server stops.
fn serve(mut stream: UnixStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL_INTERVAL));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut splitter = Splitter::new(MAX_REQUEST_BYTES);
    let mut buf = vec![0u8; 64 * 1024];
    while !shared.stop.load(Ordering::Acquire) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        splitter.push(&buf[..n]);
        loop {
            match splitter.next_value() {
                Ok(Some(value)) => {
                    let response = dispatch::handle(&shared.services, &shared.methods, &value);
                    if let Some(bytes) = response {
                        if stream.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let e = match e {
                        FramingError::TooLarge { limit } => RpcError::new(
                            INVALID_REQUEST,
                            format!("request larger than {limit} bytes; closing the connection"),
                        ),
                        FramingError::NotAnObject { byte } => RpcError::new(
                            PARSE_ERROR,
                            format!(
                                "parse error: expected a JSON object or array, got byte 0x{byte:02x}; closing the connection"
                            ),
                        ),
                    };
                    log::warn!("RPC client dropped: {}", e.message);
                    let _ = stream.write_all(&error_bytes(&e));
                    return;
                }
            }
        }
    }
}
