//! NVMe register and command layouts, from the NVM Express Base Specification 2.0 (section
//! numbers below are that document's) and the NVM Command Set Specification 1.0.
//!
//! Every structure that the device reads or writes is `#[repr(C)]` with a compile-time size
//! check and offset tests; every register field is decoded in one place, here, and nowhere
//! else.

/// Controller registers (3.1.3, figure 35): byte offsets in BAR0.
pub mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const INTMS: usize = 0x0c;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1c;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    /// The first doorbell; the others follow at `4 << CAP.DSTRD` byte strides.
    pub const DOORBELLS: usize = 0x1000;
}

/// Byte offset of a queue's doorbell (3.1.3.21, 3.1.3.22): submission tail or completion head.
pub fn doorbell_offset(qid: u16, completion: bool, dstrd: u8) -> usize {
    reg::DOORBELLS + (2 * qid as usize + completion as usize) * (4usize << dstrd)
}

/// CAP, Controller Capabilities (3.1.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (the register holds it 0-based).
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Timeout for CSTS.RDY to change after CC.EN does, in milliseconds (CAP.TO is in 500 ms).
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff) * 500
    }
    /// Doorbell Stride: doorbells are `4 << dstrd` bytes apart.
    pub fn doorbell_stride(self) -> u8 {
        ((self.0 >> 32) & 0xf) as u8
    }
    /// Whether the NVM command set is supported (CSS bit 0).
    pub fn supports_nvm_command_set(self) -> bool {
        (self.0 >> 37) & 1 == 1
    }
    /// Memory Page Size Minimum, as a shift (12 + MPSMIN).
    pub fn min_page_shift(self) -> u32 {
        12 + ((self.0 >> 48) & 0xf) as u32
    }
    /// Memory Page Size Maximum, as a shift (12 + MPSMAX).
    pub fn max_page_shift(self) -> u32 {
        12 + ((self.0 >> 52) & 0xf) as u32
    }
}

/// CC, Controller Configuration (3.1.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// An enabled configuration: NVM command set, memory pages of `1 << page_shift` bytes,
    /// round-robin arbitration, 64-byte submission and 16-byte completion entries.
    pub fn enabled(page_shift: u32) -> Cc {
        let mps = page_shift - 12;
        Cc(1 | (mps << 7) | (6 << 16) | (4 << 20))
    }
    pub fn enable(self) -> bool {
        self.0 & 1 == 1
    }
    /// The same configuration with EN cleared (a controller reset).
    pub fn disabled(self) -> Cc {
        Cc(self.0 & !1)
    }
    pub fn io_sq_entry_shift(self) -> u32 {
        (self.0 >> 16) & 0xf
    }
    pub fn io_cq_entry_shift(self) -> u32 {
        (self.0 >> 20) & 0xf
    }
    pub fn page_shift(self) -> u32 {
        12 + ((self.0 >> 7) & 0xf)
    }
}

/// CSTS, Controller Status (3.1.3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    pub fn ready(self) -> bool {
        self.0 & 1 == 1
    }
    /// Controller Fatal Status: the controller needs a reset.
    pub fn fatal(self) -> bool {
        (self.0 >> 1) & 1 == 1
    }
    /// All ones is what a read returns from a device that is gone (surprise removal).
    pub fn device_gone(self) -> bool {
        self.0 == u32::MAX
    }
}

/// AQA, Admin Queue Attributes (3.1.3.8): both sizes as counts.
pub fn aqa(sq_entries: u16, cq_entries: u16) -> u32 {
    (sq_entries as u32 - 1) | ((cq_entries as u32 - 1) << 16)
}

/// VS, Version (3.1.3.2), as (major, minor, tertiary).
pub fn version(vs: u32) -> (u16, u8, u8) {
    ((vs >> 16) as u16, (vs >> 8) as u8, vs as u8)
}

/// Admin command opcodes (5, figure 138).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVM command set opcodes (NVM Command Set Specification, figure 18).
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify's CNS values (5.17.1, figure 273).
pub mod cns {
    pub const NAMESPACE: u32 = 0x00;
    pub const CONTROLLER: u32 = 0x01;
    pub const ACTIVE_NAMESPACES: u32 = 0x02;
}

/// Feature identifiers (5.27.1, figure 317).
pub mod feature {
    pub const NUMBER_OF_QUEUES: u32 = 0x07;
}

/// A Submission Queue Entry (4.2, figure 88): 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// CDW0: opcode (7:0), fused (9:8), PSDT (15:14), command identifier (31:16).
    pub cdw0: u32,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(std::mem::size_of::<SubmissionEntry>() == 64);

