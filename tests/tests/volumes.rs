//! Pools and volumes through real processes: `tidepoold` on uring bdevs over scratch files,
//! data written with qemu-io through an NBD export of a volume, SIGKILL, restart from the
//! saved config, and every acknowledged-and-flushed block checked. Plus the RPC errors.

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tidepool_tests::{
    bdev_config, external, external_ok, nbd_unix_uri as uri, text, Daemon, Scratch,
};

const MIB: u64 = 1 << 20;
/// Member files: 2 MiB of metadata and eight 4 MiB shard extents.
const MEMBER_BYTES: u64 = 34 * MIB;

/// The pattern byte of 4 MiB region `i` (one shard each).
fn byte(i: u64) -> u8 {
    0x10 + i as u8
}

#[test]
fn sigkill_and_restart_keep_every_flushed_block_of_a_volume() {
    let s = Scratch::new("vol-kill");
    let (fa, fb) = (s.join("a.img"), s.join("b.img"));
    for f in [&fa, &fb] {
        std::fs::File::create(f)
            .and_then(|h| h.set_len(MEMBER_BYTES))
            .expect("member file");
    }
    let cfg = bdev_config(&s, "boot.json", &[("A", &fa), ("B", &fb)]);
    let d = Daemon::start(&s, "first", &["-m", "0x3", "--json", &cfg]);
    d.tpctl_ok(&["pool_create", "p", "-b", "A,B", "--shard-size-mib", "4"]);
    d.tpctl_ok(&["volume_create", "p", "vol", "48"]);
    let nbd = s.join("nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    d.tpctl_ok(&["nbd_export_create", "vol", "vol"]);
    let table = d.tpctl_ok(&["volume_get_volumes", "-n", "vol"])[0]["shards"].clone();
    let shards = table.as_array().unwrap();
    assert_eq!(shards.len(), 12);
    for m in ["A", "B"] {
        assert_eq!(shards.iter().filter(|s| s["bdev"] == m).count(), 6);
    }
    for core in 0..2 {
        assert_eq!(shards.iter().filter(|s| s["owner_core"] == core).count(), 6);
    }
    let saved = s.file("saved.json", &d.tpctl_ok(&["save_config"]).to_string());

    // Acknowledged and flushed: one pattern per shard, then one write across the boundary
    // of shards 0 and 1 (served by different reactors on different members).
    let target = uri(&nbd, "vol");
    let mut args = vec!["-f".to_string(), "raw".into(), target.clone()];
    for i in 0..12 {
        args.push("-c".into());
        args.push(format!("write -P {} {} 4M", byte(i), i * 4 * MIB));
    }
    args.extend([
        "-c".into(),
        format!("write -P 0x77 {} 128k", 4 * MIB - 64 * 1024),
    ]);
    args.extend(["-c".into(), "flush".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    external_ok("qemu-io", &args);

    // Not flushed: a writer streams 0xee over shards 8..12 while the daemon is killed.
    let mut stream = vec!["-f".to_string(), "raw".into(), target.clone()];
    for round in 0..20u64 {
        for k in 0..64u64 {
            let off = 32 * MIB + ((k * 5 + round) % 64) * 256 * 1024;
            stream.extend(["-c".into(), format!("write -P 0xee {off} 256k")]);
        }
    }
    let mut writer = Command::new("qemu-io")
        .args(&stream)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io (scripts/test.sh installs qemu-utils)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.tpctl_ok(&["nbd_get_exports", "-n", "vol"])[0]["bytes_written"]
        .as_u64()
        .unwrap()
        < 48 * MIB + 128 * 1024 + 4 * MIB
    {
        assert!(
            Instant::now() < deadline,
            "the streaming writer never got going"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, _) = d.signal_and_wait("KILL");
    assert!(!status.success(), "SIGKILL ends the daemon");
    let _ = writer.kill();
    let _ = writer.wait();

    // Restart from the saved config: the bdevs, pool_import, the NBD server and export.
    let d = Daemon::start(&s, "second", &["-m", "0x3", "--json", &saved]);
    let pool = &d.tpctl_ok(&["pool_get_pools", "-n", "p"])[0];
    assert_eq!(pool["state"], "online", "{pool}");
    let again = d.tpctl_ok(&["volume_get_volumes", "-n", "vol"])[0]["shards"].clone();
    assert_eq!(again, table, "the routing table came back as it was");
    let mut args = vec!["-f".to_string(), "raw".into(), target.clone()];
    let check = |args: &mut Vec<String>, pattern: u8, off: u64, len: u64| {
        args.extend(["-c".into(), format!("read -P {pattern} {off} {len}")]);
    };
    check(&mut args, byte(0), 0, 4 * MIB - 64 * 1024);
    check(&mut args, 0x77, 4 * MIB - 64 * 1024, 128 * 1024);
    check(&mut args, byte(1), 4 * MIB + 64 * 1024, 4 * MIB - 64 * 1024);
    for i in 2..8 {
        check(&mut args, byte(i), i * 4 * MIB, 4 * MIB);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = external("qemu-io", &args);
    let shown = text(&out);
    assert!(out.status.success() && !shown.contains("failed"), "{shown}");
    // Shards 8..12 were being overwritten: each 4 KiB block is the flushed pattern or the
    // streamed one, never anything else.
    let img = s.join("tail.img");
    external_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &target, &img],
    );
    let data = std::fs::read(&img).expect("converted image");
    let mut streamed = 0;
    for (k, block) in data[(32 * MIB) as usize..(48 * MIB) as usize]
        .chunks(4096)
        .enumerate()
    {
        let shard = 8 + (k as u64 * 4096) / (4 * MIB);
        let old = block.iter().all(|&b| b == byte(shard));
        let new = block.iter().all(|&b| b == 0xee);
        assert!(
            old || new,
            "block {k} of shards 8..12 is neither old nor new"
        );
        streamed += new as usize;
    }
    assert!(streamed > 0, "some streamed writes reached the members");

    // Member B gone: the pool comes up degraded, B's shards fail, A's still serve.
    drop(d);
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let bdevs = cfg["subsystems"][0]["config"].as_array_mut().unwrap();
    bdevs.retain(|e| e["params"]["name"] != "B");
    let degraded = s.file("degraded.json", &cfg.to_string());
    let d = Daemon::start(&s, "third", &["-m", "0x3", "--json", &degraded]);
    let pool = &d.tpctl_ok(&["pool_get_pools", "-n", "p"])[0];
    assert_eq!(pool["state"], "degraded", "{pool}");
    assert_eq!(pool["members"][1]["state"], "missing", "{pool}");
    let shards = d.tpctl_ok(&["volume_get_volumes", "-n", "vol"])[0]["shards"].clone();
    for (i, shard) in shards.as_array().unwrap().iter().enumerate().take(8) {
        let on_a = shard["bdev"] == "A";
        assert_eq!(shard["state"], if on_a { "online" } else { "unavailable" });
        let read = format!(
            "read -P {} {} 4k",
            byte(i as u64),
            i as u64 * 4 * MIB + 512 * 1024
        );
        let out = external("qemu-io", &["-f", "raw", &target, "-c", &read]);
        let shown = text(&out);
        if on_a {
            assert!(
                !shown.contains("failed") && !shown.contains("error"),
                "shard {i}: {shown}"
            );
        } else {
            assert!(shown.contains("Input/output error"), "shard {i}: {shown}");
        }
    }
    assert!(d.log_text().contains("DEGRADED"), "{}", d.log_text());
}

/// Runs tpctl and returns its stderr (where errors and their codes go); requires failure.
fn refused(d: &Daemon, args: &[&str]) -> String {
    let out = d.tpctl(args);
    assert!(
        !out.status.success(),
        "tpctl {args:?} should fail: {}",
        text(&out)
    );
    text(&out)
}

#[test]
fn pool_and_volume_errors_are_clear_and_change_nothing() {
    let s = Scratch::new("vol-errors");
    let d = Daemon::start(&s, "errors", &[]);
    for name in ["M0", "M1", "M2"] {
        d.tpctl_ok(&["bdev_malloc_create", "-b", name, "18", "4096"]);
    }
    // 18 MiB members: 2 MiB of metadata and four 4 MiB extents each.
    d.tpctl_ok(&["pool_create", "p", "-b", "M0,M1", "--shard-size-mib", "4"]);
    d.tpctl_ok(&["volume_create", "p", "v", "8"]);
    let pools = d.tpctl_ok(&["pool_get_pools"]);
    let volumes = d.tpctl_ok(&["volume_get_volumes"]);
    let bdevs = d.tpctl_ok(&["bdev_get_bdevs"]);

    for (args, needles) in [
        (
            vec!["volume_create", "p", "big", "28"],
            vec!["-28", "needs 7 shard(s)", "6 free"],
        ),
        (
            vec!["volume_create", "p", "v", "4"],
            vec!["-17", "'v' already exists"],
        ),
        (
            vec!["volume_create", "p", "M2", "4"],
            vec!["-17", "'M2' already exists"],
        ),
        (
            vec!["volume_create", "nope", "w", "4"],
            vec!["-19", "pool 'nope' not found"],
        ),
        (
            vec!["volume_create", "p", "w", "0"],
            vec!["-32602", "size_mib"],
        ),
        (
            vec!["pool_create", "p", "-b", "M2"],
            vec!["-17", "pool 'p' already exists"],
        ),
        (
            vec!["pool_create", "q", "-b", "M2", "--shard-size-kib", "6"],
            vec!["-32602", "multiple of the 4096-byte block"],
        ),
        (
            vec!["pool_create", "q", "-b", "M0"],
            vec!["-16", "in use by pool 'p'"],
        ),
        (
            vec!["pool_create", "q", "-b", "M2,M2"],
            vec!["-32602", "named twice"],
        ),
        (
            vec!["pool_create", "q", "-b", "v"],
            vec!["-32602", "is a volume"],
        ),
        (
            vec!["pool_create", "q", "-b", "Nope"],
            vec!["-19", "'Nope' not found"],
        ),
        (vec!["pool_delete", "p"], vec!["-16", "holds volume(s) v"]),
        (vec!["pool_delete", "nope"], vec!["-19"]),
        (
            vec!["bdev_malloc_delete", "M0"],
            vec!["-16", "in use by pool 'p'"],
        ),
        (
            vec!["volume_delete", "nope"],
            vec!["-19", "volume 'nope' not found"],
        ),
        (
            vec!["migration_get_status", "-n", "nope"],
            vec!["-19", "volume 'nope' not found"],
        ),
        (
            vec!["bdev_error_create", "v"],
            vec!["-32602", "cannot be stacked on volumes"],
        ),
        (
            vec!["pool_import", "-b", "M2"],
            vec!["-19", "no tidepool pool metadata"],
        ),
        (
            vec![
                "call",
                "volume_create",
                r#"{"pool":"p","name":"w","size_mib":"4"}"#,
            ],
            vec!["-32602", "size_mib"],
        ),
        (
            vec![
                "call",
                "pool_create",
                r#"{"name":"q","base_bdevs":["M2"],"bogus":1}"#,
            ],
            vec!["-32602", "bogus"],
        ),
    ] {
        let err = refused(&d, &args);
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
        }
    }
    // An exported volume cannot be deleted.
    let nbd = s.join("nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    d.tpctl_ok(&["nbd_export_create", "e", "v"]);
    let err = refused(&d, &["volume_delete", "v"]);
    assert!(
        err.contains("-16") && err.contains("NBD export 'e'"),
        "{err}"
    );
    d.tpctl_ok(&["nbd_export_delete", "e"]);

    assert_eq!(
        d.tpctl_ok(&["pool_get_pools"]),
        pools,
        "no failed call changed a pool"
    );
    assert_eq!(d.tpctl_ok(&["volume_get_volumes"]), volumes);
    assert_eq!(d.tpctl_ok(&["bdev_get_bdevs"]), bdevs);
    assert!(d
        .tpctl_ok(&["bdev_get_bdevs"])
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["name"] == "M2" && b["claimed"] == false));

    // And the happy path back down: volume, pool, then the members are free again.
    d.tpctl_ok(&["volume_delete", "v"]);
    d.tpctl_ok(&["pool_delete", "p"]);
    assert_eq!(d.tpctl_ok(&["pool_get_pools"]), json!([]));
    d.tpctl_ok(&["bdev_malloc_delete", "M0"]);
    d.tpctl_ok(&["pool_create", "again", "-b", "M1", "--shard-size-mib", "4"]);
}

/// A `--json` config is all or nothing on the devices too: when an entry fails, what earlier
/// entries made is taken back in reverse (an export, which claims its volume, then the volume,
/// then the pool, whose metadata is wiped) before tidepoold exits, so that the same config,
/// mended, starts on the devices as they were (it was refused: "already carries tidepool
/// metadata").
#[test]
fn a_config_that_fails_leaves_no_pool_on_the_devices() {
    let s = Scratch::new("vol-config-undo");
    let fa = s.join("a.img");
    std::fs::File::create(&fa)
        .and_then(|h| h.set_len(MEMBER_BYTES))
        .expect("member file");
    let nbd = s.join("undo-nbd.sock");
    let config = |bad: bool| {
        let mut cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(bdev_config(&s, "cfg.json", &[("A", &fa)])).unwrap(),
        )
        .unwrap();
        let subsystems = cfg["subsystems"].as_array_mut().unwrap();
        subsystems.push(json!({"subsystem": "pool", "config": [
            {"method": "pool_create", "params": {"name": "p", "base_bdevs": ["A"], "shard_size_mib": 4}},
            {"method": "volume_create", "params": {"pool": "p", "name": "v", "size_mib": 8}}
        ]}));
        let mut exports = vec![
            json!({"method": "nbd_server_start", "params": {"listen_address": format!("unix:{nbd}")}}),
            json!({"method": "nbd_export_create", "params": {"name": "v", "bdev_name": "v"}}),
        ];
        if bad {
            exports.push(json!({"method": "nbd_export_create", "params": {"name": "w", "bdev_name": "nope"}}));
        }
        subsystems.push(json!({"subsystem": "nbd", "config": exports}));
        s.file("cfg.json", &cfg.to_string())
    };
    let sock = s.join("undo.sock");
    let failing = config(true);
    let out = tidepool_tests::run("tidepoold", &["-r", &sock, "--json", &failing]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        text(&out)
    );
    let mended = config(false);
    let d = Daemon::start(&s, "mended", &["--json", &mended]);
    let v = d.tpctl_ok(&["call", "volume_get_volumes", "{}"]);
    assert_eq!(v[0]["name"], "v", "{v}");
    assert_eq!(d.tpctl_ok(&["nbd_get_exports"])[0]["name"], "v");
}
