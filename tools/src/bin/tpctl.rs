//! tpctl: the command-line JSON-RPC client of tidepoold, in the shape of SPDK's rpc.py.
//!
//! `tpctl [-s SOCKET] METHOD [ARGS]` turns the positional and flag forms rpc.py uses into the
//! method's params (`tpctl bdev_malloc_create -b Malloc0 64 4096` sends num_blocks 16384 and
//! block_size 4096), sends one request, and prints the result as pretty JSON. `tpctl call
//! METHOD '{"params":...}'` sends any method. On an error response it prints the server's
//! message and code to stderr and exits 1; it exits 2 when it cannot reach the server.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tidepool::rpc::framing::Splitter;
use tidepool::rpc::MAX_REQUEST_BYTES;

#[derive(Parser, Debug)]
#[command(
    name = "tpctl",
    version,
    about = "Control tidepoold over JSON-RPC (method names and arguments as SPDK's rpc.py)",
    after_help = "Example: tpctl bdev_malloc_create -b Malloc0 64 4096   (64 MiB of 4 KiB blocks)"
)]
struct Args {
    /// tidepoold's JSON-RPC socket
    #[arg(short = 's', long = "socket", default_value = "/var/tmp/tidepool.sock")]
    socket: String,
    /// Seconds to wait for the response
    #[arg(short = 't', long = "timeout", default_value_t = 60.0)]
    timeout: f64,
    #[command(subcommand)]
    method: Method,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
enum Method {
    /// Call any method: tpctl call METHOD '{"param": value}'
    Call {
        method: String,
        /// Params as a JSON object (or array)
        params: Option<String>,
    },
    /// List the methods the server serves
    RpcGetMethods,
    /// Busy and idle ticks of every reactor
    FrameworkGetReactors,
    /// Print the JSON config that recreates the current state (load it with tidepoold --json)
    SaveConfig,
    /// List bdevs, or one
    BdevGetBdevs {
        /// Bdev name
        #[arg(short = 'b', long = "name")]
        name: Option<String>,
        /// ms to wait for the bdev to appear
        #[arg(short = 't', long = "timeout")]
        timeout: Option<u64>,
    },
    /// I/O statistics of every bdev, or of one
    BdevGetIostat {
        /// Bdev name
        #[arg(short = 'b', long = "name")]
        name: Option<String>,
    },
    /// Create a RAM bdev: TOTAL_SIZE in MiB, BLOCK_SIZE in bytes
    BdevMallocCreate {
        /// Size in MiB
        total_size: f64,
        /// Block size in bytes
        block_size: u32,
        /// Bdev name (default MallocN)
        #[arg(short = 'b', long = "name")]
        name: Option<String>,
        /// UUID
        #[arg(short = 'u', long = "uuid")]
        uuid: Option<String>,
    },
    /// Delete a malloc bdev
    BdevMallocDelete { name: String },
    /// Create a null bdev: NAME, TOTAL_SIZE in MiB, BLOCK_SIZE in bytes
    BdevNullCreate {
        name: String,
        /// Size in MiB
        total_size: f64,
        /// Block size in bytes
        block_size: u32,
        /// UUID
        #[arg(short = 'u', long = "uuid")]
        uuid: Option<String>,
    },
    /// Delete a null bdev
    BdevNullDelete { name: String },
    /// Create an io_uring bdev on a file or block device
    BdevUringCreate {
        filename: String,
        name: String,
        /// Block size in bytes (default: the device's, at least 4096)
        block_size: Option<u32>,
        /// UUID
        #[arg(short = 'u', long = "uuid")]
        uuid: Option<String>,
    },
    /// Delete a uring bdev
    BdevUringDelete { name: String },
    /// Create EE_<BASE_NAME>, an error-injection bdev on BASE_NAME
    BdevErrorCreate {
        base_name: String,
        /// UUID
        #[arg(short = 'u', long = "uuid")]
        uuid: Option<String>,
    },
    /// Delete an error bdev
    BdevErrorDelete { name: String },
    /// Fail (failure) or hold (pending) the next NUM I/Os of IO_TYPE; io_type clear stops it
    BdevErrorInjectError {
        name: String,
        /// read, write, unmap, flush, write_zeroes, all or clear
        io_type: String,
        /// failure or pending
        error_type: String,
        /// How many I/Os
        #[arg(short = 'n', long = "num", default_value_t = 1)]
        num: u32,
    },
    /// Create a delay bdev on a base (latencies in microseconds)
    BdevDelayCreate {
        #[arg(short = 'b', long = "base-bdev-name")]
        base_bdev_name: String,
        #[arg(short = 'd', long = "name")]
        name: String,
        #[arg(short = 'r', long = "avg-read-latency")]
        avg_read_latency: u64,
        #[arg(short = 't', long = "nine-nine-read-latency")]
        p99_read_latency: u64,
        #[arg(short = 'w', long = "avg-write-latency")]
        avg_write_latency: u64,
        #[arg(short = 'n', long = "nine-nine-write-latency")]
        p99_write_latency: u64,
    },
    /// Delete a delay bdev
    BdevDelayDelete { name: String },
    /// Change one latency of a delay bdev
    BdevDelayUpdateLatency {
        delay_bdev_name: String,
        /// avg_read, p99_read, avg_write or p99_write
        latency_type: String,
        latency_us: u64,
    },
}

/// Bytes in a MiB, for rpc.py's sizes.
const MIB: f64 = 1024.0 * 1024.0;

fn num_blocks(total_size_mib: f64, block_size: u32) -> Result<u64, String> {
    if !(total_size_mib.is_finite() && total_size_mib > 0.0) {
        return Err(format!(
            "total_size {total_size_mib} must be a positive number of MiB"
        ));
    }
    if block_size == 0 {
        return Err("block_size must be above 0".into());
    }
    Ok((total_size_mib * MIB / block_size as f64) as u64)
}

/// Adds `key: value` to `params` when the value is present.
fn opt(params: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        params.insert(key.into(), v.into());
    }
}