impl SubmissionEntry {
    pub fn new(opcode: u8, nsid: u32) -> SubmissionEntry {
        SubmissionEntry {
            cdw0: opcode as u32,
            nsid,
            ..Default::default()
        }
    }
    pub fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xffff) | ((cid as u32) << 16);
    }
    pub fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Identify (5.17) into a 4 KiB buffer at `prp1`.
    pub fn identify(cns: u32, nsid: u32, prp1: u64) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(admin::IDENTIFY, nsid);
        e.prp1 = prp1;
        e.cdw10 = cns;
        e
    }

    /// Set Features, Number of Queues (5.27.1.5): counts, not 0-based.
    pub fn set_number_of_queues(sq: u16, cq: u16) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(admin::SET_FEATURES, 0);
        e.cdw10 = feature::NUMBER_OF_QUEUES;
        e.cdw11 = (sq as u32 - 1) | ((cq as u32 - 1) << 16);
        e
    }

    /// Create I/O Completion Queue (5.4): physically contiguous, interrupts off.
    pub fn create_io_cq(qid: u16, entries: u16, base: u64) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(admin::CREATE_IO_CQ, 0);
        e.prp1 = base;
        e.cdw10 = qid as u32 | ((entries as u32 - 1) << 16);
        e.cdw11 = 1; // PC = 1, IEN = 0
        e
    }

    /// Create I/O Submission Queue (5.5): physically contiguous, completing into `cqid`.
    pub fn create_io_sq(qid: u16, entries: u16, base: u64, cqid: u16) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(admin::CREATE_IO_SQ, 0);
        e.prp1 = base;
        e.cdw10 = qid as u32 | ((entries as u32 - 1) << 16);
        e.cdw11 = 1 | ((cqid as u32) << 16); // PC = 1, QPRIO = 0
        e
    }

    pub fn delete_io_sq(qid: u16) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(admin::DELETE_IO_SQ, 0);
        e.cdw10 = qid as u32;
        e
    }

    pub fn delete_io_cq(qid: u16) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(admin::DELETE_IO_CQ, 0);
        e.cdw10 = qid as u32;
        e
    }

    /// Describes the command's data as an NVMe over Fabrics host does, with one SGL
    /// descriptor in the data pointer (4.3.2; PSDT = 01b): `in_capsule` data follows the entry
    /// in the same capsule (a Data Block descriptor with the Offset subtype, offset 0);
    /// otherwise the transport moves `bytes` on its own (a Transport SGL Data Block
    /// descriptor: C2HData, or H2CData after an R2T, for NVMe/TCP). 0 bytes is a null
    /// descriptor.
    pub fn set_sgl(&mut self, bytes: u32, in_capsule: bool) {
        /// Descriptor type in bits 7:4 and subtype in 3:0 of the descriptor's last byte.
        const DATA_BLOCK_OFFSET: u64 = 0x01;
        const TRANSPORT_DATA_BLOCK: u64 = 0x5a;
        const PSDT_SGL: u32 = 1 << 14;
        self.cdw0 = (self.cdw0 & !(3 << 14)) | PSDT_SGL;
        self.prp1 = 0;
        let kind = if in_capsule {
            DATA_BLOCK_OFFSET
        } else {
            TRANSPORT_DATA_BLOCK
        };
        self.prp2 = bytes as u64 | kind << 56;
    }

    /// Keep Alive (5.16).
    pub fn keep_alive() -> SubmissionEntry {
        SubmissionEntry::new(admin::KEEP_ALIVE, 0)
    }

    /// Read, Write or Write Zeroes (NVM 3.2.4, 3.2.6, 3.2.8): `blocks` as a count.
    pub fn rw(opcode: u8, nsid: u32, lba: u64, blocks: u32) -> SubmissionEntry {
        debug_assert!((1..=1 << 16).contains(&blocks));
        let mut e = SubmissionEntry::new(opcode, nsid);
        e.cdw10 = lba as u32;
        e.cdw11 = (lba >> 32) as u32;
        e.cdw12 = blocks - 1;
        e
    }

    /// Dataset Management with the Deallocate attribute (NVM 3.2.3) over `ranges` ranges of
    /// the list at `prp1`.
    pub fn deallocate(nsid: u32, ranges: u32, prp1: u64) -> SubmissionEntry {
        let mut e = SubmissionEntry::new(nvm::DATASET_MANAGEMENT, nsid);
        e.prp1 = prp1;
        e.cdw10 = ranges - 1;
        e.cdw11 = 1 << 2; // AD
        e
    }
}

