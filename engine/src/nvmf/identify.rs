//! The data structures a target's admin queue returns: Identify Controller, Identify
//! Namespace, the active namespace list, the namespace identification descriptors, and the
//! discovery log page (NVMe base specification 1.4, 5.15; NVMe over Fabrics 1.1, 5.3).
//!
//! **Contract.** Each builder returns the structure's bytes, little-endian, at the offsets the
//! specifications give (a test pins every field an initiator reads), padded to the size the
//! command transfers (4096 bytes for Identify; the log page is cut by the host's length).
//! ASCII fields are space-padded, NQN and address fields NUL-padded. Nothing here does I/O:
//! the queue pair gathers the inputs (from the subsystem registry) and sends the bytes.

use super::fabrics::{NQN_FIELD_BYTES, VERSION_1_4};

/// Bytes an Identify command transfers.
pub const IDENTIFY_BYTES: usize = 4096;
/// Bytes of the discovery log page's header, and of each of its entries.
pub const DISCOVERY_HEADER_BYTES: usize = 1024;
pub const DISCOVERY_ENTRY_BYTES: usize = 1024;
/// Submission and completion entry sizes, log2 (SQES and CQES).
const SQE_SHIFT: u8 = 6;
const CQE_SHIFT: u8 = 4;

/// What Identify Controller reports about one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    pub cntlid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub subsystem_nqn: String,
    /// A discovery controller (CNTRLTYPE 2, no namespaces) rather than an I/O controller.
    pub discovery: bool,
    /// The highest namespace id the subsystem may use (NN).
    pub max_nsid: u32,
    /// Largest transfer, as a power of two of 4 KiB pages (MDTS; 0: no limit).
    pub mdts: u8,
    /// Commands a queue holds at once (MAXCMD).
    pub max_commands: u16,
    /// Data bytes a command capsule may carry after its 64-byte entry (IOCCSZ is this plus
    /// 64, in 16-byte units).
    pub in_capsule_bytes: u32,
    /// Keep Alive granularity in 100 ms units (KAS; 0: no keep alive).
    pub keep_alive_100ms: u16,
    /// A volatile write cache the host should flush (VWC).
    pub volatile_cache: bool,
}

