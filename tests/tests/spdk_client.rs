//! SPDK's own JSON-RPC client (`spdk-rpc`, SPDK's rpc.py from `pip install spdk`) against
//! tidepoold: its `save_config` (framework_get_subsystems, then framework_get_config for each
//! subsystem) from a daemon running pools, volumes, NBD exports, migration and balancer
//! options, then its `load_config` (rpc_get_methods with `current` and `include_aliases`)
//! into a fresh daemon, gives the same bdevs and volumes.

use serde_json::Value;
use std::process::{Command, Stdio};
use tidepool_tests::{spdk_rpc, text, Daemon, Scratch};

const MIB: u64 = 1 << 20;

/// Runs `spdk-rpc -s SOCKET args...` with `stdin`, requires success, returns stdout.
fn spdk(socket: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(spdk_rpc());
    cmd.arg("-s").arg(socket).args(args);
    if let Some(file) = stdin {
        cmd.stdin(std::fs::File::open(file).expect("config file"));
    } else {
        cmd.stdin(Stdio::null());
    }
    let out = cmd.output().expect("running spdk-rpc");
    assert!(out.status.success(), "spdk-rpc {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `list` (an array of objects with a `name`, bdevs or volumes) sorted by name, without the
/// fields that legitimately differ between a daemon and a fresh one loaded from its config:
/// - the routing epoch of a volume (`epoch`, and `driver_specific.volume.epoch` in
///   bdev_get_bdevs): it counts the route changes of this process, and an imported pool starts
///   its volumes at epoch 1 (the placement, which the epoch versions, is compared whole);
/// - the uuid of a volume of a pool on RAM bdevs: such a pool has nothing on its members
///   after a restart, so its config creates it again, empty, and a new volume gets a new uuid
///   (a volume of a pool on files is imported, and keeps its own).
///
/// The lists' order differs too (bdevs are listed in the order they were registered, and
/// load_config creates the RAM pool's volume before it imports the file pool's).
fn normalized(list: &Value, ram_pool: &str) -> Vec<Value> {
    let mut items: Vec<Value> = list.as_array().expect("an array").clone();
    for item in &mut items {
        let volume = item["driver_specific"]["volume"].clone();
        let pool = if volume.is_object() {
            volume["pool"].clone()
        } else {
            item["pool"].clone()
        };
        let obj = item.as_object_mut().unwrap();
        obj.remove("epoch");
        if let Some(v) = obj
            .get_mut("driver_specific")
            .and_then(|d| d.get_mut("volume"))
            .and_then(Value::as_object_mut)
        {
            v.remove("epoch");
        }
        if pool == ram_pool {
            obj.remove("uuid");
        }
    }
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    items
}

#[test]
fn spdk_rpc_saves_a_config_and_loads_it_into_a_fresh_daemon_unchanged() {
    let s = Scratch::new("spdk-rpc");
    let (fa, fb) = (s.join("a.img"), s.join("b.img"));
    for f in [&fa, &fb] {
        std::fs::File::create(f)
            .and_then(|h| h.set_len(64 * MIB))
            .expect("member file");
    }
    let nbd = s.join("nbd.sock");
    let saved = s.join("saved.json");

    let d1 = Daemon::start(&s, "d1", &["-m", "0x3"]);
    for args in [
        vec!["bdev_uring_create", &fa, "U0", "4096"],
        vec!["bdev_uring_create", &fb, "U1", "4096"],
        vec!["bdev_malloc_create", "-b", "M0", "64", "4096"],
        vec!["bdev_malloc_create", "-b", "M1", "64", "4096"],
        vec!["bdev_null_create", "N0", "16", "4096"],
        vec!["bdev_error_create", "N0"],
        // A pool on files (saved as pool_import: its placement comes back from the members)
        // and one on RAM (saved as pool_create and volume_create: recreated, empty).
        vec!["pool_create", "pu", "-b", "U0,U1", "--shard-size-mib", "8"],
        vec!["pool_create", "pm", "-b", "M0,M1", "--shard-size-mib", "8"],
        vec!["volume_create", "pu", "vu", "40"],
        vec!["volume_create", "pm", "vm", "24"],
        vec![
            "migration_set_options",
            "--chunk-kib",
            "64",
            "--max-inflight",
            "2",
        ],
        vec![
            "balancer_set_options",
            "--interval-ms",
            "500",
            "--cooldown-ms",
            "1000",
        ],
        // Moves, so the file pool's placement is not the one a fresh volume_create makes.
        vec!["shard_migrate", "vu", "1", "--target-core", "0"],
        vec!["shard_migrate", "vu", "2", "--target-bdev", "U1", "--wait"],
        vec!["nbd_server_start", "-a", &format!("unix:{nbd}")],
        vec!["nbd_export_create", "eu", "vu"],
        vec!["nbd_export_create", "em", "vm", "--read-only"],
        // The NVMe-oF target's subsystems: SPDK's client saves and loads them by SPDK's names.
        vec!["nvmf_create_transport", "-t", "TCP", "-q", "64"],
        vec![
            "nvmf_create_subsystem",
            "nqn.2016-06.io.spdk:cnode1",
            "-s",
            "SPDK00000000000001",
        ],
        vec![
            "nvmf_subsystem_add_ns",
            "nqn.2016-06.io.spdk:cnode1",
            "EE_N0",
            "-n",
            "3",
        ],
        vec![
            "nvmf_subsystem_add_host",
            "nqn.2016-06.io.spdk:cnode1",
            "nqn.2016-06.io.example:host1",
        ],
        vec![
            "nvmf_subsystem_add_listener",
            "nqn.2016-06.io.spdk:cnode1",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            "4420",
        ],
    ] {
        let out = d1.tpctl(&args);
        assert!(out.status.success(), "tpctl {args:?}: {}", text(&out));
    }
    let bdevs1 = d1.tpctl_ok(&["bdev_get_bdevs"]);
    let volumes1 = d1.tpctl_ok(&["volume_get_volumes"]);
    let exports1 = d1.tpctl_ok(&["nbd_get_exports"]);
    let nvmf1 = d1.tpctl_ok(&["nvmf_get_subsystems"]);
    let config1 = spdk(&d1.socket, &["save_config"], None);
    std::fs::write(&saved, &config1).expect("write saved config");
    // The first daemon lets go of the files (and the NBD socket path) before the second one
    // takes them.
    let (status, log) = d1.signal_and_wait("TERM");
    assert!(status.success(), "{log}");

    let d2 = Daemon::start(&s, "d2", &["-m", "0x3"]);
    let loaded = spdk(&d2.socket, &["load_config"], Some(&saved));
    assert!(
        !loaded.contains("skipped"),
        "load_config left entries out: {loaded}\n--- log\n{}",
        d2.log_text()
    );
    let bdevs2 = d2.tpctl_ok(&["bdev_get_bdevs"]);
    let volumes2 = d2.tpctl_ok(&["volume_get_volumes"]);

    assert_eq!(
        normalized(&bdevs1, "pm"),
        normalized(&bdevs2, "pm"),
        "bdev_get_bdevs differs after save_config / load_config"
    );
    assert_eq!(
        normalized(&volumes1, "pm"),
        normalized(&volumes2, "pm"),
        "volume_get_volumes differs after save_config / load_config"
    );
    // The moved shards came back where they were moved to.
    let vu = normalized(&volumes2, "pm")
        .into_iter()
        .find(|v| v["name"] == "vu")
        .expect("vu loaded");
    assert_eq!(vu["shards"][2]["bdev"], "U1", "{vu}");
    assert_eq!(vu["shards"][1]["owner_core"], 0, "{vu}");
    // Exports (without their connection counters) and the whole saved config round-trip too.
    let exports = |v: &Value| -> Vec<(Value, Value, Value)> {
        let mut e: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["name"].clone(),
                    x["bdev_name"].clone(),
                    x["read_only"].clone(),
                )
            })
            .collect();
        e.sort_by_key(|t| t.0.to_string());
        e
    };
    let exports2 = d2.tpctl_ok(&["nbd_get_exports"]);
    assert_eq!(
        exports(&exports1),
        exports(&exports2),
        "{exports1} / {exports2}"
    );
    assert_eq!(d2.tpctl_ok(&["nvmf_get_subsystems"]), nvmf1);
    // A subsystem nobody has is an error that says where to look, not an empty config.
    let out = Command::new(spdk_rpc())
        .args(["-s", &d2.socket, "framework_get_config", "iscsi"])
        .output()
        .expect("running spdk-rpc");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("-32602"),
        "{}",
        text(&out)
    );
    let config2 = spdk(&d2.socket, &["save_config"], None);
    assert_eq!(
        serde_json::from_str::<Value>(&config1).unwrap(),
        serde_json::from_str::<Value>(&config2).unwrap(),
        "the loaded daemon saves a different config"
    );
}
