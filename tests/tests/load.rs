//! The load monitor as a user sees it: `load_get_stats` over the RPC socket that
//! `tidepool-perf -r` serves while it drives a volume on two reactors.

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tidepool_tests::{bin, text, Scratch};

const POOL: &str = r#"{"subsystems":[
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":16384,"block_size":4096}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":16384,"block_size":4096}}]},
 {"subsystem":"pool","config":[
  {"method":"pool_create","params":{"name":"pool0","base_bdevs":["Malloc0","Malloc1"],"shard_size_mib":8}},
  {"method":"volume_create","params":{"pool":"pool0","name":"vol0","size_mib":64}}]}]}"#;

/// Starts `tidepool-perf` on the volume of `POOL`, one job per reactor of two, serving
/// JSON-RPC on a socket in `s`, with `args`; returns it once the socket answers.
fn start_perf(s: &Scratch, args: &[&str]) -> (Child, String) {
    let cfg = s.file("pool.json", POOL);
    let sock = s.join("perf.sock");
    let perf = Command::new(bin("tidepool-perf"))
        .args(["-c", &cfg, "-b", "vol0", "-C", "-m", "0x3", "-r", &sock])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tidepool-perf");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "tidepool-perf did not serve {sock}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (perf, sock)
}

/// The tests here each run a two-reactor tidepool-perf: one at a time on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn load_get_stats_reports_reactors_bdevs_and_shards_under_load() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("load");
    let (mut perf, sock) = start_perf(&s, &["-q", "8", "-w", "randrw", "-M", "70", "-t", "4"]);
    // Until a window full of load: both reactors taking reads and writes, both members and
    // three shards busy (the run lasts 4 s).
    let stats = poll_until(
        &sock,
        &["load_get_stats", "--top", "3"],
        "a sample of both reactors under load",
        Duration::from_secs(4),
        |v| {
            let all = |key: &str, ok: &dyn Fn(&Value) -> bool| {
                v[key].as_array().is_some_and(|a| a.iter().all(ok))
            };
            v["reactors"].as_array().is_some_and(|r| r.len() == 2)
                && all("reactors", &|r| {
                    f(r, "requests_taken_per_s") > 0.0
                        && f(r, "read_iops") > 0.0
                        && f(r, "write_iops") > 0.0
                })
                && v["bdevs"].as_array().is_some_and(|b| b.len() == 2)
                && all("bdevs", &|b| f(b, "latency_p99_us") > 0.0)
                && v["shards"].as_array().is_some_and(|s| s.len() == 3)
                && all("shards", &|s| f(s, "queue_depth_avg") > 0.0)
        },
    );
    let bad = Command::new(bin("tpctl"))
        .args(["-s", &sock, "call", "load_get_stats", r#"{"top":"x"}"#])
        .output()
        .expect("tpctl");
    let status = perf.wait().expect("perf exit");
    assert!(status.success(), "tidepool-perf failed");

    assert_eq!(stats["interval_ms"], 100);
    let reactors = stats["reactors"].as_array().expect("reactors");
    assert_eq!(reactors.len(), 2, "{stats}");
    let share: f64 = reactors.iter().map(|r| f(r, "share")).sum();
    assert!((share - 1.0).abs() < 0.01, "shares add up to 1: {stats}");
    for r in reactors {
        assert!(f(r, "busy_ratio") > 0.0 && f(r, "busy_ratio") <= 1.0, "{r}");
        assert!(f(r, "read_iops") > f(r, "write_iops"), "70 % reads: {r}");
        assert!(f(r, "requests_taken_per_s") > 0.0, "{r}");
        assert_eq!(r["pattern"], "random", "{r}");
    }
    let bdevs = stats["bdevs"].as_array().expect("bdevs");
    let mut names: Vec<&str> = bdevs.iter().map(|b| b["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["Malloc0", "Malloc1"],
        "the members do the I/O: {stats}"
    );
    for b in bdevs {
        assert!(
            f(b, "read_bytes_per_s") > 0.0 && f(b, "latency_p99_us") > 0.0,
            "{b}"
        );
        let share = f(b, "read_share");
        assert!(share > 0.5 && share < 0.9, "about 70 % reads: {b}");
    }
    let shards = stats["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 3, "top 3: {stats}");
    for w in shards.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            f(a, "read_iops") + f(a, "write_iops") >= f(b, "read_iops") + f(b, "write_iops"),
            "hottest first: {stats}"
        );
    }
    for sh in shards {
        assert_eq!(sh["volume"], "vol0");
        assert!(sh["shard"].as_u64().unwrap() < 8, "{sh}");
        assert!(["Malloc0", "Malloc1"].contains(&sh["bdev"].as_str().unwrap()));
        assert!(sh["owner_core"].as_u64().unwrap() < 2);
        assert!(f(sh, "queue_depth_avg") > 0.0, "{sh}");
    }
    assert!(!bad.status.success(), "a bad 'top' is refused");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("top"),
        "{}",
        text(&bad)
    );
}

