//! NBD through real processes: `tidepoold` serving exports, driven by clients nobody here
//! wrote (qemu-img and qemu-io from qemu-utils, nbdinfo and nbdcopy from libnbd-bin), plus a
//! raw client for what those tools never send (bad requests, a malformed handshake).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tidepool_tests::{external, external_ok, text, Daemon, Scratch};

/// A daemon with `bdevs` created by RPC, an NBD server on a Unix socket, and one export per
/// `(export, bdev)`.
fn serve(s: &Scratch, name: &str, bdevs: &[&[&str]], exports: &[(&str, &str)]) -> (Daemon, String) {
    let d = Daemon::start(s, name, &[]);
    for args in bdevs {
        d.tpctl_ok(args);
    }
    let nbd_sock = s.join(&format!("{name}-nbd.sock"));
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{nbd_sock}")]);
    for (export, bdev) in exports {
        d.tpctl_ok(&["nbd_export_create", export, bdev]);
    }
    (d, nbd_sock)
}

fn uri(sock: &str, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={sock}")
}

fn export_stats(d: &Daemon, export: &str) -> serde_json::Value {
    d.tpctl_ok(&["nbd_get_exports", "-n", export])[0].clone()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 3's last line: SIGTERM while a client writes. The daemon stops reading, finishes and
/// answers the writes it started, flushes the bdev, exits 0 and removes its sockets; what was
/// acknowledged before is in the file, and every block of the region being written holds
/// either the old or the new pattern.
#[test]
fn sigterm_during_nbd_writes_exits_cleanly_and_keeps_acknowledged_data() {
    let s = Scratch::new("nbd-sigterm");
    let image = s.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("backing file");
    let (d, sock) = serve(
        &s,
        "term",
        &[&["bdev_uring_create", &image, "Uring0", "4096"]],
        &[("disk", "Uring0")],
    );
    let target = uri(&sock, "disk");
    external_ok(
        "qemu-io",
        &["-f", "raw", &target, "-c", "write -P 0xa5 0 4M"],
    );

    // A client that keeps writing 0x5c over [8 MiB, 40 MiB) until it is cut off.
    let mut args = vec!["-f".to_string(), "raw".into(), target.clone()];
    for round in 0..40 {
        for i in 0..128u64 {
            let offset = (8 << 20) + ((i * 7 + round) % 128) * (256 << 10);
            args.push("-c".into());
            args.push(format!("write -P 0x5c {offset} 256k"));
        }
    }
    let mut writer = Command::new("qemu-io")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io (scripts/test.sh installs qemu-utils)");
    wait_until("the writer to be under way", || {
        export_stats(&d, "disk")["bytes_written"].as_u64().unwrap() > (4 << 20) + (4 << 20)
    });
    assert_eq!(
        export_stats(&d, "disk")["connections"],
        1,
        "writer connected"
    );
    let rpc_sock = d.socket.clone();
    let (status, log) = d.signal_and_wait("TERM");
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(
        !std::path::Path::new(&rpc_sock).exists(),
        "RPC socket removed"
    );
    assert!(!std::path::Path::new(&sock).exists(), "NBD socket removed");
    for needle in [
        "nbd: server stopped",
        "flushed bdev 'Uring0'",
        "tidepoold stopped",
    ] {
        assert!(log.contains(needle), "log lacks '{needle}':\n{log}");
    }

    let data = std::fs::read(&image).expect("read backing file");
    assert!(
        data[..4 << 20].iter().all(|&b| b == 0xa5),
        "acknowledged data before the signal is intact"
    );
    let mut new_blocks = 0;
    for (i, block) in data[8 << 20..40 << 20].chunks(4096).enumerate() {
        let old = block.iter().all(|&b| b == 0);
        let new = block.iter().all(|&b| b == 0x5c);
        assert!(old || new, "block {i} of the written region is torn");
        new_blocks += new as usize;
    }
    assert!(new_blocks > 0, "the writer's data reached the file");
}

/// qemu-img and qemu-io: info, patterned writes and verifying reads (aligned and not),
/// discard, write-zeroes, flush, aio; convert into the export and compare; nbdinfo and
/// nbdcopy from libnbd.
#[test]
fn qemu_and_libnbd_tools_read_write_and_verify() {
    let s = Scratch::new("nbd-tools");
    let (d, sock) = serve(
        &s,
        "tools",
        &[&["bdev_malloc_create", "-b", "Malloc0", "64", "4096"]],
        &[("m0", "Malloc0")],
    );
    let target = uri(&sock, "m0");
    let info = external_ok("qemu-img", &["info", "--output=json", &target]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info JSON");
    assert_eq!(info["virtual-size"], 64 << 20, "{info}");

    let script = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -P 0x11 4096 8192",
        "read -P 0x11 4096 8192",
        "read -P 0xab 0 4096",
        "write -P 0x33 100 1000",
        "read -P 0x33 100 1000",
        "read -P 0xab 0 100",
        "flush",
        "discard 2M 64k",
        "read -P 0 2M 64k",
        "write -P 0x44 3M 64k",
        "write -z 3M 64k",
        "read -P 0 3M 64k",
        "aio_write -P 0x22 5M 128k",
        "aio_write -P 0x23 6M 3M",
        "aio_flush",
        "read -P 0x22 5M 128k",
        "read -P 0x23 6M 3M",
        "write -f -P 0x55 10M 4k",
        "read -P 0x55 10M 4k",
    ];
    let mut args = vec!["-f", "raw", &target];
    for c in &script {
        args.extend(["-c", c]);
    }
    let out = external("qemu-io", &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !stdout.contains("Pattern verification failed") && !stdout.contains("failed"),
        "{stdout}"
    );
    // FUA on write-zeroes: answered only after a flush of the bdev, as on a write.
    let flushes = || {
        d.tpctl_ok(&["bdev_get_iostat", "-b", "Malloc0"])["bdevs"][0]["num_flush_ops"]
            .as_u64()
            .expect("num_flush_ops")
    };
    // (qemu-io flushes when it closes the image: count against a run without FUA; and in
    // writeback mode, as its default writethrough sets FUA on every write.)
    let flushes_of = |command: &str| {
        let before = flushes();
        let args = ["-f", "raw", "-t", "writeback", &target, "-c", command];
        external_ok("qemu-io", &args);
        flushes() - before
    };
    let plain = flushes_of("write -z 12M 64k");
    let fua = flushes_of("write -z -f 12M 64k");
    assert_eq!(fua, plain + 1, "write-zeroes with FUA was not flushed");

    // convert a random 8 MiB image into the export, then compare both ways.
    let src = s.join("src.img");
    let mut bytes = vec![0u8; 8 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&src, &bytes).expect("source image");
    let out_img = s.join("out.img");
    let copy_back = s.join("back.img");
    let export2 = uri(&sock, "m0");
    external_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", &src, &export2],
    );
    external_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &export2, &out_img],
    );
    let back = std::fs::read(&out_img).expect("converted back");
    assert_eq!(back.len(), 64 << 20);
    assert!(back[..8 << 20] == bytes[..], "qemu-img convert round trip");
    external_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &out_img, &export2],
    );

    // libnbd: nbdinfo sees the size and the export list; nbdcopy copies it byte for byte.
    let info = external_ok("nbdinfo", &["--json", &export2]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("nbdinfo JSON");
    assert_eq!(info["exports"][0]["export-size"], 64 << 20, "{info}");
    assert_eq!(info["exports"][0]["can_flush"], true, "{info}");
    let list = external_ok(
        "nbdinfo",
        &["--list", &format!("nbd+unix://?socket={sock}")],
    );
    assert!(list.contains("m0"), "{list}");
    external_ok("nbdcopy", &[&export2, &copy_back]);
    let copied = std::fs::read(&copy_back).expect("nbdcopy output");
    assert!(copied == back, "nbdcopy matches qemu-img convert");

    let stats = export_stats(&d, "m0");
    assert!(
        stats["bytes_written"].as_u64().unwrap() >= 8 << 20,
        "{stats}"
    );
    assert!(
        stats["bytes_read"].as_u64().unwrap() >= 128 << 20,
        "{stats}"
    );
}