/// One range of a Dataset Management command (NVM 3.2.3, figure 39): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub blocks: u32,
    pub lba: u64,
}

const _: () = assert!(std::mem::size_of::<DsmRange>() == 16);

/// The most ranges one Dataset Management command carries (256, one 4 KiB page).
pub const DSM_MAX_RANGES: usize = 256;

/// A Completion Queue Entry (4.6, figure 90): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// Phase tag (bit 0) and the status field (15:1).
    pub status: u16,
}

const _: () = assert!(std::mem::size_of::<CompletionEntry>() == 16);

impl CompletionEntry {
    pub fn phase(&self) -> bool {
        self.status & 1 == 1
    }
    pub fn status(&self) -> Status {
        Status(self.status >> 1)
    }
}

/// The status field of a completion (4.6.1, figure 93), phase tag removed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub u16);

/// Status Code Types (4.6.1.1, figure 94).
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
    pub const VENDOR: u8 = 0x7;
}

impl Status {
    pub const SUCCESS: Status = Status(0);

    /// A status from its type and code.
    pub fn new(sct: u8, sc: u8) -> Status {
        Status(sc as u16 | ((sct as u16 & 7) << 8))
    }
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }
    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        (self.0 >> 14) & 1 == 1
    }
    pub fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }
    /// The status without its retry hints (CRD, More, DNR): what counts tell apart.
    pub fn code(self) -> Status {
        Status(self.0 & 0x7ff)
    }

    /// The specification's name for the common codes (figures 95, 96 and 97).
    pub fn name(self) -> &'static str {
        match (self.sct(), self.sc()) {
            (sct::GENERIC, 0x00) => "Successful Completion",
            (sct::GENERIC, 0x01) => "Invalid Command Opcode",
            (sct::GENERIC, 0x02) => "Invalid Field in Command",
            (sct::GENERIC, 0x04) => "Data Transfer Error",
            (sct::GENERIC, 0x05) => "Commands Aborted due to Power Loss Notification",
            (sct::GENERIC, 0x06) => "Internal Error",
            (sct::GENERIC, 0x07) => "Command Abort Requested",
            (sct::GENERIC, 0x08) => "Command Aborted due to SQ Deletion",
            (sct::GENERIC, 0x0b) => "Invalid Namespace or Format",
            (sct::GENERIC, 0x80) => "LBA Out of Range",
            (sct::GENERIC, 0x81) => "Capacity Exceeded",
            (sct::GENERIC, 0x82) => "Namespace Not Ready",
            (sct::COMMAND_SPECIFIC, 0x01) => "Invalid Queue Identifier",
            (sct::COMMAND_SPECIFIC, 0x02) => "Invalid Queue Size",
            (sct::COMMAND_SPECIFIC, 0x80) => "Conflicting Attributes",
            (sct::COMMAND_SPECIFIC, 0x82) => "Attempted Write to Read Only Range",
            (sct::MEDIA, 0x80) => "Write Fault",
            (sct::MEDIA, 0x81) => "Unrecovered Read Error",
            (sct::MEDIA, 0x82) => "End-to-end Guard Check Error",
            (sct::MEDIA, 0x85) => "Compare Failure",
            (sct::MEDIA, 0x86) => "Access Denied",
            (sct::MEDIA, 0x87) => "Deallocated or Unwritten Logical Block",
            (sct::PATH, _) => "Path Related Status",
            (sct::VENDOR, _) => "Vendor Specific",
            _ => "Unknown Status",
        }
    }
}

impl std::fmt::Display for Status {
    /// As `Write Fault (sct 0x2, sc 0x80)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sct {:#x}, sc {:#04x})",
            self.name(),
            self.sct(),
            self.sc()
        )
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The Identify Controller data structure (5.17.2.1, figure 275): the fields tidepool uses,
/// read out of the 4 KiB page at their offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum Data Transfer Size as a power of two of the minimum page size; 0: no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub version: u32,
    /// Number of Namespaces: the largest namespace id.
    pub nn: u32,
    /// Optional NVM Command Support.
    pub oncs: u16,
    /// Volatile Write Cache (bit 0: present).
    pub vwc: u8,
    /// Maximum Outstanding Commands (MAXCMD; fabrics controllers report it, 0: not given).
    pub maxcmd: u16,
    /// I/O Queue Command Capsule Supported Size in 16-byte units (IOCCSZ; fabrics only).
    pub ioccsz: u32,
}

