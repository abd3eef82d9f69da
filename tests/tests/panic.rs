//! A panic anywhere in tidepoold stops it at once (DESIGN.md, invariant 5): the message in its
//! log and a non-zero exit, so that a supervisor restarts it. The panics are injected with the
//! test-only `test_inject_panic`, which a daemon serves only when started with `--test-rpcs`.

use std::time::{Duration, Instant};
use tidepool_tests::{text, Daemon, Scratch};

const MESSAGE: &str = "test_inject_panic: injected panic";

/// Calls `test_inject_panic` with `params`, then requires the daemon to be gone within 1 s of
/// the call, not successfully, with `expect` in its log.
fn panics_and_stops(d: &mut Daemon, params: &str, expect: &str) {
    let sent = Instant::now();
    // The answer may or may not come back before the process dies: either is fine.
    let out = d.tpctl(&["call", "test_inject_panic", params]);
    let status = d.wait_exit(Duration::from_secs(1).saturating_sub(sent.elapsed()));
    let log = d.log_text();
    let Some(status) = status else {
        panic!(
            "tidepoold still runs 1 s after a panic ({params}); tpctl: {}\n--- log\n{log}",
            text(&out)
        );
    };
    assert!(
        !status.success(),
        "a panic must exit non-zero: {status}\n{log}"
    );
    assert!(
        log.contains(MESSAGE) && log.contains(expect),
        "the log must carry the panic message '{expect}': {status}\n--- log\n{log}"
    );
    assert!(
        log.contains("panic on thread") && log.contains("testing.rs"),
        "the log must say where the panic happened:\n{log}"
    );
}

#[test]
fn a_panic_on_a_reactor_stops_the_daemon_within_a_second() {
    let s = Scratch::new("panic-reactor");
    let mut d = Daemon::start(&s, "d", &["-m", "0x3", "--test-rpcs"]);
    // Something on the reactors, so the panic is not on an idle engine only.
    d.tpctl_ok(&["bdev_malloc_create", "-b", "M0", "16", "4096"]);
    panics_and_stops(&mut d, r#"{"reactor": 1}"#, "on reactor 1");
    let log = d.log_text();
    assert!(log.contains("thread 'reactor_1'"), "{log}");
}

#[test]
fn a_panicking_rpc_handler_stops_the_daemon_within_a_second() {
    let s = Scratch::new("panic-rpc");
    let mut d = Daemon::start(&s, "d", &["--test-rpcs"]);
    panics_and_stops(&mut d, "{}", "in an RPC handler");
    let log = d.log_text();
    assert!(log.contains("thread 'rpc-conn'"), "{log}");
}

#[test]
fn without_test_rpcs_the_injection_is_not_served() {
    let s = Scratch::new("panic-off");
    let d = Daemon::start(&s, "d", &[]);
    let out = d.tpctl(&["call", "test_inject_panic", r#"{"reactor": 0}"#]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-32601"),
        "an unknown method: {}",
        text(&out)
    );
    let methods = d.tpctl_ok(&["rpc_get_methods"]);
    assert!(!methods.to_string().contains("test_"), "{methods}");
    d.tpctl_ok(&["bdev_get_bdevs"]);
}
