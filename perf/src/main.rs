//! tidepool-perf: a bdevperf-style benchmark for tidepool bdevs.
//!
//! It builds bdevs from an SPDK-style JSON config (`-c`), starts one reactor per selected core,
//! places one job per bdev (round-robin over the reactors; every reactor with `-C`), prints a
//! live line each second, then per-job and total IOPS, MiB/s and latency percentiles. `--bench
//! ping` and `--bench idle` measure the reactors themselves, `--bench rpc` a JSON-RPC server
//! (see `bench`), `--bench lanes` the rings between reactors alone (see `lanes`). `-r SOCKET`
//! serves JSON-RPC during the jobs, as bdevperf does, so a control flood can be measured
//! against the I/O it must not disturb.
#![forbid(unsafe_code)]

mod bench;
mod job;
mod lanes;
mod report;
mod timeline;

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use hdrhistogram::Histogram;
use job::{Job, JobLive, JobResult, JobSpec, Workload};
use report::{LatencyUs, Report, Row};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool::bdev::{BdevId, BdevRegistry};
use tidepool::reactor::{Engine, EngineConfig, ReactorId};
use tidepool::rpc::Services;
use tidepool::{config, cpuset, DmaPool};

#[derive(Parser, Debug)]
#[command(
    name = "tidepool-perf",
    version,
    about = "Benchmark tidepool block devices, in the spirit of SPDK's bdevperf",
    after_help = "Example: tidepool-perf -c perf/null.json -q 128 -o 4096 -w randread -t 10"
)]
struct Args {
    /// SPDK-style JSON config that creates the bdevs
    #[arg(short = 'c', long = "config")]
    config: Option<String>,
    /// Bdevs to run on, comma-separated (default: every bdev not claimed by another)
    #[arg(short = 'b', long = "bdevs", value_delimiter = ',')]
    bdevs: Vec<String>,
    /// I/Os in flight per job
    #[arg(short = 'q', long = "queue-depth", default_value_t = 128)]
    queue_depth: usize,
    /// I/O size in bytes (suffixes k and m accepted: 4k, 1m)
    #[arg(short = 'o', long = "io-size", default_value = "4096")]
    io_size: String,
    /// Workload: read, write, randread, randwrite, rw, randrw or verify
    #[arg(short = 'w', long = "workload", default_value = "randread")]
    workload: String,
    /// Read percentage for rw and randrw
    #[arg(short = 'M', long = "rwmixread")]
    read_percent: Option<u32>,
    /// Run time in seconds
    #[arg(short = 't', long = "time", default_value_t = 5.0)]
    seconds: f64,
    /// Reactor core mask, as SPDK: 0x3 or [0,1]
    #[arg(short = 'm', long = "cpumask", conflicts_with = "cores")]
    mask: Option<String>,
    /// Reactor cores as a list: 0,1 or 0-3
    #[arg(long = "cores")]
    cores: Option<String>,
    /// Run a job for every bdev on every reactor
    #[arg(short = 'C')]
    every_core: bool,
    /// Execute each job's I/O on the next reactor (measures cross-core submission)
    #[arg(long)]
    remote: bool,
    /// What to measure: io (jobs on bdevs), ping (reactor round trip), idle (CPU and wake-up),
    /// rpc (JSON-RPC round trips against the server at --rpc-target), lanes (the reactors'
    /// rings alone: round trips between two pinned threads)
    #[arg(long, default_value = "io")]
    bench: String,
    /// Serve JSON-RPC on this socket while the jobs run (as bdevperf does)
    #[arg(short = 'r', long = "rpc-socket")]
    rpc_socket: Option<std::path::PathBuf>,
    /// --bench rpc: the server's socket
    #[arg(long = "rpc-target")]
    rpc_target: Option<String>,
    /// --bench rpc: concurrent clients, each one call at a time
    #[arg(long = "clients", default_value_t = 1)]
    clients: usize,
    /// --bench rpc: cores for the client threads (default: no restriction)
    #[arg(long = "client-cores")]
    client_cores: Option<String>,
    /// Seed for random offsets
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Never park idle reactors (pure busy polling)
    #[arg(long)]
    no_park: bool,
    /// Write results as JSON
    #[arg(long = "json")]
    json: Option<String>,
    /// Write the total latency distribution in HdrHistogram's .hgrm text format
    #[arg(long)]
    hgrm: Option<String>,
    /// Draw the latency percentile distribution of every job as SVG
    #[arg(long)]
    plot: Option<String>,
    /// Write IOPS and latency percentiles per interval, with shard moves, as JSON
    #[arg(long)]
    timeline: Option<String>,
    /// Draw the timeline as SVG
    #[arg(long = "timeline-plot")]
    timeline_plot: Option<String>,
    /// The timeline's interval in milliseconds
    #[arg(long = "timeline-interval-ms", default_value_t = 100)]
    timeline_interval_ms: u64,
}