/// Byte offsets in the Identify Controller page.
mod idctl {
    pub const VID: usize = 0;
    pub const SN: std::ops::Range<usize> = 4..24;
    pub const MN: std::ops::Range<usize> = 24..64;
    pub const FR: std::ops::Range<usize> = 64..72;
    pub const MDTS: usize = 77;
    pub const CNTLID: usize = 78;
    pub const VER: usize = 80;
    pub const NN: usize = 516;
    pub const ONCS: usize = 520;
    pub const VWC: usize = 525;
    pub const MAXCMD: usize = 514;
    pub const IOCCSZ: usize = 1792;
}

/// The size of every Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
/// An ASCII field, space padded.
fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

impl IdentifyController {
    pub fn parse(page: &[u8; IDENTIFY_BYTES]) -> IdentifyController {
        IdentifyController {
            vid: le16(page, idctl::VID),
            serial: ascii(&page[idctl::SN]),
            model: ascii(&page[idctl::MN]),
            firmware: ascii(&page[idctl::FR]),
            mdts: page[idctl::MDTS],
            cntlid: le16(page, idctl::CNTLID),
            version: le32(page, idctl::VER),
            nn: le32(page, idctl::NN),
            oncs: le16(page, idctl::ONCS),
            vwc: page[idctl::VWC],
            maxcmd: le16(page, idctl::MAXCMD),
            ioccsz: le32(page, idctl::IOCCSZ),
        }
    }
    /// Data bytes an I/O command capsule may carry after its 64-byte entry (from IOCCSZ; 0
    /// where the controller takes no in-capsule data).
    pub fn in_capsule_bytes(&self) -> usize {
        (self.ioccsz as usize * 16).saturating_sub(64)
    }
    /// Dataset Management is supported (ONCS bit 2).
    pub fn has_dataset_management(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }
    /// Write Zeroes is supported (ONCS bit 3).
    pub fn has_write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }
    /// A volatile write cache is present, so Flush has work to do.
    pub fn has_volatile_write_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
}

/// The Identify Namespace data structure (NVM 4.1.5.1, figure 97): the fields tidepool uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks.
    pub nsze: u64,
    pub ncap: u64,
    /// The LBA format in use (FLBAS bits 3:0, with 6:5 as the upper bits).
    pub lba_format: u8,
    /// log2 of the block size of the format in use.
    pub lba_shift: u8,
    /// Metadata bytes per block of the format in use (tidepool takes only 0).
    pub metadata_bytes: u16,
}

