//! tidepool-perf as a user runs it: real processes, real files.

use serde_json::Value;
use tidepool_tests::{run, text, Scratch};

const NULL: &str = r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":65536,"block_size":4096}}]}]}"#;
const MALLOC: &str = r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":8192,"block_size":4096}}]}]}"#;

#[test]
fn json_hgrm_and_plot_are_written_and_parse() {
    let s = Scratch::new("perf-out");
    let cfg = s.file("null.json", NULL);
    let (json, hgrm, svg) = (s.join("r.json"), s.join("r.hgrm"), s.join("r.svg"));
    let out = run(
        "tidepool-perf",
        &[
            "-c", &cfg, "-q", "16", "-o", "4k", "-w", "randread", "-t", "1", "--json", &json,
            "--hgrm", &hgrm, "--plot", &svg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("IOPS") && stdout.contains("Total"),
        "{stdout}"
    );

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["bdev"], "Null0");
    assert_eq!(job["core"], 0);
    assert!(job["iops"].as_f64().unwrap() > 0.0);
    for key in ["avg", "min", "max", "p50", "p90", "p99", "p99_9", "p99_99"] {
        assert!(
            v["total"]["latency_us"][key].as_f64().is_some(),
            "total.latency_us.{key}"
        );
    }
    let l = &v["total"]["latency_us"];
    assert!(l["min"].as_f64() <= l["p50"].as_f64() && l["p50"].as_f64() <= l["p99"].as_f64());
    assert!(l["p99"].as_f64() <= l["max"].as_f64());

    // .hgrm: a header, rows of four numbers with non-decreasing value/percentile/count, and
    // the footer whose total count matches the last row.
    let h = std::fs::read_to_string(&hgrm).unwrap();
    assert!(h.lines().next().unwrap().contains("Percentile"));
    let rows: Vec<Vec<f64>> = h
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_whitespace()
                .map(|x| x.parse::<f64>().expect(l))
                .collect()
        })
        .collect();
    assert!(rows.len() > 10, "{h}");
    for w in rows.windows(2) {
        assert!(
            w[1][0] >= w[0][0] && w[1][1] >= w[0][1] && w[1][2] >= w[0][2],
            "{w:?}"
        );
    }
    let total_line = h.lines().find(|l| l.contains("Total count")).unwrap();
    let total: f64 = total_line
        .split('=')
        .next_back()
        .unwrap()
        .trim()
        .trim_end_matches(']')
        .parse()
        .unwrap();
    assert_eq!(total, rows.last().unwrap()[2]);

    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
}

/// A volume of many small shards over three members, two reactors: large verify I/Os on a
/// small slice, whose pieces come back out of order. The job's cycle of positions used to lap
/// a slot still in flight and report its own overlap as a mismatch.
const SMALL_SHARDS: &str = r#"{"subsystems":[{"subsystem":"bdev","config":[
 {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":24576,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"M1","num_blocks":24576,"block_size":4096}},
 {"method":"bdev_malloc_create","params":{"name":"M2","num_blocks":24576,"block_size":4096}}]},
 {"subsystem":"pool","config":[
 {"method":"pool_create","params":{"name":"p","base_bdevs":["M0","M1","M2"],"shard_size_kib":128}},
 {"method":"volume_create","params":{"pool":"p","name":"pv","size_mib":200}}]}]}"#;

