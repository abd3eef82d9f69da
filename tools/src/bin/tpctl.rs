//! tpctl: the command-line JSON-RPC client of tidepoold, in the shape of SPDK's rpc.py.
//!
//! `tpctl [-s SOCKET] METHOD [ARGS]` turns the positional and flag forms rpc.py uses into the
//! method's params (`tpctl bdev_malloc_create -b Malloc0 64 4096` sends num_blocks 16384 and
//! block_size 4096), sends one request, and prints the result as pretty JSON. `tpctl call
//! METHOD '{"params":...}'` sends any method. On an error response it prints the server's
//! message and code to stderr and exits 1; it exits 2 when it cannot reach the server.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::time::Duration;
use tidepool::rpc::client::RpcClient;

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
    /// The config's subsystems in the order they run, each with what it depends on
    FrameworkGetSubsystems,
    /// One subsystem's config entries (bdev, pool, balancer, nbd, nvmf)
    FrameworkGetConfig {
        /// Subsystem name
        name: String,
    },
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
        /// Poll for completions (NVMe poll queues; the device must poll)
        #[arg(long = "iopoll")]
        iopoll: bool,
    },
    /// Delete a uring bdev
    BdevUringDelete { name: String },
    /// Attach an NVMe controller (PCIe, through VFIO) or an NVMe/TCP subsystem: one bdev per
    /// namespace, NAMEn1, NAMEn2, ...
    BdevNvmeAttachController {
        /// Controller name
        #[arg(short = 'b', long = "name")]
        name: String,
        /// Transport type (PCIe or TCP)
        #[arg(short = 't', long = "trtype")]
        trtype: String,
        /// Transport address: the PCI address (dddd:bb:dd.f), or the target's IP address
        #[arg(short = 'a', long = "traddr")]
        traddr: String,
        /// TCP: address family (IPv4 or IPv6)
        #[arg(short = 'f', long = "adrfam")]
        adrfam: Option<String>,
        /// TCP: the target's port
        #[arg(short = 's', long = "trsvcid")]
        trsvcid: Option<String>,
        /// TCP: the subsystem NQN
        #[arg(short = 'n', long = "subnqn")]
        subnqn: Option<String>,
        /// TCP: the host NQN (default: a new uuid NQN)
        #[arg(short = 'q', long = "hostnqn")]
        hostnqn: Option<String>,
        /// TCP: header digest
        #[arg(long = "hdgst")]
        hdgst: bool,
        /// TCP: data digest
        #[arg(long = "ddgst")]
        ddgst: bool,
        /// TCP: seconds before a disconnected controller is lost (-1: never; 0: one try)
        #[arg(
            short = 'l',
            long = "ctrlr-loss-timeout-sec",
            allow_hyphen_values = true
        )]
        ctrlr_loss_timeout_sec: Option<i64>,
        /// TCP: seconds between reconnect tries
        #[arg(short = 'o', long = "reconnect-delay-sec")]
        reconnect_delay_sec: Option<u64>,
        /// TCP: seconds after which I/O fails while reconnecting (0: never)
        #[arg(short = 'u', long = "fast-io-fail-timeout-sec")]
        fast_io_fail_timeout_sec: Option<u64>,
        /// TCP: keep alive timeout in ms (0: none)
        #[arg(short = 'k', long = "keep-alive-timeout-ms")]
        keep_alive_timeout_ms: Option<u32>,
        /// Entries of each reactor's I/O queue pair (default 256)
        #[arg(long = "io-queue-entries")]
        io_queue_entries: Option<u16>,
        /// A command with no completion after this many ms resets the controller (default 10000)
        #[arg(long = "timeout-ms")]
        timeout_ms: Option<u64>,
    },
    /// Detach an NVMe controller and remove its bdevs
    BdevNvmeDetachController { name: String },
    /// NVMe controllers: identity, namespaces, queue pairs, errors by status
    BdevNvmeGetControllers {
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },
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
    /// Format bdevs into a pool
    PoolCreate {
        name: String,
        /// Member bdevs, comma-separated
        #[arg(
            short = 'b',
            long = "base-bdevs",
            value_delimiter = ',',
            required = true
        )]
        base_bdevs: Vec<String>,
        /// Shard size in MiB (default 64)
        #[arg(long = "shard-size-mib", conflicts_with = "shard_size_kib")]
        shard_size_mib: Option<u64>,
        /// Shard size in KiB
        #[arg(long = "shard-size-kib")]
        shard_size_kib: Option<u64>,
        /// Format bdevs that already carry tidepool metadata
        #[arg(long)]
        force: bool,
    },
    /// Bring up the pool found on these bdevs (--force: even a divided one, from its newest
    /// description)
    PoolImport {
        #[arg(
            short = 'b',
            long = "base-bdevs",
            value_delimiter = ',',
            required = true
        )]
        base_bdevs: Vec<String>,
        #[arg(long)]
        force: bool,
    },
    /// Delete a pool that holds no volume (--force: even with a member missing)
    PoolDelete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// List pools, or one
    PoolGetPools {
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },
    /// Create a volume of SIZE_MIB in POOL
    VolumeCreate {
        pool: String,
        name: String,
        size_mib: u64,
    },
    /// Delete a volume that is not exported
    VolumeDelete { name: String },
    /// Hand shard SHARD of VOLUME to the reactor on --target-core
    ShardMigrate {
        volume: String,
        shard: u32,
        /// The core whose reactor is to serve the shard
        #[arg(long = "target-core")]
        target_core: Option<usize>,
        /// A member bdev to copy the shard to
        #[arg(long = "target-bdev")]
        target_bdev: Option<String>,
        /// With --target-bdev: show the copy's progress until it ends (exit 1 if abandoned)
        #[arg(long)]
        wait: bool,
    },
    /// Empty BDEV by migrating its shards to the other members of POOL, then release it
    PoolRemoveBdev { pool: String, bdev: String },
    /// Data migrations: running, then recent
    MigrationGetStatus {
        #[arg(short = 'n', long = "volume")]
        volume: Option<String>,
    },
    /// How shard copies run
    MigrationSetOptions {
        #[arg(long = "chunk-kib")]
        chunk_kib: Option<u32>,
        #[arg(long = "max-inflight")]
        max_inflight: Option<u32>,
        /// 0: no cap
        #[arg(long = "max-mib-per-s")]
        max_mib_per_s: Option<u64>,
        #[arg(long = "max-restarts")]
        max_restarts: Option<u32>,
    },
    /// Set the balancer's options (any of them)
    BalancerSetOptions {
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long = "interval-ms")]
        interval_ms: Option<u64>,
        #[arg(long = "imbalance-threshold", value_parser = finite)]
        imbalance_threshold: Option<f64>,
        #[arg(long = "sustain-samples")]
        sustain_samples: Option<u32>,
        #[arg(long = "cooldown-ms")]
        cooldown_ms: Option<u64>,
        #[arg(long = "max-concurrent")]
        max_concurrent: Option<u32>,
        #[arg(long = "weight-requests", value_parser = finite)]
        weight_requests: Option<f64>,
        #[arg(long = "weight-bytes", value_parser = finite)]
        weight_bytes: Option<f64>,
        #[arg(long = "weight-busy", value_parser = finite)]
        weight_busy: Option<f64>,
    },
    /// The balancer's options, scores and last decisions
    BalancerGetStatus,
    /// Load over the last sampling window: reactors, bdevs, the hottest shards
    LoadGetStats {
        /// How many of the hottest shards to show
        #[arg(long = "top")]
        top: Option<usize>,
    },
    /// List volumes with their shards, or one
    VolumeGetVolumes {
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },
    /// Listen for NBD clients (host:port, default 127.0.0.1:10809, or unix:PATH)
    NbdServerStart {
        #[arg(short = 'a', long = "listen-address")]
        listen_address: Option<String>,
    },
    /// Stop the NBD server; clients are disconnected after their I/O
    NbdServerStop,
    /// Export BDEV_NAME to NBD clients as NAME
    NbdExportCreate {
        name: String,
        bdev_name: String,
        /// Refuse writes
        #[arg(short = 'r', long = "read-only")]
        read_only: bool,
    },
    /// Remove an NBD export
    NbdExportDelete { name: String },
    /// List NBD exports, or one
    NbdGetExports {
        #[arg(short = 'n', long = "name")]
        name: Option<String>,
    },
    /// Create the NVMe-oF transport (TCP only; once)
    NvmfCreateTransport {
        /// Transport type: TCP
        #[arg(short = 't', long = "trtype")]
        trtype: String,
        #[arg(short = 'q', long = "max-queue-depth")]
        max_queue_depth: Option<u32>,
        #[arg(short = 'm', long = "max-io-qpairs-per-ctrlr")]
        max_io_qpairs_per_ctrlr: Option<u32>,
        #[arg(short = 'c', long = "in-capsule-data-size")]
        in_capsule_data_size: Option<u32>,
        #[arg(short = 'i', long = "max-io-size")]
        max_io_size: Option<u32>,
        #[arg(short = 'u', long = "io-unit-size")]
        io_unit_size: Option<u32>,
        #[arg(short = 'a', long = "max-aq-depth")]
        max_aq_depth: Option<u32>,
        #[arg(short = 'n', long = "num-shared-buffers")]
        num_shared_buffers: Option<u32>,
        #[arg(short = 'b', long = "buf-cache-size")]
        buf_cache_size: Option<u32>,
        /// Zero-copy sends
        #[arg(short = 'z', long = "zcopy")]
        zcopy: bool,
        /// Disable the C2H success optimization (send a response capsule after each read)
        #[arg(short = 'o', long = "c2h-success")]
        no_c2h_success: bool,
        #[arg(short = 'y', long = "sock-priority")]
        sock_priority: Option<u32>,
        #[arg(long = "abort-timeout-sec")]
        abort_timeout_sec: Option<u32>,
    },
    /// The NVMe-oF transport and its options
    NvmfGetTransports {
        #[arg(short = 't', long = "trtype")]
        trtype: Option<String>,
    },
    /// Create an NVM subsystem
    NvmfCreateSubsystem {
        nqn: String,
        /// Serial number (up to 20 ASCII characters)
        #[arg(short = 's', long = "serial-number")]
        serial_number: Option<String>,
        /// Model number (up to 40 ASCII characters)
        #[arg(short = 'd', long = "model-number")]
        model_number: Option<String>,
        /// Let any host connect
        #[arg(short = 'a', long = "allow-any-host")]
        allow_any_host: bool,
        /// Most namespaces (default 32)
        #[arg(short = 'm', long = "max-namespaces")]
        max_namespaces: Option<u32>,
    },
    /// Delete an NVM subsystem; its bdevs are released
    NvmfDeleteSubsystem { nqn: String },
    /// Subsystems with their listeners, hosts and namespaces, or one
    NvmfGetSubsystems { nqn: Option<String> },
    /// Serve BDEV_NAME as a namespace of NQN (prints the nsid)
    NvmfSubsystemAddNs {
        nqn: String,
        bdev_name: String,
        /// Namespace ID (default: the lowest free)
        #[arg(short = 'n', long = "nsid")]
        nsid: Option<u32>,
        /// Namespace UUID (default: the bdev's)
        #[arg(short = 'u', long = "uuid")]
        uuid: Option<String>,
        /// Refuse writes (tidepool's; SPDK has no such option)
        #[arg(short = 'r', long = "read-only")]
        read_only: bool,
    },
    /// Remove namespace NSID from NQN
    NvmfSubsystemRemoveNs { nqn: String, nsid: u32 },
    /// Listen for NQN on an address
    NvmfSubsystemAddListener {
        nqn: String,
        #[command(flatten)]
        address: ListenArgs,
    },
    /// Stop listening for NQN on an address
    NvmfSubsystemRemoveListener {
        nqn: String,
        #[command(flatten)]
        address: ListenArgs,
    },
    /// Allow HOST (a host NQN) to connect to NQN
    NvmfSubsystemAddHost { nqn: String, host: String },
    /// Take HOST off NQN's allowed hosts
    NvmfSubsystemRemoveHost { nqn: String, host: String },
    /// Let any host connect to NQN (-e), or only the listed ones (-d)
    NvmfSubsystemAllowAnyHost {
        nqn: String,
        #[arg(
            short = 'e',
            long = "enable",
            conflicts_with = "disable",
            required_unless_present = "disable"
        )]
        enable: bool,
        #[arg(short = 'd', long = "disable")]
        disable: bool,
    },
    /// Controllers connected to NQN
    NvmfSubsystemGetControllers { nqn: String },
    /// Queue pairs connected to NQN
    NvmfSubsystemGetQpairs { nqn: String },
    /// Listeners of NQN
    NvmfSubsystemGetListeners { nqn: String },
}

