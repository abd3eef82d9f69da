//! The target's queue pairs over loopback TCP, on a real reactor and a malloc bdev, driven by
//! a host written here against the PDU codec: ICReq, admin and I/O Connects, Property Set,
//! Identify, Number of Queues, writes in the capsule and after an R2T, reads, deallocate,
//! bad commands, and a malformed PDU that ends only its own connection.

use super::*;
use crate::nvmf::fabrics::{fctype, property, CNTLID_DYNAMIC, OPCODE};
use crate::nvmf::pdu::Digests;
use crate::nvmf::testing::{self, Dir};
use crate::reactor::ReactorConfig;
use std::net::TcpListener;
use std::thread::JoinHandle;
use tidepool_bindings::nvme::spec::{admin, cns, feature};

const SUB: &str = "nqn.2016-06.io.tidepool:test";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
const BS: u32 = 512;
const BLOCKS: u64 = 8192;

/// A host's end of one connection.
struct Host {
    s: TcpStream,
    framing: Framing,
    next_cid: u16,
}

impl Host {
    fn connect(addr: std::net::SocketAddr, digests: Digests) -> Host {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut out = Vec::new();
        let req = InitConnection {
            pfv: 0,
            data_alignment: 0,
            digests,
            limit: 0,
        };
        pdu::encode_ic_req(&mut out, &req);
        s.write_all(&out).unwrap();
        let mut h = Host {
            s,
            framing: Framing::PLAIN,
            next_cid: 1,
        };
        match h.read_pdu(Digests::default()) {
            (Pdu::IcResp(resp), _) => {
                assert_eq!(resp.digests, digests, "the digests asked for");
                assert_eq!(resp.limit, MAX_H2C_DATA);
            }
            (p, _) => panic!("{p:?}"),
        }
        h.framing = Framing {
            digests,
            pdo_align: 4,
        };
        h
    }

    fn read_pdu(&mut self, digests: Digests) -> (Pdu, Vec<u8>) {
        let mut buf = vec![0u8; 8];
        self.s.read_exact(&mut buf).unwrap();
        let plen = u32::from_le_bytes(buf[4..8].try_into().unwrap()) as usize;
        buf.resize(plen, 0);
        self.s.read_exact(&mut buf[8..]).unwrap();
        match pdu::decode(&buf, digests, u32::MAX).unwrap() {
            Decoded::Pdu(p, _) => (p, buf),
            Decoded::Incomplete(n) => panic!("incomplete: {n}"),
        }
    }

    fn pdu(&mut self) -> (Pdu, Vec<u8>) {
        let d = self.framing.digests;
        self.read_pdu(d)
    }

    fn send_capsule(&mut self, mut sqe: SubmissionEntry, data: &[u8]) -> u16 {
        let cid = self.next_cid;
        self.next_cid += 1;
        sqe.set_cid(cid);
        let mut out = Vec::new();
        pdu::encode_capsule_cmd(&mut out, &sqe, data, self.framing);
        self.s.write_all(&out).unwrap();
        cid
    }

