//! Data migrations through real processes: `tidepoold` with a pool of `Malloc0` and
//! `EE_Malloc1`, a shard copied onto `EE_Malloc1` while qemu-io writes to it over NBD with
//! injected target failures; on uring files (so that a restart finds the data), a SIGKILL
//! in the middle of a copy; and a member removed from a pool under writes.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tidepool_tests::{
    bdev_config_with, nbd_unix_uri, qemu_io, spawn_qemu_io, text, Daemon, Scratch,
};

const MIB: u64 = 1 << 20;
/// Member files: 2 MiB of metadata and eight 4 MiB shard extents.
const MEMBER_BYTES: u64 = 34 * MIB;
const SHARD: u64 = 4 * MIB;

struct Rig {
    s: Scratch,
    cfg: String,
}

fn rig(tag: &str) -> Rig {
    let s = Scratch::new(tag);
    let (fa, fb) = (s.join("a.img"), s.join("b.img"));
    for f in [&fa, &fb] {
        std::fs::File::create(f)
            .and_then(|h| h.set_len(MEMBER_BYTES))
            .expect("member file");
    }
    let ee = json!({"method": "bdev_error_create", "params": {"base_name": "B"}});
    let cfg = bdev_config_with(&s, "boot.json", &[("A", &fa), ("B", &fb)], &[ee]);
    Rig { s, cfg }
}

/// RAM members as the issue names them: `Malloc0`, and `EE_Malloc1` over `Malloc1`.
fn malloc_rig(tag: &str) -> Rig {
    let s = Scratch::new(tag);
    let blocks = MEMBER_BYTES / 4096;
    let bdev = |name: &str| {
        json!({"method": "bdev_malloc_create",
            "params": {"name": name, "num_blocks": blocks, "block_size": 4096}})
    };
    let ee = json!({"method": "bdev_error_create", "params": {"base_name": "Malloc1"}});
    let cfg = json!({"subsystems": [{"subsystem": "bdev",
        "config": [bdev("Malloc0"), bdev("Malloc1"), ee]}]});
    let cfg = s.file("boot.json", &cfg.to_string());
    Rig { s, cfg }
}