/// rpc.py's listener options.
#[derive(clap::Args, Debug)]
struct ListenArgs {
    /// Transport type: tcp
    #[arg(short = 't', long = "trtype")]
    trtype: String,
    /// IP address
    #[arg(short = 'a', long = "traddr")]
    traddr: String,
    /// Port
    #[arg(short = 's', long = "trsvcid")]
    trsvcid: String,
    /// Address family: ipv4 or ipv6 (default ipv4)
    #[arg(short = 'f', long = "adrfam")]
    adrfam: Option<String>,
}

impl ListenArgs {
    fn to_json(&self) -> Value {
        let mut a = json!({"trtype": self.trtype, "traddr": self.traddr, "trsvcid": self.trsvcid});
        if let Some(f) = &self.adrfam {
            a["adrfam"] = json!(f);
        }
        a
    }
}

/// Bytes in a MiB, for rpc.py's sizes.
const MIB: f64 = 1024.0 * 1024.0;

/// A number option: NaN and infinities are refused here (JSON has no such numbers; sent,
/// they would become null, which the daemon reads as "not given").
fn finite(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("'{text}' is not a finite number")),
        Err(e) => Err(format!("'{text}': {e}")),
    }
}

fn num_blocks(total_size_mib: f64, block_size: u32) -> Result<u64, String> {
    if !(total_size_mib.is_finite() && total_size_mib > 0.0) {
        return Err(format!(
            "total_size {total_size_mib} must be a positive number of MiB"
        ));
    }
    if block_size == 0 {
        return Err("block_size must be above 0".into());
    }
    let blocks = total_size_mib * MIB / block_size as f64;
    if blocks >= u64::MAX as f64 {
        return Err(format!("total_size {total_size_mib} MiB is too large"));
    }
    Ok(blocks as u64)
}