    /// The response to command `cid`, with the data of the C2HData before it.
    fn response(&mut self, cid: u16) -> (CompletionEntry, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            match self.pdu() {
                (
                    Pdu::C2HData {
                        transfer, data: r, ..
                    },
                    buf,
                ) => {
                    assert_eq!(transfer.cccid, cid);
                    assert_eq!(transfer.offset as usize, data.len());
                    data.extend_from_slice(&buf[r]);
                }
                (Pdu::CapsuleResp(cqe), _) => {
                    assert_eq!(cqe.cid, cid);
                    return (cqe, data);
                }
                (p, _) => panic!("{p:?}"),
            }
        }
    }

    fn command(&mut self, sqe: SubmissionEntry, data: &[u8]) -> (CompletionEntry, Vec<u8>) {
        let cid = self.send_capsule(sqe, data);
        self.response(cid)
    }

    fn connect_queue(&mut self, qid: u16, cntlid: u16) -> CompletionEntry {
        let mut sqe = SubmissionEntry::new(OPCODE, fctype::CONNECT as u32);
        sqe.cdw10 = (qid as u32) << 16;
        sqe.cdw11 = 127;
        let data = ConnectData {
            host_id: [9; 16],
            cntlid,
            subsystem_nqn: SUB.into(),
            host_nqn: HOST.into(),
        };
        self.command(sqe, &data.to_bytes()).0
    }

    fn rw(opcode: u8, lba: u64, blocks: u32, sgl_len: u32) -> SubmissionEntry {
        let mut sqe = SubmissionEntry::new(opcode, 1);
        sqe.cdw10 = lba as u32;
        sqe.cdw11 = (lba >> 32) as u32;
        sqe.cdw12 = blocks - 1;
        sqe.prp2 = sgl_len as u64;
        sqe
    }

    /// A write whose data follows an R2T.
    fn write_after_r2t(&mut self, lba: u64, data: &[u8]) -> CompletionEntry {
        let blocks = data.len() as u32 / BS;
        let cid = self.send_capsule(Host::rw(nvm::WRITE, lba, blocks, data.len() as u32), &[]);
        let (Pdu::R2T(t), _) = self.pdu() else {
            panic!("no R2T")
        };
        assert_eq!((t.cccid, t.offset, t.length), (cid, 0, data.len() as u32));
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            // Two PDUs, to cross one boundary.
            let n = (data.len() / 2).max(1).min(data.len() - at);
            let piece = Transfer {
                cccid: cid,
                ttag: t.ttag,
                offset: at as u32,
                length: n as u32,
            };
            let last = at + n == data.len();
            pdu::encode_h2c_data(&mut out, &piece, &data[at..at + n], last, self.framing);
            at += n;
        }
        self.s.write_all(&out).unwrap();
        self.response(cid).0
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
}

/// Runs `host` against a target on one reactor until it returns.
fn with_target(host: impl FnOnce(std::net::SocketAddr) + Send + 'static) {
    let (registry, bdev) = testing::malloc_registry("M0", BLOCKS, BS);
    let mut rs = crate::testkit::reactors(1, &registry, ReactorConfig::default());
    let view = testing::view(SUB, "TP-TEST", bdev, BLOCKS, BS, &[HOST]);
    let controllers = Arc::new(Controllers::new(testing::limits()));
    let directory: Arc<dyn Directory + Send + Sync> = Arc::new(Dir(view));
    let waker = SocketWaker::start().unwrap();
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let client: JoinHandle<()> = std::thread::spawn(move || host(addr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !client.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host did not finish"
        );
        while let Ok((s, peer)) = listener.accept() {
            let conn = TargetConnection::new(
                s,
                peer.to_string(),
                Arc::clone(&controllers),
                Arc::clone(&directory),
                Arc::clone(&waker),
                Arc::clone(&live),
            )
            .unwrap();
            rs[0].spawn(Box::new(conn));
        }
        rs[0].poll(crate::time::now());
    }
    // The host's failures are its panics.
    client.join().unwrap();
    waker.stop();
}

/// Admin queue up (Connect, CC.EN, Number of Queues 2); returns the controller id.
fn admin_up(h: &mut Host) -> u16 {
    let cqe = h.connect_queue(0, CNTLID_DYNAMIC);
    assert!(cqe.status().is_success(), "{:?}", cqe.status());
    let cntlid = cqe.dw0 as u16;
    let mut cc = SubmissionEntry::new(OPCODE, fctype::PROPERTY_SET as u32);
    cc.cdw11 = property::CC;
    cc.cdw12 = 0x46_0001;
    assert!(h.command(cc, &[]).0.status().is_success());
    let mut nq = SubmissionEntry::new(admin::SET_FEATURES, 0);
    nq.cdw10 = feature::NUMBER_OF_QUEUES;
    nq.cdw11 = 1 | 1 << 16;
    let (cqe, _) = h.command(nq, &[]);
    assert_eq!(cqe.dw0, 1 | 1 << 16, "two I/O queues granted");
    cntlid
}

