//! tidepoold: the tidepool daemon.
//!
//! Starts one reactor per selected core, creates the bdevs of an optional SPDK-style JSON
//! config (`--json`, all or nothing), and serves JSON-RPC 2.0 on a Unix socket (`-r`). On
//! SIGINT or SIGTERM it shuts down in order: stop accepting RPC clients (finishing the calls
//! they are in), stop the NBD server (each client's started I/O completes and is answered),
//! flush every bdev that supports flush, let each reactor drain its in-flight I/O, remove the
//! socket, exit 0. The config's `nbd` entries run after the reactors start. Logs go to stderr (`-L` or RUST_LOG sets the level).
//!
//! A panic on any thread (a reactor, an RPC connection, the balancer, a copy driver) stops the
//! process at once: the panic hook logs the message, the thread, the location and a
//! backtrace, then aborts (SIGABRT, a non-zero exit a supervisor sees). Nothing is left to
//! run half-alive: a reactor that died would leave its shards' I/O never completing, an RPC
//! thread that died would leak its client slot. Restarts are crash-safe (the metadata is
//! written so that an import after any crash finds a consistent pool), so stopping is the
//! safe answer. `--test-rpcs` adds `test_inject_panic`, which the process tests use to check
//! exactly that; a daemon started without the flag does not serve it.
#![forbid(unsafe_code)]

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tidepool::bdev::{BdevRegistry, IoType};
use tidepool::reactor::{Engine, EngineConfig};
use tidepool::rpc::server::{BoundSocket, RpcServer};
use tidepool::rpc::{dispatch, methods, Services};
use tidepool::{config, cpuset};

#[derive(Parser, Debug)]
#[command(
    name = "tidepoold",
    version,
    about = "The tidepool storage engine daemon, controlled over JSON-RPC 2.0 (see tpctl)"
)]
struct Args {
    /// Reactor core mask, as SPDK: 0x3 or [0,1]
    #[arg(short = 'm', long = "cpumask", conflicts_with = "cores")]
    mask: Option<String>,
    /// Reactor cores as a list: 0,1 or 0-3
    #[arg(long = "cores")]
    cores: Option<String>,
    /// SPDK-style JSON config to load at start-up (what save_config writes)
    #[arg(long = "json")]
    json: Option<String>,
    /// JSON-RPC Unix socket
    #[arg(
        short = 'r',
        long = "rpc-socket",
        default_value = "/var/tmp/tidepool.sock"
    )]
    socket: PathBuf,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides)
    #[arg(short = 'L', long = "log-level", default_value = "info")]
    log_level: String,
    /// Never park idle reactors (pure busy polling, as SPDK)
    #[arg(long = "no-park")]
    no_park: bool,
    /// Most RPC clients connected at once
    #[arg(long = "max-rpc-clients", default_value_t = 64)]
    max_rpc_clients: usize,
    /// FOR TESTS ONLY: also serve methods that break the daemon on purpose
    /// (test_inject_panic). Never use in production.
    #[arg(long = "test-rpcs")]
    test_rpcs: bool,
}