/// Params as an object without its null members (absent options are not sent); none when
/// nothing is left.
fn present(params: Value) -> Option<Value> {
    let Value::Object(mut map) = params else {
        return None;
    };
    map.retain(|_, v| !v.is_null());
    (!map.is_empty()).then_some(Value::Object(map))
}

/// The method name and params a command line stands for.
fn request(method: Method) -> Result<(String, Option<Value>), String> {
    let (name, params) = match method {
        Method::Call { method, params } => {
            let params = match params {
                None => None,
                Some(text) => Some(
                    tidepool::json_strict::from_slice(text.as_bytes())
                        .map_err(|e| format!("params are not valid JSON: {e}"))?,
                ),
            };
            return Ok((method, params));
        }
        Method::RpcGetMethods => ("rpc_get_methods", Value::Null),
        Method::FrameworkGetReactors => ("framework_get_reactors", Value::Null),
        Method::SaveConfig => ("save_config", Value::Null),
        Method::FrameworkGetSubsystems => ("framework_get_subsystems", Value::Null),
        Method::FrameworkGetConfig { name } => ("framework_get_config", json!({ "name": name })),
        Method::BdevGetBdevs { name, timeout } => {
            ("bdev_get_bdevs", json!({"name": name, "timeout": timeout}))
        }
        Method::BdevGetIostat { name } => ("bdev_get_iostat", json!({"name": name})),
        Method::BdevMallocCreate {
            total_size,
            block_size,
            name,
            uuid,
        } => (
            "bdev_malloc_create",
            json!({"num_blocks": num_blocks(total_size, block_size)?,
                "block_size": block_size, "name": name, "uuid": uuid}),
        ),
        Method::BdevNullCreate {
            name,
            total_size,
            block_size,
            uuid,
        } => (
            "bdev_null_create",
            json!({"name": name, "num_blocks": num_blocks(total_size, block_size)?,
                "block_size": block_size, "uuid": uuid}),
        ),
        Method::BdevUringCreate {
            filename,
            name,
            block_size,
            uuid,
            iopoll,
        } => (
            "bdev_uring_create",
            json!({"filename": filename, "name": name, "block_size": block_size, "uuid": uuid,
                "iopoll": iopoll.then_some(true)}),
        ),
        Method::BdevNvmeAttachController {
            name,
            trtype,
            traddr,
            adrfam,
            trsvcid,
            subnqn,
            hostnqn,
            hdgst,
            ddgst,
            ctrlr_loss_timeout_sec,
            reconnect_delay_sec,
            fast_io_fail_timeout_sec,
            keep_alive_timeout_ms,
            io_queue_entries,
            timeout_ms,
        } => (
            "bdev_nvme_attach_controller",
            json!({"name": name, "trtype": trtype, "traddr": traddr, "adrfam": adrfam,
                "trsvcid": trsvcid, "subnqn": subnqn, "hostnqn": hostnqn,
                "hdgst": hdgst.then_some(true), "ddgst": ddgst.then_some(true),
                "ctrlr_loss_timeout_sec": ctrlr_loss_timeout_sec,
                "reconnect_delay_sec": reconnect_delay_sec,
                "fast_io_fail_timeout_sec": fast_io_fail_timeout_sec,
                "keep_alive_timeout_ms": keep_alive_timeout_ms,
                "io_queue_entries": io_queue_entries, "timeout_ms": timeout_ms}),
        ),
        Method::BdevNvmeDetachController { name } => {
            ("bdev_nvme_detach_controller", json!({"name": name}))
        }
        Method::BdevNvmeGetControllers { name } => {
            ("bdev_nvme_get_controllers", json!({"name": name}))
        }
        Method::BdevErrorCreate { base_name, uuid } => (
            "bdev_error_create",
            json!({"base_name": base_name, "uuid": uuid}),
        ),
        Method::BdevErrorInjectError {
            name,
            io_type,
            error_type,
            num,
        } => (
            "bdev_error_inject_error",
            json!({"name": name, "io_type": io_type, "error_type": error_type, "num": num}),
        ),
        Method::BdevDelayCreate {
            base_bdev_name,
            name,
            avg_read_latency,
            p99_read_latency,
            avg_write_latency,
            p99_write_latency,
        } => (
            "bdev_delay_create",
            json!({"base_bdev_name": base_bdev_name, "name": name,
                "avg_read_latency": avg_read_latency, "p99_read_latency": p99_read_latency,
                "avg_write_latency": avg_write_latency, "p99_write_latency": p99_write_latency}),
        ),
        Method::BdevDelayUpdateLatency {
            delay_bdev_name,
            latency_type,
            latency_us,
        } => (
            "bdev_delay_update_latency",
            json!({"delay_bdev_name": delay_bdev_name, "latency_type": latency_type,
                "latency_us": latency_us}),
        ),
        Method::PoolCreate {
            name,
            base_bdevs,
            shard_size_mib,
            shard_size_kib,
            force,
        } => (
            "pool_create",
            json!({"name": name, "base_bdevs": base_bdevs, "shard_size_mib": shard_size_mib,
                "shard_size_kib": shard_size_kib, "force": force}),
        ),
        Method::PoolImport { base_bdevs, force } => (
            "pool_import",
            json!({"base_bdevs": base_bdevs, "force": force}),
        ),
        Method::PoolDelete { name, force } => {
            ("pool_delete", json!({"name": name, "force": force}))
        }
        Method::PoolGetPools { name } => ("pool_get_pools", json!({"name": name})),
        Method::VolumeCreate {
            pool,
            name,
            size_mib,
        } => (
            "volume_create",
            json!({"pool": pool, "name": name, "size_mib": size_mib}),
        ),
        Method::VolumeDelete { name } => ("volume_delete", json!({"name": name})),
        Method::VolumeGetVolumes { name } => ("volume_get_volumes", json!({"name": name})),
        Method::LoadGetStats { top } => ("load_get_stats", json!({ "top": top })),
        Method::BalancerSetOptions {
            enabled,
            interval_ms,
            imbalance_threshold,
            sustain_samples,
            cooldown_ms,
            max_concurrent,
            weight_requests,
            weight_bytes,
            weight_busy,
        } => (
            "balancer_set_options",
            json!({"enabled": enabled, "interval_ms": interval_ms,
                   "imbalance_threshold": imbalance_threshold, "sustain_samples": sustain_samples,
                   "cooldown_ms": cooldown_ms, "max_concurrent": max_concurrent,
                   "weight_requests": weight_requests, "weight_bytes": weight_bytes,
                   "weight_busy": weight_busy}),
        ),
        Method::BalancerGetStatus => ("balancer_get_status", Value::Null),
        Method::ShardMigrate {
            volume,
            shard,
            target_core,
            target_bdev,
            wait: _,
        } => (
            "shard_migrate",
            json!({"volume": volume, "shard": shard, "target_core": target_core,
                   "target_bdev": target_bdev}),
        ),
        Method::PoolRemoveBdev { pool, bdev } => {
            ("pool_remove_bdev", json!({"pool": pool, "bdev": bdev}))
        }
        Method::MigrationGetStatus { volume } => {
            ("migration_get_status", json!({ "volume": volume }))
        }
        Method::MigrationSetOptions {
            chunk_kib,
            max_inflight,
            max_mib_per_s,
            max_restarts,
        } => (
            "migration_set_options",
            json!({"chunk_kib": chunk_kib, "max_inflight": max_inflight,
                   "max_mib_per_s": max_mib_per_s, "max_restarts": max_restarts}),
        ),
        Method::NbdServerStart { listen_address } => (
            "nbd_server_start",
            json!({"listen_address": listen_address}),
        ),
        Method::NbdServerStop => ("nbd_server_stop", Value::Null),
        Method::NbdExportCreate {
            name,
            bdev_name,
            read_only,
        } => (
            "nbd_export_create",
            json!({"name": name, "bdev_name": bdev_name, "read_only": read_only}),
        ),
        Method::NbdExportDelete { name } => ("nbd_export_delete", json!({"name": name})),
        Method::NbdGetExports { name } => ("nbd_get_exports", json!({"name": name})),
        Method::NvmfCreateTransport {
            trtype,
            max_queue_depth,
            max_io_qpairs_per_ctrlr,
            in_capsule_data_size,
            max_io_size,
            io_unit_size,
            max_aq_depth,
            num_shared_buffers,
            buf_cache_size,
            zcopy,
            no_c2h_success,
            sock_priority,
            abort_timeout_sec,
        } => (
            "nvmf_create_transport",
            json!({"trtype": trtype, "max_queue_depth": max_queue_depth,
                "max_io_qpairs_per_ctrlr": max_io_qpairs_per_ctrlr,
                "in_capsule_data_size": in_capsule_data_size, "max_io_size": max_io_size,
                "io_unit_size": io_unit_size, "max_aq_depth": max_aq_depth,
                "num_shared_buffers": num_shared_buffers, "buf_cache_size": buf_cache_size,
                "zcopy": zcopy.then_some(true), "c2h_success": no_c2h_success.then_some(false),
                "sock_priority": sock_priority, "abort_timeout_sec": abort_timeout_sec}),
        ),
        Method::NvmfGetTransports { trtype } => {
            ("nvmf_get_transports", json!({ "trtype": trtype }))
        }
        Method::NvmfCreateSubsystem {
            nqn,
            serial_number,
            model_number,
            allow_any_host,
            max_namespaces,
        } => (
            "nvmf_create_subsystem",
            json!({"nqn": nqn, "serial_number": serial_number, "model_number": model_number,
                "allow_any_host": allow_any_host.then_some(true),
                "max_namespaces": max_namespaces}),
        ),
        Method::NvmfDeleteSubsystem { nqn } => ("nvmf_delete_subsystem", json!({ "nqn": nqn })),
        Method::NvmfGetSubsystems { nqn } => ("nvmf_get_subsystems", json!({ "nqn": nqn })),
        Method::NvmfSubsystemAddNs {
            nqn,
            bdev_name,
            nsid,
            uuid,
            read_only,
        } => {
            let mut ns = json!({"bdev_name": bdev_name});
            for (key, value) in [
                ("nsid", json!(nsid)),
                ("uuid", json!(uuid)),
                ("read_only", json!(read_only.then_some(true))),
            ] {
                if !value.is_null() {
                    ns[key] = value;
                }
            }
            (
                "nvmf_subsystem_add_ns",
                json!({"nqn": nqn, "namespace": ns}),
            )
        }
        Method::NvmfSubsystemRemoveNs { nqn, nsid } => (
            "nvmf_subsystem_remove_ns",
            json!({"nqn": nqn, "nsid": nsid}),
        ),
        Method::NvmfSubsystemAddListener { nqn, address } => (
            "nvmf_subsystem_add_listener",
            json!({"nqn": nqn, "listen_address": address.to_json()}),
        ),
        Method::NvmfSubsystemRemoveListener { nqn, address } => (
            "nvmf_subsystem_remove_listener",
            json!({"nqn": nqn, "listen_address": address.to_json()}),
        ),
        Method::NvmfSubsystemAddHost { nqn, host } => {
            ("nvmf_subsystem_add_host", json!({"nqn": nqn, "host": host}))
        }
        Method::NvmfSubsystemRemoveHost { nqn, host } => (
            "nvmf_subsystem_remove_host",
            json!({"nqn": nqn, "host": host}),
        ),
        Method::NvmfSubsystemAllowAnyHost {
            nqn,
            enable,
            disable: _,
        } => (
            "nvmf_subsystem_allow_any_host",
            json!({"nqn": nqn, "allow_any_host": enable}),
        ),
        Method::NvmfSubsystemGetControllers { nqn } => {
            ("nvmf_subsystem_get_controllers", json!({ "nqn": nqn }))
        }
        Method::NvmfSubsystemGetQpairs { nqn } => {
            ("nvmf_subsystem_get_qpairs", json!({ "nqn": nqn }))
        }
        Method::NvmfSubsystemGetListeners { nqn } => {
            ("nvmf_subsystem_get_listeners", json!({ "nqn": nqn }))
        }
        Method::BdevMallocDelete { name } => ("bdev_malloc_delete", json!({"name": name})),
        Method::BdevNullDelete { name } => ("bdev_null_delete", json!({"name": name})),
        Method::BdevUringDelete { name } => ("bdev_uring_delete", json!({"name": name})),
        Method::BdevErrorDelete { name } => ("bdev_error_delete", json!({"name": name})),
        Method::BdevDelayDelete { name } => ("bdev_delay_delete", json!({"name": name})),
    };
    Ok((name.to_string(), present(params)))
}