fn io_round_trip(digests: Digests) {
    with_target(move |addr| {
        let mut a = Host::connect(addr, digests);
        let cntlid = admin_up(&mut a);
        // Identify the controller: its serial and the subsystem's NQN.
        let mut id = SubmissionEntry::new(admin::IDENTIFY, 0);
        id.cdw10 = cns::CONTROLLER;
        id.prp2 = 4096;
        let (cqe, data) = a.command(id, &[]);
        assert!(cqe.status().is_success());
        assert_eq!(data.len(), 4096);
        assert_eq!(&data[4..11], b"TP-TEST");
        assert_eq!(&data[768..768 + SUB.len()], SUB.as_bytes());

        let mut q = Host::connect(addr, digests);
        let cqe = q.connect_queue(1, cntlid);
        assert!(cqe.status().is_success(), "{:?}", cqe.status());
        // A small write in the capsule, a large one after an R2T, both read back.
        let small = pattern(1, 4096);
        let cqe = q.command(Host::rw(nvm::WRITE, 8, 8, 4096), &small).0;
        assert!(cqe.status().is_success(), "{:?}", cqe.status());
        let large = pattern(2, 64 << 10);
        assert!(q.write_after_r2t(100, &large).status().is_success());
        let (cqe, back) = q.command(Host::rw(nvm::READ, 8, 8, 4096), &[]);
        assert!(cqe.status().is_success());
        assert_eq!(back, small);
        let (_, back) = q.command(Host::rw(nvm::READ, 100, 128, 64 << 10), &[]);
        assert_eq!(back, large);
        // Deallocate part of it: those blocks read zeroes, the rest is kept.
        let mut range = vec![0u8; 16];
        range[4..8].copy_from_slice(&16u32.to_le_bytes());
        range[8..16].copy_from_slice(&100u64.to_le_bytes());
        let mut dsm = SubmissionEntry::new(nvm::DATASET_MANAGEMENT, 1);
        dsm.cdw11 = 1 << 2;
        dsm.prp2 = 16;
        assert!(q.command(dsm, &range).0.status().is_success());
        let (_, back) = q.command(Host::rw(nvm::READ, 100, 32, 16 << 10), &[]);
        assert!(back[..8192].iter().all(|&b| b == 0));
        assert_eq!(&back[8192..], &large[8192..16 << 10]);
        let flush = SubmissionEntry::new(nvm::FLUSH, 1);
        assert!(q.command(flush, &[]).0.status().is_success());
    });
}

#[test]
fn a_host_connects_identifies_writes_and_reads_back_without_digests() {
    io_round_trip(Digests::default());
}

#[test]
fn a_host_connects_identifies_writes_and_reads_back_with_both_digests() {
    io_round_trip(Digests {
        header: true,
        data: true,
    });
}

#[test]
fn bad_commands_get_their_status_and_a_malformed_pdu_ends_only_its_connection() {
    with_target(|addr| {
        let mut a = Host::connect(addr, Digests::default());
        let cntlid = admin_up(&mut a);
        let mut q = Host::connect(addr, Digests::default());
        assert!(q.connect_queue(1, cntlid).status().is_success());
        let status = |q: &mut Host, sqe, data: &[u8]| q.command(sqe, data).0.status();
        // Past the end, an unknown namespace, an unknown opcode, above MDTS, and a write
        // whose in-capsule data is not its length.
        let past = Host::rw(nvm::READ, BLOCKS - 4, 8, 4096);
        assert_eq!(status(&mut q, past, &[]), Codes::LBA_OUT_OF_RANGE);
        let mut other_ns = Host::rw(nvm::READ, 0, 8, 4096);
        other_ns.nsid = 2;
        assert_eq!(status(&mut q, other_ns, &[]), Codes::INVALID_NAMESPACE);
        assert_eq!(
            status(&mut q, SubmissionEntry::new(0x7e, 1), &[]),
            Codes::INVALID_OPCODE
        );
        let huge = Host::rw(nvm::READ, 0, 512, 256 << 10);
        assert_eq!(status(&mut q, huge, &[]), Codes::INVALID_FIELD);
        let short = Host::rw(nvm::WRITE, 0, 8, 4096);
        assert_eq!(
            status(&mut q, short, &[1; 512]),
            Codes::SGL_INVALID_DESCRIPTOR
        );
        // A second I/O Connect for queue 1 is refused; queue 2 is fine.
        let mut q2 = Host::connect(addr, Digests::default());
        let refused = q2.connect_queue(1, cntlid);
        assert_eq!(refused.status(), Codes::CONNECT_INVALID_PARAMETERS);
        // An H2CData nobody asked for: C2HTermReq, and that connection ends.
        let mut bad = Host::connect(addr, Digests::default());
        assert!(bad.connect_queue(2, cntlid).status().is_success());
        let mut out = Vec::new();
        let stray = Transfer {
            cccid: 1,
            ttag: 9,
            offset: 0,
            length: 512,
        };
        pdu::encode_h2c_data(&mut out, &stray, &[0; 512], true, Framing::PLAIN);
        bad.s.write_all(&out).unwrap();
        match bad.pdu() {
            (Pdu::TermReq { from_host, fes, .. }, _) => {
                assert!(!from_host);
                assert_eq!(fes, Fes::SequenceError as u16);
            }
            (p, _) => panic!("{p:?}"),
        }
        let mut rest = Vec::new();
        assert_eq!(bad.s.read_to_end(&mut rest).unwrap_or(0), 0, "closed");
        // The others go on.
        let data = pattern(7, 4096);
        assert!(status(&mut q, Host::rw(nvm::WRITE, 0, 8, 4096), &data).is_success());
        let (_, back) = q.command(Host::rw(nvm::READ, 0, 8, 4096), &[]);
        assert_eq!(back, data);
        let mut ka = SubmissionEntry::new(tidepool_bindings::nvme::spec::admin::KEEP_ALIVE, 0);
        ka.prp2 = 0;
        assert!(a.command(ka, &[]).0.status().is_success());
    });
}