/// Starts the daemon with a 4-shard volume on `members` (source first, target second)
/// exported over NBD; returns it, the NBD URI and the index of a shard on the source.
fn start(r: &Rig, members: [&str; 2]) -> (Daemon, String, usize) {
    let d = Daemon::start(&r.s, "first", &["-m", "0x3", "--json", &r.cfg]);
    let both = format!("{},{}", members[0], members[1]);
    d.tpctl_ok(&["pool_create", "p", "-b", &both, "--shard-size-mib", "4"]);
    d.tpctl_ok(&["volume_create", "p", "vol", "16"]);
    let nbd = r.s.join("nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    d.tpctl_ok(&["nbd_export_create", "vol", "vol"]);
    let shard = shards(&d)
        .iter()
        .position(|s| s["bdev"] == members[0])
        .expect("a shard on the source");
    (d, nbd_unix_uri(&nbd, "vol"), shard)
}

fn shards(d: &Daemon) -> Vec<Value> {
    d.tpctl_ok(&["volume_get_volumes", "-n", "vol"])[0]["shards"]
        .as_array()
        .unwrap()
        .clone()
}

fn migration(d: &Daemon) -> Value {
    d.tpctl_ok(&["migration_get_status", "-n", "vol"])[0].clone()
}

#[test]
fn a_shard_migrates_under_writes_through_target_failures_and_reads_back_right() {
    let r = malloc_rig("mig-fail");
    let (d, uri, shard) = start(&r, ["Malloc0", "EE_Malloc1"]);
    let base = shard as u64 * SHARD;
    qemu_io(&uri, &["write -P 0x11 0 16M".into(), "flush".into()]);
    // Paced to last about a second per pass, so the writer's stream (a fraction of a second)
    // falls inside it.
    d.tpctl_ok(&[
        "migration_set_options",
        "--max-mib-per-s",
        "4",
        "--chunk-kib",
        "256",
    ]);
    d.tpctl_ok(&[
        "bdev_error_inject_error",
        "EE_Malloc1",
        "write",
        "failure",
        "-n",
        "3",
    ]);
    // A writer streams rounds of patterns over the migrating shard, in order.
    let rounds = 12u64;
    let mut cmds = Vec::new();
    for round in 0..rounds {
        for k in 0..16u64 {
            cmds.push(format!(
                "write -P {} {} 256k",
                0x20 + round,
                base + k * 256 * 1024
            ));
        }
    }
    let writer = spawn_qemu_io(&uri, &cmds);
    let started = d.tpctl_ok(&[
        "shard_migrate",
        "vol",
        &shard.to_string(),
        "--target-bdev",
        "EE_Malloc1",
    ]);
    assert_eq!(started["state"], "copying");
    let deadline = Instant::now() + Duration::from_secs(60);
    // (state, the export's bytes written so far) at each look: the writer overlapped the
    // copy if bytes came in between two looks that both saw it copying.
    let mut seen: Vec<(Value, u64)> = Vec::new();
    let status = loop {
        let m = migration(&d);
        let written = d.tpctl_ok(&["nbd_get_exports"])[0]["bytes_written"]
            .as_u64()
            .expect("bytes_written");
        seen.push((m["state"].clone(), written));
        if m["state"] == "completed" || m["state"] == "abandoned" {
            break m;
        }
        assert!(Instant::now() < deadline, "the migration did not end: {m}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        seen.windows(2)
            .any(|w| w[0].0 == "copying" && w[1].0 == "copying" && w[1].1 > w[0].1),
        "the writer never wrote while the shard was copying: {seen:?}"
    );
    let out = writer.wait_with_output().expect("writer");
    let shown = text(&out);
    assert!(
        out.status.success() && !shown.contains("failed"),
        "writer: {shown}"
    );
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(
        status["restarts"], 3,
        "one restart per injected failure: {status}"
    );
    assert_eq!(status["bytes_copied"], SHARD);
    assert_eq!(shards(&d)[shard]["bdev"], "EE_Malloc1");
    // The shard holds the writer's last round; the rest of the volume its first pattern.
    let last = 0x20 + rounds - 1;
    let mut checks = vec![format!("read -P {last} {base} 4M")];
    for i in (0..4).filter(|&i| i != shard as u64) {
        checks.push(format!("read -P 0x11 {} 4M", i * SHARD));
    }
    qemu_io(&uri, &checks);
    // Bad requests: clear errors, nothing changes.
    let out = d.tpctl(&[
        "shard_migrate",
        "vol",
        &shard.to_string(),
        "--target-bdev",
        "EE_Malloc1",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("already on 'EE_Malloc1'"),
        "{}",
        text(&out)
    );
    let out = d.tpctl(&["shard_migrate", "vol", "9", "--target-bdev", "Malloc0"]);
    assert!(
        !out.status.success() && text(&out).contains("shards 0 to 3"),
        "{}",
        text(&out)
    );
    let out = d.tpctl(&["migration_set_options", "--chunk-kib", "1"]);
    assert!(
        !out.status.success() && text(&out).contains("chunk_kib"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_sigkill_mid_copy_leaves_the_shard_wholly_on_its_source() {
    let r = rig("mig-kill");
    let (d, uri, shard) = start(&r, ["A", "EE_B"]);
    let base = shard as u64 * SHARD;
    qemu_io(
        &uri,
        &[
            "write -P 0x33 0 16M".into(),
            format!("write -P 0x44 {} 1M", base + MIB),
            "flush".into(),
        ],
    );
    let saved =
        r.s.file("saved.json", &d.tpctl_ok(&["save_config"]).to_string());
    let before = shards(&d);
    d.tpctl_ok(&[
        "migration_set_options",
        "--max-mib-per-s",
        "1",
        "--chunk-kib",
        "64",
    ]);
    d.tpctl_ok(&[
        "shard_migrate",
        "vol",
        &shard.to_string(),
        "--target-bdev",
        "EE_B",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while migration(&d)["bytes_copied"].as_u64().unwrap_or(0) < 256 * 1024 {
        assert!(Instant::now() < deadline, "the copy never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(migration(&d)["state"], "copying");
    let (status, _) = d.signal_and_wait("KILL");
    assert!(!status.success());

    let d = Daemon::start(&r.s, "second", &["-m", "0x3", "--json", &saved]);
    assert_eq!(shards(&d), before, "the placement is wholly the source's");
    let check = |uri: &str| {
        qemu_io(
            uri,
            &[
                format!("read -P 0x33 {base} 1M"),
                format!("read -P 0x44 {} 1M", base + MIB),
                format!("read -P 0x33 {} 2M", base + 2 * MIB),
            ],
        )
    };
    check(&uri);
    // Again, to the end this time (tpctl --wait draws the progress until it is over).
    let out = d.tpctl(&[
        "shard_migrate",
        "vol",
        &shard.to_string(),
        "--target-bdev",
        "EE_B",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("100%"),
        "{}",
        text(&out)
    );
    assert_eq!(shards(&d)[shard]["bdev"], "EE_B");
    check(&uri);
    qemu_io(&uri, &["flush".into()]);
    let (status, _) = d.signal_and_wait("KILL");
    assert!(!status.success());
    let d = Daemon::start(&r.s, "third", &["-m", "0x3", "--json", &saved]);
    assert_eq!(
        shards(&d)[shard]["bdev"],
        "EE_B",
        "wholly the target's after the commit"
    );
    check(&uri);
}

#[test]
fn pool_remove_bdev_under_writes_empties_a_member_and_releases_it() {
    let s = Scratch::new("mig-remove");
    let files: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let f = s.join(&format!("{n}.img"));
            std::fs::File::create(&f)
                .and_then(|h| h.set_len(MEMBER_BYTES))
                .expect("member file");
            f
        })
        .collect();
    let cfg = bdev_config_with(
        &s,
        "boot.json",
        &[("A", &files[0]), ("B", &files[1]), ("C", &files[2])],
        &[],
    );
    let d = Daemon::start(&s, "first", &["-m", "0x3", "--json", &cfg]);
    d.tpctl_ok(&["pool_create", "p", "-b", "A,B,C", "--shard-size-mib", "4"]);
    d.tpctl_ok(&["volume_create", "p", "vol", "24"]);
    let nbd = s.join("nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    d.tpctl_ok(&["nbd_export_create", "vol", "vol"]);
    let uri = nbd_unix_uri(&nbd, "vol");
    qemu_io(&uri, &["write -P 0x55 0 24M".into(), "flush".into()]);
    let on_b = shards(&d).iter().filter(|s| s["bdev"] == "B").count();
    assert_eq!(on_b, 2);
    // Refused: not a member; then the drain starts while a writer streams over the volume.
    let out = d.tpctl(&["pool_remove_bdev", "p", "Nope"]);
    assert!(
        !out.status.success() && text(&out).contains("not a member"),
        "{}",
        text(&out)
    );
    let rounds = 8u64;
    let mut cmds = Vec::new();
    for round in 0..rounds {
        for k in 0..24u64 {
            cmds.push(format!("write -P {} {} 64k", 0x60 + round, k * MIB));
        }
    }
    let writer = spawn_qemu_io(&uri, &cmds);
    let started = d.tpctl_ok(&["pool_remove_bdev", "p", "B"]);
    assert_eq!(started["shards_to_move"], 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = d.tpctl_ok(&["pool_get_pools", "-n", "p"])[0].clone();
        assert!(pool["drain_error"].is_null(), "{pool}");
        let names: Vec<&str> = pool["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        if names == ["A", "C"] {
            break;
        }
        assert!(Instant::now() < deadline, "B was not removed: {pool}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = writer.wait_with_output().expect("writer");
    assert!(
        out.status.success() && !text(&out).contains("failed"),
        "{}",
        text(&out)
    );
    assert!(shards(&d).iter().all(|s| s["bdev"] != "B"));
    let b = d.tpctl_ok(&["bdev_get_bdevs", "-b", "B"]);
    assert_eq!(b[0]["claimed"], false, "B is free again: {b}");
    let last = 0x60 + rounds - 1;
    let mut checks = Vec::new();
    for k in 0..24u64 {
        checks.push(format!("read -P {last} {} 64k", k * MIB));
        checks.push(format!("read -P 0x55 {} 960k", k * MIB + 64 * 1024));
    }
    qemu_io(&uri, &checks);
    // The pool comes back without B after a restart.
    qemu_io(&uri, &["flush".into()]);
    let saved = s.file("saved.json", &d.tpctl_ok(&["save_config"]).to_string());
    drop(d);
    let d = Daemon::start(&s, "second", &["-m", "0x3", "--json", &saved]);
    let pool = d.tpctl_ok(&["pool_get_pools", "-n", "p"])[0].clone();
    assert_eq!(pool["members"].as_array().unwrap().len(), 2, "{pool}");
    assert_eq!(pool["state"], "online");
    qemu_io(&uri, &checks);
}