#[test]
fn verify_of_large_requests_on_a_volume_never_overlaps_itself() {
    let s = Scratch::new("perf-verify-volume");
    let cfg = s.file("v.json", SMALL_SHARDS);
    let json = s.join("out.json");
    let out = run(
        "tidepool-perf",
        &[
            "-c", &cfg, "-b", "pv", "-m", "0x3", "-C", "-w", "verify", "-q", "16", "-o", "4m",
            "-t", "2", "--json", &json,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["total"]["errors"], 0, "{v}");
    assert!(v["total"]["iops"].as_f64().unwrap() > 0.0);
}

#[test]
fn verify_passes_on_malloc_with_two_reactors() {
    let s = Scratch::new("perf-verify");
    let cfg = s.file("m.json", MALLOC);
    let json = s.join("v.json");
    let out = run(
        "tidepool-perf",
        &[
            "-c", &cfg, "-q", "8", "-o", "8192", "-w", "verify", "-t", "1", "--cores", "0,1", "-C",
            "--json", &json,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        v["jobs"].as_array().unwrap().len(),
        2,
        "-C puts a job on each reactor"
    );
    assert_eq!(v["total"]["errors"], 0);
    assert!(v["total"]["iops"].as_f64().unwrap() > 0.0);
}

#[test]
fn cross_core_and_ping_and_idle_benches_report() {
    let s = Scratch::new("perf-bench");
    let cfg = s.file("null.json", NULL);
    let json = s.join("x.json");
    let out = run(
        "tidepool-perf",
        &[
            "-c", &cfg, "-q", "32", "-w", "randread", "-t", "1", "-m", "0x3", "--remote", "--json",
            &json,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["total"]["iops"].as_f64().unwrap() > 0.0);
    // Each reactor's share of busy polls over the run: both ran I/O, so both polled and were
    // busy part of the time; a share is a percentage.
    let reactors = v["reactors"].as_array().expect("a reactors array");
    assert_eq!(reactors.len(), 2, "{v}");
    for (i, r) in reactors.iter().enumerate() {
        assert_eq!(r["reactor"], i, "{v}");
        let busy = r["busy_percent"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= 100.0, "{v}");
        assert!(r["polls"].as_u64().unwrap() > 0, "{v}");
    }
    assert!(
        text(&out).contains("Reactors: 0 (core 0)"),
        "{}",
        text(&out)
    );

    let out = run(
        "tidepool-perf",
        &["--bench", "ping", "-m", "0x3", "-t", "1", "--json", &json],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["ping"]["round_trips"].as_u64().unwrap() > 100);
    assert!(v["ping"]["latency_us"]["p50"].as_f64().unwrap() > 0.0);

    let out = run(
        "tidepool-perf",
        &["--bench", "idle", "-m", "0x3", "-t", "1", "--json", &json],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["idle"]["first_io_us"].as_array().unwrap().len(), 5);
    assert!(
        v["idle"]["parks"].as_u64().unwrap() > 0,
        "idle reactors must park"
    );

    // The lanes alone; the driver checks that every message comes back on its own trip.
    let out = run(
        "tidepool-perf",
        &[
            "--bench", "lanes", "-m", "0x3", "-t", "0.3", "--json", &json,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for kind in [
        "lane_message",
        "inbox_message",
        "plain_16_message",
        "plain_32_message",
        "plain_40_message",
    ] {
        let m = &v["lanes"][kind];
        assert!(
            m["round_trips_per_s"].as_f64().unwrap() > 1000.0,
            "{kind}: {m}"
        );
        assert!(m["message_bytes"].as_u64().unwrap() >= 16, "{kind}: {m}");
    }
}

/// Each bad flag or config exits non-zero with a message that names the problem.
#[test]
fn bad_flags_and_configs_are_refused_with_a_named_reason() {
    let s = Scratch::new("perf-bad");
    let good = s.file("good.json", NULL);
    let not_json = s.file("bad1.json", "{\"subsystems\": [");
    let same = s.join("same.out");
    let bad_bs = s.file(
        "bad2.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"N","num_blocks":8,"block_size":1000}}]}]}"#,
    );
    let unknown = s.file(
        "bad3.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_frobnicate_create","params":{}}]}]}"#,
    );
    let missing = s.join("nope.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-c", &good, "-q", "0", "-t", "1"], "-q 0"),
        (vec!["-c", &good, "-w", "sideways", "-t", "1"], "sideways"),
        (vec!["-c", &good, "-o", "1000", "-t", "1"], "multiple"),
        (vec!["-c", &good, "-o", "lots", "-t", "1"], "lots"),
        (vec!["-c", &good, "-t", "0"], "-t"),
        (
            vec!["-c", &good, "-w", "randread", "-M", "50", "-t", "1"],
            "-M",
        ),
        (
            vec!["-c", &good, "-w", "randrw", "-M", "150", "-t", "1"],
            "150",
        ),
        (vec!["-c", &good, "-b", "Nope0", "-t", "1"], "Nope0"),
        (vec!["-c", &good, "-m", "0xzz", "-t", "1"], "0xzz"),
        (vec!["-c", &good, "--cores", "4096", "-t", "1"], "core 4096"),
        (vec!["-c", &good, "--bench", "teleport"], "teleport"),
        (
            vec!["--bench", "lanes", "-m", "0x1", "-t", "1"],
            "two cores",
        ),
        (vec!["-c", &good, "--frobnicate"], "--frobnicate"),
        // A flag the mode does not read is refused, not ignored.
        (
            vec!["--bench", "ping", "-w", "randwrite", "-t", "1"],
            "-w does not apply to --bench ping",
        ),
        (
            vec!["--bench", "rpc", "--rpc-target", "/x.sock", "-q", "4"],
            "-q does not apply to --bench rpc",
        ),
        (
            vec!["-c", &good, "--clients", "4", "-t", "1"],
            "--clients does not apply to --bench io",
        ),
        (vec!["-t", "1"], "no bdevs"),
        (vec!["-c", &missing, "-t", "1"], "nope.json"),
        (vec!["-c", &not_json, "-t", "1"], "JSON"),
        (vec!["-c", &bad_bs, "-t", "1"], "block_size"),
        (vec!["-c", &unknown, "-t", "1"], "bdev_frobnicate_create"),
        (
            vec!["-c", &good, "-b", "Null0,Null0", "-t", "1"],
            "names bdev 'Null0' twice",
        ),
        (
            vec![
                "--bench",
                "rpc",
                "--rpc-target",
                "/nonexistent.sock",
                "--client-cores",
                "4095",
            ],
            "--client-cores '4095'",
        ),
        // Output files are checked before the run, not after it.
        (
            vec!["-c", &good, "-t", "30", "--json", "/nonexistent/r.json"],
            "--json '/nonexistent/r.json' cannot be written",
        ),
        (
            vec!["-c", &good, "-t", "30", "--json", &same, "--plot", &same],
            "name the same file",
        ),
    ];
    for (args, needle) in cases {
        let out = run("tidepool-perf", &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} should fail\n{}",
            text(&out)
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr should name '{needle}'\n{}",
            text(&out)
        );
        assert!(
            !stderr.contains("panicked"),
            "{args:?} panicked\n{}",
            text(&out)
        );
    }
}