/// The method name and params a command line stands for.
fn request(method: Method) -> Result<(String, Option<Value>), String> {
    let mut p = Map::new();
    let name = match method {
        Method::Call { method, params } => {
            let params = match params {
                None => None,
                Some(text) => Some(
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| format!("params are not valid JSON: {e}"))?,
                ),
            };
            return Ok((method, params));
        }
        Method::RpcGetMethods => "rpc_get_methods",
        Method::FrameworkGetReactors => "framework_get_reactors",
        Method::SaveConfig => "save_config",
        Method::BdevGetBdevs { name, timeout } => {
            opt(&mut p, "name", name);
            opt(&mut p, "timeout", timeout);
            "bdev_get_bdevs"
        }
        Method::BdevGetIostat { name } => {
            opt(&mut p, "name", name);
            "bdev_get_iostat"
        }
        Method::BdevMallocCreate {
            total_size,
            block_size,
            name,
            uuid,
        } => {
            p.insert(
                "num_blocks".into(),
                json!(num_blocks(total_size, block_size)?),
            );
            p.insert("block_size".into(), json!(block_size));
            opt(&mut p, "name", name);
            opt(&mut p, "uuid", uuid);
            "bdev_malloc_create"
        }
        Method::BdevNullCreate {
            name,
            total_size,
            block_size,
            uuid,
        } => {
            p.insert("name".into(), json!(name));
            p.insert(
                "num_blocks".into(),
                json!(num_blocks(total_size, block_size)?),
            );
            p.insert("block_size".into(), json!(block_size));
            opt(&mut p, "uuid", uuid);
            "bdev_null_create"
        }
        Method::BdevUringCreate {
            filename,
            name,
            block_size,
            uuid,
        } => {
            p.insert("filename".into(), json!(filename));
            p.insert("name".into(), json!(name));
            opt(&mut p, "block_size", block_size);
            opt(&mut p, "uuid", uuid);
            "bdev_uring_create"
        }
        Method::BdevErrorCreate { base_name, uuid } => {
            p.insert("base_name".into(), json!(base_name));
            opt(&mut p, "uuid", uuid);
            "bdev_error_create"
        }
        Method::BdevErrorInjectError {
            name,
            io_type,
            error_type,
            num,
        } => {
            p.insert("name".into(), json!(name));
            p.insert("io_type".into(), json!(io_type));
            p.insert("error_type".into(), json!(error_type));
            p.insert("num".into(), json!(num));
            "bdev_error_inject_error"
        }
        Method::BdevDelayCreate {
            base_bdev_name,
            name,
            avg_read_latency,
            p99_read_latency,
            avg_write_latency,
            p99_write_latency,
        } => {
            p.insert("base_bdev_name".into(), json!(base_bdev_name));
            p.insert("name".into(), json!(name));
            p.insert("avg_read_latency".into(), json!(avg_read_latency));
            p.insert("p99_read_latency".into(), json!(p99_read_latency));
            p.insert("avg_write_latency".into(), json!(avg_write_latency));
            p.insert("p99_write_latency".into(), json!(p99_write_latency));
            "bdev_delay_create"
        }
        Method::BdevDelayUpdateLatency {
            delay_bdev_name,
            latency_type,
            latency_us,
        } => {
            p.insert("delay_bdev_name".into(), json!(delay_bdev_name));
            p.insert("latency_type".into(), json!(latency_type));
            p.insert("latency_us".into(), json!(latency_us));
            "bdev_delay_update_latency"
        }
        Method::BdevMallocDelete { name } => delete(&mut p, name, "bdev_malloc_delete"),
        Method::BdevNullDelete { name } => delete(&mut p, name, "bdev_null_delete"),
        Method::BdevUringDelete { name } => delete(&mut p, name, "bdev_uring_delete"),
        Method::BdevErrorDelete { name } => delete(&mut p, name, "bdev_error_delete"),
        Method::BdevDelayDelete { name } => delete(&mut p, name, "bdev_delay_delete"),
    };
    let params = (!p.is_empty()).then_some(Value::Object(p));
    Ok((name.to_string(), params))
}

