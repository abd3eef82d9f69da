//! tidepool's NVMe/TCP host against tidepool's target over loopback: the target on an engine
//! of its own (reactor threads, a malloc namespace), the host's channels driven here, so each
//! request's status and data are checked one by one. Covers writes in the capsule and after
//! R2Ts, requests split over MDTS, digests, two queues at once, a raw client's malformed PDUs,
//! and the target going away mid-I/O under each set of reconnect options.

use crate::bdev::nvme::{attach, AttachParams, NvmeBdev};
use crate::bdev::{
    Bdev, BdevChannel, BdevRegistry, Completion, IoOrigin, IoRequest, IoStatus, IoType,
};
use crate::nvmf::target::NvmfTarget;
use crate::nvmf::testing::{self, Dir};
use crate::reactor::{Engine, EngineConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidepool_bindings::dma::DmaPool;

const SUB: &str = "nqn.2016-06.io.tidepool:initiator-test";
const BS: u32 = 512;
const BLOCKS: u64 = 16384;

/// A target on its own reactor thread, serving one malloc bdev that outlives it.
struct Target {
    addr: SocketAddr,
    nvmf: Option<NvmfTarget>,
}

impl Target {
    fn start(registry: &Arc<BdevRegistry>, at: &str) -> Target {
        Target::serving(registry, "M0", at)
    }

    fn serving(registry: &Arc<BdevRegistry>, bdev: &str, at: &str) -> Target {
        let bdev = registry.lookup(bdev).expect("the served bdev").0;
        let mut config = EngineConfig::new(vec![0]);
        config.pin = false;
        let engine = Arc::new(Engine::start(config, Arc::clone(registry)).unwrap());
        let view = testing::view(SUB, "TP-INIT", bdev, BLOCKS, BS, &[]);
        let limits = testing::limits();
        let nvmf = NvmfTarget::new(engine, Arc::new(Dir(view)), limits).unwrap();
        // The port may take a moment to come free after a stop.
        let until = Instant::now() + Duration::from_secs(5);
        let addr = loop {
            match nvmf.listen(at) {
                Ok(a) => break a,
                Err(e) if Instant::now() > until => panic!("listen {at}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Target {
            addr,
            nvmf: Some(nvmf),
        }
    }

    /// Ends the target as a killed process would: listener and connections closed.
    fn stop(&mut self) {
        drop(self.nvmf.take());
    }
}

/// A TCP relay in front of the target that can be cut like a dead host: every connection
/// through it reset at once, and its port refusing connections until it is put back.
struct Relay {
    addr: SocketAddr,
    to: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    streams: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(at: &str, to: SocketAddr) -> std::io::Result<Relay> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(at)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (stop2, streams2) = (Arc::clone(&stop), Arc::clone(&streams));
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                for (from, into) in [(&client, &server), (&server, &client)] {
                    let (mut r, mut w) = (from.try_clone().unwrap(), into.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut r, &mut w);
                        let _ = w.shutdown(std::net::Shutdown::Both);
                    });
                }
                streams2.lock().unwrap().extend([client, server]);
            }
        });
        Ok(Relay {
            addr,
            to,
            stop,
            streams,
            accept: Some(accept),
        })
    }

    /// Cuts every connection and closes the port.
    fn cut(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    fn restore(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match Relay::start(&self.addr.to_string(), self.to) {
                Ok(r) => return *self = r,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("the relay's port did not come free: {e}"),
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn registry() -> Arc<BdevRegistry> {
    testing::malloc_registry("M0", BLOCKS, BS).0
}

fn params(addr: SocketAddr) -> AttachParams {
    serde_json::from_value(serde_json::json!({
        "name": "R", "trtype": "tcp", "traddr": addr.ip().to_string(),
        "trsvcid": addr.port().to_string(), "subnqn": SUB,
    }))
    .unwrap()
}

/// One channel, driven here.
struct Host {
    bdev: Arc<NvmeBdev>,
    ch: Box<dyn BdevChannel>,
    pool: DmaPool,
    tag: u64,
}

impl Host {
    fn attach(p: &AttachParams) -> Host {
        let mut bdevs = attach(p).unwrap_or_else(|e| panic!("attach: {e}"));
        assert_eq!(bdevs.len(), 1, "one namespace, one bdev");
        let bdev = bdevs.remove(0);
        assert_eq!(bdev.info().name, "Rn1");
        assert_eq!(
            (bdev.info().block_size, bdev.info().num_blocks),
            (BS, BLOCKS)
        );
        Host::channel_on(Arc::new(bdev))
    }

    /// Another channel (another reactor's) on the same bdev.
    fn channel_on(bdev: Arc<NvmeBdev>) -> Host {
        let ch = bdev.open_channel().unwrap();
        Host {
            bdev,
            ch,
            pool: DmaPool::new(1 << 20, 32).unwrap(),
            tag: 0,
        }
    }

    fn request(
        &mut self,
        io_type: IoType,
        lba: u64,
        blocks: u32,
        data: Option<&[u8]>,
    ) -> IoRequest {
        let buf = io_type.has_data().then(|| {
            let mut b = self.pool.take().expect("a free buffer");
            b.set_len(blocks as usize * BS as usize);
            if let Some(d) = data {
                b.as_mut_slice().copy_from_slice(d);
            }
            b
        });
        self.tag += 1;
        let origin = IoOrigin {
            reactor: 0,
            task: 0,
            tag: self.tag,
        };
        IoRequest::new(io_type, lba, blocks, buf, origin)
    }

    fn submit(&mut self, io: IoRequest) {
        self.ch
            .submit(io, crate::time::now())
            .unwrap_or_else(|_| panic!("the channel refused a request"));
    }

    /// Polls until `n` requests complete or `within` passes.
    fn complete(&mut self, n: usize, within: Duration) -> Vec<Completion> {
        let until = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < until {
            self.ch.poll(crate::time::now(), 64, &mut out);
        }
        out
    }

    fn one(&mut self, io: IoRequest) -> Completion {
        self.submit(io);
        let mut c = self.complete(1, Duration::from_secs(10));
        assert_eq!(c.len(), 1, "the request did not complete");
        c.remove(0)
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> IoStatus {
        let io = self.request(
            IoType::Write,
            lba,
            (data.len() / BS as usize) as u32,
            Some(data),
        );
        self.one(io).status
    }

    fn read(&mut self, lba: u64, blocks: u32) -> Vec<u8> {
        let io = self.request(IoType::Read, lba, blocks, None);
        let c = self.one(io);
        assert_eq!(c.status, IoStatus::Success, "read {lba}+{blocks}");
        c.io.buf.expect("the read's buffer").as_slice().to_vec()
    }

    fn report(&self) -> serde_json::Value {
        self.bdev.controller().report()
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn verify_round_trips(digests: bool) {
    let registry = registry();
    let target = Target::start(&registry, "127.0.0.1:0");
    let mut p = params(target.addr);
    p.hdgst = digests;
    p.ddgst = digests;
    let mut h = Host::attach(&p);
    let report = h.report();
    assert_eq!(report["ctrlrs"][0]["digests"]["data"], digests);
    // In the capsule (up to 8 KiB), after one R2T, after R2Ts over several H2CData PDUs (the
    // target's MAXH2CDATA is 128 KiB), and split over MDTS (128 KiB) into 8 commands.
    let sizes = [512usize, 4096, 8192, 12288, 128 << 10, 200 << 10, 1 << 20];
    let mut lba = 0u64;
    let mut written = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern(i as u64 + 1, size);
        assert_eq!(
            h.write(lba, &data),
            IoStatus::Success,
            "write of {size} bytes"
        );
        written.push((lba, data));
        lba += (size / BS as usize) as u64 + 3;
    }
    for (lba, data) in &written {
        let back = h.read(*lba, (data.len() / BS as usize) as u32);
        assert!(
            back == *data,
            "{} bytes at {lba} read back different",
            data.len()
        );
    }
    // Write Zeroes and Deallocate read back zeroes; a flush succeeds.
    let (lba, data) = &written[4];
    let io = h.request(IoType::WriteZeroes, *lba, 16, None);
    assert_eq!(h.one(io).status, IoStatus::Success);
    let io = h.request(IoType::Unmap, lba + 16, 16, None);
    assert_eq!(h.one(io).status, IoStatus::Success);
    let back = h.read(*lba, 64);
    assert!(back[..16 << 10].iter().all(|&b| b == 0), "zeroed blocks");
    assert_eq!(&back[16 << 10..], &data[16 << 10..32 << 10]);
    let io = h.request(IoType::Flush, 0, 0, None);
    assert_eq!(h.one(io).status, IoStatus::Success);
    // Out of range: the target's status comes back as it is (LBA Out of Range).
    let io = h.request(IoType::Read, BLOCKS - 4, 8, None);
    assert_eq!(h.one(io).status, IoStatus::Nvme { sct: 0, sc: 0x80 });
}

#[test]
fn writes_in_the_capsule_after_r2t_and_split_over_mdts_read_back_without_digests() {
    verify_round_trips(false);
}

#[test]
fn writes_in_the_capsule_after_r2t_and_split_over_mdts_read_back_with_digests() {
    verify_round_trips(true);
}

/// Two channels on one controller (two reactors' worth): two I/O queues on two connections,
/// both in flight at once; a raw client's garbage ends only its own connection.
#[test]
fn two_queue_pairs_serve_at_once_and_a_raw_client_s_garbage_harms_neither() {
    let registry = registry();
    let target = Target::start(&registry, "127.0.0.1:0");
    let mut a = Host::attach(&params(target.addr));
    let mut b = Host::channel_on(Arc::clone(&a.bdev));
    // Each queue gets 32 writes in flight before either is polled.
    for round in 0..3u64 {
        for (i, h) in [&mut a, &mut b].into_iter().enumerate() {
            for k in 0..32u64 {
                let lba = (i as u64 * 4096) + k * 16;
                let data = pattern(round * 1000 + i as u64 * 100 + k, 8192);
                let io = h.request(IoType::Write, lba, 16, Some(&data));
                h.submit(io);
            }
        }
        for h in [&mut a, &mut b] {
            let done = h.complete(32, Duration::from_secs(10));
            assert_eq!(done.len(), 32);
            assert!(done.iter().all(|c| c.status == IoStatus::Success));
        }
        if round == 1 {
            let mut raw = std::net::TcpStream::connect(target.addr).unwrap();
            raw.write_all(&[0xee; 200]).unwrap();
        }
    }
    for (i, h) in [&mut a, &mut b].into_iter().enumerate() {
        for k in [0u64, 31] {
            let lba = (i as u64 * 4096) + k * 16;
            let want = pattern(2000 + i as u64 * 100 + k, 8192);
            assert!(h.read(lba, 16) == want, "queue {i} block {lba}");
        }
    }
    let qpairs = a.report()["ctrlrs"][0]["io_qpairs"].clone();
    let qids: Vec<u64> = qpairs
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["qid"].as_u64().unwrap())
        .collect();
    assert_eq!(qids, [1, 2], "one controller, two I/O queues: {qpairs}");
    assert_eq!(
        target.nvmf.as_ref().unwrap().connections(),
        3,
        "the admin queue and two I/O queues; the raw client's is gone"
    );
}

fn reconnecting(addr: SocketAddr, loss: i64, delay: u64, fast: u64) -> AttachParams {
    let mut p = params(addr);
    p.ctrlr_loss_timeout_sec = loss;
    p.reconnect_delay_sec = delay;
    p.fast_io_fail_timeout_sec = fast;
    p
}

/// Requests in flight when the target's host drops off the network wait for it; it comes
/// back, the host reconnects and they complete, their data whole. The target serves a delay
/// bdev (100 ms) over the malloc one, so that they are in flight at the target when the
/// relay in front of it cuts every connection and refuses new ones.
#[test]
fn requests_in_flight_when_the_target_goes_complete_after_it_returns() {
    let registry = registry();
    let delay = serde_json::json!({"base_bdev_name": "M0", "name": "D0",
        "avg_read_latency": 100_000, "p99_read_latency": 100_000,
        "avg_write_latency": 100_000, "p99_write_latency": 100_000});
    crate::config::create_bdev(&registry, "bdev_delay_create", delay).unwrap();
    let target = Target::serving(&registry, "D0", "127.0.0.1:0");
    let mut relay = Relay::start("127.0.0.1:0", target.addr).unwrap();
    let mut h = Host::attach(&reconnecting(relay.addr, 30, 1, 0));
    assert_eq!(h.write(0, &pattern(7, 4096)), IoStatus::Success);
    let writes: Vec<Vec<u8>> = (0..24).map(|k| pattern(100 + k, 64 << 10)).collect();
    for (k, data) in writes.iter().enumerate() {
        let io = h.request(IoType::Write, 256 + k as u64 * 128, 128, Some(data));
        h.submit(io);
    }
    // They go out; the connections are cut while the target's bdev holds them.
    let early = h.complete(24, Duration::from_millis(30));
    relay.cut();
    let during = h.complete(24, Duration::from_millis(1500));
    assert!(
        during.iter().all(|c| c.status == IoStatus::Success),
        "nothing fails while the controller reconnects"
    );
    let waiting = 24 - early.len() - during.len();
    assert_eq!(waiting, 24, "a write finished while its connection was cut");
    assert_eq!(h.report()["ctrlrs"][0]["state"], "resetting");
    relay.restore();
    let after = h.complete(waiting, Duration::from_secs(10));
    assert_eq!(
        after.len(),
        waiting,
        "the waiting writes completed after the return"
    );
    assert!(after.iter().all(|c| c.status == IoStatus::Success));
    for (k, data) in writes.iter().enumerate() {
        assert!(h.read(256 + k as u64 * 128, 128) == *data, "write {k}");
    }
    let r = h.report();
    assert_eq!(r["ctrlrs"][0]["reconnects"], 1);
    assert_eq!(r["ctrlrs"][0]["state"], "enabled");
}

/// Past `fast_io_fail_timeout_sec` waiting requests fail with EIO; past
/// `ctrlr_loss_timeout_sec` the controller is lost and fails everything with ENODEV, even once
/// the target is back.
#[test]
fn requests_fail_after_fast_io_fail_and_everything_fails_once_the_controller_is_lost() {
    let registry = registry();
    let mut target = Target::start(&registry, "127.0.0.1:0");
    let addr = target.addr;
    let mut h = Host::attach(&reconnecting(addr, 3, 1, 1));
    assert_eq!(h.write(0, &pattern(1, 4096)), IoStatus::Success);
    target.stop();
    let started = Instant::now();
    let io = h.request(IoType::Read, 0, 8, None);
    h.submit(io);
    let c = h.complete(1, Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(c.len(), 1, "the read never ended");
    assert_eq!(c[0].status, IoStatus::Failed { errno: libc::EIO });
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "failed after {took:?}, not at fast_io_fail_timeout_sec (1 s)"
    );
    let until = Instant::now() + Duration::from_secs(10);
    while h.report()["ctrlrs"][0]["state"] != "failed" {
        assert!(Instant::now() < until, "never declared lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "lost before 3 s"
    );
    let _back = Target::start(&registry, &addr.to_string());
    std::thread::sleep(Duration::from_millis(1500));
    let io = h.request(IoType::Read, 0, 8, None);
    assert_eq!(
        h.one(io).status,
        IoStatus::Failed {
            errno: libc::ENODEV
        }
    );
}

/// SPDK's default (`ctrlr_loss_timeout_sec` 0): one try to reconnect, then lost.
#[test]
fn without_reconnect_options_a_dead_target_fails_requests_at_once() {
    let registry = registry();
    let mut target = Target::start(&registry, "127.0.0.1:0");
    let mut h = Host::attach(&params(target.addr));
    assert_eq!(h.write(0, &pattern(1, 4096)), IoStatus::Success);
    target.stop();
    let started = Instant::now();
    let io = h.request(IoType::Write, 0, 8, Some(&pattern(2, 4096)));
    let c = h.one(io);
    assert_eq!(
        c.status,
        IoStatus::Failed {
            errno: libc::ENODEV
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A detach while the controller reconnects for ever (`ctrlr_loss_timeout_sec` -1) with a
/// request waiting: the request fails with ENODEV at once, so the channel drains and closes.
#[test]
fn a_detach_fails_what_waits_even_when_reconnects_go_on_for_ever() {
    let registry = registry();
    let target = Target::start(&registry, "127.0.0.1:0");
    let mut relay = Relay::start("127.0.0.1:0", target.addr).unwrap();
    let mut h = Host::attach(&reconnecting(relay.addr, -1, 1, 0));
    assert_eq!(h.write(0, &pattern(1, 4096)), IoStatus::Success);
    relay.cut();
    let io = h.request(IoType::Read, 0, 8, None);
    h.submit(io);
    assert!(
        h.complete(1, Duration::from_millis(1500)).is_empty(),
        "the read waits while the controller reconnects"
    );
    // The registry's bdev goes (bdev_nvme_detach_controller): only the channel is left.
    let Host { bdev, mut ch, .. } = h;
    drop(bdev);
    let until = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    while out.is_empty() && Instant::now() < until {
        ch.poll(crate::time::now(), 8, &mut out);
    }
    assert_eq!(out.len(), 1, "the waiting read never ended");
    assert_eq!(
        out[0].status,
        IoStatus::Failed {
            errno: libc::ENODEV
        }
    );
    assert_eq!(ch.inflight(), 0, "the channel can close");
}

#[test]
fn bad_attach_parameters_are_refused_and_a_closed_port_fails_the_attach() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let base = params(addr);
    type Change = Box<dyn Fn(&mut AttachParams)>;
    let cases: Vec<(&str, Change)> = vec![
        ("trtype", Box::new(|p| p.trtype = "rdma".into())),
        ("traddr", Box::new(|p| p.traddr = "not-an-ip".into())),
        ("trsvcid", Box::new(|p| p.trsvcid = None)),
        ("trsvcid", Box::new(|p| p.trsvcid = Some("70000".into()))),
        ("adrfam", Box::new(|p| p.adrfam = Some("IPv6".into()))),
        ("subnqn", Box::new(|p| p.subnqn = None)),
        ("subnqn", Box::new(|p| p.subnqn = Some("not an nqn".into()))),
        (
            "ctrlr_loss_timeout_sec",
            Box::new(|p| p.ctrlr_loss_timeout_sec = -2),
        ),
        (
            "reconnect_delay_sec",
            Box::new(|p| p.ctrlr_loss_timeout_sec = 5),
        ),
        (
            "reconnect_delay_sec",
            Box::new(|p| p.reconnect_delay_sec = 1),
        ),
        (
            "fast_io_fail_timeout_sec",
            Box::new(|p| {
                p.ctrlr_loss_timeout_sec = 5;
                p.reconnect_delay_sec = 2;
                p.fast_io_fail_timeout_sec = 6;
            }),
        ),
        (
            "keep_alive_timeout_ms",
            Box::new(|p| p.keep_alive_timeout_ms = 10),
        ),
    ];
    for (param, change) in cases {
        let mut p = base.clone();
        change(&mut p);
        let e = p.check().expect_err(param).to_string();
        assert!(e.contains(param), "{param}: {e}");
    }
    let mut pcie = base.clone();
    pcie.trtype = "PCIe".into();
    pcie.traddr = "0000:00:04.0".into();
    let e = pcie.check().unwrap_err().to_string();
    assert!(e.contains("TCP only"), "{e}");
    // Nothing listens on the discard port: the attach fails at once, with the address.
    let e = attach(&base)
        .err()
        .expect("an attach to a closed port")
        .to_string();
    assert!(e.contains("127.0.0.1:9"), "{e}");
}
