//! Helpers for the process-level tests: find the workspace's built binaries, run them, and
//! make scratch files. The binaries are built by `cargo test --workspace` (every package's
//! binaries are built before its tests); a missing binary fails the test with the path it
//! looked for, it is never skipped.

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
