//! Tests of the userspace NVMe driver and the polled uring bdev on emulated NVMe controllers.
//!
//! They run only inside the QEMU guest that `tests/vm/run.sh` boots (the host has no NVMe and
//! no VFIO), which `scripts/test.sh` runs on every CI run; this target is built with
//! `cargo test --test guest_nvme --no-run` and is not part of a plain `cargo test` (its
//! `test = false` in Cargo.toml). Outside the guest every test fails at once, naming what is
//! missing: none skips.
//!
//! The guest's environment (tests/vm/guest/init): `TP_VFIO_BDF`, a controller bound to
//! vfio-pci; `TP_POLL_DEV`, a namespace on the kernel driver with poll queues;
//! `TP_FAULT_CTRL`, a controller whose writes in a sector range fail (blkdebug).

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use tidepool_tests::guest::{
    attach, attach_entry, bdf_of_ctrl, env, qemu_io, qemu_io_args, setup_nvme,
};
use tidepool_tests::{bin, text, Daemon, Scratch};

fn config(s: &Scratch, file: &str, entries: Vec<Value>) -> String {
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    s.file(file, &cfg.to_string())
}

/// Runs tidepool-perf with `args`, requires success, no I/O error and no verify mismatch.
fn perf_ok(args: &[&str]) -> String {
    let out = Command::new(bin("tidepool-perf"))
        .args(args)
        .output()
        .expect("running tidepool-perf");
    let shown = text(&out);
    assert!(
        out.status.success() && !shown.contains("mismatch") && !shown.contains("I/O error"),
        "tidepool-perf {args:?}: {shown}"
    );
    shown
}