fn main() {
    let args = Args::parse();
    // A millisecond to a day: 1e30 s overflowed Duration (a panic), 1e-12 s was no time at all.
    if !(0.001..=86_400.0).contains(&args.timeout) {
        eprintln!("tpctl: -t must be 0.001 to 86400 seconds");
        std::process::exit(2);
    }
    let wait_for = match &args.method {
        Method::ShardMigrate {
            volume,
            shard,
            target_bdev: Some(_),
            wait: true,
            ..
        } => Some((volume.clone(), *shard)),
        _ => None,
    };
    let (method, params) = match request(args.method) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tpctl: {e}");
            std::process::exit(2);
        }
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let response = match RpcClient::connect(&args.socket, timeout)
        .and_then(|mut client| client.call(&method, params))
    {
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
    if let Some((volume, shard)) = wait_for {
        std::process::exit(wait_for_migration(&args.socket, timeout, &volume, shard));
    }
}

/// Draws a progress bar on stderr until the shard's migration ends; 0 when it completed.
fn wait_for_migration(socket: &str, timeout: Duration, volume: &str, shard: u32) -> i32 {
    let mut client = match RpcClient::connect(socket, timeout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tpctl: {e}");
            return 2;
        }
    };
    loop {
        let response = match client.call("migration_get_status", Some(json!({ "volume": volume })))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("\ntpctl: {e}");
                return 2;
            }
        };
        let rows = response["result"].as_array().cloned().unwrap_or_default();
        let Some(m) = rows.iter().find(|m| m["shard"] == shard) else {
            eprintln!("\ntpctl: no migration of shard {shard} of '{volume}'");
            return 1;
        };
        let (copied, total) = (
            m["bytes_copied"].as_f64().unwrap_or(0.0),
            m["bytes_total"].as_f64().unwrap_or(1.0).max(1.0),
        );
        let done = ((copied / total) * 40.0).round() as usize;
        let state = m["state"].as_str().unwrap_or("?");
        eprint!(
            "\r[{}{}] {:>3.0}%  {:>8} MiB/s  restarts {}  {state:<10}",
            "#".repeat(done.min(40)),
            ".".repeat(40 - done.min(40)),
            copied / total * 100.0,
            m["rate_mib_per_s"],
            m["restarts"]
        );
        match state {
            "completed" => {
                eprintln!();
                return 0;
            }
            "abandoned" => {
                eprintln!("\ntpctl: the migration was abandoned: {}", m["last_error"]);
                return 1;
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