fn delete(p: &mut Map<String, Value>, name: String, method: &'static str) -> &'static str {
    p.insert("name".into(), json!(name));
    method
}

/// Sends one request and waits for its response.
fn call(
    socket: &str,
    timeout: Duration,
    method: &str,
    params: Option<Value>,
) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to tidepoold at '{socket}': {e} (is it running? -s picks the socket)"
        )
    })?;
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if let Some(p) = params {
        req["params"] = p;
    }
    stream
        .write_all(&serde_json::to_vec(&req).expect("a JSON value serializes"))
        .map_err(|e| format!("sending the request: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut splitter = Splitter::new(MAX_REQUEST_BYTES * 64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(value) = splitter
            .next_value()
            .map_err(|e| format!("bad response: {e:?}"))?
        {
            return serde_json::from_slice(&value).map_err(|e| format!("bad response: {e}"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no response within {} s", timeout.as_secs_f64()));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("socket: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => return Err("tidepoold closed the connection without answering".into()),
            Ok(n) => splitter.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

fn main() {
    let args = Args::parse();
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("tpctl: -t must be a positive number of seconds");
        std::process::exit(2);
    }
    let (method, params) = match request(args.method) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tpctl: {e}");
            std::process::exit(2);
        }
    };
    let response = match call(
        &args.socket,
        Duration::from_secs_f64(args.timeout),
        &method,
        params,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tpctl: {e}");
            std::process::exit(2);
        }
    };
    if let Some(err) = response.get("error") {
        let code = err.get("code").cloned().unwrap_or(Value::Null);
        let message = err
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("(no message)");
        eprintln!("tpctl: {method} failed: {message} (code {code})");
        std::process::exit(1);
    }
    let result = response.get("result").cloned().unwrap_or(Value::Null);
    println!(
        "{}",
        serde_json::to_string_pretty(&result).expect("a JSON value serializes")
    );
}