fn main() {
    install_panic_hook();
    let args = Args::parse();
    if let Err(e) = run(args) {
        log::error!("{e:#}");
        eprintln!("tidepoold: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let level: log::LevelFilter = args.log_level.parse().map_err(|_| {
        anyhow::anyhow!(
            "-L '{}' is not a log level (error, warn, info, debug, trace)",
            args.log_level
        )
    })?;
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .target(env_logger::Target::Stderr)
        .init();
    if args.max_rpc_clients == 0 {
        bail!("--max-rpc-clients must be at least 1");
    }
    let cores = match (&args.mask, &args.cores) {
        (Some(m), _) => cpuset::parse_mask(m)?,
        (None, Some(l)) => cpuset::parse_list(l)?,
        (None, None) => vec![0],
    };
    cpuset::check_available(&cores)?;

    // Registered before anything starts, so a signal that arrives during start-up is kept.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;

    // The socket path first: a second daemon on the same path stops here, before it opens a
    // device or imports a pool that the running one is writing.
    let socket = BoundSocket::bind(&args.socket)?;
    let registry = Arc::new(BdevRegistry::new());
    let mut deferred = Vec::new();
    if let Some(path) = &args.json {
        let loaded = config::load_file(path, &registry)?;
        log::info!(
            "loaded {path}: {} bdev(s): {}",
            loaded.bdevs.len(),
            loaded.bdevs.join(", ")
        );
        deferred = loaded.deferred;
    }
    let mut engine_config = EngineConfig::new(cores.clone());
    if args.no_park {
        engine_config.park_after = None;
    }
    let engine = Arc::new(Engine::start(engine_config, Arc::clone(&registry))?);
    log::info!("{} reactor(s) on cores {cores:?}", engine.reactor_count());
    let services = Arc::new(Services::new(&engine, &registry));
    let methods = methods::all();
    // All or nothing: if an entry fails, what the entries before it wrote on the devices is
    // undone (a pool formatted, a volume added to an imported pool) before tidepoold exits,
    // so that the same config, mended, starts on the devices as they were.
    let mut done: Vec<(String, Value)> = Vec::new();
    for (method, params) in deferred {
        let shown = params.to_string();
        match dispatch::call(&services, &methods, &method, Some(params.clone())) {
            Ok(_) => done.push((method, params)),
            Err(e) => {
                for (undo, undo_params) in done.iter().rev().filter_map(|(m, p)| undo_of(m, p)) {
                    match dispatch::call(&services, &methods, undo, Some(undo_params.clone())) {
                        Ok(_) => log::info!("config: undone with {undo} {undo_params}"),
                        Err(e) => log::warn!("config: {undo} {undo_params} failed: {e}"),
                    }
                }
                return Err(anyhow::Error::new(e).context(format!("config entry {method} {shown}")));
            }
        }
    }
    let mut served = methods::all();
    if args.test_rpcs {
        log::warn!("--test-rpcs: serving test-only methods that crash this daemon on purpose");
        served.extend(methods::testing::methods());
    }
    let server =
        RpcServer::for_services_with(socket, Arc::clone(&services), served, args.max_rpc_clients)?;

    // Sleeps until SIGINT or SIGTERM.
    let _ = signals.forever().next();
    log::info!("signal received: shutting down");
    server.stop();
    // NBD clients stop being read; each connection finishes its I/O and sends its replies.
    // (NotRunning, when no server was started, needs no action.)
    let _ = services.nbd.stop_server();
    // NVMe/TCP: the listeners close (connections end with the process); the target and the
    // registry stop holding each other.
    services.nvmf.clear_binder();
    drop(services);
    flush_all(&engine, &registry);
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.stop(),
        Err(_) => log::warn!("the engine is still referenced; reactors stop at exit"),
    }
    log::info!("tidepoold stopped");
    Ok(())
}

/// Makes a panic on any thread stop the process: log it (through the logger once it is set
/// up, straight to stderr before), then abort. Abort rather than exit: no exit handlers run
/// while the other threads (reactors with I/O in flight) are in whatever state the panic left
/// them, and a second thread panicking meanwhile cannot race the first one's exit.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic payload that is not a string)".to_string());
        let location = info
            .location()
            .map_or_else(|| "an unknown location".to_string(), |l| l.to_string());
        let backtrace = std::backtrace::Backtrace::force_capture();
        let line = format!(
            "panic on thread '{thread}' at {location}: {message}; stopping tidepoold (abort)"
        );
        if log::log_enabled!(log::Level::Error) {
            log::error!("{line}\nbacktrace:\n{backtrace}");
        } else {
            eprintln!("tidepoold: {line}\nbacktrace:\n{backtrace}");
        }
        std::process::abort();
    }));
}

/// Flushes every bdev that supports it, from reactor 0, so acknowledged writes are durable.
fn flush_all(engine: &Engine, registry: &BdevRegistry) {
    for listed in registry.list() {
        if !listed.bdev.info().supported.contains(IoType::Flush) {
            continue;
        }
        let name = &listed.bdev.info().name;
        match engine.flush_wait(listed.id, Duration::from_secs(10)) {
            Ok(()) => log::info!("flushed bdev '{name}'"),
            Err(e) => log::warn!("flushing bdev '{name}' failed: {e}"),
        }
    }
}

/// The call that takes back what a config entry wrote on the devices, if anything (the
/// other entries change only the running daemon, which exits).
fn undo_of(method: &str, params: &Value) -> Option<(&'static str, Value)> {
    if method == "nvmf_create_subsystem" {
        // Deleting the subsystem releases its namespaces' bdevs and closes its listeners,
        // so the entries that filled it need no undo of their own.
        let nqn = params.get("nqn")?.clone();
        return Some(("nvmf_delete_subsystem", serde_json::json!({ "nqn": nqn })));
    }
    let name = params.get("name")?.clone();
    match method {
        "pool_create" => Some(("pool_delete", serde_json::json!({ "name": name }))),
        "volume_create" => Some(("volume_delete", serde_json::json!({ "name": name }))),
        // An export claims its volume: deleted first (undone in reverse order), or the
        // volume, and so the pool, could not be.
        "nbd_export_create" => Some(("nbd_export_delete", serde_json::json!({ "name": name }))),
        _ => None,
    }
}
