//! Every backend driven through a real reactor: data read back, error injection, latency.

use super::error::{ErrorKind, InjectTarget};
use super::*;
use crate::config::create_bdev;
use crate::reactor::{Reactor, ReactorConfig};
use crate::testkit::temp_file;
use crate::testkit::{reactors, request, run_until, Recorder};
use crate::DmaPool;
use serde_json::json;

struct Rig {
    reg: Arc<BdevRegistry>,
    reactor: Vec<Reactor>,
    rec: Recorder,
    task: u32,
    pool: DmaPool,
}

impl Rig {
    fn new() -> Rig {
        let reg = Arc::new(BdevRegistry::new());
        let mut reactor = reactors(1, &reg, ReactorConfig::default());
        let rec = Recorder::default();
        let task = reactor[0].spawn(Box::new(rec.clone()));
        Rig {
            reg,
            reactor,
            rec,
            task,
            pool: DmaPool::new(16384, 256).unwrap(),
        }
    }

    fn create(&self, method: &str, params: serde_json::Value) -> BdevId {
        create_bdev(&self.reg, method, params).unwrap().0
    }

    /// A malloc bdev "M" of `num_blocks` blocks of 512 bytes.
    fn malloc(&self, num_blocks: u64) -> BdevId {
        self.create(
            "bdev_malloc_create",
            json!({"name": "M", "num_blocks": num_blocks, "block_size": 512}),
        )
    }

    fn buf(&self, len: usize, fill: u8) -> DmaBuf {
        let mut b = self.pool.take().expect("pool has room");
        b.set_len(len);
        b.as_mut_slice().fill(fill);
        b
    }

    fn submit(
        &mut self,
        bdev: BdevId,
        t: IoType,
        offset: u64,
        n: u32,
        buf: Option<DmaBuf>,
        tag: u64,
    ) {
        let io = request(t, offset, n, buf, 0, self.task, tag);
        self.reactor[0].ctx().submit(bdev, io);
    }

    /// Submits one I/O and waits for it; returns its status and buffer.
    fn run(
        &mut self,
        bdev: BdevId,
        t: IoType,
        offset: u64,
        n: u32,
        buf: Option<DmaBuf>,
    ) -> (IoStatus, Option<DmaBuf>) {
        let before = self.rec.count();
        self.submit(bdev, t, offset, n, buf, 0);
        let rec = self.rec.clone();
        run_until(&mut self.reactor, || rec.count() > before);
        let d = self.rec.done.borrow_mut().pop().unwrap();
        (d.status, d.buf)
    }
}

/// Writes two distinct blocks, reads both back, then zeroes and unmaps and reads again.
fn check_read_back(rig: &mut Rig, bdev: BdevId, bs: usize, keeps_data: bool) {
    let (s, _) = rig.run(bdev, IoType::Write, 2, 1, Some(rig.buf(bs, 0xa1)));
    assert_eq!(s, IoStatus::Success);
    let (s, _) = rig.run(bdev, IoType::Write, 3, 2, Some(rig.buf(2 * bs, 0xb2)));
    assert_eq!(s, IoStatus::Success);
    assert_eq!(
        rig.run(bdev, IoType::Flush, 0, 0, None).0,
        IoStatus::Success
    );
    let (s, buf) = rig.run(bdev, IoType::Read, 2, 3, Some(rig.buf(3 * bs, 0)));
    assert_eq!(s, IoStatus::Success);
    let data = buf.unwrap();
    if !keeps_data {
        assert!(
            data.as_slice().iter().all(|&b| b == 0),
            "null must not touch the buffer"
        );
        return;
    }
    assert!(data.as_slice()[..bs].iter().all(|&b| b == 0xa1));
    assert!(data.as_slice()[bs..].iter().all(|&b| b == 0xb2));
    assert_eq!(
        rig.run(bdev, IoType::WriteZeroes, 3, 1, None).0,
        IoStatus::Success
    );
    assert_eq!(
        rig.run(bdev, IoType::Unmap, 2, 1, None).0,
        IoStatus::Success
    );
    let (_, buf) = rig.run(bdev, IoType::Read, 2, 3, Some(rig.buf(3 * bs, 0xff)));
    let data = buf.unwrap();
    assert!(
        data.as_slice()[..2 * bs].iter().all(|&b| b == 0),
        "zeroed and unmapped read 0"
    );
    assert!(data.as_slice()[2 * bs..].iter().all(|&b| b == 0xb2));
}

