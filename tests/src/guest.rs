//! Helpers for the tests that run inside the QEMU guest (`tests/vm/run.sh`): its environment,
//! its controllers, and the setup helper.

use serde_json::{json, Value};
use std::process::Command;

/// A variable of the guest's environment (tests/vm/guest/init); outside the guest the test
/// fails at once, naming it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests run in the QEMU guest (tests/vm/run.sh)")
    })
}

/// The PCI address of a controller's char device (`/dev/nvme2` -> `0000:00:05.0`).
pub fn bdf_of_ctrl(dev: &str) -> String {
    let name = dev.trim_start_matches("/dev/");
    let link = std::fs::read_link(format!("/sys/class/nvme/{name}/device"))
        .unwrap_or_else(|e| panic!("/sys/class/nvme/{name}/device: {e}"));
    link.file_name().unwrap().to_string_lossy().into_owned()
}

/// A config entry that attaches the controller at `bdf` as `name`.
pub fn attach_entry(name: &str, bdf: &str) -> Value {
    json!({"method": "bdev_nvme_attach_controller",
        "params": {"name": name, "trtype": "PCIe", "traddr": bdf}})
}

/// Attaches the controller at `bdf` to `d` as `name` through tpctl; returns the bdev names.
pub fn attach(d: &crate::Daemon, name: &str, bdf: &str) -> Value {
    d.tpctl_ok(&[
        "bdev_nvme_attach_controller",
        "-b",
        name,
        "-t",
        "pcie",
        "-a",
        bdf,
    ])
}

/// Makes pool `p` of `members` in shards of `shard_mib`, a volume `vol` of `size_mib` on it,
/// and exports it over NBD on a Unix socket in `s`; returns the export's URI.
pub fn pool_volume_export(
    d: &crate::Daemon,
    s: &crate::Scratch,
    members: &str,
    shard_mib: u32,
    size_mib: u32,
) -> String {
    let shard = shard_mib.to_string();
    d.tpctl_ok(&[
        "pool_create",
        "p",
        "-b",
        members,
        "--shard-size-mib",
        &shard,
        "--force",
    ]);
    d.tpctl_ok(&["volume_create", "p", "vol", &size_mib.to_string()]);
    let nbd = s.join("nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd}")]);
    d.tpctl_ok(&["nbd_export_create", "vol", "vol"]);
    crate::nbd_unix_uri(&nbd, "vol")
}

pub use crate::{qemu_io, qemu_io_args};

/// Runs `scripts/setup_nvme.sh` (in the guest at `$TP_SCRIPTS`) with `args`; requires success.
pub fn setup_nvme(args: &[&str]) -> String {
    let script = format!("{}/setup_nvme.sh", env("TP_SCRIPTS"));
    let out = Command::new("sh")
        .arg(&script)
        .args(args)
        .output()
        .expect("running setup_nvme.sh");
    let shown = crate::text(&out);
    assert!(out.status.success(), "setup_nvme.sh {args:?}: {shown}");
    shown
}
