//! Helpers for the process-level tests: find the workspace's built binaries, run them, and
//! make scratch files. The binaries are built by `cargo test --workspace` (every package's
//! binaries are built before its tests); a missing binary fails the test with the path it
//! looked for, it is never skipped.

pub mod guest;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The directory cargo put this test binary's sibling executables in.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, which must exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Serialises the binaries the tests start: each runs busy-polling reactors pinned to cores
/// 0 and 1, and two at once on a 2-core machine would time-share those cores and measure
/// each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs a workspace binary to completion, one at a time.
pub fn run(name: &str, args: &[&str]) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// A scratch directory removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "tidepool-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch { path }
    }

    pub fn file(&self, name: &str, contents: &str) -> String {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p.to_string_lossy().into_owned()
    }

    pub fn join(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// stdout and stderr of a run, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `tidepoold` started on a scratch socket, killed when dropped. It holds the one-at-a-time
/// turn for its whole life (its reactor shares core 0 with any other tidepool binary).
pub struct Daemon {
    pub child: std::process::Child,
    pub socket: String,
    /// Where its stderr (the log) goes.
    pub log: String,
    /// The test's turn to run daemons (a second daemon beside the first holds none).
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Daemon {
    /// Starts `tidepoold -r <scratch>/<name>.sock` plus `args`, and waits until it answers.
    pub fn start(scratch: &Scratch, name: &str, args: &[&str]) -> Daemon {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        Daemon::spawn(scratch, name, args, Some(turn))
    }

    /// Starts a second daemon in the same test, beside `first` (whose turn covers both).
    pub fn start_beside(_first: &Daemon, scratch: &Scratch, name: &str, args: &[&str]) -> Daemon {
        Daemon::spawn(scratch, name, args, None)
    }

    fn spawn(
        scratch: &Scratch,
        name: &str,
        args: &[&str],
        turn: Option<std::sync::MutexGuard<'static, ()>>,
    ) -> Daemon {
        let socket = scratch.join(&format!("{name}.sock"));
        let log = scratch.join(&format!("{name}.log"));
        let child = Command::new(bin("tidepoold"))
            .arg("-r")
            .arg(&socket)
            .args(args)
            .stderr(std::fs::File::create(&log).expect("daemon log file"))
            .spawn()
            .expect("starting tidepoold");
        let mut d = Daemon {
            child,
            socket,
            log,
            _turn: turn,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("tidepoold exited at start-up ({status}): {}", d.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tidepoold did not open {} within 10 s",
                d.socket
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        d
    }

    /// Runs `tpctl -s <socket> args...`.
    pub fn tpctl(&self, args: &[&str]) -> Output {
        Command::new(bin("tpctl"))
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tpctl")
    }

    /// Runs tpctl, requires success, and parses its output as JSON.
    pub fn tpctl_ok(&self, args: &[&str]) -> serde_json::Value {
        let out = self.tpctl(args);
        assert!(
            out.status.success(),
            "tpctl {args:?}: {}\n--- the daemon's log\n{}",
            text(&out),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("tpctl {args:?} printed no JSON ({e}): {}", text(&out)))
    }

    /// Sends a signal and waits (up to 20 s) for the exit; returns the status and stderr.
    pub fn signal_and_wait(self, signal: &str) -> (std::process::ExitStatus, String) {
        self.signal_and_wait_within(signal, 20)
    }

    /// [`Daemon::signal_and_wait`] for a shutdown known to take long (its waits time out).
    pub fn signal_and_wait_within(
        mut self,
        signal: &str,
        seconds: u64,
    ) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {pid}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tidepoold did not exit within {seconds} s of SIG{signal}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        (status, self.log_text())
    }

    /// Waits up to `within` for the daemon to exit by itself; its status, or `None` if it is
    /// still running at the deadline.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an external program (qemu-io, nbdinfo, ...) that `scripts/test.sh` installs; a missing
/// one fails the test and says which package provides it.
pub fn external(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e} (scripts/test.sh installs qemu-utils and libnbd-bin)")
        })
}

/// Like [`external`], and requires exit status 0.
pub fn external_ok(program: &str, args: &[&str]) -> String {
    let out = external(program, args);
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The version of SPDK's Python client (`pip install spdk`) that `scripts/test.sh` installs.
pub const SPDK_PY_VERSION: &str = "26.9";

/// SPDK's own JSON-RPC client, `spdk-rpc` (its rpc.py), from the venv `scripts/test.sh`
/// installs it into (`target/spdk-venv`), or `TIDEPOOL_SPDK_RPC`. Missing, the test fails and
/// says how to get it: it is never skipped.
pub fn spdk_rpc() -> PathBuf {
    let path = std::env::var_os("TIDEPOOL_SPDK_RPC").map_or_else(
        || {
            bin_dir()
                .parent()
                .expect("target/<profile> has a parent")
                .join("spdk-venv/bin/spdk-rpc")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "SPDK's client {} is missing: scripts/test.sh installs it (pip install spdk=={SPDK_PY_VERSION} into target/spdk-venv)",
        path.display()
    );
    path
}

/// qemu-io's arguments for `cmds` (each a `-c` command) against `uri`.
pub fn qemu_io_args(uri: &str, cmds: &[String]) -> Vec<String> {
    let mut args = vec!["-f".to_string(), "raw".into(), uri.to_string()];
    for c in cmds {
        args.extend(["-c".into(), c.clone()]);
    }
    args
}

/// qemu-io running `cmds`; requires every one to succeed.
pub fn qemu_io(uri: &str, cmds: &[String]) {
    let args = qemu_io_args(uri, cmds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = external("qemu-io", &args);
    let shown = text(&out);
    assert!(out.status.success() && !shown.contains("failed"), "{shown}");
}

/// Starts qemu-io running `cmds` in order against `uri` (a client streaming writes while a
/// test moves shards); wait for its output to see that each one succeeded.
pub fn spawn_qemu_io(uri: &str, cmds: &[String]) -> std::process::Child {
    Command::new("qemu-io")
        .args(qemu_io_args(uri, cmds))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-io (scripts/test.sh installs qemu-utils)")
}

/// An NBD URI for `export` on the Unix socket `sock` (what qemu-io and nbdinfo take).
pub fn nbd_unix_uri(sock: &str, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={sock}")
}

/// A config file in `s` with one uring bdev (4 KiB blocks) per `(name, file)`, plus `extra`
/// entries of the bdev subsystem after them.
pub fn bdev_config(s: &Scratch, name: &str, members: &[(&str, &str)]) -> String {
    bdev_config_with(s, name, members, &[])
}

pub fn bdev_config_with(
    s: &Scratch,
    name: &str,
    members: &[(&str, &str)],
    extra: &[serde_json::Value],
) -> String {
    let mut entries: Vec<serde_json::Value> = members
        .iter()
        .map(|(bdev, file)| {
            serde_json::json!({"method": "bdev_uring_create",
                "params": {"name": bdev, "filename": file, "block_size": 4096}})
        })
        .collect();
    entries.extend(extra.iter().cloned());
    let cfg = serde_json::json!({"subsystems": [{"subsystem": "bdev", "config": entries}]});
    s.file(name, &cfg.to_string())
}