#[test]
fn default_malloc_names_skip_names_already_in_use() {
    let reg = BdevRegistry::new();
    let malloc = |reg: &BdevRegistry| {
        let p = json!({"num_blocks": 8, "block_size": 512});
        create_bdev(reg, "bdev_malloc_create", p).unwrap().1
    };
    let first = malloc(&reg);
    let n: u32 = first.strip_prefix("Malloc").unwrap().parse().unwrap();
    // A user takes the next fifty default names for bdevs of their own.
    let taken: Vec<String> = (n + 1..n + 51).map(|i| format!("Malloc{i}")).collect();
    for name in &taken {
        let p = json!({"name": name, "num_blocks": 8, "block_size": 512});
        create_bdev(&reg, "bdev_null_create", p).unwrap();
    }
    let next = malloc(&reg);
    assert!(!taken.contains(&next) && next != first, "{next}");
    assert!(reg.lookup(&next).is_some());
}

#[test]
fn null_completes_everything_and_moves_no_data() {
    let mut rig = Rig::new();
    let b = rig.create(
        "bdev_null_create",
        json!({"name": "N", "num_blocks": 64, "block_size": 512}),
    );
    check_read_back(&mut rig, b, 512, false);
}

#[test]
fn malloc_reads_back_what_was_written() {
    let mut rig = Rig::new();
    let b = rig.malloc(64);
    check_read_back(&mut rig, b, 512, true);
}

/// Requests queued on one channel before it is polled run in the order they came: each read
/// sees the writes submitted before it and none after it.
#[test]
fn malloc_runs_queued_requests_in_submission_order() {
    let mut rig = Rig::new();
    let b = rig.malloc(8);
    let fills = [0x11u8, 0x22, 0x33];
    for (i, &fill) in fills.iter().enumerate() {
        let tag = 2 * i as u64;
        rig.submit(b, IoType::Write, 5, 1, Some(rig.buf(512, fill)), tag);
        rig.submit(b, IoType::Read, 5, 1, Some(rig.buf(512, 0)), tag + 1);
    }
    let rec = rig.rec.clone();
    run_until(&mut rig.reactor, || rec.count() == 2 * fills.len());
    let done = rig.rec.done.borrow();
    let tags: Vec<u64> = done.iter().map(|d| d.tag).collect();
    assert_eq!(tags, (0..2 * fills.len() as u64).collect::<Vec<_>>());
    for (i, &fill) in fills.iter().enumerate() {
        let read = done[2 * i + 1]
            .buf
            .as_ref()
            .expect("a read carries its buffer");
        assert!(
            read.as_slice().iter().all(|&x| x == fill),
            "read {i} saw the write before it"
        );
    }
}

/// A rig with a uring bdev of 4 KiB blocks on a fresh 1 MiB file; `extra` adds parameters.
fn uring_rig(file: &str, extra: serde_json::Value) -> (Rig, BdevId, std::path::PathBuf) {
    let path = temp_file(file, 1 << 20);
    let rig = Rig::new();
    let mut params = json!({"name": "U", "filename": path, "block_size": 4096});
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let b = rig.create("bdev_uring_create", params);
    (rig, b, path)
}

/// A uuid names a bdev as its name does: a second bdev with a uuid in use is refused, and so
/// are names that are empty, too long or not printable.
#[test]
fn uuids_are_unique_and_names_printable() {
    let reg = BdevRegistry::new();
    let uuid = "0b7f3f6e-2a53-4b8e-9d4c-3f1e2d5c6b7a";
    let malloc = |name: &str, uuid: Option<&str>| {
        let mut p = json!({"name": name, "num_blocks": 8, "block_size": 512});
        if let Some(u) = uuid {
            p["uuid"] = json!(u);
        }
        create_bdev(&reg, "bdev_malloc_create", p)
    };
    malloc("M0", Some(uuid)).unwrap();
    let e = malloc("M1", Some(&uuid.to_uppercase())).unwrap_err();
    assert!(
        e.to_string().contains("already the uuid of bdev 'M0'"),
        "{e}"
    );
    for bad in ["", "a\nb", &"x".repeat(256)] {
        let e = malloc(bad, None).unwrap_err().to_string();
        assert!(e.contains("invalid parameter name"), "{bad:?}: {e}");
    }
    assert_eq!(reg.list().len(), 1, "nothing else registered");
    malloc(&"x".repeat(255), None).unwrap();
}

