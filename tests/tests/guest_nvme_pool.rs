//! Pools over NVMe in the QEMU guest: shards copied onto a controller that answers writes with
//! real NVMe Write Fault completions, a pool of the userspace driver's bdev and the polled
//! uring bdev, and a crash mid-copy onto an NVMe target.
//!
//! Runs only inside the guest (`tests/vm/run.sh`, which `scripts/test.sh` runs); not part of
//! a plain `cargo test` (`test = false`). The fault controller (`TP_FAULT_CTRL`) fails writes
//! (`TP_FAULT_BDF`) by QEMU's blkdebug rules in `tests/vm/fault.rules`, whose sectors these tests are laid
//! out around (512-byte blocks, 16 MiB shards, extents from 2 MiB):
//! - sectors 36864 and 36865 (the first blocks of extent 1), once each: the first two writes
//!   there fail, later ones succeed;
//! - sector 69632 (the first block of extent 2), always.
//!
//! Each test binds the fault controller to vfio-pci with `scripts/setup_nvme.sh` and gives it
//! back at the end.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tidepool_tests::guest::{attach, env, pool_volume_export, qemu_io, setup_nvme};
use tidepool_tests::{text, Daemon, Scratch};

const MIB: u64 = 1 << 20;
const SHARD: u64 = 16 * MIB;
/// Where extents start on a member (pool metadata takes the first 2 MiB).
const DATA_START: u64 = 2 * MIB;

/// The fault controller on vfio-pci for as long as this lives.
struct FaultOnVfio {
    bdf: String,
}

impl FaultOnVfio {
    fn bind() -> FaultOnVfio {
        let bdf = env("TP_FAULT_BDF");
        setup_nvme(&["config", &bdf]);
        FaultOnVfio { bdf }
    }
}

impl Drop for FaultOnVfio {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg(format!("{}/setup_nvme.sh", env("TP_SCRIPTS")))
            .args(["reset", &self.bdf])
            .status();
    }
}

fn shards(d: &Daemon) -> Vec<Value> {
    d.tpctl_ok(&["volume_get_volumes", "-n", "vol"])[0]["shards"]
        .as_array()
        .unwrap()
        .clone()
}

/// The member of the nvme-and-polled pool a shard on `from` moves to.
fn other_member(from: &str) -> &'static str {
    if from == "Nvme0n1" {
        "Poll0"
    } else {
        "Nvme0n1"
    }
}