fn main() {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let checked = check_flags_apply(&args, |id| {
        matches.value_source(id) == Some(ValueSource::CommandLine)
    });
    match checked.and_then(|()| run(&args)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tidepool-perf: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.strip_suffix('k') {
        Some(n) => (n, 1024),
        None => match t.strip_suffix('m') {
            Some(n) => (n, 1 << 20),
            None => (t.as_str(), 1),
        },
    };
    let n: usize = num
        .parse()
        .map_err(|_| anyhow::anyhow!("-o '{s}' is not a size like 4096, 4k or 1m"))?;
    if n == 0 {
        bail!("-o must be above zero");
    }
    Ok(n * mult)
}

/// The `--bench` modes, and the flags each reads besides `-t` and `--json` (clap's ids: the
/// field names of [`Args`], then the flag as the user writes it).
const MODES: [&str; 5] = ["io", "ping", "idle", "rpc", "lanes"];
const FLAG_MODES: [(&str, &str, &[&str]); 21] = [
    ("config", "-c", &["io", "idle"]),
    ("bdevs", "-b", &["io"]),
    ("queue_depth", "-q", &["io"]),
    ("io_size", "-o", &["io"]),
    ("workload", "-w", &["io"]),
    ("read_percent", "-M", &["io"]),
    ("every_core", "-C", &["io"]),
    ("remote", "--remote", &["io"]),
    ("rpc_socket", "-r", &["io"]),
    ("seed", "--seed", &["io"]),
    ("hgrm", "--hgrm", &["io"]),
    ("plot", "--plot", &["io"]),
    ("timeline", "--timeline", &["io"]),
    ("timeline_plot", "--timeline-plot", &["io"]),
    ("timeline_interval_ms", "--timeline-interval-ms", &["io"]),
    ("mask", "-m", &["io", "ping", "idle", "lanes"]),
    ("cores", "--cores", &["io", "ping", "idle", "lanes"]),
    ("no_park", "--no-park", &["io", "ping", "idle"]),
    ("rpc_target", "--rpc-target", &["rpc"]),
    ("clients", "--clients", &["rpc"]),
    ("client_cores", "--client-cores", &["rpc"]),
];

/// Refuses a flag given on the command line that the chosen `--bench` mode does not read:
/// ignored, it would make the user believe it shaped the figures (`-w randwrite` on
/// `--bench ping`, `-q` on `--bench rpc`). `given(id)` says whether the user gave flag `id`.
fn check_flags_apply(args: &Args, given: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let mode = args.bench.as_str();
    if !MODES.contains(&mode) {
        bail!("--bench '{mode}' is not one of {}", MODES.join(", "));
    }
    for (id, flag, modes) in FLAG_MODES {
        if given(id) && !modes.contains(&mode) {
            bail!(
                "{flag} does not apply to --bench {mode} (it is read by --bench {})",
                modes.join(", --bench ")
            );
        }
    }
    Ok(())
}

fn engine_config(args: &Args) -> anyhow::Result<EngineConfig> {
    let cores = match (&args.mask, &args.cores) {
        (Some(m), _) => cpuset::parse_mask(m)?,
        (None, Some(l)) => cpuset::parse_list(l)?,
        (None, None) if matches!(args.bench.as_str(), "ping" | "idle" | "lanes") => vec![0, 1],
        (None, None) => vec![0],
    };
    cpuset::check_available(&cores)?;
    let mut config = EngineConfig::new(cores);
    if args.no_park {
        config.park_after = None;
    }
    Ok(config)
}

fn write_json(path: &Option<String>, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_string_pretty(value)? + "\n")
            .with_context(|| format!("writing --json {p}"))?;
    }
    Ok(())
}