/// Two bdevs on one file (by its path, or another path to it) would write over each other's
/// blocks, and a pool would take them as two members: the second is refused.
#[test]
fn a_second_uring_bdev_on_the_same_file_is_refused() {
    let (mut rig, _, path) = uring_rig("uring-twice", json!({}));
    let link = path.with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&path, &link).unwrap();
    for filename in [&path, &link] {
        let again = json!({"name": "U2", "filename": filename, "block_size": 4096});
        let e = create_bdev(&rig.reg, "bdev_uring_create", again)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already open as bdev 'U'"), "{e}");
        assert!(rig.reg.lookup("U2").is_none());
    }
    // Once the first is gone (with its channels), the file is free again.
    rig.reg.unregister("U").unwrap();
    rig.reactor.clear();
    let again = json!({"name": "U2", "filename": link, "block_size": 4096});
    create_bdev(&rig.reg, "bdev_uring_create", again).unwrap();
    std::fs::remove_file(link).unwrap();
    std::fs::remove_file(path).unwrap();
}

/// A polled ring opens on any O_DIRECT file, but its I/O works only on a device that polls
/// (NVMe poll queues): the create call tries a read and refuses what cannot poll. Where it
/// can, the bdev offers every I/O type (its channels run flush, unmap and write zeroes on a
/// plain side ring): the QEMU guest's tests run it on NVMe poll queues.
#[test]
fn uring_iopoll_is_refused_where_the_device_cannot_poll() {
    let path = temp_file("uring-iopoll", 1 << 20);
    let reg = BdevRegistry::new();
    let p = json!({"name": "P", "filename": path, "block_size": 4096, "iopoll": true});
    match create_bdev(&reg, "bdev_uring_create", p) {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("iopoll") && e.contains("polled read"), "{e}");
            assert!(reg.lookup("P").is_none());
        }
        Ok((id, _)) => {
            eprintln!("uring iopoll: this file's device polls; checking what it offers");
            let supported = reg.get(id).unwrap().info().supported;
            assert_eq!(supported, IoTypeSet::all());
        }
    }
    std::fs::remove_file(path).unwrap();
}