/// What Identify Namespace reports about one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub num_blocks: u64,
    pub block_size: u32,
    /// The namespace's UUID, 16 bytes (NGUID and the UUID descriptor).
    pub uuid: [u8; 16],
    /// Deallocated blocks read back as zeroes (DLFEAT), as unmap on tidepool's bdevs does.
    pub deallocated_reads_zeroes: bool,
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// An ASCII field of `len` bytes, space-padded (and cut).
fn ascii(out: &mut [u8], at: usize, len: usize, s: &str) {
    let field = &mut out[at..at + len];
    field.fill(b' ');
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A string field of `len` bytes, NUL-padded (and cut, leaving a NUL).
fn nul_padded(out: &mut [u8], at: usize, len: usize, s: &str) {
    let field = &mut out[at..at + len];
    field.fill(0);
    let n = s.len().min(len - 1);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Identify Controller (CNS 01h), figure 247 of the base specification.
pub fn controller(c: &ControllerInfo) -> Vec<u8> {
    let mut out = vec![0u8; IDENTIFY_BYTES];
    ascii(&mut out, 4, 20, &c.serial);
    ascii(&mut out, 24, 40, &c.model);
    ascii(&mut out, 64, 8, &c.firmware);
    out[72] = 6; // RAB: 64 commands per arbitration burst
    out[76] = 0b011; // CMIC: several ports and controllers may share a namespace
    out[77] = c.mdts;
    put(&mut out, 78, &c.cntlid.to_le_bytes());
    put(&mut out, 80, &VERSION_1_4.to_le_bytes());
    // OAES: namespace attribute notices (the AER a namespace change raises).
    put(&mut out, 92, &(1u32 << 8).to_le_bytes());
    out[111] = if c.discovery { 2 } else { 1 }; // CNTRLTYPE
    out[258] = 3; // ACL: 4 Abort commands (0-based)
    out[259] = 3; // AERL: 4 outstanding AERs (0-based)
    out[261] = 1 << 2; // LPA: extended data for Get Log Page
    out[262] = 127; // ELPE: 128 error log entries (0-based)
    put(&mut out, 320, &c.keep_alive_100ms.to_le_bytes()); // KAS
    out[512] = SQE_SHIFT << 4 | SQE_SHIFT; // SQES: required and maximum 64 bytes
    out[513] = CQE_SHIFT << 4 | CQE_SHIFT; // CQES: 16 bytes
    put(&mut out, 514, &c.max_commands.to_le_bytes()); // MAXCMD
    if !c.discovery {
        put(&mut out, 516, &c.max_nsid.to_le_bytes()); // NN
                                                       // ONCS: Dataset Management (2) and Write Zeroes (3).
        put(&mut out, 520, &(1u16 << 2 | 1 << 3).to_le_bytes());
        out[525] = u8::from(c.volatile_cache); // VWC
    }
    // SGLS: SGLs supported (no alignment), offsets in data block descriptors (bit 20): an
    // NVMe/TCP host describes in-capsule data with an offset descriptor.
    put(&mut out, 536, &(1u32 | 1 << 20).to_le_bytes());
    nul_padded(&mut out, 768, NQN_FIELD_BYTES, &c.subsystem_nqn);
    // Fabrics: IOCCSZ and IORCSZ in 16-byte units, ICDOFF 0 (data right after the entry),
    // FCATT 0 (dynamic controller model), MSDBD 1.
    put(
        &mut out,
        1792,
        &((64 + c.in_capsule_bytes) / 16).to_le_bytes(),
    );
    put(&mut out, 1796, &1u32.to_le_bytes());
    out[1803] = 1;
    // Power state 0: active (MP left 0: not reported).
    out
}

/// Identify Namespace (CNS 00h), figure 245: one LBA format, the namespace's block size.
pub fn namespace(ns: &NamespaceInfo) -> Vec<u8> {
    let mut out = vec![0u8; IDENTIFY_BYTES];
    put(&mut out, 0, &ns.num_blocks.to_le_bytes()); // NSZE
    put(&mut out, 8, &ns.num_blocks.to_le_bytes()); // NCAP
    put(&mut out, 16, &ns.num_blocks.to_le_bytes()); // NUSE
    out[24] = 0; // NSFEAT
    out[25] = 0; // NLBAF: one format (0-based)
    out[26] = 0; // FLBAS: format 0
    out[30] = 1; // NMIC: may be attached to several controllers
                 // DLFEAT: deallocated blocks read as zeroes (bits 2:0 = 001b), Write Zeroes may
                 // deallocate (bit 3).
    out[33] = if ns.deallocated_reads_zeroes {
        1 | 1 << 3
    } else {
        0
    };
    put(&mut out, 104, &ns.uuid); // NGUID
                                  // LBAF0: no metadata, LBADS, relative performance best.
    let lbads = ns.block_size.trailing_zeros();
    put(&mut out, 128, &(lbads << 16).to_le_bytes());
    out
}

/// The active namespace list (CNS 02h): the ids above `after`, ascending, at most 1024.
pub fn active_namespaces(nsids: &[u32], after: u32) -> Vec<u8> {
    let mut out = vec![0u8; IDENTIFY_BYTES];
    let mut ids: Vec<u32> = nsids.iter().copied().filter(|&n| n > after).collect();
    ids.sort_unstable();
    for (i, id) in ids.iter().take(IDENTIFY_BYTES / 4).enumerate() {
        put(&mut out, i * 4, &id.to_le_bytes());
    }
    out
}

/// The namespace identification descriptor list (CNS 03h), figure 249: the NGUID and the
/// UUID, both the namespace's UUID (the Linux host needs one to tell namespaces apart).
pub fn namespace_descriptors(ns: &NamespaceInfo) -> Vec<u8> {
    let mut out = vec![0u8; IDENTIFY_BYTES];
    // NIDT 2 (NGUID), NIDL 16; NIDT 3 (UUID), NIDL 16.
    put(&mut out, 0, &[2, 16, 0, 0]);
    put(&mut out, 4, &ns.uuid);
    put(&mut out, 20, &[3, 16, 0, 0]);
    put(&mut out, 24, &ns.uuid);
    out
}

/// One discovery log entry: a subsystem reachable at a TCP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub subsystem_nqn: String,
    /// An NVM subsystem (SUBTYPE 2), or the discovery subsystem itself (3).
    pub discovery: bool,
    pub ipv6: bool,
    pub address: String,
    pub service: String,
    pub port_id: u16,
}

/// The discovery log page (log id 70h), figures 25-26 of the Fabrics specification: the
/// header with generation counter `generation` and the entries.
pub fn discovery_log(generation: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut out = vec![0u8; DISCOVERY_HEADER_BYTES + entries.len() * DISCOVERY_ENTRY_BYTES];
    put(&mut out, 0, &generation.to_le_bytes()); // GENCTR
    put(&mut out, 8, &(entries.len() as u64).to_le_bytes()); // NUMREC
    for (i, e) in entries.iter().enumerate() {
        let at = DISCOVERY_HEADER_BYTES + i * DISCOVERY_ENTRY_BYTES;
        out[at] = 3; // TRTYPE: TCP
        out[at + 1] = if e.ipv6 { 2 } else { 1 }; // ADRFAM
        out[at + 2] = if e.discovery { 3 } else { 2 }; // SUBTYPE
        out[at + 3] = 0b10; // TREQ: secure channel not required
        put(&mut out, at + 4, &e.port_id.to_le_bytes()); // PORTID
        put(&mut out, at + 6, &0xffffu16.to_le_bytes()); // CNTLID: dynamic
        put(&mut out, at + 8, &128u16.to_le_bytes()); // ASQSZ
        ascii(&mut out, at + 32, 32, &e.service); // TRSVCID
        nul_padded(&mut out, at + 256, NQN_FIELD_BYTES, &e.subsystem_nqn); // SUBNQN
        ascii(&mut out, at + 512, 256, &e.address); // TRADDR
                                                    // TSAS: TCP, no security (SECTYPE 0).
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn info(discovery: bool) -> ControllerInfo {
        ControllerInfo {
            cntlid: 5,
            serial: "TP0001".into(),
            model: "tidepool".into(),
            firmware: "0.1".into(),
            subsystem_nqn: "nqn.2016-06.io.tidepool:vol0".into(),
            discovery,
            max_nsid: 32,
            mdts: 5,
            max_commands: 128,
            in_capsule_bytes: 8192,
            keep_alive_100ms: 100,
            volatile_cache: true,
        }
    }

    #[test]
    fn identify_controller_puts_every_field_an_initiator_reads_where_the_spec_says() {
        let b = controller(&info(false));
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[4..24], b"TP0001              ");
        assert_eq!(&b[24..32], b"tidepool");
        assert!(b[32..64].iter().all(|&c| c == b' '));
        assert_eq!(&b[64..72], b"0.1     ");
        assert_eq!(b[77], 5, "MDTS");
        assert_eq!(le16(&b, 78), 5, "CNTLID");
        assert_eq!(le32(&b, 80), 0x0001_0400, "VER");
        assert_eq!(b[111], 1, "an I/O controller");
        assert_eq!(le16(&b, 320), 100, "KAS");
        assert_eq!((b[512], b[513]), (0x66, 0x44), "SQES, CQES");
        assert_eq!(le16(&b, 514), 128, "MAXCMD");
        assert_eq!(le32(&b, 516), 32, "NN");
        assert_eq!(le16(&b, 520), 0b1100, "ONCS: DSM, Write Zeroes");
        assert_eq!(b[525], 1, "VWC");
        assert_eq!(le32(&b, 536) & 0b11, 1, "SGLS supported");
        assert_eq!(&b[768..796], b"nqn.2016-06.io.tidepool:vol0");
        assert_eq!(b[796], 0);
        assert_eq!(le32(&b, 1792), (64 + 8192) / 16, "IOCCSZ");
        assert_eq!(le32(&b, 1796), 1, "IORCSZ");
        assert_eq!(
            le16(&b, 1800),
            0,
            "ICDOFF: the Linux host supports no other"
        );
        assert_eq!(b[1803], 1, "MSDBD");

        let d = controller(&info(true));
        assert_eq!(d[111], 2, "a discovery controller");
        assert_eq!(le32(&d, 516), 0, "no namespaces");
    }

    #[test]
    fn identify_namespace_and_its_lists() {
        let ns = NamespaceInfo {
            nsid: 3,
            num_blocks: 1 << 20,
            block_size: 4096,
            uuid: [0xab; 16],
            deallocated_reads_zeroes: true,
        };
        let b = namespace(&ns);
        assert_eq!(le64(&b, 0), 1 << 20, "NSZE");
        assert_eq!(le64(&b, 8), 1 << 20, "NCAP");
        assert_eq!(b[25], 0, "one LBA format");
        assert_eq!(b[26] & 0xf, 0, "format 0 in use");
        assert_eq!(b[33] & 0x7, 1, "deallocated blocks read zeroes");
        assert_eq!(le32(&b, 128) >> 16 & 0xff, 12, "LBADS: 4096 bytes");
        assert_eq!(&b[104..120], &[0xab; 16]);

        let list = active_namespaces(&[7, 1, 3], 1);
        assert_eq!((le32(&list, 0), le32(&list, 4), le32(&list, 8)), (3, 7, 0));

        let d = namespace_descriptors(&ns);
        assert_eq!(&d[0..2], &[2, 16]);
        assert_eq!(&d[4..20], &[0xab; 16]);
        assert_eq!(&d[20..22], &[3, 16]);
        assert_eq!(&d[24..40], &[0xab; 16]);
        assert_eq!(d[40], 0, "the list ends");
    }

    #[test]
    fn the_discovery_log_lists_each_subsystem_at_its_address() {
        let entries = [
            DiscoveryEntry {
                subsystem_nqn: "nqn.2016-06.io.tidepool:vol0".into(),
                discovery: false,
                ipv6: false,
                address: "127.0.0.1".into(),
                service: "4420".into(),
                port_id: 1,
            },
            DiscoveryEntry {
                subsystem_nqn: super::super::fabrics::DISCOVERY_NQN.into(),
                discovery: true,
                ipv6: false,
                address: "127.0.0.1".into(),
                service: "4420".into(),
                port_id: 1,
            },
        ];
        let b = discovery_log(9, &entries);
        assert_eq!(b.len(), 1024 * 3);
        assert_eq!((le64(&b, 0), le64(&b, 8)), (9, 2), "GENCTR, NUMREC");
        let e = &b[1024..2048];
        assert_eq!((e[0], e[1], e[2]), (3, 1, 2), "TCP, IPv4, an NVM subsystem");
        assert_eq!(le16(e, 6), 0xffff);
        assert_eq!(&e[32..36], b"4420");
        assert_eq!(e[36], b' ');
        assert_eq!(&e[256..284], b"nqn.2016-06.io.tidepool:vol0");
        assert_eq!(&e[512..521], b"127.0.0.1");
        assert_eq!(b[2048 + 2], 3, "the discovery subsystem itself");
    }
}