#[test]
fn uring_backend_runs_on_a_real_file_with_o_direct() {
    let s = Scratch::new("perf-uring");
    let path = s.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    let cfg = s.file(
        "u.json",
        &format!(r#"{{"subsystems":[{{"subsystem":"bdev","config":[{{"method":"bdev_uring_create","params":{{"name":"Uring0","filename":"{path}","block_size":4096}}}}]}}]}}"#),
    );
    let out = run(
        "tidepool-perf",
        &["-c", &cfg, "-q", "8", "-w", "verify", "-t", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Uring0"));
}

/// The delay bdev on the real clock, through tidepool-perf: the measured average read latency
/// is at least the configured 500 us less 10%, and at most 50% above it. The bound above is
/// loose because a 2-core test machine running other tests only ever adds latency.
#[test]
fn delay_bdev_latency_under_tidepool_perf() {
    let s = Scratch::new("perf-delay");
    let cfg = s.file(
        "d.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":4096,"block_size":4096}},
            {"method":"bdev_delay_create","params":{"base_bdev_name":"M0","name":"Delay0",
              "avg_read_latency":500,"p99_read_latency":2000,"avg_write_latency":100,"p99_write_latency":200}}]}]}"#,
    );
    let json = s.join("d.out.json");
    let out = run(
        "tidepool-perf",
        &[
            "-c", &cfg, "-q", "16", "-w", "randread", "-t", "2", "--json", &json,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        v["jobs"].as_array().unwrap().len(),
        1,
        "only Delay0: M0 is claimed by it"
    );
    assert_eq!(v["jobs"][0]["bdev"], "Delay0");
    let avg = v["total"]["latency_us"]["avg"].as_f64().unwrap();
    assert!(
        (450.0..750.0).contains(&avg),
        "average {avg} us against a configured 500 us"
    );
}
