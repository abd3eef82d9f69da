//! Two tidepoold processes over NVMe/TCP on loopback: a target serving a uring file, and a
//! host that attaches it with `bdev_nvme_attach_controller -t tcp` (tpctl's SPDK form) and
//! makes it a pool member. A shard copies onto the remote member under a client's writes; the
//! target daemon is SIGKILLed mid-copy; the copy ends as its options say, no client I/O
//! fails, the host reconnects when the target returns, and a second copy onto it completes.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tidepool_tests::{nbd_unix_uri, qemu_io, spawn_qemu_io, text, Daemon, Scratch};

const MIB: u64 = 1 << 20;
/// Member size: 2 MiB of metadata and eight 4 MiB shard extents.
const MEMBER_BYTES: u64 = 34 * MIB;
const SHARD: u64 = 4 * MIB;
const NQN: &str = "nqn.2016-06.io.tidepool:remote-member";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The target's config: a uring bdev on `file` served as namespace 1 on `port`.
fn target_config(s: &Scratch, file: &str, port: u16) -> String {
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [{"method": "bdev_uring_create",
            "params": {"name": "TB", "filename": file, "block_size": 4096}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem",
                "params": {"nqn": NQN, "allow_any_host": true, "serial_number": "TPREMOTE"}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN,
                "namespace": {"bdev_name": "TB"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN,
                "listen_address": {"trtype": "tcp", "adrfam": "ipv4",
                    "traddr": "127.0.0.1", "trsvcid": port.to_string()}}}]}]});
    s.file("target.json", &cfg.to_string())
}

