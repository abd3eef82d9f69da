//! tidepoold and tpctl as an operator runs them: a real daemon on a scratch socket, driven by
//! tpctl and by a raw JSON-RPC client written in Python (standard library only).

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use tidepool_tests::{bin, external, run, text, Daemon, Scratch};

fn python_scenario(d: &Daemon, s: &Scratch, scenario: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/rpc_raw.py");
    let out = Command::new("python3")
        .args([script, &d.socket, scenario, &s.join("")])
        .output()
        .expect("python3 runs (it is on every machine)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("PASS"),
        "raw client scenario '{scenario}': {}\n--- daemon log\n{}",
        text(&out),
        d.log_text()
    );
}

#[test]
fn raw_client_every_method_every_error_framing_and_concurrency() {
    let s = Scratch::new("rpc-raw");
    let d = Daemon::start(&s, "raw", &[]);
    for scenario in ["methods", "errors", "framing", "concurrent"] {
        python_scenario(&d, &s, scenario);
    }
    // After all that garbage, a fresh client is served.
    let methods = d.tpctl_ok(&["rpc_get_methods"]);
    assert!(methods
        .as_array()
        .unwrap()
        .contains(&Value::from("bdev_get_bdevs")));
}

fn names(bdevs: &Value) -> Vec<String> {
    bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tpctl_drives_every_method_in_rpc_py_forms() {
    let s = Scratch::new("rpc-tpctl");
    let img = s.join("u.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let d = Daemon::start(&s, "tpctl", &[]);

    assert_eq!(
        d.tpctl_ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "4096"]),
        "Malloc0"
    );
    let m = &d.tpctl_ok(&["bdev_get_bdevs", "-b", "Malloc0"])[0];
    assert_eq!(m["num_blocks"], 16384, "64 MiB of 4 KiB blocks");
    assert_eq!(m["block_size"], 4096);
    assert_eq!(
        d.tpctl_ok(&["bdev_null_create", "Null0", "1", "512"]),
        "Null0"
    );
    assert_eq!(d.tpctl_ok(&["bdev_uring_create", &img, "Uring0"]), "Uring0");
    assert_eq!(
        d.tpctl_ok(&["bdev_get_bdevs", "-b", "Uring0"])[0]["num_blocks"],
        2048
    );
    assert_eq!(d.tpctl_ok(&["bdev_error_create", "Malloc0"]), "EE_Malloc0");
    assert_eq!(
        d.tpctl_ok(&[
            "bdev_delay_create",
            "-b",
            "Null0",
            "-d",
            "Delay0",
            "-r",
            "10",
            "-t",
            "20",
            "-w",
            "30",
            "-n",
            "60"
        ]),
        "Delay0"
    );
    assert_eq!(
        d.tpctl_ok(&[
            "bdev_error_inject_error",
            "EE_Malloc0",
            "write",
            "failure",
            "-n",
            "2"
        ]),
        true
    );
    assert_eq!(
        d.tpctl_ok(&["bdev_delay_update_latency", "Delay0", "p99_write", "90"]),
        true
    );
    let listed = names(&d.tpctl_ok(&["bdev_get_bdevs"]));
    for n in ["Malloc0", "Null0", "Uring0", "EE_Malloc0", "Delay0"] {
        assert!(listed.contains(&n.to_string()), "{n} in {listed:?}");
    }
    let reactors = d.tpctl_ok(&["framework_get_reactors"]);
    assert_eq!(reactors["reactors"][0]["lcore"], 0);
    let stat = d.tpctl_ok(&["bdev_get_iostat", "-b", "Uring0"]);
    assert_eq!(stat["bdevs"][0]["name"], "Uring0");
    let saved = d.tpctl_ok(&["save_config"]);
    assert_eq!(
        saved["subsystems"][0]["config"].as_array().unwrap().len(),
        5
    );
    let called = d.tpctl_ok(&["call", "bdev_get_bdevs", r#"{"name":"Null0"}"#]);
    assert_eq!(called[0]["claimed"], true, "Delay0 claims Null0");

    // Errors: the server's message on stderr, exit 1, nothing changed.
    let out = d.tpctl(&["bdev_null_delete", "Null0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") && err.contains("Delay0") && err.contains("-16"),
        "{err}"
    );
    let out = d.tpctl(&["bdev_malloc_create", "-b", "Malloc0", "1", "4096"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = d.tpctl(&["call", "bdev_malloc_create", r#"{"num_blocks": -1}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("num_blocks"));
    let out = d.tpctl(&["call", "bdev_get_bdevs", "{not json"]);
    assert_eq!(out.status.code(), Some(2), "bad JSON never leaves tpctl");
    let out = d.tpctl(&["bdev_malloc_create", "lots", "4096"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses a non-number: {}",
        text(&out)
    );
    assert_eq!(names(&d.tpctl_ok(&["bdev_get_bdevs"])).len(), 5);

    // Deletes, top of each stack first.
    for (method, name) in [
        ("bdev_delay_delete", "Delay0"),
        ("bdev_error_delete", "EE_Malloc0"),
        ("bdev_malloc_delete", "Malloc0"),
        ("bdev_null_delete", "Null0"),
        ("bdev_uring_delete", "Uring0"),
    ] {
        assert_eq!(d.tpctl_ok(&[method, name]), true, "{method}");
    }
    assert!(names(&d.tpctl_ok(&["bdev_get_bdevs"])).is_empty());

    // Every method has --help.
    for method in ["bdev_malloc_create", "bdev_delay_create", "call"] {
        let out = Command::new(bin("tpctl"))
            .args([method, "--help"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{method} --help"
        );
    }
}

#[test]
fn save_config_loaded_with_json_gives_the_same_bdevs() {
    let s = Scratch::new("rpc-save");
    let img = s.join("u.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let saved_path = s.join("saved.json");
    let before = {
        let d = Daemon::start(&s, "first", &[]);
        d.tpctl_ok(&["bdev_malloc_create", "-b", "M", "4", "512"]);
        d.tpctl_ok(&["bdev_error_create", "M"]);
        d.tpctl_ok(&["bdev_null_create", "N", "2", "4096"]);
        d.tpctl_ok(&[
            "bdev_delay_create",
            "-b",
            "N",
            "-d",
            "D",
            "-r",
            "5",
            "-t",
            "50",
            "-w",
            "7",
            "-n",
            "70",
        ]);
        d.tpctl_ok(&["bdev_delay_update_latency", "D", "avg_read", "9"]);
        d.tpctl_ok(&["bdev_uring_create", &img, "U", "4096"]);
        let saved = d.tpctl_ok(&["save_config"]);
        std::fs::write(&saved_path, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
        d.tpctl_ok(&["bdev_get_bdevs"])
    };
    let d = Daemon::start(&s, "second", &["--json", &saved_path]);
    let after = d.tpctl_ok(&["bdev_get_bdevs"]);
    assert_eq!(after, before, "same bdevs, uuids, claims and settings");
}

/// The balancer's options and the copies' options survive a restart from `save_config`,
/// and saving again gives the same entries.
#[test]
fn save_config_keeps_balancer_and_migration_options() {
    let s = Scratch::new("rpc-save-opts");
    let saved_path = s.join("saved.json");
    let entry = |config: &Value, subsystem: &str, method: &str| -> Value {
        let sub = config["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["subsystem"] == subsystem)
            .unwrap_or_else(|| panic!("no {subsystem} subsystem in {config}"));
        sub["config"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["method"] == method)
            .unwrap_or_else(|| panic!("no {method} in {sub}"))["params"]
            .clone()
    };
    let (saved, status) = {
        let d = Daemon::start(&s, "first", &[]);
        d.tpctl_ok(&[
            "balancer_set_options",
            "--enabled",
            "true",
            "--interval-ms",
            "250",
            "--sustain-samples",
            "4",
            "--imbalance-threshold",
            "1.5",
            "--cooldown-ms",
            "9000",
        ]);
        d.tpctl_ok(&[
            "migration_set_options",
            "--max-mib-per-s",
            "7",
            "--chunk-kib",
            "256",
        ]);
        let saved = d.tpctl_ok(&["save_config"]);
        std::fs::write(&saved_path, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
        (saved, d.tpctl_ok(&["balancer_get_status"]))
    };
    let balancer = entry(&saved, "balancer", "balancer_set_options");
    assert_eq!(balancer["interval_ms"], 250, "{balancer}");
    assert_eq!(balancer["cooldown_ms"], 9000, "{balancer}");
    let migration = entry(&saved, "pool", "migration_set_options");
    assert_eq!(migration["max_mib_per_s"], 7, "{migration}");
    assert_eq!(migration["chunk_kib"], 256, "{migration}");

    let d = Daemon::start(&s, "second", &["--json", &saved_path]);
    let after = d.tpctl_ok(&["balancer_get_status"]);
    for key in [
        "enabled",
        "interval_ms",
        "imbalance_threshold",
        "sustain_samples",
        "cooldown_ms",
        "max_concurrent",
        "weights",
    ] {
        assert_eq!(after[key], status[key], "balancer option {key}");
    }
    assert_eq!(after["enabled"], true);
    let again = d.tpctl_ok(&["save_config"]);
    assert_eq!(entry(&again, "balancer", "balancer_set_options"), balancer);
    assert_eq!(entry(&again, "pool", "migration_set_options"), migration);
}

#[test]
fn socket_is_private_exclusive_and_stale_ones_are_replaced() {
    let s = Scratch::new("rpc-sock");
    let d = Daemon::start(&s, "main", &[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    // A second daemon on a live socket refuses and leaves the first one alone; it refuses
    // before it reads its config (before any device or pool is touched): the socket is what
    // it reports, not the config that does not exist.
    for extra in [&[][..], &["--json", "/nonexistent/tidepool.json"][..]] {
        let out = Command::new(bin("tidepoold"))
            .args(["-r", &d.socket])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("another tidepool"),
            "{}",
            text(&out)
        );
        d.tpctl_ok(&["rpc_get_methods"]);
    }
    drop(d);

    // A stale socket (nobody listening) is replaced.
    let stale = s.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(std::path::Path::new(&stale).exists());
    let d = Daemon::start(&s, "stale", &[]);
    d.tpctl_ok(&["rpc_get_methods"]);
    drop(d);

    // A path that is not a socket is never replaced.
    let file = s.file("not-a-socket", "precious");
    let out = run("tidepoold", &["-r", &file]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    // A path too long to connect to is refused: a daemon there could not be reached, and a
    // live one there would have looked stale and been replaced.
    let long = s.join(&format!("{}.sock", "r".repeat(120)));
    // Under `timeout`: a daemon that took the path would otherwise run on.
    let daemon = bin("tidepoold").to_string_lossy().into_owned();
    let out = external("timeout", &["10", &daemon, "-r", &long]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limited to 107"), "{}", text(&out));
    assert!(!std::path::Path::new(&long).exists());
    let left: Vec<_> = std::fs::read_dir(&s.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tidepool-rpc"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly_and_remove_the_socket() {
    for signal in ["TERM", "INT"] {
        let s = Scratch::new("rpc-sig");
        let d = Daemon::start(&s, "sig", &["--json", DEMO_CONFIG]);
        d.tpctl_ok(&["bdev_get_bdevs", "-b", "Malloc0"]);
        let socket = d.socket.clone();
        let (status, log) = d.signal_and_wait(signal);
        assert!(status.success(), "SIG{signal}: {status}\n{log}");
        assert!(
            !std::path::Path::new(&socket).exists(),
            "socket removed after SIG{signal}"
        );
        assert!(
            log.contains("flushed bdev 'Malloc0'") && log.contains("tidepoold stopped"),
            "{log}"
        );
    }
}

/// The README's main job runs on this config.
const DEMO_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/tidepool.json");

#[test]
fn bad_command_lines_and_configs_exit_non_zero_and_say_why() {
    let s = Scratch::new("rpc-bad");
    let sock = s.join("bad.sock");
    // Runs `program` on the test's socket with `args`: it must fail and say `needle`.
    let refused = |program: &str, args: &[&str], needle: &str| {
        let flag = if program == "tpctl" { "-s" } else { "-r" };
        let mut full = vec![flag, sock.as_str()];
        full.extend(args.iter());
        let out = run(program, &full);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{program} {args:?} should say '{needle}': {}",
            text(&out)
        );
    };
    for (args, needle) in [
        (vec!["-m", "0xZZ"], "0xZZ"),
        (vec!["--cores", "0,99"], "99"),
        (
            vec!["--json", "/nonexistent/cfg.json"],
            "/nonexistent/cfg.json",
        ),
        (vec!["-L", "loud"], "loud"),
        (vec!["--bogus"], "--bogus"),
    ] {
        refused("tidepoold", &args, needle);
        assert!(
            !std::path::Path::new(&sock).exists(),
            "no socket left behind"
        );
    }
    let bad_cfg = s.file(
        "bad.json",
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M","num_blocks":8,"block_size":100}}]}]}"#,
    );
    let out = run("tidepoold", &["-r", &sock, "--json", &bad_cfg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("block_size"));
    let out = run("tpctl", &["-s", &sock, "rpc_get_methods"]);
    assert_eq!(out.status.code(), Some(2), "no daemon: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    // Numbers JSON cannot carry, ambiguous JSON and sizes past u64 are refused by tpctl
    // itself, naming what is wrong (NaN used to go out as null and read as "not given").
    for (args, needle) in [
        (
            vec!["balancer_set_options", "--imbalance-threshold", "NaN"],
            "not a finite number",
        ),
        (
            vec!["balancer_set_options", "--weight-bytes", "inf"],
            "not a finite number",
        ),
        (
            vec!["call", "bdev_malloc_create", r#"{"name":"D1","name":"D2"}"#],
            "duplicate key 'name'",
        ),
        (
            vec!["bdev_malloc_create", "99999999999999999999", "4096"],
            "too large",
        ),
    ] {
        refused("tpctl", &args, needle);
    }
    for t in ["1e30", "1e-12", "0", "NaN"] {
        let out = run("tpctl", &["-s", &sock, "-t", t, "rpc_get_methods"]);
        assert_eq!(out.status.code(), Some(2), "-t {t}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("-t must be"),
            "-t {t}: {}",
            text(&out)
        );
    }
}

/// A pool on RAM bdevs has no metadata to import after a restart: save_config writes the
/// pool_create and volume_create that make its layout again, and the daemon starts with it.
/// A member stacked on a RAM bdev (an error bdev, as in the demo config) is one too.
#[test]
fn save_config_of_a_pool_on_ram_bdevs_starts_again_with_the_same_layout() {
    let s = Scratch::new("rpc-save-ram-pool");
    let saved_path = s.join("saved.json");
    let before = {
        let d = Daemon::start(&s, "first", &[]);
        for m in ["M0", "M1"] {
            d.tpctl_ok(&["bdev_malloc_create", "-b", m, "80", "4096"]);
        }
        d.tpctl_ok(&["bdev_error_create", "M1"]);
        d.tpctl_ok(&[
            "call",
            "pool_create",
            r#"{"name":"p","base_bdevs":["M0","EE_M1"],"shard_size_mib":16}"#,
        ]);
        d.tpctl_ok(&[
            "call",
            "volume_create",
            r#"{"pool":"p","name":"v","size_mib":64}"#,
        ]);
        let saved = d.tpctl_ok(&["save_config"]);
        std::fs::write(&saved_path, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
        d.tpctl_ok(&["call", "volume_get_volumes", "{}"])
    };
    let d = Daemon::start(&s, "second", &["--json", &saved_path]);
    let after = d.tpctl_ok(&["call", "volume_get_volumes", "{}"]);
    assert_eq!(after[0]["name"], "v");
    assert_eq!(after[0]["shards"].as_array().unwrap().len(), 4);
    assert_eq!(
        after[0]["shards"].as_array().unwrap().len(),
        before[0]["shards"].as_array().unwrap().len()
    );
    let pools = d.tpctl_ok(&["call", "pool_get_pools", "{}"]);
    assert_eq!(pools[0]["shard_size_kib"], 16 * 1024, "{pools}");
}

/// The NVMe-oF target's control plane in rpc.py's forms: a transport, a subsystem with a
/// host, namespaces and a listener; bad input refused with the daemon unchanged; then
/// `save_config` loaded with `--json` gives the same subsystems.
#[test]
fn nvmf_subsystems_in_rpc_py_forms_survive_save_config_and_json() {
    let s = Scratch::new("rpc-nvmf");
    let saved_path = s.join("saved.json");
    let nqn = "nqn.2016-06.io.spdk:cnode1";
    let host = "nqn.2016-06.io.example:host1";
    let (before, transports) = {
        let d = Daemon::start(&s, "first", &[]);
        d.tpctl_ok(&["bdev_malloc_create", "-b", "M0", "4", "512"]);
        d.tpctl_ok(&["bdev_null_create", "N0", "4", "4096"]);
        d.tpctl_ok(&["bdev_null_create", "N1", "4", "4096"]);
        let listen = ["-t", "tcp", "-a", "127.0.0.1", "-s", "4420"];
        // A listener needs the transport first, as in SPDK.
        let out = d.tpctl(&[&["nvmf_subsystem_add_listener", nqn][..], &listen[..]].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(
            d.tpctl_ok(&[
                "nvmf_create_transport",
                "-t",
                "TCP",
                "-q",
                "64",
                "-c",
                "8192"
            ]),
            true
        );
        let out = d.tpctl(&["nvmf_create_transport", "-t", "TCP"]);
        assert_eq!(out.status.code(), Some(1), "only once: {}", text(&out));
        d.tpctl_ok(&[
            "nvmf_create_subsystem",
            nqn,
            "-s",
            "SPDK001",
            "-d",
            "tidepool",
            "-m",
            "8",
        ]);
        d.tpctl_ok(&["nvmf_create_subsystem", "nqn.2016-06.io.spdk:open", "-a"]);
        assert_eq!(d.tpctl_ok(&["nvmf_subsystem_add_ns", nqn, "M0"]), 1);
        assert_eq!(
            d.tpctl_ok(&["nvmf_subsystem_add_ns", nqn, "N0", "-n", "5"]),
            5
        );
        assert_eq!(d.tpctl_ok(&["nvmf_subsystem_add_ns", nqn, "N1"]), 2);
        assert_eq!(d.tpctl_ok(&["nvmf_subsystem_remove_ns", nqn, "2"]), true);
        d.tpctl_ok(&[&["nvmf_subsystem_add_listener", nqn][..], &listen[..]].concat());
        d.tpctl_ok(&[
            "nvmf_subsystem_add_listener",
            "nqn.2014-08.org.nvmexpress.discovery",
            "-t",
            "tcp",
            "-a",
            "::1",
            "-s",
            "8009",
            "-f",
            "ipv6",
        ]);
        d.tpctl_ok(&["nvmf_subsystem_add_host", nqn, host]);
        d.tpctl_ok(&["nvmf_subsystem_allow_any_host", nqn, "-e"]);
        assert_eq!(
            d.tpctl_ok(&["nvmf_get_subsystems", nqn])[0]["allow_any_host"],
            true
        );
        d.tpctl_ok(&["nvmf_subsystem_allow_any_host", nqn, "-d"]);

        // Refusals: exit 1, the server's reason, nothing changed.
        let listed = d.tpctl_ok(&["nvmf_get_subsystems"]);
        for (args, needle) in [
            (vec!["nvmf_create_subsystem", "cnode9"], "not a valid NQN"),
            (vec!["nvmf_create_subsystem", nqn], "already exists"),
            (
                vec![
                    "nvmf_delete_subsystem",
                    "nqn.2014-08.org.nvmexpress.discovery",
                ],
                "cannot be deleted",
            ),
            (vec!["nvmf_subsystem_add_ns", nqn, "M0"], "in use"),
            (vec!["nvmf_subsystem_add_ns", nqn, "nope"], "nope"),
            (
                vec!["nvmf_subsystem_add_ns", nqn, "N1", "-n", "9"],
                "max_namespaces",
            ),
            (
                vec!["nvmf_subsystem_add_host", nqn, "host1"],
                "not a valid NQN",
            ),
            (
                vec![
                    "nvmf_subsystem_add_listener",
                    nqn,
                    "-t",
                    "tcp",
                    "-a",
                    "127.0.0.1",
                    "-s",
                    "0",
                ],
                "trsvcid",
            ),
            (vec!["bdev_malloc_delete", "M0"], "NVMe-oF subsystem"),
        ] {
            let out = d.tpctl(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
        }
        let out = d.tpctl(&["nvmf_subsystem_allow_any_host", nqn]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "-e or -d is required: {}",
            text(&out)
        );
        assert_eq!(d.tpctl_ok(&["nvmf_get_subsystems"]), listed);

        let one = &d.tpctl_ok(&["nvmf_get_subsystems", nqn])[0];
        assert_eq!(one["serial_number"], "SPDK001");
        assert_eq!(one["allow_any_host"], false);
        assert_eq!(one["hosts"][0]["nqn"], host);
        let nsids: Vec<u64> = one["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["nsid"].as_u64().unwrap())
            .collect();
        assert_eq!(nsids, [1, 5]);
        assert_eq!(
            d.tpctl_ok(&["nvmf_subsystem_get_controllers", nqn]),
            serde_json::json!([])
        );
        let subsystems = d.tpctl_ok(&["framework_get_subsystems"]);
        assert!(subsystems
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["subsystem"] == "nvmf"));
        let config = d.tpctl_ok(&["framework_get_config", "nvmf"]);
        let saved = d.tpctl_ok(&["save_config"]);
        let in_saved = saved["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["subsystem"] == "nvmf")
            .unwrap()["config"]
            .clone();
        assert_eq!(config, in_saved, "both ways of saving agree");
        std::fs::write(&saved_path, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
        (listed, d.tpctl_ok(&["nvmf_get_transports"]))
    };
    let d = Daemon::start(&s, "second", &["--json", &saved_path]);
    assert_eq!(d.tpctl_ok(&["nvmf_get_subsystems"]), before);
    assert_eq!(d.tpctl_ok(&["nvmf_get_transports"]), transports);
    assert_eq!(transports[0]["in_capsule_data_size"], 8192);
    // Deleting a subsystem releases its bdevs.
    d.tpctl_ok(&["nvmf_delete_subsystem", nqn]);
    d.tpctl_ok(&["bdev_malloc_delete", "M0"]);
}

/// A `--json` config that fails after an NVMe-oF subsystem took a volume as a namespace is
/// undone in reverse: the subsystem is deleted first (releasing the volume), so the volume
/// and the pool can be, and the mended config starts on devices without a pool on them.
#[test]
fn a_failing_config_deletes_its_nvmf_subsystem_so_the_pool_under_it_is_undone() {
    let s = Scratch::new("rpc-nvmf-undo");
    let fa = s.join("a.img");
    std::fs::File::create(&fa)
        .and_then(|h| h.set_len(64 << 20))
        .expect("member file");
    let nqn = "nqn.2016-06.io.spdk:undo";
    let config = |bad: bool| {
        let mut nvmf = vec![
            json!({"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}),
            json!({"method": "nvmf_create_subsystem", "params": {"nqn": nqn}}),
            json!({"method": "nvmf_subsystem_add_ns",
                "params": {"nqn": nqn, "namespace": {"bdev_name": "v"}}}),
        ];
        if bad {
            nvmf.push(json!({"method": "nvmf_subsystem_add_ns",
                "params": {"nqn": nqn, "namespace": {"bdev_name": "nope"}}}));
        }
        let cfg = json!({"subsystems": [
            {"subsystem": "bdev", "config": [{"method": "bdev_uring_create",
                "params": {"name": "A", "filename": fa, "block_size": 4096}}]},
            {"subsystem": "pool", "config": [
                {"method": "pool_create",
                    "params": {"name": "p", "base_bdevs": ["A"], "shard_size_mib": 4}},
                {"method": "volume_create", "params": {"pool": "p", "name": "v", "size_mib": 8}}]},
            {"subsystem": "nvmf", "config": nvmf},
        ]});
        s.file("cfg.json", &cfg.to_string())
    };
    let sock = s.join("undo.sock");
    let out = run("tidepoold", &["-r", &sock, "--json", &config(true)]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{}", text(&out));
    let d = Daemon::start(&s, "mended", &["--json", &config(false)]);
    let listed = d.tpctl_ok(&["nvmf_get_subsystems", nqn]);
    assert_eq!(listed[0]["namespaces"][0]["bdev_name"], "v", "{listed}");
    assert!(
        err.contains("undone with nvmf_delete_subsystem"),
        "{}",
        text(&out)
    );
}