/// Polls `tpctl args` (JSON) until `cond` holds of its answer, and returns that answer; fails
/// naming `what`, with the last answer, at the deadline (`within`, inside the run's length).
fn poll_until(
    sock: &str,
    args: &[&str],
    what: &str,
    within: Duration,
    mut cond: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = tpctl_ok(sock, args);
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs tpctl against `sock` and parses its JSON output; panics on failure.
fn tpctl_ok(sock: &str, args: &[&str]) -> Value {
    let out = Command::new(bin("tpctl"))
        .args(["-s", sock])
        .args(args)
        .output()
        .expect("tpctl");
    assert!(out.status.success(), "tpctl {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Turns the balancer on with short intervals and a low threshold (two 200 ms samples over
/// 1.1x the mean), and a cooldown longer than the test so that no shard can move twice.
fn enable_eager_balancer(sock: &str) {
    tpctl_ok(
        sock,
        &[
            "balancer_set_options",
            "--enabled",
            "true",
            "--interval-ms",
            "200",
            "--sustain-samples",
            "2",
            "--imbalance-threshold",
            "1.1",
            "--cooldown-ms",
            "60000",
        ],
    );
}

#[test]
fn shards_handed_between_reactors_under_verify_load_lose_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("handoff");
    let (timeline, plot) = (s.join("timeline.json"), s.join("timeline.svg"));
    // verify: every write is read back and checked; any error or mismatch fails the run.
    let args = ["-q", "16", "-w", "verify", "-o", "16k", "-t", "4"];
    let (perf, sock) = start_perf(
        &s,
        &[
            &args[..],
            &["--timeline", &timeline, "--timeline-plot", &plot],
        ]
        .concat(),
    );
    let mut moves = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        for shard in 0..8u64 {
            let vols = tpctl_ok(&sock, &["volume_get_volumes", "-n", "vol0"]);
            let owner = vols[0]["shards"][shard as usize]["owner_core"]
                .as_u64()
                .unwrap();
            let to = (1 - owner).to_string();
            let moved = tpctl_ok(
                &sock,
                &[
                    "shard_migrate",
                    "vol0",
                    &shard.to_string(),
                    "--target-core",
                    &to,
                ],
            );
            assert_eq!(moved["from_core"], owner);
            moves += 1;
        }
    }
    let out = perf.wait_with_output().expect("perf exit");
    assert!(
        out.status.success(),
        "verify failed after {moves} hand-offs: {}",
        text(&out)
    );
    assert!(moves >= 16, "only {moves} hand-offs ran");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("Volume routing"), "{report}");
    // The timeline has its points, and every hand-off as an event.
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&timeline).unwrap()).unwrap();
    let points = t["points"].as_array().unwrap();
    assert!(
        points.len() >= 30,
        "100 ms points over 4 s: {}",
        points.len()
    );
    assert!(points.iter().all(|p| p["errors"] == 0));
    assert!(points.iter().filter(|p| f(p, "iops") > 0.0).count() >= 30);
    let events = t["events"].as_array().unwrap();
    // Routes are sampled every 20 ms: a shard moved there and back between two samples
    // shows no change, so a busy machine may show fewer events than hand-offs.
    assert!(
        !events.is_empty() && events.len() <= moves,
        "{} events for {moves} hand-offs",
        events.len()
    );
    assert!(events[0]["what"]
        .as_str()
        .unwrap()
        .starts_with("vol0 shard 0: core "));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("stroke-dasharray"));
}