/// Minimal raw client: handshake with NBD_OPT_GO, then requests by hand.
struct RawClient {
    s: UnixStream,
}

impl RawClient {
    fn connect(sock: &str) -> RawClient {
        let s = UnixStream::connect(sock).expect("connect NBD socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawClient { s }
    }

    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.s.read_exact(&mut b).expect("server reply");
        b
    }

    fn go(sock: &str, export: &str) -> RawClient {
        let mut c = RawClient::connect(sock);
        let greeting = c.read_n(18);
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        c.s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        let mut opt = b"IHAVEOPT".to_vec();
        opt.extend(7u32.to_be_bytes()); // GO
        opt.extend(((4 + export.len() + 2) as u32).to_be_bytes());
        opt.extend((export.len() as u32).to_be_bytes());
        opt.extend(export.as_bytes());
        opt.extend(0u16.to_be_bytes());
        c.s.write_all(&opt).unwrap();
        loop {
            let head = c.read_n(20);
            let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
            c.read_n(len);
            assert!(kind < 1 << 31, "GO refused: {kind:#x}");
            if kind == 1 {
                return c;
            }
        }
    }

    /// Sends a request (with `payload` for writes) and returns the reply's error and data.
    fn request(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend(0u16.to_be_bytes());
        r.extend(kind.to_be_bytes());
        r.extend(77u64.to_be_bytes());
        r.extend(offset.to_be_bytes());
        r.extend(len.to_be_bytes());
        r.extend(payload);
        self.s.write_all(&r).unwrap();
        let head = self.read_n(16);
        assert_eq!(&head[..4], &0x6744_6698u32.to_be_bytes());
        assert_eq!(&head[8..16], &77u64.to_be_bytes(), "cookie echoed");
        let error = u32::from_be_bytes(head[4..8].try_into().unwrap());
        let data = if kind == 0 && error == 0 {
            self.read_n(len as usize)
        } else {
            Vec::new()
        };
        (error, data)
    }
}