/// Checks the output files before the run rather than after it (a bad path used to cost the
/// whole run's results): each can be created, and no two are the same file.
fn check_outputs(args: &Args) -> anyhow::Result<()> {
    let outputs = [
        ("--json", &args.json),
        ("--hgrm", &args.hgrm),
        ("--plot", &args.plot),
        ("--timeline", &args.timeline),
        ("--timeline-plot", &args.timeline_plot),
    ];
    let given: Vec<(&str, &String)> = outputs
        .iter()
        .filter_map(|(flag, p)| p.as_ref().map(|p| (*flag, p)))
        .collect();
    for (i, (flag, path)) in given.iter().enumerate() {
        if let Some((other, _)) = given[..i].iter().find(|(_, p)| p == path) {
            bail!("{flag} and {other} name the same file '{path}'");
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("{flag} '{path}' cannot be written"))?;
    }
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<i32> {
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        bail!("-t must be above 0 and at most 86400 seconds");
    }
    check_outputs(args)?;
    let duration = Duration::from_secs_f64(args.seconds);
    let registry = Arc::new(BdevRegistry::new());
    let mut deferred = Vec::new();
    if let Some(path) = &args.config {
        deferred = config::load_file(path, &registry)?.deferred;
    }
    match args.bench.as_str() {
        "io" => run_io(args, registry, deferred, duration),
        "ping" => {
            let engine = Engine::start(engine_config(args)?, registry)?;
            let value = bench::ping(&engine, duration)?;
            write_json(&args.json, &value)?;
            engine.stop();
            Ok(0)
        }
        "idle" => {
            let bdev = match registry.list().first() {
                Some(l) => l.id,
                None => {
                    let params = serde_json::json!({"name": "Null0", "num_blocks": 1024, "block_size": 4096});
                    config::create_bdev(&registry, "bdev_null_create", params)?.0
                }
            };
            let engine = Engine::start(engine_config(args)?, registry)?;
            let value = bench::idle(&engine, bdev, duration, 5)?;
            write_json(&args.json, &value)?;
            engine.stop();
            Ok(0)
        }
        "rpc" => {
            let target = args
                .rpc_target
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--bench rpc needs --rpc-target SOCKET"))?;
            let cores = match &args.client_cores {
                Some(list) => {
                    let cores = cpuset::parse_list(list)
                        .with_context(|| format!("--client-cores '{list}'"))?;
                    cpuset::check_available(&cores)
                        .with_context(|| format!("--client-cores '{list}'"))?;
                    cores
                }
                None => Vec::new(),
            };
            let value = bench::rpc(target, args.clients, &cores, duration)?;
            write_json(&args.json, &value)?;
            Ok(0)
        }
        "lanes" => {
            let cores = engine_config(args)?.cores;
            let value = lanes::lanes(&cores, duration)?;
            write_json(&args.json, &value)?;
            Ok(0)
        }
        other => unreachable!("check_flags_apply refused --bench '{other}'"),
    }
}

struct Placed {
    spec: JobSpec,
    name: String,
    core: usize,
    reactor: usize,
}