/// The listener places connections on the engine's reactors; listening twice on one address
/// is counted, and the port closes with its last user.
#[test]
fn the_target_listens_places_connections_and_closes_the_port_with_its_last_user() {
    use crate::nvmf::target::{ListenError, NvmfTarget};
    use crate::reactor::{Engine, EngineConfig};
    let (registry, bdev) = testing::malloc_registry("M1", BLOCKS, BS);
    let mut config = EngineConfig::new(vec![0, 1]);
    config.pin = false;
    let engine = Arc::new(Engine::start(config, Arc::clone(&registry)).unwrap());
    let view = testing::view(SUB, "TP-TARGET", bdev, BLOCKS, BS, &[]);
    let limits = testing::limits();
    let target = NvmfTarget::new(Arc::clone(&engine), Arc::new(Dir(view)), limits).unwrap();
    assert!(matches!(
        target.listen("not an address"),
        Err(ListenError::BadAddress(_))
    ));
    let addr = target.listen("127.0.0.1:0").unwrap();
    assert_eq!(target.listen(&addr.to_string()), Ok(addr), "a second user");
    let taken = target.listen(&addr.to_string().replace("127.0.0.1", "0.0.0.0"));
    assert!(matches!(taken, Err(ListenError::Bind { .. })), "{taken:?}");

    let mut a = Host::connect(addr, Digests::default());
    let cntlid = admin_up(&mut a);
    // Two I/O queues, placed round robin over the two reactors, both serving.
    let mut queues: Vec<Host> = (1..=2)
        .map(|qid| {
            let mut q = Host::connect(addr, Digests::default());
            assert!(q.connect_queue(qid, cntlid).status().is_success());
            q
        })
        .collect();
    for (i, q) in queues.iter_mut().enumerate() {
        let data = pattern(i as u8 + 3, 8192);
        let lba = i as u64 * 64;
        assert!(q.write_after_r2t(lba, &data).status().is_success());
        let (_, back) = q.command(Host::rw(nvm::READ, lba, 16, 8192), &[]);
        assert_eq!(back, data);
    }
    assert_eq!(target.connections(), 3);
    assert!(target.stop_listening(addr));
    assert!(
        Host::connect_raw(addr).is_ok(),
        "still listening for its other user"
    );
    assert!(target.stop_listening(addr));
    assert!(Host::connect_raw(addr).is_err(), "the port is closed");
    assert!(!target.stop_listening(addr));
    // Connections already made go on.
    let (cqe, _) = queues[0].command(Host::rw(nvm::READ, 0, 16, 8192), &[]);
    assert!(cqe.status().is_success());
    drop(queues);
    drop(a);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while target.connections() > 0 {
        assert!(std::time::Instant::now() < until, "connections did not end");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        target.controllers().count(),
        0,
        "the controller went with its admin queue"
    );
}