/// Waits for the volume's migration to end; returns its status.
fn wait_migration(d: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = d.tpctl_ok(&["migration_get_status", "-n", "vol"])[0].clone();
        if m["state"] == "completed" || m["state"] == "abandoned" {
            return m;
        }
        assert!(Instant::now() < deadline, "the migration did not end: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon with Nvme0 (the vfio controller) and Fault0 attached, a pool of their namespaces
/// in 16 MiB shards, a 48 MiB volume exported over NBD; returns it and the NBD URI.
fn pool_on_nvme(s: &Scratch) -> (Daemon, String) {
    let d = Daemon::start(s, "d", &["-m", "0x3"]);
    let vfio = env("TP_VFIO_BDF");
    let fault = env("TP_FAULT_BDF");
    attach(&d, "Nvme0", &vfio);
    attach(&d, "Fault0", &fault);
    let uri = pool_volume_export(&d, s, "Nvme0n1,Fault0n1", 16, 48);
    let layout: Vec<(String, u64)> = shards(&d)
        .iter()
        .map(|s| {
            (
                s["bdev"].as_str().unwrap().to_string(),
                s["offset_blocks"].as_u64().unwrap(),
            )
        })
        .collect();
    // The fault rules are placed for this layout: say so loudly if it changed.
    let first = DATA_START / 512;
    assert_eq!(
        layout,
        [
            ("Nvme0n1".to_string(), first),
            ("Fault0n1".to_string(), first),
            ("Nvme0n1".to_string(), first + SHARD / 512),
        ],
        "the placement tests/vm/fault.rules was laid out for"
    );
    (d, uri)
}

#[test]
fn a_copy_onto_a_write_fault_target_restarts_completes_or_is_abandoned_unseen() {
    let s = Scratch::new("g-fault");
    let _fault = FaultOnVfio::bind();
    let (d, uri) = pool_on_nvme(&s);
    qemu_io(
        &uri,
        &[
            format!("write -P 0x11 0 {SHARD}"),
            format!("write -P 0x33 {} {SHARD}", 2 * SHARD),
            "flush".into(),
        ],
    );
    d.tpctl_ok(&[
        "migration_set_options",
        "--chunk-kib",
        "256",
        "--max-mib-per-s",
        "8",
        "--max-restarts",
        "4",
    ]);
    // A writer streams rounds of patterns over shard 0 while it is copied to Fault0n1's
    // extent 1, whose first two writes fail with Write Fault.
    let rounds = 8u64;
    let cmds: Vec<String> = (0..rounds)
        .flat_map(|r| (0..8u64).map(move |k| format!("write -P {} {} 2M", 0x20 + r, k * 2 * MIB)))
        .collect();
    let writer = tidepool_tests::spawn_qemu_io(&uri, &cmds);
    let started = d.tpctl_ok(&["shard_migrate", "vol", "0", "--target-bdev", "Fault0n1"]);
    assert_eq!(started["state"], "copying", "{started}");
    let status = wait_migration(&d);
    let out = writer.wait_with_output().expect("writer");
    let shown = text(&out);
    assert!(
        out.status.success() && !shown.contains("failed"),
        "writer: {shown}"
    );
    assert_eq!(status["state"], "completed", "{status}");
    assert!(
        status["restarts"].as_u64().unwrap() >= 1,
        "a Write Fault restarted the copy: {status}"
    );
    let why = status["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains("Write Fault"),
        "the reason names the NVMe status: {status}"
    );
    assert_eq!(shards(&d)[0]["bdev"], "Fault0n1");
    let last = 0x20 + rounds - 1;
    qemu_io(
        &uri,
        &[
            format!("read -P {last} 0 {SHARD}"),
            format!("read -P 0x33 {} {SHARD}", 2 * SHARD),
        ],
    );
    let ctrl = d.tpctl_ok(&["bdev_nvme_get_controllers", "-n", "Fault0"]);
    let errors = ctrl[0]["ctrlrs"][0]["error_completions"].to_string();
    assert!(errors.contains("Write Fault"), "{ctrl}");

    // Extent 2 fails every write: the copy is abandoned after max_restarts, the shard stays
    // on its source, and its client sees nothing.
    let started = d.tpctl_ok(&["shard_migrate", "vol", "2", "--target-bdev", "Fault0n1"]);
    assert_eq!(started["state"], "copying", "{started}");
    qemu_io(&uri, &[format!("write -P 0x44 {} 1M", 2 * SHARD)]);
    let status = wait_migration(&d);
    assert_eq!(status["state"], "abandoned", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Write Fault"),
        "{status}"
    );
    assert_eq!(shards(&d)[2]["bdev"], "Nvme0n1");
    qemu_io(
        &uri,
        &[
            format!("read -P 0x44 {} 1M", 2 * SHARD),
            format!("read -P 0x33 {} {}", 2 * SHARD + MIB, SHARD - MIB),
            format!("read -P {last} 0 {SHARD}"),
        ],
    );
}

/// A pool of the userspace driver's bdev and the polled uring bdev: every shard moves to the
/// other member and back while a client writes to it; everything reads back, and write zeroes
/// and discard work on both kinds of member.
#[test]
fn shards_move_both_ways_between_the_nvme_and_the_polled_uring_member() {
    let s = Scratch::new("g-mixed");
    let d = Daemon::start(&s, "d", &["-m", "0x3"]);
    let vfio = env("TP_VFIO_BDF");
    attach(&d, "Nvme0", &vfio);
    let poll = env("TP_POLL_DEV");
    d.tpctl_ok(&["bdev_uring_create", &poll, "Poll0", "512", "--iopoll"]);
    let uri = pool_volume_export(&d, &s, "Nvme0n1,Poll0", 8, 32);
    let step = 8 * MIB;
    let mut cmds: Vec<String> = (0..4u64)
        .map(|i| format!("write -P {} {} {step}", 0x50 + i, i * step))
        .collect();
    cmds.push("flush".into());
    qemu_io(&uri, &cmds);
    d.tpctl_ok(&["migration_set_options", "--max-mib-per-s", "16"]);
    let pattern = |round: u64, shard: u64| 0x60 + round * 8 + shard;
    for round in 0..2u64 {
        for shard in 0..4u64 {
            let from = shards(&d)[shard as usize]["bdev"]
                .as_str()
                .unwrap()
                .to_string();
            let to = other_member(&from);
            d.tpctl_ok(&[
                "shard_migrate",
                "vol",
                &shard.to_string(),
                "--target-bdev",
                to,
            ]);
            qemu_io(
                &uri,
                &[format!(
                    "write -P {} {} 1M",
                    pattern(round, shard),
                    shard * step
                )],
            );
            let status = wait_migration(&d);
            assert_eq!(status["state"], "completed", "{status}");
            assert_eq!(shards(&d)[shard as usize]["bdev"], to);
        }
    }
    for shard in 0..4u64 {
        let base = shard * step;
        qemu_io(
            &uri,
            &[
                format!("read -P {} {base} 1M", pattern(1, shard)),
                format!("read -P {} {} {}", 0x50 + shard, base + MIB, 6 * MIB),
                format!("write -z {} 4k", base + 7 * MIB),
                format!("read -P 0 {} 4k", base + 7 * MIB),
                format!("discard {} 4k", base + 7 * MIB + 4096),
                "flush".into(),
            ],
        );
    }
}

/// SIGKILL mid-copy onto the NVMe target: after a restart from the saved config (the attach,
/// the polled uring bdev, pool_import from the members' own metadata), the shard is wholly on
/// its source and every acknowledged block is intact; a copy run to the end and another
/// SIGKILL leave it wholly on the NVMe target.
#[test]
fn a_sigkill_mid_copy_onto_nvme_then_pool_import_finds_everything() {
    let s = Scratch::new("g-kill");
    let d = Daemon::start(&s, "first", &["-m", "0x3"]);
    let vfio = env("TP_VFIO_BDF");
    d.tpctl_ok(&[
        "bdev_uring_create",
        &env("TP_POLL_DEV"),
        "Poll0",
        "512",
        "--iopoll",
    ]);
    attach(&d, "Nvme0", &vfio);
    let uri = pool_volume_export(&d, &s, "Poll0,Nvme0n1", 8, 32);
    assert_eq!(
        shards(&d)[0]["bdev"],
        "Poll0",
        "shard 0 starts on the polled member"
    );
    qemu_io(
        &uri,
        &[
            "write -P 0x33 0 32M".into(),
            format!("write -P 0x44 {MIB} 1M"),
            "flush".into(),
        ],
    );
    let saved = s.file("saved.json", &d.tpctl_ok(&["save_config"]).to_string());
    let before = shards(&d);
    d.tpctl_ok(&[
        "migration_set_options",
        "--max-mib-per-s",
        "1",
        "--chunk-kib",
        "64",
    ]);
    d.tpctl_ok(&["shard_migrate", "vol", "0", "--target-bdev", "Nvme0n1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = d.tpctl_ok(&["migration_get_status", "-n", "vol"])[0].clone();
        if m["bytes_copied"].as_u64().unwrap_or(0) >= 256 * 1024 {
            assert_eq!(m["state"], "copying", "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "the copy never got going: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = d.signal_and_wait("KILL");
    assert!(!status.success());

    let check = |uri: &str| {
        qemu_io(
            uri,
            &[
                "read -P 0x33 0 1M".into(),
                format!("read -P 0x44 {MIB} 1M"),
                format!("read -P 0x33 {} {}", 2 * MIB, 30 * MIB),
            ],
        )
    };
    let d = Daemon::start(&s, "second", &["-m", "0x3", "--json", &saved]);
    assert_eq!(shards(&d), before, "the placement is wholly the source's");
    check(&uri);
    let out = d.tpctl(&[
        "shard_migrate",
        "vol",
        "0",
        "--target-bdev",
        "Nvme0n1",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(shards(&d)[0]["bdev"], "Nvme0n1");
    check(&uri);
    qemu_io(&uri, &["flush".into()]);
    let (status, _) = d.signal_and_wait("KILL");
    assert!(!status.success());
    let d = Daemon::start(&s, "third", &["-m", "0x3", "--json", &saved]);
    assert_eq!(
        shards(&d)[0]["bdev"],
        "Nvme0n1",
        "wholly the target's after the commit"
    );
    check(&uri);
}

/// tidepool-perf's verify workload through a volume on a pool of the nvme bdev and the polled
/// uring bdev, on two reactors, while every shard moves to the other member and back (by RPC
/// to the running tidepool-perf): no I/O error, no mismatch.
#[test]
fn verify_through_a_volume_while_shards_move_both_ways() {
    let s = Scratch::new("g-vverify");
    let cfg = serde_json::json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            tidepool_tests::guest::attach_entry("Nvme0", &env("TP_VFIO_BDF")),
            {"method": "bdev_uring_create", "params": {"name": "Poll0",
                "filename": env("TP_POLL_DEV"), "block_size": 512, "iopoll": true}}]},
        {"subsystem": "pool", "config": [
            {"method": "pool_create", "params": {"name": "p",
                "base_bdevs": ["Nvme0n1", "Poll0"], "shard_size_mib": 4, "force": true}},
            {"method": "volume_create", "params": {"pool": "p", "name": "vol", "size_mib": 16}},
            {"method": "migration_set_options", "params": {"max_mib_per_s": 32}}]}]});
    let cfg = s.file("vol.json", &cfg.to_string());
    let sock = s.join("perf.sock");
    let run = Command::new(tidepool_tests::bin("tidepool-perf"))
        .args([
            "-c", &cfg, "-b", "vol", "-w", "verify", "-o", "64k", "-q", "8", "-t", "25", "-m",
            "0x3", "-r", &sock,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidepool-perf");
    let tpctl = |args: &[&str]| -> Value {
        let out = Command::new(tidepool_tests::bin("tpctl"))
            .arg("-s")
            .arg(&sock)
            .args(args)
            .output()
            .expect("tpctl");
        assert!(out.status.success(), "tpctl {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&sock).exists() {
        assert!(Instant::now() < deadline, "tidepool-perf never served RPC");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut moves = 0;
    for _round in 0..2 {
        for shard in 0..4usize {
            let table = tpctl(&["volume_get_volumes", "-n", "vol"]);
            let from = table[0]["shards"][shard]["bdev"]
                .as_str()
                .unwrap()
                .to_string();
            let to = other_member(&from);
            tpctl(&[
                "shard_migrate",
                "vol",
                &shard.to_string(),
                "--target-bdev",
                to,
            ]);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let m = tpctl(&["migration_get_status", "-n", "vol"])[0].clone();
                if m["state"] == "completed" {
                    break;
                }
                assert!(m["state"] != "abandoned", "{m}");
                assert!(Instant::now() < deadline, "the copy did not end: {m}");
                std::thread::sleep(Duration::from_millis(50));
            }
            moves += 1;
        }
    }
    let out = run.wait_with_output().expect("tidepool-perf");
    let shown = text(&out);
    assert!(
        out.status.success() && !shown.contains("mismatch") && !shown.contains("I/O error"),
        "verify through the volume during {moves} moves: {shown}"
    );
    assert_eq!(moves, 8);
}