fn plan_jobs(
    args: &Args,
    registry: &BdevRegistry,
    cores: &[usize],
    duration: Duration,
) -> anyhow::Result<Vec<Placed>> {
    let workload = Workload::parse(&args.workload).ok_or_else(|| {
        anyhow::anyhow!(
            "-w '{}' is not one of read, write, randread, randwrite, rw, randrw, verify",
            args.workload
        )
    })?;
    let read_percent = match (workload.mixed(), args.read_percent) {
        (true, Some(m)) if m <= 100 => m,
        (true, Some(m)) => bail!("-M {m} is not a percentage from 0 to 100"),
        (true, None) => 50,
        (false, Some(_)) => bail!("-M only applies to -w rw and randrw"),
        (false, None) => 0,
    };
    if !(1..=4096).contains(&args.queue_depth) {
        bail!("-q {} is not from 1 to 4096", args.queue_depth);
    }
    let io_bytes = parse_size(&args.io_size)?;
    let bdevs: Vec<(BdevId, String, u32, u64)> = if args.bdevs.is_empty() {
        registry
            .list()
            .into_iter()
            .filter(|l| l.claimed_by.is_none())
            .map(|l| {
                let i = l.bdev.info();
                (l.id, i.name.clone(), i.block_size, i.num_blocks)
            })
            .collect()
    } else {
        if let Some((i, twice)) = args
            .bdevs
            .iter()
            .enumerate()
            .find(|(i, n)| args.bdevs[..*i].contains(n))
        {
            bail!(
                "-b names bdev '{twice}' twice (entry {}): one job per bdev",
                i + 1
            );
        }
        args.bdevs
            .iter()
            .map(|name| {
                let (id, b) = registry
                    .lookup(name)
                    .ok_or_else(|| anyhow::anyhow!("-b: bdev '{name}' is not in the config"))?;
                let i = b.info();
                Ok((id, name.clone(), i.block_size, i.num_blocks))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if bdevs.is_empty() {
        bail!("no bdevs to run on: give -c with a config that creates some");
    }
    if args.remote && cores.len() < 2 {
        bail!("--remote needs at least two reactors");
    }
    let mut placed = Vec::new();
    for (b_index, (id, name, block_size, num_blocks)) in bdevs.iter().enumerate() {
        if io_bytes % *block_size as usize != 0 {
            bail!("-o {io_bytes} is not a multiple of bdev '{name}' block size {block_size}");
        }
        let io_blocks = (io_bytes / *block_size as usize) as u32;
        let reactors: Vec<usize> = if args.every_core {
            (0..cores.len()).collect()
        } else {
            vec![b_index % cores.len()]
        };
        let slice = num_blocks / reactors.len() as u64 / io_blocks as u64 * io_blocks as u64;
        if slice < io_blocks as u64 {
            bail!("bdev '{name}' ({num_blocks} blocks) is too small for -o {io_bytes} per job");
        }
        if workload == Workload::Verify && slice / (io_blocks as u64) < args.queue_depth as u64 {
            bail!(
                "verify on '{name}' needs at least -q x -o bytes per job so that in-flight I/Os never overlap"
            );
        }
        for (k, &r) in reactors.iter().enumerate() {
            let exec = if args.remote {
                (r + 1) % cores.len()
            } else {
                r
            };
            placed.push(Placed {
                spec: JobSpec {
                    index: placed.len(),
                    bdev: *id,
                    exec_reactor: exec as ReactorId,
                    workload,
                    read_percent,
                    depth: args.queue_depth,
                    io_blocks,
                    block_size: *block_size,
                    first_block: slice * k as u64,
                    range_blocks: slice,
                    duration_ns: duration.as_nanos() as u64,
                    seed: args.seed,
                },
                name: name.clone(),
                core: cores[r],
                reactor: r,
            });
        }
    }
    Ok(placed)
}

/// Runs the config's pool, volume and balancer entries on the started engine (volumes are
/// bdevs that jobs can run on); NBD entries are tidepoold's and are skipped.
fn run_deferred(services: &Services, deferred: Vec<(String, Value)>) -> anyhow::Result<()> {
    let methods = tidepool::rpc::methods::all();
    for (method, params) in deferred {
        if method.starts_with("nbd_") {
            eprintln!("tidepool-perf: skipping '{method}': only tidepoold serves NBD");
            continue;
        }
        let shown = params.to_string();
        tidepool::rpc::dispatch::call(services, &methods, &method, Some(params))
            .with_context(|| format!("config entry {method} {shown}"))?;
    }
    Ok(())
}

fn run_io(
    args: &Args,
    registry: Arc<BdevRegistry>,
    deferred: Vec<(String, Value)>,
    duration: Duration,
) -> anyhow::Result<i32> {
    if args.timeline_interval_ms == 0 {
        bail!("--timeline-interval-ms must be at least 1");
    }
    let engine_cfg = engine_config(args)?;
    let cores = engine_cfg.cores.clone();
    let engine = Arc::new(Engine::start(engine_cfg, Arc::clone(&registry))?);
    let services = Arc::new(Services::new(&engine, &registry));
    run_deferred(&services, deferred)?;
    let jobs = plan_jobs(args, &registry, &cores, duration)?;
    let io_bytes = parse_size(&args.io_size)?;
    println!(
        "Running {} job(s) for {:.1} s: -w {} -q {} -o {} on cores {:?}{}",
        jobs.len(),
        args.seconds,
        args.workload,
        args.queue_depth,
        io_bytes,
        cores,
        if args.remote {
            " (I/O executed on the next reactor)"
        } else {
            ""
        }
    );
    let rpc_server = match &args.rpc_socket {
        Some(path) => {
            let max_clients = tidepool::rpc::server::ServerOptions::default().max_clients;
            let server = tidepool::rpc::server::RpcServer::for_services(
                path,
                Arc::clone(&services),
                max_clients,
            )?;
            Some(server)
        }
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<JobResult>(jobs.len());
    let timeline_on = args.timeline.is_some() || args.timeline_plot.is_some();
    let interval_ns = args.timeline_interval_ms * 1_000_000;
    let (slice_tx, slice_rx) = std::sync::mpsc::channel::<timeline::Slice>();
    let t0 = tidepool::time::now();
    let mut watcher = timeline::Watcher::default();
    let mut events = Vec::new();
    if timeline_on {
        watcher.poll(&services.pools, &cores, t0);
    }
    let mut lives = Vec::new();
    let mut meta = Vec::new();
    for p in jobs {
        let live = Arc::new(JobLive::default());
        let pool = DmaPool::new(io_bytes, p.spec.depth)?;
        let mut job = Job::new(p.spec, &pool, Arc::clone(&live), tx.clone());
        if timeline_on {
            job = job.with_timeline(timeline::Recorder::new(slice_tx.clone(), interval_ns));
        }
        engine.call(p.reactor, move |r| {
            r.spawn(Box::new(job));
        })?;
        lives.push(live);
        meta.push((p.name, p.core));
    }
    drop(tx);
    drop(slice_tx);

    // One live line a second; with a timeline, the volumes' routes are watched meanwhile.
    let reactors_before = engine.stats();
    let start = Instant::now();
    let mut last_ios = 0u64;
    let mut tick = 1u32;
    while start.elapsed() < duration {
        let next = Duration::from_secs(tick as u64).min(duration);
        loop {
            let left = next.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            if !timeline_on {
                std::thread::sleep(left);
                continue;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
            events.extend(watcher.poll(&services.pools, &cores, tidepool::time::now()));
        }
        let ios: u64 = lives.iter().map(|l| l.ios.load(Ordering::Relaxed)).sum();
        let errors: u64 = lives.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
        let interval = next.as_secs_f64() - (tick - 1) as f64;
        let iops = (ios - last_ios) as f64 / interval.max(1e-3);
        println!(
            "[{:>6.1} s] {:>12.0} IOPS {:>10.2} MiB/s  errors {}",
            next.as_secs_f64(),
            iops,
            iops * io_bytes as f64 / (1 << 20) as f64,
            errors
        );
        last_ios = ios;
        tick += 1;
    }

    let mut results: Vec<JobResult> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while results.len() < meta.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => results.push(r),
            Err(_) => bail!(
                "{} job(s) did not finish within 30 s of the end (I/O stuck in a device?)",
                meta.len() - results.len()
            ),
        }
    }
    if let Some(server) = rpc_server {
        server.stop();
    }
    if timeline_on {
        let points = timeline::merge(slice_rx.try_iter().collect(), t0, interval_ns);
        if let Some(p) = &args.timeline {
            let json = timeline::to_json(&points, &events, t0, interval_ns);
            std::fs::write(p, serde_json::to_string_pretty(&json)? + "\n")
                .with_context(|| format!("writing --timeline {p}"))?;
        }
        if let Some(p) = &args.timeline_plot {
            let title = format!(
                "{} -q {} -o {} over time",
                args.workload, args.queue_depth, io_bytes
            );
            std::fs::write(p, timeline::svg(&title, &points, &events, t0))
                .with_context(|| format!("writing --timeline-plot {p}"))?;
        }
    }
    let routing = route_counters(&engine)?;
    let reactors: Vec<report::ReactorBusy> = reactors_before
        .iter()
        .zip(engine.stats())
        .map(|(before, after)| report::ReactorBusy::between(before, &after))
        .collect();
    drop(services);
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.stop(),
        Err(_) => bail!("the engine is still shared after the RPC server stopped"),
    }
    results.sort_by_key(|r| r.index);

    let mut total_hist = report::latency_histogram();
    let mut rows = Vec::new();
    let (mut total_iops, mut total_errors) = (0.0, 0u64);
    for r in &results {
        let (name, core) = &meta[r.index];
        let iops = r.ios as f64 / (r.elapsed_ns as f64 / 1e9);
        total_iops += iops;
        total_errors += r.errors;
        total_hist.add(&r.latency_ns)?;
        rows.push(Row {
            bdev: Some(name.clone()),
            core: Some(*core),
            iops,
            mib_per_s: iops * io_bytes as f64 / (1 << 20) as f64,
            errors: r.errors,
            latency_us: LatencyUs::from_ns(&r.latency_ns),
        });
        if let Some(e) = &r.first_verify_error {
            eprintln!("tidepool-perf: {name}: {e}");
        }
    }
    let report = Report {
        jobs: rows,
        total: Row {
            bdev: None,
            core: None,
            iops: total_iops,
            mib_per_s: total_iops * io_bytes as f64 / (1 << 20) as f64,
            errors: total_errors,
            latency_us: LatencyUs::from_ns(&total_hist),
        },
    };
    report::print_table(&report);
    if let Some(r) = &routing {
        report::print_routing(r);
    }
    report::print_reactors(&reactors);
    let mut json = serde_json::to_value(&report)?;
    json["reactors"] = serde_json::to_value(&reactors)?;
    if let Some(r) = &routing {
        json["routing"] = serde_json::to_value(r)?;
    }
    write_json(&args.json, &json)?;
    if let Some(p) = &args.hgrm {
        std::fs::write(p, report::hgrm(&total_hist))
            .with_context(|| format!("writing --hgrm {p}"))?;
    }
    if let Some(p) = &args.plot {
        let series: Vec<(String, &Histogram<u64>)> = results
            .iter()
            .map(|r| {
                let (name, core) = &meta[r.index];
                (format!("{name} on core {core}"), &r.latency_ns)
            })
            .collect();
        let title = format!("{} -q {} -o {}", args.workload, args.queue_depth, io_bytes);
        std::fs::write(p, report::plot_svg(&title, &series))
            .with_context(|| format!("writing --plot {p}"))?;
    }
    if total_errors > 0 {
        eprintln!("tidepool-perf: {total_errors} I/O error(s)");
        return Ok(1);
    }
    Ok(0)
}

/// The volume router's counts summed over the reactors; `None` when no volume I/O ran.
fn route_counters(engine: &Engine) -> anyhow::Result<Option<report::Routing>> {
    let mut total = report::Routing::default();
    for r in 0..engine.reactor_count() {
        let c = engine.call_wait(r, Duration::from_secs(5), |r| r.ctx().route_counters())?;
        total.local += c.local;
        total.remote += c.remote;
        total.forwarded += c.forwarded;
    }
    Ok((total.local + total.remote > 0).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag is in the table of modes (or read by every mode), so that a new flag
    /// cannot be silently ignored by the modes that do not read it.
    #[test]
    fn every_flag_says_which_modes_read_it() {
        let every_mode = ["seconds", "json", "bench", "help", "version"];
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                every_mode.contains(&id) || FLAG_MODES.iter().any(|(f, _, _)| *f == id),
                "flag '{id}' is missing from FLAG_MODES"
            );
        }
        for (id, _, modes) in FLAG_MODES {
            assert!(modes.iter().all(|m| MODES.contains(m)), "{id}: {modes:?}");
        }
    }
}