impl Host {
    fn connect_raw(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
        TcpStream::connect(addr)
    }
}

/// An admin queue whose host stops sending for its KATO ends, and its I/O queues with it;
/// one that keeps sending Keep Alive stays.
#[test]
fn a_controller_whose_host_goes_quiet_past_its_keep_alive_timeout_ends_with_its_queues() {
    with_target(|addr| {
        let mut a = Host::connect(addr, Digests::default());
        let cntlid = admin_up(&mut a);
        let mut q = Host::connect(addr, Digests::default());
        assert!(q.connect_queue(1, cntlid).status().is_success());
        // Keep Alive Timer 300 ms; Keep Alive every 50 ms for a second: still up.
        let mut kato = SubmissionEntry::new(admin::SET_FEATURES, 0);
        kato.cdw10 = crate::nvmf::admin::features::KEEP_ALIVE_TIMER;
        kato.cdw11 = 300;
        assert!(a.command(kato, &[]).0.status().is_success());
        let ka = SubmissionEntry::new(tidepool_bindings::nvme::spec::admin::KEEP_ALIVE, 0);
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(a.command(ka, &[]).0.status().is_success());
        }
        assert!(q
            .command(Host::rw(nvm::READ, 0, 8, 4096), &[])
            .0
            .status()
            .is_success());
        // Quiet: both connections end.
        let started = std::time::Instant::now();
        for s in [&mut a.s, &mut q.s] {
            let mut rest = Vec::new();
            assert!(
                s.read_to_end(&mut rest).is_ok(),
                "the connection did not end"
            );
        }
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(250),
            "ended after {took:?}, before its KATO"
        );
    });
}

/// Many large reads sent at once to a host that does not read for a while: the socket fills,
/// so the target's writes of read data (straight from its buffers, with `writev`) stop part
/// way and go on later, and every payload and data digest must still arrive whole and in
/// order. More reads than the connection has buffers, too: those wait for buffers that come
/// back only once their data is sent.
#[test]
fn read_data_sent_from_its_buffers_survives_a_full_socket() {
    let digests = Digests {
        header: true,
        data: true,
    };
    with_target(move |addr| {
        let mut a = Host::connect(addr, digests);
        let cntlid = admin_up(&mut a);
        let mut q = Host::connect(addr, digests);
        assert!(q.connect_queue(1, cntlid).status().is_success());
        const REGION_BLOCKS: u32 = 256; // 128 KiB
        let regions = (BLOCKS / REGION_BLOCKS as u64) as usize;
        let bytes = (REGION_BLOCKS * BS) as usize;
        for r in 0..regions {
            let data = pattern(r as u8 + 40, bytes);
            let lba = r as u64 * REGION_BLOCKS as u64;
            assert!(q.write_after_r2t(lba, &data).status().is_success());
        }
        let reads = regions + DATA_BUFFERS + 16;
        let mut region_of = std::collections::HashMap::new();
        for i in 0..reads {
            let r = (i * 7) % regions;
            let lba = r as u64 * REGION_BLOCKS as u64;
            let cid = q.send_capsule(Host::rw(nvm::READ, lba, REGION_BLOCKS, bytes as u32), &[]);
            region_of.insert(cid, r);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut got: std::collections::HashMap<u16, Vec<u8>> = std::collections::HashMap::new();
        let mut done = 0;
        while done < reads {
            match q.pdu() {
                (Pdu::C2HData { transfer, data, .. }, buf) => {
                    let d = got.entry(transfer.cccid).or_default();
                    assert_eq!(transfer.offset as usize, d.len());
                    d.extend_from_slice(&buf[data]);
                }
                (Pdu::CapsuleResp(cqe), _) => {
                    assert!(cqe.status().is_success(), "{:?}", cqe.status());
                    let r = region_of[&cqe.cid];
                    let want = pattern(r as u8 + 40, bytes);
                    assert!(
                        got.remove(&cqe.cid).is_some_and(|d| d == want),
                        "read {} of region {r} came back different",
                        cqe.cid
                    );
                    done += 1;
                }
                (p, _) => panic!("{p:?}"),
            }
        }
    });
}