/// A file a uring bdev has open is locked: another process (here, another registry with
/// its own open of the file) cannot open it as a bdev until the first lets it go.
#[test]
fn a_file_open_as_a_uring_bdev_is_locked_against_other_processes() {
    let (rig, _, path) = uring_rig("uring-locked", json!({}));
    let other = BdevRegistry::new();
    let p = json!({"name": "U", "filename": path, "block_size": 4096});
    let e = create_bdev(&other, "bdev_uring_create", p.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is locked by another process"), "{e}");
    assert!(other.lookup("U").is_none());
    // Gone from the first registry and its reactors' channels closed: the file is free.
    drop(rig);
    create_bdev(&other, "bdev_uring_create", p).unwrap();
    std::fs::remove_file(path).unwrap();
}

#[test]
fn uring_with_o_direct_reads_back_what_was_written() {
    let (mut rig, b, path) = uring_rig("uring-rb", json!({}));
    let info = rig.reg.get(b).unwrap().driver_specific();
    assert_eq!(info["uring"]["direct"], true);
    check_read_back(&mut rig, b, 4096, true);
    // The bytes are in the file itself, not in some cache of ours.
    let raw = std::fs::read(&path).unwrap();
    assert!(raw[4 * 4096..5 * 4096].iter().all(|&x| x == 0xb2));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn uring_out_of_resources_is_queued_and_retried() {
    let (mut rig, b, path) = uring_rig("uring-nomem", json!({"queue_depth": 2}));
    for tag in 0..32u64 {
        let buf = rig.buf(4096, tag as u8);
        rig.submit(b, IoType::Write, tag, 1, Some(buf), tag);
    }
    let rec = rig.rec.clone();
    run_until(&mut rig.reactor, || rec.count() == 32);
    assert!(rig.rec.statuses().iter().all(|s| s.is_success()));
    assert!(
        rig.reactor[0].ctx().counters().nomem_retries > 0,
        "the ring of 2 must have refused some"
    );
    let raw = std::fs::read(&path).unwrap();
    for tag in 0..32usize {
        assert!(
            raw[tag * 4096..(tag + 1) * 4096]
                .iter()
                .all(|&x| x == tag as u8),
            "block {tag}"
        );
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn uring_coalesced_submissions_all_complete_and_land() {
    // A batch of 8 on a ring of 64: the first 10 writes go out at once (the device was
    // empty); the next 3 find 10 in the device and wait for their batch, which they never fill,
    // so the device draining or the hold time must release them.
    let (mut rig, b, path) = uring_rig(
        "uring-batch",
        json!({"queue_depth": 64, "submit_batch": 8, "submit_hold_us": 200}),
    );
    let info = rig.reg.get(b).unwrap().driver_specific();
    assert_eq!(info["uring"]["submit_batch"], 8);
    for tag in 0..10u64 {
        let buf = rig.buf(4096, tag as u8 + 1);
        rig.submit(b, IoType::Write, tag, 1, Some(buf), tag);
    }
    rig.reactor[0].poll(crate::time::now());
    for tag in 10..13u64 {
        let buf = rig.buf(4096, tag as u8 + 1);
        rig.submit(b, IoType::Write, tag, 1, Some(buf), tag);
    }
    let rec = rig.rec.clone();
    run_until(&mut rig.reactor, || rec.count() == 13);
    assert!(rig.rec.statuses().iter().all(|s| s.is_success()));
    let raw = std::fs::read(&path).unwrap();
    for tag in 0..13usize {
        assert!(
            raw[tag * 4096..(tag + 1) * 4096]
                .iter()
                .all(|&x| x == tag as u8 + 1),
            "block {tag}"
        );
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn uring_with_sqpoll_reads_back_what_was_written_and_keeps_its_counts() {
    // The kernel's SQ thread takes entries without this reactor entering the ring: the
    // queue must not keep counting them as waiting (a wrong count underflowed the device's
    // share, which panics in a debug build, and held later submissions back).
    let (mut rig, b, path) = uring_rig(
        "uring-sqpoll",
        json!({"sqpoll_idle_ms": 10, "queue_depth": 16, "submit_batch": 4}),
    );
    check_read_back(&mut rig, b, 4096, true);
    for round in 0..20u64 {
        for tag in 0..12u64 {
            let buf = rig.buf(4096, (round + tag) as u8);
            rig.submit(b, IoType::Write, tag, 1, Some(buf), tag);
        }
        let rec = rig.rec.clone();
        let want = rec.count() + 12;
        run_until(&mut rig.reactor, || rec.count() >= want);
    }
    assert!(rig.rec.statuses().iter().all(|s| s.is_success()));
    let raw = std::fs::read(&path).unwrap();
    for tag in 0..12usize {
        let want = (19 + tag) as u8;
        let block = &raw[tag * 4096..(tag + 1) * 4096];
        assert!(block.iter().all(|&x| x == want), "block {tag}");
    }
    std::fs::remove_file(path).unwrap();
}

fn error_rig() -> (Rig, BdevId) {
    let rig = Rig::new();
    rig.malloc(64);
    let ee = rig.create("bdev_error_create", json!({"base_name": "M"}));
    (rig, ee)
}

fn inject(rig: &Rig, target: InjectTarget, kind: ErrorKind, num: u32) {
    let (_, b) = rig.reg.lookup("EE_M").unwrap();
    b.downcast_ref::<crate::bdev::error::ErrorBdev>()
        .unwrap()
        .injection()
        .inject(target, kind, num);
}

#[test]
fn error_bdev_fails_exactly_n_of_the_chosen_type() {
    let (mut rig, ee) = error_rig();
    assert_eq!(
        rig.run(ee, IoType::Write, 0, 1, Some(rig.buf(512, 1))).0,
        IoStatus::Success
    );
    inject(&rig, InjectTarget::Write, ErrorKind::Failure, 3);
    let mut write_statuses = Vec::new();
    for i in 0..6 {
        // Reads between the writes are not of the chosen type and must pass.
        assert_eq!(
            rig.run(ee, IoType::Read, 0, 1, Some(rig.buf(512, 0))).0,
            IoStatus::Success
        );
        write_statuses.push(rig.run(ee, IoType::Write, i, 1, Some(rig.buf(512, 9))).0);
    }
    let failed = write_statuses.iter().filter(|s| !s.is_success()).count();
    assert_eq!(failed, 3, "{write_statuses:?}");
    assert!(write_statuses[..3]
        .iter()
        .all(|s| *s == IoStatus::Failed { errno: libc::EIO }));
    // A failed write did not reach the base: block 0 still holds the first write.
    let (_, buf) = rig.run(ee, IoType::Read, 0, 1, Some(rig.buf(512, 0)));
    assert!(buf.unwrap().as_slice().iter().all(|&b| b == 1));
}

#[test]
fn error_bdev_all_types_and_clear() {
    let (mut rig, ee) = error_rig();
    inject(&rig, InjectTarget::All, ErrorKind::Failure, 2);
    assert!(!rig.run(ee, IoType::Flush, 0, 0, None).0.is_success());
    assert!(!rig.run(ee, IoType::Unmap, 0, 1, None).0.is_success());
    // Two per type: unmap has one left; clear removes it.
    inject(&rig, InjectTarget::Clear, ErrorKind::Failure, 0);
    assert!(rig.run(ee, IoType::Unmap, 0, 1, None).0.is_success());
}

#[test]
fn error_bdev_pending_holds_io_until_cleared() {
    let (mut rig, ee) = error_rig();
    inject(&rig, InjectTarget::Read, ErrorKind::Pending, 2);
    for tag in 0..3 {
        let buf = rig.buf(512, 0);
        rig.submit(ee, IoType::Read, 0, 1, Some(buf), tag);
    }
    for now in 0..1000 {
        rig.reactor[0].poll(now);
    }
    assert_eq!(rig.rec.count(), 1, "two reads are held, the third passes");
    assert_eq!(rig.rec.done.borrow()[0].tag, 2);
    assert!(!rig.reactor[0].can_park(), "held I/O is in flight");
    inject(&rig, InjectTarget::Clear, ErrorKind::Pending, 0);
    // A new pending injection right after the clear, before the channel has polled: the
    // read it catches is held, while the two the clear covered go on.
    inject(&rig, InjectTarget::Read, ErrorKind::Pending, 1);
    rig.submit(ee, IoType::Read, 0, 1, Some(rig.buf(512, 0)), 3);
    for now in 1000..2000 {
        rig.reactor[0].poll(now);
    }
    assert_eq!(rig.rec.count(), 3, "the read after the clear stays held");
    inject(&rig, InjectTarget::Clear, ErrorKind::Pending, 0);
    let rec = rig.rec.clone();
    run_until(&mut rig.reactor, || rec.count() == 4);
    assert!(rig.rec.statuses().iter().all(|s| s.is_success()));
}

/// The delay bdev's measured added latency matches its configuration: mean within 5% and
/// p99 within 10% over 20000 reads at queue depth 32 (the sampling error of a p99 over 20000
/// samples is about 4%). The reactor runs on a fake clock advanced 1 us per poll, so the
/// figures are the backend's own, free of scheduling noise; the process test
/// `delay_bdev_latency_under_tidepool_perf` checks the same on the real clock.
#[test]
fn delay_bdev_latency_matches_its_configuration() {
    let mut rig = Rig::new();
    rig.malloc(64);
    let d = rig.create(
        "bdev_delay_create",
        json!({"base_bdev_name": "M", "name": "D", "avg_read_latency": 400, "p99_read_latency": 2000,
               "avg_write_latency": 10, "p99_write_latency": 10}),
    );
    const TOTAL: u64 = 20_000;
    const DEPTH: u64 = 32;
    const STEP_NS: u64 = 1_000;
    let mut submitted_at = vec![0u64; TOTAL as usize];
    let mut latencies_ns = Vec::with_capacity(TOTAL as usize);
    let (mut next, mut now) = (0u64, 0u64);
    while (latencies_ns.len() as u64) < TOTAL {
        assert!(now < 3_600_000_000_000, "delay bdev stopped completing");
        while next < TOTAL && next - (latencies_ns.len() as u64) < DEPTH {
            submitted_at[next as usize] = now;
            let buf = rig.buf(512, 0);
            rig.submit(d, IoType::Read, next % 64, 1, Some(buf), next);
            next += 1;
        }
        rig.reactor[0].poll(now);
        for done in rig.rec.done.borrow_mut().drain(..) {
            assert!(done.status.is_success());
            latencies_ns.push(done.at - submitted_at[done.tag as usize]);
        }
        now += STEP_NS;
    }
    latencies_ns.sort_unstable();
    let mean_us = latencies_ns.iter().sum::<u64>() as f64 / TOTAL as f64 / 1e3;
    let p99_us = latencies_ns[(TOTAL * 99 / 100) as usize] as f64 / 1e3;
    assert!(
        (mean_us / 400.0 - 1.0).abs() < 0.05,
        "mean {mean_us:.1} us, configured 400"
    );
    assert!(
        (p99_us / 2000.0 - 1.0).abs() < 0.10,
        "p99 {p99_us:.1} us, configured 2000"
    );
    // Writes use the write pair: 10 us flat.
    let (s, _) = rig.run(d, IoType::Write, 0, 1, Some(rig.buf(512, 1)));
    assert!(s.is_success());
}