#[test]
fn attach_identifies_the_controller_and_refuses_bad_input() {
    let s = Scratch::new("g-attach");
    let bdf = env("TP_VFIO_BDF");
    let d = Daemon::start(&s, "d", &["-m", "0x3"]);
    let names = attach(&d, "Nvme0", &bdf);
    assert_eq!(names, json!(["Nvme0n1"]));
    let ctrls = d.tpctl_ok(&["bdev_nvme_get_controllers"]);
    let c = &ctrls[0]["ctrlrs"][0];
    assert_eq!(ctrls[0]["name"], "Nvme0");
    assert_eq!(c["trid"]["traddr"], bdf.as_str());
    assert_eq!(c["serial_number"], "tpvfio0");
    assert!(c["model_number"].as_str().unwrap().contains("QEMU"), "{c}");
    assert!(c["max_transfer_bytes"].as_u64().unwrap() >= 4096, "{c}");
    assert_eq!(c["namespaces"][0]["nsid"], 1);
    let bdevs = d.tpctl_ok(&["bdev_get_bdevs", "-b", "Nvme0n1"]);
    assert_eq!(bdevs[0]["product_name"], "NVMe disk");
    assert_eq!(
        bdevs[0]["driver_specific"]["nvme"][0]["pci_address"],
        bdf.as_str()
    );
    let blocks = bdevs[0]["num_blocks"].as_u64().unwrap();
    let block_size = bdevs[0]["block_size"].as_u64().unwrap();
    assert_eq!(
        blocks * block_size,
        c["namespaces"][0]["num_blocks"].as_u64().unwrap() * block_size
    );

    // Bad input: each refused with a clear error, nothing changes.
    let poll_bdf = bdf_of_ctrl(&env("TP_POLL_CTRL"));
    for (args, needle) in [
        (
            vec!["-b", "Bad", "-t", "pcie", "-a", "00:03.0"],
            "not a PCI address",
        ),
        (
            vec!["-b", "Bad", "-t", "pcie", "-a", "0000:00:1f.7"],
            "no PCI device",
        ),
        (
            vec!["-b", "Bad", "-t", "pcie", "-a", &poll_bdf],
            "not vfio-pci",
        ),
        (
            vec!["-b", "Again", "-t", "pcie", "-a", &bdf],
            "already attached",
        ),
        (
            vec!["-b", "Nvme0", "-t", "pcie", "-a", "0000:00:1f.6"],
            "already attached",
        ),
        (
            vec!["-b", "Bad", "-t", "tcp", "-a", &bdf],
            "not an IP address",
        ),
    ] {
        let mut full = vec!["bdev_nvme_attach_controller"];
        full.extend(args.iter().copied());
        let out = d.tpctl(&full);
        let shown = text(&out);
        assert!(
            !out.status.success() && shown.contains(needle),
            "{full:?} should fail with '{needle}': {shown}"
        );
    }
    let all = d.tpctl_ok(&["bdev_get_bdevs"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(
        d.tpctl_ok(&["bdev_nvme_get_controllers"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // save_config writes the attach; detach removes the bdevs; attach again serves again.
    let saved = d.tpctl_ok(&["save_config"]);
    assert!(
        saved.to_string().contains("bdev_nvme_attach_controller"),
        "{saved}"
    );
    d.tpctl_ok(&["bdev_nvme_detach_controller", "Nvme0"]);
    assert_eq!(d.tpctl_ok(&["bdev_get_bdevs"]), json!([]));
    let out = d.tpctl(&["bdev_nvme_detach_controller", "Nvme0"]);
    assert!(!out.status.success(), "a second detach must fail");
    attach(&d, "Nvme1", &bdf);
    assert_eq!(
        d.tpctl_ok(&["bdev_get_bdevs", "-b", "Nvme1n1"])[0]["num_blocks"]
            .as_u64()
            .unwrap(),
        blocks
    );
}

/// The verify workload writes a pattern that names each block and pass, and reads it back:
/// at sizes from one block to past MDTS (PRP lists, split commands), on two reactors at once,
/// each on a queue pair of its own, which `bdev_nvme_get_controllers` shows while it runs.
#[test]
fn verify_reads_back_at_every_size_on_two_reactors_with_a_queue_pair_each() {
    let s = Scratch::new("g-verify");
    let bdf = env("TP_VFIO_BDF");
    let cfg = config(&s, "nvme.json", vec![attach_entry("Nvme0", &bdf)]);
    for (size, depth) in [
        ("512", "8"),
        ("4k", "16"),
        ("8k", "8"),
        ("12k", "8"),
        ("1m", "4"),
        ("3m", "2"),
    ] {
        perf_ok(&[
            "-c", &cfg, "-b", "Nvme0n1", "-w", "verify", "-o", size, "-q", depth, "-t", "2", "-m",
            "0x3", "-C",
        ]);
    }

    // While a run goes on, each reactor holds its own I/O queue pair.
    let sock = s.join("perf.sock");
    let mut run = Command::new(bin("tidepool-perf"))
        .args([
            "-c", &cfg, "-b", "Nvme0n1", "-w", "randread", "-q", "8", "-t", "6", "-m", "0x3", "-C",
            "-r", &sock,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tidepool-perf");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let qpairs = loop {
        let out = Command::new(bin("tpctl"))
            .args(["-s", &sock, "bdev_nvme_get_controllers"])
            .output()
            .expect("tpctl");
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let q = v[0]["ctrlrs"][0]["io_qpairs"].clone();
            if q.as_array().is_some_and(|a| a.len() >= 2) {
                break q;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no two queue pairs seen while the run went on"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let q = qpairs.as_array().unwrap();
    assert_ne!(q[0]["qid"], q[1]["qid"], "{qpairs}");
    assert_ne!(q[0]["thread"], q[1]["thread"], "{qpairs}");
    assert!(run.wait().expect("wait").success());
}

/// The kernel's NVMe driver with poll queues under a polled (IOPOLL) uring bdev: verify on two
/// reactors, at sizes below and above what the device takes unsplit; the bdev offers every I/O
/// type (flush, unmap and write zeroes go to a side ring),
/// so it can be a pool member.
#[test]
fn verify_on_the_polled_uring_bdev() {
    let s = Scratch::new("g-iopoll");
    let dev = env("TP_POLL_DEV");
    let cfg = config(
        &s,
        "iopoll.json",
        vec![
            json!({"method": "bdev_uring_create", "params": {"name": "Poll0",
            "filename": dev, "block_size": 4096, "iopoll": true}}),
        ],
    );
    perf_ok(&[
        "-c", &cfg, "-b", "Poll0", "-w", "verify", "-o", "4k", "-q", "16", "-t", "3", "-m", "0x3",
        "-C",
    ]);
    // 1 MiB is past what the device takes unsplit, which a polled ring never completes on
    // Linux 6.1: the bdev sends such transfers to its side ring.
    for size in ["256k", "1m"] {
        perf_ok(&[
            "-c", &cfg, "-b", "Poll0", "-w", "verify", "-o", size, "-q", "4", "-t", "2", "-m",
            "0x3", "-C",
        ]);
    }
    let d = Daemon::start(&s, "d", &["-m", "0x1", "--json", &cfg]);
    let b = d.tpctl_ok(&["bdev_get_bdevs", "-b", "Poll0"]);
    let types = &b[0]["supported_io_types"];
    for t in ["read", "write", "flush", "unmap", "write_zeroes"] {
        assert_eq!(types[t], true, "{t}: {b}");
    }
    assert_eq!(b[0]["driver_specific"]["uring"]["iopoll"], true);
}

/// Detach while a run does I/O on the controller: the run's I/O fails with errors instead of
/// hanging, the run ends on time, and the controller attaches again and serves.
#[test]
fn detach_under_io_fails_the_io_and_a_reattach_serves_again() {
    let s = Scratch::new("g-detach");
    let bdf = env("TP_VFIO_BDF");
    let cfg = config(&s, "nvme.json", vec![attach_entry("Nvme0", &bdf)]);
    let sock = s.join("perf.sock");
    let run = Command::new(bin("tidepool-perf"))
        .args([
            "-c",
            &cfg,
            "-b",
            "Nvme0n1",
            "-w",
            "randwrite",
            "-q",
            "16",
            "-t",
            "4",
            "-m",
            "0x3",
            "-C",
            "-r",
            &sock,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidepool-perf");
    let started = std::time::Instant::now();
    let tpctl = |args: &[&str]| {
        Command::new(bin("tpctl"))
            .arg("-s")
            .arg(&sock)
            .args(args)
            .output()
            .expect("tpctl")
    };
    while !tpctl(&["bdev_nvme_get_controllers"]).status.success() {
        assert!(started.elapsed().as_secs() < 5, "perf never served RPC");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = tpctl(&["bdev_nvme_detach_controller", "Nvme0"]);
    assert!(out.status.success(), "detach under I/O: {}", text(&out));
    let out = tpctl(&[
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme1",
        "-t",
        "pcie",
        "-a",
        &bdf,
    ]);
    assert!(out.status.success(), "re-attach: {}", text(&out));
    let c: Value = serde_json::from_slice(&tpctl(&["bdev_nvme_get_controllers"]).stdout).unwrap();
    assert_eq!(c.as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c[0]["name"], "Nvme1");
    let out = run.wait_with_output().expect("perf");
    let shown = text(&out);
    assert!(
        started.elapsed().as_secs() < 30,
        "the run hung after the detach: {shown}"
    );
    assert!(
        shown.contains("I/O error"),
        "the I/O after the detach failed with errors: {shown}"
    );
    // The re-attached controller serves.
    perf_ok(&[
        "-c", &cfg, "-b", "Nvme0n1", "-w", "verify", "-o", "4k", "-q", "8", "-t", "2",
    ]);
}

/// A command timeout far below what an emulated 3 MiB write takes resets the controller: the
/// I/O in flight fails, the reset shows in `bdev_nvme_get_controllers`, and once the timeout
/// is sane again the controller serves.
#[test]
fn a_command_timeout_resets_the_controller_and_fails_what_it_held() {
    let s = Scratch::new("g-timeout");
    let bdf = env("TP_VFIO_BDF");
    let tight = json!({"method": "bdev_nvme_attach_controller",
        "params": {"name": "Nvme0", "trtype": "PCIe", "traddr": bdf, "timeout_ms": 1}});
    let cfg = config(&s, "tight.json", vec![tight]);
    let sock = s.join("perf.sock");
    let run = Command::new(bin("tidepool-perf"))
        .args([
            "-c", &cfg, "-b", "Nvme0n1", "-w", "write", "-o", "3m", "-q", "4", "-t", "4", "-r",
            &sock,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tidepool-perf");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let mut resets = 0;
    while resets == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let out = Command::new(bin("tpctl"))
            .args(["-s", &sock, "bdev_nvme_get_controllers"])
            .output()
            .expect("tpctl");
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            resets = v[0]["ctrlrs"][0]["resets"].as_u64().unwrap_or(0);
        }
    }
    let out = run.wait_with_output().expect("perf");
    let shown = text(&out);
    assert!(resets >= 1, "no reset seen: {shown}");
    assert!(
        shown.contains("I/O error"),
        "the reset failed what it held: {shown}"
    );
    perf_ok(&[
        "-c",
        &config(&s, "sane.json", vec![attach_entry("Nvme0", &bdf)]),
        "-b",
        "Nvme0n1",
        "-w",
        "verify",
        "-o",
        "3m",
        "-q",
        "4",
        "-t",
        "2",
    ]);
}

/// The kernel asks for the controller back (an unbind from vfio-pci): its I/O fails with
/// errors (ENODEV) instead of hanging, the unbind waits until the controller is detached and
/// then completes, and bound again the controller serves what was written before.
#[test]
fn an_unbind_fails_the_io_and_waits_for_the_detach() {
    let s = Scratch::new("g-unbind");
    let bdf = env("TP_VFIO_BDF");
    let d = Daemon::start(&s, "d", &["-m", "0x1"]);
    attach(&d, "Nvme0", &bdf);
    let nbd = s.join("nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    d.tpctl_ok(&["nbd_export_create", "nv", "Nvme0n1"]);
    let uri = tidepool_tests::nbd_unix_uri(&nbd, "nv");
    qemu_io(&uri, &["write -P 0x5a 0 1M".into(), "flush".into()]);

    let unbind_path = format!("/sys/bus/pci/devices/{bdf}/driver/unbind");
    let mut unbind = Command::new("sh")
        .args(["-c", &format!("echo {bdf} > {unbind_path}")])
        .spawn()
        .expect("sh");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let args = qemu_io_args(&uri, &["read -P 0x5a 0 4k".into()]);
        let out = Command::new("qemu-io")
            .args(&args)
            .output()
            .expect("qemu-io");
        if text(&out).contains("failed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads still succeed 10 s after the unbind began: {}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        unbind.try_wait().expect("wait").is_none(),
        "the unbind waits for the detach"
    );
    assert!(
        d.log_text().contains("asks for the device back"),
        "{}",
        d.log_text()
    );
    d.tpctl_ok(&["nbd_export_delete", "nv"]);
    d.tpctl_ok(&["bdev_nvme_detach_controller", "Nvme0"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = unbind.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unbind did not finish after the detach"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "unbind: {status}");
    setup_nvme(&["config", &bdf]);
    attach(&d, "Nvme1", &bdf);
    d.tpctl_ok(&["nbd_export_create", "nv", "Nvme1n1"]);
    qemu_io(&uri, &["read -P 0x5a 0 1M".into()]);
}