/// Out-of-range, misaligned and read-only requests get NBD errors and the connection stays
/// up; a bad request magic closes that connection only; a malformed handshake is dropped and
/// the next client is served.
#[test]
fn bad_requests_get_errors_and_violations_close_only_their_connection() {
    let s = Scratch::new("nbd-bad");
    let (d, sock) = serve(
        &s,
        "bad",
        &[&["bdev_malloc_create", "-b", "Malloc0", "1", "4096"]],
        &[("m0", "Malloc0")],
    );
    d.tpctl_ok(&["bdev_malloc_create", "-b", "Malloc1", "1", "4096"]);
    d.tpctl_ok(&["nbd_export_create", "ro", "Malloc1", "--read-only"]);
    const READ: u16 = 0;
    const WRITE: u16 = 1;
    const EPERM: u32 = 1;
    const EINVAL: u32 = 22;
    const ENOSPC: u32 = 28;
    let mut c = RawClient::go(&sock, "m0");
    assert_eq!(c.request(WRITE, 4096, 4096, &[0x7e; 4096]).0, 0);
    assert_eq!(
        c.request(READ, 1 << 20, 4096, &[]).0,
        EINVAL,
        "read past the end"
    );
    assert_eq!(
        c.request(READ, 100, 4096, &[]).0,
        EINVAL,
        "misaligned offset"
    );
    assert_eq!(c.request(READ, 0, 1000, &[]).0, EINVAL, "misaligned length");
    assert_eq!(
        c.request(WRITE, 1 << 20, 4096, &[1; 4096]).0,
        ENOSPC,
        "write past the end; its payload is consumed"
    );
    assert_eq!(c.request(9, 0, 4096, &[]).0, EINVAL, "unknown command");
    let (err, data) = c.request(READ, 4096, 4096, &[]);
    assert_eq!(err, 0, "connection still serves");
    assert!(data.iter().all(|&b| b == 0x7e));

    let mut ro = RawClient::go(&sock, "ro");
    assert_eq!(ro.request(WRITE, 0, 4096, &[1; 4096]).0, EPERM);
    assert_eq!(ro.request(READ, 0, 4096, &[]).0, 0);

    // Bad magic: this connection is closed, the other one lives on.
    ro.s.write_all(&[0xde; 28]).unwrap();
    let mut rest = Vec::new();
    let closed = ro.s.read_to_end(&mut rest).map(|_| rest.is_empty());
    assert!(
        matches!(closed, Ok(true)) || closed.is_err(),
        "closed without a reply"
    );
    assert_eq!(
        c.request(READ, 4096, 4096, &[]).0,
        0,
        "other client unaffected"
    );

    // A malformed handshake (unknown client flags) is dropped; the server goes on.
    let mut h = RawClient::connect(&sock);
    h.read_n(18);
    h.s.write_all(&0xffu32.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = h.s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no reply to a malformed handshake");
    let info = external_ok("nbdinfo", &["--size", &uri(&sock, "m0")]);
    assert_eq!(info.trim(), (1 << 20).to_string());
    // A GO for an unknown export is refused with an error reply, and the daemon lives on.
    let out = external("nbdinfo", &[&uri(&sock, "nope")]);
    assert!(!out.status.success());
    d.tpctl_ok(&["nbd_get_exports"]);
}

/// Several clients at once on two reactors, one killed in the middle of a transfer: the others
/// finish and verify, the killed one's connection goes away, nothing acknowledged is lost.
#[test]
fn several_clients_at_once_and_one_killed_mid_transfer() {
    let s = Scratch::new("nbd-multi");
    let d = Daemon::start(&s, "multi", &["-m", "0x3"]);
    d.tpctl_ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "4096"]);
    let sock = s.join("multi-nbd.sock");
    d.tpctl_ok(&["nbd_server_start", "-a", &format!("unix:{sock}")]);
    d.tpctl_ok(&["nbd_export_create", "m0", "Malloc0"]);
    let target = uri(&sock, "m0");

    // The victim streams 48 MiB of writes over [16 MiB, 64 MiB) and is killed midway.
    let mut victim_args = vec!["-f".to_string(), "raw".into(), target.clone()];
    for i in 0..192u64 {
        victim_args.push("-c".into());
        victim_args.push(format!(
            "write -P 0x77 {} 256k",
            (16 << 20) + i * (256 << 10)
        ));
    }
    let mut victim = Command::new("qemu-io")
        .args(&victim_args)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let writers: Vec<_> = (0..4u64)
        .map(|i| {
            let off = i * (4 << 20);
            let args = [
                "-f".to_string(),
                "raw".into(),
                target.clone(),
                "-c".into(),
                format!("write -P {} {off} 4M", 0x10 + i),
                "-c".into(),
                format!("aio_write -P {} {} 64k", 0x20 + i, off + (1 << 20)),
                "-c".into(),
                "aio_flush".into(),
                "-c".into(),
                format!("read -P {} {} 64k", 0x20 + i, off + (1 << 20)),
            ];
            Command::new("qemu-io")
                .args(&args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("qemu-io")
        })
        .collect();
    wait_until("the victim to be writing", || {
        export_stats(&d, "m0")["bytes_written"].as_u64().unwrap() > 4 << 20
    });
    victim.kill().expect("kill the victim");
    let _ = victim.wait();
    for w in writers {
        let out = w.wait_with_output().expect("writer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !stdout.contains("fail"), "{stdout}");
    }
    wait_until("every connection to close", || {
        export_stats(&d, "m0")["connections"] == 0
    });
    let mut args = vec!["-f".to_string(), "raw".into(), target.clone()];
    for i in 0..4u64 {
        let off = i * (4 << 20);
        args.push("-c".into());
        args.push(format!("read -P {} {off} 1M", 0x10 + i));
        args.push("-c".into());
        args.push(format!("read -P {} {} 64k", 0x20 + i, off + (1 << 20)));
        args.push("-c".into());
        args.push(format!(
            "read -P {} {} 3008k",
            0x10 + i,
            off + (1 << 20) + (64 << 10)
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = external_ok("qemu-io", &args);
    assert!(!out.contains("fail"), "{out}");
    let log = d.log_text();
    assert!(log.contains("left export 'm0'"), "{log}");
}

/// The RPC side: errors for bad input, an exported bdev cannot be deleted, an idle export can
/// be, and save_config brings the exports back.
#[test]
fn nbd_methods_refuse_bad_input_and_exports_hold_their_bdev() {
    let s = Scratch::new("nbd-rpc");
    let (d, sock) = serve(
        &s,
        "rpc",
        &[&["bdev_malloc_create", "-b", "Malloc0", "8", "4096"]],
        &[("m0", "Malloc0")],
    );
    let code = |args: &[&str]| -> String {
        let out = d.tpctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(code(&["nbd_export_create", "m0", "Malloc0"]).contains("-17"));
    assert!(code(&["nbd_export_create", "x", "Nope"]).contains("-19"));
    assert!(code(&["nbd_server_start", "-a", "unix:/tmp/x.sock"]).contains("-17"));
    assert!(code(&["bdev_malloc_delete", "Malloc0"]).contains("-16"));
    assert!(code(&[
        "call",
        "nbd_export_create",
        r#"{"name":"","bdev_name":"Malloc0"}"#
    ])
    .contains("-32602"));
    assert!(code(&["call", "nbd_export_create", r#"{"name":"y"}"#]).contains("bdev_name"));
    assert!(code(&["nbd_export_delete", "zz"]).contains("-19"));

    let saved = s.file(
        "saved.json",
        &serde_json::to_string(&d.tpctl_ok(&["save_config"])).unwrap(),
    );
    external_ok(
        "qemu-io",
        &["-f", "raw", &uri(&sock, "m0"), "-c", "write -P 0x61 0 4k"],
    );
    d.tpctl_ok(&["nbd_export_delete", "m0"]);
    let out = external(
        "qemu-io",
        &["-f", "raw", &uri(&sock, "m0"), "-c", "read 0 4k"],
    );
    assert!(!out.status.success(), "deleted export is gone");
    d.tpctl_ok(&["bdev_malloc_delete", "Malloc0"]);
    d.tpctl_ok(&["nbd_server_stop"]);
    assert!(code(&["nbd_server_stop"]).contains("-19"));
    assert!(code(&["nbd_server_start", "-a", "nonsense"]).contains("-32602"));
    // A socket path no client could connect to (sun_path holds 107 bytes and a NUL).
    let long = format!("{}/{}.sock", s.path.display(), "n".repeat(120));
    let err = code(&["nbd_server_start", "-a", &format!("unix:{long}")]);
    assert!(
        err.contains("-32602") && err.contains("limited to 107"),
        "{err}"
    );
    assert!(!std::path::Path::new(&long).exists());
    assert!(
        code(&["nbd_server_stop"]).contains("-19"),
        "no server was started"
    );
    drop(d);

    let d2 = Daemon::start(&s, "rpc2", &["--json", &saved]);
    assert_eq!(export_stats(&d2, "m0")["bdev_name"], "Malloc0");
    external_ok(
        "qemu-io",
        &["-f", "raw", &uri(&sock, "m0"), "-c", "read -P 0 0 4k"],
    );
}

/// SIGTERM while a client's write is held (a delay bdev, 11 s) past the NBD drain (10 s):
/// the daemon flushes and exits, and the write, which lands after that flush, is not
/// acknowledged (it used to be, with no flush after it): the client sees its connection end.
#[test]
fn a_write_that_outlasts_the_shutdown_drain_is_not_acknowledged() {
    let s = Scratch::new("nbd-late-ack");
    let (d, sock) = serve(
        &s,
        "late",
        &[
            &["bdev_malloc_create", "-b", "M", "8", "4096"],
            &[
                "bdev_delay_create",
                "-b",
                "M",
                "-d",
                "D",
                "-r",
                "10",
                "-t",
                "10",
                "-w",
                "11000000",
                "-n",
                "11000000",
            ],
        ],
        &[("slow", "D")],
    );
    let mut writer = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&sock, "slow"), "-c", "write -P 0xab 0 4k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    wait_until("the write to reach the export", || {
        export_stats(&d, "slow")["bytes_written"].as_u64() == Some(4096)
    });
    let (status, log) = d.signal_and_wait_within("TERM", 40);
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(log.contains("they are cut off"), "{log}");
    let acknowledged = writer.wait().expect("qemu-io").success();
    assert!(!acknowledged, "the late write was acknowledged\n{log}");
}

/// Deleting an export whose client still waits for a write (held by an error bdev) does not
/// give the bdev away: after the drain the call fails -16, the export is closed to new
/// clients and keeps its bdev claimed, so no new user can have data the late write would land
/// on. Once the write is let through, deleting again releases it.
#[test]
fn an_export_with_io_in_flight_keeps_its_bdev_until_the_io_is_back() {
    let s = Scratch::new("nbd-stuck-delete");
    let (d, sock) = serve(
        &s,
        "stuck",
        &[
            &["bdev_malloc_create", "-b", "M", "8", "4096"],
            &["bdev_error_create", "M"],
        ],
        &[("ee", "EE_M")],
    );
    d.tpctl_ok(&[
        "bdev_error_inject_error",
        "EE_M",
        "write",
        "pending",
        "-n",
        "1",
    ]);
    let mut writer = Command::new("qemu-io")
        .args(["-f", "raw", &uri(&sock, "ee"), "-c", "write -P 0xab 0 4k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    wait_until("the write to reach the export", || {
        export_stats(&d, "ee")["connections"] == 1
    });
    // Caught and held by the error bdev: its armed write injection is used up.
    wait_until("the write to be held on EE_M", || {
        let b = d.tpctl_ok(&["bdev_get_bdevs", "-b", "EE_M"]);
        b[0]["driver_specific"]["error"]["armed"]
            .as_object()
            .is_some_and(|armed| !armed.contains_key("write"))
    });
    let out = d.tpctl(&["nbd_export_delete", "ee"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        err.contains("-16") && err.contains("still wait for I/O"),
        "{err}"
    );
    assert_eq!(export_stats(&d, "ee")["closing"], true);
    let bdev = d.tpctl_ok(&["bdev_get_bdevs", "-b", "EE_M"]);
    assert_eq!(bdev[0]["claimed"], true, "{bdev}");
    let taken = d.tpctl(&["nbd_export_create", "other", "EE_M"]);
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("-16"),
        "{}",
        text(&taken)
    );
    // The write goes through; the client gets its answer and leaves; the delete completes.
    d.tpctl_ok(&["bdev_error_inject_error", "EE_M", "clear", "failure"]);
    assert!(writer.wait().expect("qemu-io").success());
    d.tpctl_ok(&["nbd_export_delete", "ee"]);
    let bdev = d.tpctl_ok(&["bdev_get_bdevs", "-b", "EE_M"]);
    assert_eq!(bdev[0]["claimed"], false, "{bdev}");
    d.tpctl_ok(&["nbd_export_create", "other", "EE_M"]);
}