/// Starts the target beside `host` and waits for its listener.
fn start_target(host: &Daemon, s: &Scratch, name: &str, cfg: &str, port: u16) -> Daemon {
    let t = Daemon::start_beside(host, s, name, &["-m", "0x1", "--json", cfg]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the target never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

fn migration(d: &Daemon) -> Value {
    d.tpctl_ok(&["migration_get_status", "-n", "vol"])[0].clone()
}

fn shard_bdev(d: &Daemon, shard: usize) -> Value {
    d.tpctl_ok(&["volume_get_volumes", "-n", "vol"])[0]["shards"][shard]["bdev"].clone()
}

/// Waits for the migration to end; returns its last status.
fn wait_migration(d: &Daemon, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let m = migration(d);
        if m["state"] == "completed" || m["state"] == "abandoned" {
            return m;
        }
        assert!(Instant::now() < deadline, "the migration did not end: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_shard_copy_onto_a_remote_member_survives_its_target_being_killed() {
    let s = Scratch::new("nvmf-remote");
    let file = s.join("remote.img");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(MEMBER_BYTES))
        .expect("member file");
    let port = free_port();
    let tcfg = target_config(&s, &file, port);
    let local = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Malloc0",
            "num_blocks": MEMBER_BYTES / 4096, "block_size": 4096}}]}]});
    let hcfg = s.file("host.json", &local.to_string());
    let h = Daemon::start(&s, "host", &["-m", "0x3", "--json", &hcfg]);
    let t = start_target(&h, &s, "target", &tcfg, port);

    // SPDK's form: fail I/O after 1 s down, try every second, lost after 60 s.
    let made = h.tpctl_ok(&[
        "bdev_nvme_attach_controller",
        "-b",
        "R",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port.to_string(),
        "-f",
        "ipv4",
        "-n",
        NQN,
        "-l",
        "60",
        "-o",
        "1",
        "-u",
        "1",
    ]);
    assert_eq!(made, json!(["Rn1"]));
    let bdev = h.tpctl_ok(&["bdev_get_bdevs", "-b", "Rn1"]);
    assert_eq!(
        bdev[0]["driver_specific"]["nvme"][0]["trid"]["trtype"],
        "TCP"
    );
    let saved = h.tpctl_ok(&["save_config"]).to_string();
    assert!(
        saved.contains("\"ctrlr_loss_timeout_sec\":60") && saved.contains(NQN),
        "save_config keeps the attach with its options: {saved}"
    );

    h.tpctl_ok(&[
        "pool_create",
        "p",
        "-b",
        "Malloc0,Rn1",
        "--shard-size-mib",
        "4",
    ]);
    // One shard: it goes on the first member, the local one (a shard already on the remote
    // member would make the volume's flushes fail while the target is dead, as they should).
    h.tpctl_ok(&["volume_create", "p", "vol", "4"]);
    let nbd = s.join("nbd.sock");
    h.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    h.tpctl_ok(&["nbd_export_create", "vol", "vol"]);
    let uri = nbd_unix_uri(&nbd, "vol");
    qemu_io(&uri, &["write -P 0x11 0 4M".into(), "flush".into()]);
    let shard = 0usize;
    assert_eq!(shard_bdev(&h, shard), "Malloc0");
    let base = shard as u64 * SHARD;

    // A copy paced to take about two seconds, with no restarts: a failed target write
    // abandons it.
    h.tpctl_ok(&[
        "migration_set_options",
        "--max-mib-per-s",
        "2",
        "--chunk-kib",
        "256",
        "--max-restarts",
        "0",
    ]);
    let rounds = 24u64;
    let cmds: Vec<String> = (0..rounds)
        .flat_map(|round| {
            (0..16u64)
                .map(move |k| format!("write -P {} {} 256k", 0x20 + round, base + k * 256 * 1024))
        })
        .collect();
    let mut writer = spawn_qemu_io(&uri, &cmds);
    let started = h.tpctl_ok(&[
        "shard_migrate",
        "vol",
        &shard.to_string(),
        "--target-bdev",
        "Rn1",
    ]);
    assert_eq!(started["state"], "copying");
    let deadline = Instant::now() + Duration::from_secs(20);
    while migration(&h)["bytes_copied"].as_u64().unwrap_or(0) < 512 << 10 {
        assert!(Instant::now() < deadline, "the copy made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        writer.try_wait().expect("writer").is_none(),
        "the writer finished before the kill: nothing overlapped it"
    );
    let (status, _) = t.signal_and_wait("KILL");
    assert!(!status.success());
    let ended = wait_migration(&h, Duration::from_secs(30));
    assert_eq!(ended["state"], "abandoned", "no restarts allowed: {ended}");
    assert_eq!(
        shard_bdev(&h, shard),
        "Malloc0",
        "the shard stays on its source"
    );
    let out = writer.wait_with_output().expect("writer");
    let shown = text(&out);
    if !out.status.success() || shown.contains("failed") {
        let log = h.log_text();
        let tail = &log[log.len().saturating_sub(6000)..];
        let wrote = shown.matches("wrote").count();
        let failed = shown.matches("failed").count();
        let first_failed = shown.lines().position(|l| l.contains("failed"));
        panic!("a client write failed: {wrote} wrote, {failed} failed, first failure at line {first_failed:?}; migration {ended}\nhost log: {tail}");
    }
    let last = 0x20 + rounds - 1;
    let checks = vec![format!("read -P {last} {base} 4M")];
    qemu_io(&uri, &checks);

    // The target comes back on the same file: the host reconnects, and a copy onto it, with
    // restarts allowed, completes and reads back.
    let _t2 = start_target(&h, &s, "target-again", &tcfg, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = h.tpctl_ok(&["bdev_nvme_get_controllers", "-n", "R"]);
        let ctrl = &c[0]["ctrlrs"][0];
        if ctrl["state"] == "enabled" && ctrl["reconnects"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the host never reconnected: {c}");
        std::thread::sleep(Duration::from_millis(50));
    }
    h.tpctl_ok(&[
        "migration_set_options",
        "--max-mib-per-s",
        "0",
        "--max-restarts",
        "3",
    ]);
    h.tpctl_ok(&[
        "shard_migrate",
        "vol",
        &shard.to_string(),
        "--target-bdev",
        "Rn1",
    ]);
    let ended = wait_migration(&h, Duration::from_secs(30));
    assert_eq!(ended["state"], "completed", "{ended}");
    assert_eq!(shard_bdev(&h, shard), "Rn1");
    qemu_io(&uri, &checks);
}