impl IdentifyNamespace {
    pub fn parse(page: &[u8; IDENTIFY_BYTES]) -> IdentifyNamespace {
        let flbas = page[26];
        let lba_format = (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4;
        let lbaf = le32(page, 128 + 4 * lba_format as usize);
        IdentifyNamespace {
            nsze: le64(page, 0),
            ncap: le64(page, 8),
            lba_format,
            lba_shift: (lbaf >> 16) as u8,
            metadata_bytes: lbaf as u16,
        }
    }
    pub fn block_size(&self) -> u64 {
        1u64.checked_shl(self.lba_shift as u32).unwrap_or(0)
    }
}

/// The Active Namespace ID list (5.17.2.2): ids in increasing order, ended by a zero.
pub fn parse_namespace_list(page: &[u8; IDENTIFY_BYTES]) -> Vec<u32> {
    page.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .take_while(|&id| id != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn entries_have_the_specified_layout() {
        assert_eq!(std::mem::size_of::<SubmissionEntry>(), 64);
        assert_eq!(offset_of!(SubmissionEntry, nsid), 4);
        assert_eq!(offset_of!(SubmissionEntry, mptr), 16);
        assert_eq!(offset_of!(SubmissionEntry, prp1), 24);
        assert_eq!(offset_of!(SubmissionEntry, prp2), 32);
        assert_eq!(offset_of!(SubmissionEntry, cdw10), 40);
        assert_eq!(offset_of!(SubmissionEntry, cdw15), 60);
        assert_eq!(std::mem::size_of::<CompletionEntry>(), 16);
        assert_eq!(offset_of!(CompletionEntry, sq_head), 8);
        assert_eq!(offset_of!(CompletionEntry, sq_id), 10);
        assert_eq!(offset_of!(CompletionEntry, cid), 12);
        assert_eq!(offset_of!(CompletionEntry, status), 14);
        assert_eq!(offset_of!(DsmRange, blocks), 4);
        assert_eq!(offset_of!(DsmRange, lba), 8);
    }

    #[test]
    fn capabilities_decode() {
        // The value read from QEMU's NVMe controller (../shared/notes).
        let cap = Cap(0x0040_0820_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert_eq!(cap.timeout_ms(), 15 * 500);
        assert_eq!(cap.doorbell_stride(), 0);
        assert!(cap.supports_nvm_command_set());
        assert_eq!(cap.min_page_shift(), 12);
        assert_eq!(cap.max_page_shift(), 16);
        assert_eq!(doorbell_offset(0, false, 0), 0x1000);
        assert_eq!(doorbell_offset(0, true, 0), 0x1004);
        assert_eq!(doorbell_offset(3, true, 0), 0x101c);
        assert_eq!(doorbell_offset(1, false, 2), 0x1000 + 2 * 16);
    }

    #[test]
    fn configuration_encodes() {
        let cc = Cc::enabled(12);
        assert!(cc.enable());
        assert_eq!(cc.0, 0x0046_0001);
        assert_eq!(cc.io_sq_entry_shift(), 6);
        assert_eq!(cc.io_cq_entry_shift(), 4);
        assert_eq!(cc.page_shift(), 12);
        assert!(!cc.disabled().enable());
        assert_eq!(aqa(32, 64), 31 | (63 << 16));
        assert!(Csts(1).ready() && !Csts(1).fatal());
        assert!(Csts(3).fatal());
        assert!(Csts(u32::MAX).device_gone());
    }

    #[test]
    fn commands_encode() {
        let mut e = SubmissionEntry::rw(nvm::WRITE, 1, 0x1_2345_6789, 8);
        e.set_cid(0xbeef);
        assert_eq!(e.opcode(), nvm::WRITE);
        assert_eq!(e.cid(), 0xbeef);
        assert_eq!((e.cdw10, e.cdw11, e.cdw12), (0x2345_6789, 1, 7));
        let q = SubmissionEntry::create_io_sq(3, 256, 0x1000, 3);
        assert_eq!((q.cdw10, q.cdw11), (3 | (255 << 16), 1 | (3 << 16)));
        let n = SubmissionEntry::set_number_of_queues(4, 4);
        assert_eq!(n.cdw11, 3 | (3 << 16));
        let d = SubmissionEntry::deallocate(1, 2, 0x2000);
        assert_eq!((d.cdw10, d.cdw11), (1, 4));
    }

    #[test]
    fn statuses_decode_and_name_themselves() {
        // Write Fault with DNR, phase 1, as a controller writes it.
        let raw = ((1u16 << 14) | (0x2 << 8) | 0x80) << 1 | 1;
        let cqe = CompletionEntry {
            status: raw,
            ..Default::default()
        };
        assert!(cqe.phase());
        let s = cqe.status();
        assert_eq!((s.sct(), s.sc(), s.dnr()), (2, 0x80, true));
        assert!(!s.is_success());
        assert_eq!(s.code(), Status::new(sct::MEDIA, 0x80));
        assert_eq!(s.to_string(), "Write Fault (sct 0x2, sc 0x80)");
        assert!(Status::SUCCESS.is_success());
    }

    #[test]
    fn identify_pages_parse() {
        let mut page = [0u8; IDENTIFY_BYTES];
        page[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        page[4..24].copy_from_slice(b"tpvfio0             ");
        page[24..40].copy_from_slice(b"QEMU NVMe Ctrl  ");
        page[64..72].copy_from_slice(b"10.0.2  ");
        page[77] = 7;
        page[516..520].copy_from_slice(&2u32.to_le_bytes());
        page[520..522].copy_from_slice(&0x000cu16.to_le_bytes());
        page[525] = 1;
        let c = IdentifyController::parse(&page);
        assert_eq!((c.vid, c.mdts, c.nn), (0x1b36, 7, 2));
        assert_eq!(
            (c.serial.as_str(), c.model.as_str()),
            ("tpvfio0", "QEMU NVMe Ctrl")
        );
        assert_eq!(c.firmware, "10.0.2");
        assert!(c.has_dataset_management() && c.has_write_zeroes());
        assert!(c.has_volatile_write_cache());

        let mut ns = [0u8; IDENTIFY_BYTES];
        ns[0..8].copy_from_slice(&524288u64.to_le_bytes());
        ns[26] = 1; // format 1
        ns[128 + 4..128 + 8].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let n = IdentifyNamespace::parse(&ns);
        assert_eq!((n.nsze, n.lba_format, n.block_size()), (524288, 1, 4096));
        assert_eq!(n.metadata_bytes, 0);

        let mut list = [0u8; IDENTIFY_BYTES];
        list[0..4].copy_from_slice(&1u32.to_le_bytes());
        list[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse_namespace_list(&list), vec![1, 3]);
    }
}