#[test]
fn the_balancer_evens_a_skewed_placement_without_moving_shards_back() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("balancer");
    let (perf, sock) = start_perf(&s, &["-q", "16", "-w", "randread", "-t", "8"]);
    // Skew: every shard on core 0, so reactor 0 executes all the I/O both jobs send.
    let vols = tpctl_ok(&sock, &["volume_get_volumes", "-n", "vol0"]);
    for (i, sh) in vols[0]["shards"].as_array().unwrap().iter().enumerate() {
        if sh["owner_core"] != 0 {
            tpctl_ok(
                &sock,
                &[
                    "shard_migrate",
                    "vol0",
                    &i.to_string(),
                    "--target-core",
                    "0",
                ],
            );
        }
    }
    poll_until(
        &sock,
        &["load_get_stats"],
        "reactor 0 to carry the load",
        Duration::from_secs(3),
        |v| v["reactors"][0]["share"].as_f64().is_some_and(|x| x > 0.95),
    );
    // Bad options are refused and change nothing.
    let bad = Command::new(bin("tpctl"))
        .args([
            "-s",
            &sock,
            "balancer_set_options",
            "--imbalance-threshold",
            "0.5",
        ])
        .output()
        .expect("tpctl");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("imbalance_threshold"));
    assert_eq!(tpctl_ok(&sock, &["balancer_get_status"])["enabled"], false);

    enable_eager_balancer(&sock);
    // Within 1.25x of the fair share (0.5 on two reactors), as the load samples and the
    // balancer's own scores both see it, before the run ends.
    let mut status = Value::Null;
    let stats = poll_until(
        &sock,
        &["load_get_stats"],
        "the balancer to even the reactors",
        Duration::from_secs(5),
        |v| {
            status = tpctl_ok(&sock, &["balancer_get_status"]);
            let even = |a: &Value, key: &str| {
                a.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|r| r[key].as_f64().is_some_and(|x| x <= 0.625))
                })
            };
            even(&v["reactors"], "share") && even(&status["scores"], "score")
        },
    );
    let out = perf.wait_with_output().expect("perf exit");
    assert!(out.status.success(), "{}", text(&out));

    for r in stats["reactors"].as_array().unwrap() {
        // Within 1.25x of the fair share (0.5 on two reactors).
        assert!(
            f(r, "share") <= 0.625,
            "reactor {}: {stats}\n{status}",
            r["reactor"]
        );
    }
    let decisions = status["decisions"].as_array().unwrap();
    assert!(decisions.len() >= 3, "{status}");
    let mut seen = std::collections::BTreeSet::new();
    for d in decisions {
        assert_eq!(d["outcome"], "moved", "{d}");
        assert_eq!(
            (d["from_core"].clone(), d["to_core"].clone()),
            (0.into(), 1.into()),
            "{d}"
        );
        assert!(
            seen.insert(d["shard"].as_u64().unwrap()),
            "a shard moved twice: {status}"
        );
        assert!(d["reason"].as_str().unwrap().contains("fair share"), "{d}");
    }
    assert_eq!(status["moves"], decisions.len() as u64);
}

#[test]
fn the_balancer_evens_the_members_of_a_pool_by_moving_data() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("balancer-dev");
    let (perf, sock) = start_perf(&s, &["-q", "8", "-w", "randread", "-t", "10"]);
    // Skew: move Malloc1's shards onto Malloc0 while it has room (7 of 8 end there).
    let vols = tpctl_ok(&sock, &["volume_get_volumes", "-n", "vol0"]);
    let mut moved = 0;
    for (i, sh) in vols[0]["shards"].as_array().unwrap().iter().enumerate() {
        let free = tpctl_ok(&sock, &["pool_get_pools", "-n", "pool0"])[0]["members"][0]
            ["free_shards"]
            .as_u64()
            .unwrap();
        if sh["bdev"] == "Malloc1" && free > 0 {
            let args = [
                "shard_migrate",
                "vol0",
                &i.to_string(),
                "--target-bdev",
                "Malloc0",
                "--wait",
            ];
            let out = Command::new(bin("tpctl"))
                .args(["-s", &sock])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            moved += 1;
        }
    }
    assert_eq!(moved, 3);
    let share = |stats: &Value, name: &str| {
        let bdevs = stats["bdevs"].as_array().unwrap();
        let total: f64 = bdevs.iter().map(|b| f(b, "read_iops")).sum();
        match bdevs.iter().find(|b| b["name"] == name) {
            Some(b) if total > 0.0 => f(b, "read_iops") / total,
            _ => 0.0,
        }
    };
    poll_until(
        &sock,
        &["load_get_stats"],
        "Malloc0 to carry the reads",
        Duration::from_secs(3),
        |v| share(v, "Malloc0") > 0.8,
    );
    enable_eager_balancer(&sock);
    // Even within 1.25x, every copy the balancer started over, before the run ends.
    let mut migrations = Value::Null;
    let stats = poll_until(
        &sock,
        &["load_get_stats"],
        "the balancer to even the members",
        Duration::from_secs(7),
        |v| {
            migrations = tpctl_ok(&sock, &["migration_get_status"]);
            ["Malloc0", "Malloc1"].iter().all(|m| share(v, m) <= 0.625)
                && migrations
                    .as_array()
                    .is_some_and(|a| a.iter().all(|m| m["state"] == "completed"))
        },
    );
    let status = tpctl_ok(&sock, &["balancer_get_status"]);
    let out = perf.wait_with_output().expect("perf exit");
    assert!(out.status.success(), "{}", text(&out));
    for m in ["Malloc0", "Malloc1"] {
        assert!(share(&stats, m) <= 0.625, "{m}: {stats}\n{status}");
    }
    let data_moves: Vec<&Value> = status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["to_bdev"].is_string())
        .collect();
    assert!(data_moves.len() >= 2, "{status}");
    let mut seen = std::collections::BTreeSet::new();
    for d in &data_moves {
        assert_eq!(d["outcome"], "copy started", "{d}");
        assert_eq!(
            (d["from_bdev"].as_str(), d["to_bdev"].as_str()),
            (Some("Malloc0"), Some("Malloc1"))
        );
        assert!(
            seen.insert(d["shard"].as_u64().unwrap()),
            "a shard moved twice: {status}"
        );
    }
    for m in migrations.as_array().unwrap() {
        assert_eq!(m["state"], "completed", "{m}");
    }
}
